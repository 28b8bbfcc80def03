//! Every manifest under `deploy/kubernetes/` parses and holds what the deployment relies on:
//! least privilege, the mounts and their propagation, probes, RBAC limited to what the agent
//! reads, and a ConfigMap whose policies load.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use super::crd::{GROUP, PLURAL};
use crate::policy::parse_str;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn documents(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file:?}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every object of the kustomize base, in its resource order.
fn objects() -> Vec<Value> {
    let base = &documents(&dir().join("kustomization.yaml"))[0];
    let resources = base["resources"].as_sequence().expect("resources list");
    resources
        .iter()
        .flat_map(|r| documents(&dir().join(r.as_str().expect("resource path"))))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_manifest_is_listed_and_well_formed() {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .expect("deploy/kubernetes")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    let base = &documents(&dir().join("kustomization.yaml"))[0];
    let mut listed: Vec<String> = strs(&base["resources"])
        .into_iter()
        .map(String::from)
        .collect();
    listed.sort();
    assert_eq!(files, listed, "kustomization.yaml lists every manifest");
    for object in objects() {
        for field in ["apiVersion", "kind"] {
            assert!(object[field].is_string(), "{field} in {object:?}");
        }
        assert!(object["metadata"]["name"].is_string(), "name in {object:?}");
    }
}

#[test]
fn daemonset_runs_with_least_privilege_and_the_right_mounts() {
    let objects = objects();
    let ds = find(&objects, "DaemonSet", "egress-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], Value::Bool(false));
    assert_ne!(pod["hostPID"], Value::Bool(true));
    assert_eq!(
        pod["tolerations"][0]["operator"], "Exists",
        "every node, tainted or not"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], Value::Bool(true));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let mut add = strs(&sc["capabilities"]["add"]);
    add.sort_unstable();
    // Measured minimum on Linux 6.18 (docs/kubernetes.md): each one missing breaks load or attach.
    assert_eq!(add, ["BPF", "NET_ADMIN", "PERFMON"]);

    let mount = |name: &str| {
        c["volumeMounts"]
            .as_sequence()
            .and_then(|m| m.iter().find(|m| m["name"] == name))
            .unwrap_or_else(|| panic!("mount {name}"))
    };
    let host_path = |name: &str| {
        pod["volumes"]
            .as_sequence()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("hostPath volume {name}"))
    };
    assert_eq!(mount("bpffs")["mountPropagation"], "Bidirectional");
    assert_eq!(mount("bpffs")["mountPath"], "/sys/fs/bpf");
    assert_eq!(host_path("bpffs"), "/sys/fs/bpf");
    assert_eq!(host_path("cgroup"), "/sys/fs/cgroup");
    assert_eq!(host_path("audit"), "/var/log/egress");

    let args = strs(&c["args"]);
    let arg = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
            .unwrap_or_else(|| panic!("--{flag}"))
    };
    assert_eq!(
        arg("cgroup-root"),
        mount("cgroup")["mountPath"].as_str().unwrap_or("")
    );
    // Kubernetes mode in the base; the configmap-mode overlay swaps the flag for the files.
    assert_eq!(args.get(1), Some(&"--kubernetes"), "{args:?}");
    let overlay = &documents(&dir().join("configmap-mode/kustomization.yaml"))[0];
    assert_eq!(strs(&overlay["resources"]), [".."]);
    let patch: Vec<Value> = serde_yaml::from_str(
        overlay["patches"][0]["patch"]
            .as_str()
            .expect("an inline JSON patch"),
    )
    .expect("valid test input");
    assert_eq!(
        patch[0]["path"], "/spec/template/spec/containers/0/args/1",
        "the patch replaces --kubernetes"
    );
    let policy_flag = patch[0]["value"].as_str().expect("a flag");
    assert_eq!(
        policy_flag.strip_prefix("--policy="),
        mount("policies")["mountPath"].as_str()
    );
    let audit_dir = Path::new(arg("audit-log")).parent().and_then(Path::to_str);
    assert_eq!(audit_dir, mount("audit")["mountPath"].as_str());

    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let port = c["ports"]
        .as_sequence()
        .and_then(|p| p.iter().find(|p| p["name"] == "metrics"))
        .expect("metrics port");
    // The probes only answer if the agent serves metrics on that port.
    let metrics: std::net::SocketAddr = arg("metrics").parse().expect("--metrics=ADDR:PORT");
    assert_eq!(
        Some(u64::from(metrics.port())),
        port["containerPort"].as_u64(),
        "--metrics listens on the probed port"
    );
    assert!(
        metrics.ip().is_unspecified(),
        "the kubelet probes the pod's address"
    );
    let svc = find(&objects, "Service", "egress-agent-metrics");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(svc["spec"]["ports"][0]["port"], port["containerPort"]);
    assert_eq!(
        svc["spec"]["selector"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    let sa = find(&objects, "ServiceAccount", "egress-agent");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(sa["metadata"]["namespace"], ds["metadata"]["namespace"]);
}

#[test]
fn rbac_grants_exactly_what_the_agent_reads() {
    let objects = objects();
    let role = find(&objects, "ClusterRole", "egress-agent");
    let mut grants: Vec<String> = Vec::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        for group in strs(&rule["apiGroups"]) {
            for resource in strs(&rule["resources"]) {
                for verb in strs(&rule["verbs"]) {
                    grants.push(format!("{group}/{resource}:{verb}"));
                }
            }
        }
    }
    grants.sort();
    let want = [
        "/pods:get",
        "/pods:list",
        "/pods:watch",
        &format!("{GROUP}/{PLURAL}/status:get"),
        &format!("{GROUP}/{PLURAL}/status:patch"),
        &format!("{GROUP}/{PLURAL}/status:update"),
        &format!("{GROUP}/{PLURAL}:get"),
        &format!("{GROUP}/{PLURAL}:list"),
        &format!("{GROUP}/{PLURAL}:watch"),
    ];
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(grants, want);
    let binding = find(&objects, "ClusterRoleBinding", "egress-agent");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], "egress-agent");
}

#[test]
fn configmap_policies_load() {
    let objects = objects();
    let cm = find(&objects, "ConfigMap", "egress-policies");
    let data = cm["data"].as_mapping().expect("data");
    assert!(!data.is_empty());
    for (name, text) in data {
        let name = name.as_str().expect("key");
        let set = parse_str(Path::new(name), text.as_str().expect("text"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!set.policies.is_empty(), "{name}");
    }
}
