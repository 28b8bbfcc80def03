//! The policy the agent enforces in Kubernetes mode, as a policy source: the valid
//! EgressPolicy objects of a snapshot, with their pod selectors resolved on this node.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest as _, Sha256};

use super::state::Snapshot;
use super::uncovered::UNCOVERED_POLICY;
use crate::policy::{LoadError, PodSelector, PolicySet};

/// One snapshot's enforceable part. Two are equal when their digests are: same objects, same
/// documents, same resolved pod paths.
#[derive(Clone, Debug)]
pub struct KubePolicies {
    set: PolicySet,
    pods: HashMap<PodSelector, Vec<String>>,
    names: Vec<String>,
    digest: String,
}

impl PartialEq for KubePolicies {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for KubePolicies {}

impl KubePolicies {
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        let mut hasher = Sha256::new();
        let mut names = Vec::new();
        for entry in snapshot.policies.iter().filter(|p| p.parsed.is_ok()) {
            hasher.update(entry.name.as_bytes());
            hasher.update([0]);
            hasher.update(entry.document.as_bytes());
            hasher.update([0]);
            names.push(format!("egresspolicy/{}", entry.name));
        }
        // The pods are part of what is enforced: a pod that comes or goes changes the digest.
        let pods: BTreeMap<&PodSelector, &Vec<String>> = snapshot.pods.iter().collect();
        hasher.update(format!("{pods:?}").as_bytes());
        // So are the known pods the policy for uncovered ones leaves out (no document has it).
        for policy in snapshot.set.policies.iter() {
            if policy.name == UNCOVERED_POLICY {
                hasher.update(format!("{:?}", policy.selector).as_bytes());
            }
        }
        let digest = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Self {
            set: snapshot.set.clone(),
            pods: snapshot.pods.clone(),
            names,
            digest,
        }
    }

    /// The policies; invalid objects were left out when the snapshot was taken.
    pub fn load(&self) -> Result<PolicySet, LoadError> {
        Ok(self.set.clone())
    }

    /// `egresspolicy/<name>` of each enforced object.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// SHA-256 over each enforced object's name and policy document, then the resolved pods.
    pub fn digest(&self) -> String {
        self.digest.clone()
    }

    /// Pod selector to the cgroup paths of the matching pods on this node.
    pub fn pods(&self) -> &HashMap<PodSelector, Vec<String>> {
        &self.pods
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::state::PolicyEntry;

    fn snapshot(spec: &serde_json::Value, pods: &[&str]) -> Snapshot {
        let entry = PolicyEntry::parse("web", 1, Some(spec));
        let set = entry.parsed.clone().expect("valid");
        let selector = set.policies[0].selector.pods.clone().expect("pod selector");
        let broken = PolicyEntry::parse("broken", 1, Some(&serde_json::json!({"egress": 3})));
        Snapshot {
            policies: vec![broken, entry],
            set,
            pods: [(selector, pods.iter().map(ToString::to_string).collect())].into(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_digest_covers_documents_and_pods_and_names_only_valid_objects() {
        let spec = serde_json::json!({"selector": {"pods": {"matchLabels": {"app": "web"}}},
                                      "defaultAction": "deny"});
        let a = KubePolicies::from_snapshot(&snapshot(&spec, &["/kubepods/poda"]));
        assert_eq!(a.names(), ["egresspolicy/web"]);
        assert_eq!(a.load().expect("loads").policies.len(), 1);
        assert_eq!(a.pods().values().flatten().count(), 1);
        let same = KubePolicies::from_snapshot(&snapshot(&spec, &["/kubepods/poda"]));
        assert_eq!(a, same);
        let more_pods =
            KubePolicies::from_snapshot(&snapshot(&spec, &["/kubepods/poda", "/kubepods/podb"]));
        assert_ne!(a, more_pods);
        let other_spec = serde_json::json!({"selector": {"pods": {"matchLabels": {"app": "web"}}},
                                            "defaultAction": "allow"});
        let changed = KubePolicies::from_snapshot(&snapshot(&other_spec, &["/kubepods/poda"]));
        assert_ne!(a.digest(), changed.digest());
    }
}
