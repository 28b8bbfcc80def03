//! `--kube-uncovered-pods deny`: snapshots hold the synthetic policy, the compiled maps and
//! the reference evaluator agree on it, known pods are exempt and unknown ones denied.

use std::net::IpAddr;

use egress_common::{Decision, verdict};
use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::source::KubePolicies;
use super::state::{KubeState, Snapshot};
use super::uncovered::{UNCOVERED_POLICY, UncoveredPods};
use super::{CgroupDriver, Layout};
use crate::compile::{CgroupResolution, compile, mapsim::MapSim};
use crate::eval;
use crate::policy::{Policy, PolicySet, Selector};

const WEB: &str = "11111111-2222-3333-4444-555555555555";
const DB: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const PENDING: &str = "12121212-3434-5656-7878-909090909090";
const UNKNOWN: &str = "0f0f0f0f-1e1e-2d2d-3c3c-4b4b4b4b4b4b";

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("valid test object")
}

fn pod(name: &str, uid: &str, qos: Option<&str>, app: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": {"app": app}},
        "spec": {"nodeName": "node-a"},
        "status": {"phase": "Running", "qosClass": qos},
    }))
}

fn policy(name: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "egress.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": name, "generation": 1},
        "spec": {
            "selector": {"pods": {"namespaces": ["shop"], "matchLabels": {"app": "web"}}},
            "defaultAction": "deny",
            "egress": [{"name": "api", "action": "allow", "to": [{"cidr": "198.51.100.0/24"}],
                        "protocol": "tcp", "ports": [443]}],
        },
    }))
}

fn state(pods: &[DynamicObject]) -> KubeState {
    let mut state = KubeState::default();
    state.replace_policies(&[policy("web-only")]);
    state.replace_pods(pods);
    state
}

fn node_pods() -> Vec<DynamicObject> {
    vec![
        pod("web-1", WEB, Some("Burstable"), "web"),
        pod("db-1", DB, Some("BestEffort"), "db"),
        // No QoS class yet: its cgroup cannot be placed, so it is not known.
        pod("web-2", PENDING, None, "web"),
    ]
}

fn systemd_pod(uid: &str, qos: &str) -> String {
    format!(
        "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice",
        uid.replace('-', "_")
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid test input")
}

/// The decision of the compiled maps for TCP from `cgroup` to `dst`:443, checked against the
/// reference evaluator.
fn judge(snapshot: &Snapshot, cgroup: &str, dst: &str) -> Decision {
    let resolution = snapshot.resolution();
    let compiled = compile(&snapshot.set, &resolution, 0).expect("compiles");
    let got = MapSim::new(&compiled).decide(cgroup, 0, ip(dst), 6, 443);
    let want = eval::decide_in(&snapshot.set, &resolution, cgroup, 0, ip(dst), 6, 443);
    assert_eq!(got, want, "{cgroup} -> {dst}: maps and evaluator disagree");
    got
}

fn policy_of(set: &PolicySet, rule: u32) -> String {
    let table = set.rule_table();
    let info = table.iter().find(|info| info.id == rule);
    info.map_or_else(|| format!("no rule {rule}"), |info| info.policy.clone())
}

#[test]
fn unknown_pods_are_denied_and_known_pods_get_exactly_their_policies() {
    let snapshot = state(&node_pods()).snapshot(
        &Layout::new(CgroupDriver::Systemd),
        UncoveredPods::Deny,
        false,
    );
    let names: Vec<&str> = snapshot
        .set
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, [UNCOVERED_POLICY, "web-only"]);
    let web = systemd_pod(WEB, "burstable");
    let web_ctr = format!("{web}/cri-containerd-00aa11.scope");
    let db = systemd_pod(DB, "besteffort");
    let unknown = format!(
        "{}/cri-containerd-00bb.scope",
        systemd_pod(UNKNOWN, "besteffort")
    );
    let pending = systemd_pod(PENDING, "besteffort");

    // Known pods: the selected one as its policy says, the other one ungoverned.
    assert_eq!(
        judge(&snapshot, &web_ctr, "198.51.100.7").verdict,
        verdict::ALLOW
    );
    let denied = judge(&snapshot, &web, "203.0.113.7");
    assert_eq!(
        (denied.verdict, policy_of(&snapshot.set, denied.rule)),
        (verdict::DENY, "web-only".to_string())
    );
    assert_eq!(judge(&snapshot, &db, "203.0.113.7"), Decision::UNGOVERNED);
    assert_eq!(
        judge(&snapshot, &format!("{db}/x"), "203.0.113.7"),
        Decision::UNGOVERNED
    );

    // Everything else below the kubepods root, known sibling or not: denied, and logged.
    for cgroup in [
        unknown.as_str(),
        pending.as_str(),
        "/kubepods.slice",
        "/kubepods.slice/kubepods-besteffort.slice",
    ] {
        let decision = judge(&snapshot, cgroup, "198.51.100.7");
        assert_eq!(decision.verdict, verdict::DENY, "{cgroup}");
        assert_eq!(
            policy_of(&snapshot.set, decision.rule),
            UNCOVERED_POLICY,
            "{cgroup}"
        );
        assert_ne!(decision.log, 0, "{cgroup}: the denial must be audited");
    }
    // Outside the kubepods root nothing changes.
    assert_eq!(
        judge(&snapshot, "/system.slice/sshd.service", "203.0.113.7"),
        Decision::UNGOVERNED
    );
}

#[test]
fn the_exemptions_are_listed_so_the_kernel_finds_them_deeper_than_the_root() {
    let layout = Layout::new(CgroupDriver::Cgroupfs);
    let snapshot = state(&node_pods()).snapshot(&layout, UncoveredPods::Deny, false);
    let compiled = compile(&snapshot.set, &snapshot.resolution(), 0).expect("compiles");
    let class_of = |path: &str| {
        compiled
            .cgroups
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, class)| *class)
    };
    // The unselected known pod has an entry of class 0 ("no cgroup selector matches").
    assert_eq!(class_of(&format!("/kubepods/besteffort/pod{DB}")), Some(0));
    assert!(class_of("/kubepods").is_some_and(|class| class != 0));
    assert!(class_of(&format!("/kubepods/burstable/pod{WEB}")).is_some_and(|class| class != 0));
}

#[test]
fn allow_mode_adds_nothing() {
    let snapshot = state(&node_pods()).snapshot(
        &Layout::new(CgroupDriver::Systemd),
        UncoveredPods::Allow,
        false,
    );
    let names: Vec<&str> = snapshot
        .set
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["web-only"]);
    let unknown = systemd_pod(UNKNOWN, "besteffort");
    assert_eq!(
        judge(&snapshot, &unknown, "203.0.113.7"),
        Decision::UNGOVERNED
    );
}

#[test]
fn a_pod_that_comes_or_goes_changes_what_is_enforced() {
    let layout = Layout::new(CgroupDriver::Systemd);
    let mut state = state(&node_pods());
    let before = KubePolicies::from_snapshot(&state.snapshot(&layout, UncoveredPods::Deny, false));
    // A pod no policy selects: only the exemption changes.
    state.upsert_pod(&pod("db-2", UNKNOWN, Some("BestEffort"), "db"));
    let after_snapshot = state.snapshot(&layout, UncoveredPods::Deny, false);
    let after = KubePolicies::from_snapshot(&after_snapshot);
    assert_ne!(before, after);
    let unknown = systemd_pod(UNKNOWN, "besteffort");
    assert_eq!(
        judge(&after_snapshot, &unknown, "203.0.113.7"),
        Decision::UNGOVERNED
    );
}

#[test]
fn an_object_with_the_reserved_name_is_rejected_only_in_deny_mode() {
    let mut state = KubeState::default();
    state.replace_policies(&[policy(UNCOVERED_POLICY), policy("web-only")]);
    let layout = Layout::new(CgroupDriver::Systemd);
    let deny = state.snapshot(&layout, UncoveredPods::Deny, false);
    let entry = deny.policies.iter().find(|e| e.name == UNCOVERED_POLICY);
    let err = entry
        .and_then(|e| e.parsed.as_ref().err())
        .expect("rejected");
    assert!(err.contains("reserved"), "{err}");
    let synthetic: Vec<&Policy> = deny
        .set
        .policies
        .iter()
        .filter(|p| p.name == UNCOVERED_POLICY)
        .collect();
    assert_eq!(synthetic.len(), 1);
    assert!(synthetic[0].rules.is_empty());
    let allow = state.snapshot(&layout, UncoveredPods::Allow, false);
    assert!(allow.policies.iter().all(|e| e.parsed.is_ok()));
}

#[test]
fn an_exclusion_deselects_the_path_and_below_and_needs_a_cgroup_condition() {
    let selector = Selector {
        cgroups: vec!["/k".into()],
        excluded: vec!["/k/a".into()],
        ..Selector::default()
    };
    assert!(selector.matches_cgroup("/k"));
    assert!(selector.matches_cgroup("/k/ab"));
    assert!(!selector.matches_cgroup("/k/a"));
    assert!(!selector.matches_cgroup("/k/a/c"));
    let exclusion_only = Selector {
        excluded: vec!["/k/a".into()],
        ..Selector::default()
    };
    assert!(!exclusion_only.selects_cgroups());
    assert!(
        exclusion_only.matches_cgroup("/k/a"),
        "global: exclusions narrow nothing"
    );
    // Reference and maps agree on an exclusion below a unit's path and on the unit path.
    let policies = PolicySet::new(vec![Policy {
        name: "p".into(),
        selector: Selector {
            units: vec!["u.service".into()],
            excluded: vec!["/s/u.service/inner".into()],
            ..Selector::default()
        },
        default_action: crate::policy::Action::Deny,
        ..Policy::default()
    }]);
    let mut resolution = CgroupResolution::default();
    resolution
        .units
        .insert("u.service".into(), vec!["/s/u.service".into()]);
    let compiled = compile(&policies, &resolution, 0).expect("compiles");
    let sim = MapSim::new(&compiled);
    for (cgroup, want) in [
        ("/s/u.service", verdict::DENY),
        ("/s/u.service/other", verdict::DENY),
        ("/s/u.service/inner", verdict::ALLOW),
        ("/s/u.service/inner/deeper", verdict::ALLOW),
    ] {
        let got = sim.decide(cgroup, 0, ip("192.0.2.1"), 6, 443);
        let reference = eval::decide_in(&policies, &resolution, cgroup, 0, ip("192.0.2.1"), 6, 443);
        assert_eq!((got, got.verdict), (reference, want), "{cgroup}");
    }
}
