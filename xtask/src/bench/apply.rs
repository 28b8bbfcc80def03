//! Measure 4: policy compile and apply time and kernel map memory at each prefix count, and
//! a live reload (a second generation written beside the active one, then switched).

use anyhow::Result;
use egress_agent::policy::{LogMode, PolicySet};

use super::{
    loaded::Loaded,
    policy::{Spec, policy_set},
    report::Table,
    stats::Series,
};

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The policy measures 1a and 4 use: no selector, no events.
pub fn unselected(prefixes: usize) -> PolicySet {
    policy_set(&Spec {
        prefixes,
        cgroup: None,
        log: LogMode::None,
    })
}

/// Seconds of the median first apply (compile + apply) and of the median reload.
pub struct ApplyResult {
    pub first_s: Option<f64>,
    pub reload_s: Option<f64>,
    /// The last datapath, with the policy applied, for the test runs.
    pub loaded: Loaded,
}

/// `rounds` fresh loads with a first apply each, then `reloads` live reloads on the last.
pub fn measure(
    prefixes: usize,
    rounds: usize,
    reloads: usize,
    table: &mut Table,
) -> Result<ApplyResult> {
    let set = unselected(prefixes);
    let (mut compile, mut apply, mut total) =
        (Series::default(), Series::default(), Series::default());
    let mut last: Option<Loaded> = None;
    let mut entries = 0;
    for _ in 0..rounds.max(1) {
        // Drop the previous datapath first: two copies of a large policy double the memory.
        drop(last.take());
        let mut loaded = Loaded::load()?;
        let times = loaded.apply(&set)?;
        compile.push(ms(times.compile));
        apply.push(ms(times.apply));
        total.push(ms(times.compile + times.apply));
        entries = times.entries;
        last = Some(loaded);
    }
    let mut loaded = last.ok_or_else(|| anyhow::anyhow!("no rounds ran"))?;
    let (memory, tries) = loaded.map_memory()?;
    let mut reload = Series::default();
    for _ in 0..reloads {
        let times = loaded.apply(&set)?;
        reload.push(ms(times.compile + times.apply));
    }
    table.row(vec![
        prefixes.to_string(),
        entries.to_string(),
        compile.describe(1),
        apply.describe(1),
        total.describe(1),
        if reloads > 0 {
            reload.describe(1)
        } else {
            "–".to_owned()
        },
        format!("{:.2}", mib(memory)),
        format!("{:.2}", mib(tries)),
    ]);
    Ok(ApplyResult {
        first_s: total.median().map(|v| v / 1e3),
        reload_s: reload.median().map(|v| v / 1e3),
        loaded,
    })
}

pub fn table(rounds: usize) -> Table {
    Table::new(
        "4. Policy compile and apply time, kernel map memory",
        &format!(
            "Milliseconds, median (min–max) of {rounds} fresh loads: compile = `compile()` of the \
             parsed policy; apply = writing every map entry and switching generation (into empty \
             maps). Reload = compile + apply of a second generation while the first is active \
             (includes the 20 ms retire grace and removing the old entries). Memory = the \
             kernel's `memlock` of each map after the first apply (the LPM tries and the port \
             tables report what they hold, the other maps their preallocation); policy maps = \
             the address tries, the port tables and the port trie."
        ),
        &[
            "prefixes",
            "map entries",
            "compile ms",
            "apply ms",
            "compile + apply ms",
            "live reload ms",
            "all maps MiB",
            "policy maps MiB",
        ],
    )
}
