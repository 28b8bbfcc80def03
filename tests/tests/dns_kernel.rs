//! The kernel's DNS answer reader, checked with `BPF_PROG_TEST_RUN`: crafted responses from
//! port 53 go through the ingress program (which tail-calls `egress_dns_skb`), then TCP SYNs
//! to the answered addresses go through the egress program, and their verdicts are compared
//! with what the policy says (and, in the property test, with `eval::decide_named`).
//!
//! Under a test run the kernel makes a fake socket for each run: its cgroup is this
//! process's and its uid 0, the same for the ingress and the egress run, so an address the
//! ingress run learned counts for the egress run after it. Policies select nothing, so they
//! govern that socket. The programs are loaded, never attached: nothing real is judged.

#[path = "dns_kernel/bench.rs"]
mod bench;
#[path = "dns_kernel/malformed.rs"]
mod malformed;
#[path = "dns_kernel/property.rs"]
mod property;

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use bench::Bench;
use egress_agent::datapath::test_run_dns::{
    DnsMessage, DnsTransport, TYPE_A, TYPE_AAAA, WireName, response_frame,
};
use egress_common::dns::DnsConfig;
use malformed::{labels_under_bad, of_wire_length, unreadable_answers};

pub const RESOLVER: &str = "192.0.2.53";
pub const CLIENT: &str = "192.0.2.10";
pub const TTL: u32 = 300;

// The kernel's limits, shared with it through egress_common::dns.
/// Answer records the kernel reads; one more makes an answer unreadable.
pub const ANSWER_LIMIT: usize = egress_common::dns::MAX_ANSWER_RECORDS;
/// CNAME records the kernel reads.
pub const CNAME_LIMIT: usize = egress_common::dns::MAX_CNAME_RECORDS;
/// Labels of one name the kernel reads.
pub const LABEL_LIMIT: usize = egress_common::dns::MAX_NAME_LABELS;

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// A response to `name` (question type A) answering it with `addrs` directly.
pub fn answer(name: &str, addrs: &[&str]) -> DnsMessage {
    let mut message = DnsMessage::response(1);
    let q = message.question(&WireName::plain(name), TYPE_A);
    for addr in addrs {
        message.address(&WireName::pointer(q), TTL, ip(addr));
    }
    message
}

/// A response to `name` through CNAMEs to each of `chain` in turn, then `addrs`.
pub fn chained(name: &str, chain: &[&str], addrs: &[&str]) -> DnsMessage {
    let mut message = DnsMessage::response(2);
    let mut owner = message.question(&WireName::plain(name), TYPE_A);
    for target in chain {
        owner = message
            .cname(&WireName::pointer(owner), TTL, &WireName::plain(target))
            .rdata;
    }
    for addr in addrs {
        message.address(&WireName::pointer(owner), TTL, ip(addr));
    }
    message
}

#[test]
fn a_denied_names_addresses_are_dropped_and_unlearned_ones_pass() {
    let mut bench = Bench::new();
    bench.apply("  egress:\n    - {name: bad, action: deny, to: [{host: blocked.example.test}]}\n");
    let (v4, v6) = (ip("203.0.113.7"), ip("2001:db8:7::7"));
    assert!(
        bench.syn(v4, 443) && bench.syn(v6, 443),
        "nothing learned yet"
    );
    let before = bench.counts();
    bench.teach(&answer(
        "blocked.example.test",
        &["203.0.113.7", "2001:db8:7::7"],
    ));
    assert_eq!(bench.counts().learned, before.learned + 2);
    for dst in [v4, v6] {
        assert!(!bench.syn(dst, 443), "{dst} was answered for a denied name");
        assert!(!bench.syn(dst, 22), "{dst}: a host rule without ports");
    }
    for other in ["203.0.113.8", "2001:db8:7::8", "198.51.100.7"] {
        assert!(bench.syn(ip(other), 443), "{other} was never answered");
    }
    // An answer for a name no pattern matches teaches nothing.
    let before = bench.counts();
    bench.teach(&answer("fine.example.test", &["203.0.113.9"]));
    assert_eq!(bench.counts().learned, before.learned);
    assert!(bench.syn(ip("203.0.113.9"), 443));
}

#[test]
fn an_allowed_name_passes_only_after_its_answer() {
    let mut bench = Bench::new();
    bench.apply(
        "  defaultAction: deny\n  egress:\n    \
         - {name: api, action: allow, to: [{host: api.allowed.test}], protocol: tcp, ports: [443]}\n",
    );
    let addrs = ["198.51.100.20", "2001:db8:20::1", "198.51.100.21"];
    for addr in addrs {
        assert!(!bench.syn(ip(addr), 443), "{addr} before any answer");
    }
    bench.teach(&answer("api.allowed.test", &addrs[..2]));
    // The same over TCP, from an IPv6 resolver.
    let tcp = answer("api.allowed.test", &addrs[2..]);
    let frame = response_frame(
        ip("2001:db8::53"),
        ip("2001:db8::10"),
        DnsTransport::Tcp,
        tcp.bytes(),
    );
    assert!(bench.deliver_frame(&frame), "a readable TCP answer");
    for addr in addrs {
        assert!(bench.syn(ip(addr), 443), "{addr} after its answer");
        assert!(
            !bench.syn(ip(addr), 80),
            "{addr}: the rule admits port 443 only"
        );
    }
    assert!(!bench.syn(ip("198.51.100.22"), 443), "never answered");
}

#[test]
fn a_cname_to_a_denied_name_is_denied() {
    let mut bench = Bench::new();
    bench.apply(
        "  defaultAction: deny\n  egress:\n    \
         - {name: alias, action: allow, to: [{host: alias.test}]}\n    \
         - {name: tracker, action: deny, to: [{host: \"*.tracker.test\"}]}\n",
    );
    bench.teach(&chained(
        "alias.test",
        &["x.tracker.test"],
        &["198.51.100.30"],
    ));
    bench.teach(&chained(
        "alias.test",
        &["cdn.neutral.test"],
        &["198.51.100.31"],
    ));
    bench.teach(&chained(
        "alias.test",
        &["one.neutral.test", "two.neutral.test", "y.tracker.test"],
        &["2001:db8:30::1"],
    ));
    bench.teach(&chained("start.test", &["alias.test"], &["198.51.100.32"]));
    assert!(
        !bench.syn(ip("198.51.100.30"), 443),
        "deny wins across names"
    );
    assert!(
        bench.syn(ip("198.51.100.31"), 443),
        "the alias alone allows"
    );
    assert!(
        !bench.syn(ip("2001:db8:30::1"), 443),
        "a denied name deep in the chain"
    );
    assert!(
        bench.syn(ip("198.51.100.32"), 443),
        "an allowed CNAME target"
    );
}

#[test]
fn compression_pointers_in_owner_names_and_cname_targets() {
    let mut bench = Bench::new();
    bench.apply(
        "  egress:\n    - name: bad\n      action: deny\n      \
         to: [{host: edge.example.test}, {host: deep.mid.example.test}]\n",
    );
    // www.Example.test CNAME edge.<pointer to Example.test>; A owned by a pointer to that.
    let mut message = DnsMessage::response(3);
    let q = message.question(&WireName::plain("www.Example.test"), TYPE_A);
    let edge = message.cname(
        &WireName::pointer(q),
        TTL,
        &WireName::labels_then("edge", Some(q + 4)),
    );
    message.address(&WireName::pointer(edge.rdata), TTL, ip("203.0.113.40"));
    bench.teach(&message);
    // A name reached through two pointers: deep.<mid.<example.test>>.
    let two_hops = |deep: &str, addr: &str| {
        let mut message = DnsMessage::response(4);
        let q = message.question(&WireName::plain("start.example.test"), TYPE_AAAA);
        let mid = message.cname(
            &WireName::pointer(q),
            TTL,
            &WireName::labels_then("mid", Some(q + 6)),
        );
        let deep = message.cname(
            &WireName::pointer(mid.rdata),
            TTL,
            &WireName::labels_then(deep, Some(mid.rdata)),
        );
        message.address(&WireName::pointer(deep.rdata), TTL, ip(addr));
        message
    };
    bench.teach(&two_hops("deep", "2001:db8:40::1"));
    bench.teach(&two_hops("deeper", "2001:db8:40::2"));
    assert!(!bench.syn(ip("203.0.113.40"), 443), "edge.example.test");
    assert!(
        !bench.syn(ip("2001:db8:40::1"), 443),
        "deep.mid.example.test"
    );
    assert!(
        bench.syn(ip("2001:db8:40::2"), 443),
        "deeper.mid.example.test"
    );
}

#[test]
fn names_match_whatever_their_case() {
    let mut bench = Bench::new();
    bench.apply(
        "  egress:\n    - name: bad\n      action: deny\n      \
         to: [{host: API.Example.test.}, {host: \"*.Cdn.TEST\"}]\n",
    );
    let cases = [
        ("api.example.test", "203.0.113.50", false),
        ("API.EXAMPLE.TEST", "203.0.113.51", false),
        ("aPi.eXaMpLe.TeSt", "203.0.113.52", false),
        ("X.cDN.test", "203.0.113.53", false),
        ("api.example.testx", "203.0.113.54", true),
        ("APIX.example.test", "203.0.113.55", true),
    ];
    for (name, addr, _) in cases {
        bench.teach(&answer(name, &[addr]));
    }
    for (name, addr, passes) in cases {
        assert_eq!(bench.syn(ip(addr), 443), passes, "{name}");
    }
}

#[test]
fn a_wildcard_covers_its_subdomains_not_its_base_name() {
    let mut bench = Bench::new();
    bench.apply(
        "  defaultAction: deny\n  egress:\n    \
         - {name: sub, action: deny, to: [{host: \"*.wild.test\"}]}\n    \
         - {name: base, action: allow, to: [{host: wild.test}, {host: \"*.tame.test\"}]}\n",
    );
    let cases = [
        ("wild.test", "198.51.100.60", true),
        ("a.wild.test", "198.51.100.61", false),
        ("b.a.wild.test", "198.51.100.62", false),
        ("notwild.test", "198.51.100.63", false),
        ("a.tame.test", "198.51.100.64", true),
        ("tame.test", "198.51.100.65", false),
        ("x.y.z.tame.test", "198.51.100.66", true),
    ];
    for (name, addr, _) in cases {
        bench.teach(&answer(name, &[addr]));
    }
    for (name, addr, passes) in cases {
        assert_eq!(bench.syn(ip(addr), 443), passes, "{name}");
    }
}

const HOST_POLICY: &str =
    "  egress:\n    - {name: bad, action: deny, to: [{host: \"*.bad.test\"}, {host: bad.test}]}\n";
const ADDRESS_POLICY: &str =
    "  egress:\n    - {name: docs, action: deny, to: [{cidr: 192.0.2.0/25}]}\n";

#[test]
fn unreadable_answers_are_dropped_where_host_rules_apply_and_delivered_elsewhere() {
    let mut bench = Bench::new();
    let cases = unreadable_answers();
    for (policy, host_rules) in [(HOST_POLICY, true), (ADDRESS_POLICY, false)] {
        bench.apply(policy);
        for (what, frame) in &cases {
            let before = bench.counts();
            let delivered = bench.deliver_frame(frame);
            let after = bench.counts();
            assert_eq!(delivered, !host_rules, "{what} (host rules: {host_rules})");
            let (dropped, unread) = if host_rules { (1, 0) } else { (0, 1) };
            assert_eq!(
                (
                    after.dropped - before.dropped,
                    after.unread - before.unread,
                    after.learned - before.learned
                ),
                (dropped, unread, 0),
                "{what} (host rules: {host_rules}): counted as unreadable, nothing learned"
            );
        }
    }
    // Nothing was learned from any of them: their addresses pass the host policy.
    bench.apply(HOST_POLICY);
    let many = (100..=100 + ANSWER_LIMIT).map(|last| format!("198.51.100.{last}"));
    for dst in (100..=136)
        .map(|last| format!("203.0.113.{last}"))
        .chain(many)
    {
        let dst = ip(&dst);
        assert!(
            bench.syn(dst, 443),
            "{dst} was learned from an unreadable answer"
        );
    }
}

#[test]
fn answers_at_the_limits_are_read() {
    let mut bench = Bench::new();
    bench.apply(HOST_POLICY);
    let most: Vec<String> = (0..ANSWER_LIMIT)
        .map(|i| format!("198.51.100.{}", 100 + i))
        .collect();
    let most: Vec<&str> = most.iter().map(String::as_str).collect();
    bench.teach(&answer("x.bad.test", &most));
    let chain: Vec<String> = (1..CNAME_LIMIT).map(|i| format!("c{i}.bad.test")).collect();
    let mut chain: Vec<&str> = chain.iter().map(String::as_str).collect();
    chain.insert(0, "elsewhere.test");
    bench.teach(&chained("start.test", &chain, &["203.0.113.150"]));
    bench.teach(&answer(&labels_under_bad(LABEL_LIMIT), &["203.0.113.151"]));
    bench.teach(&answer(&of_wire_length(254), &["203.0.113.153"]));
    let message = answer("x.bad.test", &["203.0.113.152"]);
    let frame = response_frame(ip(RESOLVER), ip(CLIENT), DnsTransport::Tcp, message.bytes());
    assert!(bench.deliver_frame(&frame), "a whole TCP message");
    for addr in most.iter().copied().chain([
        "203.0.113.150",
        "203.0.113.151",
        "203.0.113.152",
        "203.0.113.153",
    ]) {
        assert!(
            !bench.syn(ip(addr), 443),
            "{addr} learned for a denied name"
        );
    }
}

#[test]
fn an_address_holds_at_most_four_name_sets() {
    let mut bench = Bench::new();
    // Each exact name has a name set of its own (with the wildcard's pattern).
    bench.apply(
        "  egress:\n    - name: bad\n      action: deny\n      \
         to: [{host: \"*.bad.test\"}, {host: n1.bad.test}, {host: n2.bad.test}, \
         {host: n3.bad.test}, {host: n4.bad.test}, {host: n5.bad.test}]\n",
    );
    let addr = "203.0.113.180";
    for n in 1..=4 {
        bench.teach(&answer(&format!("n{n}.bad.test"), &[addr]));
    }
    bench.teach(&answer("n1.bad.test", &[addr]));
    let before = bench.counts();
    assert!(
        !bench.deliver(&answer("n5.bad.test", &[addr])),
        "a fifth name set for one address"
    );
    assert_eq!(bench.counts().dropped, before.dropped + 1);
    assert!(!bench.syn(ip(addr), 443));
    // One answer whose five names have five sets cannot be recorded for a fresh address.
    let five = chained(
        "n1.bad.test",
        &["n2.bad.test", "n3.bad.test", "n4.bad.test", "n5.bad.test"],
        &["203.0.113.181"],
    );
    assert!(!bench.deliver(&five), "five name sets in one answer");
    assert!(bench.syn(ip("203.0.113.181"), 443), "nothing learned");
}

#[test]
fn queries_and_empty_answers_pass_untouched() {
    let mut bench = Bench::new();
    bench.apply(HOST_POLICY);
    let before = bench.counts();
    // A query from port 53, even one carrying an answer section, teaches nothing.
    let mut query = DnsMessage::query(20);
    let q = query.question(&WireName::plain("x.bad.test"), TYPE_A);
    query.address(&WireName::pointer(q), TTL, ip("203.0.113.160"));
    // A query whose body is garbage is not read either.
    let mut garbage = DnsMessage::query(21);
    garbage.set_counts(1, 1);
    garbage.raw(&[0xC0, 12, 0xFF]);
    // A response without answers (NXDOMAIN), and a NOTIFY response with an address.
    let mut empty = DnsMessage::with_flags(22, 0x8183);
    empty.question(&WireName::plain("x.bad.test"), TYPE_A);
    let mut notify = DnsMessage::with_flags(23, 0x8000 | (4 << 11));
    let q = notify.question(&WireName::plain("x.bad.test"), TYPE_A);
    notify.address(&WireName::pointer(q), TTL, ip("203.0.113.161"));
    for (what, message) in [
        ("query", &query),
        ("garbage query", &garbage),
        ("no answers", &empty),
        ("NOTIFY", &notify),
    ] {
        assert!(bench.deliver(message), "{what} was dropped");
    }
    // An empty UDP datagram and a bare TCP ACK from port 53.
    for transport in [DnsTransport::Udp, DnsTransport::Tcp] {
        let mut frame = response_frame(ip(RESOLVER), ip(CLIENT), transport, &[]);
        if transport == DnsTransport::Tcp {
            frame.truncate(frame.len() - 2); // no length prefix either
        }
        assert!(bench.deliver_frame(&frame), "{transport:?} without payload");
    }
    assert_eq!(
        bench.counts(),
        before,
        "nothing read, learned, dropped or counted unreadable"
    );
    for addr in ["203.0.113.160", "203.0.113.161"] {
        assert!(bench.syn(ip(addr), 443), "{addr} was learned");
    }
}

#[test]
fn a_learned_address_stops_counting_when_its_ttl_runs_out() {
    let mut bench = Bench::new();
    bench.apply(HOST_POLICY);
    let no_grace = DnsConfig {
        grace_ns: 0,
        max_ttl_ns: 0,
    };
    bench
        .programs
        .datapath
        .set_dns_config(no_grace)
        .expect("dns config");
    let one_second = |name: &str, addr: &str| {
        let mut message = DnsMessage::response(30);
        let q = message.question(&WireName::plain(name), TYPE_A);
        message.address(&WireName::pointer(q), 1, ip(addr));
        message
    };
    // A CNAME chain holds no longer than its shortest TTL.
    let mut short_chain = DnsMessage::response(31);
    let q = short_chain.question(&WireName::plain("alias.bad.test"), TYPE_A);
    let c = short_chain.cname(&WireName::pointer(q), 1, &WireName::plain("x.bad.test"));
    short_chain.address(&WireName::pointer(c.rdata), 3600, ip("203.0.113.172"));
    let started = Instant::now();
    bench.teach(&one_second("x.bad.test", "203.0.113.170"));
    bench.teach(&answer("x.bad.test", &["203.0.113.171"]));
    bench.teach(&short_chain);
    // A cap on every TTL.
    bench
        .programs
        .datapath
        .set_dns_config(DnsConfig {
            grace_ns: 0,
            max_ttl_ns: 1_000_000_000,
        })
        .expect("dns config");
    bench.teach(&answer("x.bad.test", &["203.0.113.173"]));
    for last in 170..=173 {
        assert!(
            !bench.syn(ip(&format!("203.0.113.{last}")), 443),
            "{last} fresh"
        );
    }
    let deadline = started + Duration::from_millis(1500);
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
    for (last, passes) in [(170, true), (171, false), (172, true), (173, true)] {
        assert_eq!(
            bench.syn(ip(&format!("203.0.113.{last}")), 443),
            passes,
            "203.0.113.{last} after {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn the_kernel_agrees_with_the_evaluator_on_random_answers() {
    property::run();
}
