//! Host rules: the compiled maps, with the names an address was learned for, decide exactly
//! like the reference evaluator.
//!
//! Patterns and names come from a three-label vocabulary so that exact names, wildcards,
//! their bases and names learned for several of them (CNAME chains) overlap all the time.

use std::collections::BTreeSet;

use egress_common::dns::MAX_NAME_SETS;
use egress_common::{PARITY_BIT, config_flags, scope_flags};
use proptest::prelude::*;

use super::mapsim::MapSim;
use super::proptests::{
    CGROUPS, PORTS, PROTOCOLS, Rng, UIDS, address, destination, named_prefixes, policy_set_with,
    resolution, rule_with,
};
use super::{compile, name_set_id};
use crate::eval::{self, canonical_name, host_matches};
use crate::policy::{Destination, PolicySet};

const LABELS: &[&str] = &["a", "b", "c"];

/// `labels` joined by dots, each letter in random case, maybe with a trailing dot.
fn spell(labels: &[&str], case_bits: u64, trailing_dot: bool) -> String {
    let mut name: String = labels
        .join(".")
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if case_bits >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    if trailing_dot {
        name.push('.');
    }
    name
}

fn host() -> impl Strategy<Value = Destination> {
    (
        prop::collection::vec(prop::sample::select(LABELS), 1..=3),
        prop::bool::weighted(0.4),
        prop::bool::weighted(0.3).prop_flat_map(|mixed| {
            if mixed {
                any::<u64>().boxed()
            } else {
                Just(0).boxed()
            }
        }),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(labels, wildcard, case_bits, dot)| {
            let name = spell(&labels, case_bits, dot);
            Destination::Host(if wildcard { format!("*.{name}") } else { name })
        })
}

fn host_policy_set() -> impl Strategy<Value = PolicySet> {
    let peer = prop_oneof![2 => destination(), 3 => host()];
    policy_set_with(rule_with(peer.boxed()).boxed())
}

/// 0 to 3 names of 1 to 4 labels, some in upper case or with a trailing dot.
fn names(rng: &mut Rng) -> Vec<String> {
    let count = rng.next() % 4;
    (0..count)
        .map(|_| {
            let len = 1 + rng.next() % 4;
            let labels: Vec<&str> = (0..len).map(|_| rng.pick(LABELS)).collect();
            let case_bits = if rng.next().is_multiple_of(4) {
                rng.next()
            } else {
                0
            };
            spell(&labels, case_bits, rng.next().is_multiple_of(5))
        })
        .collect()
}

/// What the trie must hold for `name`: the id of every canonical pattern matching it.
fn expected_set(set: &PolicySet, name: &str) -> u64 {
    let matching: BTreeSet<String> = set
        .policies
        .iter()
        .flat_map(|p| &p.rules)
        .flat_map(|r| r.hosts())
        .filter(|p| host_matches(p, name))
        .filter_map(canonical_name)
        .collect();
    if matching.is_empty() {
        0
    } else {
        name_set_id(&matching)
    }
}

fn check(set: &PolicySet, seed: u64, packets: usize, parity: bool) -> Result<usize, TestCaseError> {
    let resolution = resolution();
    let parity = if parity { PARITY_BIT } else { 0 };
    let compiled =
        compile(set, &resolution, parity).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let hosts = set
        .policies
        .iter()
        .any(|p| p.rules.iter().any(|r| r.hosts().next().is_some()));
    prop_assert_eq!(compiled.flags & config_flags::HOSTS != 0, hosts);
    if !hosts {
        prop_assert!(compiled.hostnames.is_empty() && compiled.name_classes.is_empty());
    }
    for (_, scope) in &compiled.scopes {
        prop_assert!(hosts || scope.flags & scope_flags::HOST_RULES == 0);
    }
    let sim = MapSim::new(&compiled);
    let prefixes = named_prefixes(set);
    let mut rng = Rng(seed);
    let mut judged = 0;
    for _ in 0..packets {
        let names = names(&mut rng);
        for name in &names {
            prop_assert_eq!(
                sim.name_sets(std::slice::from_ref(name))
                    .first()
                    .copied()
                    .unwrap_or(0),
                expected_set(set, name),
                "trie set of {}",
                name
            );
        }
        // The kernel refuses to learn from answers with more sets than an entry holds.
        if sim.name_sets(&names).len() > MAX_NAME_SETS {
            continue;
        }
        let cgroup = rng.pick(CGROUPS);
        let uid = rng.pick(UIDS);
        let dst = address(&mut rng, &prefixes);
        let protocol = rng.pick(PROTOCOLS);
        let port = match rng.next() % 3 {
            0 => rng.pick(PORTS),
            1 => rng.pick(PORTS).wrapping_add(1),
            _ => rng.next() as u16,
        };
        let want =
            eval::decide_named_in(set, &resolution, cgroup, uid, dst, &names, protocol, port);
        let got = sim.decide_named(cgroup, uid, dst, &names, protocol, port);
        prop_assert_eq!(
            got,
            want,
            "{} uid {} -> {} {:?} proto {} port {}",
            cgroup,
            uid,
            dst,
            names,
            protocol,
            port
        );
        judged += 1;
    }
    Ok(judged)
}

proptest! {
    #[test]
    fn compiled_host_maps_decide_like_eval(
        set in host_policy_set(),
        seed in any::<u64>(),
        parity in any::<bool>(),
    ) {
        check(&set, seed, 100, parity)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// 1,000 policy sets × 200 packets with names.
    #[test]
    fn compiled_host_maps_decide_like_eval_many(set in host_policy_set(), seed in any::<u64>()) {
        let judged = check(&set, seed, 200, true)?;
        // Skips (more sets than an entry holds) must stay rare or the test proves little.
        prop_assert!(judged >= 150, "only {} of 200 packets judged", judged);
    }
}
