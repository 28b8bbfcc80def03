//! `egress status`: what the running agent enforces, from its control socket.

use std::{io::Write, process::ExitCode};

use crate::control::{
    client::{SocketArgs, call},
    protocol::{Method, Status},
};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print the agent's answer as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let StatusArgs { socket, json } = args;
    let value = call(&socket.socket, Method::Status)?;
    let mut out = std::io::stdout().lock();
    if *json {
        writeln!(out, "{value}")?;
    } else {
        write_text(&mut out, &serde_json::from_value(value)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_text(out: &mut dyn Write, status: &Status) -> std::io::Result<()> {
    let Status {
        agent_version,
        program_version,
        pid,
        uptime_seconds,
        generation,
        sha256,
        sources,
        policies,
        attach,
        maps,
        events,
        reloads,
        dns,
    } = status;
    let uptime = humantime::format_duration(std::time::Duration::from_secs(*uptime_seconds));
    writeln!(
        out,
        "agent:      egress {agent_version} (program {program_version}), pid {pid}, up {uptime}"
    )?;
    writeln!(out, "generation: {generation} (sha256 {sha256})")?;
    writeln!(out, "sources:    {}", sources.join(", "))?;
    writeln!(
        out,
        "attached:   {} ({}, pinned under {}): {}",
        attach.cgroup,
        attach.attachment,
        attach.bpffs,
        attach.programs.join(", ")
    )?;
    writeln!(out, "policies:")?;
    for policy in policies {
        writeln!(
            out,
            "  {:<32} {:<8} {} rules",
            policy.name, policy.mode, policy.rules
        )?;
    }
    writeln!(out, "maps:")?;
    for map in maps {
        writeln!(
            out,
            "  {:<20} {:>9} / {:<9} entries",
            map.name, map.entries, map.capacity
        )?;
    }
    writeln!(
        out,
        "events:     {} written, {} lost",
        events.written, events.lost
    )?;
    writeln!(
        out,
        "reloads:    {} applied, {} rejected",
        reloads.applied, reloads.rejected
    )?;
    writeln!(
        out,
        "dns:        {} answers read, {} dropped unread, {} addresses learned ({} of {} entries, {} evicted)",
        dns.answers,
        dns.dropped,
        dns.learned,
        dns.learned_entries,
        dns.learned_capacity,
        dns.learned_evicted
    )
}
