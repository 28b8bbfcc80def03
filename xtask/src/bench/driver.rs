//! Runs every measure in order and writes the report. A measure that fails is reported as
//! not measured (and makes the run fail), never replaced by a number.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    BenchArgs, Only,
    agent::{self, Sweep},
    apply, dns,
    empty_prog::EmptyProgram,
    env::Env,
    kernel,
    report::{self, Report},
    traffic::{self, Timing},
    udp_flood, workers,
};

struct Plan {
    quick: bool,
    counts: Vec<usize>,
    apply_rounds: usize,
    /// The count whose live reload is timed several times (others once).
    reload_count: usize,
    kernel_rounds: usize,
    repeat: u32,
    timing: Timing,
    agent_counts: Vec<usize>,
    sweep: Sweep,
}

/// The target for decision events recorded without loss, per second.
const EVENT_TARGET: f64 = 200_000.0;

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                counts: vec![10, 1000],
                apply_rounds: 1,
                reload_count: 1000,
                kernel_rounds: 1,
                repeat: 1000,
                timing: Timing {
                    rounds: 1,
                    stats_rounds: 1,
                    iperf_secs: 1,
                    connect_secs: 0.5,
                    connect_threads: 2,
                    nft_limit: Duration::from_secs(30),
                },
                agent_counts: vec![1000],
                sweep: Sweep {
                    rates: vec![20_000.0, 0.0],
                    step_secs: 0.5,
                    flows: (10_000, 20_000),
                },
            }
        } else {
            Self {
                quick,
                counts: vec![10, 10_000, 100_000, 1_000_000],
                apply_rounds: 3,
                reload_count: 100_000,
                kernel_rounds: 9,
                repeat: 1_000_000,
                timing: Timing {
                    rounds: 8,
                    stats_rounds: 3,
                    iperf_secs: 2,
                    connect_secs: 2.0,
                    connect_threads: 4,
                    nft_limit: Duration::from_secs(90),
                },
                agent_counts: vec![10, 100_000],
                sweep: Sweep {
                    rates: vec![
                        50_000.0, 100_000.0, 150_000.0, 200_000.0, 300_000.0, 400_000.0, 0.0,
                    ],
                    step_secs: 2.0,
                    flows: (200_000, 800_000),
                },
            }
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(addr) = &args.accept_worker {
        return workers::accept(addr);
    }
    if let Some(connect) = &args.connect_worker {
        return workers::connect(connect);
    }
    if let Some(flood) = &args.udp_worker {
        return udp_flood::run(flood);
    }
    if let Some(dns_args) = &args.dns_worker {
        return super::dns_worker::run(dns_args);
    }
    let plan = Plan::new(args.quick);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("no workspace root")?;
    let output = args.output.clone().unwrap_or_else(|| {
        if plan.quick {
            root.join("target/bench-quick.md")
        } else {
            root.join("docs/benchmarks.md")
        }
    });
    let mut gaps = Vec::new();
    if args.only.is_none_or(|only| only == Only::Kernel) {
        let kernel_only = args.only.is_some();
        let kernel_default = root.join("target/bench-kernel.md");
        let output = if kernel_only && args.output.is_none() {
            &kernel_default
        } else {
            &output
        };
        let started = Instant::now();
        let mut report = Report::default();
        let result = if kernel_only {
            measure_kernel(&plan, &mut report).map(drop)
        } else {
            measure_all(&plan, &root, &mut report)
        };
        if let Err(err) = &result {
            report.gaps.push(format!("the run stopped early: {err:#}"));
        }
        report.write(output, plan.quick, started.elapsed().as_secs_f64())?;
        println!("bench: wrote {}", output.display());
        result?;
        gaps.extend(report.gaps);
    }
    if args.only.is_none_or(|only| only == Only::Dns) {
        let started = Instant::now();
        let mut report = Report::default();
        let result = dns::measure_all(&dns::Plan::new(plan.quick), &root, &mut report);
        if let Err(err) = &result {
            report.gaps.push(format!("the run stopped early: {err:#}"));
        }
        report.write_between(
            &output,
            plan.quick,
            started.elapsed().as_secs_f64(),
            (report::DNS_BEGIN, report::DNS_END),
        )?;
        println!("bench: wrote {} (hostname rules)", output.display());
        result?;
        gaps.extend(report.gaps);
    }
    if !gaps.is_empty() {
        bail!("some measures failed: {gaps:?}");
    }
    Ok(())
}

fn step(what: &str) {
    println!("bench: {what}");
}

/// Measures 1a and 4 at every count; returns the empty program for the traffic measures.
fn measure_kernel(plan: &Plan, report: &mut Report) -> Result<EmptyProgram> {
    let empty = EmptyProgram::load().context("loading the empty cgroup_skb program")?;
    let mut kernel_table = kernel::table(plan.repeat, plan.kernel_rounds);
    let mut apply_table = apply::table(plan.apply_rounds);
    let mut costs = Vec::new();
    for &count in &plan.counts {
        step(&format!("compile/apply and test runs at {count} prefixes"));
        let reloads = if count == plan.reload_count { 3 } else { 1 };
        let mut applied = apply::measure(count, plan.apply_rounds, reloads, &mut apply_table)?;
        if count == plan.reload_count {
            report.target(
                &format!("live reload of {count} prefixes < 1 s"),
                fmt_s(applied.reload_s),
                applied.reload_s.map(|s| s < 1.0),
            );
        }
        if count == *plan.counts.last().unwrap_or(&0) {
            report.target(
                &format!("{count} prefixes compiled and applied < 5 s"),
                fmt_s(applied.first_s),
                applied.first_s.map(|s| s < 5.0),
            );
        }
        let cost = kernel::measure(
            &mut applied.loaded,
            &empty,
            count,
            plan.kernel_rounds,
            plan.repeat,
            &mut kernel_table,
        )?;
        costs.push((count, cost));
    }
    kernel_targets(report, &costs);
    report.tables.push(kernel_table);
    report.tables.push(apply_table);
    Ok(empty)
}

fn measure_all(plan: &Plan, root: &std::path::Path, report: &mut Report) -> Result<()> {
    let empty = measure_kernel(plan, report)?;

    step("traffic: namespaces, cgroup, servers");
    let env = Env::new()?;
    let mut tables = traffic::tables(&plan.timing);
    for &count in &plan.counts {
        step(&format!("traffic at {count} prefixes"));
        match traffic::measure(&env, &empty, count, &plan.timing, &mut tables) {
            Ok(ratios) => {
                report.target(
                    &format!("throughput ≥ 97% of no filter at {count}"),
                    ratios.throughput.describe(3),
                    ratios.throughput.median().map(|m| m >= 0.97),
                );
                match &ratios.nft_skipped {
                    None => report.target(
                        &format!("throughput no worse than nftables at {count}"),
                        format!("enforcer / nftables {}", ratios.vs_nft.describe(3)),
                        // Within the run-to-run spread counts as not worse.
                        ratios.vs_nft.max().map(|m| m >= 1.0),
                    ),
                    Some(why) => report.notes.push(format!(
                        "nftables at {count} prefixes (the enforcer and the baselines ran): \
                         its sets did not load within {} s: {why}",
                        plan.timing.nft_limit.as_secs()
                    )),
                }
                report.target(
                    &format!("connection rate ≥ 95% of baseline, events on, at {count}"),
                    ratios.connections.describe(3),
                    ratios.connections.median().map(|m| m >= 0.95),
                );
            }
            Err(err) => report
                .gaps
                .push(format!("traffic at {count} prefixes: {err:#}")),
        }
    }
    report.tables.push(tables.runtime);
    report.tables.push(tables.per_connection);
    report.tables.push(tables.throughput);
    report.tables.push(tables.connections);

    let bin = root.join("target/release/egress");
    let (mut events, mut memory) = agent::tables(&plan.sweep);
    for &count in &plan.agent_counts {
        step(&format!("agent at {count} prefixes: event sweep"));
        match agent::measure(&env, &bin, count, &plan.sweep, &mut events, &mut memory) {
            Ok(result) => agent_targets(report, count, &result),
            Err(err) => report
                .gaps
                .push(format!("agent at {count} prefixes: {err:#}")),
        }
    }
    report.tables.push(events);
    report.tables.push(memory);
    Ok(())
}

fn agent_targets(report: &mut Report, count: usize, result: &agent::AgentResult) {
    if count == 100_000 {
        report.target(
            "agent RSS < 64 MiB at 100,000 prefixes",
            format!(
                "{:.1} MiB idle, {:.1} MiB under load",
                result.idle_mib, result.load_mib
            ),
            Some(result.load_mib < 64.0),
        );
    }
    let best = result
        .steps
        .iter()
        .filter(|s| s.lossless())
        .max_by(|a, b| a.write_rate().total_cmp(&b.write_rate()));
    let first_loss = result.steps.iter().find(|s| !s.lossless());
    let loss_text = first_loss.map_or_else(
        || "no step lost events".to_owned(),
        |s| {
            format!(
                "loss from offered {:.0}/s ({} of {} flows lost)",
                s.offered_rate(),
                s.flows.saturating_sub(s.records),
                s.flows
            )
        },
    );
    report.target(
        &format!("decision events recorded without loss ≥ 200,000/s at {count} prefixes"),
        best.map_or_else(
            || format!("no lossless step; {loss_text}"),
            |s| {
                format!(
                    "{:.0}/s written at offered {:.0}/s, zero loss; {loss_text}",
                    s.write_rate(),
                    s.offered_rate()
                )
            },
        ),
        Some(best.is_some_and(|s| s.write_rate() >= EVENT_TARGET)),
    );
}

fn fmt_s(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "–".to_owned(), |s| format!("{s:.3} s (median)"))
}

/// Cost at the largest count against the smallest, and against the empty program.
fn kernel_targets(report: &mut Report, costs: &[(usize, kernel::Costs)]) {
    let (Some((small, small_costs)), Some((large, large_costs))) = (costs.first(), costs.last())
    else {
        return;
    };
    let mut worst_ratio: Option<(f64, &str)> = None;
    let mut worst_extra: Option<(f64, &str)> = None;
    for ((label, real_large, base_large), (_, real_small, _)) in large_costs.iter().zip(small_costs)
    {
        if let (Some(l), Some(s)) = (real_large.median(), real_small.median()) {
            let ratio = if s > 0.0 { l / s } else { f64::NAN };
            if worst_ratio.is_none_or(|(w, _)| ratio > w) {
                worst_ratio = Some((ratio, label));
            }
        }
        if let Some(extra) = real_large.minus(base_large).median()
            && worst_extra.is_none_or(|(w, _)| extra > w)
        {
            worst_extra = Some((extra, label));
        }
    }
    report.target(
        &format!("kernel cost at {large} prefixes ≤ 1.5× the cost at {small}"),
        worst_ratio.map_or_else(
            || "–".to_owned(),
            |(r, label)| format!("worst {r:.2}× ({label}; ratio of medians)"),
        ),
        worst_ratio.map(|(r, _)| r <= 1.5),
    );
    report.target(
        &format!("kernel cost at {large} prefixes < 100 ns above the empty program"),
        worst_extra.map_or_else(
            || "–".to_owned(),
            |(e, label)| format!("worst +{e:.0} ns ({label})"),
        ),
        worst_extra.map(|(e, _)| e < 100.0),
    );
}
