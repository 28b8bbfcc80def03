//! Decision events and counters. Nothing here may change a verdict: a full ring buffer is
//! counted and the packet is judged as if the event had been sent.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use egress_common::{
    ConnectionEvent, Decision, Direction, RuntimeConfig, SocketOwner, capacity, counter,
    event::{FlowKey, FlowState, ReportedConnection},
    verdict,
};

use crate::{
    maps::{EGRESS_COUNTERS, EGRESS_EVENTS, EGRESS_FLOWS, EGRESS_RULE_HITS, EGRESS_SOCKETS},
    packet::{self, Packet},
};

pub fn count(index: u32) {
    if let Some(value) = EGRESS_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer runs on this CPU while we hold it.
        unsafe { *value += 1 };
    }
}

/// Counts a decision against its rule. `first` marks the first packet of a connection or
/// flow, or a rejected call; only those read the clock. The coarse clock (the last tick) is
/// plenty for a last-hit time and costs a fraction of `bpf_ktime_get_boot_ns`, which on a
/// VM reads the paravirtual clock source: 25 ns per SYN by BPF_PROG_TEST_RUN on the
/// benchmark machine.
pub fn hit(decision: &Decision, first: bool) {
    let Some(hits) = EGRESS_RULE_HITS.get_ptr_mut(decision.rule) else {
        return; // a rule id beyond the counters' capacity: decided, not counted
    };
    let denied = decision.verdict == verdict::DENY;
    // SAFETY: per-CPU slot, no other writer runs on this CPU while we hold it.
    unsafe {
        if denied {
            (*hits).packets_denied += 1;
            (*hits).connections_denied += u64::from(first);
        } else {
            (*hits).packets_allowed += 1;
            (*hits).connections_allowed += u64::from(first);
        }
        if first {
            (*hits).last_hit_ns = bpf_ktime_get_coarse_ns();
        }
    }
}

/// A flow to report, and where its report state is kept.
pub struct ReportedFlow {
    pub key: FlowKey,
    /// For an outbound TCP connection, its socket's entry (looked up by the caller), which
    /// keeps the connection's report state; `None` for other flows and for sockets without
    /// an entry, kept in `EGRESS_FLOWS`.
    pub connection: Option<*mut SocketOwner>,
}

/// Reports a decision about `flow` once per generation and verdict, if the deciding
/// policies asked for it. Later packets of a reported flow that are dropped again
/// (retransmitted SYNs, repeated datagrams) are folded into the flow's dropped count
/// instead of becoming events of their own.
///
/// `fill` writes the event in place in the reserved ring buffer entry, which starts zeroed
/// and holds the socket's recorded owner: building it on the stack first would cost 136
/// of the program's 512 stack bytes.
///
/// Returns whether the flow was new (not reported before under this generation and verdict).
pub fn report(
    config: &RuntimeConfig,
    decision: &Decision,
    reported: &ReportedFlow,
    fill: impl FnOnce(&mut ConnectionEvent),
) -> bool {
    if decision.log == 0 {
        return false;
    }
    let ReportedFlow {
        key: ref flow,
        connection: socket,
    } = *reported;
    let first = match socket {
        // SAFETY: an LRU value pointer stays valid for this program run; plain data.
        Some(owner) => first_report(config, decision, flow, unsafe { &mut (*owner).reported }),
        None => first_flow_report(config, decision, flow),
    };
    if !first {
        return false;
    }
    // The owner recorded for the socket: already looked up for a connection, looked up
    // only now for other flows (most of their packets stop at the check above).
    let owner = socket.or_else(|| EGRESS_SOCKETS.get_ptr_mut(flow.socket_cookie));
    // The entry is written whole and submitted on the only path that reserved it.
    match EGRESS_EVENTS.reserve::<ConnectionEvent>(0) {
        Some(mut entry) => {
            let event = entry.as_mut_ptr();
            // SAFETY: the reservation is valid for one ConnectionEvent, plain data for which
            // all zeroes is a valid value; it is initialized before the reference is made.
            unsafe {
                core::ptr::write_bytes(event, 0, 1);
                if let Some(owner) = owner {
                    // Straight from the map: no copy of the owner on the stack.
                    (*event).pid = (*owner).pid;
                    (*event).comm = (*owner).comm;
                }
                fill(&mut *event);
            }
            entry.submit(wakeup());
        }
        None => count(counter::EVENTS_LOST),
    }
    true
}

/// How a submitted event wakes the agent's reader. By default the kernel wakes the reader
/// whenever it has caught up, which at high connection rates was nearly every event: an
/// interrupt and a switch to the agent each, on the CPUs the workloads run on
/// (`bpf_ringbuf_commit`, <https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/ringbuf.c>).
/// The reader reads on a short interval instead, and only a backlog of
/// `EVENTS_WAKE_BYTES` wakes it early.
fn wakeup() -> u64 {
    if EGRESS_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(capacity::EVENTS_WAKE_BYTES) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Whether the connection `flow` is reported for the first time under this generation and
/// verdict, by the state kept with its socket; marks it reported.
fn first_report(
    config: &RuntimeConfig,
    decision: &Decision,
    flow: &FlowKey,
    reported: &mut ReportedConnection,
) -> bool {
    let denied = decision.verdict == verdict::DENY;
    if reported.state.generation == config.generation
        && reported.state.verdict == decision.verdict
        && reported.dst == flow.dst
        && reported.dst_port == flow.dst_port
        && reported.ip_version == flow.ip_version
    {
        // Two CPUs sending one socket's packets at the same instant may lose one count,
        // never a verdict (as in `first_flow_report`).
        reported.state.dropped += u64::from(denied);
        return false;
    }
    *reported = ReportedConnection {
        state: FlowState {
            generation: config.generation,
            dropped: u64::from(denied),
            verdict: decision.verdict,
            _pad: [0; 7],
        },
        dst: flow.dst,
        dst_port: flow.dst_port,
        ip_version: flow.ip_version,
        _pad: [0; 5],
    };
    true
}

/// Hands the report state of a closing socket's denied connection over to `EGRESS_FLOWS`:
/// the kernel goes on retransmitting for an orphaned socket, and those drops belong to the
/// record already made. Allowed connections need nothing: their later packets make no
/// records.
pub fn forget_connection(cookie: u64, reported: &ReportedConnection) {
    if reported.state.generation == 0 || reported.state.verdict != verdict::DENY {
        return;
    }
    let flow = FlowKey {
        socket_cookie: cookie,
        dst: reported.dst,
        dst_port: reported.dst_port,
        protocol: packet::IPPROTO_TCP,
        ip_version: reported.ip_version,
        icmp_type: 0,
        _pad: [0; 3],
    };
    // An LRU insert only fails under memory pressure: a later drop is then reported again.
    let _ = EGRESS_FLOWS.insert(flow, reported.state, 0);
}

/// Whether `flow` is reported for the first time under this generation and verdict, by
/// `EGRESS_FLOWS`; marks it reported.
fn first_flow_report(config: &RuntimeConfig, decision: &Decision, flow: &FlowKey) -> bool {
    let denied = decision.verdict == verdict::DENY;
    if let Some(seen) = EGRESS_FLOWS.get_ptr_mut(flow) {
        // SAFETY: an LRU value pointer stays valid for this program run; fields are plain.
        let (generation, seen_verdict) = unsafe { ((*seen).generation, (*seen).verdict) };
        if generation == config.generation && seen_verdict == decision.verdict {
            if denied {
                // SAFETY: an aligned u64 inside the map value. Core offers no atomic add on
                // the BPF target; two CPUs dropping packets of one flow at the same instant
                // may lose one count, never a verdict.
                unsafe { (*seen).dropped += 1 };
            }
            return false;
        }
    }
    let state = FlowState {
        generation: config.generation,
        dropped: u64::from(denied),
        verdict: decision.verdict,
        _pad: [0; 7],
    };
    // An LRU insert only fails under memory pressure; the event is still worth sending.
    let _ = EGRESS_FLOWS.insert(flow, state, 0);
    true
}

/// A judged packet of a socket, as both packet hooks report it.
pub struct PacketDecision<'a> {
    pub ctx: &'a SkBuffContext,
    pub config: &'a RuntimeConfig,
    pub packet: &'a Packet,
    pub decision: &'a Decision,
    pub socket_cookie: u64,
    /// The socket's entry, for an outbound TCP connection (see [`report`]).
    pub connection: Option<*mut SocketOwner>,
    pub uid: u32,
    pub direction: Direction,
}

/// Reports a judged packet as the flow it starts: egress flows are keyed by their
/// destination, inbound ones by their source (the remote end either way), marked apart.
/// Returns whether the flow was new.
#[inline(always)]
pub fn report_packet(judged: &PacketDecision<'_>) -> bool {
    let PacketDecision {
        ctx,
        config,
        packet,
        decision,
        socket_cookie,
        connection,
        uid,
        direction,
    } = *judged;
    let inbound = direction == Direction::Ingress;
    let flow = ReportedFlow {
        key: FlowKey {
            socket_cookie,
            dst: if inbound { packet.src } else { packet.dst },
            dst_port: packet.dst_port,
            protocol: packet.protocol,
            ip_version: packet.ip_version,
            icmp_type: packet.icmp_type,
            _pad: [u8::from(inbound), 0, 0],
        },
        connection,
    };
    report(config, decision, &flow, |event| {
        // SAFETY: helpers reading the clock and the skb the kernel passed us.
        event.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
        event.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
        event.generation = config.generation;
        event.socket_cookie = socket_cookie;
        event.rule = decision.rule;
        event.audit_rule = decision.audit_rule;
        event.uid = uid;
        event.src = packet.src;
        event.dst = packet.dst;
        event.src_port = packet.src_port;
        event.dst_port = packet.dst_port;
        event.ip_version = packet.ip_version;
        event.protocol = packet.protocol;
        event.verdict = decision.verdict;
        event.audit_verdict = decision.audit_verdict;
        event.direction = direction as u8;
        event.icmp_type = packet.icmp_type;
        event.dropped_packets = u32::from(decision.verdict == verdict::DENY);
    })
}
