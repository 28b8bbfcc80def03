//! Where policy comes from: files and directories, or the default policy compiled into the
//! binary, which drops nothing and records every outbound connection.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::kubernetes::source::KubePolicies;
use crate::policy::{self, LoadError, PodSelector, PolicySet};

/// `policies/default.yaml`, embedded so that `egress agent` runs with no files at all.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../policies/default.yaml");
/// How the embedded default appears in messages and audit records.
pub const EMBEDDED_NAME: &str = "<embedded>/default.yaml";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// Policy files, or directories of `*.yaml` / `*.yml` files.
    Files(Vec<PathBuf>),
    /// The embedded default policy.
    EmbeddedDefault,
    /// EgressPolicy objects from the Kubernetes API, pods resolved (`egress agent --kubernetes`).
    Kubernetes(std::sync::Arc<KubePolicies>),
}

impl PolicySource {
    /// The files given, or the embedded default when there are none.
    pub fn from_paths(paths: Vec<PathBuf>) -> Self {
        if paths.is_empty() {
            Self::EmbeddedDefault
        } else {
            Self::Files(paths)
        }
    }

    pub fn load(&self) -> Result<PolicySet, LoadError> {
        match self {
            Self::Files(paths) => policy::load(paths),
            Self::EmbeddedDefault => policy::parse_str(Path::new(EMBEDDED_NAME), EMBEDDED_DEFAULT),
            Self::Kubernetes(kube) => kube.load(),
        }
    }

    /// Pod selectors resolved to cgroup paths; empty outside Kubernetes mode.
    pub fn pods(&self) -> std::collections::HashMap<PodSelector, Vec<String>> {
        match self {
            Self::Kubernetes(kube) => kube.pods().clone(),
            Self::Files(_) | Self::EmbeddedDefault => std::collections::HashMap::new(),
        }
    }

    /// The sources as audit records list them.
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::Files(paths) => paths.iter().map(|p| p.display().to_string()).collect(),
            Self::EmbeddedDefault => vec![EMBEDDED_NAME.to_owned()],
            Self::Kubernetes(kube) => kube.names(),
        }
    }

    /// SHA-256 over the policy as read: each file's path and contents, in load order.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        match self {
            Self::Kubernetes(kube) => return kube.digest(),
            Self::Files(paths) => {
                for file in policy::source_files(paths).unwrap_or_default() {
                    hasher.update(file.display().to_string().as_bytes());
                    hasher.update([0]);
                    hasher.update(std::fs::read(&file).unwrap_or_default());
                    hasher.update([0]);
                }
            }
            Self::EmbeddedDefault => {
                hasher.update(EMBEDDED_NAME.as_bytes());
                hasher.update([0]);
                hasher.update(EMBEDDED_DEFAULT.as_bytes());
                hasher.update([0]);
            }
        }
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_loads_and_governs_everything_without_dropping() {
        let source = PolicySource::from_paths(Vec::new());
        assert_eq!(source, PolicySource::EmbeddedDefault);
        let set = source.load().expect("the embedded default is valid");
        assert_eq!(set.policies.len(), 1);
        let decision = crate::eval::decide(
            &set,
            "/any",
            1000,
            "203.0.113.1".parse().expect("ip"),
            6,
            443,
        );
        assert_eq!(decision.verdict, egress_common::verdict::ALLOW);
        assert_eq!(
            decision.log, 1,
            "the default policy records every connection"
        );
        assert_eq!(source.digest().len(), 64);
    }
}
