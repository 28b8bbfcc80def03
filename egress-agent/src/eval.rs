//! The reference evaluator: the policy semantics of `docs/policy.md`, written plainly.
//!
//! The compiler's output must decide every packet exactly as this module does; the property
//! tests in `compile` check that through a simulation of the kernel's lookups.

use std::net::IpAddr;

use egress_common::{Decision, NO_RULE, verdict};

use crate::policy::{Action, LogMode, Mode, Policy, PolicySet, Rule};

/// A rule that matched a packet, whether or not it decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedRule {
    pub id: u32,
    pub policy: String,
    pub rule: String,
    pub action: Action,
    pub mode: Mode,
}

/// A decision and what led to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// Names of the policies whose selectors matched the workload, by name.
    pub applicable: Vec<String>,
    /// Every matching rule of the applicable policies, by id.
    pub matched: Vec<MatchedRule>,
}

/// The policies whose selectors hold for the workload, in name order.
pub fn applicable<'a>(set: &'a PolicySet, cgroup: &str, uid: u32) -> Vec<&'a Policy> {
    set.policies
        .iter()
        .filter(|p| p.selector.matches(cgroup, uid))
        .collect()
}

/// Decides a packet of the workload (`cgroup` path relative to the cgroup2 root, socket `uid`)
/// to `dst`. `port` only counts for TCP and UDP.
pub fn decide(
    set: &PolicySet,
    cgroup: &str,
    uid: u32,
    dst: IpAddr,
    protocol: u8,
    port: u16,
) -> Decision {
    let policies = applicable(set, cgroup, uid);
    decision_for(&policies, &|r: &Rule| r.matches(dst, protocol, port))
}

/// [`decide`], with the rules that matched.
pub fn explain(
    set: &PolicySet,
    cgroup: &str,
    uid: u32,
    dst: IpAddr,
    protocol: u8,
    port: u16,
) -> Explanation {
    let policies = applicable(set, cgroup, uid);
    let is_match = |r: &Rule| r.matches(dst, protocol, port);
    let matched = policies
        .iter()
        .flat_map(|p| {
            p.rules.iter().filter(|r| is_match(r)).map(|r| MatchedRule {
                id: r.id,
                policy: p.name.clone(),
                rule: r.name.clone(),
                action: r.action,
                mode: p.mode,
            })
        })
        .collect();
    Explanation {
        decision: decision_for(&policies, &is_match),
        applicable: policies.iter().map(|p| p.name.clone()).collect(),
        matched,
    }
}

/// The decision of the `applicable` policies (in name order) when exactly the rules for which
/// `matched` holds match the packet. Shared with the compiler, which calls it per class.
pub fn decision_for(applicable: &[&Policy], matched: &dyn Fn(&Rule) -> bool) -> Decision {
    if applicable.is_empty() {
        return Decision::UNGOVERNED;
    }
    let enforce = judge(applicable, Mode::Enforce, matched);
    let audit = judge(applicable, Mode::Audit, matched);
    let (verdict, rule) = enforce.unwrap_or((verdict::ALLOW, NO_RULE));
    let (audit_verdict, audit_rule) = audit.unwrap_or((verdict::NONE, NO_RULE));
    let log = applicable.iter().any(|p| {
        let own = match p.mode {
            Mode::Enforce => verdict,
            Mode::Audit => audit_verdict,
        };
        p.log == LogMode::All || (p.log == LogMode::Deny && own == verdict::DENY)
    });
    Decision {
        rule,
        audit_rule,
        verdict,
        audit_verdict,
        log: u8::from(log),
        _pad: 0,
    }
}

/// Verdict and deciding rule of the applicable policies of one mode; `None` if there are none.
fn judge(applicable: &[&Policy], mode: Mode, matched: &dyn Fn(&Rule) -> bool) -> Option<(u8, u32)> {
    let mut first_default = None;
    let mut deny_default = None;
    let mut deny = None;
    let mut allow = None;
    // Policies are in name order and ids grow with it, so the first hit is the lowest id.
    for policy in applicable.iter().filter(|p| p.mode == mode) {
        first_default.get_or_insert(policy.default_id);
        if policy.default_action == Action::Deny {
            deny_default.get_or_insert(policy.default_id);
        }
        for rule in policy.rules.iter().filter(|r| matched(r)) {
            match rule.action {
                Action::Deny => deny.get_or_insert(rule.id),
                Action::Allow => allow.get_or_insert(rule.id),
            };
        }
    }
    let first_default = first_default?;
    Some(if let Some(id) = deny {
        (verdict::DENY, id)
    } else if let Some(id) = allow {
        (verdict::ALLOW, id)
    } else if let Some(id) = deny_default {
        (verdict::DENY, id)
    } else {
        (verdict::ALLOW, first_default)
    })
}

#[cfg(test)]
mod tests {
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
}
