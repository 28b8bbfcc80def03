//! What the watch knows (EgressPolicy objects, this node's pods) and the [`Snapshot`] of it the
//! agent applies. Pure: the watch loop feeds it objects, tests feed it JSON.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::crd::{GROUP, KIND, VERSION};
use super::uncovered::{UNCOVERED_POLICY, UncoveredPods, reserved_name_error, uncovered_policy};
use super::{Layout, Owner, Pod, resolve};
use crate::compile::CgroupResolution;
use crate::policy::{Diagnostic, PodSelector, PolicySet, parse_str};

/// One EgressPolicy object, parsed when it arrives (pods change far more often than policies,
/// and every pod change produces a snapshot).
#[derive(Clone, Debug)]
pub struct PolicyEntry {
    pub name: String,
    /// `metadata.generation`: what the status reports as observed.
    pub generation: i64,
    /// The policy (a set of one), or every problem the parser found, rendered.
    pub parsed: Result<PolicySet, String>,
    /// The policy document the object was parsed as: what the enforced policy's digest covers.
    pub document: String,
}

impl PolicyEntry {
    /// Parses `spec` with the same parser as policy files: the object is re-rendered as a policy
    /// document (`apiVersion`, `kind`, `metadata.name`, `spec`), so a CRD object and a file
    /// with the same spec are the same policy. Diagnostics name `egresspolicy/<name>`.
    pub fn parse(name: &str, generation: i64, spec: Option<&Value>) -> Self {
        let document = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": KIND,
            "metadata": {"name": name},
            "spec": spec.cloned().unwrap_or(Value::Null),
        });
        let origin = format!("egresspolicy/{name}");
        let (document, parsed) = match serde_yaml::to_string(&document) {
            Ok(text) => {
                let parsed = parse_str(Path::new(&origin), &text).map_err(|e| e.to_string());
                (text, parsed)
            }
            Err(e) => (String::new(), Err(format!("{origin}: {e}"))),
        };
        Self {
            name: name.to_string(),
            generation,
            parsed,
            document,
        }
    }

    pub fn from_object(object: &DynamicObject) -> Option<Self> {
        let name = object.metadata.name.as_deref()?;
        let generation = object.metadata.generation.unwrap_or(0);
        Some(Self::parse(name, generation, object.data.get("spec")))
    }

    fn same_as(&self, other: &Self) -> bool {
        let Self {
            name,
            generation,
            parsed,
            document,
        } = self;
        let outcome = |p: &Result<PolicySet, String>| p.as_ref().err().cloned();
        *name == other.name
            && *generation == other.generation
            && outcome(parsed) == outcome(&other.parsed)
            && *document == other.document
    }
}

/// Everything the agent needs to apply Kubernetes policy on this node.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every EgressPolicy object, by name; invalid ones carry their errors (and are not
    /// enforced, while the valid ones are).
    pub policies: Vec<PolicyEntry>,
    /// The valid policies as one set (ids assigned over all of them), with their warnings.
    pub set: PolicySet,
    /// Pod selectors of [`Self::set`] resolved to pod cgroup paths on this node.
    pub pods: HashMap<PodSelector, Vec<String>>,
    /// Pods that could not be placed yet (no QoS class), rendered.
    pub pod_errors: Vec<String>,
    /// Every known cgroup path of this node's pods (the pod's, and each reported container's)
    /// with its owner, for decision events.
    pub owners: BTreeMap<String, Owner>,
    /// The API server could not be reached on the last attempt: this is the last known state.
    pub stale: bool,
}

impl Snapshot {
    /// The resolution to compile [`Self::set`] with (pods only; units are the agent's).
    pub fn resolution(&self) -> CgroupResolution {
        CgroupResolution {
            units: HashMap::new(),
            pods: self.pods.clone(),
        }
    }

    /// Whether applying `other` instead of `self` would change anything (the watch publishes
    /// only changes: most pod updates are status churn that moves no cgroup).
    pub fn same_as(&self, other: &Self) -> bool {
        let Self {
            policies,
            set: _,
            pods,
            pod_errors,
            owners,
            stale,
        } = self;
        // `set` is a function of `policies` and of the pods' paths, which `owners` holds.
        policies.len() == other.policies.len()
            && policies
                .iter()
                .zip(&other.policies)
                .all(|(a, b)| a.same_as(b))
            && *pods == other.pods
            && *pod_errors == other.pod_errors
            && *owners == other.owners
            && *stale == other.stale
    }
}

/// The objects the watch holds.
#[derive(Debug, Default)]
pub struct KubeState {
    policies: BTreeMap<String, PolicyEntry>,
    /// By UID: names are reused by a pod's replacement, UIDs never.
    pods: BTreeMap<String, Pod>,
}

impl KubeState {
    pub fn replace_policies(&mut self, objects: &[DynamicObject]) {
        self.policies = objects
            .iter()
            .filter_map(PolicyEntry::from_object)
            .map(|entry| (entry.name.clone(), entry))
            .collect();
    }

    pub fn upsert_policy(&mut self, object: &DynamicObject) {
        if let Some(entry) = PolicyEntry::from_object(object) {
            self.policies.insert(entry.name.clone(), entry);
        }
    }

    pub fn remove_policy(&mut self, object: &DynamicObject) {
        if let Some(name) = &object.metadata.name {
            self.policies.remove(name);
        }
    }

    pub fn replace_pods(&mut self, objects: &[DynamicObject]) {
        self.pods = objects
            .iter()
            .filter_map(pod_of)
            .map(|pod| (pod.metadata.uid.clone(), pod))
            .collect();
    }

    pub fn upsert_pod(&mut self, object: &DynamicObject) {
        if let Some(pod) = pod_of(object) {
            self.pods.insert(pod.metadata.uid.clone(), pod);
        }
    }

    pub fn remove_pod(&mut self, object: &DynamicObject) {
        if let Some(uid) = &object.metadata.uid {
            self.pods.remove(uid);
        }
    }

    /// The snapshot of the current objects, pods placed with `layout`; with
    /// [`UncoveredPods::Deny`] the set also holds the [`uncovered_policy`] for the pods known.
    pub fn snapshot(&self, layout: &Layout, uncovered: UncoveredPods, stale: bool) -> Snapshot {
        let mut policies: Vec<PolicyEntry> = self.policies.values().cloned().collect();
        let pods: Vec<Pod> = self.pods.values().cloned().collect();
        let mut valid = Vec::new();
        if uncovered == UncoveredPods::Deny {
            // Pods without a QoS class cannot be placed: they stay uncovered, hence denied.
            let known = pods.iter().filter_map(|p| p.cgroup_path(layout).ok());
            valid.push(uncovered_policy(layout, &known.collect()));
            for entry in policies.iter_mut().filter(|e| e.name == UNCOVERED_POLICY) {
                entry.parsed = Err(reserved_name_error());
            }
        }
        let mut warnings: Vec<Diagnostic> = Vec::new();
        for entry in &policies {
            if let Ok(set) = &entry.parsed {
                warnings.extend(set.warnings.iter().cloned());
                valid.extend(set.policies.iter().cloned());
            }
        }
        let mut set = PolicySet::new(valid);
        set.warnings = warnings;
        let resolution = resolve(&set, &pods, layout);
        // Pods without a QoS class are in `pod_errors` already.
        let owners = pods
            .iter()
            .filter_map(|pod| pod.owners(layout).ok())
            .flatten()
            .collect();
        Snapshot {
            policies,
            set,
            pods: resolution.pods,
            pod_errors: resolution.errors.iter().map(ToString::to_string).collect(),
            owners,
            stale,
        }
    }
}

/// The fields of a pod the agent reads; objects that lack them (never sent by a real API
/// server) are skipped with a warning rather than failing the watch.
fn pod_of(object: &DynamicObject) -> Option<Pod> {
    let parsed = serde_json::to_value(object).and_then(serde_json::from_value::<Pod>);
    match parsed {
        Ok(pod) => Some(pod),
        Err(err) => {
            tracing::warn!(
                pod = object.metadata.name.as_deref().unwrap_or("?"),
                "ignoring a pod object: {err}"
            );
            None
        }
    }
}
