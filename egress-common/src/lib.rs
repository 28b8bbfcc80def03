//! Types shared by the egress kernel program and its userspace agent.
//!
//! Everything here is `#[repr(C)]` and free of padding the compiler could fill with garbage:
//! the kernel hashes map keys byte for byte, so every key spells out its padding as a field
//! that both sides set to zero.
//!
//! # How a packet is judged
//!
//! The compiler in the agent flattens all loaded policies ahead of time so that the kernel
//! program does a fixed number of lookups per packet, whatever the number of rules:
//!
//! 1. [`maps::CONFIG`] gives the active generation and its parity (the double-buffer slot).
//! 2. [`maps::CGROUP_CLASSES`] maps the packet's cgroup, or its nearest ancestor listed there,
//!    to a cgroup class: the set of cgroup selectors that contain it.
//! 3. [`maps::SCOPES`] maps (cgroup class, socket uid) to a scope id, the set of policies that
//!    apply, and the decision when nothing more specific matches (the policies' defaults).
//! 4. [`maps::ADDR4`] / [`maps::ADDR6`] map (scope, destination prefix) to an address class by
//!    longest-prefix match: the set of rules whose destinations contain the address.
//! 5. [`maps::PORT_TABLES`] maps (address class, protocol) to the runs of ports the class's
//!    rules divide the protocol's ports into, each with its final [`Decision`] ([`ports`]).
//!    A class with more runs than a table holds keeps them in [`maps::PORTS`] instead:
//!    (address class, protocol, port prefix) to the decision, by longest-prefix match.
//!
//! Every id the compiler hands out (cgroup class, scope, address class) carries the
//! generation's parity in its top bit ([`PARITY_BIT`]), so the entries of the next generation
//! are written beside the active ones and one store to [`maps::CONFIG`] switches all of them
//! at once: no packet is ever judged by half of an old and half of a new policy.
#![cfg_attr(not(test), no_std)]

pub mod dns;
pub mod event;
pub mod keys;
pub mod ports;

pub use event::{ConnectionEvent, Direction, SocketOwner};
pub use keys::{Addr4Data, Addr6Data, CgroupKey, PortData, ScopeKey};

/// Names of the maps, shared so the agent and the kernel program cannot disagree.
pub mod maps {
    /// `Array<RuntimeConfig>` with one entry: the active generation.
    pub const CONFIG: &str = "EGRESS_CONFIG";
    /// `HashMap<CgroupKey, u32>`: cgroup id to cgroup class.
    pub const CGROUP_CLASSES: &str = "EGRESS_CGROUPS";
    /// `HashMap<ScopeKey, ScopeValue>`: (cgroup class, uid) to scope.
    pub const SCOPES: &str = "EGRESS_SCOPES";
    /// `LpmTrie<Addr4Data, u32>`: (scope, IPv4 prefix) to address class.
    pub const ADDR4: &str = "EGRESS_ADDR4";
    /// `LpmTrie<Addr6Data, u32>`: (scope, IPv6 prefix) to address class.
    pub const ADDR6: &str = "EGRESS_ADDR6";
    /// `HashMap<PortTableKey, PortTable>`: (address class, protocol) to the decisions of
    /// its runs of ports ([`crate::ports`]).
    pub const PORT_TABLES: &str = "EGRESS_PORT_TABLES";
    /// `LpmTrie<PortData, Decision>`: (address class, protocol, port prefix) to decision, for
    /// the protocols whose runs do not fit a port table.
    pub const PORTS: &str = "EGRESS_PORTS";
    /// `RingBuf` of [`crate::ConnectionEvent`].
    pub const EVENTS: &str = "EGRESS_EVENTS";
    /// `LruHashMap<FlowKey, FlowState>`: flows already reported, so one connection is one event.
    pub const FLOWS: &str = "EGRESS_FLOWS";
    /// `PerCpuArray<u64>` indexed by [`crate::counter`].
    pub const COUNTERS: &str = "EGRESS_COUNTERS";
    /// `LruHashMap<u64, SocketOwner>`: socket cookie → the process that created or connected
    /// it, and its TCP connection's report state and decision.
    pub const SOCKETS: &str = "EGRESS_SOCKETS";
    /// `PerCpuArray<RuleHits>` indexed by rule id: what each rule decided.
    pub const RULE_HITS: &str = "EGRESS_RULE_HITS";
    /// `LruHashMap<FlowKey, u8>`: UDP peers each socket has sent to, so that their replies
    /// are not mistaken for new inbound flows.
    pub const PEERS: &str = "EGRESS_PEERS";
    /// `LpmTrie<HostKeyData, NameSetId>`: (parity, reversed name) to the set of host
    /// patterns that match the name ([`crate::dns`]).
    pub const HOSTNAMES: &str = "EGRESS_HOSTNAMES";
    /// `HashMap<NameClassKey, u32>`: (scope, name set) to the name class whose `PORTS`
    /// entries decide packets to addresses learned for those names.
    pub const NAME_CLASSES: &str = "EGRESS_NAME_CLASSES";
    /// `LruHashMap<LearnedKey, Learned>`: addresses each cgroup learned from DNS answers.
    pub const LEARNED: &str = "EGRESS_LEARNED";
    /// `Array<DnsConfig>` with one entry.
    pub const DNS_CONFIG: &str = "EGRESS_DNS_CONFIG";
    /// `RingBuf` of DNS answers ([`crate::dns::DnsEventHeader`] + message).
    pub const DNS_EVENTS: &str = "EGRESS_DNS_EVENTS";
    /// `ProgramArray`: slot 0 holds [`crate::programs::DNS`], which the ingress program
    /// tail-calls for DNS answers. Pinned, so that the slot outlives the agent that filled it.
    pub const DNS_PROGRAM: &str = "EGRESS_DNS_PROGRAM";

    /// Every map, for pinning.
    pub const ALL: [&str; 19] = [
        CONFIG,
        CGROUP_CLASSES,
        SCOPES,
        ADDR4,
        ADDR6,
        PORT_TABLES,
        PORTS,
        EVENTS,
        FLOWS,
        COUNTERS,
        SOCKETS,
        RULE_HITS,
        PEERS,
        HOSTNAMES,
        NAME_CLASSES,
        LEARNED,
        DNS_CONFIG,
        DNS_EVENTS,
        DNS_PROGRAM,
    ];
}

/// Names of the programs in the object file, and where each attaches on the cgroup root.
pub mod programs {
    /// `cgroup_skb/egress`: judges every outbound packet (the backstop).
    pub const EGRESS: &str = "egress_skb";
    /// `cgroup_skb/ingress`: drops packets that would open new inbound connections or flows
    /// to outbound-only workloads.
    pub const INGRESS: &str = "egress_ingress_skb";
    /// `cgroup/sock_create`: records who created each socket.
    pub const SOCK_CREATE: &str = "egress_sock_create";
    /// `cgroup/sock_release`: forgets a closed socket's owner.
    pub const SOCK_RELEASE: &str = "egress_sock_release";
    /// `cgroup/connect4` and `connect6`: reject denied destinations at `connect()` with EPERM.
    pub const CONNECT4: &str = "egress_connect4";
    pub const CONNECT6: &str = "egress_connect6";
    /// `cgroup/sendmsg4` and `sendmsg6`: the same for unconnected `sendto()`/`sendmsg()`.
    pub const SENDMSG4: &str = "egress_sendmsg4";
    pub const SENDMSG6: &str = "egress_sendmsg6";
    /// `cgroup_skb/ingress`, never attached: reads DNS answers, reached by tail call from
    /// [`INGRESS`] through [`crate::maps::DNS_PROGRAM`].
    pub const DNS: &str = "egress_dns_skb";
    /// The next stages of the DNS reader, chained by tail calls ([`crate::dns_slots`]).
    pub const DNS_RECORDS: &str = "egress_dns_records";
    pub const DNS_NAMES: &str = "egress_dns_names";
    pub const DNS_LEARN: &str = "egress_dns_learn";
}

/// Slots of [`maps::DNS_PROGRAM`].
pub mod dns_slots {
    /// [`crate::programs::DNS`]: the message and its question.
    pub const START: u32 = 0;
    /// [`crate::programs::DNS_RECORDS`]: answer records, a few per run.
    pub const RECORDS: u32 = 1;
    /// [`crate::programs::DNS_NAMES`]: CNAME targets' names, a few per run.
    pub const NAMES: u32 = 2;
    /// [`crate::programs::DNS_LEARN`]: recording the addresses, then the event.
    pub const LEARN: u32 = 3;
    pub const COUNT: u32 = 4;
    /// Program and slot, in the order the agent fills them.
    pub const PROGRAMS: [(&str, u32); 4] = [
        (crate::programs::DNS, START),
        (crate::programs::DNS_RECORDS, RECORDS),
        (crate::programs::DNS_NAMES, NAMES),
        (crate::programs::DNS_LEARN, LEARN),
    ];
}

/// Name of the egress program in the object file.
pub const EGRESS_PROGRAM: &str = programs::EGRESS;

/// Capacities. The address tries hold two generations at once during a reload.
pub mod capacity {
    pub const CGROUP_CLASSES: u32 = 65_536;
    pub const SCOPES: u32 = 65_536;
    pub const ADDR4: u32 = 2_200_000;
    pub const ADDR6: u32 = 2_200_000;
    /// Allocated as used (`BPF_F_NO_PREALLOC`): a preallocated map of this many tables
    /// would pin 140 MiB whatever the policy (its hash buckets still take 8 MiB).
    pub const PORT_TABLES: u32 = 524_288;
    pub const PORTS: u32 = 1_048_576;
    pub const FLOWS: u32 = 65_536;
    pub const SOCKETS: u32 = 65_536;
    pub const PEERS: u32 = 131_072;
    /// Rule ids the hit counters cover; rules with higher ids are decided but not counted.
    pub const RULE_HITS: u32 = 65_536;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 23;
    /// Unread event bytes past which an event wakes the agent's reader at once. Below it the
    /// reader finds events at its next read, every `EVENT_READ_INTERVAL` of the agent: at
    /// the agent's measured 500,000 events a second, an eighth of the buffer is about 10 ms
    /// of events, so a burst wakes the reader long before the buffer fills.
    pub const EVENTS_WAKE_BYTES: u32 = EVENTS_BYTES / 8;
    /// Host pattern trie entries, both generations.
    pub const HOSTNAMES: u32 = 262_144;
    pub const NAME_CLASSES: u32 = 262_144;
    /// Learned addresses (cgroup, address); the least recently used is evicted when full.
    pub const LEARNED: u32 = 65_536;
    pub const DNS_EVENTS_BYTES: u32 = 1 << 22;
}

/// Deepest cgroup level whose ancestors the kernel program checks against
/// [`maps::CGROUP_CLASSES`]. Deeper cgroups still inherit from their first 32 ancestors.
pub const MAX_CGROUP_LEVEL: i32 = 32;

/// Top bit of every compiled id: the parity of the generation that wrote it.
pub const PARITY_BIT: u32 = 1 << 31;

/// `uid` of a [`ScopeKey`] that matches any uid not listed on its own.
pub const ANY_UID: u32 = u32::MAX;

/// Verdict codes of a [`Decision`].
pub mod verdict {
    /// No decision (an audit verdict when no audit policy applies).
    pub const NONE: u8 = 0;
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

/// Rule id meaning "no rule decided" (no policy applies, or an allow policy's default).
pub const NO_RULE: u32 = 0;

/// Per-CPU counter indexes in [`maps::COUNTERS`].
pub mod counter {
    pub const PACKETS_ALLOWED: u32 = 0;
    pub const PACKETS_DENIED: u32 = 1;
    /// Packets an audit policy would have dropped.
    pub const PACKETS_AUDIT_DENIED: u32 = 2;
    /// Events that could not be reserved in the ring buffer.
    pub const EVENTS_LOST: u32 = 3;
    /// Packets whose headers could not be read (judged by the scope default, see the program).
    pub const MALFORMED: u32 = 4;
    /// `connect()` and `sendto()` calls rejected with EPERM before any packet was built.
    pub const CALLS_DENIED: u32 = 5;
    /// DNS answers read by the ingress program.
    pub const DNS_ANSWERS: u32 = 6;
    /// Addresses recorded in (or refreshed in) the learned map.
    pub const DNS_LEARNED: u32 = 7;
    /// DNS answers not delivered: they could not be read completely (too large, split
    /// across TCP segments, more records or names than the program reads) or their addresses
    /// could not be recorded, and the receiving workload has host rules.
    pub const DNS_DROPPED: u32 = 8;
    /// DNS answers that could not be read, delivered because the workload has no host rules.
    pub const DNS_UNREAD: u32 = 9;
    /// Addresses added to the learned map as new keys. Less the entries it holds, this is
    /// what the LRU evicted (nothing else removes entries).
    pub const DNS_NEW: u32 = 10;
    pub const COUNT: u32 = 11;
}

/// The single entry of [`maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Generation of the active policy; 0 until the agent loaded one.
    pub generation: u64,
    /// Parity of the active generation: 0 or [`PARITY_BIT`].
    pub parity: u32,
    /// [`config_flags`].
    pub flags: u32,
}

pub mod config_flags {
    /// Some policy selects cgroups: the program walks the packet's cgroup ancestry.
    pub const CGROUP_SELECTORS: u32 = 1;
    /// Some policy selects uids: scopes are looked up by uid before the any-uid entry.
    pub const UID_SELECTORS: u32 = 2;
    /// Some policy restricts inbound traffic (`spec.inbound: deny` or `spec.ingress` rules):
    /// the ingress program judges new inbound flows, and the egress program records the UDP
    /// peers sockets send to, so that their replies are known.
    pub const INGRESS: u32 = 4;
    /// Some policy has host rules: packets to addresses learned from DNS are looked up in
    /// [`crate::maps::LEARNED`].
    pub const HOSTS: u32 = 8;
}

/// Bits of [`Decision::matched`]: whether a verdict came from a matching rule or from the
/// policies' defaults, which [`Decision::merge`] needs.
pub mod matched {
    /// `verdict` and `rule` are those of a matching enforce rule.
    pub const ENFORCE_RULE: u8 = 1;
    /// `audit_verdict` and `audit_rule` are those of a matching audit rule.
    pub const AUDIT_RULE: u8 = 2;
}

/// Bits of [`ScopeValue::flags`].
pub mod scope_flags {
    /// Some applicable policy has `log: all`.
    pub const LOG_ALL: u32 = 1;
    /// Some applicable enforce policy has `log: deny`.
    pub const LOG_DENY_ENFORCE: u32 = 2;
    /// Some applicable audit policy has `log: deny`.
    pub const LOG_DENY_AUDIT: u32 = 4;
    /// Some applicable policy has an egress rule with a host entry: DNS answers this scope
    /// cannot read are dropped rather than delivered unlearned.
    pub const HOST_RULES: u32 = 8;
}

/// What the program does with a packet, and what it reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Id of the deciding rule ([`NO_RULE`] when none did).
    pub rule: u32,
    /// Id of the rule that decided the audit verdict.
    pub audit_rule: u32,
    /// [`verdict`] of the enforce policies: [`verdict::ALLOW`] or [`verdict::DENY`].
    pub verdict: u8,
    /// [`verdict`] of the audit policies, [`verdict::NONE`] when none applies.
    pub audit_verdict: u8,
    /// 1 when the decision is to be reported as an event (the policies' `log` settings).
    pub log: u8,
    /// [`matched`] bits.
    pub matched: u8,
}

impl Decision {
    /// The decision for a packet that no policy governs.
    pub const UNGOVERNED: Self = Self {
        rule: NO_RULE,
        audit_rule: NO_RULE,
        verdict: verdict::ALLOW,
        audit_verdict: verdict::NONE,
        log: 0,
        matched: 0,
    };

    /// The decision when the rules matched on two paths (a destination's address, and a name
    /// it was learned for) all match: `self` and `other` are the decisions of the same scope
    /// with each path's rules alone. Deny rules beat allow rules, the lowest id decides among
    /// equals, and the defaults decide only when no rule matched on either path, exactly as
    /// `docs/policy.md` orders rules. `log` is then recomputed from the scope's
    /// [`scope_flags`], since it follows the merged verdicts.
    #[inline(always)]
    pub fn merge(self, other: Self, scope_flags: u32) -> Self {
        let (verdict, rule, enforce_matched) = pick(
            (
                self.verdict,
                self.rule,
                self.matched & matched::ENFORCE_RULE != 0,
            ),
            (
                other.verdict,
                other.rule,
                other.matched & matched::ENFORCE_RULE != 0,
            ),
        );
        let (audit_verdict, audit_rule, audit_matched) = pick(
            (
                self.audit_verdict,
                self.audit_rule,
                self.matched & matched::AUDIT_RULE != 0,
            ),
            (
                other.audit_verdict,
                other.audit_rule,
                other.matched & matched::AUDIT_RULE != 0,
            ),
        );
        let log = scope_flags & scope_flags::LOG_ALL != 0
            || (verdict == verdict::DENY && scope_flags & scope_flags::LOG_DENY_ENFORCE != 0)
            || (audit_verdict == verdict::DENY && scope_flags & scope_flags::LOG_DENY_AUDIT != 0);
        Self {
            rule,
            audit_rule,
            verdict,
            audit_verdict,
            log: u8::from(log),
            matched: (if enforce_matched {
                matched::ENFORCE_RULE
            } else {
                0
            }) | (if audit_matched {
                matched::AUDIT_RULE
            } else {
                0
            }),
        }
    }
}

/// One mode's half of [`Decision::merge`]: (verdict, rule, from a rule).
#[inline(always)]
fn pick(a: (u8, u32, bool), b: (u8, u32, bool)) -> (u8, u32, bool) {
    match (a.2, b.2) {
        (true, true) if a.0 == b.0 => {
            if b.1 < a.1 {
                b
            } else {
                a
            }
        }
        (true, true) if b.0 == verdict::DENY => b,
        (true, true) => a,
        (false, true) => b,
        // Neither matched: both carry the same defaults.
        _ => a,
    }
}

/// What one rule decided on one CPU, in [`maps::RULE_HITS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleHits {
    pub packets_allowed: u64,
    pub packets_denied: u64,
    /// Connections and flows (first packets, and calls rejected at `connect()`/`sendmsg()`).
    pub connections_allowed: u64,
    pub connections_denied: u64,
    /// `bpf_ktime_get_coarse_ns` (`CLOCK_MONOTONIC`, to the tick) of the last connection or
    /// flow start (or rejected call) this rule decided on this CPU; later packets of a
    /// connection do not read the clock.
    pub last_hit_ns: u64,
}

/// Value of [`maps::SCOPES`].
///
/// The inbound direction uses the same address and port maps under ids of its own: the
/// address tries are keyed by `ingress_scope` and the packet's *source* address, and
/// `PORTS` by the resulting class and the *local* (destination) port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeValue {
    /// Scope id (with the parity bit), the first part of the egress address keys.
    pub scope: u32,
    /// Ingress scope id (with the parity bit), the first part of the ingress address keys.
    pub ingress_scope: u32,
    /// Egress decision when no address or port entry matches.
    pub default: Decision,
    /// Decision for a new inbound connection or flow when no ingress entry matches.
    /// `verdict::NONE` when no applicable policy restricts inbound traffic: the ingress
    /// program then passes everything for this scope without looking further.
    pub ingress_default: Decision,
    /// [`scope_flags`] of the egress direction.
    pub flags: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, and every bit pattern is valid.
    unsafe impl aya::Pod for super::RuntimeConfig {}
    unsafe impl aya::Pod for super::Decision {}
    unsafe impl aya::Pod for super::ScopeValue {}
    unsafe impl aya::Pod for super::RuleHits {}
    unsafe impl aya::Pod for super::CgroupKey {}
    unsafe impl aya::Pod for super::ScopeKey {}
    unsafe impl aya::Pod for super::ports::PortTableKey {}
    unsafe impl aya::Pod for super::ports::PortTable {}
    unsafe impl aya::Pod for super::event::FlowKey {}
    unsafe impl aya::Pod for super::event::FlowState {}
    unsafe impl aya::Pod for super::event::SocketOwner {}
    unsafe impl aya::Pod for super::dns::NameClassKey {}
    unsafe impl aya::Pod for super::dns::LearnedKey {}
    unsafe impl aya::Pod for super::dns::Learned {}
    unsafe impl aya::Pod for super::dns::DnsConfig {}
}
