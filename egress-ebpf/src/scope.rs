//! Which policies govern a packet: its cgroup class (from the cgroup or its nearest listed
//! ancestor) and its socket's uid, looked up as a scope.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_socket_uid, bpf_skb_ancestor_cgroup_id},
    programs::SkBuffContext,
};
use egress_common::{
    ANY_UID, CgroupKey, MAX_CGROUP_LEVEL, RuntimeConfig, ScopeKey, ScopeValue, config_flags,
};

use crate::maps::{EGRESS_CGROUPS, EGRESS_SCOPES};

/// The scope of the packet's socket, `None` when no policy governs it.
pub fn lookup(ctx: &SkBuffContext, config: &RuntimeConfig) -> Option<ScopeValue> {
    let cgroup_class = if config.flags & config_flags::CGROUP_SELECTORS != 0 {
        cgroup_class(ctx, config.parity)
    } else {
        config.parity
    };
    // SAFETY: the helper only reads the skb the kernel passed us.
    let uid = unsafe { bpf_get_socket_uid(ctx.as_ptr().cast()) };
    let exact = ScopeKey { cgroup_class, uid };
    // SAFETY: values of this map are plain data written whole by the agent.
    if let Some(scope) = unsafe { EGRESS_SCOPES.get(&exact) } {
        return Some(*scope);
    }
    let any = ScopeKey {
        cgroup_class,
        uid: ANY_UID,
    };
    // SAFETY: as above.
    unsafe { EGRESS_SCOPES.get(&any) }.copied()
}

/// The class of the deepest ancestor (or the cgroup itself) that a selector lists. Walking
/// from the root down costs one lookup per level, bounded by the cgroup's depth, never by the
/// number of rules; cgroups created after the policy loaded are covered with no agent action.
fn cgroup_class(ctx: &SkBuffContext, parity: u32) -> u32 {
    let mut class = parity;
    for level in 0..MAX_CGROUP_LEVEL {
        // SAFETY: the helper only reads the skb's socket cgroup. It returns 0 past the
        // cgroup's own level.
        // <https://github.com/torvalds/linux/blob/v6.18/net/core/filter.c#L5063-L5080>
        let id = unsafe { bpf_skb_ancestor_cgroup_id(ctx.as_ptr().cast(), level) };
        if id == 0 {
            break;
        }
        let key = CgroupKey {
            cgroup_id: id,
            parity,
            _pad: 0,
        };
        // SAFETY: plain u32 values.
        if let Some(found) = unsafe { EGRESS_CGROUPS.get(&key) } {
            class = *found;
        }
    }
    class
}
