//! Measures 1b, 2 and 3 at one prefix count: iperf3 throughput and short-connection rate
//! through no filter, the empty program, the enforcer and nftables, interleaved round by
//! round; and the programs' average run time from the kernel's BPF run-time statistics
//! under that traffic. nftables is optional per size: when its sets do not load within the
//! time limit, that size runs without it and says so.

use std::time::Duration;

use anyhow::Result;
use aya::programs::loaded_programs;
use egress_agent::policy::LogMode;

use super::{
    empty_prog::{Attached, EmptyProgram},
    env::Env,
    loaded::{EventDrain, Loaded},
    policy::{Spec, nft_ruleset, policy_set},
    report::Table,
    runtime,
    stats::Series,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Empty,
    Enforcer,
    Nft,
}

const MODES: [Mode; 4] = [Mode::None, Mode::Empty, Mode::Enforcer, Mode::Nft];

/// How long each traffic phase runs.
pub struct Timing {
    /// Rounds of every configuration, run-time statistics off: the ratios.
    pub rounds: usize,
    /// Rounds of the empty program and the enforcer with statistics on: measures 1b, 1c.
    pub stats_rounds: usize,
    pub iperf_secs: u32,
    pub connect_secs: f64,
    /// Client threads of the one connect worker process.
    pub connect_threads: usize,
    /// Bound on loading the nftables sets of one size.
    pub nft_limit: Duration,
}

#[derive(Default)]
struct PerMode {
    gbps: Series,
    conns: Series,
    /// ns per run during the throughput and the connection phases.
    ns_bulk: Series,
    ns_conn: Series,
    /// Connections that failed (timed out or were refused) over all rounds.
    failures: u64,
}

pub struct Tables {
    pub throughput: Table,
    pub connections: Table,
    pub runtime: Table,
    pub per_connection: Table,
}

/// Per-count medians for the targets: (throughput enforcer/none, enforcer/nft, conn rate
/// enforcer/none), each as the series of per-round ratios.
pub struct Ratios {
    pub throughput: Series,
    pub vs_nft: Series,
    pub connections: Series,
    /// Why nftables was left out at this size, if it was.
    pub nft_skipped: Option<String>,
}

const NFT_CHAIN: &str = "add chain inet egress_bench output { type filter hook output priority 0; policy accept; }\n\
                         add rule inet egress_bench output ip daddr . tcp dport @deny4 drop\n\
                         add rule inet egress_bench output ip6 daddr . tcp dport @deny6 drop\n";

/// Puts each configuration in force for a phase, and lifts it after.
struct Phases<'a> {
    env: &'a Env,
    empty: &'a EmptyProgram,
    loaded: &'a mut Loaded,
    timing: &'a Timing,
    /// The empty program while attached; detached on drop.
    empty_attached: Option<Attached<'a>>,
}

impl Phases<'_> {
    fn begin(&mut self, mode: Mode) -> Result<()> {
        match mode {
            Mode::Empty => self.empty_attached = Some(self.empty.attach(self.env.cgroup.path())?),
            Mode::Enforcer => {
                self.loaded
                    .datapath
                    .attach(self.env.cgroup.path().to_owned())?;
            }
            // The sets are loaded once; the chain that references them turns nftables on.
            Mode::Nft => self.env.nft_file(NFT_CHAIN, self.timing.nft_limit)?,
            Mode::None => {}
        }
        Ok(())
    }

    fn end(&mut self, mode: Mode) -> Result<()> {
        match mode {
            Mode::Empty => self.empty_attached = None,
            Mode::Enforcer => self.loaded.datapath.detach(),
            Mode::Nft => self.env.nft(
                &["delete", "chain", "inet", "egress_bench", "output"],
                self.timing.nft_limit,
            )?,
            Mode::None => {}
        }
        Ok(())
    }
}

fn empty_stats(id: u32) -> Result<(u64, u64)> {
    for info in loaded_programs() {
        let info = info?;
        if info.id() == id {
            let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            return Ok((ns, info.run_count()));
        }
    }
    anyhow::bail!("program {id} is gone")
}

#[expect(clippy::cast_precision_loss, reason = "nanosecond sums far below 2^52")]
fn per_run(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let runs = after.1.saturating_sub(before.1);
    (runs > 0).then(|| after.0.saturating_sub(before.0) as f64 / runs as f64)
}

pub fn measure(
    env: &Env,
    empty: &EmptyProgram,
    prefixes: usize,
    timing: &Timing,
    tables: &mut Tables,
) -> Result<Ratios> {
    let cgroup = env.cgroup.relative_path().to_owned();
    let mut loaded = Loaded::load()?;
    loaded.apply(&policy_set(&Spec {
        prefixes,
        cgroup: Some(cgroup),
        log: LogMode::All,
    }))?;
    let drain = EventDrain::start(&mut loaded)?;
    let counters = loaded.datapath.take_counters()?;
    let empty_id = empty.id()?;
    let nft_skipped = match env.nft_file(&nft_ruleset(prefixes), timing.nft_limit) {
        Ok(()) => None,
        Err(err) => {
            // nft -f commits as one transaction: a killed load leaves nothing, but be sure.
            let _ = env.nft(
                &["delete", "table", "inet", "egress_bench"],
                Duration::from_secs(60),
            );
            let why = format!("{err:#}");
            let why: String = why.chars().take(300).collect();
            println!("bench:   nftables left out at {prefixes} prefixes: {why}");
            Some(why)
        }
    };
    let modes: Vec<Mode> = MODES
        .into_iter()
        .filter(|m| *m != Mode::Nft || nft_skipped.is_none())
        .collect();
    let mut phases = Phases {
        env,
        empty,
        loaded: &mut loaded,
        timing,
        empty_attached: None,
    };
    let mut results: Vec<PerMode> = MODES.iter().map(|_| PerMode::default()).collect();
    let mut connections_total = 0.0;
    let mut decoded_total = 0;
    let lost_before = counters.read()?.events_lost;
    // The rounds the ratios come from run with the kernel's run-time statistics off, as
    // they are in production: with them on, every program run reads the clock twice, which
    // weighs on the enforcer's five hooks per connection and on the baselines' one or none.
    for _ in 0..timing.rounds {
        for (mode, result) in MODES.iter().zip(results.iter_mut()) {
            if !modes.contains(mode) {
                continue;
            }
            phases.begin(*mode)?;
            result.gbps.push(env.throughput(timing.iperf_secs)?);
            let decoded_before = drain.decoded();
            let (rate, failures) =
                env.connection_rate(timing.connect_secs, timing.connect_threads)?;
            result.conns.push(rate);
            result.failures += failures;
            if *mode == Mode::Enforcer {
                connections_total += rate * timing.connect_secs;
                // Let the drain thread catch up with this phase's events.
                std::thread::sleep(Duration::from_millis(100));
                decoded_total += drain.decoded() - decoded_before;
            }
            phases.end(*mode)?;
        }
    }
    // Then the empty program and the enforcer again, with the statistics on (off again when
    // `_stats` drops), for their cost per run (1b) and per connection (1c).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let mut per_connection = runtime::PerConnection::default();
    for _ in 0..timing.stats_rounds {
        for (mode, result) in MODES.iter().zip(results.iter_mut()) {
            if !matches!(mode, Mode::Empty | Mode::Enforcer) {
                continue;
            }
            phases.begin(*mode)?;
            let stats = |phases: &mut Phases<'_>| -> Result<(u64, u64)> {
                match mode {
                    Mode::Enforcer => phases.loaded.run_stats(),
                    _ => empty_stats(empty_id),
                }
            };
            let s0 = stats(&mut phases)?;
            env.throughput(timing.iperf_secs)?;
            let s1 = stats(&mut phases)?;
            let programs_before = runtime::Snapshot::take(phases.loaded)?;
            let decoded_before = drain.decoded();
            let (rate, failures) =
                env.connection_rate(timing.connect_secs, timing.connect_threads)?;
            result.failures += failures;
            let s2 = stats(&mut phases)?;
            if *mode == Mode::Enforcer {
                let connections = rate * timing.connect_secs;
                per_connection.add(
                    &programs_before,
                    &runtime::Snapshot::take(phases.loaded)?,
                    connections,
                );
                connections_total += connections;
                std::thread::sleep(Duration::from_millis(100));
                decoded_total += drain.decoded() - decoded_before;
            }
            result.ns_bulk.0.extend(per_run(s0, s1));
            result.ns_conn.0.extend(per_run(s1, s2));
            phases.end(*mode)?;
        }
    }
    let lost = counters.read()?.events_lost - lost_before;
    if nft_skipped.is_none() {
        env.nft(
            &["delete", "table", "inet", "egress_bench"],
            timing.nft_limit,
        )?;
    }

    let [none, empty_r, enforcer, nft] = &results[..] else {
        anyhow::bail!("mode results missing");
    };
    let ratios = Ratios {
        throughput: enforcer.gbps.ratio_to(&none.gbps),
        vs_nft: enforcer.gbps.ratio_to(&nft.gbps),
        connections: enforcer.conns.ratio_to(&none.conns),
        nft_skipped,
    };
    tables.throughput.row(vec![
        prefixes.to_string(),
        none.gbps.describe(2),
        empty_r.gbps.describe(2),
        enforcer.gbps.describe(2),
        nft.gbps.describe(2),
        ratios.throughput.describe(3),
        nft.gbps.ratio_to(&none.gbps).describe(3),
        ratios.vs_nft.describe(3),
    ]);
    tables.connections.row(vec![
        prefixes.to_string(),
        none.conns.describe(0),
        empty_r.conns.describe(0),
        enforcer.conns.describe(0),
        nft.conns.describe(0),
        ratios.connections.describe(3),
        nft.conns.ratio_to(&none.conns).describe(3),
        format!(
            "{} / {} / {} / {}",
            none.failures, empty_r.failures, enforcer.failures, nft.failures
        ),
        format!("{decoded_total} / {connections_total:.0}"),
        lost.to_string(),
    ]);
    for (phase, real, base) in [
        ("iperf3 (bulk TCP)", &enforcer.ns_bulk, &empty_r.ns_bulk),
        ("short connections", &enforcer.ns_conn, &empty_r.ns_conn),
    ] {
        tables.runtime.row(vec![
            prefixes.to_string(),
            phase.to_owned(),
            real.describe(0),
            base.describe(0),
            format!(
                "{:.0}",
                real.median().unwrap_or(f64::NAN) - base.median().unwrap_or(f64::NAN)
            ),
        ]);
    }
    tables.per_connection.row(per_connection.row(prefixes));
    Ok(ratios)
}

pub fn tables(timing: &Timing) -> Tables {
    let Timing {
        rounds,
        stats_rounds,
        iperf_secs,
        connect_secs,
        connect_threads,
        nft_limit,
    } = timing;
    let setup = format!(
        "Client namespace → server namespace over a veth pair (192.0.2.1 → 192.0.2.2), the \
         client in a benchmark cgroup. Configurations alternate within each of {rounds} \
         rounds: no filter, the empty program attached to the cgroup, the enforcer (the real \
         program attached to the cgroup; policy selects that cgroup, `log: all`, traffic \
         matches the first rule), nftables (interval sets of address . port range with the \
         same deny prefixes, one rule per family in the output hook of the client namespace; \
         left out at a size whose sets do not load within {} s, see the notes). Median \
         (min–max) over rounds; ratios are per round.",
        nft_limit.as_secs()
    );
    Tables {
        throughput: Table::new(
            "2. Throughput (iperf3, one TCP stream)",
            &format!("{setup} `iperf3 -t {iperf_secs}`, Gbit/s received."),
            &[
                "prefixes",
                "no filter",
                "empty prog",
                "enforcer",
                "nftables",
                "enforcer / none",
                "nftables / none",
                "enforcer / nftables",
            ],
        ),
        connections: Table::new(
            "3. Connection rate (short TCP connections, decision events on)",
            &format!(
                "{setup} One client process of {connect_threads} threads connects for \
                 {connect_secs} s per phase; each connection: connect, the server accepts and \
                 closes at once, the client reads the end of file and closes with SO_LINGER 0 \
                 (no TIME_WAIT on either side; the client namespace also has \
                 tcp_tw_reuse=1 and ports 1024–65000). Connections per second. The \
                 enforcer's events are read and decoded by a thread in the benchmark, as the \
                 agent's reader does (measure 5 covers the agent writing them); events \
                 decoded are counted during the enforcer's connection phases only."
            ),
            &[
                "prefixes",
                "no filter",
                "empty prog",
                "enforcer",
                "nftables",
                "enforcer / none",
                "nftables / none",
                "failed connections (none / empty / enforcer / nftables)",
                "events decoded / connections (enforcer)",
                "events lost",
            ],
        ),
        runtime: Table::new(
            "1b. Kernel cost per packet under real traffic (BPF run-time stats)",
            &format!(
                "Average ns per run = Δrun_time_ns / Δrun_cnt of the packet hook (BPF_ENABLE_STATS, \
                 the same switch as kernel.bpf_stats_enabled) over each phase of {stats_rounds} \
                 more rounds of the empty program and the enforcer, after the rounds of \
                 measures 2 and 3, which run with the statistics off: with them on, each program \
                 run reads the clock twice. Median (min–max) over rounds."
            ),
            &[
                "prefixes",
                "traffic",
                "egress ns/run",
                "empty ns/run",
                "difference of medians",
            ],
        ),
        per_connection: runtime::table(*stats_rounds, *connect_secs),
    }
}
