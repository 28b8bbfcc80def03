//! Positions of values that deserialized fine.
//!
//! serde_yaml only reports positions with errors. To point a diagnostic (a duplicate name, a
//! warning) at a value that parsed successfully, the loader parses the document again with a
//! probe armed: the value's deserializer raises [`PROBE_MESSAGE`] when it reaches the target,
//! and the error's position is the value's position.

use std::cell::RefCell;

/// Message of the error a probe raises; never shown to users.
pub(crate) const PROBE_MESSAGE: &str = "\u{0}egress-probe";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    PolicyName,
    /// `name` of the n-th rule of `spec.egress`.
    RuleName(usize),
    /// The m-th `to` entry of the n-th rule of `spec.egress`.
    ToEntry(usize, usize),
    /// `name` of the n-th rule of `spec.ingress`.
    IngressRuleName(usize),
}

#[derive(Default)]
struct State {
    target: Option<Target>,
    next_rule: usize,
    next_ingress_rule: usize,
    /// The rule being read, as the target its name would be.
    current_rule: Option<Target>,
    next_to: usize,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

/// Starts a document, probing for `target` (or nothing).
pub(crate) fn reset(target: Option<Target>) {
    STATE.with_borrow_mut(|s| {
        *s = State {
            target,
            ..State::default()
        };
    });
}

/// Starts a rule of `spec.egress`.
pub(crate) fn enter_rule() {
    STATE.with_borrow_mut(|s| {
        s.current_rule = Some(Target::RuleName(s.next_rule));
        s.next_rule += 1;
        s.next_to = 0;
    });
}

/// Starts a rule of `spec.ingress`.
pub(crate) fn enter_ingress_rule() {
    STATE.with_borrow_mut(|s| {
        s.current_rule = Some(Target::IngressRuleName(s.next_ingress_rule));
        s.next_ingress_rule += 1;
    });
}

pub(crate) fn hit_rule_name() -> bool {
    STATE.with_borrow(|s| s.target.is_some() && s.target == s.current_rule)
}

/// Starts a `to` entry of an egress rule; true when it is the target.
pub(crate) fn enter_to() -> bool {
    STATE.with_borrow_mut(|s| {
        let index = s.next_to;
        s.next_to += 1;
        match s.current_rule {
            Some(Target::RuleName(rule)) => s.target == Some(Target::ToEntry(rule, index)),
            _ => false,
        }
    })
}

pub(crate) fn hit_policy_name() -> bool {
    STATE.with_borrow(|s| s.target == Some(Target::PolicyName))
}
