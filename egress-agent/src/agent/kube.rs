//! `egress agent --kubernetes`: the EgressPolicy objects of the cluster and the pods of this
//! node, watched through the API server (`kubernetes::watch`), enforced through the same
//! [`Enforcer`] path as policy files, decisions attributed to pods, and status written back.
//!
//! Each snapshot the watch publishes becomes a [`PolicySource::Kubernetes`]: applied when it
//! differs from the one in force, rejected (recorded, reported in the objects' status, and the
//! running generation kept) when it does not compile or fit. While the API server is
//! unreachable the watch keeps the last known state, which stays in force.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    enforcer::Enforcer,
    kubernetes::{
        CgroupDriver, Layout,
        client::{client_from_kubeconfig, infer_client},
        owners::{Owners, SharedOwners},
        source::KubePolicies,
        state::Snapshot,
        status::StatusWriter,
        uncovered::UncoveredPods,
        watch::{KubeOptions, KubeSource},
    },
    source::PolicySource,
};

/// How often a status write that failed is tried again.
const STATUS_RETRY: Duration = Duration::from_secs(2);
/// How often the wait for the first snapshot says it is still waiting.
const FIRST_SNAPSHOT_NOTICE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    /// `kubepods.slice` below the parent means systemd, `kubepods` cgroupfs.
    Auto,
    Systemd,
    Cgroupfs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Uncovered {
    Allow,
    Deny,
}

#[derive(Debug, clap::Args)]
pub struct KubeArgs {
    /// Enforce the cluster's EgressPolicy objects, with pod selectors resolved on this node,
    /// instead of policy files (API access: in-cluster service account, or KUBECONFIG).
    #[arg(long, conflicts_with = "policy")]
    pub kubernetes: bool,
    /// This node's name, whose pods are watched (default: $NODE_NAME, else the hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The kubelet's cgroup driver.
    #[arg(long, value_enum, default_value_t = Driver::Auto)]
    pub kube_cgroup_driver: Driver,
    /// Where the kubelet's `kubepods` hierarchy sits below the cgroup2 root.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub kube_cgroup_parent: String,
    /// The traffic of pods the watch does not know yet (a pod can start before the agent hears
    /// of it): `allow` leaves it ungoverned until its policy is written; `deny` denies it, and
    /// everything else below the kubepods cgroup, as the policy `kubernetes-uncovered` until
    /// then. See docs/kubernetes.md for the trade-off.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = Uncovered::Allow)]
    pub kube_uncovered_pods: Uncovered,
    /// A kubeconfig file to reach the API server with (default: in-cluster, else KUBECONFIG
    /// or ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// What a status report carries: the snapshot and how applying it went.
type Report = Option<(Snapshot, Result<(), String>)>;

pub struct KubeMode {
    source: KubeSource,
    owners: SharedOwners,
    reports: watch::Sender<Report>,
    status_task: JoinHandle<()>,
    /// The snapshot applied at start-up, reported once the agent says how that went.
    initial: Option<Snapshot>,
}

impl KubeMode {
    /// Starts the watch and the status writer; `None` without `--kubernetes`.
    pub async fn start(args: KubeArgs, cgroup_root: &Path) -> anyhow::Result<Option<Self>> {
        let KubeArgs {
            kubernetes,
            node_name,
            kube_cgroup_driver,
            kube_cgroup_parent,
            kube_uncovered_pods,
            kubeconfig,
        } = args;
        if !kubernetes {
            return Ok(None);
        }
        let node = node_name
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
            .or_else(hostname)
            .context("no node name: pass --node-name or set NODE_NAME")?;
        let driver = match kube_cgroup_driver {
            Driver::Systemd => CgroupDriver::Systemd,
            Driver::Cgroupfs => CgroupDriver::Cgroupfs,
            Driver::Auto => detect_driver(cgroup_root, &kube_cgroup_parent),
        };
        let layout = Layout {
            driver,
            parent: kube_cgroup_parent,
        };
        let client = match &kubeconfig {
            Some(path) => client_from_kubeconfig(path).await,
            None => infer_client().await,
        }
        .context("connecting to the Kubernetes API")?;
        let uncovered = match kube_uncovered_pods {
            Uncovered::Allow => UncoveredPods::Allow,
            Uncovered::Deny => UncoveredPods::Deny,
        };
        tracing::info!(%node, ?driver, parent = %layout.parent, ?uncovered, "Kubernetes mode: watching EgressPolicy objects and this node's pods");
        let options = KubeOptions {
            uncovered,
            ..KubeOptions::new(node.clone(), layout)
        };
        let source = KubeSource::spawn(client.clone(), options);
        let (reports, receiver) = watch::channel(None);
        let status_task = tokio::spawn(write_status(StatusWriter::new(client, node), receiver));
        Ok(Some(Self {
            source,
            owners: SharedOwners::default(),
            reports,
            status_task,
            initial: None,
        }))
    }

    /// Waits for the first snapshot (both resources listed once) and returns it as the policy
    /// source to start with. Until then, enforcement pinned by an earlier agent stays as it is.
    pub async fn first_source(&mut self) -> anyhow::Result<PolicySource> {
        loop {
            match tokio::time::timeout(FIRST_SNAPSHOT_NOTICE, self.source.next()).await {
                Ok(Some(snapshot)) => {
                    self.owners.replace(Owners::new(snapshot.owners.clone()));
                    log_problems(&snapshot);
                    let source = source_of(&snapshot);
                    self.initial = Some(snapshot);
                    return Ok(source);
                }
                Ok(None) => anyhow::bail!("the Kubernetes watch stopped"),
                Err(_) => tracing::warn!(
                    "waiting for the Kubernetes API: no policy list yet; enforcement in place, if any, is unchanged"
                ),
            }
        }
    }

    /// The pods decision events are attributed to.
    pub fn owners(kube: Option<&Self>) -> SharedOwners {
        kube.map(|mode| mode.owners.clone()).unwrap_or_default()
    }

    /// Reports that the start-up snapshot is in force.
    pub fn started(kube: Option<&mut Self>) {
        if let Some(mode) = kube
            && let Some(snapshot) = mode.initial.take()
        {
            mode.reports.send_replace(Some((snapshot, Ok(()))));
        }
    }

    pub fn stop(kube: Option<Self>) {
        if let Some(mode) = kube {
            mode.source.stop();
            mode.status_task.abort();
        }
    }
}

/// The next snapshot; never ready outside Kubernetes mode (or once the watch stopped).
pub async fn next_snapshot(kube: &mut Option<KubeMode>) -> Snapshot {
    match kube {
        Some(mode) => match mode.source.next().await {
            Some(snapshot) => snapshot,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Applies `snapshot` unless it is what is in force, and queues the status report.
pub fn apply(kube: &mut Option<KubeMode>, snapshot: Snapshot, enforcer: &mut Enforcer) {
    let Some(mode) = kube else {
        return;
    };
    mode.owners.replace(Owners::new(snapshot.owners.clone()));
    log_problems(&snapshot);
    let source = source_of(&snapshot);
    let result = if enforcer.active_source() == Some(&source) {
        Ok(())
    } else {
        match enforcer.load(&source) {
            Ok(applied) => {
                tracing::info!(
                    generation = applied.generation,
                    policies = snapshot.set.policies.len(),
                    stale = snapshot.stale,
                    "applied the Kubernetes policy"
                );
                Ok(())
            }
            Err(err) => {
                tracing::error!(%err, generation = enforcer.generation(), "the Kubernetes policy was rejected; the running generation stays in force");
                Err(err.to_string())
            }
        }
    };
    mode.initial = None;
    mode.reports.send_replace(Some((snapshot, result)));
}

fn source_of(snapshot: &Snapshot) -> PolicySource {
    PolicySource::Kubernetes(Arc::new(KubePolicies::from_snapshot(snapshot)))
}

fn log_problems(snapshot: &Snapshot) {
    for entry in &snapshot.policies {
        if let Err(err) = &entry.parsed {
            tracing::warn!(policy = %entry.name, generation = entry.generation, "an EgressPolicy is invalid and not enforced: {err}");
        }
    }
    for err in &snapshot.pod_errors {
        tracing::debug!("a pod is not placed yet: {err}");
    }
}

/// Writes each report to the EgressPolicy objects' status; failed writes are tried again
/// (with the newest report) every [`STATUS_RETRY`].
async fn write_status(mut writer: StatusWriter, mut reports: watch::Receiver<Report>) {
    let mut failing = false;
    while reports.changed().await.is_ok() {
        loop {
            let Some((snapshot, applied)) = reports.borrow_and_update().clone() else {
                break;
            };
            let failures = writer.report_snapshot(&snapshot, applied).await;
            if failures.is_empty() {
                if failing {
                    tracing::info!("EgressPolicy status is written again");
                }
                failing = false;
                break;
            }
            if !failing {
                tracing::warn!(
                    "writing EgressPolicy status failed (retried every {STATUS_RETRY:?}): {}",
                    failures[0]
                );
            }
            failing = true;
            tokio::select! {
                () = tokio::time::sleep(STATUS_RETRY) => {}
                changed = reports.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// `kubepods.slice` below the parent means the systemd driver, `kubepods` cgroupfs; neither
/// yet (a node with no pods) defaults to systemd, the kubeadm default.
fn detect_driver(cgroup_root: &Path, parent: &str) -> CgroupDriver {
    let base = cgroup_root.join(parent.trim_start_matches('/'));
    if base.join("kubepods.slice").is_dir() {
        CgroupDriver::Systemd
    } else if base.join("kubepods").is_dir() {
        CgroupDriver::Cgroupfs
    } else {
        tracing::warn!(
            "no kubepods cgroup under {}; assuming the systemd cgroup driver (set --kube-cgroup-driver)",
            base.display()
        );
        CgroupDriver::Systemd
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_is_detected_from_the_kubepods_cgroup() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("k/kubepods")).expect("mkdir");
        assert_eq!(detect_driver(dir.path(), "/k"), CgroupDriver::Cgroupfs);
        std::fs::create_dir_all(dir.path().join("kubepods.slice")).expect("mkdir");
        assert_eq!(detect_driver(dir.path(), "/"), CgroupDriver::Systemd);
        assert_eq!(detect_driver(dir.path(), "/none"), CgroupDriver::Systemd);
    }
}
