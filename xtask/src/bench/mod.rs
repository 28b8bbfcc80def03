//! `cargo xtask bench`: kernel cost per packet, throughput, connection rate, policy apply
//! time and memory, event rate and agent memory, measured on this machine in test namespaces
//! and a test cgroup, each configuration paired with its baseline round by round. The
//! results go to docs/benchmarks.md (see that file for what each measure means).
//!
//! The measuring code links the agent library, whose build compiles the kernel program; so
//! it sits behind the `bench` feature, and the plain `xtask` (which must build on a fresh
//! machine before `setup` has installed the BPF toolchain) only sets up and re-runs itself
//! in release mode with that feature.

mod launch;

#[cfg(feature = "bench")]
mod agent;
#[cfg(feature = "bench")]
mod agent_proc;
#[cfg(feature = "bench")]
mod apply;
#[cfg(feature = "bench")]
mod dns;
#[cfg(feature = "bench")]
mod dns_worker;
#[cfg(feature = "bench")]
mod driver;
#[cfg(feature = "bench")]
mod empty_prog;
#[cfg(feature = "bench")]
mod env;
#[cfg(feature = "bench")]
mod events;
#[cfg(feature = "bench")]
mod kernel;
#[cfg(feature = "bench")]
mod loaded;
#[cfg(feature = "bench")]
mod policy;
#[cfg(feature = "bench")]
mod report;
#[cfg(feature = "bench")]
mod runtime;
#[cfg(feature = "bench")]
mod stats;
#[cfg(feature = "bench")]
mod traffic;
#[cfg(feature = "bench")]
mod udp_flood;
#[cfg(feature = "bench")]
mod workers;

use std::path::PathBuf;

use anyhow::Result;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Tiny rule counts and one short round: checks that the harness works; asserts no
    /// timings and writes target/bench-quick.md instead of docs/benchmarks.md.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the report.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Run only these measures (their block of the report is replaced, the rest kept).
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Internal: open short connections to ADDR for SECS seconds from THREADS threads (run
    /// inside the namespaces).
    #[arg(long, hide = true, num_args = 3, value_names = ["ADDR", "SECS", "THREADS"])]
    pub connect_worker: Option<Vec<String>>,
    /// Internal: send COUNT new UDP flows to ADDR at RATE flows/s (0: unpaced).
    #[arg(long, hide = true, num_args = 3, value_names = ["ADDR", "RATE", "COUNT"])]
    pub udp_worker: Option<Vec<String>>,
    /// Internal: accept and close connections on ADDR.
    #[arg(long, hide = true, value_name = "ADDR")]
    pub accept_worker: Option<String>,
    /// Internal: the DNS client of measures 7 and 8 (see bench/dns_worker.rs).
    #[arg(long, hide = true, num_args = 1.., allow_hyphen_values = true)]
    pub dns_worker: Option<Vec<String>>,
}

impl BenchArgs {
    /// `--quick`, writing to its default place.
    pub fn quick() -> Self {
        Self {
            quick: true,
            output: None,
            only: None,
            connect_worker: None,
            udp_worker: None,
            accept_worker: None,
            dns_worker: None,
        }
    }
}

/// Groups of measures `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// Kernel cost by test run and compile/apply (measures 1a, 4); writes
    /// target/bench-kernel.md unless `--output` says otherwise.
    Kernel,
    /// Hostname rules: DNS answer latency and learned-address capacity (measures 7, 8).
    Dns,
}

/// Runs the benchmarks (with the `bench` feature), or sets up and re-runs with it.
pub fn run(args: &BenchArgs) -> Result<()> {
    #[cfg(feature = "bench")]
    let result = driver::run(args);
    #[cfg(not(feature = "bench"))]
    let result = launch::relaunch(args);
    result
}
