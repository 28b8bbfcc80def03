//! Which pod (and container) a cgroup path belongs to, for decision events: the watch's latest
//! snapshot, shared between the run loop (which replaces it) and the event reader (which reads
//! it for every record).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use super::Owner;

/// Cgroup path (relative to the cgroup2 root, as records name it) to owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    paths: BTreeMap<String, Owner>,
}

impl Owners {
    pub fn new(paths: BTreeMap<String, Owner>) -> Self {
        Self { paths }
    }

    /// The owner of `path`: the nearest known ancestor (or the path itself). A path below a
    /// pod's cgroup that no container status names yet (a container just started, or the
    /// sandbox's own leaf) belongs to the pod with no container; below a known container's
    /// cgroup (a process that made a sub-cgroup), to that container.
    pub fn owner_of(&self, path: &str) -> Option<&Owner> {
        let mut candidate = path.trim_end_matches('/');
        while !candidate.is_empty() {
            if let Some(owner) = self.paths.get(candidate) {
                return Some(owner);
            }
            candidate = &candidate[..candidate.rfind('/')?];
        }
        None
    }
}

/// The owners the event reader consults; empty outside Kubernetes mode.
#[derive(Clone, Debug, Default)]
pub struct SharedOwners(Arc<RwLock<Owners>>);

impl SharedOwners {
    pub fn replace(&self, owners: Owners) {
        // A panic elsewhere cannot leave a half-written map: replacement is one assignment.
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = owners;
    }

    /// `(namespace, pod, container)` of `path`, each `None` when unknown.
    pub fn lookup(&self, path: &str) -> (Option<String>, Option<String>, Option<String>) {
        let owners = self.0.read().unwrap_or_else(PoisonError::into_inner);
        match owners.owner_of(path) {
            Some(owner) => (
                Some(owner.namespace.clone()),
                Some(owner.pod.clone()),
                owner.container.clone(),
            ),
            None => (None, None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(container: Option<&str>) -> Owner {
        Owner {
            namespace: "shop".into(),
            pod: "web-1".into(),
            container: container.map(str::to_string),
        }
    }

    #[test]
    fn the_nearest_known_ancestor_owns_a_path() {
        let pod = "/kubepods/burstable/pod1";
        let owners = Owners::new(
            [
                (pod.to_string(), owner(None)),
                (format!("{pod}/abc"), owner(Some("app"))),
            ]
            .into(),
        );
        assert_eq!(owners.owner_of(pod), Some(&owner(None)));
        assert_eq!(
            owners.owner_of(&format!("{pod}/abc")),
            Some(&owner(Some("app")))
        );
        assert_eq!(
            owners.owner_of(&format!("{pod}/abc/sub")),
            Some(&owner(Some("app")))
        );
        assert_eq!(
            owners.owner_of(&format!("{pod}/def")),
            Some(&owner(None)),
            "a container no status names yet belongs to its pod"
        );
        assert_eq!(owners.owner_of("/kubepods/burstable/pod10"), None);
        assert_eq!(owners.owner_of("/kubepods/burstable"), None);
        assert_eq!(owners.owner_of("/"), None);
        assert_eq!(owners.owner_of("id:42"), None);
    }

    #[test]
    fn shared_owners_are_replaced_whole() {
        let shared = SharedOwners::default();
        assert_eq!(shared.lookup("/p"), (None, None, None));
        shared.replace(Owners::new([("/p".to_string(), owner(Some("c")))].into()));
        assert_eq!(
            shared.lookup("/p/x"),
            (Some("shop".into()), Some("web-1".into()), Some("c".into()))
        );
    }
}
