//! The kernel program decides exactly like the reference evaluator (`eval::decide`), checked
//! with `BPF_PROG_TEST_RUN` on crafted packets: no network, no attach, deterministic.
//!
//! In a test run the packet's socket is a fake one the kernel makes for the run: its cgroup is
//! the calling process's and its uid is 0. So each test moves this process into a nested test
//! cgroup (`/egress-test-verdicts-PID/mid/leaf`, back out on drop), and judges every packet
//! as the workload (that leaf, uid 0). Policies select nothing, uids, or cgroups that do or do
//! not contain the leaf; the program walks the leaf's real ancestors by id.

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use egress_agent::{
    cgroup::find_cgroup2_root,
    datapath::test_run::Transport,
    eval,
    policy::{PolicySet, parse_str},
};
use egress_common::verdict;
use egress_tests::{
    CgroupGuard,
    policygen::{self, CgroupChoices, Fragment, Probe, Rng},
    test_run::LoadedPrograms,
};

/// The socket uid of every `BPF_PROG_TEST_RUN` packet.
const UID: u32 = 0;

/// This process, moved into a nested test cgroup; moved back to where it was on drop,
/// before the cgroups (whose guards would kill anything left inside) are removed.
struct Placement {
    top: CgroupGuard,
    mid: CgroupGuard,
    leaf: CgroupGuard,
    other: CgroupGuard,
    home: PathBuf,
}

impl Placement {
    fn new() -> Self {
        let root = find_cgroup2_root().expect("cgroup2 mount");
        let own = fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
        let home = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .expect("a cgroup2 line in /proc/self/cgroup");
        let home = root.join(home.trim_start_matches('/'));
        let top = CgroupGuard::new("verdicts").expect("test cgroup");
        let mid = top.child("mid").expect("test cgroup");
        let leaf = mid.child("leaf").expect("test cgroup");
        let other = top.child("other").expect("test cgroup");
        move_self(leaf.path()).expect("moving the test process into its cgroup");
        Self {
            top,
            mid,
            leaf,
            other,
            home,
        }
    }

    /// The workload's cgroup, as policies name it.
    fn workload(&self) -> &str {
        self.leaf.relative_path()
    }

    fn choices(&self) -> CgroupChoices {
        let top = self.top.relative_path();
        let leaf = self.leaf.relative_path();
        CgroupChoices {
            containing: [top, self.mid.relative_path(), leaf]
                .map(String::from)
                .to_vec(),
            unrelated: vec![
                self.other.relative_path().to_owned(),
                format!("{top}/absent"),
                // String prefixes of the workload's path that are not path prefixes.
                format!("{leaf}x"),
                leaf[..leaf.len() - 1].to_owned(),
            ],
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let Err(e) = move_self(&self.home) {
            eprintln!("verdicts: moving back to {}: {e}", self.home.display());
        }
    }
}

fn move_self(cgroup: &Path) -> io::Result<()> {
    fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
}

/// The loaded programs, with this process in the workload's cgroup. Fields drop in order:
/// the process moves back out before the programs' serial lock is released.
struct Bench {
    placement: Placement,
    programs: LoadedPrograms,
}

impl Bench {
    fn new() -> Self {
        let programs = LoadedPrograms::load();
        Self {
            placement: Placement::new(),
            programs,
        }
    }

    fn parse(yaml: &str) -> PolicySet {
        parse_str(Path::new("verdicts.yaml"), yaml)
            .unwrap_or_else(|e| panic!("policy does not load: {e}\n{yaml}"))
    }

    /// Compiles `set` and switches the program to it.
    fn apply(&mut self, set: &PolicySet) {
        let applied = self.programs.apply(set);
        let containing = self.placement.choices().containing;
        assert!(
            !applied
                .missing_cgroups
                .iter()
                .any(|m| containing.contains(m)),
            "existing cgroups reported missing: {:?}",
            applied.missing_cgroups
        );
    }

    fn run(&mut self, frame: &[u8]) -> bool {
        self.programs
            .datapath
            .test_run(frame, 1)
            .expect("BPF_PROG_TEST_RUN")
            .passed
    }

    /// Runs `probe`; returns whether it passed, or a description of the disagreement.
    fn judge(&mut self, set: &PolicySet, probe: &Probe) -> Result<bool, String> {
        let frame = probe.frame();
        let passed = self.run(&frame);
        let workload = self.placement.workload();
        let (protocol, port) = (probe.protocol(), probe.port());
        let want = eval::explain(set, workload, UID, probe.dst, protocol, port);
        if passed == (want.decision.verdict == verdict::ALLOW) {
            return Ok(passed);
        }
        Err(format!(
            "kernel {} but the evaluator says {:?}\n  probe {probe:?} (protocol {protocol}, port {port})\n  \
             workload {workload} uid {UID}, generation {}\n  applicable {:?}\n  matched {:?}\n  frame {frame:02x?}",
            if passed { "passed" } else { "dropped" },
            want.decision,
            self.programs.active().generation,
            want.applicable,
            want.matched,
        ))
    }

    /// Asserts that the kernel and the evaluator both give `passes` for `probe`.
    fn expect(&mut self, set: &PolicySet, probe: Probe, passes: bool) {
        let got = self.judge(set, &probe).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got, passes,
            "{probe:?}: kernel and evaluator agree, but not with the test"
        );
    }
}

fn probe(dst: &str, transport: Transport) -> Probe {
    Probe {
        dst: dst.parse::<IpAddr>().expect("test address"),
        transport,
        fragment: Fragment::Whole,
    }
}

/// One policy document named `name` with the given `spec` body (indented by two spaces).
fn doc(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

const SEED: u64 = 0x6567_7265_7373_0003;
const POLICY_SETS: usize = 160;
const PACKETS_PER_SET: usize = 48;

#[test]
fn kernel_decides_like_the_evaluator_on_random_policy_sets() {
    let mut bench = Bench::new();
    let seed = std::env::var("EGRESS_VERDICT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let choices = bench.placement.choices();
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let (mut passed, mut dropped, mut mismatches) = (0usize, 0usize, Vec::new());
    for case in 0..POLICY_SETS {
        let yaml = policygen::policy_set_yaml(&mut rng, &choices);
        let set = Bench::parse(&yaml);
        // Every set is a new generation on the same program: parities alternate and the
        // previous set's entries are removed, so each packet must follow this set alone.
        bench.apply(&set);
        let prefixes = policygen::prefixes(&set);
        for _ in 0..PACKETS_PER_SET {
            let probe = policygen::probe(&mut rng, &prefixes);
            match bench.judge(&set, &probe) {
                Ok(true) => passed += 1,
                Ok(false) => dropped += 1,
                Err(e) => mismatches.push(format!("seed {seed:#x} case {case}: {e}\n{yaml}")),
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{POLICY_SETS} policy sets, {} packets ({passed} passed, {dropped} dropped) in {elapsed:?}",
        passed + dropped + mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} packets judged differently; the first:\n{}",
        mismatches.len(),
        POLICY_SETS * PACKETS_PER_SET,
        mismatches[..mismatches.len().min(3)].join("\n\n")
    );
    // A generator that only produced passes (or drops) would prove little.
    let total = passed + dropped;
    assert!(
        dropped * 10 >= total && passed * 10 >= total,
        "lopsided sample: {passed} passed, {dropped} dropped"
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}

#[test]
fn a_matching_deny_beats_a_more_specific_allow() {
    let mut bench = Bench::new();
    let set = Bench::parse(&doc(
        "p",
        "  egress:\n    - {name: tens, action: deny, to: [{cidr: 10.0.0.0/8}]}\n    \
         - {name: web, action: allow, to: [{cidr: 10.1.0.0/16}], protocol: tcp, ports: [443]}\n",
    ));
    bench.apply(&set);
    bench.expect(&set, probe("10.1.2.3", Transport::TcpSyn(80)), false);
    bench.expect(&set, probe("10.1.2.3", Transport::TcpSyn(443)), false);
    bench.expect(&set, probe("10.1.2.3", Transport::Udp(53)), false);
    bench.expect(&set, probe("11.1.2.3", Transport::TcpSyn(443)), true);
}

#[test]
fn except_cuts_a_hole_in_a_deny() {
    let mut bench = Bench::new();
    let set = Bench::parse(&doc(
        "p",
        "  egress:\n    - name: docs\n      action: deny\n      \
         to: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}, {cidr: \"2001:db8::/32\", except: [\"2001:db8:1::/48\"]}]\n",
    ));
    bench.apply(&set);
    for (dst, passes) in [
        ("203.0.113.5", false),
        ("203.0.113.127", false),
        ("203.0.113.128", true),
        ("203.0.113.255", true),
        ("203.0.114.0", true),
        ("2001:db8::1", false),
        ("2001:db8:1::1", true),
        ("2001:db8:2::1", false),
        ("::ffff:203.0.113.5", true),
    ] {
        bench.expect(&set, probe(dst, Transport::TcpSyn(80)), passes);
        bench.expect(&set, probe(dst, Transport::Echo), passes);
    }
}

#[test]
fn port_range_edges() {
    let mut bench = Bench::new();
    let set = Bench::parse(&doc(
        "p",
        "  egress:\n    - name: range\n      action: deny\n      to: [{entity: any}]\n      \
         protocol: tcp\n      ports: [\"8000-8100\", 65535]\n",
    ));
    bench.apply(&set);
    for dst in ["198.51.100.7", "2001:db8::7"] {
        for (port, passes) in [
            (7999, true),
            (8000, false),
            (8050, false),
            (8100, false),
            (8101, true),
            (65534, true),
            (65535, false),
            (0, true),
        ] {
            bench.expect(&set, probe(dst, Transport::TcpSyn(port)), passes);
            bench.expect(&set, probe(dst, Transport::TcpAck(port)), passes);
            bench.expect(&set, probe(dst, Transport::Udp(port)), true);
        }
    }
}

/// Port lists that cut a protocol's ports into more runs than a port table holds are
/// decided by the `PORTS` trie; shorter ones by the table (`egress_common::ports`).
#[test]
fn long_port_lists_are_decided_through_the_trie() {
    let mut bench = Bench::new();
    let set = Bench::parse(&doc(
        "p",
        "  egress:\n    - name: many\n      action: deny\n      to: [{entity: any}]\n      \
         protocol: tcp\n      ports: [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, \"23-25\"]\n    \
         - name: few\n      action: deny\n      to: [{entity: any}]\n      \
         protocol: udp\n      ports: [53, \"100-200\"]\n",
    ));
    bench.apply(&set);
    for dst in ["198.51.100.7", "2001:db8::7"] {
        for port in [0, 1, 2, 3, 20, 21, 22, 23, 24, 25, 26, 443, 65535] {
            let denied = port == 21 || (port % 2 == 1 && port < 20) || (23..=25).contains(&port);
            bench.expect(&set, probe(dst, Transport::TcpSyn(port)), !denied);
        }
        for (port, passes) in [
            (52, true),
            (53, false),
            (99, true),
            (100, false),
            (200, false),
            (201, true),
        ] {
            bench.expect(&set, probe(dst, Transport::Udp(port)), passes);
        }
    }
}

#[test]
fn default_deny_makes_an_allowlist() {
    let mut bench = Bench::new();
    let set = Bench::parse(&doc(
        "p",
        "  defaultAction: deny\n  egress:\n    \
         - {name: dns, action: allow, to: [{entity: any}], protocol: udp, ports: [53]}\n",
    ));
    bench.apply(&set);
    for dst in ["192.0.2.53", "2001:db8::53"] {
        bench.expect(&set, probe(dst, Transport::Udp(53)), true);
        bench.expect(&set, probe(dst, Transport::Udp(54)), false);
        bench.expect(&set, probe(dst, Transport::TcpSyn(53)), false);
        bench.expect(&set, probe(dst, Transport::Echo), false);
        bench.expect(&set, probe(dst, Transport::Other(47)), false);
    }
}

#[test]
fn no_policy_passes_everything() {
    let mut bench = Bench::new();
    let nothing = PolicySet::default();
    let probes = [
        probe("203.0.113.1", Transport::TcpSyn(443)),
        probe("2001:db8::1", Transport::Udp(53)),
        probe("10.0.0.1", Transport::Other(47)),
    ];
    // Generation 0: nothing loaded yet.
    for p in probes {
        bench.expect(&nothing, p, true);
    }
    // A drop-everything policy, then an empty generation in its place.
    let all = Bench::parse(&doc("p", "  defaultAction: deny\n"));
    bench.apply(&all);
    for p in probes {
        bench.expect(&all, p, false);
    }
    bench.apply(&nothing);
    for p in probes {
        bench.expect(&nothing, p, true);
    }
}

#[test]
fn selectors_see_the_test_socket_as_uid_0_in_the_leaf_cgroup() {
    let mut bench = Bench::new();
    let choices = bench.placement.choices();
    let p = probe("192.0.2.10", Transport::TcpSyn(80));
    let mut selectors = vec![
        ("{uids: [0]}".to_owned(), false),
        ("{uids: [1000]}".to_owned(), true),
    ];
    for path in &choices.containing {
        selectors.push((format!("{{cgroups: [\"{path}\"]}}"), false));
        selectors.push((format!("{{cgroups: [\"{path}\"], uids: [1000]}}"), true));
    }
    for path in &choices.unrelated {
        selectors.push((format!("{{cgroups: [\"{path}\"]}}"), true));
    }
    for (selector, passes) in selectors {
        let set = Bench::parse(&doc(
            "p",
            &format!("  selector: {selector}\n  defaultAction: deny\n"),
        ));
        bench.apply(&set);
        bench.expect(&set, p, passes);
    }
}

#[test]
fn audit_policies_never_drop() {
    let mut bench = Bench::new();
    let set = Bench::parse(&doc(
        "p",
        "  mode: audit\n  defaultAction: deny\n  egress:\n    \
         - {name: docs, action: deny, to: [{cidr: 203.0.113.0/24}]}\n",
    ));
    bench.apply(&set);
    let workload = bench.placement.workload().to_owned();
    for dst in ["203.0.113.9", "198.51.100.9"] {
        let p = probe(dst, Transport::TcpSyn(443));
        let want = eval::decide(&set, &workload, UID, p.dst, 6, 443);
        assert_eq!(
            want.audit_verdict,
            verdict::DENY,
            "the audit policy would drop {dst}"
        );
        bench.expect(&set, p, true);
    }
}

#[test]
fn unreadable_governed_packets_follow_the_scope_default() {
    let mut bench = Bench::new();
    let allowlist = Bench::parse(&doc("p", "  defaultAction: deny\n"));
    let opt_out = Bench::parse(&doc(
        "p",
        "  egress:\n    - {name: docs, action: deny, to: [{cidr: 203.0.113.0/24}]}\n",
    ));
    let v4 = probe("203.0.113.1", Transport::TcpSyn(443)).frame();
    let v6 = probe("2001:db8::1", Transport::Udp(53)).frame();
    // The kernel refuses to run a frame whose IP header is cut short (EINVAL), so a program
    // never sees one; what it can see is a full IP header with the rest unreadable.
    for short in [&v4[..14 + 10], &v6[..14 + 30]] {
        assert!(
            bench.programs.datapath.test_run(short, 1).is_err(),
            "the kernel ran a frame with a truncated IP header"
        );
    }
    let mut ihl_short = v4.clone();
    ihl_short[14] = 0x44; // a 16-byte IPv4 header
    let mut ihl_long = v4.clone();
    ihl_long[14] = 0x4f; // 60 bytes of header: the TCP header would lie past the end
    let mut v6_extension = v6[..14 + 40].to_vec();
    v6_extension[14 + 6] = 0; // a hop-by-hop header that is not there
    let broken: [(&str, Vec<u8>); 5] = [
        ("TCP header cut short", v4[..14 + 20 + 10].to_vec()),
        ("IPv4 header length below 20", ihl_short),
        ("IPv4 header length past the end", ihl_long),
        ("UDP header cut short", v6[..14 + 40 + 4].to_vec()),
        ("IPv6 extension header missing", v6_extension),
    ];
    for (set, passes) in [(&allowlist, false), (&opt_out, true)] {
        bench.apply(set);
        for (what, frame) in &broken {
            assert_eq!(bench.run(frame), passes, "{what}");
        }
    }
    // The same headers, readable, are judged by their destination: the opt-out list drops
    // 203.0.113.1 and passes 2001:db8::1.
    assert!(!bench.run(&v4), "readable IPv4 to a denied prefix");
    assert!(bench.run(&v6), "readable IPv6 elsewhere");
}

#[test]
fn non_first_fragments_are_judged_without_ports() {
    let mut bench = Bench::new();
    let ports = Bench::parse(&doc(
        "p",
        "  egress:\n    - {name: tls, action: deny, to: [{entity: any}], protocol: tcp, ports: [443]}\n",
    ));
    let any_port = Bench::parse(&doc(
        "p",
        "  egress:\n    - {name: tcp, action: deny, to: [{entity: any}], protocol: tcp}\n",
    ));
    for dst in ["203.0.113.1", "2001:db8::1"] {
        let at = |fragment| Probe {
            fragment,
            ..probe(dst, Transport::TcpAck(443))
        };
        bench.apply(&ports);
        bench.expect(&ports, at(Fragment::Whole), false);
        bench.expect(&ports, at(Fragment::First), false);
        bench.expect(&ports, at(Fragment::Later), true);
        bench.apply(&any_port);
        bench.expect(&any_port, at(Fragment::Later), false);
    }
}

#[test]
fn successive_generations_replace_each_other() {
    let mut bench = Bench::new();
    let deny_docs = Bench::parse(&doc(
        "a",
        "  egress:\n    - {name: docs, action: deny, to: [{cidr: 203.0.113.0/24}]}\n",
    ));
    let deny_other = Bench::parse(&doc(
        "b",
        "  egress:\n    - {name: other, action: deny, to: [{cidr: 198.51.100.0/24}]}\n",
    ));
    let docs = probe("203.0.113.1", Transport::TcpSyn(443));
    let other = probe("198.51.100.1", Transport::TcpSyn(443));
    let mut parities = Vec::new();
    for round in 0..3 {
        for (set, docs_pass) in [(&deny_docs, false), (&deny_other, true)] {
            bench.apply(set);
            parities.push(bench.programs.active().parity);
            bench.expect(set, docs, docs_pass);
            bench.expect(set, other, !docs_pass);
            assert_eq!(
                bench.programs.active().generation,
                parities.len() as u64,
                "round {round}"
            );
        }
    }
    assert!(
        parities.windows(2).all(|w| w[0] != w[1]),
        "parities alternate: {parities:x?}"
    );
}
