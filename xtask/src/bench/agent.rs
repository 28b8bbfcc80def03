//! Measures 5 and 6 with the agent binary itself: decision events per second written to the
//! audit log without loss, and the agent's resident memory at idle and under that load.

use std::{
    fs,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use egress_agent::policy::LogMode;
use egress_tests::AgentGuard;

use super::{
    env::Env,
    policy::{Spec, yaml},
    report::Table,
};

fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

#[expect(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub struct AgentResult {
    pub idle_mib: f64,
    pub load_mib: f64,
}

/// Starts the agent with a `prefixes`-prefix policy selecting the benchmark cgroup and
/// drives `secs` of short connections through it.
pub fn measure(
    env: &Env,
    bin: &Path,
    prefixes: usize,
    secs: f64,
    workers: usize,
    events: &mut Table,
    memory: &mut Table,
) -> Result<AgentResult> {
    let spec = Spec {
        prefixes,
        cgroup: Some(env.cgroup.relative_path().to_owned()),
        log: LogMode::All,
    };
    let agent = AgentGuard::start_program(bin, &yaml(&spec));
    let pid = agent.id().context("the agent is not running")?;
    // Let start-up allocations settle before calling it idle.
    thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid)?;
    let records_before = count(&agent, "connection");

    let peak = AtomicU64::new(idle);
    let done = AtomicBool::new(false);
    let rate = thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let rate = env.connection_rate(secs, workers);
        done.store(true, Ordering::Relaxed);
        rate
    })?;
    // The agent flushes its log every second.
    thread::sleep(Duration::from_millis(2500));
    let recorded = count(&agent, "connection") - records_before;
    let losses = count(&agent, "loss");
    let made = rate.0 * secs;
    let after = rss_kib(pid)?;
    #[expect(clippy::cast_precision_loss, reason = "record counts far below 2^52")]
    let recorded_rate = recorded as f64 / secs;
    events.row(vec![
        prefixes.to_string(),
        format!("{made:.0}"),
        recorded.to_string(),
        format!("{recorded_rate:.0}"),
        losses.to_string(),
    ]);
    let load = peak.load(Ordering::Relaxed).max(after);
    memory.row(vec![
        prefixes.to_string(),
        format!("{:.1}", mib(idle)),
        format!("{:.1}", mib(load)),
    ]);
    Ok(AgentResult {
        idle_mib: mib(idle),
        load_mib: mib(load),
    })
}

fn count(agent: &AgentGuard, kind: &str) -> usize {
    agent
        .audit_records()
        .iter()
        .filter(|r| r.get("kind").and_then(serde_json::Value::as_str) == Some(kind))
        .count()
}

pub fn tables(secs: f64, workers: usize) -> (Table, Table) {
    (
        Table::new(
            "5. Decision events recorded by the agent",
            &format!(
                "The agent binary (`egress agent`, release build) with a policy selecting the \
                 benchmark cgroup, `log: all`; {workers} clients open and reset as many short \
                 TCP connections as they can for {secs} s. Recorded = `connection` records \
                 that reached the audit log; loss = `loss` records (the kernel counted events \
                 it could not queue). The rate is bounded by how fast the clients connect, \
                 not by the agent, unless loss is non-zero."
            ),
            &[
                "prefixes",
                "connections made",
                "records written",
                "records/s",
                "loss records",
            ],
        ),
        Table::new(
            "6. Agent resident memory",
            "VmRSS of the agent: idle = 2 s after it logged `enforcing policy`; under load = \
             the peak sampled every 50 ms during measure 5.",
            &["prefixes", "idle MiB", "under load MiB"],
        ),
    )
}
