//! The reference evaluator: the policy semantics of `docs/policy.md`, written plainly.
//!
//! The compiler's output must decide every packet exactly as this module does; the property
//! tests in `compile` check that through a simulation of the kernel's lookups.

use std::net::IpAddr;

use egress_common::{Decision, NO_RULE, matched as matched_bits, verdict};

use crate::compile::CgroupResolution;
pub use crate::policy::host::{canonical_name, host_matches};
use crate::policy::{Action, LogMode, Mode, Policy, PolicySet, Rule};

/// A rule that matched a packet, whether or not it decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedRule {
    pub id: u32,
    pub policy: String,
    pub rule: String,
    pub action: Action,
    pub mode: Mode,
}

/// A decision and what led to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// Names of the policies whose selectors matched the workload, by name.
    pub applicable: Vec<String>,
    /// Every matching rule of the applicable policies, by id.
    pub matched: Vec<MatchedRule>,
    /// Which of the destination's names matched which host patterns of the applicable
    /// policies' egress rules (whether or not the rule's protocol and ports admit the
    /// packet), by rule id, then name; empty without names.
    pub hosts: Vec<HostMatch>,
}

/// A name of the destination that a host pattern of a rule matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMatch {
    pub name: String,
    pub pattern: String,
    pub id: u32,
    pub policy: String,
    pub rule: String,
}

/// The policies whose selectors hold for the workload, in name order; pod selectors select
/// nothing (see [`applicable_in`]).
pub fn applicable<'a>(set: &'a PolicySet, cgroup: &str, uid: u32) -> Vec<&'a Policy> {
    applicable_in(set, &CgroupResolution::default(), cgroup, uid)
}

/// [`applicable`], with pod selectors selecting the paths `resolution` holds for them.
pub fn applicable_in<'a>(
    set: &'a PolicySet,
    resolution: &CgroupResolution,
    cgroup: &str,
    uid: u32,
) -> Vec<&'a Policy> {
    set.policies
        .iter()
        .filter(|p| resolution.matches_cgroup(&p.selector, cgroup) && p.selector.matches_uid(uid))
        .collect()
}

/// [`decide`], with pod selectors resolved through `resolution`.
pub fn decide_in(
    set: &PolicySet,
    resolution: &CgroupResolution,
    cgroup: &str,
    uid: u32,
    dst: IpAddr,
    protocol: u8,
    port: u16,
) -> Decision {
    decide_named_in(set, resolution, cgroup, uid, dst, &[], protocol, port)
}

/// [`decide_named`], with pod selectors resolved through `resolution`.
#[expect(
    clippy::too_many_arguments,
    reason = "one packet's fields, named as the kernel sees them"
)]
pub fn decide_named_in(
    set: &PolicySet,
    resolution: &CgroupResolution,
    cgroup: &str,
    uid: u32,
    dst: IpAddr,
    names: &[String],
    protocol: u8,
    port: u16,
) -> Decision {
    let policies = applicable_in(set, resolution, cgroup, uid);
    decision_for(&policies, &|r: &Rule| {
        r.matches_named(dst, names, protocol, port)
    })
}

/// Decides a packet of the workload (`cgroup` path relative to the cgroup2 root, socket `uid`)
/// to `dst`, an address the workload learned from no DNS answer (so no host rule matches it).
/// `port` only counts for TCP and UDP.
pub fn decide(
    set: &PolicySet,
    cgroup: &str,
    uid: u32,
    dst: IpAddr,
    protocol: u8,
    port: u16,
) -> Decision {
    decide_named(set, cgroup, uid, dst, &[], protocol, port)
}

/// Decides a packet of the workload to `dst` when the workload's cgroup learned `dst` from
/// DNS answers for `names` (each answer's question name and CNAME targets, any case, trailing
/// dots ignored): a rule matches when its protocol and ports admit the packet and its address
/// entries hold `dst` or one of its host patterns matches one of the names.
pub fn decide_named(
    set: &PolicySet,
    cgroup: &str,
    uid: u32,
    dst: IpAddr,
    names: &[String],
    protocol: u8,
    port: u16,
) -> Decision {
    decide_named_in(
        set,
        &CgroupResolution::default(),
        cgroup,
        uid,
        dst,
        names,
        protocol,
        port,
    )
}

/// [`decide`], with the rules that matched.
pub fn explain(
    set: &PolicySet,
    cgroup: &str,
    uid: u32,
    dst: IpAddr,
    protocol: u8,
    port: u16,
) -> Explanation {
    explain_named(set, cgroup, uid, dst, &[], protocol, port)
}

/// [`decide_named`], with the rules that matched and the names their host patterns matched.
pub fn explain_named(
    set: &PolicySet,
    cgroup: &str,
    uid: u32,
    dst: IpAddr,
    names: &[String],
    protocol: u8,
    port: u16,
) -> Explanation {
    let policies = applicable(set, cgroup, uid);
    let is_match = |r: &Rule| r.matches_named(dst, names, protocol, port);
    Explanation {
        decision: decision_for(&policies, &is_match),
        applicable: policies.iter().map(|p| p.name.clone()).collect(),
        matched: matched_rules(&policies, Direction::Egress, &is_match),
        hosts: host_matches_of(&policies, names),
    }
}

/// Every (rule, pattern, name) of the `policies`' egress rules where the pattern matches.
fn host_matches_of(policies: &[&Policy], names: &[String]) -> Vec<HostMatch> {
    let mut out = Vec::new();
    for policy in policies {
        for rule in &policy.rules {
            for pattern in rule.hosts() {
                for name in names.iter().filter(|n| host_matches(pattern, n)) {
                    out.push(HostMatch {
                        name: name.clone(),
                        pattern: pattern.to_string(),
                        id: rule.id,
                        policy: policy.name.clone(),
                        rule: rule.name.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Decides a packet that starts a new inbound connection or flow to the workload, from `src`
/// to the workload's `local_port` (which only counts for TCP and UDP). `None`: no applicable
/// policy restricts inbound traffic, so the packet is not judged (it passes, unlogged).
pub fn decide_ingress(
    set: &PolicySet,
    cgroup: &str,
    uid: u32,
    src: IpAddr,
    protocol: u8,
    local_port: u16,
) -> Option<Decision> {
    decide_ingress_in(
        set,
        &CgroupResolution::default(),
        cgroup,
        uid,
        src,
        protocol,
        local_port,
    )
}

/// [`decide_ingress`], with pod selectors resolved through `resolution`.
pub fn decide_ingress_in(
    set: &PolicySet,
    resolution: &CgroupResolution,
    cgroup: &str,
    uid: u32,
    src: IpAddr,
    protocol: u8,
    local_port: u16,
) -> Option<Decision> {
    let policies = applicable_in(set, resolution, cgroup, uid);
    ingress_decision_for(&policies, &|r: &Rule| r.matches(src, protocol, local_port))
}

/// [`decide_ingress`], with the ingress rules that matched; `None` when not judged.
pub fn explain_ingress(
    set: &PolicySet,
    cgroup: &str,
    uid: u32,
    src: IpAddr,
    protocol: u8,
    local_port: u16,
) -> Option<Explanation> {
    let policies = applicable(set, cgroup, uid);
    let is_match = |r: &Rule| r.matches(src, protocol, local_port);
    Some(Explanation {
        decision: ingress_decision_for(&policies, &is_match)?,
        applicable: policies.iter().map(|p| p.name.clone()).collect(),
        matched: matched_rules(&policies, Direction::Ingress, &is_match),
        hosts: Vec::new(),
    })
}

/// The rules of one direction, of the `policies`, that `is_match` accepts, by id.
fn matched_rules(
    policies: &[&Policy],
    direction: Direction,
    is_match: &dyn Fn(&Rule) -> bool,
) -> Vec<MatchedRule> {
    policies
        .iter()
        .flat_map(|p| {
            direction
                .rules(p)
                .iter()
                .filter(|r| is_match(r))
                .map(|r| MatchedRule {
                    id: r.id,
                    policy: p.name.clone(),
                    rule: r.name.clone(),
                    action: r.action,
                    mode: p.mode,
                })
        })
        .collect()
}

/// Which rules and which default of a policy judge a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// `spec.egress` and `defaultAction`.
    Egress,
    /// `spec.ingress` and `inbound`.
    Ingress,
}

impl Direction {
    fn rules(self, policy: &Policy) -> &[Rule] {
        match self {
            Self::Egress => &policy.rules,
            Self::Ingress => &policy.ingress,
        }
    }

    /// The default's rule id and action.
    fn default(self, policy: &Policy) -> (u32, Action) {
        match self {
            Self::Egress => (policy.default_id, policy.default_action),
            Self::Ingress => (policy.inbound_default_id, policy.inbound),
        }
    }
}

/// The decision of the `applicable` policies (in name order) when exactly the rules for which
/// `matched` holds match the packet. Shared with the compiler, which calls it per class.
pub fn decision_for(applicable: &[&Policy], matched: &dyn Fn(&Rule) -> bool) -> Decision {
    if applicable.is_empty() {
        return Decision::UNGOVERNED;
    }
    combine(applicable, Direction::Egress, matched)
}

/// The decision for a new inbound connection of a workload with the `applicable` policies (in
/// name order) when exactly the ingress rules for which `matched` holds match. Only policies
/// that restrict inbound traffic take part; `None` when there are none. Shared with the
/// compiler.
pub fn ingress_decision_for(
    applicable: &[&Policy],
    matched: &dyn Fn(&Rule) -> bool,
) -> Option<Decision> {
    let restricting: Vec<&Policy> = applicable
        .iter()
        .copied()
        .filter(|p| p.restricts_inbound())
        .collect();
    (!restricting.is_empty()).then(|| combine(&restricting, Direction::Ingress, matched))
}

/// The enforce and audit verdicts of the (non-empty) `policies`, and whether to log.
fn combine(
    policies: &[&Policy],
    direction: Direction,
    matched: &dyn Fn(&Rule) -> bool,
) -> Decision {
    let enforce = judge(policies, Mode::Enforce, direction, matched);
    let audit = judge(policies, Mode::Audit, direction, matched);
    let (verdict, rule, enforce_rule) = enforce.unwrap_or((verdict::ALLOW, NO_RULE, false));
    let (audit_verdict, audit_rule, audit_by_rule) =
        audit.unwrap_or((verdict::NONE, NO_RULE, false));
    let log = policies.iter().any(|p| {
        let own = match p.mode {
            Mode::Enforce => verdict,
            Mode::Audit => audit_verdict,
        };
        p.log == LogMode::All || (p.log == LogMode::Deny && own == verdict::DENY)
    });
    Decision {
        rule,
        audit_rule,
        verdict,
        audit_verdict,
        log: u8::from(log),
        matched: (if enforce_rule {
            matched_bits::ENFORCE_RULE
        } else {
            0
        }) | (if audit_by_rule {
            matched_bits::AUDIT_RULE
        } else {
            0
        }),
    }
}

/// Verdict and deciding rule of the policies of one mode, and whether a rule (not a default)
/// decided; `None` if there are none.
fn judge(
    policies: &[&Policy],
    mode: Mode,
    direction: Direction,
    matched: &dyn Fn(&Rule) -> bool,
) -> Option<(u8, u32, bool)> {
    let mut first_default = None;
    let mut deny_default = None;
    let mut deny = None;
    let mut allow = None;
    // Policies are in name order and ids grow with it, so the first hit is the lowest id.
    for policy in policies.iter().filter(|p| p.mode == mode) {
        let (default_id, default_action) = direction.default(policy);
        first_default.get_or_insert(default_id);
        if default_action == Action::Deny {
            deny_default.get_or_insert(default_id);
        }
        for rule in direction.rules(policy).iter().filter(|r| matched(r)) {
            match rule.action {
                Action::Deny => deny.get_or_insert(rule.id),
                Action::Allow => allow.get_or_insert(rule.id),
            };
        }
    }
    let first_default = first_default?;
    Some(if let Some(id) = deny {
        (verdict::DENY, id, true)
    } else if let Some(id) = allow {
        (verdict::ALLOW, id, true)
    } else if let Some(id) = deny_default {
        (verdict::DENY, id, false)
    } else {
        (verdict::ALLOW, first_default, false)
    })
}

#[cfg(test)]
mod tests;
