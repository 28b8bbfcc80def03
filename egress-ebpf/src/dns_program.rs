//! The DNS answer reader's four programs (`dns/`), chained by tail calls through
//! `EGRESS_DNS_PROGRAM`. None is attached: `egress_ingress_skb` tail-calls the first for a
//! TCP or UDP packet from port 53 it has passed, and each decides the packet's fate or hands
//! it on. A tail call that fails (a slot the agent has not filled) falls through to
//! `unread`: the answer is not delivered unread where host rules apply.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_uid, macros::cgroup_skb,
    programs::SkBuffContext,
};
use egress_common::{ScopeValue, counter, dns_slots, scope_flags};

use crate::{dns, events, maps, maps::EGRESS_DNS_PROGRAM, scope};

const PASS: i32 = 1;
const DROP: i32 = 0;

/// Slot 0: the message and its question.
#[cgroup_skb(ingress)]
pub fn egress_dns_skb(ctx: SkBuffContext) -> i32 {
    // The caller found all of this a moment ago; a tail call cannot pass it along.
    let Some(config) = maps::config() else {
        events::count(counter::MALFORMED);
        return PASS;
    };
    // SAFETY: the helper reads the skb the kernel passed us.
    let uid = unsafe { bpf_get_socket_uid(ctx.as_ptr().cast()) };
    let Some(scope) = scope::lookup(&config, scope::of_skb(&ctx, &config), uid) else {
        return PASS; // a policy reload in between left this socket ungoverned
    };
    if !dns::locate_answer(&ctx) {
        return unread(&scope);
    }
    let host_rules = scope.flags & scope_flags::HOST_RULES != 0;
    match dns::start(&ctx, u8::from(config.parity != 0), host_rules) {
        dns::DONE => next(&ctx, dns_slots::RECORDS),
        dns::NOTHING => PASS,
        _ => unread(&scope),
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

/// `unread` in the later stages, which know the scope's host rules from the first.
fn unread_here() -> i32 {
    verdict_unread(dns::host_rules())
}

/// The verdict on an answer that could not be read: dropped where host rules apply, since
/// its addresses would reach the workload unlearned, and delivered elsewhere.
pub fn unread(scope: &ScopeValue) -> i32 {
    verdict_unread(scope.flags & scope_flags::HOST_RULES != 0)
}

fn verdict_unread(host_rules: bool) -> i32 {
    if host_rules {
        events::count(counter::DNS_DROPPED);
        DROP
    } else {
        events::count(counter::DNS_UNREAD);
        PASS
    }
}
