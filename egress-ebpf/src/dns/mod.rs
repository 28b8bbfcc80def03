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
//! A message these files cannot read completely is *unreadable*; the caller drops it when the
//! workload has host rules (a name rule must never be dodged by an answer we did not read).
//!
//! The reading is split into stages run by four programs chained by tail calls
//! (`dns_program.rs`): the question, the answer records eight at a time, the CNAME targets'
//! names four at a time, the addresses eight at a time. Each program is verified on its own,
//! so the limits below are set by what an answer needs, not by the verifier's budget for one
//! program; the per-CPU scratch value carries the state from one to the next (a tail call
//! keeps the CPU, and `cgroup_skb` programs run with softirqs off, so nothing else touches it
//! in between).

mod learn;
mod message;
mod name;

use aya_ebpf::maps::lpm_trie::Key;
use egress_common::dns::{DnsEventHeader, HostKeyData};

use crate::maps::EGRESS_DNS_SCRATCH;
use message::Records;
use name::{KeyWriter, Sets, Walk};

pub const DNS_PORT: u16 = 53;
/// Index mask of the message buffer (its size is a power of two).
pub(super) const MSG_MASK: usize = MSG_BUFFER - 1;
pub(super) const MSG_BUFFER: usize = 2048;
pub(super) const HEADER_LEN: usize = 12;
/// Answer records read (a power of two); an answer with more is unreadable.
pub const MAX_ANSWERS: usize = egress_common::dns::MAX_ANSWER_RECORDS;
/// Records read by one run of the records program.
pub(super) const RECORDS_PER_RUN: u32 = 8;
/// CNAME records of one answer (a power of two); more make it unreadable.
pub const MAX_CNAMES: usize = egress_common::dns::MAX_CNAME_RECORDS;
/// CNAME targets looked up by one run of the names program.
pub(super) const NAMES_PER_RUN: u32 = 4;
/// Addresses recorded by one run of the learning program.
pub(super) const ADDRESSES_PER_RUN: u32 = 8;
/// Labels of one name; more make the name unreadable (real names have a handful).
pub const MAX_LABELS: usize = egress_common::dns::MAX_NAME_LABELS;
/// Longest label: its length byte has the two top bits clear.
pub(super) const MAX_LABEL: usize = 63;
/// Labels plus compression pointers followed while walking one name.
pub(super) const MAX_NAME_STEPS: usize = 48;

pub(super) const TYPE_A: u16 = 1;
pub(super) const TYPE_CNAME: u16 = 5;
pub(super) const TYPE_AAAA: u16 = 28;
pub(super) const CLASS_IN: u16 = 1;

/// Per-CPU working memory: far more than the 512 bytes of stack a program has. `header` and
/// `msg` are adjacent so that one ring buffer output sends both.
#[repr(C)]
pub struct Scratch {
    header: DnsEventHeader,
    msg: [u8; MSG_BUFFER],
    key: Key<HostKeyData>,
    /// Room for a label copied at the key's last byte (the copy's length is bounded, not exact,
    /// as far as the verifier knows).
    key_slack: [u8; 64],
    /// Offset of the DNS message in the packet.
    msg_at: u32,
    /// Offset of the TCP or UDP payload, and which of the two.
    payload_at: u32,
    protocol: u8,
    /// Offset and length of each label of the name being read, in wire order.
    label_at: [u16; MAX_LABELS],
    label_len: [u8; MAX_LABELS],
    /// A and AAAA records of the answer: address, IP version, TTL in seconds.
    addrs: [[u8; 16]; MAX_ANSWERS],
    addr_version: [u8; MAX_ANSWERS],
    addr_ttl: [u32; MAX_ANSWERS],
    /// Loop states (see the module docs for why they live here).
    records: Records,
    /// Offset just past the name last walked or skipped.
    cursor: u32,
    sets: Sets,
    /// The generation's parity byte, and whether the workload has host rules, for the
    /// later stages.
    parity_byte: u8,
    host_rules: bool,
    walk: Walk,
    key_writer: KeyWriter,
}

/// Outcomes of the stages.
pub const DONE: u32 = 0;
pub const NOTHING: u32 = 1;
pub const UNREADABLE: u32 = 2;
pub const LEARNED: u32 = 3;
/// The stage has more to read: run it again.
pub const MORE: u32 = 4;

pub(super) struct Unreadable;

/// Keeps what the ingress program found about a packet from port 53 for the stages: where
/// its TCP or UDP payload starts, the generation's parity byte, and whether the workload has
/// host rules. False if the scratch value is out of reach.
pub fn prepare(payload_at: u32, protocol: u8, parity_byte: u8, host_rules: bool) -> bool {
    let Ok(scratch) = scratch_mut() else {
        return false;
    };
    store(&mut scratch.payload_at, payload_at);
    store(&mut scratch.protocol, protocol);
    store(&mut scratch.parity_byte, parity_byte);
    store(&mut scratch.host_rules, host_rules);
    true
}

/// Stage 1 ([`prepare`] first): the message and its question. `DONE` means: go on with the
/// records.
#[inline(never)]
pub fn start(ctx: &aya_ebpf::programs::SkBuffContext) -> u32 {
    let outcome = message::read_message(ctx);
    if outcome != DONE {
        return outcome;
    }
    let parity_byte = scratch_ref().map_or(0, |s| load(&s.parity_byte));
    message::read_question(ctx, parity_byte)
}

/// Stage 2, run until it is `DONE`: the next answer records.
pub fn records() -> u32 {
    message::read_records()
}

/// Stage 3, run until it is `DONE`: the next CNAME targets' names.
pub fn names(ctx: &aya_ebpf::programs::SkBuffContext) -> u32 {
    let parity_byte = scratch_ref().map_or(0, |s| load(&s.parity_byte));
    name::read_cnames(ctx, parity_byte)
}

/// Stage 4, run until it is `DONE`: records the next addresses.
pub fn learn(ctx: &aya_ebpf::programs::SkBuffContext) -> u32 {
    learn::learn_addresses(ctx)
}

/// The end: counts the answer and tells the agent. `LEARNED` or `NOTHING`.
pub fn finish(ctx: &aya_ebpf::programs::SkBuffContext) -> u32 {
    learn::report(ctx)
}

/// Whether the workload whose answer is being read has host rules (set by [`prepare`]).
pub fn host_rules() -> bool {
    scratch_ref().is_ok_and(|s| load(&s.host_rules))
}

pub(super) fn scratch_mut() -> Result<&'static mut Scratch, Unreadable> {
    let scratch = EGRESS_DNS_SCRATCH.get_ptr_mut(0).ok_or(Unreadable)?;
    // SAFETY: a per-CPU map value; nothing else runs on this CPU while the program does.
    Ok(unsafe { &mut *scratch })
}

pub(super) fn scratch_ref() -> Result<&'static Scratch, Unreadable> {
    scratch_mut().map(|s| &*s)
}

/// Loads loop state from the scratch value so that the verifier sees an unknown value.
#[inline(always)]
pub(super) fn load<T: Copy>(from: &T) -> T {
    // SAFETY: a valid reference.
    unsafe { core::ptr::read_volatile(from) }
}

#[inline(always)]
pub(super) fn store<T: Copy>(to: &mut T, value: T) {
    // SAFETY: a valid reference.
    unsafe { core::ptr::write_volatile(to, value) }
}

#[inline(always)]
pub(super) fn be16(msg: &[u8; MSG_BUFFER], at: usize) -> u16 {
    u16::from_be_bytes([msg[at & MSG_MASK], msg[(at + 1) & MSG_MASK]])
}

#[inline(always)]
pub(super) fn be32(msg: &[u8; MSG_BUFFER], at: usize) -> u32 {
    u32::from_be_bytes([
        msg[at & MSG_MASK],
        msg[(at + 1) & MSG_MASK],
        msg[(at + 2) & MSG_MASK],
        msg[(at + 3) & MSG_MASK],
    ])
}

// Indexes are masked with `N - 1`.
const _: () = assert!(MAX_ANSWERS.is_power_of_two() && MAX_CNAMES.is_power_of_two());
const _: () = assert!(MAX_LABELS.is_power_of_two());
