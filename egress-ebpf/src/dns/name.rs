//! Names: walking a wire-format name, writing its trie key, looking it up.

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_skb_load_bytes, programs::SkBuffContext};
use egress_common::dns::{HOST_KEY_BYTES, MAX_NAME_SETS, NameSetId};

use super::{
    DONE, MAX_CNAMES, MAX_LABEL, MAX_LABELS, MAX_NAME_STEPS, MORE, MSG_MASK, NAMES_PER_RUN,
    Scratch, UNREADABLE, Unreadable, load, scratch_mut, scratch_ref, store,
};
use crate::maps::EGRESS_HOSTNAMES;

/// The name sets gathered from an answer's names.
#[derive(Clone, Copy)]
pub(super) struct Sets {
    pub(super) ids: [NameSetId; MAX_NAME_SETS],
    pub(super) count: u32,
}

/// Adds `set` to the answer's sets in the scratch value (kept there, not on the stack, for
/// the verifier: see the module docs). False when there is no room.
#[inline(never)]
pub(super) fn add_set(set: NameSetId) -> bool {
    let Ok(scratch) = scratch_mut() else {
        return false;
    };
    let mut sets = load(&scratch.sets);
    if set == 0 || sets.ids.contains(&set) {
        return true;
    }
    let slot = sets.count as usize;
    sets.ids[slot & (MAX_NAME_SETS - 1)] = set; // masked first, as in `step`
    if slot >= MAX_NAME_SETS {
        return false;
    }
    sets.count += 1;
    store(&mut scratch.sets, sets);
    true
}

/// Looks up the name of the next CNAME target and adds its set; true when there is nothing
/// more to do. A failure is recorded in `records.failed`.
#[inline(never)]
pub(super) fn cname_step(ctx: &SkBuffContext, parity_byte: u8) -> bool {
    let Ok(scratch) = scratch_mut() else {
        return true;
    };
    let mut records = load(&scratch.records);
    if records.next_cname >= records.cname_count || records.failed {
        return true;
    }
    let start = u32::from(records.cnames[records.next_cname as usize & (MAX_CNAMES - 1)]);
    records.next_cname += 1;
    store(&mut scratch.records, records);
    let added = match name_set(ctx, start, records.msg_len, parity_byte) {
        Ok(set) => add_set(set),
        Err(Unreadable) => false,
    };
    if added {
        return false;
    }
    if let Ok(scratch) = scratch_mut() {
        let mut records = load(&scratch.records);
        records.failed = true;
        store(&mut scratch.records, records);
    }
    true
}

/// Looks up up to [`NAMES_PER_RUN`] CNAME targets (written out, as `read_records`).
#[inline(never)]
pub(super) fn read_cnames(ctx: &SkBuffContext, parity_byte: u8) -> u32 {
    const _: () = assert!(NAMES_PER_RUN == 4);
    let _ = cname_step(ctx, parity_byte)
        || cname_step(ctx, parity_byte)
        || cname_step(ctx, parity_byte)
        || cname_step(ctx, parity_byte);
    let Ok(scratch) = scratch_ref() else {
        return UNREADABLE;
    };
    let records = load(&scratch.records);
    if records.failed {
        UNREADABLE
    } else if records.next_cname < records.cname_count {
        MORE
    } else {
        DONE
    }
}

/// Walks the name at `start`, following compression pointers, then looks it up in the host
/// pattern trie. Returns the name's set (0: no pattern matches it) and stores the offset just
/// past the name where it was written (not where a pointer led) in `cursor`.
#[inline(never)]
pub(super) fn name_set(
    ctx: &SkBuffContext,
    start: u32,
    msg_len: u32,
    parity_byte: u8,
) -> Result<NameSetId, Unreadable> {
    store(
        &mut scratch_mut()?.walk,
        Walk {
            at: start,
            msg_len,
            end: 0,
            labels: 0,
            total: 0,
            done: false,
            failed: false,
        },
    );
    for _ in 0..MAX_NAME_STEPS {
        if walk_step() {
            break;
        }
    }
    let walk = load(&scratch_ref()?.walk);
    if walk.failed || !walk.done {
        return Err(Unreadable);
    }
    let writer = scratch_mut()?;
    writer.key.data[0] = parity_byte;
    store(
        &mut writer.key_writer,
        KeyWriter {
            out: 1,
            left: walk.labels,
        },
    );
    for _ in 0..MAX_LABELS {
        if key_step(ctx) {
            break;
        }
    }
    let scratch = scratch_mut()?;
    // Lowercase through a table: no branch per byte, so this loop costs the verifier one walk.
    for byte in scratch.key.data.iter_mut() {
        *byte = LOWERCASE[usize::from(*byte)];
    }
    let key = load(&scratch.key_writer);
    let out = key.out as usize;
    // The end byte is written through the mask before the length is checked: checked first,
    // LLVM drops the mask on a copy the verifier does not know to be bounded.
    scratch.key.data[out & (HOST_KEY_BYTES - 1)] = 0;
    store(&mut scratch.cursor, walk.end);
    if key.left != 0 || out >= HOST_KEY_BYTES {
        return Ok(0);
    }
    scratch.key.prefix_len = ((out + 1) * 8) as u32;
    Ok(EGRESS_HOSTNAMES.get(&scratch.key).copied().unwrap_or(0))
}

/// A name being walked; its labels go to the scratch's `label_at`/`label_len`.
#[derive(Clone, Copy)]
pub(super) struct Walk {
    pub(super) at: u32,
    pub(super) msg_len: u32,
    /// Offset just past the name as written (0 until known).
    pub(super) end: u32,
    pub(super) labels: u32,
    /// Wire length so far.
    pub(super) total: u32,
    pub(super) done: bool,
    pub(super) failed: bool,
}

/// One label or pointer of the name being walked; true when the walk is over. Out of line,
/// so that LLVM cannot unroll the loop around it: unrolled, the paths through the copies
/// multiply before the verifier reaches a point where they converge.
#[inline(never)]
pub(super) fn walk_step() -> bool {
    let Ok(scratch) = scratch_mut() else {
        return true;
    };
    let mut walk = load(&scratch.walk);
    let over = step(scratch, &mut walk);
    store(&mut scratch.walk, walk);
    over
}

#[inline(always)]
pub(super) fn step(scratch: &mut Scratch, walk: &mut Walk) -> bool {
    let at = walk.at as usize;
    if at >= walk.msg_len as usize {
        walk.failed = true;
        return true;
    }
    let byte = scratch.msg[at & MSG_MASK];
    if byte == 0 {
        if walk.end == 0 {
            walk.end = walk.at + 1;
        }
        walk.done = true;
        return true;
    }
    if byte & 0xc0 == 0xc0 {
        let target = (u32::from(byte & 0x3f) << 8) | u32::from(scratch.msg[(at + 1) & MSG_MASK]);
        if walk.end == 0 {
            walk.end = walk.at + 2;
        }
        // Pointers only lead backwards, so a crafted loop cannot keep us walking.
        if target >= walk.at || walk.at + 1 >= walk.msg_len {
            walk.failed = true;
            return true;
        }
        walk.at = target;
        return false;
    }
    // Stored through the mask before the count is checked: checked first, LLVM would drop
    // the mask and index with a copy the verifier does not know to be bounded.
    let index = walk.labels as usize;
    scratch.label_at[index & (MAX_LABELS - 1)] = (at + 1) as u16;
    scratch.label_len[index & (MAX_LABELS - 1)] = byte;
    if byte & 0xc0 != 0 || index >= MAX_LABELS {
        walk.failed = true;
        return true;
    }
    walk.labels += 1;
    walk.total += u32::from(byte) + 1;
    if walk.total as usize > HOST_KEY_BYTES - 2 {
        walk.failed = true; // longer than any DNS name may be
        return true;
    }
    walk.at += 1 + u32::from(byte);
    false
}

/// The trie key being written (see `HostKeyData`: last label first, each followed by '.',
/// then a 0 byte), one label per step, lowercased afterwards.
#[derive(Clone, Copy)]
pub(super) struct KeyWriter {
    pub(super) out: u32,
    /// Labels not yet written; the next is `left - 1`.
    pub(super) left: u32,
}

/// Copies one label (straight from the packet: one helper call instead of a loop over its
/// bytes) and its '.'; true when the key is complete. Out of line, as `walk_step`.
///
/// Label bytes are copied as they are: a label holding a '.' reads as two labels here. Only
/// a resolver that answers for names no real zone can hold (a label with a dot directly
/// under the root) could use that, and a resolver that lies can claim any address for any
/// name anyway; pin resolvers with `spec.dns.resolvers` (docs/security.md).
#[inline(never)]
pub(super) fn key_step(ctx: &SkBuffContext) -> bool {
    let Ok(scratch) = scratch_mut() else {
        return true;
    };
    let mut key = load(&scratch.key_writer);
    if key.left == 0 {
        return true;
    }
    let index = (key.left as usize - 1) & (MAX_LABELS - 1);
    let at = u32::from(scratch.label_at[index]);
    let len = usize::from(scratch.label_len[index]) & MAX_LABEL;
    let out = key.out as usize & (HOST_KEY_BYTES - 1);
    if len == 0 {
        return true;
    }
    // SAFETY: the destination lies inside the scratch value: `out` < 256 and `len` <= 63,
    // and `key_slack` follows the key's data.
    let copied = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            load(&scratch.msg_at) + at,
            scratch.key.data.as_mut_ptr().add(out).cast(),
            len as u32,
        )
    };
    if copied != 0 {
        return true; // `left` stays nonzero: the name matches nothing
    }
    scratch.key.data[(out + len) & (HOST_KEY_BYTES - 1)] = b'.';
    key.out += len as u32 + 1;
    key.left -= 1;
    store(&mut scratch.key_writer, key);
    false
}

/// ASCII lowercase of every byte value.
pub(super) static LOWERCASE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = (i as u8).to_ascii_lowercase();
        i += 1;
    }
    table
};
