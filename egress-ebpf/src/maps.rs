//! Every map of the program, with its key, value and purpose. The agent fills the policy maps;
//! see `egress_common` for the lookup chain they form.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use egress_common::{
    Addr4Data, Addr6Data, CgroupKey, Decision, PortData, RuleHits, RuntimeConfig, ScopeKey,
    ScopeValue, capacity, counter,
    dns::{DnsConfig, HostKeyData, Learned, LearnedKey, NameClassKey, NameSetId},
    event::{FlowKey, FlowState, SocketOwner},
    ports::{PortTable, PortTableKey},
};

use crate::{dns::Scratch, names::LookupKeys};

/// One entry: the active generation and its parity. Written last by the agent on every
/// reload; that single store is what switches policies.
#[map]
static EGRESS_CONFIG: Array<RuntimeConfig> = Array::with_max_entries(1, 0);

/// (cgroup id, parity) → cgroup class. Holds the cgroups that selectors name; their
/// descendants inherit through the ancestor walk in `scope.rs`.
#[map]
pub static EGRESS_CGROUPS: HashMap<CgroupKey, u32> =
    HashMap::with_max_entries(capacity::CGROUP_CLASSES, 0);

/// (cgroup class, uid or ANY_UID) → scope id and the scope's default decision.
#[map]
pub static EGRESS_SCOPES: HashMap<ScopeKey, ScopeValue> =
    HashMap::with_max_entries(capacity::SCOPES, 0);

/// (scope, IPv4 prefix) → address class, by longest-prefix match.
#[map]
pub static EGRESS_ADDR4: LpmTrie<Addr4Data, u32> = LpmTrie::with_max_entries(capacity::ADDR4, 0);

/// (scope, IPv6 prefix) → address class, by longest-prefix match.
#[map]
pub static EGRESS_ADDR6: LpmTrie<Addr6Data, u32> = LpmTrie::with_max_entries(capacity::ADDR6, 0);

/// (address class, protocol) → the decisions of the class's runs of ports for the
/// protocol (`egress_common::ports`). Allocated as entries are written.
#[map]
pub static EGRESS_PORT_TABLES: HashMap<PortTableKey, PortTable> =
    HashMap::with_max_entries(capacity::PORT_TABLES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// (address class, protocol, port prefix) → decision, by longest-prefix match: only for the
/// classes and protocols whose table says its runs did not fit.
#[map]
pub static EGRESS_PORTS: LpmTrie<PortData, Decision> =
    LpmTrie::with_max_entries(capacity::PORTS, 0);

/// Decision events for the agent.
#[map]
pub static EGRESS_EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Flows already reported, so a connection or UDP flow is one event, not one per packet.
/// LRU: an evicted flow is reported again, which costs an event, never a verdict.
#[map]
pub static EGRESS_FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(capacity::FLOWS, 0);

/// Socket cookie → the process that created it, or last connected or sent to an address
/// with it, and its TCP connection's report state and decision (`verdict_cache.rs`).
/// LRU: a socket evicted while still in use loses its attribution, and its later segments
/// take the full lookup chain; never its verdict.
#[map]
pub static EGRESS_SOCKETS: LruHashMap<u64, SocketOwner> =
    LruHashMap::with_max_entries(capacity::SOCKETS, 0);

/// (socket cookie, peer address, peer port, UDP) of every peer a UDP socket of a governed
/// workload sent to, while some policy restricts inbound traffic: a datagram from such a
/// peer is a reply, not a new inbound flow. LRU: a peer evicted after long silence is judged
/// as new again.
#[map]
pub static EGRESS_PEERS: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(capacity::PEERS, 0);

/// Per-CPU hit counters of each rule, indexed by rule id (0: decisions no rule made).
#[map]
pub static EGRESS_RULE_HITS: PerCpuArray<RuleHits> =
    PerCpuArray::with_max_entries(capacity::RULE_HITS, 0);

/// (parity, reversed lowercase name) → the set of host patterns matching names under that
/// key, by longest-prefix match (`egress_common::dns::HostKeyData`). Written by the agent.
#[map]
pub static EGRESS_HOSTNAMES: LpmTrie<HostKeyData, NameSetId> =
    LpmTrie::with_max_entries(capacity::HOSTNAMES, 0);

/// (scope, name set) → name class: its port tables decide packets to addresses learned for
/// names of the set. Written by the agent.
#[map]
pub static EGRESS_NAME_CLASSES: HashMap<NameClassKey, u32> =
    HashMap::with_max_entries(capacity::NAME_CLASSES, 0);

/// (cgroup, address) → the name sets it was answered for, and until when. Written by the
/// ingress program from DNS answers, before they are delivered. LRU: an evicted address is
/// judged by address rules alone until it is answered again (the agent reports evictions).
#[map]
pub static EGRESS_LEARNED: LruHashMap<LearnedKey, Learned> =
    LruHashMap::with_max_entries(capacity::LEARNED, 0);

/// One entry: TTL grace and cap for learned addresses. Written by the agent at start.
#[map]
pub static EGRESS_DNS_CONFIG: Array<DnsConfig> = Array::with_max_entries(1, 0);

/// DNS answers read by the ingress program, for the audit log's names.
#[map]
pub static EGRESS_DNS_EVENTS: RingBuf = RingBuf::with_byte_size(capacity::DNS_EVENTS_BYTES, 0);

/// The DNS answer reader's programs (`egress_common::dns_slots`): the ingress program
/// tail-calls slot 0, which goes on to the others. Filled by the agent after loading.
#[map]
pub static EGRESS_DNS_PROGRAM: ProgramArray =
    ProgramArray::with_max_entries(egress_common::dns_slots::COUNT, 0);

/// Per-CPU working memory of `dns.rs`; not shared with the agent.
#[map]
pub static EGRESS_DNS_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU keys of the learned-address lookups of `names.rs`; not shared with the agent.
#[map]
pub static EGRESS_NAME_KEYS: PerCpuArray<LookupKeys> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU working memory of `process::record`: a new owner entry is built here, not on
/// the stack of the socket hooks, whose call chains are near the verifier's 512 bytes.
#[map]
pub static EGRESS_OWNER_SCRATCH: PerCpuArray<SocketOwner> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `egress_common::counter`.
#[map]
pub static EGRESS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

pub fn config() -> Option<RuntimeConfig> {
    EGRESS_CONFIG.get(0).copied()
}
