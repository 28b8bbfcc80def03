//! Measures 7 and 8 (issue 6, hostname rules): how much the kernel's reading of DNS answers
//! (`egress_dns_skb`, tail-called by the ingress program) adds to the time a workload waits
//! for an answer, and how the learned-address map behaves when it fills up and beyond.
//!
//! The world: the two test namespaces, a benchmark cgroup for the client, and dnsmasq (the
//! test fixture's `DnsServer`) in the server namespace answering AAAA questions from a hosts
//! file of documentation addresses. The client is this binary re-executed in the client
//! namespace and cgroup (`dns_worker.rs`). The agent is the release binary, started and
//! stopped per configuration (`agent_proc.rs`), whose pinned maps this reads for counters
//! and learned entries.

use std::{
    collections::BTreeSet,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::loaded_programs,
};
use egress_common::{
    capacity, counter,
    dns::{Learned, LearnedKey},
    maps, programs,
};
use egress_tests::{
    CgroupGuard, TestNet,
    dns::{DnsServer, HostEntry},
    process::{Placement, run_bounded},
};

use super::{
    agent_proc::BenchAgent,
    dns_worker::{FILL_PREFIX, LATENCY_PREFIXES, addr, fill_name},
    report::{Report, Table},
    stats::Series,
};

/// dnsmasq's TTL: far longer than a run, so nothing learned expires during it.
const TTL: u32 = 3600;
/// Addresses probed with `connect()` at the end of each fill batch (its most recent ones).
const RECENT_PROBES: u32 = 64;
/// An address of the fill prefix no answer ever names: never refused.
const CONTROL: u32 = 0xffff_fff0;

pub struct Plan {
    pub rounds: usize,
    /// Timed questions per configuration per round.
    pub queries: usize,
    /// Distinct names per kind (denied, allowed) the latency questions cycle through.
    pub pool: usize,
    /// Distinct names the capacity measure asks for, in batches of `fill_batch`.
    pub fill_total: u32,
    pub fill_batch: u32,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 1,
                queries: 500,
                pool: 100,
                fill_total: 3_000,
                fill_batch: 1_000,
            }
        } else {
            Self {
                rounds: 5,
                queries: 4_000,
                pool: 500,
                fill_total: capacity::LEARNED / 2 * 3,
                fill_batch: 8_192,
            }
        }
    }
}

/// Namespaces, cgroup and dnsmasq; dropped in field order (dnsmasq first).
struct World {
    dns: DnsServer,
    cgroup: CgroupGuard,
    net: TestNet,
    exe: PathBuf,
}

impl World {
    fn new(plan: &Plan) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let net = TestNet::new()?;
        let cgroup = CgroupGuard::new("benchdns")?;
        let mut hosts: Vec<HostEntry> = (1..=plan.fill_total)
            .map(|i| (fill_name(i), IpAddr::V6(addr(FILL_PREFIX, i))))
            .collect();
        let (denied, allowed) = LATENCY_PREFIXES;
        for i in 1..=u32::try_from(plan.pool)? {
            hosts.push((
                format!("q{i}.denied.bench.test"),
                IpAddr::V6(addr(denied, i)),
            ));
            hosts.push((
                format!("q{i}.allowed.bench.test"),
                IpAddr::V6(addr(allowed, i)),
            ));
        }
        let dns = DnsServer::start(&net.server, TestNet::SERVER_V4.into(), TTL, &hosts, &[])?;
        Ok(Self {
            dns,
            cgroup,
            net,
            exe,
        })
    }

    /// Runs the DNS worker in the client namespace and the benchmark cgroup.
    fn worker(&self, args: &[String], limit: Duration) -> Result<serde_json::Value> {
        let out = run_bounded(
            Placement::new(self.net.client.path())
                .cgroup(self.cgroup.path())
                .command(&self.exe)?
                .args(["bench", "--dns-worker"])
                .args(args),
            "dns worker",
            limit,
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "dns worker {args:?} failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(text.trim()).with_context(|| format!("dns worker printed {text:?}"))
    }

    fn policy(&self) -> String {
        format!(
            "apiVersion: egress.dev/v1alpha1\n\
             kind: EgressPolicy\n\
             metadata: {{name: bench-dns}}\n\
             spec:\n  \
               selector: {{cgroups: [\"{}\"]}}\n  \
               defaultAction: allow\n  \
               dns: {{resolvers: [\"{}\"]}}\n  \
               egress:\n    \
                 - name: deny-denied\n      action: deny\n      \
                   to: [{{host: \"*.denied.bench.test\"}}]\n      protocol: tcp\n      ports: [80]\n    \
                 - name: allow-allowed\n      action: allow\n      \
                   to: [{{host: \"*.allowed.bench.test\"}}]\n      protocol: tcp\n      ports: [80]\n",
            self.cgroup.relative_path(),
            self.dns.addr(),
        )
    }
}

fn field(value: &serde_json::Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or(0)
}

/// The map `name` pinned by the running bench agent (`agent_proc.rs` pins under
/// `/sys/fs/bpf/egress-bench-<our pid>/<version>/maps/`).
fn pinned_map(name: &str) -> Result<Map> {
    let base = PathBuf::from(format!("/sys/fs/bpf/egress-bench-{}", std::process::id()));
    let entries = fs::read_dir(&base).with_context(|| format!("reading {}", base.display()))?;
    for entry in entries {
        let path = entry?.path().join("maps").join(name);
        if path.exists() {
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            return Ok(Map::from_map_data(data)?);
        }
    }
    bail!("no pinned map {name} under {}", base.display())
}

/// The kernel's DNS counters: (answers read, addresses learned, answers dropped).
fn dns_counters() -> Result<(u64, u64, u64)> {
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(pinned_map(maps::COUNTERS)?)?;
    let sum = |index: u32| -> Result<u64> { Ok(map.get(&index, 0)?.iter().sum()) };
    Ok((
        sum(counter::DNS_ANSWERS)?,
        sum(counter::DNS_LEARNED)?,
        sum(counter::DNS_DROPPED)?,
    ))
}

/// Entries of the learned map for `cgroup_id` (keys only: reading them does not touch the
/// LRU order).
fn learned_entries(cgroup_id: u64) -> Result<u64> {
    let map: HashMap<MapData, LearnedKey, Learned> = HashMap::try_from(pinned_map(maps::LEARNED)?)?;
    let mut n = 0;
    for key in map.keys() {
        if key?.cgroup_id == cgroup_id {
            n += 1;
        }
    }
    Ok(n)
}

/// Ids of the loaded programs named `name` (the kernel keeps its first 15 bytes).
fn program_ids(name: &str) -> Result<BTreeSet<u32>> {
    let short = name.get(..name.len().min(15)).unwrap_or(name);
    let mut ids = BTreeSet::new();
    for info in loaded_programs() {
        let info = info?;
        if info.name_as_str() == Some(short) {
            ids.insert(info.id());
        }
    }
    Ok(ids)
}

/// (run time ns, run count) of program `id` while statistics are on.
fn prog_stats(id: u32) -> Result<(u64, u64)> {
    for info in loaded_programs() {
        let info = info?;
        if info.id() == id {
            let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            return Ok((ns, info.run_count()));
        }
    }
    bail!("program {id} is gone")
}

/// The one program named `name` that appeared since `before`, if exactly one did (another
/// agent started meanwhile would make it ambiguous: then no statistics).
fn new_program(name: &str, before: &BTreeSet<u32>) -> Result<Option<u32>> {
    let new: Vec<u32> = program_ids(name)?.difference(before).copied().collect();
    Ok(match new[..] {
        [id] => Some(id),
        _ => None,
    })
}

#[derive(Default)]
struct Config {
    p50_us: Series,
    p99_us: Series,
    max_us: Series,
    answered: u64,
    failed: u64,
}

impl Config {
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds far below 2^52")]
    fn push(&mut self, run: &serde_json::Value) {
        let us = |key: &str| field(run, key) as f64 / 1000.0;
        self.p50_us.push(us("p50_ns"));
        self.p99_us.push(us("p99_ns"));
        self.max_us.push(us("max_ns"));
        self.answered += field(run, "answered");
        self.failed += field(run, "bad") + field(run, "timeouts");
    }

    fn row(&self, label: &str) -> Vec<String> {
        vec![
            label.to_owned(),
            self.p50_us.describe(1),
            self.p99_us.describe(1),
            self.max_us.describe(0),
            format!("{} / {}", self.answered, self.failed),
        ]
    }
}

/// Kernel statistics over the enforced runs.
#[derive(Default)]
struct Kernel {
    ingress_ns: Series,
    /// Ingress time over the run / answers read: an upper bound on the cost per answer.
    ingress_per_answer: Series,
    ingress_runs: u64,
    dns_runs: u64,
    answers: u64,
    learned: u64,
    dropped: u64,
}

fn latency(world: &World, bin: &Path, plan: &Plan, report: &mut Report) -> Result<()> {
    let args = [
        "latency".to_owned(),
        world.dns.addr().to_string(),
        plan.queries.to_string(),
        plan.pool.to_string(),
    ];
    let limit = Duration::from_secs(120);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let (mut base, mut enforced, mut kernel) =
        (Config::default(), Config::default(), Kernel::default());
    for round in 0..plan.rounds {
        base.push(&world.worker(&args, limit)?);
        let before = (program_ids(programs::INGRESS)?, program_ids(programs::DNS)?);
        let agent = BenchAgent::start(bin, &world.policy())?;
        let ingress = new_program(programs::INGRESS, &before.0)?;
        let dns = new_program(programs::DNS, &before.1)?;
        let stats = |id: Option<u32>| id.map(prog_stats).transpose();
        let (c0, i0, d0) = (dns_counters()?, stats(ingress)?, stats(dns)?);
        let run = world.worker(&args, limit)?;
        let (c1, i1, d1) = (dns_counters()?, stats(ingress)?, stats(dns)?);
        drop(agent);
        let answered = field(&run, "answered");
        let (answers, learned, dropped) = (c1.0 - c0.0, c1.1 - c0.1, c1.2 - c0.2);
        // Every timed answer must have been read and learned, or this measured nothing.
        ensure!(
            answers >= answered && learned >= answered && dropped == 0,
            "round {round}: {answered} answers received but the kernel read {answers}, \
             learned {learned}, dropped {dropped}"
        );
        enforced.push(&run);
        kernel.answers += answers;
        kernel.learned += learned;
        kernel.dropped += dropped;
        if let (Some((t0, r0)), Some((t1, r1))) = (i0, i1)
            && r1 > r0
        {
            #[expect(clippy::cast_precision_loss, reason = "nanosecond sums far below 2^52")]
            {
                kernel.ingress_ns.push((t1 - t0) as f64 / (r1 - r0) as f64);
                kernel
                    .ingress_per_answer
                    .push((t1 - t0) as f64 / answers.max(1) as f64);
            }
            kernel.ingress_runs += r1 - r0;
        }
        if let (Some((_, r0)), Some((_, r1))) = (d0, d1) {
            kernel.dns_runs += r1 - r0;
        }
        println!(
            "bench:   round {round}: p99 {:.1} µs no agent, {:.1} µs enforced",
            base.p99_us.0.last().copied().unwrap_or(f64::NAN),
            enforced.p99_us.0.last().copied().unwrap_or(f64::NAN)
        );
    }
    let added_p50 = enforced.p50_us.minus(&base.p50_us);
    let added_p99 = enforced.p99_us.minus(&base.p99_us);
    let mut table = latency_table(plan);
    table.row(base.row("no agent"));
    table.row(enforced.row("agent, host rules (every answer read and learned)"));
    table.row(vec![
        "added (enforced − no agent, per round)".to_owned(),
        added_p50.describe(1),
        added_p99.describe(1),
        "–".to_owned(),
        "–".to_owned(),
    ]);
    report.tables.push(table);
    report.target(
        "DNS answer p99 latency added by learning < 1 ms",
        format!(
            "{} µs (p50 {} µs); median (min–max) over rounds",
            added_p99.describe(1),
            added_p50.describe(1)
        ),
        added_p99.median().map(|us| us < 1000.0),
    );
    let mut runtime = Table::new(
        "7b. Kernel cost of reading DNS answers (BPF run-time stats)",
        "During the enforced runs of 7a, with BPF run-time statistics on (BPF_ENABLE_STATS, the \
         switch behind kernel.bpf_stats_enabled): the ingress program's Δrun_time / Δrun_cnt \
         per round, median (min–max). Its runs are every packet delivered to a socket on the \
         machine during the run (the answers to the client, and the questions reaching \
         dnsmasq); its time includes the DNS reader, which it reaches by tail call. Ingress \
         ns per answer = the ingress program's whole time over the run / answers read: an \
         upper bound on the cost of reading one answer. The DNS reader's own run count is \
         shown as the kernel reports it (the kernel counts a run where a hook enters a \
         program, not at a tail call). Answers, learned and dropped are the kernel's own \
         counters, summed over rounds.",
        &[
            "ingress ns/run",
            "ingress ns per answer",
            "ingress runs",
            "DNS reader runs (own counter)",
            "answers read",
            "addresses learned",
            "answers dropped",
        ],
    );
    runtime.row(vec![
        kernel.ingress_ns.describe(0),
        kernel.ingress_per_answer.describe(0),
        kernel.ingress_runs.to_string(),
        kernel.dns_runs.to_string(),
        kernel.answers.to_string(),
        kernel.learned.to_string(),
        kernel.dropped.to_string(),
    ]);
    report.tables.push(runtime);
    Ok(())
}

fn latency_table(plan: &Plan) -> Table {
    let Plan {
        rounds,
        queries,
        pool,
        fill_total: _,
        fill_batch: _,
    } = plan;
    Table::new(
        "7a. DNS answer latency with hostname rules",
        &format!(
            "One client process in the benchmark cgroup (client namespace) asks dnsmasq in \
             the server namespace (192.0.2.2, over the veth pair) {queries} AAAA questions per \
             configuration per round over UDP, one at a time, alternating names under \
             `*.denied.bench.test` and `*.allowed.bench.test` ({pool} of each, each answered \
             with its own 2001:db8:: address), and times each question → answer in \
             userspace (after 50 untimed questions). {rounds} rounds, each: no agent, then the \
             agent (release binary) with a policy selecting the cgroup: `defaultAction: \
             allow`, `dns: resolvers: [192.0.2.2]`, a deny rule on `*.denied.bench.test` and \
             an allow rule on `*.allowed.bench.test` (TCP 80), so every answer is read and \
             its address learned (checked with the kernel's counters). Percentiles are per \
             run of {queries} questions; median (min–max) over rounds; the added latency is \
             per round. µs."
        ),
        &[
            "configuration",
            "p50 µs",
            "p99 µs",
            "max µs",
            "answered / failed",
        ],
    )
}

/// Per batch: (names answered so far, live entries, recent refused).
fn capacity_measure(world: &World, bin: &Path, plan: &Plan, report: &mut Report) -> Result<()> {
    let agent = BenchAgent::start(bin, &world.policy())?;
    let cgroup_id = world.cgroup.id()?;
    let server = world.dns.addr().to_string();
    let fill = |first: u32, count: u32, probes: &[u32]| {
        let mut args = vec![
            "fill".to_owned(),
            server.clone(),
            first.to_string(),
            count.to_string(),
        ];
        args.extend(probes.iter().map(ToString::to_string));
        world.worker(&args, Duration::from_secs(180))
    };
    let control = fill(1, 0, &[CONTROL])?;
    ensure!(
        control["refused"].as_array().is_some_and(Vec::is_empty),
        "a connect to the never-answered control address was refused: {control}"
    );
    let mut table = capacity_table(plan);
    let (mut failed, mut recent_ok, mut live) = (0, true, 0);
    let mut first = 1;
    while first <= plan.fill_total {
        let count = plan.fill_batch.min(plan.fill_total - first + 1);
        let last = first + count - 1;
        let probes: Vec<u32> = (last.saturating_sub(RECENT_PROBES - 1).max(first)..=last).collect();
        let out = fill(first, count, &probes)?;
        let refused = out["refused"].as_array().map_or(0, Vec::len);
        failed += field(&out, "bad") + field(&out, "timeouts");
        recent_ok &= refused == probes.len();
        live = learned_entries(cgroup_id)?;
        let (answers, learned, dropped) = dns_counters()?;
        table.row(vec![
            last.to_string(),
            live.to_string(),
            format!("{refused} / {}", probes.len()),
            format!("{answers} / {learned} / {dropped}"),
            failed.to_string(),
        ]);
        println!("bench:   {last} names: {live} live entries, recent refused {refused}");
        first = last + 1;
    }
    // The oldest answers, never probed (a lookup would have refreshed them).
    let oldest: Vec<u32> = (1..=RECENT_PROBES.min(plan.fill_batch)).collect();
    let out = fill(1, 0, &oldest)?;
    let oldest_refused = out["refused"].as_array().map_or(0, Vec::len);
    let (_, _, dropped) = dns_counters()?;
    drop(agent);
    report.tables.push(table);
    let capacity = u64::from(capacity::LEARNED);
    let beyond = u64::from(plan.fill_total) > capacity;
    let evicted = live < u64::from(plan.fill_total);
    report.target(
        &format!(
            "learned addresses beyond capacity ({capacity}): LRU eviction, no failure, recent \
             answers still decide"
        ),
        format!(
            "{} names answered, {live} live entries; the {} oldest: {oldest_refused} still \
             refused; the {RECENT_PROBES} most recent of every batch refused: {}; dropped \
             answers {dropped}, failed questions {failed}",
            plan.fill_total,
            oldest.len(),
            if recent_ok { "yes" } else { "no" }
        ),
        Some(recent_ok && dropped == 0 && failed == 0 && live <= capacity && (!beyond || evicted)),
    );
    if !beyond {
        report.notes.push(format!(
            "measure 8 asked for {} names, below the learned map's capacity ({capacity}): \
             eviction is not reached at this size",
            plan.fill_total
        ));
    }
    Ok(())
}

fn capacity_table(plan: &Plan) -> Table {
    Table::new(
        "8. Learned-address capacity",
        &format!(
            "One agent (same policy as 7a) while the client asks for {} distinct names \
             `n{{i}}.denied.bench.test` → 2001:db8:5300::i in batches of {}, one question at \
             a time. After each batch: the entries of the learned map for the benchmark \
             cgroup (map keys read from the agent's pinned map; capacity {}), and a \
             non-blocking TCP connect to port 80 of each of the batch's {RECENT_PROBES} \
             most recent addresses, which must fail with EPERM (denied by name). Before the \
             fill, a never-answered address of the same prefix is not refused; after it, \
             the oldest addresses are probed (see the targets). Kernel counters are \
             cumulative since the agent started.",
            plan.fill_total,
            plan.fill_batch,
            capacity::LEARNED
        ),
        &[
            "names answered",
            "learned entries (live)",
            "recent refused",
            "kernel: answers / learned / dropped",
            "failed questions",
        ],
    )
}

/// Runs measures 7 and 8 into `report`; a failed measure becomes a gap.
pub fn measure_all(plan: &Plan, root: &Path, report: &mut Report) -> Result<()> {
    let bin = root.join("target/release/egress");
    println!("bench: dns: namespaces, cgroup, dnsmasq");
    let world = World::new(plan)?;
    println!("bench: dns: answer latency");
    if let Err(err) = latency(&world, &bin, plan, report) {
        report.gaps.push(format!("DNS answer latency: {err:#}"));
    }
    println!("bench: dns: learned-address capacity");
    if let Err(err) = capacity_measure(&world, &bin, plan, report) {
        report
            .gaps
            .push(format!("learned-address capacity: {err:#}"));
    }
    Ok(())
}
