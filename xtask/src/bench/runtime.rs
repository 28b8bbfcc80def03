//! Measure 1c: where the enforcer's BPF time goes in a short connection, hook by hook, from
//! the kernel's run-time statistics of every program it loaded.

use std::collections::BTreeMap;

use anyhow::Result;
use egress_common::programs;

use super::{loaded::Loaded, report::Table};

/// The hooks a short outbound TCP connection runs, in the order it meets them; the table
/// has a column for each and one for the rest.
const HOOKS: [&str; 5] = [
    programs::SOCK_CREATE,
    programs::CONNECT4,
    programs::EGRESS,
    programs::INGRESS,
    programs::SOCK_RELEASE,
];

/// Total run time (ns) and run count of each of the enforcer's programs at one instant.
pub struct Snapshot(BTreeMap<String, (u128, u64)>);

impl Snapshot {
    pub fn take(loaded: &Loaded) -> Result<Self> {
        Ok(Self(
            loaded
                .datapath
                .run_stats()?
                .into_iter()
                .map(|(name, time, runs)| (name, (time.as_nanos(), runs)))
                .collect(),
        ))
    }
}

/// Run time and runs of each program, summed over connection phases, and the connections
/// they served.
#[derive(Default)]
pub struct PerConnection {
    totals: BTreeMap<String, (u128, u64)>,
    connections: f64,
}

impl PerConnection {
    /// Adds a phase of `connections` connections between two snapshots.
    pub fn add(&mut self, before: &Snapshot, after: &Snapshot, connections: f64) {
        for (name, (ns, runs)) in &after.0 {
            let (ns0, runs0) = before.0.get(name).copied().unwrap_or_default();
            let total = self.totals.entry(name.clone()).or_default();
            total.0 += ns.saturating_sub(ns0);
            total.1 += runs.saturating_sub(runs0);
        }
        self.connections += connections;
    }

    #[expect(clippy::cast_precision_loss, reason = "sums far below 2^52")]
    pub fn row(&self, prefixes: usize) -> Vec<String> {
        let per_connection = |ns: u128| ns as f64 / self.connections;
        let mut row = vec![prefixes.to_string()];
        for hook in HOOKS {
            let (ns, runs) = self.totals.get(hook).copied().unwrap_or_default();
            row.push(format!(
                "{:.0} ({:.2} × {:.0})",
                per_connection(ns),
                runs as f64 / self.connections,
                ns as f64 / runs.max(1) as f64
            ));
        }
        let others: u128 = self
            .totals
            .iter()
            .filter(|(name, _)| !HOOKS.contains(&name.as_str()))
            .map(|(_, (ns, _))| ns)
            .sum();
        let all: u128 = self.totals.values().map(|(ns, _)| ns).sum();
        row.push(format!("{:.0}", per_connection(others)));
        row.push(format!("{:.0}", per_connection(all)));
        row
    }
}

pub fn table(stats_rounds: usize, connect_secs: f64) -> Table {
    let mut header = vec!["prefixes".to_owned()];
    header.extend(
        HOOKS
            .iter()
            .map(|hook| format!("{hook} ns (runs × ns/run)")),
    );
    header.push("other programs ns".to_owned());
    header.push("all programs ns".to_owned());
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    Table::new(
        "1c. The enforcer's BPF time per short connection, by program",
        &format!(
            "The connection phases of the {stats_rounds} statistics rounds ({connect_secs} s \
             each; see 1b and measure 3): Δrun_time_ns of each of the enforcer's programs / \
             connections made. In brackets: runs per connection × ns per run."
        ),
        &header,
    )
}
