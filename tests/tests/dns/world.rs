//! The DNS suite's world: the two-namespace network, a test cgroup, dnsmasq on the server's
//! veth address, one TCP listener on `[::]:80` in the server namespace that serves every
//! address of the AnyIP prefixes below, nftables counters there that count what reaches
//! the receiver before anything else sees it, and runs of the helper's `resolve-connect`
//! in the test cgroup.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use egress_tests::{
    AgentGuard, CgroupGuard, PacketCounters, SerialGuard, Servers, TestNet,
    agent::{AgentOptions, egress_bin},
    dns::{DnsServer, HostEntry, add_anyip_prefix, dig},
    helper_bin,
    process::{Placement, run_bounded},
    serial,
};
use serde_json::Value;

/// The port the listener serves.
pub const PORT: u16 = 80;
/// Time for packets already sent to reach the counters.
pub const SETTLE: Duration = Duration::from_millis(300);
/// Connect timeout of the helper: far above a first-SYN connect, far below a test's budget.
const CONNECT_MS: u64 = 3000;

/// Third group of the AnyIP prefixes 2001:db8:X::/64 served in the server namespace.
pub const DENIED_NAMES: u16 = 0x5300;
pub const ALLOWED_NAMES: u16 = 0x5302;
pub const LITERALS: u16 = 0x5303;
pub const MISC: u16 = 0x5304;
const PREFIXES: [u16; 4] = [DENIED_NAMES, ALLOWED_NAMES, LITERALS, MISC];

/// `2001:db8:PREFIX::LOW` (LOW up to 32 bits).
pub fn addr(prefix: u16, low: u32) -> IpAddr {
    let [a, b] = [(low >> 16) as u16, (low & 0xffff) as u16];
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, prefix, 0, 0, 0, a, b))
}

/// The control address of the denied-names prefix: never in an answer.
pub fn denied_control() -> IpAddr {
    addr(DENIED_NAMES, 0x1_0000)
}

/// nftables counters in the server namespace: name, what they count. Priority -500 puts
/// them before everything else in prerouting.
const COUNTERS: [(&str, &str); 5] = [
    // Every packet to an address some `n{i}.denied.test` resolves to (1..=0xffff).
    (
        "denied_names",
        "ip6 daddr 2001:db8:5300::1-2001:db8:5300::ffff",
    ),
    ("denied_control", "ip6 daddr 2001:db8:5300::1:0"),
    // Connection attempts (SYN without ACK), so that retransmitted SYNs show.
    (
        "allowed_names_syn",
        "ip6 daddr 2001:db8:5302::/64 tcp flags & (syn | ack) == syn",
    ),
    (
        "literals_syn",
        "ip6 daddr 2001:db8:5303::/64 tcp flags & (syn | ack) == syn",
    ),
    ("misc", "ip6 daddr 2001:db8:5304::/64"),
];

/// One `resolve-connect` summary line.
pub struct Summary(pub Value);

impl Summary {
    /// A count of the summary (0 when absent).
    pub fn n(&self, key: &str) -> u64 {
        self.0[key].as_u64().unwrap_or(0)
    }

    /// The first address resolved.
    pub fn first_addr(&self) -> Option<IpAddr> {
        self.0["first_addr"].as_str().and_then(|a| a.parse().ok())
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One test's world. Fields drop in order: DNS server, listener, cgroup, network, lock.
pub struct World {
    pub dns: DnsServer,
    counters: PacketCounters,
    _servers: Servers,
    pub cgroup: CgroupGuard,
    pub net: TestNet,
    _serial: SerialGuard,
}

impl World {
    /// Builds the world; dnsmasq answers `hosts` and `cnames` with TTL `ttl`.
    pub fn new(name: &str, ttl: u32, hosts: &[HostEntry], cnames: &[(&str, &str)]) -> Self {
        let serial = serial();
        let net = TestNet::new().expect("test network");
        let cgroup = CgroupGuard::new(name).expect("test cgroup");
        for prefix in PREFIXES {
            add_anyip_prefix(&net.server, &format!("2001:db8:{prefix:x}::/64"))
                .expect("AnyIP route");
        }
        let servers = Servers::start(
            &net.server,
            &[IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
            &[PORT],
            &[],
        )
        .expect("listener starts");
        let dns = DnsServer::start(&net.server, TestNet::SERVER_V4.into(), ttl, hosts, cnames)
            .unwrap_or_else(|e| panic!("dnsmasq: {e}"));
        let counters =
            PacketCounters::install(&net.server, "egress_dns", &COUNTERS).expect("packet counters");
        let world = Self {
            dns,
            counters,
            _servers: servers,
            cgroup,
            net,
            _serial: serial,
        };
        world.warm_up();
        world
    }

    /// Waits until IPv6 duplicate address detection has finished on both ends (the
    /// link-local addresses start tentative) and makes one IPv6 connection from outside any test
    /// cgroup, so that the first connection a test measures does not wait for neighbour
    /// discovery (its SYN would be retransmitted after 1 s).
    fn warm_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for ns in [&self.net.client, &self.net.server] {
            while !ns
                .ip(&["-6", "addr", "show", "tentative"])
                .expect("ip addr")
                .trim()
                .is_empty()
            {
                assert!(Instant::now() < deadline, "IPv6 addresses stay tentative");
                thread::sleep(Duration::from_millis(50));
            }
        }
        let target = SocketAddr::new(TestNet::ALLOWED_V6.into(), PORT);
        let mut cmd = Placement::new(self.net.client.path())
            .command(helper_bin().expect("helper"))
            .expect("placement");
        cmd.args(["connect", &target.to_string(), "5000"]);
        let out =
            run_bounded(&mut cmd, "warm-up connect", Duration::from_secs(10)).expect("helper runs");
        assert!(
            out.status.success(),
            "warm-up connection to {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the workload runs: the client namespace and the test cgroup.
    pub fn placement(&self) -> Placement {
        Placement::new(self.net.client.path()).cgroup(self.cgroup.path())
    }

    /// Packets counted so far by the counter `name`.
    pub fn packets(&self, name: &str) -> u64 {
        self.counters
            .packets(name)
            .unwrap_or_else(|e| panic!("counter {name}: {e}"))
    }

    /// Resolves `count` names of `pattern` through dnsmasq with the system resolver and
    /// connects to each at once, from the workload; bounded by `wall`.
    pub fn resolve_connect(&self, pattern: &str, count: u32, wall: Duration) -> Summary {
        let resolv = self.dns.resolv_conf();
        let mut cmd = self
            .placement()
            .command(helper_bin().expect("helper"))
            .expect("placement");
        cmd.arg("resolve-connect").arg(&resolv).args([
            pattern.to_owned(),
            count.to_string(),
            PORT.to_string(),
            CONNECT_MS.to_string(),
            wall.as_millis().to_string(),
        ]);
        let limit = wall + Duration::from_millis(CONNECT_MS) + Duration::from_secs(15);
        let out = run_bounded(&mut cmd, "resolve-connect", limit).expect("helper runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "resolve-connect {pattern} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("resolve-connect printed {stdout:?}: {e}"));
        Summary(value)
    }

    /// Sends one UDP datagram to `to` from the workload; whether the send was refused
    /// (EPERM from the socket hooks) rather than sent.
    pub fn udp_refused(&self, to: SocketAddr) -> bool {
        let mut cmd = self
            .placement()
            .command(helper_bin().expect("helper"))
            .expect("placement");
        cmd.args(["udp", &to.to_string(), "300"]);
        let out = run_bounded(&mut cmd, "udp", Duration::from_secs(20)).expect("helper runs");
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted")
    }

    /// Resolves `name`, connects, holds the connection `hold`, then asks the server over it;
    /// (connected, answered).
    pub fn resolve_hold(&self, name: &str, hold: Duration) -> (bool, bool) {
        let resolv = self.dns.resolv_conf();
        let mut cmd = self
            .placement()
            .command(helper_bin().expect("helper"))
            .expect("placement");
        cmd.arg("resolve-hold").arg(&resolv).args([
            name.to_owned(),
            PORT.to_string(),
            hold.as_millis().to_string(),
        ]);
        let out = run_bounded(&mut cmd, "resolve-hold", hold + Duration::from_secs(20))
            .expect("helper runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "resolve-hold {name}: {stdout}");
        let value: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("resolve-hold printed {stdout:?}: {e}"));
        (value["connected"] == true, value["answered"] == true)
    }

    /// Resolves `name` once and connects to it.
    pub fn resolve_connect_one(&self, name: &str) -> Summary {
        self.resolve_connect(name, 1, Duration::from_secs(20))
    }

    /// Connects to the literal `ip` (no DNS), from the workload.
    pub fn connect(&self, ip: IpAddr) -> Summary {
        self.resolve_connect_one(&ip.to_string())
    }

    /// `dig` from the workload (its namespace and cgroup) to dnsmasq.
    pub fn dig(&self, name: &str, tcp: bool) -> Vec<IpAddr> {
        dig(&self.placement(), self.dns.addr(), name, "AAAA", tcp)
            .unwrap_or_else(|e| panic!("dig {name}: {e}"))
    }

    /// A policy named `dns` for this world's cgroup; `resolvers` adds `spec.dns`.
    pub fn policy(&self, default_action: &str, rules: &str, resolvers: bool) -> String {
        let dns = if resolvers {
            format!("  dns: {{resolvers: [\"{}\"]}}\n", TestNet::SERVER_V4)
        } else {
            String::new()
        };
        format!(
            "apiVersion: egress.dev/v1alpha1\n\
             kind: EgressPolicy\n\
             metadata: {{name: dns}}\n\
             spec:\n  \
               selector: {{cgroups: [\"{}\"]}}\n  \
               defaultAction: {default_action}\n\
             {dns}  \
               egress:\n{rules}",
            self.cgroup.relative_path()
        )
    }

    /// Starts the agent with `policy` and `extra_args`.
    pub fn agent(&self, policy: &str, extra_args: &[&str]) -> AgentGuard {
        let options = AgentOptions {
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            ..AgentOptions::default()
        };
        let bin = egress_bin().unwrap_or_else(|e| panic!("{e}"));
        AgentGuard::try_start(&bin, policy, &options).unwrap_or_else(|e| {
            panic!("{e}; eBPF could not be put in place and this test fails (it never skips)")
        })
    }
}

/// The rule that lets a default-deny workload ask dnsmasq (UDP and TCP port 53).
pub fn allow_dns_rule() -> String {
    format!(
        "    - name: allow-dns\n      action: allow\n      \
         to: [{{cidr: {}/32}}]\n      ports: [53]\n",
        TestNet::SERVER_V4
    )
}

/// A TCP port-80 rule named `name` with `action` on the host patterns `hosts`.
pub fn host_rule(name: &str, action: &str, hosts: &[&str]) -> String {
    let to: Vec<String> = hosts.iter().map(|h| format!("{{host: \"{h}\"}}")).collect();
    format!(
        "    - name: {name}\n      action: {action}\n      to: [{}]\n      \
         protocol: tcp\n      ports: [{PORT}]\n",
        to.join(", ")
    )
}

/// `(name, address)` host entries.
pub fn hosts(entries: &[(&str, IpAddr)]) -> Vec<HostEntry> {
    entries
        .iter()
        .map(|(name, ip)| ((*name).to_owned(), *ip))
        .collect()
}
