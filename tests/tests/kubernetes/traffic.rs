//! `egress agent --kubernetes` end to end, as root: the fake API server serves an
//! EgressPolicy selecting pods by label and the pods of this node; their cgroups are made
//! under a test cgroup in the kubelet's layout (both cgroup drivers); processes in those
//! cgroups send real packets from a test network namespace. The selected pod's denied
//! connection is refused and never reaches the server, the unselected pod's passes, a pod
//! added later is covered, decision records name namespace, pod and container, status is
//! written back, and with the API server gone the last state stays enforced (logged stale).

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use egress_tests::{
    AgentGuard, CgroupGuard, Client, SerialGuard, Servers, TestNet, agent::AgentOptions, serial,
};
use serde_json::json;

use super::{
    fake_api::FakeApi,
    shared::{self, PROBE, kubeconfig},
};

const NODE: &str = "node-k";
const WEB: &str = "a1a1a1a1-b2b2-c3c3-d4d4-e5e5e5e5e5e5";
const WEB2: &str = "f6f6f6f6-0707-1818-2929-3a3a3a3a3a3a";
const DB: &str = "0b0b0b0b-1c1c-2d2d-3e3e-4f4f4f4f4f4f";
/// Container ids (hex, as the runtime reports them).
const WEB_CTR: &str = "00aa11bb22cc33dd44ee55ff66007711";
const WEB2_CTR: &str = "88aa99bb00cc11dd22ee33ff44005511";
const DB_CTR: &str = "77ff66ee55dd44cc33bb22aa11009988";
/// Bound on every wait for the agent to catch up with the API server.
const CATCH_UP: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Driver {
    Systemd,
    Cgroupfs,
}

impl Driver {
    fn flag(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Cgroupfs => "cgroupfs",
        }
    }

    /// The pod's and its containerd container's cgroup, below the kubelet's parent, as the
    /// kubelet lays them out for a Burstable / BestEffort pod.
    fn paths(self, uid: &str, qos: &str, container: &str) -> (String, String) {
        let q = qos.to_ascii_lowercase();
        match self {
            Self::Systemd => {
                let pod = format!(
                    "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{}.slice",
                    uid.replace('-', "_")
                );
                let leaf = format!("{pod}/cri-containerd-{container}.scope");
                (pod, leaf)
            }
            Self::Cgroupfs => {
                let pod = format!("kubepods/{q}/pod{uid}");
                let leaf = format!("{pod}/{container}");
                (pod, leaf)
            }
        }
    }
}

/// Fields drop in order: agent, servers, cgroups, network, API server, then the lock.
struct World {
    agent: AgentGuard,
    servers: Servers,
    parent: CgroupGuard,
    net: TestNet,
    api: FakeApi,
    _dir: tempfile::TempDir,
    _serial: SerialGuard,
}

impl World {
    /// A pod's container cgroup, made (with its pod cgroup) below the test parent.
    fn make_pod_cgroup(&self, driver: Driver, uid: &str, qos: &str, container: &str) -> PathBuf {
        let (_, leaf) = driver.paths(uid, qos, container);
        let dir = self.parent.path().join(leaf);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        dir
    }

    fn client(&self, dir: &Path) -> Client {
        Client::in_cgroup_dir(&self.net.client, dir)
    }

    fn assert_refused(&self, client: &Client, addr: SocketAddr, who: &str) {
        shared::assert_refused(&self.agent, &self.servers, client, addr, who);
    }

    fn assert_passes(&self, client: &Client, addr: SocketAddr, who: &str) {
        shared::assert_passes(&self.agent, &self.servers, client, addr, who);
    }

    /// Polls until `client`'s TCP to `addr` is refused; panics after [`CATCH_UP`].
    fn until_refused(&self, client: &Client, addr: SocketAddr, who: &str) -> Duration {
        let start = Instant::now();
        while start.elapsed() < CATCH_UP {
            if !client.tcp_connect(addr, PROBE).expect("helper runs") {
                return start.elapsed();
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{who} is not governed after {CATCH_UP:?}\n{}",
            self.agent.output()
        );
    }

    fn until_output(&self, what: &str) {
        let start = Instant::now();
        while !self.agent.output().contains(what) {
            assert!(
                start.elapsed() < CATCH_UP,
                "the agent did not log `{what}` within {CATCH_UP:?}\n{}",
                self.agent.output()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn scenario(driver: Driver) {
    let serial = serial();
    let net = TestNet::new().expect("test network");
    let parent = CgroupGuard::new(&format!("kube-{}", driver.flag())).expect("test cgroup");
    let servers =
        Servers::start(&net.server, &TestNet::TARGETS, &[80], &[]).expect("servers start");
    let api = FakeApi::start();
    shared::put_web_policy(&api);
    api.put_pod(shared::pod(NODE, "web-1", WEB, "Burstable", "web", WEB_CTR));
    api.put_pod(shared::pod(NODE, "db-1", DB, "BestEffort", "db", DB_CTR));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(dir.path(), &api);
    // Made before the agent starts, as the kubelet would have for running pods.
    for (uid, qos, ctr) in [(WEB, "Burstable", WEB_CTR), (DB, "BestEffort", DB_CTR)] {
        let (_, leaf) = driver.paths(uid, qos, ctr);
        fs::create_dir_all(parent.path().join(leaf)).expect("pod cgroup");
    }
    let options = AgentOptions {
        extra_args: vec![
            "--kubernetes".into(),
            "--node-name".into(),
            NODE.into(),
            "--kubeconfig".into(),
            config.display().to_string(),
            "--kube-cgroup-driver".into(),
            driver.flag().into(),
            "--kube-cgroup-parent".into(),
            parent.relative_path().into(),
        ],
        ..AgentOptions::default()
    };
    // The policy file is not read in Kubernetes mode.
    let agent = AgentGuard::start_with_options(&config, &options);
    let world = World {
        agent,
        servers,
        parent,
        net,
        api,
        _dir: dir,
        _serial: serial,
    };
    let denied = SocketAddr::from((TestNet::DENIED_V4, 80));
    let allowed = SocketAddr::from((TestNet::ALLOWED_V4, 80));
    let web = world.client(&world.make_pod_cgroup(driver, WEB, "Burstable", WEB_CTR));
    let db = world.client(&world.make_pod_cgroup(driver, DB, "BestEffort", DB_CTR));
    world.assert_refused(&web, denied, "web-1 (selected)");
    world.assert_passes(&web, allowed, "web-1 (selected)");
    world.assert_passes(&db, denied, "db-1 (not selected)");

    // Decision records name the pod and the container.
    let record = world
        .agent
        .wait_for_record(CATCH_UP, |r| {
            r["kind"] == "connection" && r["verdict"] == "deny" && r["dst_ip"] == "203.0.113.10"
        })
        .unwrap_or_else(|| panic!("no deny record: {:#?}", world.agent.audit_records()));
    assert_eq!(
        (&record["namespace"], &record["pod"], &record["container"]),
        (&json!("shop"), &json!("web-1"), &json!("app")),
        "{record}"
    );
    assert_eq!(record["policy"], "no-doc-for-web", "{record}");

    // Status: this node applied generation 1.
    let applied = |api: &FakeApi| {
        api.policy("no-doc-for-web")
            .is_some_and(|p| p["status"]["applied"] == json!([NODE]))
    };
    let start = Instant::now();
    while !applied(&world.api) {
        assert!(
            start.elapsed() < CATCH_UP,
            "no status written: {:#?}",
            world.api.policy("no-doc-for-web")
        );
        thread::sleep(Duration::from_millis(50));
    }
    let status = &world.api.policy("no-doc-for-web").expect("exists")["status"];
    assert_eq!(
        (&status["observedGeneration"], &status["appliedNodes"]),
        (&json!(1), &json!(1)),
        "{status}"
    );

    // A pod that starts later: the API server has it first, then the kubelet makes its cgroup.
    world.api.put_pod(shared::pod(
        NODE,
        "web-2",
        WEB2,
        "Burstable",
        "web",
        WEB2_CTR,
    ));
    let web2 = world.client(&world.make_pod_cgroup(driver, WEB2, "Burstable", WEB2_CTR));
    let took = world.until_refused(&web2, denied, "web-2 (added later)");
    eprintln!("{driver:?}: web-2 governed {took:?} after its cgroup was made");
    world.assert_refused(&web2, denied, "web-2 (added later)");
    world.assert_passes(&web2, allowed, "web-2 (added later)");

    // An invalid object is reported in its own status and not enforced; the valid one stays.
    world.api.put_policy(
        "broken",
        &json!({"egress": [{"name": "x", "action": "allow", "to": [{"entity": "moon"}]}]}),
    );
    let start = Instant::now();
    let rejected = loop {
        let status = world.api.policy("broken").map(|p| p["status"].clone());
        if let Some(status) = status.filter(|s| s["errorNodes"] == 1) {
            break status;
        }
        assert!(start.elapsed() < CATCH_UP, "broken: no error status");
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(rejected["errors"][0]["node"], NODE, "{rejected}");
    assert!(
        rejected["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("moon")),
        "{rejected}"
    );
    world.assert_refused(&web, denied, "web-1 (beside an invalid object)");
    world.assert_passes(&db, denied, "db-1 (beside an invalid object)");

    // The API server goes away: the last known state stays in force, and the agent says so.
    world.api.set_down(true);
    world.until_output("enforcing the last known state (stale)");
    world.assert_refused(&web, denied, "web-1 (API server down)");
    world.assert_refused(&web2, denied, "web-2 (API server down)");
    world.assert_passes(&db, denied, "db-1 (API server down)");
}

#[test]
fn pods_selected_through_the_api_are_enforced_with_the_cgroupfs_driver() {
    scenario(Driver::Cgroupfs);
}

#[test]
fn pods_selected_through_the_api_are_enforced_with_the_systemd_driver() {
    scenario(Driver::Systemd);
}
