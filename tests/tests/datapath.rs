//! The agent contract, end to end: `egress agent --policy FILE --audit-log FILE` enforces
//! policies on traffic from processes in test cgroups, in a two-namespace test network.
//! Every policy is scoped by a selector (a test cgroup or a uid nothing else uses), except
//! the repository's default policy, which allows everything and only logs.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use egress_tests::{
    AgentGuard, CgroupGuard, Client, SerialGuard, Servers, TestNet, agent::cgroup_tree,
    client::url, root_egress_programs, serial,
};
use serde_json::Value;

/// Timeout for traffic expected to pass.
const PASS: Duration = Duration::from_secs(3);
/// Timeout for traffic expected to be dropped (a dropped SYN hangs until it expires).
const DROP: Duration = Duration::from_millis(1500);

const TCP_PORTS: [u16; 3] = [80, 8080, 8443];
const UDP_PORTS: [u16; 2] = [5300, 9000];

/// One test's world. Fields drop in order: servers, cgroup, network, then the lock.
struct World {
    servers: Servers,
    cgroup: CgroupGuard,
    net: TestNet,
    _serial: SerialGuard,
}

impl World {
    fn new(name: &str) -> Self {
        let serial = serial();
        let net = TestNet::new().expect("test network");
        let cgroup = CgroupGuard::new(name).expect("test cgroup");
        let servers = Servers::start(&net.server, &TestNet::TARGETS, &TCP_PORTS, &UDP_PORTS)
            .expect("servers start");
        Self {
            servers,
            cgroup,
            net,
            _serial: serial,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.net.client, &self.cgroup)
    }

    /// A policy selecting this world's cgroup.
    fn policy(&self, default_action: &str, rules: &str) -> String {
        policy(
            &format!("{{cgroups: [\"{}\"]}}", self.cgroup.relative_path()),
            default_action,
            rules,
        )
    }

    /// Asserts that curl from `client` to `addr` gets the page and the server saw it.
    fn assert_http_passes(&self, client: &Client, addr: SocketAddr) {
        let before = self.servers.tcp_count(addr);
        let body = client
            .curl_get(&url(addr), PASS)
            .unwrap_or_else(|e| panic!("curl to {addr} should pass: {e}"));
        assert_eq!(body, format!("egress-test-server {addr}\n"));
        assert!(
            self.servers
                .wait_count(egress_tests::Proto::Tcp, addr, before + 1, PASS)
                > before,
            "server on {addr} saw no connection"
        );
    }

    /// Asserts that curl from `client` to `addr` fails to connect and that not a single
    /// connection reached the server.
    fn assert_http_blocked(&self, client: &Client, addr: SocketAddr) {
        let before = self.servers.tcp_count(addr);
        let outcome = client.curl(&url(addr), DROP).expect("curl runs");
        assert!(
            outcome.is_blocked(),
            "curl to {addr} should be blocked: {outcome:?}"
        );
        assert!(
            !client.tcp_connect(addr, DROP).expect("helper runs"),
            "raw TCP connect to {addr} should be blocked"
        );
        assert_eq!(
            self.servers.tcp_count(addr),
            before,
            "connections to {addr} reached the server"
        );
    }

    fn assert_udp(&self, client: &Client, addr: SocketAddr, passes: bool) {
        let before = self.servers.udp_count(addr);
        let timeout = if passes { PASS } else { DROP };
        let echoed = client
            .udp_send_and_receive(addr, timeout)
            .expect("helper runs");
        assert_eq!(echoed, passes, "udp to {addr}: echoed={echoed}");
        let expected = before + usize::from(passes);
        assert_eq!(
            self.servers
                .wait_count(egress_tests::Proto::Udp, addr, expected, PASS),
            expected,
            "datagrams received on {addr}"
        );
    }
}

fn policy(selector: &str, default_action: &str, rules: &str) -> String {
    format!(
        "apiVersion: egress.dev/v1alpha1\n\
         kind: EgressPolicy\n\
         metadata: {{name: test}}\n\
         spec:\n  \
           selector: {selector}\n  \
           defaultAction: {default_action}\n  \
           egress:\n{rules}"
    )
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

const DENY_DOC_TCP: &str = "    - name: deny-doc\n      action: deny\n      \
    to: [{cidr: 203.0.113.0/24}, {cidr: \"2001:db8:2::/48\"}]\n      protocol: tcp\n";

#[test]
fn tcp_v4_denied_address_is_dropped_allowed_address_served() {
    let world = World::new("tcp4");
    let _agent = AgentGuard::start(&world.policy("allow", DENY_DOC_TCP));
    let client = world.client();
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V4, 80));
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V4_ALT, 8080));
    world.assert_http_passes(&client, sa(TestNet::ALLOWED_V4, 80));
    world.assert_http_passes(&client, sa(TestNet::ALLOWED_V4, 8080));
}

#[test]
fn tcp_v6_denied_address_is_dropped_allowed_address_served() {
    let world = World::new("tcp6");
    let _agent = AgentGuard::start(&world.policy("allow", DENY_DOC_TCP));
    let client = world.client();
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V6, 80));
    world.assert_http_passes(&client, sa(TestNet::ALLOWED_V6, 80));
    // The rule is TCP only: UDP to the same address still flows.
    world.assert_udp(&client, sa(TestNet::DENIED_V6, 5300), true);
}

#[test]
fn udp_v4_and_v6_denied_versus_allowed() {
    let world = World::new("udp");
    let rules = "    - name: deny-udp\n      action: deny\n      \
        to: [{cidr: 203.0.113.0/24}, {cidr: \"2001:db8:2::/48\"}]\n      protocol: udp\n";
    let _agent = AgentGuard::start(&world.policy("allow", rules));
    let client = world.client();
    world.assert_udp(&client, sa(TestNet::DENIED_V4, 5300), false);
    world.assert_udp(&client, sa(TestNet::DENIED_V6, 9000), false);
    world.assert_udp(&client, sa(TestNet::ALLOWED_V4, 5300), true);
    world.assert_udp(&client, sa(TestNet::ALLOWED_V6, 9000), true);
    // The rule is UDP only: TCP to the denied address still flows.
    world.assert_http_passes(&client, sa(TestNet::DENIED_V4, 80));
}

#[test]
fn port_specific_rules_and_ranges() {
    let world = World::new("ports");
    let rules = "    - name: deny-some-ports\n      action: deny\n      \
        to: [{cidr: 203.0.113.10/32}, {cidr: \"2001:db8:2::10/128\"}]\n      \
        protocol: tcp\n      ports: [80, \"8000-8100\"]\n";
    let _agent = AgentGuard::start(&world.policy("allow", rules));
    let client = world.client();
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V4, 80));
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V4, 8080));
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V6, 8080));
    world.assert_http_passes(&client, sa(TestNet::DENIED_V4, 8443));
    world.assert_http_passes(&client, sa(TestNet::DENIED_V6, 8443));
    // Same port, address outside the /32.
    world.assert_http_passes(&client, sa(TestNet::DENIED_V4_ALT, 80));
}

#[test]
fn deny_beats_an_overlapping_allow() {
    let world = World::new("overlap");
    let rules = "    - name: allow-one\n      action: allow\n      \
        to: [{cidr: 203.0.113.10/32}]\n      protocol: tcp\n      ports: [80]\n    \
        - name: deny-net\n      action: deny\n      to: [{cidr: 203.0.113.0/24}]\n      \
        protocol: any\n";
    let _agent = AgentGuard::start(&world.policy("allow", rules));
    let client = world.client();
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V4, 80));
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V4_ALT, 8080));
    world.assert_udp(&client, sa(TestNet::DENIED_V4, 5300), false);
    world.assert_http_passes(&client, sa(TestNet::ALLOWED_V4, 80));
}

#[test]
fn default_deny_lets_only_the_allowed_address_and_port_through() {
    let world = World::new("defdeny");
    let rules = "    - name: allow-web\n      action: allow\n      \
        to: [{cidr: 198.51.100.10/32}, {cidr: \"2001:db8:1::/48\"}]\n      \
        protocol: tcp\n      ports: [80]\n";
    let _agent = AgentGuard::start(&world.policy("deny", rules));
    let client = world.client();
    world.assert_http_passes(&client, sa(TestNet::ALLOWED_V4, 80));
    world.assert_http_passes(&client, sa(TestNet::ALLOWED_V6, 80));
    world.assert_http_blocked(&client, sa(TestNet::ALLOWED_V4, 8080));
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V4, 80));
    world.assert_udp(&client, sa(TestNet::ALLOWED_V4, 5300), false);
}

#[test]
fn child_cgroup_created_later_is_governed_outside_cgroup_is_not() {
    let world = World::new("tree");
    let outside = CgroupGuard::new("outside").expect("outside cgroup");
    let _agent = AgentGuard::start(&world.policy("allow", DENY_DOC_TCP));
    let late = world.cgroup.child("late").expect("child cgroup");
    let deeper = late.child("deeper").expect("grandchild cgroup");
    for dir in [&late, &deeper] {
        let client = Client::new(&world.net.client, dir);
        world.assert_http_blocked(&client, sa(TestNet::DENIED_V4, 80));
        world.assert_http_passes(&client, sa(TestNet::ALLOWED_V4, 80));
    }
    let client = Client::new(&world.net.client, &outside);
    world.assert_http_passes(&client, sa(TestNet::DENIED_V4, 80));
    world.assert_http_passes(&client, sa(TestNet::DENIED_V6, 80));
}

#[test]
fn uid_selector_applies_to_that_uid_only() {
    const UID: u32 = 4242;
    let world = World::new("uid");
    let policy = policy(&format!("{{uids: [{UID}]}}"), "allow", DENY_DOC_TCP);
    let _agent = AgentGuard::start(&policy);
    let root_client = world.client();
    let uid_client = root_client.with_uid(UID);
    world.assert_http_passes(&root_client, sa(TestNet::DENIED_V4, 80));
    let addr = sa(TestNet::DENIED_V4, 80);
    let before = world.servers.tcp_count(addr);
    let outcome = uid_client.curl(&url(addr), DROP).expect("curl runs");
    assert!(
        outcome.is_blocked(),
        "uid {UID} should be blocked: {outcome:?}"
    );
    assert_eq!(
        world.servers.tcp_count(addr),
        before,
        "a connection from uid {UID} got through"
    );
    world.assert_http_passes(&uid_client, sa(TestNet::ALLOWED_V4, 80));
}

fn is_connection_to(record: &Value, ip: &str, port: u16, cgroup: &str, protocol: &str) -> bool {
    let str_field = |k: &str| record.get(k).and_then(Value::as_str);
    str_field("kind") == Some("connection")
        && str_field("dst_ip") == Some(ip)
        && record.get("dst_port").and_then(Value::as_u64) == Some(u64::from(port))
        && str_field("protocol") == Some(protocol)
        && str_field("cgroup").is_some_and(|c| c.ends_with(cgroup))
}

#[test]
fn default_policy_allows_and_records_connections() {
    let world = World::new("audit");
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.yaml");
    let agent = AgentGuard::start_with_file(&default);
    let client = world.client();
    let cgroup = world.cgroup.relative_path();
    for (ip, port) in [
        (IpAddr::from(TestNet::DENIED_V4), 8080),
        (TestNet::ALLOWED_V6.into(), 80),
    ] {
        world.assert_http_passes(&client, sa(ip, port));
        let record = agent.wait_for_record(Duration::from_secs(10), |r| {
            is_connection_to(r, &ip.to_string(), port, cgroup, "tcp")
        });
        let Some(record) = record else {
            panic!(
                "no connection record for {ip}:{port} from {cgroup}; records: {:#?}",
                agent.audit_records()
            );
        };
        assert_eq!(
            record.get("verdict").and_then(Value::as_str),
            Some("allow"),
            "{record}"
        );
        assert_eq!(
            record.get("uid").and_then(Value::as_u64),
            Some(0),
            "{record}"
        );
    }
    world.assert_udp(&client, sa(TestNet::ALLOWED_V4, 5300), true);
    let udp = agent.wait_for_record(Duration::from_secs(10), |r| {
        is_connection_to(r, "198.51.100.10", 5300, cgroup, "udp")
    });
    assert!(
        udp.is_some(),
        "no UDP record; records: {:#?}",
        agent.audit_records()
    );
}

#[test]
fn denied_connections_are_audited_with_their_rule() {
    let world = World::new("auditdeny");
    let agent = AgentGuard::start(&world.policy("allow", DENY_DOC_TCP));
    let client = world.client();
    world.assert_http_blocked(&client, sa(TestNet::DENIED_V4, 80));
    let cgroup = world.cgroup.relative_path();
    let record = agent.wait_for_record(Duration::from_secs(10), |r| {
        is_connection_to(r, "203.0.113.10", 80, cgroup, "tcp")
            && r.get("verdict").and_then(Value::as_str) == Some("deny")
    });
    let Some(record) = record else {
        panic!("no deny record; records: {:#?}", agent.audit_records());
    };
    let rule = record
        .get("rule")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(rule.contains("deny-doc"), "rule of {record}");
}

#[test]
fn program_is_attached_while_running_and_detached_after_exit() {
    let world = World::new("detach");
    let before = root_egress_programs().expect("bpftool works");
    let mut agent = AgentGuard::start(&world.policy("allow", DENY_DOC_TCP));
    let during = root_egress_programs().expect("bpftool works");
    let ours: Vec<u64> = during.difference(&before).copied().collect();
    assert!(
        !ours.is_empty(),
        "no new egress program on the cgroup2 root:\n{}",
        cgroup_tree().unwrap_or_default()
    );
    let client = world.client();
    let denied = sa(TestNet::DENIED_V4, 80);
    world.assert_http_blocked(&client, denied);

    let status = agent.stop().expect("agent stops");
    assert!(status.success(), "agent exit: {status}\n{}", agent.output());
    let after = root_egress_programs().expect("bpftool works");
    for id in &ours {
        assert!(
            !after.contains(id),
            "program {id} still attached after exit"
        );
    }
    world.assert_http_passes(&client, denied);
    // `--on-exit detach` leaves no pinned map behind either (the guard's uninstall would
    // hide a leak: it runs only at drop).
    assert!(
        !agent.bpffs().exists(),
        "pins left after a detaching exit: {:?}",
        std::fs::read_dir(agent.bpffs())
            .map(|dir| dir.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
}
