//! `egress uninstall`: remove every program and map any version of the agent pinned or
//! attached, so that no enforcement is left behind. Stop the agent first: a running agent
//! holds its links open until it exits.

use std::{path::PathBuf, process::ExitCode};

use crate::datapath::pins;

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The bpffs directory the agent pinned into.
    #[arg(long, default_value = "/sys/fs/bpf/egress")]
    pub bpffs: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &UninstallArgs) -> anyhow::Result<ExitCode> {
    let UninstallArgs { bpffs, json } = args;
    let removed = pins::remove_all(bpffs)?;
    if *json {
        println!(
            "{}",
            serde_json::json!({ "bpffs": bpffs, "versions_removed": removed })
        );
    } else if removed == 0 {
        println!("nothing pinned under {}", bpffs.display());
    } else {
        println!(
            "removed {removed} pinned program version(s) under {}: enforcement is off",
            bpffs.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
