//! Writing what this node did with each EgressPolicy back to the object's `status`:
//! `observedGeneration`, `appliedNodes`, `errorNodes` and one `errors` entry per failing node.
//!
//! Every agent writes the same object, so each write is a read-modify-write guarded by the
//! object's `resourceVersion` (a conflicting write gets `409` and is redone on the new status).
//! Each node is an entry: its name in `applied`, or its entry in `errors`; the counts are the
//! lengths of those lists, so a node reporting again (or an agent restarted on the same
//! generation) is never counted twice.

use std::collections::HashMap;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::client::{KubeApiError, egress_policies};
use super::state::Snapshot;

/// Attempts of one read-modify-write against concurrent writers before giving up (the next
/// report retries).
const MAX_ATTEMPTS: usize = 5;
/// Longest error message written: the status is shared by every node.
const MAX_MESSAGE: usize = 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub applied_nodes: u32,
    #[serde(default)]
    pub error_nodes: u32,
    /// Names of the nodes enforcing `observed_generation`, sorted: what makes `applied_nodes`
    /// exact across agent restarts.
    #[serde(default)]
    pub applied: Vec<String>,
    #[serde(default)]
    pub errors: Vec<NodeError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeError {
    pub node: String,
    pub message: String,
}

/// What a node did with one generation of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Error(String),
}

/// The status after `node` reports `outcome` for `generation`, given the `current` one; `None`
/// when nothing changes or the object has moved on to a newer generation (reported once the
/// node catches up).
pub fn merge(
    current: &PolicyStatus,
    generation: i64,
    node: &str,
    outcome: &Outcome,
) -> Option<PolicyStatus> {
    let mut next = match current.observed_generation {
        Some(seen) if seen > generation => return None,
        Some(seen) if seen == generation => current.clone(),
        // Counts of an older generation say nothing about this one.
        _ => PolicyStatus {
            observed_generation: Some(generation),
            ..PolicyStatus::default()
        },
    };
    next.applied.retain(|n| n != node);
    next.errors.retain(|e| e.node != node);
    match outcome {
        Outcome::Applied => next.applied.push(node.to_string()),
        Outcome::Error(message) => next.errors.push(NodeError {
            node: node.to_string(),
            message: truncate(message),
        }),
    }
    next.applied.sort();
    next.errors.sort_by(|a, b| a.node.cmp(&b.node));
    next.applied_nodes = u32::try_from(next.applied.len()).unwrap_or(u32::MAX);
    next.error_nodes = u32::try_from(next.errors.len()).unwrap_or(u32::MAX);
    (next != *current).then_some(next)
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// Patches EgressPolicy status for one node.
pub struct StatusWriter {
    api: Api<DynamicObject>,
    node: String,
    /// Policy name to the generation and outcome this writer last wrote.
    reported: HashMap<String, (i64, Outcome)>,
}

impl StatusWriter {
    pub fn new(client: Client, node: impl Into<String>) -> Self {
        Self {
            api: egress_policies(client),
            node: node.into(),
            reported: HashMap::new(),
        }
    }

    /// Reports every policy of `snapshot`: invalid ones as errors, valid ones as `applied`
    /// (the agent's result of applying the snapshot: `Ok`, or why the generation was refused).
    /// Returns the writes that failed; they are retried by the next report.
    pub async fn report_snapshot(
        &mut self,
        snapshot: &Snapshot,
        applied: Result<(), String>,
    ) -> Vec<KubeApiError> {
        let mut failures = Vec::new();
        for entry in &snapshot.policies {
            let outcome = match (&entry.parsed, &applied) {
                (Err(message), _) | (Ok(_), Err(message)) => Outcome::Error(message.clone()),
                (Ok(_), Ok(())) => Outcome::Applied,
            };
            if let Err(err) = self.report(&entry.name, entry.generation, outcome).await {
                failures.push(err);
            }
        }
        let live: Vec<&str> = snapshot.policies.iter().map(|p| p.name.as_str()).collect();
        self.reported
            .retain(|name, _| live.contains(&name.as_str()));
        failures
    }

    /// Reports `outcome` for `generation` of the policy `name`; nothing is written when this
    /// writer already reported exactly that.
    pub async fn report(
        &mut self,
        name: &str,
        generation: i64,
        outcome: Outcome,
    ) -> Result<(), KubeApiError> {
        if self.reported.get(name) == Some(&(generation, outcome.clone())) {
            return Ok(());
        }
        for _ in 0..MAX_ATTEMPTS {
            let object = match self.api.get_status(name).await {
                Ok(object) => object,
                // Deleted meanwhile: nothing to report on.
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    self.reported.remove(name);
                    return Ok(());
                }
                Err(err) => return Err(err.into()),
            };
            let current: PolicyStatus = object
                .data
                .get("status")
                .cloned()
                .and_then(|s| serde_json::from_value(s).ok())
                .unwrap_or_default();
            let Some(next) = merge(&current, generation, &self.node, &outcome) else {
                self.reported
                    .insert(name.to_string(), (generation, outcome));
                return Ok(());
            };
            // The resourceVersion makes the patch conditional: a concurrent writer's change
            // fails it with 409 instead of being overwritten.
            let patch = json!({
                "metadata": {"resourceVersion": object.metadata.resource_version},
                "status": next,
            });
            match self
                .api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.reported
                        .insert(name.to_string(), (generation, outcome));
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(KubeApiError::Conflict {
            name: name.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(generation: i64, nodes: &[&str]) -> PolicyStatus {
        PolicyStatus {
            observed_generation: Some(generation),
            applied_nodes: u32::try_from(nodes.len()).expect("small"),
            applied: nodes.iter().map(ToString::to_string).collect(),
            ..PolicyStatus::default()
        }
    }

    #[test]
    fn counts_restart_with_each_generation() {
        let first = merge(&PolicyStatus::default(), 1, "a", &Outcome::Applied);
        assert_eq!(first, Some(applied(1, &["a"])));
        let second = merge(&applied(1, &["a"]), 1, "b", &Outcome::Applied);
        assert_eq!(second, Some(applied(1, &["a", "b"])));
        let newer = merge(&applied(1, &["a", "b"]), 2, "a", &Outcome::Applied);
        assert_eq!(
            newer,
            Some(applied(2, &["a"])),
            "generation 1's counts are dropped"
        );
        assert_eq!(
            merge(&applied(3, &["a"]), 2, "a", &Outcome::Applied),
            None,
            "a node behind the object does not rewind its status"
        );
    }

    #[test]
    fn a_restarted_agent_is_not_counted_twice() {
        // A new writer remembers nothing: the status itself says the node is counted.
        assert_eq!(
            merge(&applied(1, &["a", "b"]), 1, "a", &Outcome::Applied),
            None
        );
    }

    #[test]
    fn a_node_moves_between_applied_and_error_without_double_counting() {
        let failed = merge(
            &applied(1, &["a", "b"]),
            1,
            "a",
            &Outcome::Error("bad".into()),
        )
        .expect("changes");
        assert_eq!(
            (failed.applied_nodes, failed.error_nodes),
            (1, 1),
            "{failed:?}"
        );
        assert_eq!(failed.errors[0].node, "a");
        let again = merge(&failed, 1, "a", &Outcome::Error("worse".into())).expect("changes");
        assert_eq!(
            (again.error_nodes, again.errors[0].message.as_str()),
            (1, "worse")
        );
        let healed = merge(&again, 1, "a", &Outcome::Applied).expect("changes");
        assert_eq!(healed, applied(1, &["a", "b"]));
        assert_eq!(merge(&healed, 1, "a", &Outcome::Applied), None);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_MESSAGE + 3 && cut.ends_with("..."));
    }
}
