//! Hostname rules: what the kernel learns from DNS answers, and how names are looked up.
//!
//! # How a name rule decides a packet
//!
//! 1. The ingress program reads every DNS response (UDP or TCP source port 53) delivered to
//!    a governed socket, before the socket can see it. For the question name and every CNAME
//!    target in the answer it looks the name up in [`crate::maps::HOSTNAMES`], a longest-prefix
//!    trie of [reversed names](host_key), and gets a [`NameSetId`]: the set of host patterns
//!    (exact names and `*.` wildcards, of every loaded policy) that match that name.
//! 2. If any name matched a pattern, every A and AAAA address of the answer is recorded in
//!    [`crate::maps::LEARNED`] under the receiving socket's cgroup, with the sets of all the
//!    names of the answer and an expiry (the records' TTL plus a grace). Sets accumulate
//!    until the entry expires, so an address learned for two names carries both, and the
//!    deny-beats-allow order of the policy holds across names.
//! 3. When a packet or a `connect()` of that cgroup goes to a learned address, each set is
//!    looked up with the scope in [`crate::maps::NAME_CLASSES`] to a name class: the rules
//!    of the scope whose host entries hold a pattern of the set. Its decision for the
//!    protocol and port (from [`crate::maps::PORT_TABLES`], like an address class's) is merged into
//!    the address decision with [`crate::Decision::merge`].
//!
//! Set ids are derived from the patterns themselves, not from a generation, so learned
//! entries keep their meaning across policy reloads and agent restarts.

/// Id of a set of host patterns; 0 means "no set". Derived from the sorted, canonical
/// pattern strings by the agent ([`crate::maps::HOSTNAMES`] values).
pub type NameSetId = u64;

/// Most name sets one learned address carries. A DNS answer whose names would add more is
/// not delivered when the receiving workload has host rules (counted in
/// [`crate::counter::DNS_DROPPED`]).
pub const MAX_NAME_SETS: usize = 4;

/// Bytes of a [`HostKeyData`]: the most the kernel allows for an LPM trie key's data.
pub const HOST_KEY_BYTES: usize = 256;

/// Data of a [`crate::maps::HOSTNAMES`] key:
/// - byte 0: the generation's parity, 0 or 1 (the trie is double-buffered like the others);
/// - then the name's labels from the last (the top-level domain) to the first, each
///   lowercased (ASCII) and followed by `.`: `api.Example.COM` is `com.example.api.`;
/// - then a 0 byte that ends an exact name.
///
/// A lookup uses the full name with its 0 byte. An exact pattern is stored with the same
/// length; a wildcard `*.example.com` is stored as the prefix `com.example.` (no 0 byte), so
/// it covers every name with one or more labels before `example.com`, and the compiler adds
/// the exact entry `com.example.` + 0 so that `example.com` itself is not covered by it.
/// A DNS name of at most 255 wire bytes always fits (254 + parity + end byte).
pub type HostKeyData = [u8; HOST_KEY_BYTES];

/// Prefix length in bits of a key whose data (parity byte included) has `bytes` bytes.
#[inline(always)]
pub const fn host_key_bits(bytes: usize) -> u32 {
    (bytes * 8) as u32
}

/// Writes the [`HostKeyData`] of `labels` (in the order they are written, `api`, `example`,
/// `com`) for an exact lookup; returns the number of bytes used, end byte included, or `None`
/// when the name cannot be a pattern's name: too long, an empty label, or a label holding a
/// `.` or a 0 byte (a name no pattern can match). The kernel builds the same bytes from the
/// wire format.
pub fn host_key<'a>(
    parity_byte: u8,
    labels: impl DoubleEndedIterator<Item = &'a [u8]>,
    out: &mut HostKeyData,
) -> Option<usize> {
    out[0] = parity_byte;
    let mut at = 1;
    for label in labels.rev() {
        if label.is_empty() || label.iter().any(|b| *b == b'.' || *b == 0) {
            return None;
        }
        if at + label.len() + 1 >= HOST_KEY_BYTES {
            return None;
        }
        for b in label {
            out[at] = b.to_ascii_lowercase();
            at += 1;
        }
        out[at] = b'.';
        at += 1;
    }
    out[at] = 0;
    Some(at + 1)
}

/// Key of [`crate::maps::NAME_CLASSES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NameClassKey {
    /// Egress scope id (with the parity bit).
    pub scope: u32,
    pub _pad: u32,
    pub set: NameSetId,
}

/// Key of [`crate::maps::LEARNED`]: an address a cgroup was told by DNS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    /// The cgroup of the socket that received the answer (and of the one that connects).
    pub cgroup_id: u64,
    /// IPv4 addresses in the first four bytes.
    pub addr: [u8; 16],
    /// 4 or 6.
    pub ip_version: u8,
    pub _pad: [u8; 7],
}

/// Value of [`crate::maps::LEARNED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// `bpf_ktime_get_boot_ns` after which the entry no longer counts.
    pub expires_boot_ns: u64,
    /// Name sets of every name the address was learned for, 0 in unused slots.
    pub sets: [NameSetId; MAX_NAME_SETS],
}

/// The one entry of [`crate::maps::DNS_CONFIG`], written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Added to every record's TTL: how long a learned address outlives its record.
    pub grace_ns: u64,
    /// Longest time an address counts as learned, whatever the TTL says.
    pub max_ttl_ns: u64,
}

/// Answer records the kernel reads (CNAME, A, AAAA and any other); an answer with more is
/// unreadable.
pub const MAX_ANSWER_RECORDS: usize = 32;
/// CNAME records of one answer the kernel follows; more make it unreadable.
pub const MAX_CNAME_RECORDS: usize = 8;
/// Labels of one name; a name with more is unreadable.
pub const MAX_NAME_LABELS: usize = 32;

/// Largest DNS message the kernel reads (and sends to the agent). Larger answers are not
/// learned from, and not delivered to workloads with host rules.
pub const MAX_MESSAGE: usize = 2047;

/// Header of a record in [`crate::maps::DNS_EVENTS`], followed by `len` bytes of the DNS
/// message as the workload received it, so the agent can name learned addresses in audit
/// records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsEventHeader {
    pub boot_ns: u64,
    pub cgroup_id: u64,
    /// Length of the message that follows.
    pub len: u32,
    /// 1 when the kernel learned addresses from it (a name matched a host pattern).
    pub learned: u8,
    pub _pad: [u8; 3],
}
