use std::net::IpAddr;
use std::path::Path;

use egress_common::{Decision, PARITY_BIT, verdict};

use super::*;
use crate::eval;
use crate::policy::parse_str;

const TWO: &str = r#"
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: outer}
spec:
  selector: {cgroups: [/system.slice]}
  egress:
    - name: no-docs
      action: deny
      to: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}, {cidr: "2001:db8::/32"}]
      ports: ["8000-8100", 443]
---
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: inner}
spec:
  selector: {cgroups: [/system.slice/app.service], uids: [1000]}
  defaultAction: deny
  log: deny
  egress:
    - name: dns
      action: allow
      to: [{entity: any}]
      protocol: udp
      ports: [53]
    - name: ping
      action: allow
      to: [{entity: private}]
      protocol: icmp
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid test input")
}

#[test]
fn nested_cgroups_get_both_policies() {
    let set = parse_str(Path::new("t.yaml"), TWO).expect("valid test input");
    let compiled =
        compile(&set, &CgroupResolution::default(), PARITY_BIT).expect("valid test input");
    assert_eq!(compiled.cgroups.len(), 2);
    assert_eq!(
        compiled.flags,
        config_flags::CGROUP_SELECTORS | config_flags::UID_SELECTORS
    );
    assert!(
        compiled
            .scopes
            .iter()
            .all(|(_, v)| v.ingress_default.verdict == verdict::NONE),
        "no policy restricts inbound: the ingress program passes everything"
    );
    assert!(compiled.cgroups.iter().all(|(_, c)| c & PARITY_BIT != 0));
    let sim = mapsim::MapSim::new(&compiled);
    let cases = [
        ("/system.slice/app.service/x", 1000, "203.0.113.1", 6, 8050),
        ("/system.slice/app.service", 1000, "203.0.113.200", 6, 8050),
        ("/system.slice/app.service", 1000, "8.8.8.8", 17, 53),
        ("/system.slice/app.service", 1000, "10.1.1.1", 1, 0),
        ("/system.slice/app.service", 1001, "2001:db8::1", 6, 443),
        ("/system.slice/app.service", 1000, "2001:db8::1", 47, 0),
        ("/user.slice", 1000, "203.0.113.1", 6, 443),
    ];
    for (cg, uid, dst, proto, port) in cases {
        let want = eval::decide(&set, cg, uid, ip(dst), proto, port);
        assert_eq!(
            sim.decide(cg, uid, ip(dst), proto, port),
            want,
            "{cg} {uid} {dst} {proto} {port}"
        );
    }
    let d = sim.decide("/system.slice/app.service", 1000, ip("203.0.113.1"), 6, 443);
    assert_eq!(d.verdict, verdict::DENY);
}

const OUTBOUND_ONLY: &str = r#"
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: db}
spec:
  selector: {cgroups: [/system.slice/db.service]}
  inbound: deny
  log: deny
  ingress:
    - name: ssh-from-mgmt
      action: allow
      from: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}, {cidr: "2001:db8:1::/48"}]
      protocol: tcp
      ports: [22]
    - name: no-bad-peer
      action: deny
      from: [{cidr: 192.0.2.7/32}]
---
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: egress-only}
spec:
  egress:
    - name: no-docs
      action: deny
      to: [{cidr: 192.0.2.0/24}]
---
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: trial}
spec:
  selector: {cgroups: [/system.slice/web.service]}
  mode: audit
  ingress:
    - name: no-icmp
      action: deny
      from: [{entity: any}]
      protocol: icmp
"#;

#[test]
fn outbound_only_compiles_to_ingress_entries() {
    let set = parse_str(Path::new("t.yaml"), OUTBOUND_ONLY).expect("valid test input");
    // Ids: db's ingress rules 1-2, default 3, inbound-default 4; egress-only 5-6; trial 7-9.
    let ids: Vec<(u32, String)> = set
        .rule_table()
        .into_iter()
        .map(|r| (r.id, format!("{}/{}", r.policy, r.rule)))
        .collect();
    let want = [
        "db/ssh-from-mgmt",
        "db/no-bad-peer",
        "db/default",
        "db/inbound-default",
        "egress-only/no-docs",
        "egress-only/default",
        "trial/no-icmp",
        "trial/default",
        "trial/inbound-default",
    ];
    assert_eq!(ids.len(), want.len(), "{ids:?}");
    for ((id, name), (i, want)) in ids.iter().zip(want.iter().enumerate()) {
        assert_eq!((*id as usize, name.as_str()), (i + 1, *want));
    }
    let compiled = compile(&set, &CgroupResolution::default(), PARITY_BIT).expect("compiles");
    assert_ne!(compiled.flags & config_flags::INGRESS, 0);
    assert_eq!(compiled.summary.ingress_scopes, 2, "db, and trial");
    let egress_ids: Vec<u32> = compiled.scopes.iter().map(|(_, v)| v.scope).collect();
    for (key, value) in &compiled.scopes {
        if value.ingress_default.verdict == verdict::NONE {
            continue;
        }
        assert_ne!(value.ingress_scope & PARITY_BIT, 0, "{key:?}");
        assert!(!egress_ids.contains(&value.ingress_scope), "{key:?}");
    }
    let sim = mapsim::MapSim::new(&compiled);
    let db = "/system.slice/db.service/sub";
    let d = sim
        .decide_ingress(db, 0, ip("198.51.100.1"), 6, 5432)
        .expect("judged");
    assert_eq!((d.verdict, d.rule, d.log), (verdict::DENY, 4, 1));
    let d = sim
        .decide_ingress(db, 0, ip("192.0.2.9"), 6, 22)
        .expect("judged");
    assert_eq!((d.verdict, d.rule, d.log), (verdict::ALLOW, 1, 0));
    let d = sim
        .decide_ingress(db, 0, ip("192.0.2.7"), 6, 22)
        .expect("judged");
    assert_eq!((d.verdict, d.rule), (verdict::DENY, 2), "deny beats allow");
    let d = sim
        .decide_ingress(db, 0, ip("192.0.2.200"), 6, 22)
        .expect("judged");
    assert_eq!((d.verdict, d.rule), (verdict::DENY, 4), "except cuts out");
    assert_eq!(
        sim.decide_ingress("/user.slice", 0, ip("192.0.2.9"), 6, 22),
        None,
        "only egress-only applies: not judged"
    );
    let d = sim
        .decide_ingress("/system.slice/web.service", 0, ip("192.0.2.9"), 1, 0)
        .expect("judged");
    assert_eq!(
        (d.verdict, d.rule, d.audit_verdict, d.audit_rule),
        (verdict::ALLOW, 0, verdict::DENY, 7)
    );
    // The egress side of db is untouched by its ingress rules: 192.0.2.9 is denied outbound
    // by egress-only, and 198.51.100.1 is allowed.
    let d = sim.decide(db, 0, ip("192.0.2.9"), 6, 22);
    assert_eq!((d.verdict, d.rule), (verdict::DENY, 5));
    let d = sim.decide(db, 0, ip("198.51.100.1"), 6, 22);
    assert_eq!(d.verdict, verdict::ALLOW);
    for (cgroup, src, proto, port) in [
        (db, "192.0.2.9", 6, 22),
        (db, "2001:db8:1::5", 6, 22),
        (db, "2001:db8:1::5", 17, 22),
        (db, "192.0.2.7", 1, 0),
        ("/system.slice/web.service", "::1", 58, 0),
        ("/", "192.0.2.7", 6, 22),
    ] {
        let want = eval::decide_ingress(&set, cgroup, 0, ip(src), proto, port);
        let got = sim.decide_ingress(cgroup, 0, ip(src), proto, port);
        assert_eq!(got, want, "{cgroup} {src} {proto} {port}");
    }
}

#[test]
fn million_scale_prefixes_compile() {
    let mut text = String::from(
        "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: big}\nspec:\n  egress:\n    - name: many\n      action: deny\n      to:\n",
    );
    // 200k disjoint /32s plus a covering /8 with excepts.
    for i in 0..200_000u32 {
        let a = 0x0b00_0000 + i * 3;
        let [b0, b1, b2, b3] = a.to_be_bytes();
        text.push_str(&format!("        - cidr: {b0}.{b1}.{b2}.{b3}/32\n"));
    }
    text.push_str("        - {cidr: 11.0.0.0/8, except: [11.0.0.0/16]}\n");
    let set = parse_str(Path::new("big.yaml"), &text).expect("valid test input");
    let compiled = compile(&set, &CgroupResolution::default(), 0).expect("valid test input");
    // Prefixes inside 11.0.0.0/16 are distinct from the except; the rest repeat the /8's class.
    assert!(compiled.summary.prefixes >= 2);
    let sim = mapsim::MapSim::new(&compiled);
    for dst in ["11.0.0.3", "11.0.0.4", "11.2.0.0", "12.0.0.0"] {
        let want = eval::decide(&set, "/", 0, ip(dst), 6, 1);
        assert_eq!(sim.decide("/", 0, ip(dst), 6, 1), want, "{dst}");
    }
}

#[test]
fn units_resolve_to_paths() {
    let text = "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: u}\nspec:\n  selector: {units: [a.service]}\n  defaultAction: deny\n";
    let set = parse_str(Path::new("u.yaml"), text).expect("valid test input");
    let mut res = CgroupResolution::default();
    res.units
        .insert("a.service".into(), vec!["/system.slice/a.service".into()]);
    let compiled = compile(&set, &res, 0).expect("valid test input");
    let sim = mapsim::MapSim::new(&compiled);
    let d = sim.decide("/system.slice/a.service/sub", 0, ip("1.1.1.1"), 6, 80);
    assert_eq!(d.verdict, verdict::DENY);
    let d = sim.decide("/system.slice/b.service", 0, ip("1.1.1.1"), 6, 80);
    assert_eq!(d, Decision::UNGOVERNED);
}

#[test]
fn pods_select_exactly_their_resolved_paths() {
    let text = "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p}\nspec:\n  selector: {pods: {matchLabels: {app: web}}}\n  defaultAction: deny\n";
    let set = parse_str(Path::new("p.yaml"), text).expect("valid test input");
    let pod = "/kubepods.slice/kubepods-podu.slice";
    let unresolved = compile(&set, &CgroupResolution::default(), 0).expect("valid test input");
    let sim = mapsim::MapSim::new(&unresolved);
    assert_eq!(
        sim.decide(pod, 0, ip("192.0.2.1"), 6, 80),
        Decision::UNGOVERNED,
        "no resolution selects nothing"
    );
    let mut res = CgroupResolution::default();
    let selector = set.policies[0].selector.pods.clone().expect("pods");
    res.pods.insert(selector, vec![pod.into()]);
    let compiled = compile(&set, &res, 0).expect("valid test input");
    let sim = mapsim::MapSim::new(&compiled);
    for (cgroup, want) in [
        (format!("{pod}/cri-containerd-1.scope"), verdict::DENY),
        ("/kubepods.slice".to_string(), verdict::ALLOW),
        (
            "/kubepods.slice/kubepods-podv.slice".to_string(),
            verdict::ALLOW,
        ),
    ] {
        let got = sim.decide(&cgroup, 0, ip("192.0.2.1"), 6, 80);
        assert_eq!(got.verdict, want, "{cgroup}");
        let eval = eval::decide_in(&set, &res, &cgroup, 0, ip("192.0.2.1"), 6, 80);
        assert_eq!(got, eval, "{cgroup}");
    }
}

#[test]
fn bad_parity_is_rejected() {
    assert!(compile(&PolicySet::default(), &CgroupResolution::default(), 7).is_err());
}

/// Release-mode timing aid: `cargo test --release -- --ignored million --nocapture`.
#[test]
#[ignore = "benchmark: a million prefixes"]
fn million_prefixes_benchmark() {
    let rule = Rule {
        id: 0,
        name: "many".into(),
        action: crate::policy::Action::Deny,
        to: (0..1_000_000u32)
            .map(|i| crate::policy::Destination::Cidr {
                prefix: crate::policy::Prefix {
                    family: Family::V4,
                    addr: u128::from(0x0b00_0000 + i * 7),
                    len: 32,
                },
                except: Vec::new(),
            })
            .collect(),
        protocol: crate::policy::Protocol::Tcp,
        ports: None,
    };
    let set = PolicySet::new(vec![Policy {
        name: "big".into(),
        selector: Selector::default(),
        mode: crate::policy::Mode::Enforce,
        default_action: crate::policy::Action::Allow,
        log: crate::policy::LogMode::All,
        rules: vec![rule],
        ..Policy::default()
    }]);
    let start = std::time::Instant::now();
    let compiled = compile(&set, &CgroupResolution::default(), 0).expect("valid test input");
    println!(
        "{} prefixes in {:?}",
        compiled.summary.prefixes,
        start.elapsed()
    );
    assert_eq!(compiled.summary.prefixes, 1_000_000);
}

#[test]
fn port_lists_too_long_for_a_table_are_decided_by_the_trie() {
    let text = r#"
apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {name: ports}
spec:
  defaultAction: allow
  egress:
    - name: many-tcp-ports
      action: deny
      to: [{cidr: 192.0.2.0/24}]
      protocol: tcp
      ports: [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, "23-25"]
    - name: few-udp-ports
      action: deny
      to: [{cidr: 192.0.2.0/24}]
      protocol: udp
      ports: [53, "100-200"]
    - name: everything
      action: allow
      to: [{cidr: 192.0.2.128/25}]
"#;
    let set = parse_str(Path::new("ports.yaml"), text).expect("valid test input");
    let compiled = compile(&set, &CgroupResolution::default(), 0).expect("valid test input");
    let tables = &compiled.ports.tables;
    assert!(
        tables
            .iter()
            .any(|(key, table)| key.protocol == 6 && table.runs == 0),
        "the TCP runs do not fit a table: {tables:?}"
    );
    assert!(
        tables
            .iter()
            .any(|(key, table)| key.protocol == 17 && table.runs == 5),
        "the UDP runs fit one: {tables:?}"
    );
    assert!(!compiled.ports.trie.is_empty());
    let sim = mapsim::MapSim::new(&compiled);
    for dst in ["192.0.2.7", "192.0.2.200", "198.51.100.1"] {
        for protocol in [6, 17, 1, 58, 47] {
            for port in (0..=30).chain([52, 53, 54, 99, 100, 150, 200, 201, 65535]) {
                let want = eval::decide(&set, "/", 0, ip(dst), protocol, port);
                let got = sim.decide("/", 0, ip(dst), protocol, port);
                assert_eq!(got, want, "{dst} {protocol} {port}");
            }
        }
    }
}

#[test]
fn a_generation_may_fill_half_of_each_map() {
    let limit = (egress_common::capacity::CGROUP_CLASSES / 2) as usize;
    let with_cgroups = |n: usize| Compiled {
        cgroups: vec![(String::new(), 0); n],
        ..Compiled::default()
    };
    assert!(check_capacity(&with_cgroups(limit)).is_ok());
    let err = check_capacity(&with_cgroups(limit + 1)).expect_err("over half the cgroup map");
    assert!(
        matches!(
            err,
            CompileError::TooLarge { map: "EGRESS_CGROUPS", entries, limit: l }
                if entries == limit + 1 && l == limit
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("32769 entries in EGRESS_CGROUPS"),
        "{err}"
    );
}
