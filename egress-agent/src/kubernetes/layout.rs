//! Where the kubelet puts a pod's cgroup and its containers' cgroups, for both cgroup drivers,
//! every QoS class, and the containerd, CRI-O and Docker (cri-dockerd) runtimes.
//!
//! Pure functions of the pod's UID, QoS class and container ids: the pod's path is known as
//! soon as the API server has the pod, before any of its containers runs.

use super::KubernetesError;

/// The kubelet's `cgroupDriver`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    /// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/...`
    Systemd,
    /// `/kubepods/burstable/pod<uid>/...`
    Cgroupfs,
}

/// `status.qosClass` of a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// The container runtime, from the scheme of `containerStatuses[].containerID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
}

/// A container as the runtime names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerId {
    pub runtime: Runtime,
    /// Lowercase hex.
    pub id: String,
}

impl ContainerId {
    /// Parses `containerd://<hex>`, `cri-o://<hex>` or `docker://<hex>`.
    pub fn parse(s: &str) -> Result<Self, KubernetesError> {
        let bad = || KubernetesError::ContainerId(s.to_string());
        let (scheme, id) = s.split_once("://").ok_or_else(bad)?;
        let runtime = match scheme {
            "containerd" => Runtime::Containerd,
            "cri-o" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => return Err(bad()),
        };
        // Only hex reaches a path: an id can never add a component or climb out.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self {
            runtime,
            id: id.to_ascii_lowercase(),
        })
    }
}

/// How a node lays out pod cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub driver: CgroupDriver,
    /// Where the `kubepods` hierarchy sits, as seen from the agent's cgroup2 root: normally
    /// `/`. (A systemd-driver kubelet with its own `--cgroup-root` also renames the slices,
    /// e.g. kind's `kubelet-kubepods.slice`; that layout is not supported yet.)
    pub parent: String,
}

impl Layout {
    pub fn new(driver: CgroupDriver) -> Self {
        Self {
            driver,
            parent: "/".into(),
        }
    }

    fn join(&self, rest: &str) -> String {
        format!("{}/{rest}", self.parent.trim_end_matches('/'))
    }

    /// The cgroup every pod's cgroup lies below (with the QoS class cgroups between).
    pub fn kubepods_root(&self) -> String {
        self.join(match self.driver {
            CgroupDriver::Systemd => "kubepods.slice",
            CgroupDriver::Cgroupfs => "kubepods",
        })
    }

    /// The pod's cgroup path. `uid` must be a UUID (hex and `-`), as the API server assigns.
    pub fn pod_path(&self, uid: &str, qos: QosClass) -> Result<String, KubernetesError> {
        if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(KubernetesError::PodUid(uid.to_string()));
        }
        let uid = uid.to_ascii_lowercase();
        Ok(match (self.driver, qos) {
            // systemd slice names use `-` for nesting, so the UID's dashes become `_`.
            (CgroupDriver::Systemd, QosClass::Guaranteed) => self.join(&format!(
                "kubepods.slice/kubepods-pod{}.slice",
                uid.replace('-', "_")
            )),
            (CgroupDriver::Systemd, qos) => {
                let class = qos_dir(qos);
                self.join(&format!(
                    "kubepods.slice/kubepods-{class}.slice/kubepods-{class}-pod{}.slice",
                    uid.replace('-', "_")
                ))
            }
            (CgroupDriver::Cgroupfs, QosClass::Guaranteed) => {
                self.join(&format!("kubepods/pod{uid}"))
            }
            (CgroupDriver::Cgroupfs, qos) => {
                self.join(&format!("kubepods/{}/pod{uid}", qos_dir(qos)))
            }
        })
    }

    /// A container's cgroup path inside its pod's.
    pub fn container_path(
        &self,
        uid: &str,
        qos: QosClass,
        container: &ContainerId,
    ) -> Result<String, KubernetesError> {
        let pod = self.pod_path(uid, qos)?;
        let id = &container.id;
        let leaf = match (self.driver, container.runtime) {
            (CgroupDriver::Systemd, Runtime::Containerd) => format!("cri-containerd-{id}.scope"),
            (CgroupDriver::Systemd, Runtime::CriO) => format!("crio-{id}.scope"),
            (CgroupDriver::Systemd, Runtime::Docker) => format!("docker-{id}.scope"),
            (CgroupDriver::Cgroupfs, Runtime::CriO) => format!("crio-{id}"),
            (CgroupDriver::Cgroupfs, Runtime::Containerd | Runtime::Docker) => id.clone(),
        };
        Ok(format!("{pod}/{leaf}"))
    }
}

fn qos_dir(qos: QosClass) -> &'static str {
    match qos {
        QosClass::Guaranteed => "",
        QosClass::Burstable => "burstable",
        QosClass::BestEffort => "besteffort",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5f2b8c1e-0a4d-4c3b-9e7f-1a2b3c4d5e6f";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn cid(s: &str) -> ContainerId {
        ContainerId::parse(s).expect("valid test input")
    }

    #[test]
    fn systemd_pod_paths_for_every_qos_class() {
        let l = Layout::new(CgroupDriver::Systemd);
        let u = "5f2b8c1e_0a4d_4c3b_9e7f_1a2b3c4d5e6f";
        let want = [
            (
                QosClass::Guaranteed,
                format!("/kubepods.slice/kubepods-pod{u}.slice"),
            ),
            (
                QosClass::Burstable,
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
            ),
            (
                QosClass::BestEffort,
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
                ),
            ),
        ];
        for (qos, path) in want {
            assert_eq!(l.pod_path(UID, qos).expect("valid uid"), path, "{qos:?}");
        }
    }

    #[test]
    fn cgroupfs_pod_paths_for_every_qos_class() {
        let l = Layout::new(CgroupDriver::Cgroupfs);
        let want = [
            (QosClass::Guaranteed, format!("/kubepods/pod{UID}")),
            (QosClass::Burstable, format!("/kubepods/burstable/pod{UID}")),
            (
                QosClass::BestEffort,
                format!("/kubepods/besteffort/pod{UID}"),
            ),
        ];
        for (qos, path) in want {
            assert_eq!(l.pod_path(UID, qos).expect("valid uid"), path, "{qos:?}");
        }
    }

    #[test]
    fn container_leaves_per_driver_and_runtime() {
        let sd = Layout::new(CgroupDriver::Systemd);
        let fs = Layout::new(CgroupDriver::Cgroupfs);
        let q = QosClass::Burstable;
        let leaf = |l: &Layout, c: &str| {
            let path = l.container_path(UID, q, &cid(c)).expect("valid input");
            let pod = l.pod_path(UID, q).expect("valid uid");
            path.strip_prefix(&format!("{pod}/"))
                .expect("container under its pod")
                .to_string()
        };
        assert_eq!(
            leaf(&sd, &format!("containerd://{ID}")),
            format!("cri-containerd-{ID}.scope")
        );
        assert_eq!(
            leaf(&sd, &format!("cri-o://{ID}")),
            format!("crio-{ID}.scope")
        );
        assert_eq!(
            leaf(&sd, &format!("docker://{ID}")),
            format!("docker-{ID}.scope")
        );
        assert_eq!(leaf(&fs, &format!("containerd://{ID}")), ID);
        assert_eq!(leaf(&fs, &format!("cri-o://{ID}")), format!("crio-{ID}"));
        assert_eq!(leaf(&fs, &format!("docker://{ID}")), ID);
    }

    #[test]
    fn nested_kubelet_root() {
        let l = Layout {
            driver: CgroupDriver::Cgroupfs,
            parent: "/kubelet/".into(),
        };
        assert_eq!(
            l.pod_path(UID, QosClass::Guaranteed).expect("valid uid"),
            format!("/kubelet/kubepods/pod{UID}")
        );
        assert_eq!(l.kubepods_root(), "/kubelet/kubepods");
        let sd = Layout::new(CgroupDriver::Systemd);
        assert_eq!(sd.kubepods_root(), "/kubepods.slice");
        let pod = sd.pod_path(UID, QosClass::Guaranteed).expect("valid uid");
        assert!(pod.starts_with("/kubepods.slice/"), "{pod}");
    }

    #[test]
    fn hostile_ids_never_reach_a_path() {
        let l = Layout::new(CgroupDriver::Cgroupfs);
        for uid in ["", "../x", "a/b", "pod x"] {
            assert!(l.pod_path(uid, QosClass::Burstable).is_err(), "{uid:?}");
        }
        for id in [
            "containerd://",
            "containerd://../..",
            "rkt://abc",
            "abc",
            "cri-o://ab/c",
        ] {
            assert!(ContainerId::parse(id).is_err(), "{id:?}");
        }
        assert_eq!(cid("cri-o://ABC").id, "abc");
    }
}
