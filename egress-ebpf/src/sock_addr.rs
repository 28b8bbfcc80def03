//! Fail fast: `connect()` and unconnected `sendto()`/`sendmsg()` to a denied destination
//! fail at once with EPERM instead of hanging in retransmissions. These hooks consult the
//! same maps as the packet hook, which stays the backstop for every path they miss.
//! They also record the calling process as the socket's owner.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use egress_common::{Direction, config_flags, counter, event::FlowKey, verdict};

use crate::{
    classify::{self, Destination},
    events, maps,
    packet::{IPPROTO_TCP, IPPROTO_UDP},
    process, scope,
};

/// Return values of `cgroup/connect*` and `cgroup/sendmsg*`: 0 fails the call with EPERM.
/// <https://github.com/torvalds/linux/blob/v6.18/include/linux/bpf-cgroup.h#L300-L320>
const PROCEED: i32 = 1;
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx)
}

fn judge_v4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: a valid context pointer; the verifier rewrites these narrow context loads.
    let (ip, port, protocol) = unsafe {
        let addr = ctx.sock_addr;
        (
            read_volatile(&raw const (*addr).user_ip4),
            read_volatile(&raw const (*addr).user_port),
            read_volatile(&raw const (*addr).protocol),
        )
    };
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&ip.to_ne_bytes());
    judge(ctx, 4, dst, port, protocol)
}

fn judge_v6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above. Each word is read on its own: the verifier rejects a copy of the
    // array through a modified context pointer ("dereference of modified ctx ptr").
    let (words, port, protocol) = unsafe {
        let addr = ctx.sock_addr;
        (
            [
                read_volatile(&raw const (*addr).user_ip6[0]),
                read_volatile(&raw const (*addr).user_ip6[1]),
                read_volatile(&raw const (*addr).user_ip6[2]),
                read_volatile(&raw const (*addr).user_ip6[3]),
            ],
            read_volatile(&raw const (*addr).user_port),
            read_volatile(&raw const (*addr).protocol),
        )
    };
    let mut dst = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        dst[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    // An IPv4-mapped destination (::ffff:a.b.c.d) leaves as an IPv4 packet: judge it as the
    // IPv4 address it is, exactly as the packet hook will.
    if dst[..10] == [0; 10] && dst[10] == 0xff && dst[11] == 0xff {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&dst[12..]);
        return judge(ctx, 4, v4, port, protocol);
    }
    judge(ctx, 6, dst, port, protocol)
}

fn judge(ctx: &SockAddrContext, ip_version: u8, dst: [u8; 16], port: u32, protocol: u32) -> i32 {
    // SAFETY: the helper reads the socket of the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The socket's uid was fixed when it was created; a process that changed uid since is
    // still judged as the socket's owner, like the packet hook does.
    let uid = process::claim(cookie);

    let Some(config) = maps::config() else {
        return PROCEED;
    };
    if config.generation == 0 {
        return PROCEED;
    }
    let cgroup_id = scope::task_cgroup(&config);
    let Some(scope) = scope::lookup(&config, scope::of_current_task(&config, cgroup_id), uid)
    else {
        return PROCEED;
    };
    let protocol = protocol as u8;
    // `user_port` holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(port as u16);
    let has_ports = protocol == IPPROTO_TCP || protocol == IPPROTO_UDP;
    let to = Destination {
        ip_version,
        addr: dst,
        protocol,
        port: if has_ports { port } else { 0 },
    };
    let names_of = if config.flags & config_flags::HOSTS != 0 {
        cgroup_id
    } else {
        0
    };
    let decision = classify::decide(&scope, &to, names_of, false);
    if decision.verdict != verdict::DENY {
        return PROCEED;
    }
    events::count(counter::CALLS_DENIED);
    events::hit(&decision, true);
    let flow = events::ReportedFlow {
        key: FlowKey {
            socket_cookie: cookie,
            dst,
            dst_port: to.port,
            protocol,
            ip_version,
            icmp_type: 0,
            _pad: [0; 3],
        },
        connection: if protocol == IPPROTO_TCP {
            maps::EGRESS_SOCKETS.get_ptr_mut(cookie)
        } else {
            None
        },
    };
    events::report(&config, &decision, &flow, |event| {
        // SAFETY: plain helper calls in process context.
        event.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
        event.generation = config.generation;
        event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        event.socket_cookie = cookie;
        event.rule = decision.rule;
        event.audit_rule = decision.audit_rule;
        event.uid = uid;
        event.dst = dst;
        event.dst_port = to.port;
        event.ip_version = ip_version;
        event.protocol = protocol;
        event.verdict = decision.verdict;
        event.audit_verdict = decision.audit_verdict;
        event.direction = Direction::Egress as u8;
        // The call never built a packet: the attempt is the one thing dropped.
        event.dropped_packets = 1;
    });
    REJECT
}
