//! The message, its question and its answer records.

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_skb_load_bytes, programs::SkBuffContext};

use super::{
    CLASS_IN, DONE, HEADER_LEN, MAX_ANSWERS, MAX_CNAMES, MAX_NAME_STEPS, MORE, MSG_MASK, NOTHING,
    RECORDS_PER_RUN, Scratch, TYPE_A, TYPE_AAAA, TYPE_CNAME, UNREADABLE, Unreadable, be16, be32,
    load,
    name::{Sets, add_set, name_set},
    scratch_mut, scratch_ref, store,
};
use crate::packet::{IPPROTO_TCP, IPPROTO_UDP};
use egress_common::dns::{MAX_MESSAGE, MAX_NAME_SETS};

/// Copies the message into the scratch value and checks its header.
#[inline(never)]
pub(super) fn read_message(ctx: &SkBuffContext) -> u32 {
    let Ok(scratch) = scratch_mut() else {
        return UNREADABLE;
    };
    let payload = load(&scratch.payload_at);
    let protocol = load(&scratch.protocol);
    let skb_len = ctx.len() as usize;
    let payload = payload as usize;
    if payload >= skb_len {
        return NOTHING; // a bare TCP ACK or an empty datagram
    }
    let (msg_at, msg_len) = match protocol {
        IPPROTO_UDP => (payload, skb_len - payload),
        IPPROTO_TCP => {
            // DNS over TCP prefixes each message with its length. Only a segment that holds
            // exactly one whole message can be read; anything else (a split or pipelined
            // message) is unreadable rather than guessed at.
            let Ok(prefix) = ctx.load::<[u8; 2]>(payload) else {
                return UNREADABLE;
            };
            let len = usize::from(u16::from_be_bytes(prefix));
            if payload + 2 + len != skb_len {
                return UNREADABLE;
            }
            (payload + 2, len)
        }
        _ => return NOTHING,
    };
    if !(HEADER_LEN..=MAX_MESSAGE).contains(&msg_len) {
        return UNREADABLE;
    }
    // SAFETY: the length is masked to the buffer's size and is at least HEADER_LEN.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            msg_at as u32,
            scratch.msg.as_mut_ptr().cast(),
            (msg_len & MSG_MASK) as u32,
        )
    };
    if loaded != 0 {
        return UNREADABLE;
    }
    store(&mut scratch.msg_at, msg_at as u32);
    let flags = scratch.msg[2];
    let opcode = (flags >> 3) & 0x0f;
    if flags & 0x80 == 0 || opcode != 0 {
        return NOTHING; // a query, or not a lookup (NOTIFY, UPDATE)
    }
    let questions = be16(&scratch.msg, 4);
    let answers = be16(&scratch.msg, 6);
    if answers == 0 {
        return NOTHING;
    }
    if questions != 1 || usize::from(answers) > MAX_ANSWERS {
        return UNREADABLE;
    }
    store(
        &mut scratch.records,
        Records {
            at: 0,
            msg_len: msg_len as u32,
            answers: u32::from(answers),
            found: 0,
            chain_ttl: u32::MAX,
            failed: false,
            next: 0,
            next_cname: 0,
            next_address: 0,
            cnames: [0; MAX_CNAMES],
            cname_count: 0,
        },
    );
    store(
        &mut scratch.sets,
        Sets {
            ids: [0; MAX_NAME_SETS],
            count: 0,
        },
    );
    DONE
}

/// Looks up the question name and finds where the answer records start.
#[inline(never)]
pub(super) fn read_question(ctx: &SkBuffContext, parity_byte: u8) -> u32 {
    let Ok(scratch) = scratch_ref() else {
        return UNREADABLE;
    };
    let msg_len = load(&scratch.records).msg_len;
    let Ok(set) = name_set(ctx, HEADER_LEN as u32, msg_len, parity_byte) else {
        return UNREADABLE;
    };
    if !add_set(set) {
        return UNREADABLE;
    }
    let Ok(scratch) = scratch_mut() else {
        return UNREADABLE;
    };
    let mut records = load(&scratch.records);
    records.at = load(&scratch.cursor) + 4; // QTYPE, QCLASS
    store(&mut scratch.records, records);
    DONE
}

/// Where the answer section is being read.
#[derive(Clone, Copy)]
pub(super) struct Records {
    pub(super) at: u32,
    pub(super) msg_len: u32,
    pub(super) answers: u32,
    pub(super) found: u32,
    /// Lowest TTL of the CNAME records: the chain holds no longer than its weakest link.
    pub(super) chain_ttl: u32,
    pub(super) failed: bool,
    /// The next record to read, CNAME target to look up, and address to record.
    pub(super) next: u32,
    pub(super) next_cname: u32,
    pub(super) next_address: u32,
    /// Offsets of the CNAME targets, read after the records.
    pub(super) cnames: [u16; MAX_CNAMES],
    pub(super) cname_count: u32,
}

/// Reads up to [`RECORDS_PER_RUN`] answer records. Written out, not looped: as a loop LLVM
/// keeps rolled, the same bodies cost the verifier several times more (measured: 16 records
/// rolled took 589k instructions, 8 unrolled 164k).
#[inline(never)]
pub(super) fn read_records() -> u32 {
    const _: () = assert!(RECORDS_PER_RUN == 8);
    let _ = read_record()
        || read_record()
        || read_record()
        || read_record()
        || read_record()
        || read_record()
        || read_record()
        || read_record();
    let Ok(scratch) = scratch_ref() else {
        return UNREADABLE;
    };
    let records = load(&scratch.records);
    if records.failed {
        UNREADABLE
    } else if records.next < records.answers {
        MORE
    } else {
        DONE
    }
}

/// Reads the next answer record: a CNAME adds its target to the names to look up, an A or
/// AAAA record its address. Returns true when there is nothing more to read.
#[inline(never)]
pub(super) fn read_record() -> bool {
    let Ok(before) = scratch_ref() else {
        return true;
    };
    let mut state = load(&before.records);
    if state.next >= state.answers || state.failed {
        return true;
    }
    let result = record(&mut state);
    state.failed = result.is_err();
    state.next += 1;
    let Ok(after) = scratch_mut() else {
        return true;
    };
    store(&mut after.records, state);
    state.failed
}

#[inline(always)]
pub(super) fn record(state: &mut Records) -> Result<(), Unreadable> {
    let scratch = scratch_mut()?;
    let msg_len = state.msg_len as usize;
    skip_name(scratch, state.at as usize, msg_len)?;
    let at = load(&scratch.cursor) as usize;
    if at + 10 > msg_len {
        return Err(Unreadable);
    }
    let rtype = be16(&scratch.msg, at);
    let class = be16(&scratch.msg, at + 2);
    let ttl = be32(&scratch.msg, at + 4);
    let rdlen = usize::from(be16(&scratch.msg, at + 8));
    let rdata = at + 10;
    if rdata + rdlen > msg_len {
        return Err(Unreadable);
    }
    state.at = (rdata + rdlen) as u32;
    if class != CLASS_IN {
        return Ok(());
    }
    if rtype == TYPE_CNAME {
        let slot = state.cname_count as usize;
        state.cnames[slot & (MAX_CNAMES - 1)] = rdata as u16; // masked first, as in `step`
        if slot >= MAX_CNAMES {
            return Err(Unreadable);
        }
        state.cname_count += 1;
        state.chain_ttl = state.chain_ttl.min(ttl);
        return Ok(());
    }
    if (rtype == TYPE_A && rdlen == 4) || (rtype == TYPE_AAAA && rdlen == 16) {
        let slot = state.found as usize & (MAX_ANSWERS - 1);
        // All 16 bytes, then the IPv4 tail cleared: a per-byte `k < rdlen` test would split
        // the verifier's walk at every byte.
        let mut addr = [0u8; 16];
        for (k, byte) in addr.iter_mut().enumerate() {
            *byte = scratch.msg[(rdata + k) & MSG_MASK];
        }
        if rdlen == 4 {
            addr[4..].fill(0);
        }
        scratch.addrs[slot] = addr;
        scratch.addr_version[slot] = if rdlen == 4 { 4 } else { 6 };
        scratch.addr_ttl[slot] = ttl;
        state.found += 1;
    }
    Ok(())
}

/// Stores the offset just past the name at `at` (without following pointers) in `cursor`:
/// returned in a register, each of the loop's exits would carry its own range of it into the
/// caller, and the verifier would walk the rest of the caller once per exit.
#[inline(never)]
pub(super) fn skip_name(
    scratch: &mut Scratch,
    mut at: usize,
    msg_len: usize,
) -> Result<(), Unreadable> {
    for _ in 0..MAX_NAME_STEPS {
        if at >= msg_len {
            return Err(Unreadable);
        }
        let byte = scratch.msg[at & MSG_MASK];
        if byte & 0xc0 == 0xc0 {
            store(&mut scratch.cursor, (at + 2) as u32);
            return Ok(());
        }
        if byte == 0 {
            store(&mut scratch.cursor, (at + 1) as u32);
            return Ok(());
        }
        if byte & 0xc0 != 0 {
            return Err(Unreadable);
        }
        at += 1 + usize::from(byte);
    }
    Err(Unreadable)
}
