//! Outbound-only workloads: `egress_ingress_skb`, a `cgroup_skb/ingress` hook, drops packets
//! that would open a new inbound connection or flow to a workload whose policy restricts
//! inbound traffic, and passes everything that belongs to connections the workload opened.
//!
//! What opens a new inbound flow:
//! - TCP: a SYN without ACK (it can only be for a listener; replies to our SYNs carry ACK).
//! - UDP: a datagram from a peer the socket never sent to (`EGRESS_PEERS`, filled by the
//!   egress program).
//! - ICMP / ICMPv6: echo requests. Everything else (echo replies, errors about our own
//!   connections, IPv6 neighbour discovery) passes, or IPv6 would stop working.
//! - Any other protocol: every packet, as the scope's inbound default decides.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_socket_cookie, bpf_get_socket_uid},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use egress_common::{
    Decision, Direction, RuntimeConfig, ScopeValue, config_flags, counter, event::FlowKey,
    scope_flags, verdict,
};

use crate::{
    classify::{self, Destination},
    dns, dns_program, events,
    maps::{self, EGRESS_DNS_PROGRAM, EGRESS_PEERS},
    packet::{self, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet},
    scope,
};

const PASS: i32 = 1;
const DROP: i32 = 0;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

#[cgroup_skb(ingress)]
pub fn egress_ingress_skb(ctx: SkBuffContext) -> i32 {
    let Some(config) = maps::config() else {
        // As in the egress program: never fail closed at the cgroup root.
        events::count(counter::MALFORMED);
        return PASS;
    };
    if config.generation == 0 {
        return PASS;
    }
    // Without inbound restrictions only DNS answers matter here: most packets (the ACKs of
    // every upload) leave after two short loads instead of the whole parse.
    if config.flags & config_flags::INGRESS == 0 && !packet::may_come_from(&ctx, dns::DNS_PORT) {
        return PASS;
    }
    let packet = packet::parse(&ctx);
    let dns_answer = packet.as_ref().is_some_and(|p| {
        p.src_port == dns::DNS_PORT && (p.protocol == IPPROTO_UDP || p.protocol == IPPROTO_TCP)
    });
    if config.flags & config_flags::INGRESS == 0 && !dns_answer {
        return PASS;
    }
    // SAFETY: the helper reads the skb the kernel passed us.
    let uid = unsafe { bpf_get_socket_uid(ctx.as_ptr().cast()) };
    let own = scope::skb_cgroup(&ctx, &config);
    let Some(scope) = scope::lookup(&config, scope::of_skb(&ctx, &config, own), uid) else {
        return PASS;
    };
    // `verdict::NONE`: no applicable policy restricts inbound traffic.
    let judges_inbound = scope.ingress_default.verdict != verdict::NONE;
    let Some(packet) = packet else {
        if !judges_inbound {
            return PASS;
        }
        // Unreadable headers: whether it opens a flow is unknown; the inbound default decides.
        events::count(counter::MALFORMED);
        return verdict_of(&scope.ingress_default);
    };
    if judges_inbound {
        // SAFETY: as above.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if opens_inbound_flow(&packet, cookie) {
            let decision = classify::decide_inbound(
                &scope,
                &Destination {
                    ip_version: packet.ip_version,
                    addr: packet.src,
                    protocol: packet.protocol,
                    port: packet.dst_port,
                },
            );
            events::hit(&decision, true);
            report(&ctx, &config, &packet, &decision, cookie);
            if verdict_of(&decision) == DROP {
                return DROP;
            }
        }
    }
    if dns_answer {
        return answer_verdict(&ctx, &config, &scope, &packet);
    }
    PASS
}

/// A DNS answer goes on to `egress_dns_skb` (`dns_program.rs`) by tail call: the reader is a
/// program of its own so that the verifier walks it once, from one state, rather than once
/// for every state in which this program reaches it (it gave up at a million instructions).
/// What this program already found (where the payload starts, the generation's parity,
/// whether host rules apply) goes to the reader through its scratch value. The tail call
/// only returns if it failed (the agent has not filled the program array): the answer is
/// then unread, and dropped for workloads with host rules.
fn answer_verdict(
    ctx: &SkBuffContext,
    config: &RuntimeConfig,
    scope: &ScopeValue,
    packet: &Packet,
) -> i32 {
    let host_rules = scope.flags & scope_flags::HOST_RULES != 0;
    let parity_byte = u8::from(config.parity != 0);
    if dns::prepare(
        packet.payload_offset,
        packet.protocol,
        parity_byte,
        host_rules,
    ) {
        // SAFETY: a tail call with this program's own context.
        unsafe { EGRESS_DNS_PROGRAM.tail_call(ctx, egress_common::dns_slots::START) };
    }
    dns_program::unread(host_rules)
}

/// Reports a new inbound flow. Not inlined: its temporaries then live in a frame of their
/// own beside the parser's, not on top of the program's (the verifier allows 512 bytes of
/// stack for the whole call chain).
#[inline(never)]
fn report(
    ctx: &SkBuffContext,
    config: &RuntimeConfig,
    packet: &Packet,
    decision: &Decision,
    cookie: u64,
) {
    // SAFETY: the helper reads the skb the kernel passed us.
    let uid = unsafe { bpf_get_socket_uid(ctx.as_ptr().cast()) };
    events::report_packet(&events::PacketDecision {
        ctx,
        config,
        packet,
        decision,
        socket_cookie: cookie,
        connection: None,
        uid,
        direction: Direction::Ingress,
    });
}

fn opens_inbound_flow(packet: &Packet, cookie: u64) -> bool {
    match packet.protocol {
        IPPROTO_TCP => packet.tcp_syn,
        IPPROTO_UDP => EGRESS_PEERS
            .get_ptr(peer(cookie, packet.ip_version, packet.src, packet.src_port))
            .is_none(),
        IPPROTO_ICMP => packet.icmp_type == ICMP_ECHO_REQUEST,
        IPPROTO_ICMPV6 => packet.icmp_type == ICMPV6_ECHO_REQUEST,
        _ => true,
    }
}

/// Key of `EGRESS_PEERS`: a UDP socket and the remote end it talks to.
pub fn peer(cookie: u64, ip_version: u8, addr: [u8; 16], port: u16) -> FlowKey {
    FlowKey {
        socket_cookie: cookie,
        dst: addr,
        dst_port: port,
        protocol: IPPROTO_UDP,
        ip_version,
        icmp_type: 0,
        _pad: [0; 3],
    }
}

/// Records that the socket with `cookie` sent to a UDP peer, so its replies pass.
pub fn remember_peer(cookie: u64, packet: &Packet) {
    let key = peer(cookie, packet.ip_version, packet.dst, packet.dst_port);
    if EGRESS_PEERS.get_ptr(key).is_none() {
        // An LRU insert only fails under memory pressure: a reply is then judged as new.
        let _ = EGRESS_PEERS.insert(key, 1u8, 0);
    }
}

fn verdict_of(decision: &Decision) -> i32 {
    if decision.verdict == verdict::DENY {
        events::count(counter::PACKETS_DENIED);
        DROP
    } else {
        events::count(counter::PACKETS_ALLOWED);
        PASS
    }
}
