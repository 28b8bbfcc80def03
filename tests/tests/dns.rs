//! Issue 6, hostname rules, end to end: dnsmasq in the server namespace answers names the
//! test writes; a workload in a test cgroup resolves them with the system resolver (glibc
//! getaddrinfo through a bind-mounted resolv.conf) or `dig` and connects at once; `to: -
//! host:` rules decide those connections from what the kernel learned from the answers.
//! What reaches the receiver is counted by nftables in its namespace; refusals are EPERM
//! from the connect hook. The suite fails, never skips, when dnsmasq or dig is missing.

#[path = "dns/world.rs"]
mod world;

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use egress_tests::{AgentGuard, dns::HostEntry};
use serde_json::Value;
use world::{
    ALLOWED_NAMES, DENIED_NAMES, LITERALS, MISC, SETTLE, World, addr, allow_dns_rule,
    denied_control, host_rule, hosts,
};

/// Names of the flood and first-SYN tests.
const FLOOD: u32 = 10_000;
const FIRST_SYN: u32 = 500;

/// `count` entries `n{i}.SUFFIX` → `2001:db8:PREFIX::{i:x}`, i = 1..=count.
fn numbered(suffix: &str, prefix: u16, count: u32) -> Vec<HostEntry> {
    (1..=count)
        .map(|i| (format!("n{i}.{suffix}"), addr(prefix, i)))
        .collect()
}

fn assert_connected(summary: &world::Summary, expected: IpAddr, what: &str) {
    assert_eq!(
        (summary.n("connected"), summary.first_addr()),
        (1, Some(expected)),
        "{what} should connect to {expected}: {summary}"
    );
}

fn assert_refused(summary: &world::Summary, what: &str) {
    assert_eq!(
        (summary.n("refused"), summary.n("connected")),
        (1, 0),
        "{what} should be refused with EPERM: {summary}"
    );
}

#[test]
fn fixture_answers_over_udp_and_tcp_and_the_system_resolver_uses_it() {
    let mut entries = numbered("fixture.test", ALLOWED_NAMES, 20);
    entries.push(("fx.fixture.test".to_owned(), addr(MISC, 1)));
    let world = World::new(
        "dnsfx",
        30,
        &entries,
        &[("alias.fixture.test", "fx.fixture.test")],
    );
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    // dig from the workload's namespace and cgroup, over UDP and TCP, and through a CNAME.
    assert_eq!(world.dig("fx.fixture.test", false), vec![addr(MISC, 1)]);
    assert_eq!(world.dig("fx.fixture.test", true), vec![addr(MISC, 1)]);
    assert_eq!(world.dig("alias.fixture.test", false), vec![addr(MISC, 1)]);
    assert!(world.dig("absent.fixture.test", false).is_empty());
    // A changed answer after a reload.
    entries.pop();
    entries.push(("fx.fixture.test".to_owned(), addr(MISC, 2)));
    world.dns.set_hosts(&entries).expect("reload");
    assert_eq!(world.dig("fx.fixture.test", false), vec![addr(MISC, 2)]);
    // The system resolver in the helper asks dnsmasq, and every connect reaches the
    // listener on its first SYN.
    let before = world.packets("misc");
    let one = world.resolve_connect_one("fx.fixture.test");
    assert_connected(&one, addr(MISC, 2), "fx.fixture.test");
    thread::sleep(SETTLE);
    assert!(
        world.packets("misc") > before,
        "nothing reached the listener"
    );
    let many = world.resolve_connect("n{i}.fixture.test", 20, Duration::from_secs(30));
    println!("fixture: {many}");
    assert_eq!(
        (many.n("resolved"), many.n("connected"), many.n("slow")),
        (20, 20, 0),
        "{many}"
    );
    thread::sleep(SETTLE);
    assert_eq!(world.packets("allowed_names_syn"), 20);
    // The helper's resolv.conf lived in its own mount namespace only.
    assert_eq!(
        fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        host_resolv
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains("/etc/resolv.conf"), "{mounts}");
}

#[test]
fn denied_name_blocks_every_fresh_address_and_nothing_reaches_the_server() {
    let world = World::new(
        "dnsdeny",
        30,
        &numbered("denied.test", DENIED_NAMES, FLOOD),
        &[],
    );
    let rules = host_rule("deny-denied", "deny", &["*.denied.test"]);
    let agent = world.agent(&world.policy("allow", &rules, false), &[]);
    // Positive control: the prefix itself is not denied; only learned names are.
    let control = world.connect(denied_control());
    assert_connected(&control, denied_control(), "the control literal");
    let flood = world.resolve_connect("n{i}.denied.test", FLOOD, Duration::from_secs(240));
    println!("denied names: {flood}");
    assert_eq!(
        (
            flood.n("attempted"),
            flood.n("resolved"),
            flood.n("refused"),
            flood.n("connected")
        ),
        (u64::from(FLOOD), u64::from(FLOOD), u64::from(FLOOD), 0),
        "every fresh name must resolve and its connect be refused: {flood}"
    );
    thread::sleep(SETTLE);
    assert_eq!(
        world.packets("denied_names"),
        0,
        "packets to denied names reached the server"
    );
    let after = world.connect(denied_control());
    assert_connected(&after, denied_control(), "the control literal afterwards");
    thread::sleep(SETTLE);
    assert!(world.packets("denied_control") >= 2, "controls not counted");
    // The agent reports what the kernel learned: every fresh name's address, none evicted.
    let status = status_json(&agent);
    let dns = &status["dns"];
    let count = |key: &str| {
        dns[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {status}"))
    };
    assert!(count("answers") >= u64::from(FLOOD), "{status}");
    assert!(count("learned") >= u64::from(FLOOD), "{status}");
    assert!(count("learned_entries") >= u64::from(FLOOD), "{status}");
    assert_eq!(count("learned_evicted"), 0, "{status}");
    assert_eq!(count("dropped"), 0, "{status}");
}

/// `egress status --json` of the running agent.
fn status_json(agent: &AgentGuard) -> Value {
    let bin = egress_tests::agent::egress_bin().unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(bin)
        .args(["status", "--json", "--socket"])
        .arg(agent.control_socket())
        .output()
        .expect("egress status runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

#[test]
fn allowed_name_connects_on_the_first_syn_under_default_deny() {
    let mut entries = numbered("allowed.test", ALLOWED_NAMES, FIRST_SYN);
    entries.push(("other.misc.test".to_owned(), addr(MISC, 9)));
    let world = World::new("dnsallow", 30, &entries, &[]);
    let rules = host_rule("allow-names", "allow", &["*.allowed.test"])
        + &format!(
            "    - name: allow-literals\n      action: allow\n      \
             to: [{{cidr: \"2001:db8:{LITERALS:x}::/64\"}}]\n      protocol: tcp\n      \
             ports: [80]\n"
        );
    // The resolver is allowed through `spec.dns`.
    let _agent = world.agent(&world.policy("deny", &rules, true), &[]);
    let wall = Duration::from_secs(60);
    let names = world.resolve_connect("n{i}.allowed.test", FIRST_SYN, wall);
    let literals = world.resolve_connect(&format!("2001:db8:{LITERALS:x}::{{x}}"), FIRST_SYN, wall);
    println!("allowed names:    {names}");
    println!("literals by cidr: {literals}");
    println!(
        "connect latency p50/p99 µs: names {}/{}, literals {}/{}",
        names.0["connect_p50_us"],
        names.0["connect_p99_us"],
        literals.0["connect_p50_us"],
        literals.0["connect_p99_us"]
    );
    let n = u64::from(FIRST_SYN);
    for (what, s) in [("names", &names), ("literals", &literals)] {
        assert_eq!(
            (s.n("connected"), s.n("slow"), s.n("timed_out")),
            (n, 0, 0),
            "{what}: every connect must succeed on its first SYN: {s}"
        );
    }
    thread::sleep(SETTLE);
    assert_eq!(
        world.packets("allowed_names_syn"),
        n,
        "SYNs to named addresses"
    );
    assert_eq!(world.packets("literals_syn"), n, "SYNs to literals");
    // The default is deny: a name no rule allows resolves, and its connect is refused.
    assert_refused(
        &world.resolve_connect_one("other.misc.test"),
        "other.misc.test",
    );
}

#[test]
fn learned_addresses_expire_and_changed_answers_are_followed() {
    let (old, new) = (addr(MISC, 0x10), addr(MISC, 0x11));
    let world = World::new("dnsttl", 1, &hosts(&[("svc.ttl.test", old)]), &[]);
    let rules = allow_dns_rule() + &host_rule("allow-svc", "allow", &["svc.ttl.test"]);
    let _agent = world.agent(
        &world.policy("deny", &rules, false),
        &["--dns-grace-seconds", "1"],
    );
    assert_refused(&world.connect(old), "the address before any answer");
    assert_connected(
        &world.resolve_connect_one("svc.ttl.test"),
        old,
        "svc.ttl.test",
    );
    assert_connected(&world.connect(old), old, "the learned address at once");
    // TTL 1 s + grace 1 s: gone after 4 s without a new answer.
    thread::sleep(Duration::from_secs(4));
    assert_refused(&world.connect(old), "the address after its TTL and grace");
    world
        .dns
        .set_hosts(&hosts(&[("svc.ttl.test", new)]))
        .expect("reload");
    assert_connected(
        &world.resolve_connect_one("svc.ttl.test"),
        new,
        "svc.ttl.test after the change",
    );
    assert_refused(&world.connect(old), "the old address after the change");
}

#[test]
fn pinned_resolvers_are_the_only_dns_a_workload_reaches() {
    let ip = addr(MISC, 0x13);
    let world = World::new("dnspin", 30, &hosts(&[("pin.misc.test", ip)]), &[]);
    let rules = host_rule("allow-pin", "allow", &["pin.misc.test"]);
    // defaultAction allow: only spec.dns decides DNS here.
    let _agent = world.agent(&world.policy("allow", &rules, true), &[]);
    assert_eq!(
        world.dig("pin.misc.test", false),
        vec![ip],
        "the pinned resolver answers"
    );
    let pinned = SocketAddr::from((egress_tests::TestNet::SERVER_V4, 53));
    let other_v4 = SocketAddr::from(([198, 51, 100, 53], 53));
    let other_v6 = SocketAddr::from((egress_tests::TestNet::SERVER_V6, 53));
    assert!(
        !world.udp_refused(pinned),
        "DNS to the pinned resolver is sent"
    );
    assert!(
        world.udp_refused(other_v4),
        "DNS to another resolver is refused"
    );
    assert!(
        world.udp_refused(other_v6),
        "DNS to another resolver (IPv6) is refused"
    );
    let other_port = SocketAddr::from(([198, 51, 100, 53], 5353));
    assert!(
        !world.udp_refused(other_port),
        "other ports to that address are not DNS"
    );
}

#[test]
fn a_connection_opened_while_the_name_held_outlives_its_ttl() {
    let ip = addr(MISC, 0x12);
    let world = World::new("dnshold", 1, &hosts(&[("long.ttl.test", ip)]), &[]);
    let rules = allow_dns_rule() + &host_rule("allow-long", "allow", &["long.ttl.test"]);
    let _agent = world.agent(
        &world.policy("deny", &rules, false),
        &["--dns-grace-seconds", "1"],
    );
    // TTL 1 s + grace 1 s: a new connection 4 s later is refused (the test above), but the
    // one opened in time keeps working, as a download to an allowed name must.
    let (connected, answered) = world.resolve_hold("long.ttl.test", Duration::from_secs(4));
    assert!(connected, "the allowed name connects");
    assert!(
        answered,
        "the connection opened in time works after the TTL"
    );
    assert_refused(
        &world.connect(ip),
        "a new connection after the TTL and grace",
    );
}

/// A record of a connection to `ip` with `verdict` (waits up to 10 s for one).
fn record_for(agent: &AgentGuard, ip: IpAddr, verdict: &str) -> Value {
    let ip = ip.to_string();
    agent
        .wait_for_record(Duration::from_secs(10), |r| {
            r["kind"] == "connection" && r["dst_ip"] == ip.as_str() && r["verdict"] == verdict
        })
        .unwrap_or_else(|| {
            panic!(
                "no {verdict} record for {ip}; records: {:#?}",
                agent.audit_records()
            )
        })
}

#[test]
fn cname_alias_allows_its_target_and_a_denied_target_wins() {
    let (edge, blocked) = (addr(MISC, 0x20), addr(MISC, 0x21));
    let world = World::new(
        "dnscname",
        30,
        &hosts(&[("edge.cdn.test", edge), ("x.blocked.test", blocked)]),
        &[
            ("www.alias.test", "edge.cdn.test"),
            ("bad.alias.test", "x.blocked.test"),
        ],
    );
    let rules = allow_dns_rule()
        + &host_rule("allow-alias", "allow", &["*.alias.test"])
        + &host_rule("deny-blocked", "deny", &["*.blocked.test"]);
    let agent = world.agent(&world.policy("deny", &rules, false), &[]);
    assert_connected(
        &world.resolve_connect_one("www.alias.test"),
        edge,
        "an allowed alias",
    );
    let bad = world.resolve_connect_one("bad.alias.test");
    assert_eq!(bad.first_addr(), Some(blocked), "{bad}");
    assert_refused(&bad, "an allowed alias of a denied target");
    // Refused by the deny rule (which beat the matching allow), not by the default.
    let record = record_for(&agent, blocked, "deny");
    assert_eq!(record["rule"].as_str(), Some("deny-blocked"), "{record}");
}

#[test]
fn wildcard_covers_subdomains_not_the_base_name() {
    let (one, deep, base) = (addr(MISC, 0x30), addr(MISC, 0x31), addr(MISC, 0x32));
    let world = World::new(
        "dnswild",
        30,
        &hosts(&[
            ("a.example.test", one),
            ("deep.a.example.test", deep),
            ("example.test", base),
        ]),
        &[],
    );
    let rules = allow_dns_rule() + &host_rule("allow-sub", "allow", &["*.example.test"]);
    let _agent = world.agent(&world.policy("deny", &rules, false), &[]);
    assert_connected(
        &world.resolve_connect_one("a.example.test"),
        one,
        "one label",
    );
    assert_connected(
        &world.resolve_connect_one("deep.a.example.test"),
        deep,
        "two labels",
    );
    let plain = world.resolve_connect_one("example.test");
    assert_eq!(plain.first_addr(), Some(base), "{plain}");
    assert_refused(&plain, "the wildcard's base name");
}

#[test]
fn uppercase_and_trailing_dot_names_match() {
    let world = World::new(
        "dnscase",
        30,
        &hosts(&[
            ("up.case.test", addr(MISC, 0x40)),
            ("dot.case.test", addr(MISC, 0x41)),
            ("mixed.case.test", addr(MISC, 0x42)),
            ("no.case.test", addr(MISC, 0x43)),
        ]),
        &[],
    );
    let rules = allow_dns_rule()
        + &host_rule(
            "allow-case",
            "allow",
            &["up.case.test", "dot.case.test", "MIXED.Case.test."],
        );
    let _agent = world.agent(&world.policy("deny", &rules, false), &[]);
    for (query, ip) in [
        ("UP.CASE.TEST", addr(MISC, 0x40)),
        ("dot.case.test.", addr(MISC, 0x41)),
        ("mixed.case.test", addr(MISC, 0x42)),
    ] {
        assert_connected(&world.resolve_connect_one(query), ip, query);
    }
    let no = world.resolve_connect_one("No.Case.Test.");
    assert_eq!(no.first_addr(), Some(addr(MISC, 0x43)), "{no}");
    assert_refused(&no, "a name no rule holds");
}

#[test]
fn tcp_dns_answers_are_learned() {
    let ip = addr(MISC, 0x50);
    let world = World::new("dnstcp", 30, &hosts(&[("tcp.misc.test", ip)]), &[]);
    let rules = allow_dns_rule() + &host_rule("allow-tcp", "allow", &["tcp.misc.test"]);
    let _agent = world.agent(&world.policy("deny", &rules, false), &[]);
    assert_refused(&world.connect(ip), "the address before the answer");
    assert_eq!(world.dig("tcp.misc.test", true), vec![ip], "dig +tcp");
    assert_connected(&world.connect(ip), ip, "the address learned over TCP");
}

#[test]
fn audit_records_name_the_host_for_allowed_and_denied_connections() {
    let (ok, no) = (addr(MISC, 0x60), addr(MISC, 0x61));
    let world = World::new(
        "dnsaudit",
        30,
        &hosts(&[("real.audit-cdn.test", ok), ("no.audit.test", no)]),
        &[("ok.audit.test", "real.audit-cdn.test")],
    );
    let rules = host_rule("allow-ok", "allow", &["ok.audit.test"])
        + &host_rule("deny-no", "deny", &["no.audit.test"]);
    let agent = world.agent(&world.policy("allow", &rules, false), &[]);
    assert_connected(
        &world.resolve_connect_one("ok.audit.test"),
        ok,
        "ok.audit.test",
    );
    assert_refused(
        &world.resolve_connect_one("NO.Audit.test."),
        "no.audit.test",
    );
    let allowed = record_for(&agent, ok, "allow");
    assert_eq!(allowed["dst_host"], "ok.audit.test", "{allowed}");
    assert_eq!(
        allowed["dst_names"],
        serde_json::json!(["ok.audit.test", "real.audit-cdn.test"]),
        "{allowed}"
    );
    assert_eq!(allowed["rule"].as_str(), Some("allow-ok"), "{allowed}");
    let denied = record_for(&agent, no, "deny");
    assert_eq!(denied["dst_host"], "no.audit.test", "{denied}");
    assert_eq!(
        denied["dst_names"],
        serde_json::json!(["no.audit.test"]),
        "{denied}"
    );
    assert_eq!(denied["rule"].as_str(), Some("deny-no"), "{denied}");
}
