//! Measures 5 and 6 with the agent binary itself: decision events per second written to the
//! audit log without loss (a sweep of offered rates, events.rs), and the agent's resident
//! memory at idle and under that load.

use std::{
    fs,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use egress_agent::policy::LogMode;

use super::{
    agent_proc::BenchAgent,
    env::{Env, FLOOD_TARGET},
    events::{self, Step},
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

/// How the event sweep runs.
pub struct Sweep {
    /// Offered flows/s per step (0: unpaced).
    pub rates: Vec<f64>,
    /// Each step offers this many seconds of flows at its rate ...
    pub step_secs: f64,
    /// ... bounded to this many flows.
    pub flows: (u64, u64),
}

pub struct AgentResult {
    pub idle_mib: f64,
    pub load_mib: f64,
    pub steps: Vec<Step>,
}

/// Starts the agent with a `prefixes`-prefix policy selecting the benchmark cgroup and
/// runs the event sweep through it.
pub fn measure(
    env: &Env,
    bin: &Path,
    prefixes: usize,
    sweep: &Sweep,
    events: &mut Table,
    memory: &mut Table,
) -> Result<AgentResult> {
    let spec = Spec {
        prefixes,
        cgroup: Some(env.cgroup.relative_path().to_owned()),
        log: LogMode::All,
    };
    let agent = BenchAgent::start(bin, &yaml(&spec))?;
    let pid = agent.pid()?;
    // Let start-up allocations settle before calling it idle.
    thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid)?;

    let peak = AtomicU64::new(idle);
    let done = AtomicBool::new(false);
    let steps = thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let steps = events::sweep(env, &agent, &sweep.rates, sweep.step_secs, sweep.flows);
        done.store(true, Ordering::Relaxed);
        steps
    })?;
    let load = peak.load(Ordering::Relaxed).max(rss_kib(pid)?);
    for step in &steps {
        events.row(vec![
            prefixes.to_string(),
            if step.target > 0.0 {
                format!("{:.0}", step.target)
            } else {
                "unpaced".to_owned()
            },
            format!("{:.0}", step.offered_rate()),
            step.flows.to_string(),
            step.records.to_string(),
            format!("{:.0}", step.write_rate()),
            format!("{} / {}", step.kernel_lost, step.loss_records_lost),
            if step.lossless() { "yes" } else { "no" }.to_owned(),
        ]);
    }
    memory.row(vec![
        prefixes.to_string(),
        format!("{:.1}", mib(idle)),
        format!("{:.1}", mib(load)),
    ]);
    Ok(AgentResult {
        idle_mib: mib(idle),
        load_mib: mib(load),
        steps,
    })
}

pub fn tables(sweep: &Sweep) -> (Table, Table) {
    let Sweep {
        rates: _,
        step_secs,
        flows: (min_flows, max_flows),
    } = sweep;
    (
        Table::new(
            "5. Decision events recorded by the agent",
            &format!(
                "The agent binary (`egress agent`, release build, its own `--bpffs`, \
                 `--on-exit detach`, control socket and audit log) with a policy selecting the \
                 benchmark cgroup, `log: all`. Generator: one process in that cgroup (client \
                 namespace) sends one-byte UDP datagrams with `sendmmsg` from unconnected \
                 sockets to distinct ports of {FLOOD_TARGET} (an allowed documentation \
                 address whose datagrams a veth sink in the client namespace drops): every datagram is a new flow, so one decision \
                 event. Each step asks for a paced rate (or none: unpaced) for {step_secs} s \
                 of flows, at least {min_flows} and at most {max_flows}. Offered = flows sent / \
                 send time. Written/s = connection records the agent wrote (its `written` \
                 counter over the control socket, sampled every 5 ms) / time from the first \
                 to the last change of that counter. Records = `connection` lines that \
                 appeared in the audit log. Lost = growth of the kernel's lost-event counter / \
                 sum of `lost` in the `loss` records the agent wrote. Lossless = no loss and \
                 every flow recorded."
            ),
            &[
                "prefixes",
                "asked flows/s",
                "offered flows/s",
                "flows",
                "records",
                "written/s",
                "lost (kernel / loss records)",
                "lossless",
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
