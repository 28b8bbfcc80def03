//! Host rules, hand-checked: every case is decided by the reference evaluator and by the
//! compiled maps (through `mapsim`), and both must give the expected decision.

use std::net::IpAddr;
use std::path::Path;

use egress_common::dns::HOST_KEY_BYTES;
use egress_common::{Decision, PARITY_BIT, config_flags, verdict};

use super::mapsim::MapSim;
use super::{CgroupResolution, compile};
use crate::eval;
use crate::policy::{PolicySet, parse_str};

const HEAD: &str = "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\n";

fn set(docs: &str) -> PolicySet {
    parse_str(Path::new("t.yaml"), docs).expect("valid test input")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid test input")
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

/// The decision for a TCP or UDP packet of `/app` (uid 0), from both deciders, which must
/// agree (under both parities).
fn decide(set: &PolicySet, dst: &str, learned: &[&str], protocol: u8, port: u16) -> Decision {
    let learned = names(learned);
    let want = eval::decide_named(set, "/app", 0, ip(dst), &learned, protocol, port);
    for parity in [0, PARITY_BIT] {
        let compiled = compile(set, &CgroupResolution::default(), parity).expect("compiles");
        let got = MapSim::new(&compiled).decide_named("/app", 0, ip(dst), &learned, protocol, port);
        assert_eq!(got, want, "maps and evaluator differ for {dst} {learned:?}");
    }
    want
}

const ALLOWLIST: &str = "metadata: {name: p}\nspec:\n  defaultAction: deny\n  log: deny\n  egress:\n    - name: api\n      action: allow\n      to: [{host: API.example.com.}, {host: \"*.cdn.example.com\"}]\n      protocol: tcp\n      ports: [443]\n";

#[test]
fn names_match_in_any_case_with_or_without_the_trailing_dot() {
    let set = set(&format!("{HEAD}{ALLOWLIST}"));
    for name in [
        "api.example.com",
        "API.EXAMPLE.COM.",
        "x.y.CDN.example.com.",
    ] {
        let d = decide(&set, "192.0.2.1", &[name], 6, 443);
        assert_eq!((d.verdict, d.rule), (verdict::ALLOW, 1), "{name}");
    }
    let d = decide(&set, "192.0.2.1", &["api.example.com"], 6, 80);
    assert_eq!((d.verdict, d.rule), (verdict::DENY, 2), "ports still count");
    let d = decide(&set, "192.0.2.1", &[], 6, 443);
    assert_eq!(d.verdict, verdict::DENY, "an address learned for no name");
}

#[test]
fn a_wildcard_does_not_match_its_base() {
    let set = set(&format!("{HEAD}{ALLOWLIST}"));
    let d = decide(&set, "192.0.2.1", &["cdn.example.com"], 6, 443);
    assert_eq!((d.verdict, d.rule), (verdict::DENY, 2));
    let d = decide(
        &set,
        "192.0.2.1",
        &["example.com", "cdn.example.com."],
        6,
        443,
    );
    assert_eq!(d.verdict, verdict::DENY);
}

#[test]
fn an_allowed_connection_of_a_log_deny_allowlist_is_not_logged() {
    let set = set(&format!("{HEAD}{ALLOWLIST}"));
    let d = decide(&set, "192.0.2.1", &["api.example.com"], 6, 443);
    assert_eq!((d.verdict, d.log), (verdict::ALLOW, 0));
    let d = decide(&set, "192.0.2.1", &["other.example.com"], 6, 443);
    assert_eq!((d.verdict, d.log), (verdict::DENY, 1));
}

#[test]
fn deny_wins_across_the_names_of_one_address() {
    let docs = format!(
        "{HEAD}metadata: {{name: p}}\nspec:\n  egress:\n    - name: cdn\n      action: allow\n      to: [{{host: \"*.cdn.example\"}}]\n    - name: no-tracker\n      action: deny\n      to: [{{host: tracker.example}}]\n---\n{HEAD}metadata: {{name: q}}\nspec:\n  egress:\n    - name: web\n      action: allow\n      to: [{{host: www.example}}]\n"
    );
    let set = set(&docs);
    // `www.example` is a CNAME for `edge.cdn.example`, an alias shared with `tracker.example`.
    let d = decide(
        &set,
        "198.51.100.7",
        &["www.example", "edge.cdn.example"],
        6,
        443,
    );
    assert_eq!((d.verdict, d.rule), (verdict::ALLOW, 1), "lowest allow id");
    let learned = ["www.example", "edge.cdn.example", "tracker.example"];
    for order in [learned, [learned[2], learned[0], learned[1]]] {
        let d = decide(&set, "198.51.100.7", &order, 6, 443);
        assert_eq!((d.verdict, d.rule), (verdict::DENY, 2), "{order:?}");
    }
}

#[test]
fn dns_to_other_resolvers_is_denied() {
    let docs = format!(
        "{HEAD}metadata: {{name: p}}\nspec:\n  dns: {{resolvers: [192.0.2.53, \"2001:db8::53\"]}}\n  egress:\n    - name: web\n      action: allow\n      to: [{{host: api.example.com}}]\n"
    );
    let set = set(&docs);
    for (dst, protocol) in [("192.0.2.53", 17), ("2001:db8::53", 6)] {
        let d = decide(&set, dst, &[], protocol, 53);
        assert_eq!((d.verdict, d.rule), (verdict::ALLOW, 2), "{dst}");
    }
    for (dst, protocol) in [("198.51.100.53", 17), ("2001:db8::54", 6)] {
        let d = decide(&set, dst, &[], protocol, 53);
        assert_eq!((d.verdict, d.rule), (verdict::DENY, 3), "{dst}");
    }
    // The allow rule for a host does not open port 53 of a resolver the workload learned
    // by name: deny rules win.
    let d = decide(&set, "203.0.113.53", &["api.example.com"], 17, 53);
    assert_eq!((d.verdict, d.rule), (verdict::DENY, 3));
    let d = decide(&set, "203.0.113.53", &[], 6, 443);
    assert_eq!(
        (d.verdict, d.rule),
        (verdict::ALLOW, 4),
        "other ports: the default"
    );
}

#[test]
fn the_trie_keys_match_the_shared_encoding() {
    let set = set(&format!("{HEAD}{ALLOWLIST}"));
    let compiled = compile(&set, &CgroupResolution::default(), PARITY_BIT).expect("compiles");
    assert_ne!(compiled.flags & config_flags::HOSTS, 0);
    let mut keys: Vec<(u32, Vec<u8>, bool)> = compiled
        .hostnames
        .iter()
        .map(|(bits, data, set)| {
            assert_eq!(data.len(), HOST_KEY_BYTES);
            (*bits, data[..(*bits / 8) as usize].to_vec(), *set != 0)
        })
        .collect();
    keys.sort();
    let want: Vec<(u32, Vec<u8>, bool)> = vec![
        (8 * 18, b"\x01com.example.api.\0".to_vec(), true),
        // The wildcard's prefix, then the shadow entry of its base, which no pattern matches.
        (8 * 17, b"\x01com.example.cdn.".to_vec(), true),
        (8 * 18, b"\x01com.example.cdn.\0".to_vec(), false),
    ];
    let mut want = want;
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(compiled.summary.hostnames, 3);
    // One class: both sets select the same rule.
    assert_eq!(compiled.summary.name_classes, 2);
    assert_eq!(compiled.name_classes[0].1, compiled.name_classes[1].1);
}
