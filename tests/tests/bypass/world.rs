//! The bypass suite's world: the two-namespace network, a test cgroup, servers on every
//! target, nftables counters in the server namespace that count every packet (and every
//! fragment) per destination before anything else sees it, and runs of the `egress-bypass`
//! helper.

use std::{
    env,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::IpAddr,
    path::PathBuf,
    process::{ChildStdout, Command, Stdio},
    thread,
    time::Duration,
};

use egress_tests::{
    AgentGuard, CgroupGuard, PacketCounters, SerialGuard, Servers, TestNet,
    process::{Placement, ProcessGuard, run_bounded},
    serial,
};
use serde_json::Value;

/// Time for packets already sent to reach the counters.
pub const SETTLE: Duration = Duration::from_millis(300);
/// Time for the agent to write a decision record.
pub const RECORDED: Duration = Duration::from_secs(5);
const RUN_LIMIT: Duration = Duration::from_secs(15);

pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 5300;

/// Counters, by name, and the destination prefix each counts.
const COUNTERS: [(&str, &str); 4] = [
    ("denied4", "ip daddr 203.0.113.0/24"),
    ("denied6", "ip6 daddr 2001:db8:2::/48"),
    ("allowed4", "ip daddr 198.51.100.0/24"),
    ("allowed6", "ip6 daddr 2001:db8:1::/48"),
];

/// One test's world. Fields drop in order: servers, cgroup, network, then the lock.
pub struct World {
    _servers: Servers,
    counters: PacketCounters,
    pub cgroup: CgroupGuard,
    pub net: TestNet,
    _serial: SerialGuard,
}

/// How one helper run ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The connect latency the helper measured, if it printed one.
    pub fn latency(&self) -> Option<Duration> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("latency_ns="))
            .and_then(|n| n.trim().parse().ok())
            .map(Duration::from_nanos)
    }

    /// Whether the call failed with EPERM.
    pub fn is_eperm(&self) -> bool {
        self.code == Some(1) && self.stdout.contains("errno=1 EPERM")
    }
}

/// Path of the bypass helper: `$EGRESS_BYPASS`, else next to the test executable.
pub fn bypass_bin() -> PathBuf {
    if let Some(path) = env::var_os("EGRESS_BYPASS") {
        return path.into();
    }
    let exe = env::current_exe().expect("test executable");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("egress-bypass"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no egress-bypass near {}; cargo build --bins",
                exe.display()
            )
        })
}

impl World {
    pub fn new(name: &str) -> Self {
        let serial = serial();
        let net = TestNet::new().expect("test network");
        let cgroup = CgroupGuard::new(name).expect("test cgroup");
        let servers = Servers::start(&net.server, &TestNet::TARGETS, &[TCP_PORT], &[UDP_PORT])
            .expect("servers start");
        let counters = PacketCounters::install(&net.server, "egress_bypass", &COUNTERS)
            .expect("packet counters");
        let world = Self {
            _servers: servers,
            counters,
            cgroup,
            net,
            _serial: serial,
        };
        // Ping sockets (unprivileged ICMP) are off unless the group range admits us.
        world.netns_exec(
            world.net.client.name(),
            &["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"],
        );
        world
    }

    fn netns_exec(&self, netns: &str, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).args(args);
        let out = run_bounded(&mut cmd, args[0], RUN_LIMIT).expect("runs");
        assert!(
            out.status.success(),
            "{args:?} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Packets counted so far whose destination is `ip`'s counter prefix.
    pub fn packets_to(&self, ip: IpAddr) -> u64 {
        let name = counter_name(ip);
        self.counters
            .packets(name)
            .unwrap_or_else(|e| panic!("counter {name}: {e}"))
    }

    /// The MAC address of the server's end of the veth.
    pub fn server_mac(&self) -> String {
        let json = self
            .net
            .server
            .ip(&["-j", "link", "show", "veth-s"])
            .expect("ip link");
        let value: Value = serde_json::from_str(&json).expect("ip JSON");
        value[0]["address"].as_str().expect("address").to_owned()
    }

    /// A placement in the client namespace and the test cgroup.
    pub fn placement(&self) -> Placement {
        Placement::new(self.net.client.path()).cgroup(self.cgroup.path())
    }

    /// The deny policy on 203.0.113.0/24 and 2001:db8:2::/48, any protocol, for `selector`.
    pub fn policy(selector: &str) -> String {
        format!(
            "apiVersion: egress.dev/v1alpha1\n\
             kind: EgressPolicy\n\
             metadata: {{name: bypass}}\n\
             spec:\n  \
               selector: {selector}\n  \
               egress:\n    \
                 - name: deny-doc\n      \
                   action: deny\n      \
                   to: [{{cidr: 203.0.113.0/24}}, {{cidr: \"2001:db8:2::/48\"}}]\n"
        )
    }

    /// [`Self::policy`] without the IPv4 prefix: IPv4 connections to it open.
    pub fn policy_denying_v6_only(selector: &str) -> String {
        Self::policy(selector).replace("{cidr: 203.0.113.0/24}, ", "")
    }

    /// The selector of this world's cgroup.
    pub fn selector(&self) -> String {
        format!("{{cgroups: [\"{}\"]}}", self.cgroup.relative_path())
    }

    /// Starts the agent with the deny policy scoped to this world's cgroup.
    pub fn start_agent(&self) -> AgentGuard {
        AgentGuard::start(&Self::policy(&self.selector()))
    }
}

fn counter_name(ip: IpAddr) -> &'static str {
    let denied = match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [203, 0, 113],
        IpAddr::V6(v6) => v6.segments()[..3] == [0x2001, 0xdb8, 2],
    };
    match (ip.is_ipv4(), denied) {
        (true, true) => "denied4",
        (false, true) => "denied6",
        (true, false) => "allowed4",
        (false, false) => "allowed6",
    }
}

/// Runs the helper with `args` at `placement`.
pub fn run(placement: &Placement, args: &[String]) -> Run {
    let mut cmd = placement.command(bypass_bin()).expect("placement");
    cmd.args(args);
    let out = run_bounded(&mut cmd, "egress-bypass", RUN_LIMIT).expect("helper runs");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        matches!(run.code, Some(0 | 1)),
        "egress-bypass {args:?} could not run the technique ({:?}): {}",
        run.code,
        run.stderr
    );
    run
}

/// A helper started before the agent with a socket already connected; `send` lets it send.
pub struct Held {
    process: ProcessGuard,
    /// Kept open: the helper prints its result after sending.
    stdout: BufReader<ChildStdout>,
}

impl Held {
    /// Starts `technique ADDR` and waits for its `ready`.
    pub fn start(placement: &Placement, args: &[String]) -> Self {
        let mut cmd = placement.command(bypass_bin()).expect("placement");
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = ProcessGuard::spawn(&mut cmd, "egress-bypass held").expect("spawn");
        let mut stdout = BufReader::new(process.child_mut().stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready line");
        assert_eq!(line.trim(), "ready", "{args:?} did not connect");
        Self { process, stdout }
    }

    /// Lets it send once more (`tcp-held`) and waits until it has; it keeps running.
    pub fn send_again(&mut self) {
        let stdin = self.process.child_mut().stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("go");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("sent line");
        assert_eq!(line.trim(), "sent", "the held helper did not send");
    }

    /// Lets it send; returns its exit code (0: the send call succeeded) and its output.
    pub fn send(mut self) -> (Option<i32>, String) {
        let child = self.process.child_mut();
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("go");
        let status = self.process.wait_timeout(RUN_LIMIT).expect("wait");
        let mut rest = String::new();
        self.stdout
            .read_to_string(&mut rest)
            .expect("helper output");
        thread::sleep(SETTLE);
        (status.and_then(|s| s.code()), rest)
    }
}

/// Deny records for `dst` and `protocol` so far.
pub fn deny_records(agent: &AgentGuard, dst: IpAddr, protocol: &str) -> Vec<Value> {
    let dst = dst.to_string();
    agent
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["kind"] == "connection"
                && r["direction"] == "egress"
                && r["verdict"] == "deny"
                && r["dst_ip"] == dst.as_str()
                && r["protocol"] == protocol
        })
        .collect()
}

/// Waits until there are more than `before` deny records for `dst` and `protocol`.
pub fn assert_new_deny_record(agent: &AgentGuard, dst: IpAddr, protocol: &str, before: usize) {
    let deadline = std::time::Instant::now() + RECORDED;
    loop {
        let now = deny_records(agent, dst, protocol);
        if now.len() > before {
            let record = &now[now.len() - 1];
            assert_eq!(record["policy"], "bypass", "{record}");
            assert_eq!(record["rule"], "deny-doc", "{record}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new deny record for {protocol} to {dst} within {RECORDED:?}; log:\n{}",
            std::fs::read_to_string(agent.audit_path()).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
}
