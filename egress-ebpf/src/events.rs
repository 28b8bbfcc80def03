//! Decision events and counters. Nothing here may change a verdict: a full ring buffer is
//! counted and the packet is judged as if the event had been sent.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{
        bpf_get_socket_cookie, bpf_get_socket_uid, bpf_ktime_get_boot_ns, bpf_skb_cgroup_id,
    },
    programs::SkBuffContext,
};
use egress_common::{
    ConnectionEvent, Decision, Direction, RuntimeConfig, counter,
    event::{FlowKey, FlowState},
    verdict,
};

use crate::{
    maps::{EGRESS_COUNTERS, EGRESS_EVENTS, EGRESS_FLOWS},
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, Packet},
};

pub fn count(index: u32) {
    if let Some(value) = EGRESS_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer runs on this CPU while we hold it.
        unsafe { *value += 1 };
    }
}

/// Reports the packet if it starts a connection or flow that was not reported yet under
/// this generation, and the deciding policies asked for it.
pub fn report(ctx: &SkBuffContext, config: &RuntimeConfig, packet: &Packet, decision: &Decision) {
    if decision.log == 0 {
        return;
    }
    // TCP: only the SYN that opens a connection; every later segment belongs to it.
    if packet.protocol == IPPROTO_TCP && !packet.tcp_syn {
        return;
    }
    // SAFETY: helpers reading the skb the kernel passed us.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let flow = FlowKey {
        socket_cookie,
        dst: packet.dst,
        dst_port: packet.dst_port,
        protocol: packet.protocol,
        ip_version: packet.ip_version,
        icmp_type: if packet.protocol == IPPROTO_ICMP || packet.protocol == IPPROTO_ICMPV6 {
            packet.icmp_type
        } else {
            0
        },
        _pad: [0; 3],
    };
    let state = FlowState {
        generation: config.generation,
        verdict: decision.verdict,
        _pad: [0; 7],
    };
    // SAFETY: plain data values.
    if let Some(seen) = unsafe { EGRESS_FLOWS.get(&flow) }
        && seen.generation == state.generation
        && seen.verdict == state.verdict
    {
        // Already reported: a retransmitted SYN or the next datagram of the same flow.
        return;
    }
    // An LRU insert only fails under memory pressure; the event is still worth sending.
    let _ = EGRESS_FLOWS.insert(&flow, &state, 0);

    let Some(mut entry) = EGRESS_EVENTS.reserve::<ConnectionEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    // SAFETY: helpers reading the skb and the clock.
    let (boot_ns, cgroup_id, uid) = unsafe {
        (
            bpf_ktime_get_boot_ns(),
            bpf_skb_cgroup_id(ctx.as_ptr().cast()),
            bpf_get_socket_uid(ctx.as_ptr().cast()),
        )
    };
    entry.write(ConnectionEvent {
        boot_ns,
        generation: config.generation,
        cgroup_id,
        socket_cookie,
        rule: decision.rule,
        audit_rule: decision.audit_rule,
        uid,
        pid: 0,
        src: packet.src,
        dst: packet.dst,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        ip_version: packet.ip_version,
        protocol: packet.protocol,
        verdict: decision.verdict,
        audit_verdict: decision.audit_verdict,
        direction: Direction::Egress as u8,
        icmp_type: flow.icmp_type,
        _pad: [0; 2],
        dropped_packets: u32::from(decision.verdict == verdict::DENY),
        comm: [0; 16],
    });
    entry.submit(0);
}
