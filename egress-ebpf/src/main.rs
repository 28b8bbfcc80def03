//! The egress kernel program: a `cgroup_skb/egress` hook that judges every outbound packet
//! of every process below the cgroup it is attached to (the cgroup2 root).
//!
//! The lookup chain is described in `egress-common`. This file holds the entry point and the
//! only decisions that are not table driven: what happens when something cannot be read.
#![no_std]
#![no_main]

mod classify;
mod events;
mod maps;
mod packet;
mod scope;

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use egress_common::{Decision, counter, verdict};

/// Return values of a cgroup_skb program.
/// <https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c#L1393-L1420>
const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb]
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
    let Some(scope) = scope::lookup(&ctx, &config) else {
        return PASS;
    };
    let packet = packet::parse(&ctx);
    let decision = match &packet {
        Some(packet) => classify::decide(&scope, packet),
        // A governed IP packet whose headers cannot be read (truncated or malformed): its
        // destination is unknown, so only the scope's default can judge it. An allowlist
        // drops it, an opt-out list passes it.
        None => {
            events::count(counter::MALFORMED);
            scope.default
        }
    };
    account(&decision);
    if let Some(packet) = &packet {
        events::report(&ctx, &config, packet, &decision);
    }
    if decision.verdict == verdict::DENY {
        DROP
    } else {
        PASS
    }
}

fn account(decision: &Decision) {
    events::count(if decision.verdict == verdict::DENY {
        counter::PACKETS_DENIED
    } else {
        counter::PACKETS_ALLOWED
    });
    if decision.audit_verdict == verdict::DENY {
        events::count(counter::PACKETS_AUDIT_DENIED);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
