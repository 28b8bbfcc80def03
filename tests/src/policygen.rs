//! Random policy sets (as YAML text, so the parser is exercised too) and random packets aimed
//! at their prefixes, for checking the kernel program against the reference evaluator.
//!
//! Everything is drawn from a seeded [`Rng`], so a failing case is reproduced by its seed.
//! Policy prefixes may name any range: these packets only ever go to `BPF_PROG_TEST_RUN`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egress_agent::datapath::test_run::{Packet, Transport};
use egress_agent::policy::net::mask;
use egress_agent::policy::{Family, PolicySet, Prefix};

/// SplitMix64: small, fast, and the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        // The modulo bias is irrelevant at these sizes.
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn pick_string(&mut self, items: &[String]) -> String {
        items[self.below(items.len())].clone()
    }

    fn u128(&mut self) -> u128 {
        u128::from(self.next_u64()) << 64 | u128::from(self.next_u64())
    }
}

/// The cgroup paths selectors may name, relative to the cgroup2 root.
#[derive(Clone, Debug)]
pub struct CgroupChoices {
    /// The workload's cgroup and its ancestors (not `/`): selecting any of them selects it.
    pub containing: Vec<String>,
    /// Paths that do not contain the workload: existing siblings, absent paths, and paths
    /// that are a string prefix but not a path prefix of the workload's.
    pub unrelated: Vec<String>,
}

const PORTS: &[u16] = &[
    1, 52, 53, 54, 79, 80, 81, 443, 444, 1023, 1024, 8000, 8100, 65534, 65535,
];
const V4_SEEDS: &[u32] = &[
    0x0a00_0000, // 10.0.0.0
    0x0a01_0203, // 10.1.2.3
    0xcb00_7100, // 203.0.113.0
    0xc000_0200, // 192.0.2.0
    0xa9fe_a9fe, // 169.254.169.254
    0x7f00_0001, // 127.0.0.1
    0xe000_00fb, // 224.0.0.251
];
const V4_LENGTHS: &[u8] = &[0, 1, 4, 8, 12, 15, 16, 20, 24, 25, 28, 31, 32];
const V6_SEEDS: &[u128] = &[
    0x2001_0db8_0000_0000_0000_0000_0000_0000,
    0x2001_0db8_0001_0000_0000_0000_0000_0001,
    0xfd00_0ec2_0000_0000_0000_0000_0000_0254,
    0xfe80_0000_0000_0000_0000_0000_0000_0001,
    0xff02_0000_0000_0000_0000_0000_0000_00fb,
];
const V6_LENGTHS: &[u8] = &[0, 3, 7, 16, 32, 48, 64, 100, 120, 127, 128];
const ENTITIES: &[&str] = &[
    "any",
    "localhost",
    "link-local",
    "multicast",
    "private",
    "cloud-metadata",
];
const UIDS: &[u32] = &[0, 1000, 4_294_967_294];

/// A prefix near one of the seeds: overlapping prefixes come out often.
fn prefix(rng: &mut Rng) -> Prefix {
    if rng.percent(60) {
        let noise = if rng.percent(50) {
            0
        } else {
            rng.next_u64() as u16
        };
        let addr = u128::from(rng.pick(V4_SEEDS) ^ u32::from(noise));
        let len = rng.pick(V4_LENGTHS);
        Prefix {
            family: Family::V4,
            addr: mask(addr, len, 32),
            len,
        }
    } else {
        let noise = if rng.percent(50) {
            0
        } else {
            rng.next_u64() as u16
        };
        let addr = rng.pick(V6_SEEDS) ^ u128::from(noise);
        let len = rng.pick(V6_LENGTHS);
        Prefix {
            family: Family::V6,
            addr: mask(addr, len, 128),
            len,
        }
    }
}

/// A prefix strictly inside `outer` (`outer` must be shorter than the family's width).
fn inside(outer: Prefix, rng: &mut Rng) -> Prefix {
    let width = outer.family.width();
    let extra = u8::try_from(1 + rng.below(12)).unwrap_or(1);
    let len = outer.len.saturating_add(extra).min(width);
    let host = width - outer.len;
    let low = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    Prefix {
        family: outer.family,
        addr: mask(outer.addr | (rng.u128() & low), len, width),
        len,
    }
}

/// Quoted: a plain scalar starting with `::` is a YAML syntax error in flow context.
fn prefix_text(p: Prefix) -> String {
    format!("\"{}/{}\"", p.ip(), p.len)
}

fn destination(rng: &mut Rng, out: &mut String) {
    match rng.below(10) {
        0..=6 => {
            let p = prefix(rng);
            let _ = write!(out, "{{cidr: {}", prefix_text(p));
            if p.len < p.family.width() && rng.percent(35) {
                let mut holes: Vec<Prefix> =
                    (0..1 + rng.below(2)).map(|_| inside(p, rng)).collect();
                holes.sort();
                holes.dedup();
                let list: Vec<String> = holes.into_iter().map(prefix_text).collect();
                let _ = write!(out, ", except: [{}]", list.join(", "));
            }
            out.push('}');
        }
        7 | 8 => {
            let _ = write!(out, "{{entity: {}}}", rng.pick(ENTITIES));
        }
        _ => out.push_str("{host: a.example.com}"),
    }
}

fn ports(rng: &mut Rng) -> String {
    let list: Vec<String> = (0..1 + rng.below(3))
        .map(|_| {
            let (a, b) = (rng.pick(PORTS), rng.pick(PORTS));
            if a == b {
                a.to_string()
            } else {
                format!("\"{}-{}\"", a.min(b), a.max(b))
            }
        })
        .collect();
    list.join(", ")
}

fn rule(rng: &mut Rng, index: usize, out: &mut String) {
    let action = if rng.percent(50) { "deny" } else { "allow" };
    let _ = write!(
        out,
        "    - name: r{index}\n      action: {action}\n      to: ["
    );
    for i in 0..1 + rng.below(3) {
        if i > 0 {
            out.push_str(", ");
        }
        destination(rng, out);
    }
    out.push_str("]\n");
    let protocol = rng.pick(&["tcp", "udp", "icmp", "icmpv6", "any", ""]);
    if !protocol.is_empty() {
        let _ = writeln!(out, "      protocol: {protocol}");
    }
    if !matches!(protocol, "icmp" | "icmpv6") && rng.percent(50) {
        let _ = writeln!(out, "      ports: [{}]", ports(rng));
    }
}

fn subset(rng: &mut Rng, items: &[String], most: usize) -> Vec<String> {
    let mut chosen: Vec<String> = (0..1 + rng.below(most))
        .map(|_| items[rng.below(items.len())].clone())
        .collect();
    chosen.sort();
    chosen.dedup();
    chosen
}

fn selector(rng: &mut Rng, cgroups: &CgroupChoices, out: &mut String) {
    let with_cgroups = rng.percent(45);
    let with_uids = rng.percent(25);
    if !with_cgroups && !with_uids {
        return;
    }
    out.push_str("  selector:\n");
    if with_cgroups {
        let pool: Vec<String> = if rng.percent(60) || cgroups.unrelated.is_empty() {
            cgroups.containing.clone()
        } else {
            cgroups.unrelated.clone()
        };
        let mut paths = subset(rng, &pool, 2);
        if rng.percent(20) && !cgroups.unrelated.is_empty() {
            paths.push(rng.pick_string(&cgroups.unrelated));
            paths.sort();
            paths.dedup();
        }
        let quoted: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
        let _ = writeln!(out, "    cgroups: [{}]", quoted.join(", "));
    }
    if with_uids {
        let mut uids: Vec<u32> = (0..1 + rng.below(2)).map(|_| rng.pick(UIDS)).collect();
        uids.sort_unstable();
        uids.dedup();
        let list: Vec<String> = uids.iter().map(u32::to_string).collect();
        let _ = writeln!(out, "    uids: [{}]", list.join(", "));
    }
}

/// One to four policies, as one multi-document YAML text. Names are written in reverse
/// order so that the loader's sorting by name reorders them.
pub fn policy_set_yaml(rng: &mut Rng, cgroups: &CgroupChoices) -> String {
    let count = 1 + rng.below(4);
    let mut out = String::new();
    for i in 0..count {
        let _ = write!(
            out,
            "---\napiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: p{}}}\nspec:\n",
            count - i
        );
        selector(rng, cgroups, &mut out);
        let mode = if rng.percent(30) { "audit" } else { "enforce" };
        let default = if rng.percent(35) { "deny" } else { "allow" };
        let log = rng.pick(&["all", "deny", "none"]);
        let _ = writeln!(
            out,
            "  mode: {mode}\n  defaultAction: {default}\n  log: {log}"
        );
        let rules = rng.below(5);
        if rules > 0 {
            out.push_str("  egress:\n");
            for index in 0..rules {
                rule(rng, index, &mut out);
            }
        }
    }
    out
}

/// Every prefix the set's rules name, with their excepts: packets aim at their edges.
pub fn prefixes(set: &PolicySet) -> Vec<Prefix> {
    let mut found = Vec::new();
    for rule in set.policies.iter().flat_map(|p| &p.rules) {
        rule.for_each_prefix(|p, except| {
            found.push(*p);
            found.extend_from_slice(except);
        });
    }
    found
}

/// How a probe is fragmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    Whole,
    /// Offset 0, more fragments follow: carries the ports.
    First,
    /// A later fragment: no transport header, judged without ports.
    Later,
}

/// One packet to judge.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub dst: IpAddr,
    pub transport: Transport,
    pub fragment: Fragment,
}

const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

impl Probe {
    /// The IP protocol number the kernel sees.
    pub fn protocol(&self) -> u8 {
        match self.transport {
            Transport::TcpSyn(_) | Transport::TcpAck(_) => 6,
            Transport::Udp(_) => 17,
            Transport::Echo if self.dst.is_ipv4() => 1,
            Transport::Echo => 58,
            Transport::Other(protocol) => protocol,
        }
    }

    /// The destination port the evaluator is given: only whole packets and first fragments
    /// carry one, and only TCP and UDP have one.
    pub fn port(&self) -> u16 {
        match (self.fragment, self.transport) {
            (Fragment::Later, _) => 0,
            (_, Transport::TcpSyn(port) | Transport::TcpAck(port) | Transport::Udp(port)) => port,
            _ => 0,
        }
    }

    /// The Ethernet frame for `BPF_PROG_TEST_RUN`.
    pub fn frame(&self) -> Vec<u8> {
        const ETH: usize = 14;
        let src = match self.dst {
            IpAddr::V4(_) => IpAddr::V4(SRC4),
            IpAddr::V6(_) => IpAddr::V6(SRC6),
        };
        let mut frame = Packet {
            src,
            dst: self.dst,
            transport: self.transport,
        }
        .frame();
        // Offset in 8-byte units; the flag is "more fragments".
        let (offset, more) = match self.fragment {
            Fragment::Whole => return frame,
            Fragment::First => (0u16, 1u16),
            Fragment::Later => (1, 0),
        };
        if self.dst.is_ipv4() {
            let field = (more << 13) | offset;
            frame[ETH + 6..ETH + 8].copy_from_slice(&field.to_be_bytes());
        } else {
            // Insert a fragment header between the fixed header and the transport.
            let protocol = frame[ETH + 6];
            frame[ETH + 6] = 44;
            let payload = u16::from_be_bytes([frame[ETH + 4], frame[ETH + 5]]) + 8;
            frame[ETH + 4..ETH + 6].copy_from_slice(&payload.to_be_bytes());
            let field = (offset << 3) | more;
            let [hi, lo] = field.to_be_bytes();
            let header = [protocol, 0, hi, lo, 0, 0, 0x12, 0x34];
            frame.splice(ETH + 40..ETH + 40, header);
        }
        frame
    }
}

/// An address of `p`: its first or last, a random one inside, or one just outside it.
fn address_near(rng: &mut Rng, p: Prefix) -> u128 {
    let width = p.family.width();
    let host = width - p.len;
    let low = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    let top = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    match rng.below(6) {
        0 => p.addr,
        1 => p.addr | low,
        2 => p.addr.wrapping_sub(1) & top,
        3 => (p.addr | low).wrapping_add(1) & top,
        _ => p.addr | (rng.u128() & low),
    }
}

fn destination_ip(rng: &mut Rng, prefixes: &[Prefix]) -> IpAddr {
    let (family, bits) = if !prefixes.is_empty() && rng.percent(80) {
        let p = rng.pick(prefixes);
        (p.family, address_near(rng, p))
    } else if rng.percent(55) {
        let noise = u32::from(rng.next_u64() as u16);
        (Family::V4, u128::from(rng.pick(V4_SEEDS) ^ noise))
    } else {
        let noise = u128::from(rng.next_u64() as u16);
        (Family::V6, rng.pick(V6_SEEDS) ^ noise)
    };
    match family {
        // Truncation is intended: IPv4 addresses sit in the low 32 bits.
        Family::V4 => {
            let v4 = Ipv4Addr::from_bits(bits as u32);
            // An IPv4-mapped IPv6 destination is an IPv6 packet: IPv4 rules must not match.
            if rng.percent(8) {
                IpAddr::V6(v4.to_ipv6_mapped())
            } else {
                IpAddr::V4(v4)
            }
        }
        Family::V6 => IpAddr::V6(Ipv6Addr::from_bits(bits)),
    }
}

fn port(rng: &mut Rng) -> u16 {
    match rng.below(5) {
        0 | 1 => rng.pick(PORTS),
        2 => rng.pick(PORTS).wrapping_add(1),
        3 => 0,
        _ => rng.next_u64() as u16,
    }
}

/// A packet aimed at (the edges of) `prefixes` most of the time, elsewhere otherwise.
pub fn probe(rng: &mut Rng, prefixes: &[Prefix]) -> Probe {
    let dst = destination_ip(rng, prefixes);
    let transport = match rng.below(10) {
        0 | 1 => Transport::TcpSyn(port(rng)),
        2 => Transport::TcpAck(port(rng)),
        3 | 4 => Transport::Udp(port(rng)),
        5 | 6 => Transport::Echo,
        7 => Transport::Other(47),
        8 => Transport::Other(132),
        // ICMP of the other family, carried as a bare protocol number.
        _ => Transport::Other(if dst.is_ipv4() { 58 } else { 1 }),
    };
    let fragment = match rng.below(12) {
        0 => Fragment::First,
        1 => Fragment::Later,
        _ => Fragment::Whole,
    };
    Probe {
        dst,
        transport,
        fragment,
    }
}
