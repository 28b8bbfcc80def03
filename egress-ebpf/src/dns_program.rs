//! `egress_dns_skb`: reads a DNS answer delivered to a governed socket (`dns.rs`) and decides
//! whether it may be delivered. Reached only by tail call from `egress_ingress_skb`, after
//! that program passed the packet; never attached itself.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_uid, macros::cgroup_skb,
    programs::SkBuffContext,
};
use egress_common::{ScopeValue, counter, scope_flags};

use crate::{dns, events, maps, scope};

const PASS: i32 = 1;
const DROP: i32 = 0;

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
    match dns::read_answer(&ctx, u8::from(config.parity != 0)) {
        dns::Answer::Unreadable => unread(&scope),
        dns::Answer::Learned | dns::Answer::Nothing => PASS,
    }
}

/// The verdict on an answer that could not be read: dropped where host rules apply, since
/// its addresses would reach the workload unlearned, and delivered elsewhere.
pub fn unread(scope: &ScopeValue) -> i32 {
    if scope.flags & scope_flags::HOST_RULES != 0 {
        events::count(counter::DNS_DROPPED);
        DROP
    } else {
        events::count(counter::DNS_UNREAD);
        PASS
    }
}
