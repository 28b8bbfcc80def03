//! What a policy change adds, removes and changes, by policy and by rule, for
//! `egress apply --dry-run`.

use std::collections::BTreeMap;

use super::protocol::PolicyDiff;
use crate::policy::{
    Action, Destination, INBOUND_DEFAULT, Policy, PolicySet, PortRange, Protocol, Rule,
};

/// A rule as it decides, without its id: ids are renumbered whenever a policy before it
/// changes, which changes nothing about what the rule does.
#[derive(PartialEq, Eq)]
struct RuleMeaning<'a> {
    action: Action,
    to: Option<&'a [Destination]>,
    protocol: Option<Protocol>,
    ports: Option<&'a [PortRange]>,
}

fn meaning(rule: &Rule) -> RuleMeaning<'_> {
    RuleMeaning {
        action: rule.action,
        to: Some(&rule.to),
        protocol: Some(rule.protocol),
        ports: rule.ports.as_deref(),
    }
}

/// A policy's rules by `policy/rule`: egress and ingress rules, the default, and the inbound
/// default when the policy has one (the names of the rule table).
fn rules(policy: &Policy) -> BTreeMap<String, RuleMeaning<'_>> {
    let named = |rule: &str| format!("{}/{rule}", policy.name);
    let default = |action| RuleMeaning {
        action,
        to: None,
        protocol: None,
        ports: None,
    };
    let mut out: BTreeMap<String, RuleMeaning<'_>> = policy
        .rules
        .iter()
        .chain(&policy.ingress)
        .map(|rule| (named(&rule.name), meaning(rule)))
        .collect();
    out.insert(named("default"), default(policy.default_action));
    if policy.restricts_inbound() {
        out.insert(named(INBOUND_DEFAULT), default(policy.inbound));
    }
    out
}

/// Ids differ between otherwise equal policies (see [`RuleMeaning`]): compare without them.
fn same_policy(a: &Policy, b: &Policy) -> bool {
    let Policy {
        name,
        selector,
        mode,
        default_action,
        log,
        rules,
        default_id: _,
        inbound,
        ingress,
        inbound_default_id: _,
    } = a;
    let same_rules = |x: &[Rule], y: &[Rule]| {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(x, y)| x.name == y.name && meaning(x) == meaning(y))
    };
    *name == b.name
        && *selector == b.selector
        && *mode == b.mode
        && *default_action == b.default_action
        && *log == b.log
        && *inbound == b.inbound
        && same_rules(rules, &b.rules)
        && same_rules(ingress, &b.ingress)
}

/// The diff from `before` (nothing when no policy is in force) to `after`.
pub fn diff(before: Option<&PolicySet>, after: &PolicySet) -> PolicyDiff {
    let index = |set: &'_ PolicySet| -> BTreeMap<String, Policy> {
        set.policies
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect()
    };
    let old = before.map(index).unwrap_or_default();
    let new = index(after);
    let mut out = PolicyDiff::default();
    for (name, policy) in &new {
        match old.get(name) {
            None => out.policies_added.push(name.clone()),
            Some(previous) if !same_policy(previous, policy) => {
                out.policies_changed.push(name.clone());
            }
            Some(_) => {}
        }
    }
    out.policies_removed = old
        .keys()
        .filter(|name| !new.contains_key(*name))
        .cloned()
        .collect();
    let old_rules: BTreeMap<String, RuleMeaning<'_>> = old.values().flat_map(rules).collect();
    let new_rules: BTreeMap<String, RuleMeaning<'_>> = new.values().flat_map(rules).collect();
    for (name, meaning) in &new_rules {
        match old_rules.get(name) {
            None => out.rules_added.push(name.clone()),
            Some(previous) if previous != meaning => out.rules_changed.push(name.clone()),
            Some(_) => {}
        }
    }
    out.rules_removed = old_rules
        .keys()
        .filter(|name| !new_rules.contains_key(*name))
        .cloned()
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::parse_str;

    fn set(yaml: &str) -> PolicySet {
        parse_str(Path::new("test.yaml"), yaml).expect("valid test policy")
    }

    fn policy(name: &str, rules: &str) -> String {
        format!(
            "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\n\
             spec:\n  selector: {{cgroups: [\"/t\"]}}\n  defaultAction: allow\n  egress:\n{rules}"
        )
    }

    const DENY_DOC: &str =
        "    - name: deny-doc\n      action: deny\n      to: [{cidr: 203.0.113.0/24}]\n";
    const DENY_OTHER: &str =
        "    - name: deny-other\n      action: deny\n      to: [{cidr: 198.51.100.0/24}]\n";

    #[test]
    fn first_policy_adds_every_rule_and_the_default() {
        let after = set(&policy("a", DENY_DOC));
        let d = diff(None, &after);
        assert_eq!(d.policies_added, ["a"]);
        assert_eq!(d.rules_added, ["a/default", "a/deny-doc"]);
        assert!(d.rules_removed.is_empty() && d.rules_changed.is_empty());
    }

    #[test]
    fn rules_added_removed_and_changed_are_told_apart() {
        let before = set(&policy("a", DENY_DOC));
        let after = set(&format!(
            "{}{DENY_OTHER}",
            policy("a", &DENY_DOC.replace("203.0.113.0/24", "203.0.113.0/25"))
        ));
        let d = diff(Some(&before), &after);
        assert_eq!(d.policies_changed, ["a"]);
        assert_eq!(d.rules_added, ["a/deny-other"]);
        assert_eq!(d.rules_changed, ["a/deny-doc"]);
        assert!(d.rules_removed.is_empty());
        let back = diff(Some(&after), &before);
        assert_eq!(back.rules_removed, ["a/deny-other"]);
    }

    #[test]
    fn an_identical_policy_is_no_change() {
        let before = set(&policy("a", DENY_DOC));
        assert!(diff(Some(&before), &before.clone()).is_empty());
    }
}
