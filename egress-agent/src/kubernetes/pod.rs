//! The part of a Pod object the agent reads, and how pods resolve to cgroup paths.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::KubernetesError;
use super::layout::{ContainerId, Layout, QosClass};
use crate::policy::{PodSelector, PolicySet};

/// A Pod as the API server sends it; every other field is ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct Pod {
    pub metadata: PodMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resource_version: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Set by the API server at admission, so known before any container starts.
    #[serde(default)]
    pub qos_class: Option<QosClass>,
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    /// Absent until the runtime has created the container.
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
}

/// Who a cgroup path belongs to, for decision events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub pod: String,
    /// `None` for the pod's own cgroup (the sandbox, or a container not yet reported).
    pub container: Option<String>,
}

impl Pod {
    /// The pod's cgroup path. Without a QoS class the pod cannot be placed (guessing one would
    /// scope the policy to the wrong cgroup): an error the caller reports, retried on the pod's
    /// next update.
    pub fn cgroup_path(&self, layout: &Layout) -> Result<String, KubernetesError> {
        let qos = self.qos()?;
        layout.pod_path(&self.metadata.uid, qos)
    }

    fn qos(&self) -> Result<QosClass, KubernetesError> {
        self.status
            .qos_class
            .ok_or_else(|| KubernetesError::NoQosClass(self.key()))
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Every known cgroup path of the pod with its owner: the pod's, then each reported
    /// container's (init containers included).
    pub fn owners(&self, layout: &Layout) -> Result<Vec<(String, Owner)>, KubernetesError> {
        let qos = self.qos()?;
        let owner = |container: Option<&str>| Owner {
            namespace: self.metadata.namespace.clone(),
            pod: self.metadata.name.clone(),
            container: container.map(str::to_string),
        };
        let mut out = vec![(layout.pod_path(&self.metadata.uid, qos)?, owner(None))];
        let statuses = self
            .status
            .container_statuses
            .iter()
            .chain(&self.status.init_container_statuses);
        for status in statuses {
            let Some(raw) = &status.container_id else {
                continue;
            };
            let id = ContainerId::parse(raw)?;
            let path = layout.container_path(&self.metadata.uid, qos, &id)?;
            out.push((path, owner(Some(&status.name))));
        }
        Ok(out)
    }
}

/// What resolving pods against policies produced: the paths for `CgroupResolution::pods`, and
/// the pods that could not be placed (reported, and retried on their next update).
#[derive(Debug, Default)]
pub struct PodResolution {
    pub pods: HashMap<PodSelector, Vec<String>>,
    pub errors: Vec<KubernetesError>,
}

/// Resolves every pod selector of `policies` to the cgroup paths of the matching `pods`.
/// A selected pod contributes its pod-level path, which covers all its containers, including
/// those that start later. Paths are sorted and unique.
pub fn resolve(policies: &PolicySet, pods: &[Pod], layout: &Layout) -> PodResolution {
    let mut out = PodResolution::default();
    let mut placed: Vec<(&Pod, String)> = Vec::new();
    for pod in pods {
        match pod.cgroup_path(layout) {
            Ok(path) => placed.push((pod, path)),
            Err(err) => out.errors.push(err),
        }
    }
    let selectors = policies
        .policies
        .iter()
        .filter_map(|p| p.selector.pods.as_ref());
    for selector in selectors {
        if out.pods.contains_key(selector) {
            continue;
        }
        let mut paths: Vec<String> = placed
            .iter()
            .filter(|(pod, _)| selector.matches(&pod.metadata.namespace, &pod.metadata.labels))
            .map(|(_, path)| path.clone())
            .collect();
        paths.sort();
        paths.dedup();
        out.pods.insert(selector.clone(), paths);
    }
    out
}
