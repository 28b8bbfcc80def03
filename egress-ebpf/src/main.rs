//! The egress kernel programs. `egress_skb`, a `cgroup_skb/egress` hook attached at the
//! cgroup2 root, judges every outbound packet of every process; the socket hooks in
//! `sock_addr.rs` reject denied calls early and `process.rs` attributes sockets.
//!
//! The lookup chain is described in `egress-common`. This file holds the packet entry point
//! and the only decisions that are not table driven: what happens when something cannot be
//! read.
#![no_std]
#![no_main]

mod classify;
mod dns;
mod dns_program;
mod events;
mod ingress;
mod maps;
mod names;
mod packet;
mod process;
mod scope;
mod sock_addr;
mod verdict_cache;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_socket_cookie, bpf_get_socket_uid},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use egress_common::{Decision, Direction, SocketOwner, config_flags, counter, verdict};

use crate::{classify::Destination, maps::EGRESS_SOCKETS, packet::Packet};

/// Return values of a cgroup_skb program.
/// <https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c#L1393-L1420>
const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(egress)]
pub fn egress_skb(ctx: SkBuffContext) -> i32 {
    let Some(config) = maps::config() else {
        // The config array always has its one entry; if the kernel ever failed to return it we
        // cannot tell governed from ungoverned traffic. Failing closed here would cut off the
        // whole host (we sit at the cgroup root), so pass, and count it.
        events::count(counter::MALFORMED);
        return PASS;
    };
    if config.generation == 0 {
        // The agent has not loaded a policy yet: nothing is governed.
        return PASS;
    }
    let parsed = packet::parse(&ctx);
    // SAFETY: the helper reads the skb the kernel passed us.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // An outbound TCP segment's socket entry, looked up once: it holds the connection's kept
    // decision and its report state.
    let connection = match &parsed {
        Some(packet) if packet.protocol == packet::IPPROTO_TCP => {
            EGRESS_SOCKETS.get_ptr_mut(socket_cookie)
        }
        _ => None,
    };
    if let Some(packet) = &parsed
        && let Some(cached) = verdict_cache::lookup(&config, packet, socket_cookie, connection)
    {
        // What the full path below does for a segment past the SYN that it allows.
        return match cached {
            verdict_cache::Cached::Ungoverned => PASS,
            verdict_cache::Cached::Governed(decision) => {
                events::hit(&decision, false);
                account(&decision)
            }
        };
    }
    // SAFETY: the helper reads the skb the kernel passed us.
    let uid = unsafe { bpf_get_socket_uid(ctx.as_ptr().cast()) };
    let cgroup_id = scope::skb_cgroup(&ctx, &config);
    let Some(scope) = scope::lookup(&config, scope::of_skb(&ctx, &config, cgroup_id), uid) else {
        if let Some(packet) = &parsed {
            verdict_cache::remember(&config, packet, socket_cookie, connection, None);
        }
        return PASS;
    };
    let Some(packet) = &parsed else {
        // A governed IP packet whose headers cannot be read (truncated or malformed): its
        // destination is unknown, so only the scope's default can judge it. An allowlist
        // drops it, an opt-out list passes it.
        events::count(counter::MALFORMED);
        return account(&scope.default);
    };
    let decision = classify::decide(
        &scope,
        &Destination {
            ip_version: packet.ip_version,
            addr: packet.dst,
            protocol: packet.protocol,
            port: packet.dst_port,
        },
        if config.flags & config_flags::HOSTS != 0 {
            cgroup_id
        } else {
            0
        },
        packet.protocol == packet::IPPROTO_TCP && !packet.tcp_syn,
    );
    verdict_cache::remember(&config, packet, socket_cookie, connection, Some(&decision));
    // TCP: the SYN that opens a connection is reported; later segments belong to it, unless
    // they are dropped (a connection opened before the policy denied it): the first of those
    // is reported too. Other protocols: every packet is offered, the flow map keeps the first.
    let starts = packet.protocol != packet::IPPROTO_TCP
        || packet.tcp_syn
        || decision.verdict == verdict::DENY;
    // A connection or flow starts with a TCP SYN, or with a flow the map had not seen
    // (only flows the policies log are tracked there).
    let sender = Sender {
        cookie: socket_cookie,
        connection,
        uid,
    };
    let new_flow = starts && report(&ctx, &config, packet, &decision, &sender);
    events::hit(&decision, packet.tcp_syn || new_flow);
    if config.flags & config_flags::INGRESS != 0
        && packet.protocol == packet::IPPROTO_UDP
        && decision.verdict != verdict::DENY
    {
        ingress::remember_peer(socket_cookie, packet);
    }
    account(&decision)
}

/// Counts the decision and turns it into the program's return value.
fn account(decision: &Decision) -> i32 {
    if decision.audit_verdict == verdict::DENY {
        events::count(counter::PACKETS_AUDIT_DENIED);
    }
    if decision.verdict == verdict::DENY {
        events::count(counter::PACKETS_DENIED);
        DROP
    } else {
        events::count(counter::PACKETS_ALLOWED);
        PASS
    }
}

/// The socket that sent a packet, as the packet hook found it.
struct Sender {
    cookie: u64,
    /// Its entry, for an outbound TCP connection (`events::report`).
    connection: Option<*mut SocketOwner>,
    uid: u32,
}

/// Not inlined, to keep its temporaries off the program's own stack frame (see ingress.rs).
#[inline(never)]
fn report(
    ctx: &SkBuffContext,
    config: &egress_common::RuntimeConfig,
    packet: &Packet,
    decision: &Decision,
    sender: &Sender,
) -> bool {
    events::report_packet(&events::PacketDecision {
        ctx,
        config,
        packet,
        decision,
        socket_cookie: sender.cookie,
        connection: sender.connection,
        uid: sender.uid,
        direction: Direction::Egress,
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
