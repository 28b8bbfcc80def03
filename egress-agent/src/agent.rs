//! `egress agent`: load the program, enforce the policy, stream decisions to the audit log.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    audit::{AuditLog, BootClock, RuleNames, decode_event, enrich, record::LossRecord},
    cgroup::{Hierarchy, PathCache, find_cgroup2_root},
    datapath::{Counters, Datapath},
    enforcer::Enforcer,
};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Policy files or directories of *.yaml / *.yml files.
    #[arg(long = "policy", required = true, num_args = 1..)]
    pub policy: Vec<PathBuf>,
    /// The cgroup2 mount to attach at (default: found in /proc/self/mountinfo).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Audit log file (JSON Lines), or `-` for stdout.
    #[arg(long, default_value = "/var/log/egress/audit.jsonl")]
    pub audit_log: PathBuf,
}

/// How often the audit log is flushed: a crash loses at most this window.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often units named by selectors are looked up again in the cgroup tree.
const UNIT_RESCAN_INTERVAL: Duration = Duration::from_secs(2);

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let AgentArgs {
        policy,
        cgroup_root,
        audit_log,
    } = args;
    let root = match cgroup_root {
        Some(root) => root,
        None => find_cgroup2_root()?,
    };
    let hierarchy = Hierarchy::new(root.clone())?;
    let audit = Arc::new(Mutex::new(AuditLog::open(&audit_log)?));
    let rule_names = Arc::new(Mutex::new(RuleNames::default()));

    // Everything that can reject the configuration happens before the kernel is touched.
    let mut datapath = Datapath::load()?;
    let mut enforcer = Enforcer::new(
        hierarchy.clone(),
        datapath.generation_writer()?,
        Arc::clone(&audit),
        Arc::clone(&rule_names),
    );
    let applied = enforcer
        .load(&policy)
        .context("the policy was rejected; nothing was attached")?;
    let events = datapath.take_events()?;
    let counters = datapath.take_counters()?;
    // The maps hold the policy before the program sees its first packet.
    datapath.attach(root.clone())?;
    tracing::info!(
        generation = applied.generation,
        cgroup_root = %root.display(),
        "enforcing policy"
    );

    let reader = tokio::spawn(read_events(
        events,
        Arc::clone(&audit),
        rule_names,
        PathCache::new(hierarchy),
    ));
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    let mut rescan = tokio::time::interval(UNIT_RESCAN_INTERVAL);
    let mut lost_reported = 0;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = flush.tick() => {
                lost_reported = report_losses(&counters, &audit, lost_reported);
                flush_audit(&audit);
            }
            _ = rescan.tick() => {
                if let Err(err) = tokio::task::block_in_place(|| enforcer.rescan_units()) {
                    tracing::error!(%err, "re-applying after a unit change failed; the previous generation stays in force");
                }
            }
        }
    }
    tracing::info!("stopping: detaching the egress program");
    reader.abort();
    let _ = reader.await;
    datapath.detach()?;
    report_losses(&counters, &audit, lost_reported);
    flush_audit(&audit);
    Ok(())
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

/// Writes a `loss` record when the kernel could not reserve events since the last report,
/// so that every gap in the stream is visible. Returns the total lost so far.
fn report_losses(counters: &Counters, audit: &Mutex<AuditLog>, reported: u64) -> u64 {
    let Ok(values) = counters.read() else {
        return reported;
    };
    if values.events_lost <= reported {
        return reported;
    }
    let record = LossRecord {
        seq: 0,
        time: crate::audit::clock::rfc3339(std::time::SystemTime::now()),
        kind: "loss",
        lost: values.events_lost - reported,
        reason: "ring buffer full".into(),
    };
    if let Ok(mut log) = audit.lock()
        && let Err(err) = log.loss(record)
    {
        tracing::error!(%err, "writing a loss record failed");
    }
    values.events_lost
}

async fn read_events(
    events: RingBuf<MapData>,
    audit: Arc<Mutex<AuditLog>>,
    rule_names: Arc<Mutex<RuleNames>>,
    mut cgroups: PathCache,
) -> anyhow::Result<()> {
    let clock = BootClock::new();
    // SAFETY: the AsyncFd owns the ring buffer, whose map fd stays open and unchanged until
    // the AsyncFd is dropped.
    let mut events =
        unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
            .map_err(|err| anyhow::anyhow!("registering the event ring buffer: {err}"))?;
    loop {
        let mut guard = events.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = decode_event(&item) else {
                tracing::error!(
                    len = item.len(),
                    "an event of unexpected size; agent and kernel program disagree"
                );
                continue;
            };
            let record = {
                let names = rule_names
                    .lock()
                    .map_err(|_| anyhow::anyhow!("rule names poisoned"))?;
                enrich(&event, &clock, &names, &mut cgroups)
            };
            audit
                .lock()
                .map_err(|_| anyhow::anyhow!("audit log poisoned"))?
                .connection(record)?;
        }
        guard.clear_ready();
    }
}
