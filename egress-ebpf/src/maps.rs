//! Every map of the program, with its key, value and purpose. The agent fills the policy maps;
//! see `egress_common` for the lookup chain they form.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use egress_common::{
    Addr4Data, Addr6Data, CgroupKey, Decision, PortData, RuleHits, RuntimeConfig, ScopeKey,
    ScopeValue, capacity, counter,
    event::{FlowKey, FlowState, SocketOwner},
};

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

/// (address class, protocol, port prefix) → decision, by longest-prefix match.
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
/// with it. LRU: a socket evicted while still in use loses its attribution, not its verdict.
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

/// Per-CPU counters, indexed by `egress_common::counter`.
#[map]
pub static EGRESS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

pub fn config() -> Option<RuntimeConfig> {
    EGRESS_CONFIG.get(0).copied()
}
