//! The last stage: recording the answer's addresses, and telling the agent.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use egress_common::{
    counter,
    dns::{DnsEventHeader, LearnedKey},
};

use super::{
    ADDRESSES_PER_RUN, DONE, LEARNED, MAX_ANSWERS, MORE, MSG_MASK, NOTHING, Scratch, UNREADABLE,
    load, scratch_mut, scratch_ref, store,
};
use crate::{
    events,
    maps::{EGRESS_DNS_CONFIG, EGRESS_DNS_EVENTS},
    names,
};

/// Records up to [`ADDRESSES_PER_RUN`] of the answer's addresses, if any of its names matched
/// a pattern (written out, as `read_records`). `MORE` while addresses remain.
#[inline(never)]
pub(super) fn learn_addresses(ctx: &SkBuffContext) -> u32 {
    const _: () = assert!(ADDRESSES_PER_RUN == 8);
    let learned_all = learn_one(ctx)
        && learn_one(ctx)
        && learn_one(ctx)
        && learn_one(ctx)
        && learn_one(ctx)
        && learn_one(ctx)
        && learn_one(ctx)
        && learn_one(ctx);
    let Ok(scratch) = scratch_ref() else {
        return UNREADABLE;
    };
    let records = load(&scratch.records);
    if records.failed {
        UNREADABLE
    } else if learned_all && records.next_address < records.found {
        MORE
    } else {
        DONE
    }
}

/// Records the next address; false when there was none left, nothing to record (no name of
/// the answer matched a pattern), or recording failed (then `records.failed` is set).
#[inline(never)]
fn learn_one(ctx: &SkBuffContext) -> bool {
    let Ok(scratch) = scratch_mut() else {
        return false;
    };
    let mut records = load(&scratch.records);
    let sets = load(&scratch.sets);
    if records.failed || records.next_address >= records.found || sets.count == 0 {
        return false;
    }
    let index = records.next_address as usize & (MAX_ANSWERS - 1);
    records.next_address += 1;
    // SAFETY: reads the cgroup of the socket the packet is delivered to.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let (grace, max_ttl) = EGRESS_DNS_CONFIG.get(0).map_or((0, u64::MAX), |c| {
        // 0: the agent set no cap (or has not written the entry yet).
        let cap = if c.max_ttl_ns == 0 {
            u64::MAX
        } else {
            c.max_ttl_ns
        };
        (c.grace_ns, cap)
    });
    let ttl_ns = u64::from(scratch.addr_ttl[index].min(records.chain_ttl)) * 1_000_000_000;
    let key = LearnedKey {
        cgroup_id,
        addr: scratch.addrs[index],
        ip_version: scratch.addr_version[index],
        _pad: [0; 7],
    };
    let expires = now + ttl_ns.min(max_ttl) + grace;
    records.failed = names::learn(&key, &sets.ids, expires, now).is_err();
    store(&mut scratch.records, records);
    if !records.failed {
        events::count(counter::DNS_LEARNED);
    }
    !records.failed
}

/// Counts the answer and sends it to the agent: `LEARNED` when its addresses were recorded.
#[inline(never)]
pub(super) fn report(ctx: &SkBuffContext) -> u32 {
    let Ok(scratch) = scratch_mut() else {
        return UNREADABLE;
    };
    let records = load(&scratch.records);
    let learned = load(&scratch.sets).count > 0;
    events::count(counter::DNS_ANSWERS);
    let msg_len = records.msg_len as usize;
    scratch.header = DnsEventHeader {
        // SAFETY: plain helper calls.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) },
        len: msg_len as u32,
        learned: u8::from(learned),
        _pad: [0; 3],
    };
    send_event(scratch, msg_len);
    if learned { LEARNED } else { NOTHING }
}

/// Sends the header and the message to the agent, which names addresses in audit records
/// with it. A full ring buffer costs the names in the audit log, never a verdict.
pub(super) fn send_event(scratch: &Scratch, msg_len: usize) {
    let len = core::mem::size_of::<DnsEventHeader>() + (msg_len & MSG_MASK);
    // SAFETY: `header` is followed by `msg` in the same repr(C) value, and `len` stays
    // within the two.
    let bytes = unsafe {
        core::slice::from_raw_parts(core::ptr::from_ref(&scratch.header).cast::<u8>(), len)
    };
    if EGRESS_DNS_EVENTS.output::<[u8]>(bytes, 0).is_err() {
        events::count(counter::EVENTS_LOST);
    }
}
