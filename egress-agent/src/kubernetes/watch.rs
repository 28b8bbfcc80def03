//! `--kubernetes`: list and watch EgressPolicy objects (cluster-wide) and this node's pods
//! (`fieldSelector=spec.nodeName=<node>`), and publish a [`Snapshot`] whenever what the agent
//! would apply changes.
//!
//! Each resource runs the API server's list-then-watch protocol: list (the full state and a
//! `resourceVersion`), watch from that version, re-watch from the last version seen when the
//! stream ends or breaks, and relist when the version is too old (`410 Gone`, as an HTTP
//! status or as an `ERROR` event). While a request fails the last known state stays in force
//! and the snapshot is marked `stale` (logged once per outage); requests are retried every
//! [`KubeOptions::retry`].

use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Layout;
use super::client::{egress_policies, pods};
use super::state::{KubeState, Snapshot};
use super::uncovered::UncoveredPods;

/// Configuration of [`KubeSource`].
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// This node's name (the DaemonSet passes `spec.nodeName` as `NODE_NAME`).
    pub node: String,
    pub layout: Layout,
    /// What happens to the traffic of pods not known yet.
    pub uncovered: UncoveredPods,
    /// Pause before retrying a failed request.
    pub retry: Duration,
    /// `timeoutSeconds` of each watch request; the server ends the stream then and the watch
    /// resumes from the last version seen.
    pub watch_timeout: u32,
}

impl KubeOptions {
    pub fn new(node: impl Into<String>, layout: Layout) -> Self {
        Self {
            node: node.into(),
            layout,
            uncovered: UncoveredPods::Allow,
            retry: Duration::from_secs(2),
            watch_timeout: 290,
        }
    }
}

/// Receives snapshots: `None` until both resources have been listed once (an agent must not
/// apply an empty policy set because the pod list came first).
pub type SnapshotReceiver = watch::Receiver<Option<Snapshot>>;

/// The running watch; dropping it does not stop it, [`Self::stop`] does.
pub struct KubeSource {
    pub snapshots: SnapshotReceiver,
    tasks: [JoinHandle<()>; 2],
}

impl KubeSource {
    /// Starts watching on the current tokio runtime.
    pub fn spawn(client: Client, options: KubeOptions) -> Self {
        let KubeOptions {
            node,
            layout,
            uncovered,
            retry,
            watch_timeout,
        } = options;
        let (tx, snapshots) = watch::channel(None);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            tx,
            layout,
            uncovered,
        });
        let pod_fields = format!("spec.nodeName={node}");
        let policies = Resource {
            kind: Kind::Policies,
            api: egress_policies(client.clone()),
            list: ListParams::default(),
            watch: WatchParams::default().timeout(watch_timeout),
        };
        let pods = Resource {
            kind: Kind::Pods,
            api: pods(client),
            list: ListParams::default().fields(&pod_fields),
            watch: WatchParams::default()
                .fields(&pod_fields)
                .timeout(watch_timeout),
        };
        let tasks = [policies, pods].map(|resource| {
            let shared = Arc::clone(&shared);
            tokio::spawn(resource.run(shared, retry))
        });
        Self { snapshots, tasks }
    }

    /// Waits for the next snapshot that differs from the last one returned; `None` once the
    /// watch has stopped.
    pub async fn next(&mut self) -> Option<Snapshot> {
        loop {
            self.snapshots.changed().await.ok()?;
            if let Some(snapshot) = self.snapshots.borrow_and_update().clone() {
                return Some(snapshot);
            }
        }
    }

    pub fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Policies,
    Pods,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Self::Policies => 0,
            Self::Pods => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Policies => "egresspolicies",
            Self::Pods => "pods",
        }
    }
}

#[derive(Default)]
struct Inner {
    state: KubeState,
    /// Per resource: listed at least once.
    synced: [bool; 2],
    /// Per resource: the last request failed.
    failing: [bool; 2],
}

struct Shared {
    inner: Mutex<Inner>,
    tx: watch::Sender<Option<Snapshot>>,
    layout: Layout,
    uncovered: UncoveredPods,
}

impl Shared {
    /// Changes the state and publishes the snapshot if it differs from the last one.
    fn update(&self, kind: Kind, f: impl FnOnce(&mut Inner)) {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters: the next list replaces them.
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let was_stale = inner.failing.iter().any(|f| *f);
        f(&mut inner);
        let stale = inner.failing.iter().any(|f| *f);
        if stale != was_stale {
            if stale {
                tracing::warn!(
                    resource = kind.name(),
                    "Kubernetes API unreachable: enforcing the last known state (stale)"
                );
            } else {
                tracing::info!("Kubernetes API reachable again: state is current");
            }
        }
        if !inner.synced.iter().all(|s| *s) {
            return;
        }
        let snapshot = inner.state.snapshot(&self.layout, self.uncovered, stale);
        self.tx.send_if_modified(|last| match last {
            Some(last) if last.same_as(&snapshot) => false,
            _ => {
                *last = Some(snapshot);
                true
            }
        });
    }

    fn failed(&self, kind: Kind, what: &str, err: &kube::Error) {
        tracing::debug!(resource = kind.name(), "{what} failed: {err}");
        self.update(kind, |inner| inner.failing[kind.index()] = true);
    }

    fn reachable(&self, kind: Kind) {
        self.update(kind, |inner| inner.failing[kind.index()] = false);
    }
}

/// How a watch request ended.
enum WatchEnd {
    /// Resume from the last version seen.
    Rewatch,
    /// The version is gone: list again.
    Relist,
    /// The request failed: pause, then resume.
    Failed,
}

struct Resource {
    kind: Kind,
    api: Api<DynamicObject>,
    list: ListParams,
    watch: WatchParams,
}

impl Resource {
    async fn run(self, shared: Arc<Shared>, retry: Duration) {
        loop {
            let list = match self.api.list(&self.list).await {
                Ok(list) => list,
                Err(err) => {
                    shared.failed(self.kind, "list", &err);
                    tokio::time::sleep(retry).await;
                    continue;
                }
            };
            let kind = self.kind;
            shared.update(kind, |inner| {
                match kind {
                    Kind::Policies => inner.state.replace_policies(&list.items),
                    Kind::Pods => inner.state.replace_pods(&list.items),
                }
                inner.synced[kind.index()] = true;
                inner.failing[kind.index()] = false;
            });
            // "0" would mean "any version" and replay everything as ADDED: harmless, since
            // events are upserts, but only a server without versions sends none.
            let mut version = list.metadata.resource_version.unwrap_or_else(|| "0".into());
            loop {
                match self.watch_once(&shared, &mut version).await {
                    WatchEnd::Rewatch => {}
                    WatchEnd::Relist => {
                        // What we hold is known to be out of date until the relist.
                        shared.update(kind, |inner| inner.failing[kind.index()] = true);
                        break;
                    }
                    WatchEnd::Failed => tokio::time::sleep(retry).await,
                }
            }
            tracing::debug!(
                resource = kind.name(),
                "relisting: version {version} is gone"
            );
        }
    }

    async fn watch_once(&self, shared: &Shared, version: &mut String) -> WatchEnd {
        let stream = match self.api.watch(&self.watch, version).await {
            Ok(stream) => stream,
            Err(kube::Error::Api(status)) if status.code == 410 => return WatchEnd::Relist,
            Err(err) => {
                shared.failed(self.kind, "watch", &err);
                return WatchEnd::Failed;
            }
        };
        shared.reachable(self.kind);
        let mut stream = pin!(stream);
        let kind = self.kind;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    // A dropped connection or a torn line: resume from what was applied.
                    tracing::debug!(resource = kind.name(), "watch stream broke: {err}");
                    return WatchEnd::Failed;
                }
            };
            match event {
                WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                    remember(version, &object);
                    shared.update(kind, |inner| match kind {
                        Kind::Policies => inner.state.upsert_policy(&object),
                        Kind::Pods => inner.state.upsert_pod(&object),
                    });
                }
                WatchEvent::Deleted(object) => {
                    remember(version, &object);
                    shared.update(kind, |inner| match kind {
                        Kind::Policies => inner.state.remove_policy(&object),
                        Kind::Pods => inner.state.remove_pod(&object),
                    });
                }
                WatchEvent::Bookmark(bookmark) => {
                    *version = bookmark.metadata.resource_version;
                }
                WatchEvent::Error(status) if status.code == 410 => return WatchEnd::Relist,
                WatchEvent::Error(status) => {
                    tracing::warn!(resource = kind.name(), "watch error: {}", status.message);
                    return WatchEnd::Failed;
                }
            }
        }
        WatchEnd::Rewatch
    }
}

fn remember(version: &mut String, object: &DynamicObject) {
    if let Some(v) = &object.metadata.resource_version {
        version.clone_from(v);
    }
}
