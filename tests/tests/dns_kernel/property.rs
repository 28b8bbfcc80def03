//! Random answers built from a small vocabulary of names (random case, random compression,
//! 0-3 CNAMEs, 1-6 A/AAAA records): for every address of every answer, the kernel's verdict
//! on a TCP SYN must be the reference evaluator's (`eval::decide_named`) for the answer's
//! names (question and CNAME targets). Every address is fresh, so each learned entry holds
//! the names of one answer only.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use egress_agent::{
    datapath::test_run_dns::{DnsMessage, TYPE_A, TYPE_AAAA, WireName},
    eval,
    policy::PolicySet,
};
use egress_common::verdict;
use egress_tests::policygen::Rng;

use super::{ANSWER_LIMIT, Bench};

const SEED: u64 = 0x6567_7265_7373_0006;
const ANSWERS_PER_SET: usize = 150;
const PORTS: [u16; 2] = [443, 80];
const VOCABULARY: [&str; 11] = [
    "example.com",
    "www.example.com",
    "api.example.com",
    "a.b.example.com",
    "example.net",
    "cdn.example.net",
    "img.cdn.example.net",
    "ads.test",
    "x.ads.test",
    "good.test",
    "plain.org",
];

/// Two policies: an allowlist and an opt-out list, each mixing host and address entries,
/// exact names and wildcards, deny and allow, with and without ports.
const SPECS: [&str; 2] = [
    "  defaultAction: deny\n  egress:\n    \
     - {name: web, action: allow, to: [{host: \"*.example.com\"}], protocol: tcp, ports: [443]}\n    \
     - {name: www, action: deny, to: [{host: www.example.com}]}\n    \
     - {name: base, action: allow, to: [{host: example.com}]}\n    \
     - {name: cdn, action: allow, to: [{host: \"*.cdn.example.net\"}, {cidr: 198.51.100.0/25}]}\n    \
     - {name: ads, action: deny, to: [{host: \"*.ads.test\"}, {host: ads.test}], protocol: tcp, ports: [80]}\n    \
     - {name: good, action: allow, to: [{host: good.test}]}\n    \
     - {name: docs, action: deny, to: [{cidr: 203.0.113.0/26}], protocol: tcp, ports: [443]}\n",
    "  egress:\n    \
     - {name: ads, action: deny, to: [{host: \"*.ads.test\"}]}\n    \
     - {name: api, action: allow, to: [{host: api.example.com}], protocol: tcp, ports: [443]}\n    \
     - {name: ex, action: deny, to: [{host: \"*.example.com\"}], protocol: tcp, ports: [80]}\n    \
     - {name: cdn, action: deny, to: [{host: cdn.example.net}, {cidr: \"2001:db8:ff::/48\"}]}\n    \
     - {name: docs, action: deny, to: [{cidr: 192.0.2.0/25}], protocol: tcp, ports: [443]}\n",
];

/// A message being written with name compression: where each name suffix already sits.
struct Writer {
    message: DnsMessage,
    suffixes: HashMap<String, u16>,
}

impl Writer {
    /// `name` (lowercase, from the vocabulary) in random case, its tail replaced by a pointer
    /// to any suffix already written, or not, at random.
    fn wire(&self, rng: &mut Rng, name: &str) -> WireName {
        let labels: Vec<&str> = name.split('.').collect();
        let written: Vec<(usize, u16)> = (0..labels.len())
            .filter_map(|i| Some((i, *self.suffixes.get(&labels[i..].join("."))?)))
            .collect();
        let (cut, pointer) = if !written.is_empty() && rng.percent(70) {
            let (i, at) = written[rng.below(written.len())];
            (i, Some(at))
        } else {
            (labels.len(), None)
        };
        WireName {
            labels: labels[..cut]
                .iter()
                .map(|label| random_case(rng, label))
                .collect(),
            pointer,
        }
    }

    /// Notes the suffixes of `name` whose labels `wire` wrote at offset `at`.
    fn remember(&mut self, name: &str, wire: &WireName, at: u16) {
        let labels: Vec<&str> = name.split('.').collect();
        let mut offset = at;
        for (i, written) in wire.labels.iter().enumerate() {
            self.suffixes.entry(labels[i..].join(".")).or_insert(offset);
            offset += u16::try_from(written.len()).expect("short label") + 1;
        }
    }
}

fn random_case(rng: &mut Rng, label: &str) -> Vec<u8> {
    label
        .bytes()
        .map(|b| {
            if rng.percent(50) {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect()
}

/// Hands out addresses never used before in this phase: IPv4 from the documentation
/// prefixes while they last, IPv6 under 2001:db8::/32.
struct Addresses {
    v4_used: usize,
    v6_used: u16,
}

impl Addresses {
    fn next(&mut self, rng: &mut Rng) -> IpAddr {
        const V4: [[u8; 3]; 3] = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];
        if rng.percent(50) && self.v4_used < 3 * 256 {
            let n = self.v4_used;
            self.v4_used += 1;
            let [a, b, c] = V4[n / 256];
            return IpAddr::V4(Ipv4Addr::new(a, b, c, (n % 256) as u8));
        }
        self.v6_used += 1;
        // Half of them inside 2001:db8:ff::/48, which one policy names by address.
        let third = if rng.percent(50) { 0xff } else { 0x1 };
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            third,
            self.v6_used,
            0,
            0,
            0,
            1,
        ))
    }
}

/// One random answer: the message, its names and its addresses.
struct Answer {
    message: DnsMessage,
    names: Vec<String>,
    addrs: Vec<IpAddr>,
    records: usize,
}

fn random_answer(rng: &mut Rng, id: u16, addresses: &mut Addresses) -> Answer {
    let mut writer = Writer {
        message: DnsMessage::response(id),
        suffixes: HashMap::new(),
    };
    let question = rng.pick(&VOCABULARY);
    let wire = writer.wire(rng, question);
    let qtype = rng.pick(&[TYPE_A, TYPE_AAAA]);
    let at = writer.message.question(&wire, qtype);
    writer.remember(question, &wire, at);
    let mut names = vec![question.to_owned()];
    let mut owner = question;
    for _ in 0..rng.below(4) {
        let target = rng.pick(&VOCABULARY);
        let (owner_wire, target_wire) = (writer.wire(rng, owner), writer.wire(rng, target));
        let ttl = 60 + rng.below(3600) as u32;
        let record = writer.message.cname(&owner_wire, ttl, &target_wire);
        writer.remember(owner, &owner_wire, record.owner);
        writer.remember(target, &target_wire, record.rdata);
        names.push(target.to_owned());
        owner = target;
    }
    let mut addrs = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let addr = addresses.next(rng);
        let owner_wire = writer.wire(rng, owner);
        let ttl = 60 + rng.below(3600) as u32;
        let record = writer.message.address(&owner_wire, ttl, addr);
        writer.remember(owner, &owner_wire, record.owner);
        addrs.push(addr);
    }
    Answer {
        message: writer.message,
        records: names.len() - 1 + addrs.len(),
        names,
        addrs,
    }
}

/// What the kernel decided for one address on one port (passed, and whether the names
/// changed the verdict the address alone would get), or how it differs from the evaluator.
fn check(
    bench: &mut Bench,
    set: &PolicySet,
    addr: IpAddr,
    names: &[String],
    port: u16,
) -> Result<(bool, bool), String> {
    let passed = bench.syn(addr, port);
    let want = eval::decide_named(set, "/", 0, addr, names, 6, port);
    let unnamed = eval::decide_named(set, "/", 0, addr, &[], 6, port);
    if passed == (want.verdict == verdict::ALLOW) {
        return Ok((passed, want.verdict != unnamed.verdict));
    }
    Err(format!(
        "kernel {} a SYN to {addr} port {port}, learned for {names:?}; the evaluator says {want:?}",
        if passed { "passed" } else { "dropped" }
    ))
}

pub fn run() {
    let seed = std::env::var("EGRESS_DNS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let (mut passed, mut dropped) = (0, 0);
    // Verdicts that the learned names changed: without them the test would prove nothing.
    let mut by_name = 0;
    let mut mismatches = Vec::new();
    for (phase, spec) in SPECS.iter().enumerate() {
        // A fresh program per policy: learned entries of one phase must not leak into the next.
        let mut bench = Bench::new();
        let set = bench.apply(spec);
        let mut addresses = Addresses {
            v4_used: 0,
            v6_used: 0,
        };
        let mut learned = Vec::new();
        for case in 0..ANSWERS_PER_SET {
            let answer = random_answer(&mut rng, case as u16, &mut addresses);
            let delivered = bench.deliver(&answer.message);
            let context = || {
                format!(
                    "seed {seed:#x} phase {phase} case {case}: answer {:02x?}",
                    answer.message.bytes()
                )
            };
            // The generator stays within the kernel's limits unless they shrink below 9.
            let readable = answer.records <= ANSWER_LIMIT;
            if readable != delivered {
                mismatches.push(format!(
                    "{}: {} records, delivered {delivered}",
                    context(),
                    answer.records
                ));
            }
            // A dropped answer taught nothing: its addresses are judged by address alone.
            let names = if delivered {
                answer.names.clone()
            } else {
                Vec::new()
            };
            for &addr in &answer.addrs {
                for port in PORTS {
                    match check(&mut bench, &set, addr, &names, port) {
                        Ok((true, named)) => {
                            passed += 1;
                            by_name += usize::from(named);
                        }
                        Ok((false, named)) => {
                            dropped += 1;
                            by_name += usize::from(named);
                        }
                        Err(e) => mismatches.push(format!("{}: {e}", context())),
                    }
                }
                learned.push((addr, names.clone()));
            }
        }
        // Later answers did not disturb what earlier ones taught.
        for (addr, names) in &learned {
            for port in PORTS {
                if let Err(e) = check(&mut bench, &set, *addr, names, port) {
                    mismatches.push(format!("seed {seed:#x} phase {phase}, at the end: {e}"));
                }
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} answers: {passed} SYNs passed, {dropped} dropped, {by_name} decided by a name; \
         {elapsed:?}",
        SPECS.len() * ANSWERS_PER_SET
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches; the first:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(3)].join("\n\n")
    );
    let total = passed + dropped;
    assert!(
        dropped * 10 >= total && passed * 10 >= total,
        "lopsided sample: {passed} passed, {dropped} dropped"
    );
    assert!(
        by_name * 5 >= total,
        "names decided only {by_name} of {total} verdicts"
    );
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
}
