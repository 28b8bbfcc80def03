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
//! 5. [`maps::PORTS`] maps (address class, protocol, port prefix) to the final [`Decision`].
//!
//! Every id the compiler hands out (cgroup class, scope, address class) carries the
//! generation's parity in its top bit ([`PARITY_BIT`]), so the entries of the next generation
//! are written beside the active ones and one store to [`maps::CONFIG`] switches all of them
//! at once: no packet is ever judged by half of an old and half of a new policy.
#![no_std]

pub mod event;
pub mod keys;

pub use event::{ConnectionEvent, Direction};
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
    /// `LpmTrie<PortData, Decision>`: (address class, protocol, port prefix) to decision.
    pub const PORTS: &str = "EGRESS_PORTS";
    /// `RingBuf` of [`crate::ConnectionEvent`].
    pub const EVENTS: &str = "EGRESS_EVENTS";
    /// `LruHashMap<FlowKey, FlowState>`: flows already reported, so one connection is one event.
    pub const FLOWS: &str = "EGRESS_FLOWS";
    /// `PerCpuArray<u64>` indexed by [`crate::counter`].
    pub const COUNTERS: &str = "EGRESS_COUNTERS";
}

/// Name of the egress program in the object file.
pub const EGRESS_PROGRAM: &str = "egress_skb";

/// Capacities. The address tries hold two generations at once during a reload.
pub mod capacity {
    pub const CGROUP_CLASSES: u32 = 65_536;
    pub const SCOPES: u32 = 65_536;
    pub const ADDR4: u32 = 2_200_000;
    pub const ADDR6: u32 = 2_200_000;
    pub const PORTS: u32 = 1_048_576;
    pub const FLOWS: u32 = 65_536;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 23;
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
    pub const COUNT: u32 = 5;
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
    pub _pad: u8,
}

impl Decision {
    /// The decision for a packet that no policy governs.
    pub const UNGOVERNED: Self = Self {
        rule: NO_RULE,
        audit_rule: NO_RULE,
        verdict: verdict::ALLOW,
        audit_verdict: verdict::NONE,
        log: 0,
        _pad: 0,
    };
}

/// Value of [`maps::SCOPES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeValue {
    /// Scope id (with the parity bit), the first part of the address keys.
    pub scope: u32,
    pub _pad: u32,
    /// Decision when no address or port entry matches.
    pub default: Decision,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, and every bit pattern is valid.
    unsafe impl aya::Pod for super::RuntimeConfig {}
    unsafe impl aya::Pod for super::Decision {}
    unsafe impl aya::Pod for super::ScopeValue {}
    unsafe impl aya::Pod for super::CgroupKey {}
    unsafe impl aya::Pod for super::ScopeKey {}
    unsafe impl aya::Pod for super::event::FlowKey {}
    unsafe impl aya::Pod for super::event::FlowState {}
}
