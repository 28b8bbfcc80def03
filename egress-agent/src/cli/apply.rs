//! `egress apply PATH...`: make the running agent enforce these policy files (root only),
//! or with `--dry-run` show what that would change. A rejected policy is printed and exits
//! non-zero; the policy in force stays.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::control::{
    ControlError,
    client::{SocketArgs, call},
    protocol::{Applied, Method},
};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Policy files or directories, read by the agent (relative paths are taken from here).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Validate and compile in full and print the diff (rules added, removed, changed)
    /// without applying.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print the agent's answer as one JSON object (`{"ok": false, "error": ...}` when the
    /// policy is rejected).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let ApplyArgs {
        paths,
        dry_run,
        socket,
        json,
    } = args;
    let paths = paths
        .iter()
        .map(|path| {
            std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let method = Method::Apply {
        paths,
        dry_run: *dry_run,
    };
    let mut out = std::io::stdout().lock();
    match call(&socket.socket, method) {
        Ok(value) if *json => {
            writeln!(out, "{}", serde_json::json!({"ok": true, "result": value}))?;
        }
        Ok(value) => write_text(&mut out, &serde_json::from_value(value)?)?,
        Err(ControlError::Agent(error)) if *json => {
            writeln!(out, "{}", serde_json::json!({"ok": false, "error": error}))?;
            return Ok(ExitCode::FAILURE);
        }
        Err(err) => return Err(err.into()),
    }
    Ok(ExitCode::SUCCESS)
}

fn write_text(out: &mut dyn Write, applied: &Applied) -> std::io::Result<()> {
    let Applied {
        dry_run,
        generation,
        diff,
    } = applied;
    if *dry_run {
        writeln!(
            out,
            "dry run: nothing applied; generation {generation} stays in force"
        )?;
    } else {
        writeln!(out, "applied: generation {generation} is in force")?;
    }
    if diff.is_empty() {
        return writeln!(out, "no change");
    }
    let lists = [
        ("+ policy", &diff.policies_added),
        ("- policy", &diff.policies_removed),
        ("~ policy", &diff.policies_changed),
        ("+ rule  ", &diff.rules_added),
        ("- rule  ", &diff.rules_removed),
        ("~ rule  ", &diff.rules_changed),
    ];
    for (label, names) in lists {
        for name in names {
            writeln!(out, "{label} {name}")?;
        }
    }
    Ok(())
}
