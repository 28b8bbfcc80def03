//! Scopes: for every (cgroup class, uid) the kernel can look up, the applicable policies and
//! the decisions when no address entry matches, in both directions.

use std::collections::BTreeSet;

use egress_common::{ANY_UID, Decision, ScopeKey, ScopeValue, scope_flags, verdict};

use super::{CompileError, Compiled, Interner};
use crate::eval::{decision_for, ingress_decision_for};
use crate::policy::{Destination, LogMode, Mode, Policy};

/// A scope whose address entries are still to be written.
pub(super) struct DistinctScope {
    /// Id without parity, unique across both directions.
    pub id: u32,
    /// Indexes of the policies that take part, in name order.
    pub members: Vec<usize>,
    /// Keyed by source address and judged by ingress rules, rather than by destination and
    /// egress rules.
    pub ingress: bool,
}

/// What the ingress program reads for a scope no policy restricts inbound: pass, no lookups.
const NOT_JUDGED: Decision = Decision {
    rule: egress_common::NO_RULE,
    audit_rule: egress_common::NO_RULE,
    verdict: verdict::NONE,
    audit_verdict: verdict::NONE,
    log: 0,
    matched: 0,
};

/// Writes the scope entries for every (cgroup class, uid), interning the applicable policy
/// sets; returns every distinct egress scope and every distinct ingress scope.
///
/// An ingress scope is keyed by the applicable policies that restrict inbound traffic alone:
/// no other policy changes an inbound decision, so workloads whose egress policies differ
/// share it.
pub(super) fn scopes(
    all: &[Policy],
    classes: &[(u32, Vec<usize>)],
    parity: u32,
    out: &mut Compiled,
) -> Result<Vec<DistinctScope>, CompileError> {
    let uids: BTreeSet<u32> = all
        .iter()
        .flat_map(|p| p.selector.uids.iter().copied())
        .collect();
    let global: Vec<usize> = (0..all.len())
        .filter(|i| !all[*i].selector.selects_cgroups())
        .collect();
    // One id space for both directions (the key's bool): their address keys cannot collide.
    let mut interner: Interner<(bool, Vec<usize>)> = Interner::new(1, "scopes");
    let mut distinct = Vec::new();
    for (class, members) in classes {
        let mut base: Vec<usize> = members.iter().chain(&global).copied().collect();
        base.sort_unstable();
        let pick = |uid: Option<u32>| -> Vec<usize> {
            base.iter()
                .copied()
                .filter(|i| match uid {
                    Some(uid) => all[*i].selector.matches_uid(uid),
                    None => all[*i].selector.uids.is_empty(),
                })
                .collect()
        };
        let any = pick(None);
        let mut entries = vec![(ANY_UID, any.clone())];
        for uid in &uids {
            let set = pick(Some(*uid));
            // The kernel falls back to ANY_UID, so identical entries would be redundant.
            if set != any {
                entries.push((*uid, set));
            }
        }
        for (uid, set) in entries {
            if set.is_empty() {
                continue;
            }
            let applicable: Vec<&Policy> = set.iter().map(|i| &all[*i]).collect();
            let restricting: Vec<usize> = set
                .iter()
                .copied()
                .filter(|i| all[*i].restricts_inbound())
                .collect();
            let (scope, new) = interner.intern((false, set.clone()))?;
            if new {
                distinct.push(DistinctScope {
                    id: scope,
                    members: set,
                    ingress: false,
                });
            }
            let (ingress_scope, ingress_default) =
                match ingress_decision_for(&applicable, &|_| false) {
                    None => (parity, NOT_JUDGED),
                    Some(decision) => {
                        let (id, new) = interner.intern((true, restricting.clone()))?;
                        if new {
                            distinct.push(DistinctScope {
                                id,
                                members: restricting,
                                ingress: true,
                            });
                        }
                        (id | parity, decision)
                    }
                };
            out.scopes.push((
                ScopeKey {
                    cgroup_class: class | parity,
                    uid,
                },
                ScopeValue {
                    scope: scope | parity,
                    ingress_scope,
                    default: decision_for(&applicable, &|_| false),
                    ingress_default,
                    flags: flags_of(&applicable),
                },
            ));
        }
    }
    Ok(distinct)
}

/// The [`scope_flags`] of a scope with the `applicable` policies: what the kernel needs to
/// recompute `log` after merging a name decision, and whether DNS answers must be read.
fn flags_of(applicable: &[&Policy]) -> u32 {
    let mut flags = 0;
    for policy in applicable {
        flags |= match (policy.log, policy.mode) {
            (LogMode::All, _) => scope_flags::LOG_ALL,
            (LogMode::Deny, Mode::Enforce) => scope_flags::LOG_DENY_ENFORCE,
            (LogMode::Deny, Mode::Audit) => scope_flags::LOG_DENY_AUDIT,
            (LogMode::None, _) => 0,
        };
        let hosts = policy
            .rules
            .iter()
            .any(|r| r.to.iter().any(|d| matches!(d, Destination::Host(_))));
        if hosts {
            flags |= scope_flags::HOST_RULES;
        }
    }
    flags
}
