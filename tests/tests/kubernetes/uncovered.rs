//! `egress agent --kubernetes --kube-uncovered-pods deny` end to end, as root: a pod whose
//! cgroup exists before the API server lists it has its connections refused (nothing reaches
//! the server; the deny record names the policy `kubernetes-uncovered`), a known pod no policy
//! selects is exempt, and once the API server lists the pod it is judged by its policy alone;
//! a pod listed before its cgroup exists is exempt once the agent's cgroup rescan sees it.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use egress_tests::{
    AgentGuard, CgroupGuard, Client, Servers, TestNet, agent::AgentOptions, serial,
};
use serde_json::Value;

use super::{
    fake_api::FakeApi,
    shared::{self, PROBE, assert_passes as passes, assert_refused as refused, kubeconfig},
};

const NODE: &str = "node-u";
const WEB: &str = "c1c1c1c1-d2d2-e3e3-f4f4-a5a5a5a5a5a5";
const DB: &str = "b6b6b6b6-c7c7-d8d8-e9e9-fafafafafafa";
const DB2: &str = "e7e7e7e7-f8f8-a9a9-b0b0-c1c1c1c1c1c1";
const STRAY: &str = "0d0d0d0d-1e1e-2f2f-3a3a-4b4b4b4b4b4b";
const WEB_CTR: &str = "1a2b3c4d5e6f70811a2b3c4d5e6f7081";
const DB_CTR: &str = "9f8e7d6c5b4a39289f8e7d6c5b4a3928";
const DB2_CTR: &str = "2b3c4d5e6f7081922b3c4d5e6f708192";
const STRAY_CTR: &str = "5555aaaa5555aaaa5555aaaa5555aaaa";
/// Bound on every wait for the agent to catch up with the API server.
const CATCH_UP: Duration = Duration::from_secs(10);
const UNCOVERED: &str = "kubernetes-uncovered";

/// The container cgroup of a Burstable pod, systemd driver, below the test parent.
fn container_dir(parent: &CgroupGuard, uid: &str, container: &str) -> PathBuf {
    let dir = parent.path().join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container}.scope",
        uid.replace('-', "_")
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// The deny record of a connection to `dst`, made by `policy`.
fn deny_record(agent: &AgentGuard, dst: &str, policy: &str) -> Value {
    agent
        .wait_for_record(CATCH_UP, |r| {
            r["kind"] == "connection"
                && r["verdict"] == "deny"
                && r["dst_ip"] == dst
                && r["policy"] == policy
        })
        .unwrap_or_else(|| {
            panic!(
                "no deny record by {policy} to {dst}: {:#?}",
                agent.audit_records()
            )
        })
}

#[test]
fn pods_the_api_server_has_not_listed_are_denied_until_it_does() {
    // Locals drop in reverse: agent, servers, cgroups, network, API server, then the lock.
    let _serial = serial();
    let api = FakeApi::start();
    let net = TestNet::new().expect("test network");
    let parent = CgroupGuard::new("kube-uncovered").expect("test cgroup");
    let servers =
        Servers::start(&net.server, &TestNet::TARGETS, &[80], &[]).expect("servers start");
    shared::put_web_policy(&api);
    api.put_pod(shared::pod(NODE, "db-1", DB, "Burstable", "db", DB_CTR));
    let db = Client::in_cgroup_dir(&net.client, &container_dir(&parent, DB, DB_CTR));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(dir.path(), &api);
    let options = AgentOptions {
        extra_args: [
            "--kubernetes",
            "--node-name",
            NODE,
            "--kubeconfig",
            &config.display().to_string(),
            "--kube-cgroup-driver",
            "systemd",
            "--kube-cgroup-parent",
            parent.relative_path(),
            "--kube-uncovered-pods",
            "deny",
        ]
        .map(String::from)
        .to_vec(),
        ..AgentOptions::default()
    };
    let agent = AgentGuard::start_with_options(&config, &options);
    let allowed = SocketAddr::from((TestNet::ALLOWED_V4, 80));
    let denied = SocketAddr::from((TestNet::DENIED_V4, 80));

    // The kubelet made web-1's cgroup; the API server does not list the pod yet.
    let web = Client::in_cgroup_dir(&net.client, &container_dir(&parent, WEB, WEB_CTR));
    refused(&agent, &servers, &web, allowed, "web-1 (not listed)");
    let record = deny_record(&agent, &TestNet::ALLOWED_V4.to_string(), UNCOVERED);
    assert_eq!(record["rule"], "default", "{record}");
    // A known pod no policy selects is exempt: nothing judges it.
    passes(&agent, &servers, &db, denied, "db-1 (known, not selected)");

    // Listed: web-1 is judged by its policy alone, within the agent's catch-up.
    api.put_pod(shared::pod(NODE, "web-1", WEB, "Burstable", "web", WEB_CTR));
    let start = Instant::now();
    while !web.tcp_connect(allowed, PROBE).expect("helper runs") {
        assert!(
            start.elapsed() < CATCH_UP,
            "web-1 still denied {CATCH_UP:?} after it was listed\n{}",
            agent.output()
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("web-1 exempt {:?} after it was listed", start.elapsed());
    passes(&agent, &servers, &web, allowed, "web-1 (listed)");
    refused(&agent, &servers, &web, denied, "web-1 (listed)");
    deny_record(&agent, &TestNet::DENIED_V4.to_string(), "no-doc-for-web");

    // The usual order: listed first, cgroup made after. Until the agent's cgroup rescan has
    // seen the new cgroup it is below the kubepods root alone, hence denied; then exempt,
    // though no policy selects it (so only its exemption makes the agent look for it).
    api.put_pod(shared::pod(NODE, "db-2", DB2, "Burstable", "db", DB2_CTR));
    thread::sleep(Duration::from_millis(300));
    let db2 = Client::in_cgroup_dir(&net.client, &container_dir(&parent, DB2, DB2_CTR));
    let start = Instant::now();
    while !db2.tcp_connect(denied, PROBE).expect("helper runs") {
        assert!(
            start.elapsed() < CATCH_UP,
            "db-2 still denied {CATCH_UP:?} after its cgroup was made\n{}",
            agent.output()
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "db-2 exempt {:?} after its cgroup was made",
        start.elapsed()
    );
    passes(
        &agent,
        &servers,
        &db2,
        denied,
        "db-2 (listed before its cgroup)",
    );

    // Another pod the API server does not have is still denied beside the listed ones.
    let stray = Client::in_cgroup_dir(&net.client, &container_dir(&parent, STRAY, STRAY_CTR));
    refused(&agent, &servers, &stray, allowed, "stray (not listed)");
    passes(&agent, &servers, &db, denied, "db-1 (known, not selected)");
}
