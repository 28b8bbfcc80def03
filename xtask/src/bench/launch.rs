//! Without the `bench` feature: install what is missing, build the release agent (the agent
//! measures run the real binary), then run this command again as a release build with the
//! feature, passing the arguments on.

use anyhow::{Result, bail};

use super::BenchArgs;
use crate::{setup, util};

#[cfg_attr(
    feature = "bench",
    expect(dead_code, reason = "only the launcher build uses it")
)]
pub fn relaunch(args: &BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "the benchmarks load eBPF programs and create network namespaces and cgroups: run \
             `cargo xtask bench` as root (euid is {euid})"
        );
    }
    setup::run()?;
    let root = util::workspace_root()?;
    util::section("build the release agent");
    util::run(util::cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "egress-agent",
        "--bin",
        "egress",
    ]))?;
    util::section("benchmarks");
    let mut cmd = util::cargo();
    cmd.current_dir(&root).args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "xtask",
        "--features",
        "bench",
        "--",
        "bench",
    ]);
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(output) = &args.output {
        cmd.arg("--output").arg(output);
    }
    if let Some(only) = args.only {
        cmd.args(["--only", &format!("{only:?}").to_lowercase()]);
    }
    util::run(&mut cmd)
}
