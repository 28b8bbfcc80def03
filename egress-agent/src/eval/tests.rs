//! The reference evaluator against hand-checked decisions, both directions.

use std::path::Path;

use super::*;
use crate::policy::parse_str;

const POLICIES: &str = r#"
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: base}
spec:
  log: deny
  egress:
    - name: no-docs
      action: deny
      to: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]
    - name: web
      action: allow
      to: [{entity: any}]
      protocol: tcp
      ports: [443]
---
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: locked}
spec:
  selector: {units: [app.service], uids: [1000]}
  defaultAction: deny
  log: none
  egress:
    - name: dns
      action: allow
      to: [{entity: any}]
      protocol: udp
      ports: [53]
---
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: trial}
spec:
  mode: audit
  selector: {cgroups: [/system.slice]}
  defaultAction: deny
"#;

fn set() -> PolicySet {
    parse_str(Path::new("t.yaml"), POLICIES).expect("valid test input")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid test input")
}

#[test]
fn deny_rule_wins_and_except_cuts_out() {
    let set = set();
    let d = decide(&set, "/user.slice", 0, ip("203.0.113.5"), 6, 443);
    assert_eq!((d.verdict, d.rule, d.log), (verdict::DENY, 1, 1));
    let d = decide(&set, "/user.slice", 0, ip("203.0.113.200"), 6, 443);
    assert_eq!((d.verdict, d.rule, d.log), (verdict::ALLOW, 2, 0));
    let d = decide(&set, "/user.slice", 0, ip("198.51.100.1"), 17, 53);
    assert_eq!((d.verdict, d.rule), (verdict::ALLOW, 3), "base default id");
}

#[test]
fn default_deny_of_any_enforce_policy_drops() {
    let set = set();
    let d = decide(&set, "/x/app.service", 1000, ip("198.51.100.1"), 6, 80);
    assert_eq!((d.verdict, d.rule), (verdict::DENY, 5));
    let d = decide(&set, "/x/app.service", 1000, ip("198.51.100.1"), 17, 53);
    assert_eq!((d.verdict, d.rule), (verdict::ALLOW, 4));
    let d = decide(&set, "/x/app.service", 1001, ip("198.51.100.1"), 6, 80);
    assert_eq!(d.verdict, verdict::ALLOW, "uid not selected");
}

#[test]
fn audit_policies_only_record() {
    let set = set();
    let d = decide(
        &set,
        "/system.slice/a.service",
        0,
        ip("198.51.100.1"),
        6,
        80,
    );
    assert_eq!(
        (d.verdict, d.audit_verdict, d.audit_rule),
        (verdict::ALLOW, verdict::DENY, 6)
    );
    assert_eq!(d.log, 1, "audit policy logs all");
}

#[test]
fn explanation_lists_losing_rules() {
    let set = set();
    let e = explain(&set, "/", 0, ip("203.0.113.1"), 6, 443);
    let names: Vec<&str> = e.matched.iter().map(|m| m.rule.as_str()).collect();
    assert_eq!(names, ["no-docs", "web"]);
    assert_eq!(e.decision.rule, 1);
}

#[test]
fn no_policy_means_ungoverned() {
    let empty = PolicySet::default();
    assert_eq!(
        decide(&empty, "/", 0, ip("::1"), 6, 1),
        Decision::UNGOVERNED
    );
}

const INBOUND: &str = r#"
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: app}
spec:
  selector: {units: [app.service]}
  inbound: deny
  log: deny
  ingress:
    - name: ssh
      action: allow
      from: [{cidr: 192.0.2.0/24}]
      protocol: tcp
      ports: [22]
---
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: blocklist}
spec:
  log: none
  ingress:
    - name: bad-peer
      action: deny
      from: [{cidr: 192.0.2.66/32}]
---
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: quiet}
spec:
  log: all
---
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: trial}
spec:
  mode: audit
  selector: {uids: [1000]}
  inbound: deny
"#;

fn inbound() -> PolicySet {
    parse_str(Path::new("t.yaml"), INBOUND).expect("valid test input")
}

#[test]
fn inbound_deny_drops_what_no_ingress_rule_allows() {
    // Ids: app ssh 1, default 2, inbound-default 3; blocklist bad-peer 4, default 5,
    // inbound-default 6; quiet default 7; trial default 8, inbound-default 9.
    let set = inbound();
    let app = "/system.slice/app.service";
    let d = decide_ingress(&set, app, 0, ip("198.51.100.1"), 6, 22).expect("judged");
    assert_eq!((d.verdict, d.rule, d.log), (verdict::DENY, 3, 1));
    let d = decide_ingress(&set, app, 0, ip("192.0.2.1"), 6, 22).expect("judged");
    assert_eq!((d.verdict, d.rule, d.log), (verdict::ALLOW, 1, 0));
    let d = decide_ingress(&set, app, 0, ip("192.0.2.1"), 17, 22).expect("judged");
    assert_eq!(d.verdict, verdict::DENY, "udp/22 is not ssh");
    let d = decide_ingress(&set, app, 0, ip("192.0.2.66"), 6, 22).expect("judged");
    assert_eq!((d.verdict, d.rule), (verdict::DENY, 4), "a deny rule wins");
}

#[test]
fn ingress_rules_alone_restrict_only_what_they_deny() {
    let set = inbound();
    let d = decide_ingress(&set, "/user.slice", 0, ip("192.0.2.66"), 1, 0).expect("judged");
    assert_eq!((d.verdict, d.rule, d.log), (verdict::DENY, 4, 0));
    let d = decide_ingress(&set, "/user.slice", 0, ip("192.0.2.67"), 6, 80).expect("judged");
    assert_eq!(
        (d.verdict, d.rule, d.log),
        (verdict::ALLOW, 6, 0),
        "the first restricting policy's inbound default; `quiet` (log: all) takes no part"
    );
}

#[test]
fn audit_inbound_deny_is_recorded_only() {
    let set = inbound();
    let d = decide_ingress(&set, "/user.slice", 1000, ip("198.51.100.1"), 6, 80).expect("judged");
    assert_eq!(
        (d.verdict, d.rule, d.audit_verdict, d.audit_rule, d.log),
        (verdict::ALLOW, 6, verdict::DENY, 9, 1)
    );
}

#[test]
fn no_inbound_restriction_means_not_judged() {
    let text = POLICIES.replace("metadata: {name: base}", "metadata: {name: other}");
    let set = parse_str(Path::new("t.yaml"), &text).expect("valid test input");
    assert_eq!(
        decide_ingress(&set, "/x/app.service", 1000, ip("192.0.2.1"), 6, 22),
        None,
        "defaultAction: deny says nothing about inbound traffic"
    );
    assert!(explain_ingress(&set, "/", 0, ip("192.0.2.1"), 6, 22).is_none());
    assert_eq!(
        decide_ingress(&PolicySet::default(), "/", 0, ip("::1"), 6, 1),
        None
    );
}

#[test]
fn ingress_explanation_lists_ingress_rules_only() {
    let set = inbound();
    let e = explain_ingress(
        &set,
        "/system.slice/app.service",
        0,
        ip("192.0.2.66"),
        6,
        22,
    )
    .expect("judged");
    let names: Vec<&str> = e.matched.iter().map(|m| m.rule.as_str()).collect();
    assert_eq!(names, ["ssh", "bad-peer"]);
    assert_eq!(e.decision.rule, 4);
    assert_eq!(e.applicable, ["app", "blocklist", "quiet"]);
}

#[test]
fn pod_resolution_applies_to_ingress() {
    let text = "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p}\nspec:\n  selector: {pods: {matchLabels: {app: db}}}\n  inbound: deny\n";
    let set = parse_str(Path::new("p.yaml"), text).expect("valid test input");
    let pod = "/kubepods.slice/kubepods-podu.slice";
    assert_eq!(decide_ingress(&set, pod, 0, ip("192.0.2.1"), 6, 5432), None);
    let mut res = CgroupResolution::default();
    let selector = set.policies[0].selector.pods.clone().expect("pods");
    res.pods.insert(selector, vec![pod.into()]);
    let d = decide_ingress_in(&set, &res, pod, 0, ip("192.0.2.1"), 6, 5432).expect("judged");
    assert_eq!((d.verdict, d.rule), (verdict::DENY, 2));
}
