//! Host patterns and `spec.dns` in policy files: canonical forms, synthesized rules, reserved
//! names, and the DNS lint.

use std::path::Path;

use super::tests::{HEAD, assert_error};
use super::{Action, DNS_OTHER_RESOLVERS, DNS_RESOLVERS, Destination, PolicySet, parse_str};

fn load(spec: &str) -> PolicySet {
    parse_str(Path::new("f.yaml"), &format!("{HEAD}{spec}")).expect("valid test input")
}

#[test]
fn host_patterns_are_stored_lowercase_without_the_trailing_dot() {
    let set = load(
        "  egress:\n    - name: r\n      action: allow\n      to: [{host: API.Example.COM.}, {host: \"*.CDN.example.com.\"}]\n",
    );
    assert_eq!(
        set.policies[0].rules[0].to,
        [
            Destination::Host("api.example.com".into()),
            Destination::Host("*.cdn.example.com".into()),
        ]
    );
}

#[test]
fn a_lone_dot_or_double_trailing_dot_is_no_host() {
    let rule = "  egress:\n    - name: r\n      action: deny\n      to: [{host: ";
    assert_error(
        &format!("{rule}\"a.com..\"}}]\n"),
        9,
        19,
        &["invalid host `a.com..`"],
    );
    assert_error(&format!("{rule}\".\"}}]\n"), 9, 19, &["invalid host `.`"]);
}

#[test]
fn dns_resolvers_add_two_rules_after_the_policy_rules() {
    let set = load(
        "  defaultAction: deny\n  dns:\n    resolvers: [192.0.2.53, 2001:db8::53, 198.51.100.0/24]\n  egress:\n    - name: web\n      action: allow\n      to: [{host: api.example.com}]\n      protocol: tcp\n      ports: [443]\n",
    );
    let policy = &set.policies[0];
    let names: Vec<(&str, u32, Action)> = policy
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.id, r.action))
        .collect();
    assert_eq!(
        names,
        [
            ("web", 1, Action::Allow),
            (DNS_RESOLVERS, 2, Action::Allow),
            (DNS_OTHER_RESOLVERS, 3, Action::Deny),
        ]
    );
    assert_eq!(policy.default_id, 4);
    let (allow, deny) = (&policy.rules[1], &policy.rules[2]);
    let ip = |s: &str| s.parse().expect("valid test input");
    for (addr, allowed) in [
        ("192.0.2.53", true),
        ("198.51.100.9", true),
        ("2001:db8::53", true),
        ("192.0.2.54", false),
        ("2001:db8::54", false),
    ] {
        for protocol in [6, 17] {
            assert_eq!(allow.matches(ip(addr), protocol, 53), allowed, "{addr}");
            assert_eq!(deny.matches(ip(addr), protocol, 53), !allowed, "{addr}");
            assert!(
                !allow.matches(ip(addr), protocol, 54) && !deny.matches(ip(addr), protocol, 54)
            );
        }
    }
    // The resolvers satisfy the allowlist's DNS check: no warning.
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
}

#[test]
fn dns_errors_have_positions() {
    assert_error("  dns: {}\n", 6, 8, &["missing field `resolvers`"]);
    assert_error("  dns: {resolvers: []}\n", 6, 20, &["empty list"]);
    assert_error(
        "  dns: {resolvers: [192.0.2.300]}\n",
        6,
        21,
        &["`192.0.2.300` is not a valid IP address"],
    );
    assert_error(
        "  dns:\n    resolver: [192.0.2.53]\n",
        7,
        5,
        &["unknown field `resolver`", "did you mean `resolvers`?"],
    );
}

#[test]
fn synthesized_rule_names_are_reserved() {
    for (name, column) in [(DNS_RESOLVERS, 13), (DNS_OTHER_RESOLVERS, 13)] {
        assert_error(
            &format!(
                "  egress:\n    - name: {name}\n      action: allow\n      to: [{{entity: any}}]\n"
            ),
            7,
            column,
            &[&format!("rule name `{name}` is reserved")],
        );
        assert_error(
            &format!(
                "  ingress:\n    - name: {name}\n      action: allow\n      from: [{{entity: any}}]\n"
            ),
            7,
            column,
            &[&format!("rule name `{name}` is reserved")],
        );
    }
}

#[test]
fn host_rules_without_dns_under_default_deny_warn_at_the_host() {
    let set = load(
        "  defaultAction: deny\n  egress:\n    - name: web\n      action: allow\n      to: [{cidr: 10.0.0.0/8}, {host: api.example.com}]\n      protocol: tcp\n      ports: [443]\n",
    );
    let rendered: Vec<String> = set.warnings.iter().map(|w| w.render("warning")).collect();
    assert_eq!(rendered.len(), 2, "{rendered:#?}");
    assert!(rendered[0].contains("allows no DNS"), "{rendered:#?}");
    assert!(
        rendered[1].starts_with(
            "f.yaml:10:32: warning: host rules match only addresses learned from DNS answers"
        ) && rendered[1].ends_with("workloads need DNS to learn names"),
        "{rendered:#?}"
    );
    // Host rules alone are no longer a warning.
    let set = load(
        "  egress:\n    - name: web\n      action: allow\n      to: [{host: api.example.com}]\n",
    );
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
}
