//! Pods as the API server sends them, resolved against policies, compiled, and judged.

use std::net::IpAddr;
use std::path::Path;

use egress_common::{Decision, verdict};
use serde_json::json;

use super::{CgroupDriver, Layout, Owner, Pod, resolve};
use crate::compile::{CgroupResolution, compile, mapsim::MapSim};
use crate::eval;
use crate::policy::parse_str;

const WEB_UID: &str = "11111111-2222-3333-4444-555555555555";
const DB_UID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const CID: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

fn pod(name: &str, ns: &str, uid: &str, qos: &str, labels: &serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels,
                     "resourceVersion": "7", "annotations": {"ignored": "yes"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": "Running", "qosClass": qos,
                   "containerStatuses": [{"name": "app", "containerID": format!("containerd://{CID}"), "ready": true}],
                   "initContainerStatuses": [{"name": "init"}]},
    }))
    .expect("valid test pod")
}

const POLICY: &str = "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: web-only}\nspec:\n  selector:\n    pods:\n      namespaces: [shop]\n      matchLabels: {app: web}\n  defaultAction: deny\n  egress:\n    - {name: api, action: allow, to: [{cidr: 198.51.100.0/24}], protocol: tcp, ports: [443]}\n";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid test input")
}

#[test]
fn selected_pods_resolve_to_their_pod_cgroup_in_both_drivers() {
    let set = parse_str(Path::new("p.yaml"), POLICY).expect("valid policy");
    let pods = [
        pod(
            "web-1",
            "shop",
            WEB_UID,
            "Burstable",
            &json!({"app": "web"}),
        ),
        pod("db-1", "shop", DB_UID, "Guaranteed", &json!({"app": "db"})),
        pod(
            "web-x",
            "other",
            DB_UID,
            "BestEffort",
            &json!({"app": "web"}),
        ),
    ];
    let selector = set.policies[0].selector.pods.clone().expect("pods");
    let want = [
        (
            CgroupDriver::Systemd,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod11111111_2222_3333_4444_555555555555.slice",
        ),
        (
            CgroupDriver::Cgroupfs,
            "/kubepods/burstable/pod11111111-2222-3333-4444-555555555555",
        ),
    ];
    for (driver, path) in want {
        let resolution = resolve(&set, &pods, &Layout::new(driver));
        assert!(resolution.errors.is_empty(), "{:?}", resolution.errors);
        assert_eq!(resolution.pods[&selector], [path], "{driver:?}");
    }
}

#[test]
fn resolved_pods_are_judged_as_the_policy_says() {
    let set = parse_str(Path::new("p.yaml"), POLICY).expect("valid policy");
    let layout = Layout::new(CgroupDriver::Systemd);
    let pods = [
        pod(
            "web-1",
            "shop",
            WEB_UID,
            "Burstable",
            &json!({"app": "web"}),
        ),
        pod("db-1", "shop", DB_UID, "Guaranteed", &json!({"app": "db"})),
    ];
    let resolution = CgroupResolution {
        pods: resolve(&set, &pods, &layout).pods,
        ..CgroupResolution::default()
    };
    let compiled = compile(&set, &resolution, 0).expect("compiles");
    let sim = MapSim::new(&compiled);
    let owners = pods[0].owners(&layout).expect("placeable");
    let container = &owners[1].0;
    assert!(container.ends_with(&format!("/cri-containerd-{CID}.scope")));
    let db = pods[1].cgroup_path(&layout).expect("placeable");
    let cases = [
        (container.as_str(), "198.51.100.7", 443, verdict::ALLOW),
        (container.as_str(), "198.51.100.7", 80, verdict::DENY),
        (container.as_str(), "192.0.2.1", 443, verdict::DENY),
        (db.as_str(), "192.0.2.1", 443, verdict::ALLOW),
    ];
    for (cgroup, dst, port, want) in cases {
        let got = sim.decide(cgroup, 0, ip(dst), 6, port);
        assert_eq!(got.verdict, want, "{cgroup} -> {dst}:{port}");
        let reference = eval::decide_in(&set, &resolution, cgroup, 0, ip(dst), 6, port);
        assert_eq!(got, reference);
    }
    assert_eq!(
        sim.decide(&db, 0, ip("192.0.2.1"), 6, 443),
        Decision::UNGOVERNED
    );
}

#[test]
fn owners_name_namespace_pod_and_container() {
    let layout = Layout::new(CgroupDriver::Cgroupfs);
    let p = pod("web-1", "shop", WEB_UID, "BestEffort", &json!({}));
    let owners = p.owners(&layout).expect("placeable");
    assert_eq!(owners.len(), 2, "init container has no id yet: {owners:?}");
    assert_eq!(
        owners[1],
        (
            format!("/kubepods/besteffort/pod{WEB_UID}/{CID}"),
            Owner {
                namespace: "shop".into(),
                pod: "web-1".into(),
                container: Some("app".into()),
            }
        )
    );
    assert_eq!(owners[0].1.container, None);
}

#[test]
fn unplaceable_pods_are_reported_not_guessed() {
    let set = parse_str(Path::new("p.yaml"), POLICY).expect("valid policy");
    let mut pending = pod(
        "web-2",
        "shop",
        WEB_UID,
        "Burstable",
        &json!({"app": "web"}),
    );
    pending.status.qos_class = None;
    let resolution = resolve(&set, &[pending], &Layout::new(CgroupDriver::Systemd));
    assert_eq!(resolution.errors.len(), 1);
    assert!(resolution.errors[0].to_string().contains("shop/web-2"));
    let selector = set.policies[0].selector.pods.clone().expect("pods");
    assert!(resolution.pods[&selector].is_empty());
}
