//! Kubernetes support: pod selectors resolved to cgroup paths, and the EgressPolicy
//! CustomResourceDefinition generated from the policy parser's own types.
//!
//! `egress agent --kubernetes` runs the watch (`watch`), enforces its snapshots as a policy
//! source (`source`), attributes decisions to pods (`owners`) and writes status back
//! (`status`); the wiring is `crate::agent::kube`. See `docs/kubernetes.md`.

pub mod client;
pub mod crd;
pub mod layout;
#[cfg(test)]
mod manifest_tests;
pub mod owners;
pub mod pod;
#[cfg(test)]
mod pod_tests;
#[cfg(test)]
mod schema_check;
pub mod source;
pub mod state;
pub mod status;
pub mod uncovered;
#[cfg(test)]
mod uncovered_tests;
pub mod watch;

pub use layout::{CgroupDriver, ContainerId, Layout, QosClass, Runtime};
pub use pod::{Owner, Pod, PodResolution, resolve};

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("pod uid `{0}` is not a UUID")]
    PodUid(String),
    #[error("container id `{0}` is not `containerd://`, `cri-o://` or `docker://` and hex")]
    ContainerId(String),
    #[error("pod {0} has no status.qosClass yet")]
    NoQosClass(String),
    #[error("rendering the CRD: {0}")]
    Render(#[from] serde_yaml::Error),
}
