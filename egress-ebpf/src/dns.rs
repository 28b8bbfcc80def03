//! Hostname rules, kernel half: DNS answers that reach a governed socket are read here,
//! in the `cgroup_skb/ingress` program, before the socket can see them. Addresses answered
//! for names that some host pattern matches are recorded in `EGRESS_LEARNED` under the
//! receiving socket's cgroup, so the very first packet (or `connect()`) to such an address
//! is already judged by the hostname rule: there is no window in which the application
//! knows the address and the kernel does not. See `egress_common::dns` for the whole chain.
//!
//! Every loop is bounded by a constant; every index into the scratch buffer is masked, which
//! is what lets the verifier prove the reads in bounds without knowing the message.
//!
//! Verifier quirk: a bounded loop is verified by walking every iteration, and two paths
//! through a branching body are merged at the next join point only if their registers are
//! equal. Loop state kept in registers (offsets, counts) differs per path, so the walk
//! doubles with every iteration; our first version hit the million-instruction limit. The
//! loops below therefore keep their state in the per-CPU scratch value and move it with
//! volatile loads and stores: values read from map memory are unknown to the verifier, so
//! the paths of one iteration converge and the walk stays linear. (`bpf_loop` would also do,
//! but its callbacks need the object's BTF loaded, and the kernel rejects the BTF rustc emits
//! for data-carrying enums: "Invalid member bits_offset" in a union.)
//! A message this file cannot read completely is *unreadable*; the caller drops it when the
//! workload has host rules (a name rule must never be dodged by an answer we did not read).

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    maps::lpm_trie::Key,
    programs::SkBuffContext,
};
use egress_common::{
    counter,
    dns::{
        DnsEventHeader, HOST_KEY_BYTES, HostKeyData, LearnedKey, MAX_MESSAGE, MAX_NAME_SETS,
        NameSetId,
    },
};

use crate::{
    events,
    maps::{EGRESS_DNS_CONFIG, EGRESS_DNS_EVENTS, EGRESS_DNS_SCRATCH, EGRESS_HOSTNAMES},
    names,
    packet::{self, IPPROTO_TCP, IPPROTO_UDP},
};

pub const DNS_PORT: u16 = 53;
/// Index mask of the message buffer (its size is a power of two).
const MSG_MASK: usize = MSG_BUFFER - 1;
const MSG_BUFFER: usize = 2048;
const HEADER_LEN: usize = 12;
/// Answer records read; an answer with more is unreadable.
const MAX_ANSWERS: usize = 8;
/// CNAME records of one answer; more make it unreadable. Each target's name is looked up
/// after the records are read, in a loop of its own: inside the record loop every record
/// would cost the verifier a whole name lookup.
const MAX_CNAMES: usize = 4;
/// Labels of one name; more make the name unreadable (real names have a handful).
const MAX_LABELS: usize = 32;
/// Longest label: its length byte has the two top bits clear.
const MAX_LABEL: usize = 63;
/// Labels plus compression pointers followed while walking one name.
const MAX_NAME_STEPS: usize = 48;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Per-CPU working memory: far more than the 512 bytes of stack a program has. `header` and
/// `msg` are adjacent so that one ring buffer output sends both.
#[repr(C)]
pub struct Scratch {
    pub header: DnsEventHeader,
    pub msg: [u8; MSG_BUFFER],
    pub key: Key<HostKeyData>,
    /// Room for a label copied at the key's last byte (the copy's length is bounded, not exact,
    /// as far as the verifier knows).
    key_slack: [u8; 64],
    /// Offset of the DNS message in the packet.
    msg_at: u32,
    /// Offset of the TCP or UDP payload, and which of the two.
    payload_at: u32,
    protocol: u8,
    /// Offset and length of each label of the name being read, in wire order.
    pub label_at: [u16; MAX_LABELS],
    pub label_len: [u8; MAX_LABELS],
    /// A and AAAA records of the answer: address, IP version, TTL in seconds.
    pub addrs: [[u8; 16]; MAX_ANSWERS],
    pub addr_version: [u8; MAX_ANSWERS],
    pub addr_ttl: [u32; MAX_ANSWERS],
    /// Loop states (see the module docs for why they live here).
    records: Records,
    /// Offset just past the name last walked or skipped.
    cursor: u32,
    sets: Sets,
    walk: Walk,
    key_writer: KeyWriter,
}

/// What to do with a packet from port 53.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not a DNS answer with records (a query, an empty segment, no answers): nothing learned.
    Nothing,
    /// Read completely; its addresses are in force for the names they were given for.
    Learned,
    /// Could not be read completely, or its addresses could not be recorded.
    Unreadable,
}

/// Reads the DNS answer in the packet (a TCP or UDP packet from port 53 delivered to a
/// governed socket).
pub fn read_answer(ctx: &SkBuffContext, parity_byte: u8) -> Answer {
    match read(ctx, parity_byte) {
        LEARNED => Answer::Learned,
        NOTHING => Answer::Nothing,
        _ => Answer::Unreadable,
    }
}

/// Parses the packet's headers and keeps where its payload starts in the scratch value;
/// false when the packet is not TCP or UDP from port 53. Out of line and answering only a
/// bool, so that the header parser's many paths (IPv4, IPv6, extension headers) meet again
/// before `read_answer` and the verifier walks the reader once.
#[inline(never)]
pub fn locate_answer(ctx: &SkBuffContext) -> bool {
    let Some(packet) = packet::parse(ctx) else {
        return false;
    };
    if packet.src_port != DNS_PORT
        || (packet.protocol != IPPROTO_UDP && packet.protocol != IPPROTO_TCP)
    {
        return false;
    }
    let Ok(scratch) = scratch_mut() else {
        return false;
    };
    store(&mut scratch.payload_at, packet.payload_offset);
    store(&mut scratch.protocol, packet.protocol);
    true
}

/// Outcomes of the stages of `read`.
const PROCEED: u32 = 0;
const NOTHING: u32 = 1;
const UNREADABLE: u32 = 2;
const LEARNED: u32 = 3;

struct Unreadable;

/// The name sets gathered from an answer's names.
#[derive(Clone, Copy)]
struct Sets {
    ids: [NameSetId; MAX_NAME_SETS],
    count: u32,
}

/// Adds `set` to the answer's sets in the scratch value (kept there, not on the stack, for
/// the verifier: see the module docs). False when there is no room.
#[inline(never)]
fn add_set(set: NameSetId) -> bool {
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

/// Looks up the name of CNAME target `index` and adds its set; true when the loop is over.
/// A failure is recorded in `records.failed`.
#[inline(never)]
fn cname_step(ctx: &SkBuffContext, index: u32, parity_byte: u8) -> bool {
    let Ok(scratch) = scratch_ref() else {
        return true;
    };
    let records = load(&scratch.records);
    if index >= records.cname_count {
        return true;
    }
    let start = u32::from(records.cnames[index as usize & (MAX_CNAMES - 1)]);
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

/// Reads the answer in stages. Each stage is a function of its own that leaves its results
/// in the scratch value and returns only an outcome: however many paths a stage's loops take
/// through it, they all return here with the same registers, and the verifier walks the next
/// stage once, not once per path of the previous one. Out of line, so its frame sits beside
/// the ingress program's, not on top of it.
#[inline(never)]
fn read(ctx: &SkBuffContext, parity_byte: u8) -> u32 {
    let outcome = read_message(ctx);
    if outcome != PROCEED {
        return outcome;
    }
    if read_question(ctx, parity_byte) != PROCEED {
        return UNREADABLE;
    }
    if read_records() != PROCEED {
        return UNREADABLE;
    }
    if read_cnames(ctx, parity_byte) != PROCEED {
        return UNREADABLE;
    }
    learn_addresses(ctx)
}

/// Copies the message into the scratch value and checks its header.
#[inline(never)]
fn read_message(ctx: &SkBuffContext) -> u32 {
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
    PROCEED
}

/// Looks up the question name and finds where the answer records start.
#[inline(never)]
fn read_question(ctx: &SkBuffContext, parity_byte: u8) -> u32 {
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
    PROCEED
}

/// Calls `$step` with each index until it returns true, written out in full. Verifier quirk:
/// as a loop LLVM keeps rolled (past 8 or so iterations), the same bodies cost the verifier
/// several times more, measured: 16 records rolled took 589k instructions, unrolled 8 took
/// 164k.
macro_rules! each_index {
    ($step:expr; $($index:literal)*) => {
        loop {
            $(
                if $step($index) {
                    break;
                }
            )*
            break;
        }
    };
}

#[inline(never)]
fn read_records() -> u32 {
    const _: () = assert!(MAX_ANSWERS == 8);
    each_index!(read_record; 0 1 2 3 4 5 6 7);
    match scratch_ref() {
        Ok(scratch) if !load(&scratch.records).failed => PROCEED,
        _ => UNREADABLE,
    }
}

#[inline(never)]
fn read_cnames(ctx: &SkBuffContext, parity_byte: u8) -> u32 {
    const _: () = assert!(MAX_CNAMES == 4);
    each_index!(|index| cname_step(ctx, index, parity_byte); 0 1 2 3);
    match scratch_ref() {
        Ok(scratch) if !load(&scratch.records).failed => PROCEED,
        _ => UNREADABLE,
    }
}

/// Records the answer's addresses if any of its names matched a pattern, and sends the
/// answer to the agent.
#[inline(never)]
fn learn_addresses(ctx: &SkBuffContext) -> u32 {
    let Ok(scratch) = scratch_mut() else {
        return UNREADABLE;
    };
    let records = load(&scratch.records);
    let sets = load(&scratch.sets);
    // SAFETY: reads the cgroup of the socket the packet is delivered to.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let learned = sets.count > 0;
    if learned {
        let (grace, max_ttl) = EGRESS_DNS_CONFIG.get(0).map_or((0, u64::MAX), |c| {
            // 0: the agent set no cap (or has not written the entry yet).
            let cap = if c.max_ttl_ns == 0 {
                u64::MAX
            } else {
                c.max_ttl_ns
            };
            (c.grace_ns, cap)
        });
        for i in 0..MAX_ANSWERS {
            if i >= records.found as usize {
                break;
            }
            let ttl_ns = u64::from(scratch.addr_ttl[i].min(records.chain_ttl)) * 1_000_000_000;
            let key = LearnedKey {
                cgroup_id,
                addr: scratch.addrs[i],
                ip_version: scratch.addr_version[i],
                _pad: [0; 7],
            };
            let expires = now + ttl_ns.min(max_ttl) + grace;
            if names::learn(&key, &sets.ids, expires, now).is_err() {
                return UNREADABLE;
            }
            events::count(counter::DNS_LEARNED);
        }
    }
    events::count(counter::DNS_ANSWERS);
    let msg_len = records.msg_len as usize;
    scratch.header = DnsEventHeader {
        boot_ns: now,
        cgroup_id,
        len: msg_len as u32,
        learned: u8::from(learned),
        _pad: [0; 3],
    };
    send_event(scratch, msg_len);
    if learned { LEARNED } else { NOTHING }
}

fn scratch_mut() -> Result<&'static mut Scratch, Unreadable> {
    let scratch = EGRESS_DNS_SCRATCH.get_ptr_mut(0).ok_or(Unreadable)?;
    // SAFETY: a per-CPU map value; nothing else runs on this CPU while the program does.
    Ok(unsafe { &mut *scratch })
}

fn scratch_ref() -> Result<&'static Scratch, Unreadable> {
    scratch_mut().map(|s| &*s)
}

/// Loads loop state from the scratch value so that the verifier sees an unknown value.
#[inline(always)]
fn load<T: Copy>(from: &T) -> T {
    // SAFETY: a valid reference.
    unsafe { core::ptr::read_volatile(from) }
}

#[inline(always)]
fn store<T: Copy>(to: &mut T, value: T) {
    // SAFETY: a valid reference.
    unsafe { core::ptr::write_volatile(to, value) }
}

/// Where the answer section is being read.
#[derive(Clone, Copy)]
struct Records {
    at: u32,
    msg_len: u32,
    answers: u32,
    found: u32,
    /// Lowest TTL of the CNAME records: the chain holds no longer than its weakest link.
    chain_ttl: u32,
    failed: bool,
    /// Offsets of the CNAME targets, read after the records.
    cnames: [u16; MAX_CNAMES],
    cname_count: u32,
}

/// Reads answer record `index`: a CNAME adds its target's name set, an A or AAAA record its
/// address. Returns true when the loop is over.
#[inline(never)]
fn read_record(index: u32) -> bool {
    let Ok(before) = scratch_ref() else {
        return true;
    };
    let mut state = load(&before.records);
    if index >= state.answers {
        return true;
    }
    let result = record(&mut state);
    state.failed = result.is_err();
    let Ok(after) = scratch_mut() else {
        return true;
    };
    store(&mut after.records, state);
    state.failed
}

#[inline(always)]
fn record(state: &mut Records) -> Result<(), Unreadable> {
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

/// Sends the header and the message to the agent, which names addresses in audit records
/// with it. A full ring buffer costs the names in the audit log, never a verdict.
fn send_event(scratch: &Scratch, msg_len: usize) {
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

/// Walks the name at `start`, following compression pointers, then looks it up in the host
/// pattern trie. Returns the name's set (0: no pattern matches it) and stores the offset just
/// past the name where it was written (not where a pointer led) in `cursor`.
#[inline(never)]
fn name_set(
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
struct Walk {
    at: u32,
    msg_len: u32,
    /// Offset just past the name as written (0 until known).
    end: u32,
    labels: u32,
    /// Wire length so far.
    total: u32,
    done: bool,
    failed: bool,
}

/// One label or pointer of the name being walked; true when the walk is over. Out of line,
/// so that LLVM cannot unroll the loop around it: unrolled, the paths through the copies
/// multiply before the verifier reaches a point where they converge.
#[inline(never)]
fn walk_step() -> bool {
    let Ok(scratch) = scratch_mut() else {
        return true;
    };
    let mut walk = load(&scratch.walk);
    let over = step(scratch, &mut walk);
    store(&mut scratch.walk, walk);
    over
}

#[inline(always)]
fn step(scratch: &mut Scratch, walk: &mut Walk) -> bool {
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
struct KeyWriter {
    out: u32,
    /// Labels not yet written; the next is `left - 1`.
    left: u32,
}

/// Copies one label (straight from the packet: one helper call instead of a loop over its
/// bytes) and its '.'; true when the key is complete. Out of line, as `walk_step`.
///
/// Label bytes are copied as they are: a label holding a '.' reads as two labels here. Only
/// a resolver that answers for names no real zone can hold (a label with a dot directly
/// under the root) could use that, and a resolver that lies can claim any address for any
/// name anyway; pin resolvers with `spec.dns.resolvers` (docs/security.md).
#[inline(never)]
fn key_step(ctx: &SkBuffContext) -> bool {
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
static LOWERCASE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = (i as u8).to_ascii_lowercase();
        i += 1;
    }
    table
};

/// Stores the offset just past the name at `at` (without following pointers) in `cursor`:
/// returned in a register, each of the loop's exits would carry its own range of it into the
/// caller, and the verifier would walk the rest of the caller once per exit.
#[inline(never)]
fn skip_name(scratch: &mut Scratch, mut at: usize, msg_len: usize) -> Result<(), Unreadable> {
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

#[inline(always)]
fn be16(msg: &[u8; MSG_BUFFER], at: usize) -> u16 {
    u16::from_be_bytes([msg[at & MSG_MASK], msg[(at + 1) & MSG_MASK]])
}

#[inline(always)]
fn be32(msg: &[u8; MSG_BUFFER], at: usize) -> u32 {
    u32::from_be_bytes([
        msg[at & MSG_MASK],
        msg[(at + 1) & MSG_MASK],
        msg[(at + 2) & MSG_MASK],
        msg[(at + 3) & MSG_MASK],
    ])
}
