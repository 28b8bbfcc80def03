//! `egress`: the agent and its command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use egress_agent::{agent, cli};

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Agent(args) => run_agent(args),
        Command::Check(args) => cli::check::run(&args),
        Command::Explain(args) => cli::explain::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("egress: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(args: agent::AgentArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(args))?;
    Ok(ExitCode::SUCCESS)
}
