//! Measure 1a: BPF_PROG_TEST_RUN of the real program on crafted packets (never sent
//! anywhere), paired round by round with the empty program on the same frame.

use std::net::IpAddr;

use anyhow::{Result, ensure};
use egress_agent::datapath::test_run::{Packet, Transport};

use super::{
    empty_prog::EmptyProgram,
    loaded::Loaded,
    policy::{EARLY_V4, EARLY_V6, LATE_V4, LATE_V6, MISS_V4, MISS_V6, TRAFFIC_PORT},
    report::Table,
    stats::Series,
};

/// Packet kinds: (label, destination, port, whether the program must pass it).
fn packets() -> [(&'static str, IpAddr, u16, bool); 6] {
    [
        (
            "IPv4 match early (allow)",
            IpAddr::V4(EARLY_V4),
            TRAFFIC_PORT,
            true,
        ),
        ("IPv4 match late (deny)", IpAddr::V4(LATE_V4), 443, false),
        ("IPv4 no match", IpAddr::V4(MISS_V4), 443, true),
        (
            "IPv6 match early (allow)",
            IpAddr::V6(EARLY_V6),
            TRAFFIC_PORT,
            true,
        ),
        ("IPv6 match late (deny)", IpAddr::V6(LATE_V6), 443, false),
        ("IPv6 no match", IpAddr::V6(MISS_V6), 443, true),
    ]
}

fn frame(dst: IpAddr, port: u16) -> Vec<u8> {
    let src = match dst {
        IpAddr::V4(_) => "192.0.2.1".parse(),
        IpAddr::V6(_) => "2001:db8::1".parse(),
    }
    .unwrap_or(dst);
    Packet {
        src,
        dst,
        transport: Transport::TcpSyn(port),
    }
    .frame()
}

/// Median ns per run of the real program per packet kind, for the cross-count target.
pub type Costs = Vec<(&'static str, Series, Series)>;

/// Runs the rounds on `loaded` (a policy with `prefixes` prefixes, no selector) and adds rows.
pub fn measure(
    loaded: &mut Loaded,
    empty: &EmptyProgram,
    prefixes: usize,
    rounds: usize,
    repeat: u32,
    table: &mut Table,
) -> Result<Costs> {
    let mut costs: Costs = Vec::new();
    for (label, dst, port, pass) in packets() {
        let frame = frame(dst, port);
        let (mut real, mut base) = (Series::default(), Series::default());
        for _ in 0..rounds {
            let e = empty.test_run(&frame, repeat)?;
            ensure!(e.retval == 1, "the empty program returned {}", e.retval);
            base.push(f64::from(e.ns_per_run));
            let r = loaded.datapath.test_run(&frame, repeat)?;
            ensure!(
                r.passed == pass,
                "{label}: the program returned pass={} (expected {pass}) at {prefixes} prefixes",
                r.passed
            );
            #[expect(clippy::cast_precision_loss, reason = "nanoseconds per run are small")]
            real.push(r.per_run.as_nanos() as f64);
        }
        table.row(vec![
            prefixes.to_string(),
            label.to_owned(),
            real.describe(0),
            base.describe(0),
            real.ratio_to(&base).describe(2),
            real.minus(&base).describe(0),
        ]);
        costs.push((label, real, base));
    }
    Ok(costs)
}

pub fn table(repeat: u32, rounds: usize) -> Table {
    Table::new(
        "1a. Kernel cost per packet: BPF_PROG_TEST_RUN",
        &format!(
            "ns per run as the kernel measures it (repeat {repeat}), {rounds} rounds, each round \
             running the empty program and then the egress program on the same crafted TCP SYN. \
             Policy: no selector, `log: none` (a test run has no socket, so only an unselected \
             policy governs it). Median (min–max) over rounds; the ratio and difference are per \
             round."
        ),
        &[
            "prefixes",
            "packet",
            "egress ns/run",
            "empty ns/run",
            "ratio",
            "egress − empty ns",
        ],
    )
}
