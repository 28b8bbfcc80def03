//! Small helpers shared by the xtask commands.

use std::{
    env,
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// Prints a visible section header.
pub fn section(title: &str) {
    println!("\n==== {title} ====");
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask manifest directory has no parent")
}

/// A `cargo` command using the same cargo that runs us.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let text = describe(cmd);
    println!("+ {text}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{text}`"))?;
    if !status.success() {
        bail!("`{text}` failed: {status}");
    }
    Ok(())
}

/// Runs a command capturing its output; a failure to start is an error, a non-zero exit is not.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let text = describe(cmd);
    cmd.output()
        .with_context(|| format!("failed to start `{text}`"))
}

/// Runs a command capturing stdout, failing on a non-zero exit.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let text = describe(cmd);
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{text}` failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds an executable on PATH, or in ~/.cargo/bin.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}
