//! Selected cgroups that come and go: the kernel's cgroup map is keyed by cgroup id, so a
//! cgroup that appears after the policy was applied, or is removed and made again at the
//! same path (a restarted service), is governed only once the agent's rescan writes its
//! new id. The rescan runs every 500 ms; these tests allow 1.5 s.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use egress_tests::{AgentGuard, CgroupGuard, Client, SerialGuard, Servers, TestNet, serial};

/// How soon a selected cgroup that appeared or was made again must be governed.
const GOVERNED_WITHIN: Duration = Duration::from_millis(1500);
/// Timeout of one probe connection: a dropped SYN hangs until it expires.
const PROBE: Duration = Duration::from_millis(300);
const PASS: Duration = Duration::from_secs(3);

/// Fields drop in order: servers, cgroup, network, then the lock.
struct World {
    servers: Servers,
    parent: CgroupGuard,
    net: TestNet,
    _serial: SerialGuard,
}

impl World {
    fn new() -> Self {
        let serial = serial();
        let net = TestNet::new().expect("test network");
        let parent = CgroupGuard::new("rescan").expect("test cgroup");
        let servers =
            Servers::start(&net.server, &TestNet::TARGETS, &[80], &[]).expect("servers start");
        Self {
            servers,
            parent,
            net,
            _serial: serial,
        }
    }

    /// Polls until TCP from `client` to `addr` is dropped; how long that took after
    /// `since`, or None if it still connects at `since + GOVERNED_WITHIN`.
    fn dropped_within(
        &self,
        client: &Client,
        addr: SocketAddr,
        since: Instant,
    ) -> Option<Duration> {
        while since.elapsed() < GOVERNED_WITHIN {
            if !client.tcp_connect(addr, PROBE).expect("helper runs") {
                return Some(since.elapsed());
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Asserts that a connection from `client` to `addr` is dropped before it reaches the
    /// server.
    fn assert_dropped(&self, client: &Client, addr: SocketAddr) {
        let before = self.servers.tcp_count(addr);
        assert!(
            !client.tcp_connect(addr, PROBE).expect("helper runs"),
            "TCP to {addr} should be dropped"
        );
        assert_eq!(
            self.servers.tcp_count(addr),
            before,
            "a connection reached {addr}"
        );
    }

    fn assert_passes(&self, client: &Client, addr: SocketAddr) {
        assert!(
            client.tcp_connect(addr, PASS).expect("helper runs"),
            "TCP to {addr} should pass"
        );
    }
}

fn policy(cgroup: &str) -> String {
    format!(
        "apiVersion: egress.dev/v1alpha1\n\
         kind: EgressPolicy\n\
         metadata: {{name: rescan}}\n\
         spec:\n  \
           selector: {{cgroups: [\"{cgroup}\"]}}\n  \
           defaultAction: allow\n  \
           egress:\n    \
           - name: deny-doc\n      action: deny\n      to: [{{cidr: 203.0.113.0/24}}]\n      \
             protocol: tcp\n"
    )
}

#[test]
fn a_selected_cgroup_made_after_the_apply_and_made_again_is_governed() {
    let world = World::new();
    let selected = format!("{}/svc", world.parent.relative_path());
    let _agent = AgentGuard::start(&policy(&selected));
    let denied = SocketAddr::from((TestNet::DENIED_V4, 80));
    let allowed = SocketAddr::from((TestNet::ALLOWED_V4, 80));
    // The parent is not selected: it stays ungoverned throughout.
    let outside = Client::new(&world.net.client, &world.parent);
    world.assert_passes(&outside, denied);

    // The selected path did not exist when the policy was applied.
    let created = Instant::now();
    let svc = world.parent.child("svc").expect("selected cgroup");
    let client = Client::new(&world.net.client, &svc);
    let took = world.dropped_within(&client, denied, created);
    let Some(took) = took else {
        panic!("{selected} was made after the apply and is not governed after {GOVERNED_WITHIN:?}");
    };
    eprintln!("{selected} (new) governed after {took:?}");
    world.assert_dropped(&client, denied);
    world.assert_passes(&client, allowed);

    // A restart: the cgroup is removed and made again at the same path, with a new id.
    let old_id = svc.id().expect("cgroup id");
    drop(svc);
    let recreated = Instant::now();
    let svc = world.parent.child("svc").expect("selected cgroup again");
    assert_ne!(
        svc.id().expect("cgroup id"),
        old_id,
        "a recreated cgroup has a new id"
    );
    let client = Client::new(&world.net.client, &svc);
    let took = world.dropped_within(&client, denied, recreated);
    let Some(took) = took else {
        panic!("{selected} was made again and is not governed after {GOVERNED_WITHIN:?}");
    };
    eprintln!("{selected} (made again) governed after {took:?}");
    world.assert_dropped(&client, denied);
    world.assert_passes(&client, allowed);
    world.assert_passes(&outside, denied);
}
