//! `egress`: the agent and its command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use egress_agent::{agent, cli, config};

#[derive(Debug, Parser)]
#[command(
    name = "egress",
    version,
    about = "eBPF egress enforcer: opt out of outbound connections by policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: load the kernel program, enforce the policy, write the audit log.
    Agent(agent::AgentArgs),
    /// Validate and compile policy files offline.
    Check(cli::check::CheckArgs),
    /// Explain the verdict for one destination from one workload.
    Explain(cli::explain::ExplainArgs),
    /// Show the audit log: one line per decision, or the JSON records.
    Events(cli::events::EventsArgs),
    /// Remove every program and map the agent pinned: enforcement stops.
    Uninstall(cli::uninstall::UninstallArgs),
    /// Show what the running agent enforces: version, generation, policies, maps, events.
    Status(cli::status::StatusArgs),
    /// List every rule in force with its hit counters.
    Rules(cli::rules::RulesArgs),
    /// Make the running agent enforce policy files (root), or show the diff (--dry-run).
    Apply(cli::apply::ApplyArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // aya warns, with a page of BTF dump, that the kernel refuses the object's
                // own BTF (rustc's enum unions): expected, and nothing needs it
                // (docs/architecture.md, Names). RUST_LOG=aya=warn shows it again.
                tracing_subscriber::EnvFilter::new("info,aya::bpf=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cli { command } = Cli::parse();
    let result = match command {
        // Parsed again with the configuration file under the flags (see `config`).
        Command::Agent(_) => run_agent(),
        Command::Check(args) => cli::check::run(&args),
        Command::Explain(args) => cli::explain::run(&args),
        Command::Events(args) => cli::events::run(&args),
        Command::Uninstall(args) => cli::uninstall::run(&args),
        Command::Status(args) => cli::status::run(&args),
        Command::Rules(args) => cli::rules::run(&args),
        Command::Apply(args) => cli::apply::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("egress: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent() -> anyhow::Result<ExitCode> {
    // `egress agent FLAGS...`: the subcommand is the first argument (`egress` has no global
    // flags), so the agent's flags are everything after it.
    let args = config::agent_args(std::env::args_os().skip(2).collect())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(args))?;
    Ok(ExitCode::SUCCESS)
}
