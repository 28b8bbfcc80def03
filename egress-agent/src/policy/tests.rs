//! One test per error class: exact positions and the key words of each message.

use std::path::Path;

use super::{Diagnostic, LoadError, parse_str};

pub(super) const HEAD: &str =
    "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: p\nspec:\n";

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse_str(Path::new("f.yaml"), text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(LoadError::Invalid(d)) => d,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The single error of `spec` (appended to a valid header): (line, column, message).
fn error(spec: &str) -> (usize, usize, String) {
    let text = format!("{HEAD}{spec}");
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    let d = &all[0];
    let l = d.location.unwrap_or_else(|| panic!("no location: {d}"));
    (l.line, l.column, d.message.clone())
}

pub(super) fn assert_error(spec: &str, line: usize, column: usize, words: &[&str]) {
    let (l, c, message) = error(spec);
    for w in words {
        assert!(message.contains(w), "{message:?} lacks {w:?}");
    }
    assert_eq!((l, c), (line, column), "{message}");
}

#[test]
fn unknown_field_suggests() {
    assert_error(
        "  defaultActon: deny\n",
        6,
        3,
        &[
            "unknown field `defaultActon`",
            "did you mean `defaultAction`?",
        ],
    );
}

#[test]
fn unknown_variant_suggests() {
    assert_error(
        "  mode: enforc\n",
        6,
        9,
        &["unknown variant `enforc`", "did you mean `enforce`?"],
    );
}

#[test]
fn wrong_type() {
    assert_error("  egress: 5\n", 6, 11, &["invalid type"]);
}

#[test]
fn host_bits() {
    let spec =
        "  egress:\n    - name: r\n      action: deny\n      to:\n        - cidr: 203.0.113.1/24\n";
    assert_error(
        spec,
        10,
        17,
        &["203.0.113.1/24 has host bits set; did you mean 203.0.113.0/24?"],
    );
}

#[test]
fn invalid_cidr() {
    let spec = "  egress:\n    - name: r\n      action: deny\n      to: [{cidr: 300.1.1.1/8}]\n";
    assert_error(spec, 9, 19, &["not a valid IP address"]);
}

#[test]
fn mapped_ipv6() {
    let spec = "  egress:\n    - name: r\n      action: deny\n      to: [{cidr: \"::ffff:10.0.0.0/104\"}]\n";
    assert_error(spec, 9, 19, &["IPv4-mapped", "10.0.0.0/8"]);
}

#[test]
fn port_zero() {
    let spec = "  egress:\n    - name: r\n      action: deny\n      to: [{entity: any}]\n      ports: [443, 0]\n";
    assert_error(spec, 10, 20, &["port 0"]);
}

#[test]
fn port_range_out_of_order() {
    let spec = "  egress:\n    - name: r\n      action: deny\n      to: [{entity: any}]\n      ports: [\"9000-8000\"]\n";
    assert_error(spec, 10, 15, &["out of order", "8000-9000"]);
}

#[test]
fn ports_with_icmp() {
    let spec = "  egress:\n    - name: r\n      action: deny\n      to: [{entity: any}]\n      protocol: icmp\n      ports: [1]\n";
    assert_error(spec, 7, 7, &["ports only apply to tcp, udp or any", "icmp"]);
}

#[test]
fn except_outside_cidr() {
    let spec = "  egress:\n    - name: r\n      action: deny\n      to:\n        - cidr: 10.0.0.0/8\n          except: [11.0.0.0/16]\n";
    assert_error(
        spec,
        10,
        11,
        &["except 11.0.0.0/16 is not inside cidr 10.0.0.0/8"],
    );
}

#[test]
fn empty_to() {
    let spec = "  egress:\n    - name: r\n      action: deny\n      to: []\n";
    assert_error(spec, 9, 11, &["empty list"]);
}

#[test]
fn unknown_entity() {
    let spec =
        "  egress:\n    - name: r\n      action: deny\n      to: [{entity: cloud-metdata}]\n";
    assert_error(
        spec,
        9,
        21,
        &[
            "unknown variant `cloud-metdata`",
            "did you mean `cloud-metadata`?",
        ],
    );
}

#[test]
fn bad_host() {
    let spec =
        "  egress:\n    - name: r\n      action: deny\n      to: [{host: \"bad_host!.com\"}]\n";
    assert_error(spec, 9, 19, &["invalid host"]);
}

#[test]
fn duplicate_rule_names() {
    let spec = "  egress:\n    - name: r\n      action: deny\n      to: [{entity: any}]\n    - name: r\n      action: allow\n      to: [{entity: any}]\n";
    assert_error(
        spec,
        10,
        13,
        &["duplicate rule name `r`", "first at line 7, column 13"],
    );
}

const INGRESS: &str = "  ingress:\n    - name: r\n      action: allow\n";

#[test]
fn ingress_rule_unknown_field_suggests() {
    assert_error(
        &format!("{INGRESS}      from: [{{entity: any}}]\n      port: [22]\n"),
        10,
        7,
        &[
            "spec.ingress[0]: unknown field `port`",
            "did you mean `ports`?",
        ],
    );
}

#[test]
fn ingress_rule_with_to_says_use_from() {
    assert_error(
        &format!("{INGRESS}      to: [{{entity: any}}]\n"),
        9,
        11,
        &[
            "ingress rules match sources",
            "use `from:` instead of `to:`",
        ],
    );
    assert_error(
        "  egress:\n    - name: r\n      action: deny\n      from: [{entity: any}]\n",
        9,
        13,
        &["use `to:` instead of `from:`"],
    );
}

#[test]
fn host_cannot_select_inbound_sources() {
    assert_error(
        &format!("{INGRESS}      from:\n        - host: a.example.com\n"),
        10,
        17,
        &["host names cannot select inbound sources"],
    );
}

#[test]
fn ingress_ports_with_icmp() {
    assert_error(
        &format!(
            "{INGRESS}      from: [{{entity: any}}]\n      protocol: icmp\n      ports: [22]\n"
        ),
        7,
        7,
        &["ports only apply to tcp, udp or any", "icmp"],
    );
}

#[test]
fn ingress_entries_are_checked_like_egress_ones() {
    assert_error(
        &format!("{INGRESS}      from: [{{cidr: 192.0.2.1/24}}]\n"),
        9,
        21,
        &["has host bits set; did you mean 192.0.2.0/24?"],
    );
    assert_error(
        &format!("{INGRESS}      from: [{{entity: any, except: [10.0.0.0/8]}}]\n"),
        9,
        14,
        &["`except` only applies to `cidr` entries"],
    );
    assert_error(
        &format!("{INGRESS}      from: []\n"),
        9,
        13,
        &["empty list"],
    );
    assert_error(
        "  inbound: block\n",
        6,
        12,
        &["unknown variant `block`", "expected `allow` or `deny`"],
    );
}

#[test]
fn rule_names_are_unique_across_directions() {
    let spec = "  egress:\n    - name: r\n      action: deny\n      to: [{entity: any}]\n  ingress:\n    - name: r\n      action: allow\n      from: [{entity: any}]\n";
    assert_error(
        spec,
        11,
        13,
        &["duplicate rule name `r`", "first at line 7, column 13"],
    );
    assert_error(
        "  ingress:\n    - name: inbound-default\n      action: allow\n      from: [{entity: any}]\n",
        7,
        13,
        &["`inbound-default` is reserved"],
    );
}

#[test]
fn inbound_parses_into_the_model() {
    let text = format!(
        "{HEAD}  inbound: deny\n  egress:\n    - name: out\n      action: deny\n      to: [{{cidr: 203.0.113.0/24}}]\n  ingress:\n    - name: ssh\n      action: allow\n      from: [{{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}, {{entity: private}}]\n      protocol: tcp\n      ports: [22, 22]\n"
    );
    let set = parse_str(Path::new("f.yaml"), &text).expect("valid inbound policy");
    let p = &set.policies[0];
    assert_eq!(p.inbound, super::Action::Deny);
    assert!(p.restricts_inbound());
    assert_eq!(p.ingress.len(), 1);
    let ssh = &p.ingress[0];
    assert_eq!(ssh.to.len(), 2, "the sources");
    assert_eq!(
        ssh.ports,
        Some(vec![super::PortRange {
            first: 22,
            last: 22
        }])
    );
    // Egress rules, ingress rules, default, inbound default.
    assert_eq!(
        (p.rules[0].id, ssh.id, p.default_id, p.inbound_default_id),
        (1, 2, 3, 4)
    );
    let table: Vec<String> = set.rule_table().iter().map(|r| r.rule.clone()).collect();
    assert_eq!(table, ["out", "ssh", "default", "inbound-default"]);
    assert_eq!((set.rule_count(), set.ingress_rule_count()), (2, 1));
    let plain = parse_str(Path::new("f.yaml"), &format!("{HEAD}  inbound: allow\n"))
        .expect("inbound: allow alone is valid");
    assert!(!plain.policies[0].restricts_inbound());
    assert_eq!(plain.policies[0].inbound_default_id, 0, "no inbound id");
}

#[test]
fn shadowed_ingress_rules_warn_at_their_names() {
    let text = format!(
        "{HEAD}  ingress:\n    - name: mgmt\n      action: allow\n      from: [{{cidr: 192.0.2.0/24}}]\n    - name: mgmt-ssh\n      action: allow\n      from: [{{cidr: 192.0.2.0/25}}]\n      protocol: tcp\n      ports: [22]\n"
    );
    let set = parse_str(Path::new("f.yaml"), &text).expect("valid test input");
    let rendered: Vec<String> = set.warnings.iter().map(|w| w.render("warning")).collect();
    assert_eq!(rendered.len(), 1, "{rendered:?}");
    assert!(
        rendered[0].starts_with(
            "f.yaml:10:13: warning: rule `mgmt-ssh` is shadowed by earlier rule `mgmt`"
        ),
        "{rendered:?}"
    );
}

#[test]
fn pod_selector_parses_into_the_model() {
    let text = format!(
        "{HEAD}  selector:\n    pods:\n      namespaces: [ml, batch, ml]\n      matchLabels: {{app: trainer, app.kubernetes.io/part-of: ''}}\n      matchExpressions:\n        - {{key: env, operator: NotIn, values: [dev, ci]}}\n        - {{key: canary, operator: DoesNotExist}}\n"
    );
    let set = parse_str(Path::new("f.yaml"), &text).expect("valid pod selector");
    let pods = set.policies[0].selector.pods.clone().expect("pods kept");
    assert_eq!(pods.namespaces, ["batch", "ml"], "sorted, deduplicated");
    assert_eq!(pods.match_labels.len(), 2);
    assert_eq!(pods.match_labels["app.kubernetes.io/part-of"], "");
    assert_eq!(pods.match_expressions.len(), 2);
    assert_eq!(pods.match_expressions[0].values, ["ci", "dev"]);
    assert_eq!(
        pods.match_expressions[1].operator,
        super::LabelOperator::DoesNotExist
    );
    assert!(set.policies[0].selector.selects_cgroups());
    let empty = parse_str(
        Path::new("f.yaml"),
        &format!("{HEAD}  selector: {{pods: {{}}}}\n"),
    )
    .expect("an empty pod selector selects every pod");
    assert_eq!(empty.policies[0].selector.pods, Some(Default::default()));
}

#[test]
fn pod_selector_errors() {
    let pods = "  selector:\n    pods:\n";
    assert_error(
        &format!("{pods}      matchLabels: {{Bad Key: x}}\n"),
        8,
        21,
        &["invalid label key `Bad Key`"],
    );
    assert_error(
        &format!("{pods}      matchExpressions: [{{key: a, operator: In}}]\n"),
        8,
        26,
        &["`a`: In needs at least one value"],
    );
    assert_error(
        &format!("{pods}      matchExpressions: [{{key: a, operator: Exists, values: [x]}}]\n"),
        8,
        26,
        &["Exists takes no values"],
    );
    assert_error(
        &format!("{pods}      matchExpressions: [{{key: a, operator: Equals, values: [x]}}]\n"),
        8,
        45,
        &["unknown variant `Equals`"],
    );
    assert_error(
        &format!("{pods}      namespaces: []\n"),
        8,
        19,
        &["empty list"],
    );
    assert_error(
        &format!("{pods}      podLabels: {{}}\n"),
        8,
        7,
        &["unknown field `podLabels`"],
    );
}

#[test]
fn bad_api_version_and_kind() {
    let text = "apiVersion: egress.dev/v2\nkind: EgressPolicy\nmetadata: {name: p}\nspec: {}\n";
    let d = &errors(text)[0];
    assert_eq!(d.location.map(|l| (l.line, l.column)), Some((1, 13)));
    assert!(d.message.contains("unsupported apiVersion"), "{d}");
    let text = "apiVersion: egress.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec: {}\n";
    let d = &errors(text)[0];
    assert_eq!(d.location.map(|l| (l.line, l.column)), Some((2, 7)));
    assert!(d.message.contains("unsupported kind"), "{d}");
}

#[test]
fn bad_policy_name() {
    let text = "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: Bad_Name\nspec: {}\n";
    let d = &errors(text)[0];
    assert_eq!(d.location.map(|l| (l.line, l.column)), Some((4, 9)));
    assert!(d.message.contains("invalid policy name `Bad_Name`"), "{d}");
}

#[test]
fn duplicate_policy_names_across_documents() {
    let doc =
        "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: same\nspec: {}\n";
    let text = format!("{doc}---\n{doc}");
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    let d = &all[0];
    assert_eq!(d.location.map(|l| (l.line, l.column)), Some((10, 9)));
    assert!(
        d.message
            .contains("duplicate policy name `same`; first defined at f.yaml:4:9"),
        "{d}"
    );
}

#[test]
fn missing_field_and_bad_uid() {
    assert_error(
        "  egress:\n    - name: r\n      to: [{entity: any}]\n",
        7,
        7,
        &["missing field `action`"],
    );
    assert_error(
        "  selector: {uids: [-1]}\n",
        6,
        21,
        &["uid -1 is out of range"],
    );
    assert_error(
        "  selector: {cgroups: [system.slice]}\n",
        6,
        24,
        &["must start with `/`"],
    );
}

#[test]
fn errors_of_all_documents_are_collected() {
    let bad = format!("{HEAD}  mode: x\n");
    let text = format!("{bad}---\n{bad}");
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1].location.map(|l| l.line), Some(13));
    assert!(all[0].to_string().starts_with("f.yaml:6:9: "), "{}", all[0]);
}

#[test]
fn warnings_have_positions() {
    let text = format!(
        "{HEAD}  defaultAction: deny\n  egress:\n    - name: web\n      action: allow\n      to: [{{cidr: 10.0.0.0/8}}, {{host: api.example.com}}]\n    - name: web2\n      action: allow\n      to: [{{cidr: 10.1.0.0/16}}]\n    - name: block\n      action: deny\n      to: [{{cidr: 10.0.0.0/8}}]\n      protocol: tcp\n    - name: web3\n      action: allow\n      to: [{{cidr: 10.2.0.0/16}}]\n      protocol: tcp\n      ports: [443]\n"
    );
    let set = parse_str(Path::new("f.yaml"), &text).expect("valid test input");
    let rendered: Vec<String> = set.warnings.iter().map(|w| w.render("warning")).collect();
    let expect = [
        "f.yaml:11:13: warning: rule `web2` is shadowed by earlier rule `web`",
        "f.yaml:18:13: warning: allow rule `web3` lies entirely inside deny rule `block`",
    ];
    assert_eq!(rendered.len(), expect.len(), "{rendered:#?}");
    for (got, want) in rendered.iter().zip(expect) {
        assert!(
            got.starts_with(want),
            "{got}\n  does not start with\n{want}"
        );
    }
}

#[test]
fn allowlist_without_dns_warns_at_the_policy_name() {
    let text = format!(
        "{HEAD}  defaultAction: deny\n  egress:\n    - name: web\n      action: allow\n      to: [{{cidr: 10.0.0.0/8}}]\n      protocol: tcp\n      ports: [443]\n"
    );
    let set = parse_str(Path::new("f.yaml"), &text).expect("valid test input");
    let rendered: Vec<String> = set.warnings.iter().map(|w| w.render("warning")).collect();
    assert_eq!(rendered.len(), 1, "{rendered:?}");
    assert!(
        rendered[0]
            .starts_with("f.yaml:4:9: warning: policy `p` denies by default but allows no DNS"),
        "{rendered:?}"
    );
}

#[test]
fn a_syntax_error_is_reported_once_and_loading_ends() {
    // serde_yaml repeats a syntax error forever; the loader must stop at the first repeat.
    for text in ["a: [b", "spec:\n  egress: [{to: [{cidr: ::/0}]}]\n"] {
        let found = errors(text);
        let syntax: Vec<_> = found
            .iter()
            .filter(|d| d.message.contains("did not find expected"))
            .collect();
        assert_eq!(syntax.len(), 1, "{found:?}");
        assert!(syntax[0].location.is_some(), "{found:?}");
    }
}
