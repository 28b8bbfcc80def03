//! `cargo xtask`: developer and CI tasks for the egress workspace.

mod bench;
mod setup;
mod test;
mod util;

use std::ffi::OsString;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Developer tasks for egress")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a fresh Debian machine lacks: packages, rust-src for nightly, bpf-linker.
    Setup,
    /// Set up, build, then run every unit and integration test (needs root).
    Test {
        /// Extra arguments passed to the integration test harness (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, then measure kernel cost, throughput, connection rate, apply time and memory
    /// in test namespaces, and write docs/benchmarks.md (needs root).
    Bench(bench::BenchArgs),
    /// Set up, then run the agent in release mode with the default policy.
    Run {
        /// Extra arguments passed to `egress agent`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::Test { args } => test::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Run { args } => run_agent(&args),
    }
}

fn run_agent(args: &[OsString]) -> Result<()> {
    setup::run()?;
    util::section("run the agent (release)");
    let root = util::workspace_root()?;
    let mut cmd = util::cargo();
    cmd.current_dir(&root).args([
        "run",
        "--release",
        "-p",
        "egress-agent",
        "--bin",
        "egress",
        "--",
        // No --policy: the agent runs on its embedded copy of policies/default.yaml.
        "agent",
    ]);
    cmd.args(args);
    util::run(&mut cmd)
}
