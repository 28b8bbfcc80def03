//! Learned addresses: recording what DNS told a cgroup (`dns.rs`) and using it when that
//! cgroup sends (`classify.rs`).

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use egress_common::{
    Decision, ScopeValue, counter,
    dns::{Learned, LearnedKey, MAX_NAME_SETS, NameClassKey, NameSetId},
};

use crate::{
    classify::{Destination, port_decision},
    events,
    maps::{EGRESS_LEARNED, EGRESS_NAME_CLASSES, EGRESS_NAME_KEYS},
};

/// Records that the cgroup of `key` was told `key.addr` for names with `sets`, until
/// `expires`. Sets accumulate while the entry lives, so an address answered for a denied
/// and an allowed name carries both and the deny rule wins. `Err` when the sets do not fit
/// or the map refused the entry: the caller then must not deliver the answer. Out of line,
/// so that its branches do not multiply the paths of the DNS reader's loop.
#[inline(never)]
pub fn learn(
    key: &LearnedKey,
    sets: &[NameSetId; MAX_NAME_SETS],
    expires: u64,
    now: u64,
) -> Result<(), ()> {
    let existing = EGRESS_LEARNED.get_ptr_mut(key);
    if let Some(entry) = existing {
        // SAFETY: a value of this map; concurrent answers for the same (cgroup, address) on
        // two CPUs at once could lose one's sets (no lock in LRU maps); docs/security.md.
        let entry = unsafe { &mut *entry };
        if entry.expires_boot_ns > now {
            for set in sets {
                if *set != 0 && !entry.sets.contains(set) {
                    let Some(free) = entry.sets.iter().position(|s| *s == 0) else {
                        return Err(());
                    };
                    if let Some(slot) = entry.sets.get_mut(free) {
                        *slot = *set;
                    }
                }
            }
            entry.expires_boot_ns = entry.expires_boot_ns.max(expires);
            return Ok(());
        }
    }
    // Absent or expired: the old names no longer count.
    if existing.is_none() {
        events::count(counter::DNS_NEW);
    }
    let fresh = Learned {
        expires_boot_ns: expires,
        sets: *sets,
    };
    EGRESS_LEARNED.insert(key, fresh, 0).map_err(|_| ())
}

/// Keys of the lookups below, in per-CPU memory: on the stack they would push the egress
/// program's call chain past the verifier's 512 bytes.
#[repr(C)]
pub struct LookupKeys {
    learned: LearnedKey,
    class: NameClassKey,
}

/// `decision` (the address decision) merged with the decisions of the names the cgroup
/// learned `to` for, if it learned any that have not expired. Inlined into `classify::decide`:
/// a frame of its own would push the IPv6 `connect()` hook's call chain past 512 bytes.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the keys are passed by reference on purpose: by value they would be copied to the stack this file keeps them off"
)]
pub fn merge_learned(
    decision: &Decision,
    scope: &ScopeValue,
    to: &Destination,
    cgroup_id: u64,
    established: bool,
) -> Decision {
    let Some(keys) = EGRESS_NAME_KEYS.get_ptr_mut(0) else {
        return *decision;
    };
    // SAFETY: a per-CPU map value; nothing else runs on this CPU while the program does.
    let keys = unsafe { &mut *keys };
    keys.learned = LearnedKey {
        cgroup_id,
        addr: to.addr,
        ip_version: to.ip_version,
        _pad: [0; 7],
    };
    // SAFETY: plain data written whole by this program.
    let Some(learned) = (unsafe { EGRESS_LEARNED.get(&keys.learned) }) else {
        return *decision;
    };
    // A record's TTL says how long the address may be used for *new* connections: a TCP
    // connection opened while the name held keeps it (as long as the entry is in the map),
    // or an allow-listed download would be cut when the TTL runs out.
    // SAFETY: a plain helper call.
    if !established && learned.expires_boot_ns <= unsafe { bpf_ktime_get_boot_ns() } {
        return *decision;
    }
    let mut merged = *decision;
    for set in &learned.sets {
        if *set == 0 {
            continue;
        }
        keys.class = NameClassKey {
            scope: scope.scope,
            _pad: 0,
            set: *set,
        };
        // SAFETY: plain u32 values written by the agent.
        let Some(class) = (unsafe { EGRESS_NAME_CLASSES.get(&keys.class) }) else {
            continue; // no rule of this scope names any of these patterns
        };
        let mut by_name = merged;
        // False: no rule of the name class admits this protocol and port.
        if port_decision(*class, to.protocol, to.port, &mut by_name) {
            merged = merged.merge(by_name, scope.flags);
        }
    }
    merged
}
