//! The suite's assertion: one technique against the denied target must fail with EPERM,
//! put zero packets on the wire to the receiver and leave a deny record; the same technique
//! against the allowed target (the control) must succeed and be counted, so that no case
//! can pass because the technique never sent anything.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::Duration,
};

use egress_tests::{AgentGuard, process::Placement};

use crate::world::{
    Run, SETTLE, TCP_PORT, UDP_PORT, World, assert_new_deny_record, deny_records, run,
};

/// A destination as the helper is told it (`arg`) and as it appears on the wire (`wire`:
/// differs for IPv4-mapped IPv6 addresses, which leave as IPv4 packets).
#[derive(Debug, Clone)]
pub struct Target {
    pub arg: String,
    pub wire: IpAddr,
}

impl Target {
    pub fn tcp(ip: impl Into<IpAddr>) -> Self {
        let ip = ip.into();
        Self {
            arg: SocketAddr::new(ip, TCP_PORT).to_string(),
            wire: ip,
        }
    }

    pub fn udp(ip: impl Into<IpAddr>) -> Self {
        let ip = ip.into();
        Self {
            arg: SocketAddr::new(ip, UDP_PORT).to_string(),
            wire: ip,
        }
    }

    pub fn bare(ip: impl Into<IpAddr>) -> Self {
        let ip = ip.into();
        Self {
            arg: ip.to_string(),
            wire: ip,
        }
    }

    /// `[::ffff:a.b.c.d]:port`, on the wire as `a.b.c.d`.
    pub fn mapped(v4: Ipv4Addr, port: u16) -> Self {
        Self {
            arg: SocketAddr::new(v4.to_ipv6_mapped().into(), port).to_string(),
            wire: v4.into(),
        }
    }
}

/// How the call to a denied destination must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It fails with EPERM: from a connect/sendmsg hook, or from the packet hook's drop
    /// propagated back by the send path.
    Eperm,
    /// It reports success: the packet is dropped, but the kernel's send path ignores the
    /// error (ICMPv6 ping sockets). Asserted so that a kernel change is noticed.
    Silent,
}

/// One bypass case: the helper's arguments for a target, the protocol the record names,
/// how many packets the control must put on the wire at least (fragments count each), and
/// how the denied call must end.
pub struct Case<'a> {
    pub name: &'a str,
    pub args: &'a dyn Fn(&Target) -> Vec<String>,
    pub denied: Target,
    pub allowed: Target,
    pub protocol: &'a str,
    pub min_control_packets: u64,
    pub refusal: Refusal,
}

pub fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs `case` at `placement` and asserts it is blocked; returns the denied run (for its
/// latency).
pub fn assert_blocked(
    world: &World,
    agent: &AgentGuard,
    placement: &Placement,
    case: &Case<'_>,
) -> Run {
    let Case {
        name,
        args,
        denied,
        allowed,
        protocol,
        min_control_packets,
        refusal,
    } = case;
    let records_before = deny_records(agent, denied.wire, protocol).len();
    let denied_before = world.packets_to(denied.wire);
    let allowed_before = world.packets_to(allowed.wire);

    let blocked = run(placement, &args(denied));
    let control = run(placement, &args(allowed));
    thread::sleep(SETTLE);

    let leaked = world.packets_to(denied.wire) - denied_before;
    let passed = world.packets_to(allowed.wire) - allowed_before;
    eprintln!(
        "case {name}: denied -> {} (latency {:?}), {leaked} packets on the wire; \
         control -> {} ({passed} packets)",
        blocked.stdout.trim().replace('\n', " "),
        blocked.latency(),
        control.stdout.trim().replace('\n', " "),
    );
    assert_eq!(
        control.code,
        Some(0),
        "{name}: the control to {} must succeed: {control:?}",
        allowed.arg
    );
    assert!(
        passed >= *min_control_packets,
        "{name}: the control to {} put {passed} packets on the wire, expected at least \
         {min_control_packets}: the technique did not send what it should",
        allowed.arg
    );
    assert_eq!(
        leaked, 0,
        "{name}: LEAK: {leaked} packets to denied {} reached the receiver: {blocked:?}",
        denied.arg
    );
    match refusal {
        Refusal::Eperm => assert!(
            blocked.is_eperm(),
            "{name}: the call to denied {} must fail with EPERM: {blocked:?}",
            denied.arg
        ),
        Refusal::Silent => assert_eq!(
            blocked.code,
            Some(0),
            "{name}: this kernel path was documented to swallow the drop's error: {blocked:?}"
        ),
    }
    assert_new_deny_record(agent, denied.wire, protocol, records_before);
    blocked
}

/// Runs `case` and asserts that its packets DO reach the denied receiver: a documented
/// limit (or a documented semantics), which would flag a change if it ever stopped holding.
pub fn assert_reaches(world: &World, placement: &Placement, case: &Case<'_>) {
    let Case {
        name,
        args,
        denied,
        allowed: _,
        protocol: _,
        min_control_packets,
        refusal: _,
    } = case;
    let before = world.packets_to(denied.wire);
    let out = run(placement, &args(denied));
    thread::sleep(SETTLE);
    let reached = world.packets_to(denied.wire) - before;
    eprintln!(
        "case {name}: denied -> {}, {reached} packets on the wire (documented to pass)",
        out.stdout.trim().replace('\n', " ")
    );
    assert_eq!(out.code, Some(0), "{name}: {out:?}");
    assert!(
        reached >= *min_control_packets,
        "{name}: {reached} packets reached {}; this path was documented to pass the \
         enforcer. If it is blocked now, update docs/security.md and this test.",
        denied.arg
    );
}

/// Summarises latencies for the report: min, median, max.
pub fn summarise(latencies: &mut [Duration]) -> String {
    latencies.sort();
    match latencies {
        [] => "no samples".to_owned(),
        all => format!(
            "n={} min={:?} median={:?} max={:?}",
            all.len(),
            all[0],
            all[all.len() / 2],
            all[all.len() - 1]
        ),
    }
}
