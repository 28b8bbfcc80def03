//! `egress agent`: load the program, enforce the policy, stream decisions to the audit log.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::SignalKind;

use tokio::sync::{mpsc, oneshot};

use self::events::{EventWriter, read_events};

use crate::{
    audit::{AuditLog, KernelClock, Rotation, RuleNames},
    cgroup::{Hierarchy, PathCache, find_cgroup2_root},
    control::{
        self,
        handler::{AgentState, Call},
    },
    datapath::{
        Counters, Datapath, EBPF_OBJECT,
        pins::{PinDir, object_version},
    },
    enforcer::{Enforcer, record_rejection},
    metrics,
    source::PolicySource,
    watch::{self, PolicyWatcher},
};

mod dns;
mod events;
mod kube;

pub use events::READ_INTERVAL as EVENT_READ_INTERVAL;

/// What a graceful stop does to enforcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Leave the pinned programs attached and the last policy in force.
    Keep,
    /// Detach the programs and remove their pins: enforcement stops.
    Detach,
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Policy files or directories of *.yaml / *.yml files (default: the embedded default
    /// policy, which drops nothing and records every outbound connection).
    #[arg(long = "policy", num_args = 1..)]
    pub policy: Vec<PathBuf>,
    /// bpffs directory for the pinned programs and maps that keep enforcement in place
    /// while the agent is down.
    #[arg(long, default_value = "/sys/fs/bpf/egress")]
    pub bpffs: PathBuf,
    /// What a graceful stop (SIGINT, SIGTERM) does to enforcement.
    #[arg(long, value_enum, default_value_t = OnExit::Keep)]
    pub on_exit: OnExit,
    /// Override the program version the pins are kept under (default: a digest of the
    /// embedded kernel object). Used to exercise the upgrade path.
    #[arg(long, hide = true)]
    pub program_version: Option<String>,
    /// The cgroup2 mount to attach at (default: found in /proc/self/mountinfo).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Audit log file (JSON Lines), or `-` for stdout.
    #[arg(long, default_value = "/var/log/egress/audit.jsonl")]
    pub audit_log: PathBuf,
    /// Rotate the audit log before it grows past this many bytes (0: never).
    #[arg(long, default_value_t = 100 << 20)]
    pub audit_log_max_bytes: u64,
    /// Rotated audit log files kept (`audit.jsonl.1` ... `audit.jsonl.N`).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub audit_log_keep: u16,
    /// Configuration file holding these flags by their long names; flags given here win
    /// (default: /etc/egress/agent.yaml, if it exists).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Unix socket of `egress status`, `rules`, `apply` and `explain` (mode 0600, root).
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Group (name or gid) that may read over the control socket (mode 0660); changing
    /// policy always requires root.
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// Serve Prometheus metrics at /metrics, and /healthz and /readyz, on this address
    /// (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub dns: dns::DnsArgs,
    // Kubernetes mode (agent/kube.rs).
    #[command(flatten)]
    pub kubernetes: kube::KubeArgs,
}

/// How often the audit log is flushed: a crash loses at most this window.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the cgroups selectors name (by path or unit) are looked up again: a selected
/// cgroup made again under the same path (a restarted service) has a new id, and is not
/// governed until the next scan writes it (docs/operations.md).
const CGROUP_RESCAN_INTERVAL: Duration = Duration::from_millis(500);
/// Bound on reading the events left in the ring buffer at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A burst of file changes (an editor's write and rename, a ConfigMap swap) reloads once,
/// this long after the last of them.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);
/// Control and metrics requests waiting for the run loop.
const CALL_QUEUE: usize = 64;

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let AgentArgs {
        policy,
        bpffs,
        on_exit,
        program_version,
        cgroup_root,
        audit_log,
        audit_log_max_bytes,
        audit_log_keep,
        config: _,
        control_socket,
        control_group,
        metrics,
        dns,
        kubernetes,
    } = args;
    // Both endpoints are bound before the kernel is touched, so that a second agent on the
    // same socket or port fails without disturbing the first. Requests wait in the queue
    // until enforcement is in place.
    let (calls_tx, mut calls) = mpsc::channel(CALL_QUEUE);
    let ready = Arc::new(AtomicBool::new(false));
    let metrics_task = match metrics {
        Some(addr) => {
            let listener = metrics::http::bind(addr).await?;
            tracing::info!(%addr, "serving metrics");
            Some(tokio::spawn(metrics::http::serve(
                listener,
                calls_tx.clone(),
                Arc::clone(&ready),
            )))
        }
        None => None,
    };
    let control = control::server::bind(&control_socket, control_group.as_deref())?;
    let control_task = tokio::spawn(control::server::serve(control, calls_tx));
    let root = match cgroup_root {
        Some(root) => root,
        None => find_cgroup2_root()?,
    };
    let hierarchy = Hierarchy::new(root.clone())?;
    let rotation = Rotation {
        max_bytes: audit_log_max_bytes,
        keep: usize::from(audit_log_keep),
    };
    let audit = Arc::new(Mutex::new(AuditLog::open(&audit_log, rotation)?));
    let rule_names = Arc::new(Mutex::new(RuleNames::default()));

    // The policy is validated before the kernel is touched: a rejected policy leaves
    // whatever enforcement is in place (pinned by an earlier agent) exactly as it is.
    // --- Kubernetes mode (agent/kube.rs): the policy is the watch's first snapshot.
    let mut kube = kube::KubeMode::start(kubernetes, &root).await?;
    let source = match &mut kube {
        Some(mode) => mode.first_source().await?,
        None => PolicySource::from_paths(policy),
    };
    // --- end Kubernetes mode
    let policies = match source.load() {
        Ok(policies) => policies,
        Err(err) => {
            record_rejection(&audit, 0, &source, &source.digest(), &err.to_string());
            flush_audit(&audit);
            return Err(anyhow::Error::new(err)
                .context("the policy was rejected; enforcement in place, if any, is unchanged"));
        }
    };
    let version = program_version.unwrap_or_else(|| object_version(EBPF_OBJECT));
    let mut datapath = Datapath::load_pinned(PinDir::create(&bpffs, &version)?)?;
    datapath.set_dns_config(dns.kernel_config())?;
    let mut enforcer = Enforcer::new(
        hierarchy.clone(),
        datapath.generation_writer()?,
        Arc::clone(&audit),
        Arc::clone(&rule_names),
    );
    let applied = enforcer
        .apply_loaded(&source, Ok(policies))
        .context("the policy could not be applied; enforcement in place, if any, is unchanged")?;
    kube::KubeMode::started(kube.as_mut()); // Kubernetes mode: report the status
    let events = datapath.take_events()?;
    let dns_events = datapath.take_dns_events()?;
    let counters = datapath.take_counters()?;
    let rule_hits = datapath.take_rule_hits()?;
    let learned = datapath.take_learned()?;
    // The maps hold the policy before the programs see their first packet.
    let attachment = datapath.attach(root.clone())?;
    tracing::info!(
        generation = applied.generation,
        cgroup_root = %root.display(),
        version = %version,
        ?attachment,
        "enforcing policy"
    );
    // Handlers are in place before anyone is told we are ready: a `systemctl reload` right
    // after the start must reload, not kill the agent with SIGHUP's default action.
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(SignalKind::hangup())?;
    ready.store(true, Ordering::Release);
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("enforcing generation {}", applied.generation)),
    ]);
    let events_written = Arc::new(AtomicU64::new(0));
    let mut state = AgentState {
        started: std::time::Instant::now(),
        program_version: version,
        bpffs,
        cgroup_root: root,
        attachment,
        counters,
        rule_hits,
        learned,
        events_written: Arc::clone(&events_written),
        reloads: control::protocol::ReloadStats::default(),
    };
    let mut source = source;
    let mut watcher = watch_policy(&source);
    let mut reload_at: Option<tokio::time::Instant> = None;

    let (stop_reader, stop) = oneshot::channel();
    let reader = tokio::spawn(read_events(
        events,
        EventWriter {
            clock: KernelClock::boot(),
            audit: Arc::clone(&audit),
            rule_names,
            cgroups: PathCache::new(hierarchy),
            pods: kube::KubeMode::owners(kube.as_ref()),
            names: dns::LearnedNames::new(&dns),
            dns_events: Some(dns_events),
            written: events_written,
            failing: 0,
        },
        stop,
    ));
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    let mut rescan = tokio::time::interval(CGROUP_RESCAN_INTERVAL);
    // A slow re-apply delays the next scan rather than making a burst of them.
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                // A rejected reload is recorded by the enforcer and leaves the running
                // generation in force.
                tokio::task::block_in_place(|| state.reload(&mut enforcer, &source, "SIGHUP"));
                notify_generation(&enforcer);
            }
            changed = watch::next_change(&mut watcher) => match changed {
                Ok(()) => reload_at = Some(tokio::time::Instant::now() + RELOAD_DEBOUNCE),
                Err(err) => {
                    tracing::error!(%err, "watching the policy files failed; reload with SIGHUP");
                    watcher = None;
                }
            },
            () = sleep_until(reload_at), if reload_at.is_some() => {
                reload_at = None;
                // Events that change no byte of the policy (a touch, a save without
                // changes) make no new generation.
                if enforcer.active_digest() != Some(source.digest().as_str()) {
                    tokio::task::block_in_place(|| {
                        state.reload(&mut enforcer, &source, "a policy file change");
                    });
                    notify_generation(&enforcer);
                }
            }
            Some(call) = calls.recv() => {
                tokio::task::block_in_place(|| answer(call, &mut state, &mut enforcer));
                // `egress apply` of other files makes them the source that SIGHUP and
                // file changes reload from.
                if let Some(active) = enforcer.active_source()
                    && *active != source
                {
                    source = active.clone();
                    watcher = watch_policy(&source);
                }
                notify_generation(&enforcer);
            }
            _ = flush.tick() => {
                report_losses(&state.counters, &audit);
                flush_audit(&audit);
            }
            // --- Kubernetes mode (agent/kube.rs): a new snapshot is applied like a reload,
            // and becomes what SIGHUP reloads.
            snapshot = kube::next_snapshot(&mut kube) => {
                tokio::task::block_in_place(|| kube::apply(&mut kube, snapshot, &mut enforcer));
                if let Some(active) = enforcer.active_source() {
                    source = active.clone();
                }
                notify_generation(&enforcer);
            }
            // --- end Kubernetes mode
            _ = rescan.tick() => {
                if let Err(err) = tokio::task::block_in_place(|| enforcer.rescan_cgroups()) {
                    tracing::error!(%err, "re-applying after a cgroup change failed; the previous generation stays in force");
                }
            }
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    kube::KubeMode::stop(kube); // Kubernetes mode
    ready.store(false, Ordering::Release);
    // Clients are turned away from here on; the socket file is removed.
    control_task.abort();
    let _ = control_task.await;
    if let Some(task) = metrics_task {
        task.abort();
        let _ = task.await;
    }
    // Detached (or kept) first; the reader then drains what is in the ring buffer. With
    // `keep`, events that arrive later wait in the pinned ring buffer for the next agent.
    match on_exit {
        OnExit::Keep => {
            tracing::info!("stopping: the programs stay attached with the last policy in force");
            datapath.keep_attached();
        }
        OnExit::Detach => {
            tracing::info!("stopping: detaching the programs");
            datapath.detach();
        }
    }
    let _ = stop_reader.send(());
    match tokio::time::timeout(DRAIN_TIMEOUT, reader).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::error!(%err, "reading events failed"),
        Ok(Err(err)) => tracing::error!(%err, "the event reader ended abnormally"),
        Err(_) => tracing::error!("the events left at shutdown were not all read in time"),
    }
    if on_exit == OnExit::Detach {
        remove_pins(&datapath);
    }
    report_losses(&state.counters, &audit);
    match audit.lock() {
        Ok(mut log) => {
            if let Err(err) = log.close() {
                tracing::error!(%err, "closing the audit log failed");
            }
        }
        Err(_) => tracing::error!("the audit log is poisoned; it was not closed cleanly"),
    }
    Ok(())
}

/// With `--on-exit detach` nothing the agent pinned outlives it: the links went with the
/// detach, and the maps (about 100 MiB of kernel memory) go now that the reader has drained
/// the ring buffer.
fn remove_pins(datapath: &Datapath) {
    if let Some(pins) = datapath.pins()
        && let Err(err) = pins.remove()
    {
        tracing::warn!(%err, "removing the pins failed; `egress uninstall` removes them");
    }
}

/// Answers a control or metrics request from the run loop.
fn answer(call: Call, state: &mut AgentState, enforcer: &mut Enforcer) {
    match call {
        Call::Control { method, uid, reply } => {
            let _ = reply.send(state.handle(enforcer, method, uid));
        }
        Call::Metrics { reply } => {
            let rules = state
                .rules(enforcer, None)
                .unwrap_or_else(|_| control::protocol::Rules {
                    generation: enforcer.generation(),
                    rules: Vec::new(),
                });
            let _ = reply.send(metrics::render(&state.status(enforcer), &rules));
        }
    }
}

/// Watches the files of `source`; without a watcher, SIGHUP and `egress apply` still reload.
fn watch_policy(source: &PolicySource) -> Option<PolicyWatcher> {
    PolicyWatcher::new(source).unwrap_or_else(|err| {
        tracing::error!(%err, "policy files are not watched; reload with SIGHUP");
        None
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Tells systemd (Type=notify) about the service; a no-op outside systemd.
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(%err, "notifying systemd failed");
    }
}

fn notify_generation(enforcer: &Enforcer) {
    let status = format!("enforcing generation {}", enforcer.generation());
    notify_systemd(&[sd_notify::NotifyState::Status(&status)]);
}

fn flush_audit(audit: &Mutex<AuditLog>) {
    let result = audit
        .lock()
        .map_err(|_| "poisoned")
        .map(|mut log| log.flush());
    if let Ok(Err(err)) = result {
        tracing::error!(%err, "flushing the audit log failed");
    }
}

/// Writes a `loss` record when the kernel could not reserve events since the last report
/// (of this agent or, with pinned maps, an earlier one), so that every gap is visible.
fn report_losses(counters: &Counters, audit: &Mutex<AuditLog>) {
    let Ok(values) = counters.read() else {
        return;
    };
    if let Ok(mut log) = audit.lock()
        && let Err(err) = log.kernel_losses(values.events_lost)
    {
        tracing::error!(%err, "writing a loss record failed");
    }
}
