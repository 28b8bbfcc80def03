//! `--kube-uncovered-pods deny`: the traffic of a pod the watch does not know yet is denied.
//!
//! New pod cgroups are governed by the kernel with no agent action (the deepest listed
//! ancestor decides), so a policy that selects the kubepods root covers a pod from its first
//! packet. Known pods are [excluded](crate::policy::Selector::excluded) from it: they get
//! exactly the policies that select them, or none. A pod is known once the watch has it with a
//! QoS class (which places its cgroup); until then, and for anything else below the root (the
//! QoS class cgroups, a pod of another node's leftovers), the synthetic policy denies.

use std::collections::BTreeSet;

use super::Layout;
use crate::policy::{Action, LogMode, Mode, Policy, Selector};

/// Name of the synthetic policy; its denials are audited under it. An EgressPolicy object of
/// this name is rejected while the option is on.
pub const UNCOVERED_POLICY: &str = "kubernetes-uncovered";

/// What happens to the traffic of pods the watch does not know yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UncoveredPods {
    /// Ungoverned until the watch has them (and the agent's cgroup rescan has seen their
    /// cgroup): no egress rule of theirs is missed by a deny, some packets may precede policy.
    #[default]
    Allow,
    /// Denied (and audited as [`UNCOVERED_POLICY`]) until then.
    Deny,
}

/// The deny-everything policy for the cgroups below `layout`'s kubepods root other than the
/// `known` pod cgroup paths and their descendants.
pub fn uncovered_policy(layout: &Layout, known: &BTreeSet<String>) -> Policy {
    let excluded: Vec<String> = known.iter().cloned().collect();
    // The known paths are selected as well as excluded: selecting a path below the root adds
    // nothing, but the agent then watches for them to appear, and writes their exemption as
    // soon as the kubelet makes them (its rescan looks up the paths selectors name).
    let mut cgroups = vec![layout.kubepods_root()];
    cgroups.extend(excluded.iter().cloned());
    Policy {
        name: UNCOVERED_POLICY.to_string(),
        selector: Selector {
            cgroups,
            units: Vec::new(),
            uids: Vec::new(),
            pods: None,
            excluded,
        },
        mode: Mode::Enforce,
        default_action: Action::Deny,
        log: LogMode::Deny,
        ..Policy::default()
    }
}

/// The error an EgressPolicy object named [`UNCOVERED_POLICY`] is reported with.
pub fn reserved_name_error() -> String {
    format!(
        "egresspolicy/{UNCOVERED_POLICY}: the name is reserved while the agent runs with \
         --kube-uncovered-pods deny; rename the object"
    )
}
