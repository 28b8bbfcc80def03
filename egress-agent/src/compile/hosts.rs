//! Host patterns: the `HOSTNAMES` trie (a name to the set of patterns that match it) and,
//! per egress scope, the name classes (scope, set) → the scope's rules holding a pattern of
//! the set (see `egress_common::dns`).
//!
//! Trie entries, for the patterns P of all loaded policies:
//! - every exact pattern, and every wildcard's base (the "shadow" entry that keeps
//!   `*.example.com` from covering `example.com`), as an exact key whose set is every pattern
//!   of P matching that name;
//! - every wildcard's base as a prefix key whose set is the wildcards of P whose base is that
//!   base or one of its ancestors.
//!
//! A name then finds, by longest prefix: its own exact key if it has one, otherwise the
//! prefix key of its deepest ancestor that is a wildcard base. In the first case every
//! pattern matching it is in the set by construction; in the second, no exact pattern matches
//! it (it would have a key), and every wildcard matching it has its base among the name's
//! ancestors, at or above the deepest one: exactly the prefix key's set.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use egress_common::dns::{
    HOST_KEY_BYTES, HostKeyData, NameClassKey, NameSetId, host_key, host_key_bits,
};
use egress_common::{PARITY_BIT, config_flags};

use super::ports::{self, DecisionFn};
use super::{CompileError, Compiled, Interner};
use crate::policy::host::{canonical_name, host_matches, wildcard_base};
use crate::policy::{Policy, Rule};

/// The set ids of a generation and the canonical patterns of each rule with host entries.
#[derive(Default)]
pub(super) struct HostIndex {
    /// Distinct nonzero sets, with their patterns: this generation's, then those carried
    /// from earlier ones that this one does not hand out.
    sets: Vec<(NameSetId, BTreeSet<String>)>,
    /// Rule id to its canonical patterns (rules with host entries only).
    rule_patterns: HashMap<u32, BTreeSet<String>>,
}

/// Id of a set of canonical host patterns: FNV-1a (64 bits) of the sorted patterns joined by
/// `\n`, and 1 where that is 0 (0 means "no set"). It depends on the patterns alone, so an
/// address learned under one generation keeps its meaning under the next, and across agent
/// restarts.
pub fn name_set_id(patterns: &BTreeSet<String>) -> NameSetId {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (i, pattern) in patterns.iter().enumerate() {
        let separator: &[u8] = if i == 0 { b"" } else { b"\n" };
        for byte in separator.iter().chain(pattern.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    if hash == 0 { 1 } else { hash }
}

/// Writes the `HOSTNAMES` entries of all host patterns of `all` into `out` (and the `HOSTS`
/// flag when there are any); returns what the name classes need.
pub(super) fn index(
    all: &[Policy],
    carried: &[(NameSetId, BTreeSet<String>)],
    out: &mut Compiled,
) -> Result<HostIndex, CompileError> {
    let mut index = HostIndex::default();
    for rule in all.iter().flat_map(|p| &p.rules) {
        for pattern in rule.hosts() {
            let canonical = canonical_name(pattern)
                .ok_or_else(|| CompileError::InvalidHost(pattern.to_string()))?;
            index
                .rule_patterns
                .entry(rule.id)
                .or_default()
                .insert(canonical);
        }
    }
    let patterns: BTreeSet<&str> = index
        .rule_patterns
        .values()
        .flatten()
        .map(String::as_str)
        .collect();
    if patterns.is_empty() {
        return Ok(index);
    }
    out.flags |= config_flags::HOSTS;
    // Key name → whether the key is a prefix (no end byte).
    let mut keys: BTreeMap<(&str, bool), BTreeSet<String>> = BTreeMap::new();
    for pattern in &patterns {
        match wildcard_base(pattern) {
            None => {
                keys.insert((pattern, false), BTreeSet::new());
            }
            Some(base) => {
                keys.insert((base, false), BTreeSet::new());
                keys.insert((base, true), BTreeSet::new());
            }
        }
    }
    for ((name, prefix), set) in &mut keys {
        let members = patterns.iter().filter(|p| {
            if *prefix {
                wildcard_base(p).is_some_and(|b| b == *name || is_below(name, b))
            } else {
                host_matches(p, name)
            }
        });
        set.extend(members.map(|p| p.to_string()));
    }
    let parity_byte = u8::from(out.parity == PARITY_BIT);
    let mut seen: HashMap<NameSetId, &BTreeSet<String>> = HashMap::new();
    for ((name, prefix), set) in &keys {
        let mut data: HostKeyData = [0; HOST_KEY_BYTES];
        let used = host_key(parity_byte, name.split('.').map(str::as_bytes), &mut data)
            .ok_or_else(|| CompileError::InvalidHost(name.to_string()))?;
        let bytes = if *prefix { used - 1 } else { used };
        let id = if set.is_empty() {
            0
        } else {
            let id = name_set_id(set);
            match seen.get(&id) {
                Some(other) if *other != set => {
                    return Err(CompileError::NameSetCollision(id));
                }
                Some(_) => {}
                None => {
                    seen.insert(id, set);
                    index.sets.push((id, set.clone()));
                }
            }
            id
        };
        out.hostnames.push((host_key_bits(bytes), data, id));
    }
    out.name_sets.clone_from(&index.sets);
    // A set of an earlier generation keeps the rules of the patterns it names that still
    // exist; patterns added since reach its addresses once they are answered again.
    for (id, set) in carried {
        if !seen.contains_key(id) {
            index.sets.push((*id, set.clone()));
        }
    }
    Ok(index)
}

/// Whether `name` lies strictly below `ancestor` (`a.example.com` below `example.com`).
fn is_below(name: &str, ancestor: &str) -> bool {
    name.strip_suffix(ancestor)
        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
}

/// The `NAME_CLASSES` entries of the egress scope `scope` (id without parity) whose egress
/// rules are `rules`, and the `PORTS` entries of classes not seen before. A name class is an
/// address class of the same scope (same interner, same key) when the rules are the same:
/// its port entries are the same too.
pub(super) fn emit_name_classes(
    index: &HostIndex,
    scope: u32,
    rules: &[&Rule],
    decide: &DecisionFn<'_>,
    classes: &mut Interner<(u32, Vec<u32>)>,
    out: &mut Compiled,
) -> Result<(), CompileError> {
    let mut hosted: Vec<(&Rule, &BTreeSet<String>)> = rules
        .iter()
        .filter_map(|r| index.rule_patterns.get(&r.id).map(|p| (*r, p)))
        .collect();
    if hosted.is_empty() {
        return Ok(());
    }
    // `ports::emit` looks rules up by id.
    hosted.sort_unstable_by_key(|(r, _)| r.id);
    let parity = out.parity;
    for (set_id, set) in &index.sets {
        let members: Vec<&Rule> = hosted
            .iter()
            .filter(|(_, patterns)| !patterns.is_disjoint(set))
            .map(|(r, _)| *r)
            .collect();
        if members.is_empty() {
            continue;
        }
        let ids: Vec<u32> = members.iter().map(|r| r.id).collect();
        let class = classes.intern_with((scope, ids), |id, _| {
            ports::emit(id | parity, &members, decide, &mut out.ports);
        })? | parity;
        out.name_classes.push((
            NameClassKey {
                scope: scope | parity,
                _pad: 0,
                set: *set_id,
            },
            class,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str]) -> BTreeSet<String> {
        patterns.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn set_ids_are_stable_nonzero_and_order_free() {
        let a = name_set_id(&set(&["*.example.com", "api.example.com"]));
        assert_eq!(a, name_set_id(&set(&["api.example.com", "*.example.com"])));
        assert_ne!(a, name_set_id(&set(&["*.example.com"])));
        assert_ne!(
            name_set_id(&set(&["a.com", "b.com"])),
            name_set_id(&set(&["a.comb.com"]))
        );
        // FNV-1a of the empty input is its offset basis: a fixed value, not 0.
        assert_eq!(name_set_id(&BTreeSet::new()), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn below_means_strictly_below_at_a_label_boundary() {
        assert!(is_below("a.example.com", "example.com"));
        assert!(!is_below("example.com", "example.com"));
        assert!(!is_below("aexample.com", "example.com"));
    }
}
