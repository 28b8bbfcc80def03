//! Which policies govern a socket: its cgroup class (from its cgroup or the nearest listed
//! ancestor) and its owner uid, looked up as a scope.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
    programs::SkBuffContext,
};
use egress_common::{
    ANY_UID, CgroupKey, MAX_CGROUP_LEVEL, RuntimeConfig, ScopeKey, ScopeValue, config_flags,
};

use crate::maps::{EGRESS_CGROUPS, EGRESS_SCOPES};

/// The scope of (cgroup class, uid), `None` when no policy governs it.
pub fn lookup(config: &RuntimeConfig, cgroup_class: u32, uid: u32) -> Option<ScopeValue> {
    // Without uid selectors every scope is keyed by ANY_UID: one lookup instead of two.
    if config.flags & config_flags::UID_SELECTORS != 0 {
        let exact = ScopeKey { cgroup_class, uid };
        // SAFETY: values of this map are plain data written whole by the agent.
        if let Some(scope) = unsafe { EGRESS_SCOPES.get(exact) } {
            return Some(*scope);
        }
    }
    let any = ScopeKey {
        cgroup_class,
        uid: ANY_UID,
    };
    // SAFETY: as above.
    unsafe { EGRESS_SCOPES.get(any) }.copied()
}

/// The id of the socket's own cgroup when a lookup needs it (cgroup selectors, host rules),
/// 0 otherwise: read once per packet and shared by the scope walk and the learned names.
pub fn skb_cgroup(ctx: &SkBuffContext, config: &RuntimeConfig) -> u64 {
    if config.flags & (config_flags::CGROUP_SELECTORS | config_flags::HOSTS) == 0 {
        return 0;
    }
    // SAFETY: reads the skb's socket cgroup.
    unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) }
}

/// [`skb_cgroup`] for the current task, in the socket hooks.
pub fn task_cgroup(config: &RuntimeConfig) -> u64 {
    if config.flags & (config_flags::CGROUP_SELECTORS | config_flags::HOSTS) == 0 {
        return 0;
    }
    // SAFETY: reads the current task's cgroup.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Cgroup class of the socket that sent a packet, whose own cgroup is `own` ([`skb_cgroup`]).
pub fn of_skb(ctx: &SkBuffContext, config: &RuntimeConfig, own: u64) -> u32 {
    walk(config, own, |level| {
        // SAFETY: reads the skb's socket cgroup; returns 0 past the cgroup's own level.
        // <https://github.com/torvalds/linux/blob/v6.18/net/core/filter.c#L5063-L5080>
        unsafe { bpf_skb_ancestor_cgroup_id(ctx.as_ptr().cast(), level) }
    })
}

/// Cgroup class of the current task: in `connect()` and `sendmsg()` hooks there is no helper
/// for the socket's own cgroup, and the caller's is the one that matters for a call it makes.
/// A socket handed to a process in another cgroup is judged by that cgroup at the call and
/// by its creator's at the packet; the packet hook remains the backstop either way.
pub fn of_current_task(config: &RuntimeConfig, own: u64) -> u32 {
    walk(config, own, |level| {
        // SAFETY: reads the current task's cgroup ancestry.
        unsafe { bpf_get_current_ancestor_cgroup_id(level) }
    })
}

/// The class of the deepest ancestor (or the cgroup itself) that a selector lists. Walking
/// from the root down costs one lookup per level, bounded by the cgroup's depth, never by the
/// number of rules; cgroups created after the policy loaded are covered with no agent action.
/// The cgroup itself (`own`) is looked up first: where it is listed (a unit's processes, a
/// selected cgroup's own members) it is the deepest, and the walk is skipped.
#[inline(always)]
fn walk(config: &RuntimeConfig, own: u64, ancestor: impl Fn(i32) -> u64) -> u32 {
    let parity = config.parity;
    let mut class = parity;
    if config.flags & config_flags::CGROUP_SELECTORS == 0 {
        return class;
    }
    let key = CgroupKey {
        cgroup_id: own,
        parity,
        _pad: 0,
    };
    // SAFETY: plain u32 values.
    if let Some(found) = unsafe { EGRESS_CGROUPS.get(key) } {
        return *found;
    }
    for level in 0..MAX_CGROUP_LEVEL {
        let cgroup_id = ancestor(level);
        if cgroup_id == 0 {
            break;
        }
        let key = CgroupKey {
            cgroup_id,
            parity,
            _pad: 0,
        };
        // SAFETY: plain u32 values.
        if let Some(found) = unsafe { EGRESS_CGROUPS.get(key) } {
            class = *found;
        }
    }
    class
}
