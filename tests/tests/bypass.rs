//! Issue 7, "no way around it": every way we know to send a packet, run against a deny rule
//! (203.0.113.0/24 and 2001:db8:2::/48, any protocol) scoped to a test cgroup. Each case
//! asserts that the call fails with EPERM, that zero packets reach the receiver's namespace
//! (nftables counters per destination, which also count every fragment), and that the agent
//! wrote a deny record; and it runs the same technique to an allowed address as a control.
//! Paths the cgroup hooks cannot see are asserted to pass, as documented limits, with their
//! mitigations in docs/security.md.

#[path = "bypass/support.rs"]
mod support;
#[path = "bypass/world.rs"]
mod world;

use std::{net::IpAddr, time::Duration};

use egress_tests::{AgentGuard, TestNet, agent::egress_bin, process::run_bounded};
use support::{Case, Refusal, Target, assert_blocked, assert_reaches, strings, summarise};
use world::{Held, SETTLE, TCP_PORT, UDP_PORT, World, assert_new_deny_record, deny_records, run};

const V4: IpAddr = IpAddr::V4(TestNet::DENIED_V4);
const V6: IpAddr = IpAddr::V6(TestNet::DENIED_V6);
const OK4: IpAddr = IpAddr::V4(TestNet::ALLOWED_V4);
const OK6: IpAddr = IpAddr::V6(TestNet::ALLOWED_V6);

/// The uid of the uid-scoped cases; nothing else on the host uses it.
const UID: u32 = 4242;

/// Arguments `TECHNIQUE ADDR [EXTRA...]`.
fn with(
    technique: &'static str,
    extra: &'static [&'static str],
) -> impl Fn(&Target) -> Vec<String> {
    move |t: &Target| {
        let mut args = strings(&[technique, &t.arg]);
        args.extend(strings(extra));
        args
    }
}

fn tcp_case<'a>(name: &'a str, args: &'a dyn Fn(&Target) -> Vec<String>, v6: bool) -> Case<'a> {
    let (denied, allowed) = if v6 { (V6, OK6) } else { (V4, OK4) };
    Case {
        name,
        args,
        denied: Target::tcp(denied),
        allowed: Target::tcp(allowed),
        protocol: "tcp",
        min_control_packets: 1,
        refusal: Refusal::Eperm,
    }
}

fn udp_case<'a>(name: &'a str, args: &'a dyn Fn(&Target) -> Vec<String>, v6: bool) -> Case<'a> {
    let (denied, allowed) = if v6 { (V6, OK6) } else { (V4, OK4) };
    Case {
        name,
        args,
        denied: Target::udp(denied),
        allowed: Target::udp(allowed),
        protocol: "udp",
        min_control_packets: 1,
        refusal: Refusal::Eperm,
    }
}

#[test]
fn tcp_connect_fails_at_once_with_eperm() {
    let world = World::new("byp-tcp");
    let agent = world.start_agent();
    let args = with("tcp-connect", &[]);
    let mut latencies = Vec::new();
    for v6 in [false, true] {
        let run = assert_blocked(
            &world,
            &agent,
            &world.placement(),
            &tcp_case("tcp-connect", &args, v6),
        );
        latencies.extend(run.latency());
    }
    // More samples for the report: the issue asks for the latency, not a timing assertion.
    for _ in 0..20 {
        let out = run(&world.placement(), &args(&Target::tcp(V4)));
        assert!(out.is_eperm(), "{out:?}");
        latencies.extend(out.latency());
    }
    eprintln!("denied connect() latency: {}", summarise(&mut latencies));
}

#[test]
fn tcp_fast_open_sendto_is_refused() {
    let world = World::new("byp-tfo");
    let agent = world.start_agent();
    let args = with("tcp-fastopen", &[]);
    for v6 in [false, true] {
        assert_blocked(
            &world,
            &agent,
            &world.placement(),
            &tcp_case("tcp-fastopen", &args, v6),
        );
    }
}

#[test]
fn udp_connected_and_unconnected_sends_are_refused() {
    let world = World::new("byp-udp");
    let agent = world.start_agent();
    for technique in ["udp-connected", "udp-sendto", "udp-sendmsg", "udp-sendmmsg"] {
        let args = with(technique, &["64"]);
        for v6 in [false, true] {
            assert_blocked(
                &world,
                &agent,
                &world.placement(),
                &udp_case(technique, &args, v6),
            );
        }
    }
}

#[test]
fn ipv4_mapped_destination_on_ipv6_socket_is_judged_as_ipv4() {
    let world = World::new("byp-mapped");
    let agent = world.start_agent();
    for (technique, port, protocol) in [
        ("tcp-connect", TCP_PORT, "tcp"),
        ("udp-sendto", UDP_PORT, "udp"),
        ("udp-connected", UDP_PORT, "udp"),
    ] {
        let args = move |t: &Target| {
            let mut args = strings(&[technique, &t.arg]);
            if protocol == "udp" {
                args.push("64".to_owned());
            }
            args
        };
        let case = Case {
            name: technique,
            args: &args,
            denied: Target::mapped(TestNet::DENIED_V4, port),
            allowed: Target::mapped(TestNet::ALLOWED_V4, port),
            protocol,
            min_control_packets: 1,
            refusal: Refusal::Eperm,
        };
        assert_blocked(&world, &agent, &world.placement(), &case);
    }
}

#[test]
fn raw_ip_sockets_are_dropped_by_the_packet_hook() {
    let world = World::new("byp-raw");
    let agent = world.start_agent();
    let raw_udp = with("raw-udp", &["64"]);
    let raw_proto = with("raw-proto", &[]);
    for v6 in [false, true] {
        assert_blocked(
            &world,
            &agent,
            &world.placement(),
            &udp_case("raw-udp", &raw_udp, v6),
        );
        let (denied, allowed) = if v6 { (V6, OK6) } else { (V4, OK4) };
        let case = Case {
            name: "raw-proto-253",
            args: &raw_proto,
            denied: Target::bare(denied),
            allowed: Target::bare(allowed),
            protocol: "253",
            min_control_packets: 1,
            refusal: Refusal::Eperm,
        };
        assert_blocked(&world, &agent, &world.placement(), &case);
    }
}

#[test]
fn icmp_and_icmpv6_echo_from_raw_and_ping_sockets_are_dropped() {
    let world = World::new("byp-icmp");
    let agent = world.start_agent();
    for technique in ["icmp-raw", "icmp-dgram"] {
        let args = with(technique, &[]);
        for (denied, allowed, protocol) in [(V4, OK4, "icmp"), (V6, OK6, "icmpv6")] {
            let case = Case {
                name: technique,
                args: &args,
                denied: Target::bare(denied),
                allowed: Target::bare(allowed),
                protocol,
                min_control_packets: 1,
                // ICMPv6 ping sockets ignore the error of pushing the frame out
                // (net/ipv6/ping.c), so the dropped echo's send reports success.
                refusal: if technique == "icmp-dgram" && !denied.is_ipv4() {
                    Refusal::Silent
                } else {
                    Refusal::Eperm
                },
            };
            assert_blocked(&world, &agent, &world.placement(), &case);
        }
    }
}

#[test]
fn fragmented_udp_puts_no_fragment_on_the_wire() {
    let world = World::new("byp-frag");
    let agent = world.start_agent();
    // 4000 bytes over an MTU of 1500: three fragments each way.
    for technique in ["udp-sendto", "raw-udp"] {
        let args = with(technique, &["4000"]);
        for v6 in [false, true] {
            let mut case = udp_case(technique, &args, v6);
            case.min_control_packets = 3;
            assert_blocked(&world, &agent, &world.placement(), &case);
        }
    }
    // Hand-made fragments: the second carries no ports and must be judged by address alone.
    let args = with("raw-fragments", &[]);
    let mut case = udp_case("raw-fragments", &args, false);
    case.min_control_packets = 2;
    assert_blocked(&world, &agent, &world.placement(), &case);
}

#[test]
fn io_uring_connect_and_sendmsg_are_refused() {
    let disabled =
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
    assert_eq!(
        disabled.trim(),
        "0",
        "kernel.io_uring_disabled={} on this machine: the io_uring case cannot run and \
         fails rather than pass untested",
        disabled.trim()
    );
    let world = World::new("byp-uring");
    let agent = world.start_agent();
    let connect = with("uring-connect", &[]);
    let sendmsg = with("uring-sendmsg", &["64"]);
    for v6 in [false, true] {
        assert_blocked(
            &world,
            &agent,
            &world.placement(),
            &tcp_case("uring-connect", &connect, v6),
        );
        assert_blocked(
            &world,
            &agent,
            &world.placement(),
            &udp_case("uring-sendmsg", &sendmsg, v6),
        );
    }
}

#[test]
fn a_child_forked_after_the_policy_loaded_is_governed() {
    let world = World::new("byp-fork");
    let agent = world.start_agent();
    let tcp = move |t: &Target| strings(&["fork", "tcp-connect", &t.arg]);
    let udp = move |t: &Target| strings(&["fork", "udp-sendto", &t.arg, "64"]);
    assert_blocked(
        &world,
        &agent,
        &world.placement(),
        &tcp_case("fork tcp-connect", &tcp, false),
    );
    assert_blocked(
        &world,
        &agent,
        &world.placement(),
        &udp_case("fork udp-sendto", &udp, true),
    );
}

#[test]
fn a_cgroup_created_after_the_policy_loaded_is_governed() {
    let world = World::new("byp-newcg");
    let agent = world.start_agent();
    let late = world.cgroup.child("late").expect("child cgroup");
    let placement =
        egress_tests::process::Placement::new(world.net.client.path()).cgroup(late.path());
    let tcp = with("tcp-connect", &[]);
    let udp = with("udp-sendto", &["64"]);
    assert_blocked(
        &world,
        &agent,
        &placement,
        &tcp_case("new-cgroup tcp", &tcp, false),
    );
    assert_blocked(
        &world,
        &agent,
        &placement,
        &udp_case("new-cgroup udp", &udp, true),
    );
    drop(late);
}

fn uid_world(name: &str) -> (World, AgentGuard) {
    let world = World::new(name);
    let agent = AgentGuard::start(&World::policy(&format!("{{uids: [{UID}]}}")));
    (world, agent)
}

/// `TECHNIQUE UID PROTO ADDR`.
fn uid_args(technique: &'static str, proto: &'static str) -> impl Fn(&Target) -> Vec<String> {
    move |t: &Target| strings(&[technique, &UID.to_string(), proto, &t.arg])
}

#[test]
fn a_process_running_as_a_governed_uid_is_refused() {
    let (world, agent) = uid_world("byp-uid");
    let as_uid = world.placement().uid(UID);
    let tcp = with("tcp-connect", &[]);
    let udp = with("udp-sendto", &["64"]);
    assert_blocked(&world, &agent, &as_uid, &tcp_case("uid tcp", &tcp, false));
    assert_blocked(&world, &agent, &as_uid, &udp_case("uid udp", &udp, true));
}

/// Sockets are judged by their owner uid, fixed when the socket is created from the
/// creator's fsuid: a uid-4242 socket used after switching back to root stays governed.
#[test]
fn a_governed_uids_socket_used_after_switching_back_to_root_stays_governed() {
    let (world, agent) = uid_world("byp-uid-back");
    let udp = uid_args("seteuid-socket", "udp");
    let tcp = uid_args("seteuid-socket", "tcp");
    let root = world.placement();
    assert_blocked(
        &world,
        &agent,
        &root,
        &udp_case("uid-4242 socket used as root, udp", &udp, false),
    );
    assert_blocked(
        &world,
        &agent,
        &root,
        &tcp_case("uid-4242 socket used as root, tcp", &tcp, false),
    );
}

/// The other direction: a root socket used after setuid(4242) is root's, which no policy
/// here governs. Documented semantics (docs/security.md), asserted so a change is noticed.
#[test]
fn a_root_socket_used_after_setuid_to_a_governed_uid_stays_roots() {
    let (world, _agent) = uid_world("byp-uid-drop");
    let tcp = uid_args("setuid-after-socket", "tcp");
    let udp = uid_args("setuid-after-socket", "udp");
    let root = world.placement();
    assert_reaches(
        &world,
        &root,
        &tcp_case("root socket used as uid 4242, tcp", &tcp, false),
    );
    assert_reaches(
        &world,
        &root,
        &udp_case("root socket used as uid 4242, udp", &udp, false),
    );
}

/// Sockets connected before the policy loaded pass no connect hook again: the packet hook
/// must stop what they send afterwards.
#[test]
fn sockets_connected_before_the_policy_loaded_are_stopped_by_the_packet_hook() {
    let world = World::new("byp-pre");
    let udp = Held::start(
        &world.placement(),
        &strings(&["udp-preconnected", &Target::udp(V4).arg]),
    );
    let tcp = Held::start(
        &world.placement(),
        &strings(&["tcp-preconnected", &Target::tcp(V4).arg]),
    );
    let agent = world.start_agent();
    let before = world.packets_to(V4);
    let (udp_records, tcp_records) = (
        deny_records(&agent, V4, "udp").len(),
        deny_records(&agent, V4, "tcp").len(),
    );
    let (udp_code, udp_out) = udp.send();
    // TCP queues the data and returns; the segments (and retransmissions) are dropped.
    let (tcp_code, tcp_out) = tcp.send();
    std::thread::sleep(Duration::from_secs(1) + SETTLE);
    let leaked = world.packets_to(V4) - before;
    eprintln!(
        "case preconnected: udp exit {udp_code:?} ({}), tcp exit {tcp_code:?} ({}), \
         {leaked} packets on the wire",
        udp_out.trim(),
        tcp_out.trim()
    );
    assert_eq!(
        leaked, 0,
        "LEAK: sockets connected before the policy sent {leaked} packets"
    );
    assert_eq!(
        udp_code,
        Some(1),
        "the UDP send must fail (EPERM from the packet hook): {udp_out}"
    );
    assert!(udp_out.contains("errno=1 EPERM"), "{udp_out}");
    assert_eq!(
        tcp_code,
        Some(0),
        "the TCP send only queues data: {tcp_out}"
    );
    assert_new_deny_record(&agent, V4, "udp", udp_records);
    assert_new_deny_record(&agent, V4, "tcp", tcp_records);
}

/// AF_PACKET sockets hand whole frames to the device: no IP-layer cgroup hook runs. This
/// asserts the limit (the frame arrives) so that the docs cannot silently go stale; the
/// mitigation is to deny CAP_NET_RAW (docs/security.md).
#[test]
fn packet_sockets_are_a_documented_limit_they_reach_the_receiver() {
    let world = World::new("byp-packet");
    let _agent = world.start_agent();
    let mac = world.server_mac();
    let args = move |t: &Target| {
        strings(&[
            "packet",
            "veth-c",
            &mac,
            &TestNet::CLIENT_V4.to_string(),
            &t.arg,
        ])
    };
    let case = udp_case("packet-socket (documented limit)", &args, false);
    assert_reaches(&world, &world.placement(), &case);
}

/// A connection that a policy change denies is reported once. When its process then closes
/// it, the kernel goes on retransmitting for the closed socket; those drops fold into the
/// same record (`sock_release` hands the socket's report state to `EGRESS_FLOWS`) instead
/// of making records of their own, without the process.
#[test]
fn a_denied_connection_closed_by_its_process_is_reported_once() {
    let world = World::new("byp-close");
    let selector = world.selector();
    // Generation 1 denies only the IPv6 prefix: the IPv4 connection opens.
    let reloadable = Reloadable::start(&World::policy_denying_v6_only(&selector));
    let agent = &reloadable.agent;
    let tcp = Held::start(
        &world.placement(),
        &strings(&["tcp-preconnected", &Target::tcp(V4).arg]),
    );
    reloadable.reload(&World::policy(&selector), 2);
    let before = deny_records(agent, V4, "tcp").len();
    // The data is queued and the helper exits: the socket is closed with data unsent.
    let (code, out) = tcp.send();
    assert_eq!(code, Some(0), "the TCP send only queues data: {out}");
    assert_new_deny_record(agent, V4, "tcp", before);
    // Retransmissions of the closed socket: the first after the minimum RTO (200 ms).
    std::thread::sleep(Duration::from_secs(2));
    let rules = run_json(&[
        "rules",
        "--json",
        "--socket",
        &agent.control_socket().to_string_lossy(),
    ]);
    let denied = rules["rules"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["rule"] == "deny-doc"))
        .and_then(|r| r["packets_denied"].as_u64())
        .unwrap_or_else(|| panic!("no deny-doc counters in {rules}"));
    assert!(
        denied >= 2,
        "the closed socket retransmitted nothing, so the test proves nothing: {rules}"
    );
    let records = deny_records(agent, V4, "tcp");
    assert_eq!(
        records.len(),
        before + 1,
        "{denied} dropped packets of one connection made these records: {records:#?}"
    );
}

/// `egress ARGS` as root, which must succeed; its JSON output.
fn run_json(args: &[&str]) -> serde_json::Value {
    let mut cmd = std::process::Command::new(egress_bin().expect("egress binary"));
    let out = run_bounded(cmd.args(args), "egress", Duration::from_secs(60)).expect("egress runs");
    assert!(out.status.success(), "egress {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// An agent started on a policy file that the test rewrites and makes it reload. Fields
/// drop in order: the agent stops before its policy file is removed.
struct Reloadable {
    agent: AgentGuard,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Reloadable {
    fn start(policy: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, policy).expect("write policy");
        Self {
            agent: AgentGuard::start_with_file(&file),
            file,
            _dir: dir,
        }
    }

    /// Rewrites the policy file, signals the agent to reload, and waits until it applied
    /// `generation`.
    fn reload(&self, policy: &str, generation: u64) {
        std::fs::write(&self.file, policy).expect("rewrite policy");
        let pid = self.agent.pid().expect("the agent runs");
        // SAFETY: signals the agent process this test started and has not reaped.
        let rc = unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid"), libc::SIGHUP) };
        assert_eq!(rc, 0, "SIGHUP to the agent");
        self.agent
            .wait_for_record(Duration::from_secs(20), |r| {
                r["kind"] == "policy" && r["action"] == "applied" && r["generation"] == generation
            })
            .unwrap_or_else(|| panic!("generation {generation} applied"));
    }
}

/// The packet hook keeps each TCP connection's decision with its socket, for the segments
/// after the SYN: a policy change must reach connections already open. One connection
/// sends through three generations: its cgroup ungoverned, then denied, then allowed.
#[test]
fn an_open_connection_is_judged_by_each_new_policy() {
    let world = World::new("byp-held");
    let selector = world.selector();
    // Generation 1 governs another uid only: the connection is ungoverned.
    let reloadable = Reloadable::start(&World::policy(&format!("{{uids: [{UID}]}}")));
    let mut tcp = Held::start(
        &world.placement(),
        &strings(&["tcp-held", &Target::tcp(V4).arg]),
    );
    let sent = |tcp: &mut Held| {
        let before = world.packets_to(V4);
        tcp.send_again();
        std::thread::sleep(Duration::from_secs(1) + SETTLE);
        world.packets_to(V4) - before
    };
    let ungoverned = sent(&mut tcp);
    assert!(
        ungoverned > 0,
        "nothing reached the server while ungoverned"
    );
    reloadable.reload(&World::policy(&selector), 2);
    let denied = sent(&mut tcp);
    assert_eq!(
        denied, 0,
        "LEAK: {denied} packets of the open connection passed the deny"
    );
    reloadable.reload(&World::policy_denying_v6_only(&selector), 3);
    // The data queued under the deny is retransmitted, with the new.
    let allowed = sent(&mut tcp);
    assert!(allowed > 0, "nothing reached the server once allowed again");
    eprintln!("packets: ungoverned {ungoverned}, denied {denied}, allowed {allowed}");
}
