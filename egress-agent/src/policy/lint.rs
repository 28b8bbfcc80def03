//! Warnings: policies that load fine but probably do not do what their author meant.

use std::collections::HashMap;

use super::net::{Prefix, mask};
use super::probe::Target;
use super::{Action, Destination, Policy, PolicySet, PortRange, Protocol, Rule};

/// Policies with more rules than this skip the pairwise shadowing checks.
const MAX_RULES_FOR_SHADOWING: usize = 200;

pub(crate) struct Warning {
    pub policy: String,
    pub target: Target,
    pub message: String,
}

pub(crate) fn warnings(set: &PolicySet) -> Vec<Warning> {
    let mut out = Vec::new();
    for policy in &set.policies {
        let mut warn = |target, message| {
            out.push(Warning {
                policy: policy.name.clone(),
                target,
                message,
            });
        };
        if policy.default_action == Action::Deny && !allows_dns(policy) {
            warn(
                Target::PolicyName,
                format!(
                    "policy `{}` denies by default but allows no DNS (udp or tcp port 53); name resolution will fail",
                    policy.name
                ),
            );
        }
        if policy.default_action == Action::Deny && !allows_dns(policy) {
            // One warning per policy, at its first host entry: the others say the same.
            let first_host = policy.rules.iter().enumerate().find_map(|(i, rule)| {
                rule.to
                    .iter()
                    .position(|d| matches!(d, Destination::Host(_)))
                    .map(|k| (i, k))
            });
            if let Some((i, k)) = first_host {
                warn(
                    Target::ToEntry(i, k),
                    format!(
                        "host rules match only addresses learned from DNS answers, and policy `{}` allows no DNS (port 53): workloads need DNS to learn names",
                        policy.name
                    ),
                );
            }
        }
        if policy.rules.len() <= MAX_RULES_FOR_SHADOWING {
            shadowing(&policy.rules, Target::RuleName, &mut warn);
        }
        if policy.ingress.len() <= MAX_RULES_FOR_SHADOWING {
            shadowing(&policy.ingress, Target::IngressRuleName, &mut warn);
        }
    }
    out
}

fn allows_dns(policy: &Policy) -> bool {
    policy.rules.iter().any(|r| {
        r.action == Action::Allow
            && (r.matches_protocol(super::IPPROTO_UDP, 53)
                || r.matches_protocol(super::IPPROTO_TCP, 53))
            && r.to.iter().any(|d| !matches!(d, Destination::Host(_)))
    })
}

/// Shadowed rules among the rules of one direction (`target` locates the n-th one's name).
fn shadowing(rules: &[Rule], target: fn(usize) -> Target, warn: &mut impl FnMut(Target, String)) {
    for (j, rule) in rules.iter().enumerate() {
        let inside_deny = (rule.action == Action::Allow)
            .then(|| {
                rules
                    .iter()
                    .find(|d| d.action == Action::Deny && covers(d, rule))
            })
            .flatten();
        if let Some(deny) = inside_deny {
            warn(
                target(j),
                format!(
                    "allow rule `{}` lies entirely inside deny rule `{}` of the same policy and never takes effect",
                    rule.name, deny.name
                ),
            );
            continue;
        }
        let earlier = rules[..j]
            .iter()
            .find(|e| e.action == rule.action && covers(e, rule));
        if let Some(earlier) = earlier {
            warn(
                target(j),
                format!(
                    "rule `{}` is shadowed by earlier rule `{}`: everything it matches, `{}` matches first",
                    rule.name, earlier.name, earlier.name
                ),
            );
        }
    }
}

/// Whether every packet `inner` matches is also matched by `outer` (a sound approximation).
pub(crate) fn covers(outer: &Rule, inner: &Rule) -> bool {
    protocols_cover(outer, inner) && addresses_cover(outer, inner)
}

fn protocols_cover(outer: &Rule, inner: &Rule) -> bool {
    let all = outer.protocol == Protocol::Any && outer.ports.is_none();
    if all {
        return true;
    }
    let ports_cover = || match (&outer.ports, &inner.ports) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(o), Some(i)) => ranges_cover(o, i),
    };
    match (outer.protocol, inner.protocol) {
        (Protocol::Any, Protocol::Any | Protocol::Tcp | Protocol::Udp) => ports_cover(),
        (o, i) if o == i => ports_cover(),
        _ => false,
    }
}

fn ranges_cover(outer: &[PortRange], inner: &[PortRange]) -> bool {
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for r in outer {
        let (first, last) = (u32::from(r.first), u32::from(r.last));
        match merged.last_mut() {
            Some(m) if first <= m.1 + 1 => m.1 = m.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    inner.iter().all(|r| {
        merged
            .iter()
            .any(|m| m.0 <= u32::from(r.first) && u32::from(r.last) <= m.1)
    })
}

fn addresses_cover(outer: &Rule, inner: &Rule) -> bool {
    if inner.to.iter().any(|d| matches!(d, Destination::Host(_))) {
        return false;
    }
    let mut entries: HashMap<Prefix, Vec<Vec<Prefix>>> = HashMap::new();
    outer.for_each_prefix(|p, except| entries.entry(*p).or_default().push(except.to_vec()));
    let mut all = true;
    inner.for_each_prefix(|c, holes| {
        if !all {
            return;
        }
        let width = c.family.width();
        let covered = (0..=c.len).rev().any(|len| {
            let key = Prefix {
                family: c.family,
                addr: mask(c.addr, len, width),
                len,
            };
            entries.get(&key).is_some_and(|excepts| {
                excepts.iter().any(|es| {
                    es.iter()
                        .all(|e| !e.overlaps(c) || holes.iter().any(|h| h.contains(e)))
                })
            })
        });
        all = covered;
    });
    all
}
