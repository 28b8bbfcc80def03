//! `egress rules`: every compiled rule in force with its hit counters, from the kernel's
//! per-CPU counters, through the control socket.

use std::{io::Write, process::ExitCode};

use crate::control::{
    client::{SocketArgs, call},
    protocol::{Method, Rules},
};

#[derive(Debug, clap::Args)]
pub struct RulesArgs {
    /// Only the rules of this policy.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print the agent's answer as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &RulesArgs) -> anyhow::Result<ExitCode> {
    let RulesArgs {
        policy,
        socket,
        json,
    } = args;
    let value = call(
        &socket.socket,
        Method::Rules {
            policy: policy.clone(),
        },
    )?;
    let mut out = std::io::stdout().lock();
    if *json {
        writeln!(out, "{value}")?;
    } else {
        write_text(&mut out, &serde_json::from_value(value)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_text(out: &mut dyn Write, rules: &Rules) -> std::io::Result<()> {
    writeln!(out, "generation {}", rules.generation)?;
    writeln!(
        out,
        "{:>5}  {:<40} {:<6} {:<7} {:>10} {:>10} {:>10} {:>10}  LAST HIT",
        "ID", "POLICY/RULE", "ACTION", "MODE", "CONN OK", "CONN DENY", "PKT OK", "PKT DENY"
    )?;
    for rule in &rules.rules {
        writeln!(
            out,
            "{:>5}  {:<40} {:<6} {:<7} {:>10} {:>10} {:>10} {:>10}  {}",
            rule.id,
            format!("{}/{}", rule.policy, rule.rule),
            rule.action,
            rule.mode,
            rule.connections_allowed,
            rule.connections_denied,
            rule.packets_allowed,
            rule.packets_denied,
            rule.last_hit.as_deref().unwrap_or("never"),
        )?;
    }
    Ok(())
}
