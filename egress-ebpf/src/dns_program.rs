//! The DNS answer reader's four programs (`dns/`), chained by tail calls through
//! `EGRESS_DNS_PROGRAM`. None is attached: `egress_ingress_skb` tail-calls the first for a
//! TCP or UDP packet from port 53 it has passed, and each decides the packet's fate or hands
//! it on. A tail call that fails (a slot the agent has not filled) falls through to
//! `unread`: the answer is not delivered unread where host rules apply.

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use egress_common::{counter, dns_slots};

use crate::{dns, events, maps::EGRESS_DNS_PROGRAM};

const PASS: i32 = 1;
const DROP: i32 = 0;

/// Slot 0: the message and its question (what the ingress program found about the packet
/// is in the reader's scratch value, see `dns::prepare`).
#[cgroup_skb(ingress)]
pub fn egress_dns_skb(ctx: SkBuffContext) -> i32 {
    match dns::start(&ctx) {
        dns::DONE => next(&ctx, dns_slots::RECORDS),
        dns::NOTHING => PASS,
        _ => unread_here(),
    }
}

/// Slot 1: the next answer records; runs again while there are more.
#[cgroup_skb(ingress)]
pub fn egress_dns_records(ctx: SkBuffContext) -> i32 {
    match dns::records() {
        dns::MORE => next(&ctx, dns_slots::RECORDS),
        dns::DONE => next(&ctx, dns_slots::NAMES),
        _ => unread_here(),
    }
}

/// Slot 2: the CNAME targets' names; runs again while there are more.
#[cgroup_skb(ingress)]
pub fn egress_dns_names(ctx: SkBuffContext) -> i32 {
    match dns::names(&ctx) {
        dns::MORE => next(&ctx, dns_slots::NAMES),
        dns::DONE => next(&ctx, dns_slots::LEARN),
        _ => unread_here(),
    }
}

/// Slot 3: records the addresses; runs again while there are more, then tells the agent.
#[cgroup_skb(ingress)]
pub fn egress_dns_learn(ctx: SkBuffContext) -> i32 {
    match dns::learn(&ctx) {
        dns::MORE => next(&ctx, dns_slots::LEARN),
        dns::DONE => match dns::finish(&ctx) {
            dns::LEARNED | dns::NOTHING => PASS,
            _ => unread_here(),
        },
        _ => unread_here(),
    }
}

/// Hands the packet to the program in `slot`; returns only if that failed.
fn next(ctx: &SkBuffContext, slot: u32) -> i32 {
    // SAFETY: a tail call with this program's own context.
    unsafe { EGRESS_DNS_PROGRAM.tail_call(ctx, slot) };
    unread_here()
}

/// `unread` in the stages, which know the workload's host rules from `dns::prepare`.
fn unread_here() -> i32 {
    unread(dns::host_rules())
}

/// The verdict on an answer that could not be read: dropped where host rules apply, since
/// its addresses would reach the workload unlearned, and delivered elsewhere.
pub fn unread(host_rules: bool) -> i32 {
    if host_rules {
        events::count(counter::DNS_DROPPED);
        DROP
    } else {
        events::count(counter::DNS_UNREAD);
        PASS
    }
}
