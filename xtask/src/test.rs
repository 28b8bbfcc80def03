//! `cargo xtask test`: setup, build, unit tests, then the root-only integration tests.

use std::{ffi::OsString, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

/// Prefixes of the network namespaces and cgroups the integration test fixtures create.
const NETNS_PREFIX: &str = "egr-";
const CGROUP_PREFIX: &str = "egress-test-";
/// Prefixes of the bpffs pin directories of test and benchmark agents, under [`BPFFS`].
const PIN_PREFIXES: [&str; 2] = ["egress-test-", "egress-bench-"];
const BPFFS: &str = "/sys/fs/bpf";

pub fn run(extra: &[OsString]) -> Result<()> {
    setup::run()?;

    util::section("check privileges");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "the integration tests load eBPF programs and create network namespaces and cgroups: \
             run `cargo xtask test` as root (euid is {euid}); they never pass by skipping"
        );
    }
    println!("running as root");

    let root = util::workspace_root()?;
    let cgroup_root = cgroup2_root()?;
    println!("cgroup2 mounted at {}", cgroup_root.display());

    util::section("remove leftovers of earlier runs");
    let stale = leftovers(&cgroup_root)?;
    if stale.is_empty() {
        println!("none");
    }
    for item in &stale {
        println!("removing stale {item}");
        remove(item, &cgroup_root);
    }

    util::section("build (workspace binaries, including the eBPF program)");
    util::run(util::cargo().current_dir(&root).args([
        "build",
        "--workspace",
        "--exclude",
        "egress-ebpf",
        "--bins",
    ]))?;
    let egress_bin = root.join("target/debug/egress");
    if !egress_bin.is_file() {
        bail!("the build produced no {}", egress_bin.display());
    }

    util::section("unit tests");
    util::run(
        util::cargo()
            .current_dir(&root)
            .env("EGRESS_BIN", &egress_bin)
            .args([
                "test",
                "--workspace",
                "--exclude",
                "egress-ebpf",
                "--exclude",
                "egress-tests",
            ]),
    )?;

    util::section("integration tests (egress-tests, serial)");
    let result = util::run(
        util::cargo()
            .current_dir(&root)
            .env("EGRESS_BIN", &egress_bin)
            .args(["test", "-p", "egress-tests", "--", "--test-threads=1"])
            .args(extra),
    );

    check_leftovers("the integration tests", &cgroup_root, result)?;

    // The issue's `--quick` mode: the whole harness once, with tiny sizes and no timing
    // asserted, so that a change that breaks a measure is caught here, not at the next run.
    util::section("benchmark harness (`cargo xtask bench --quick`, no timings asserted)");
    let result = crate::bench::run(&crate::bench::BenchArgs::quick());
    check_leftovers("the benchmark harness", &cgroup_root, result)?;
    util::section("all tests passed");
    Ok(())
}

/// Removes (and reports) what `what` left behind; fails if it left anything or `result`
/// is an error.
fn check_leftovers(what: &str, cgroup_root: &Path, result: Result<()>) -> Result<()> {
    util::section(&format!("check that {what} left nothing behind"));
    let left = leftovers(cgroup_root)?;
    for item in &left {
        println!("leaked: {item}");
        remove(item, cgroup_root);
    }
    result?;
    if !left.is_empty() {
        bail!("{what} leaked {} namespaces, cgroups or pins", left.len());
    }
    println!("nothing leaked");
    Ok(())
}

/// The mount point of the cgroup2 filesystem, from /proc/self/mountinfo.
fn cgroup2_root() -> Result<std::path::PathBuf> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mount_point) = left.split_whitespace().nth(4)
        {
            return Ok(mount_point.into());
        }
    }
    bail!("no cgroup2 filesystem is mounted")
}

/// A leftover fixture object: a network namespace name or a cgroup directory name.
enum Leftover {
    Netns(String),
    Cgroup(String),
    /// A pin directory: its links keep programs attached at the cgroup root.
    Pins(String),
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Netns(n) => write!(f, "network namespace {n}"),
            Self::Cgroup(c) => write!(f, "cgroup {c}"),
            Self::Pins(p) => write!(f, "bpffs pins {BPFFS}/{p}"),
        }
    }
}

fn leftovers(cgroup_root: &Path) -> Result<Vec<Leftover>> {
    let mut found = Vec::new();
    let netns = util::stdout(Command::new("ip").args(["netns", "list"]))?;
    for line in netns.lines() {
        if let Some(name) = line.split_whitespace().next()
            && name.starts_with(NETNS_PREFIX)
        {
            found.push(Leftover::Netns(name.to_owned()));
        }
    }
    for entry in fs::read_dir(cgroup_root).context("listing the cgroup2 root")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(CGROUP_PREFIX) {
            found.push(Leftover::Cgroup(name));
        }
    }
    // bpffs may not be mounted yet on a fresh machine: then nothing can be pinned there.
    if let Ok(entries) = fs::read_dir(BPFFS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if PIN_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
                found.push(Leftover::Pins(name));
            }
        }
    }
    Ok(found)
}

/// Best-effort removal; failures are printed, the caller reports the leak itself.
fn remove(item: &Leftover, cgroup_root: &Path) {
    let result = match item {
        Leftover::Netns(name) => util::run(Command::new("ip").args(["netns", "del", name])),
        Leftover::Cgroup(name) => remove_cgroup(&cgroup_root.join(name)),
        // Unlinking a link pin detaches its program once nothing else holds it.
        Leftover::Pins(name) => fs::remove_dir_all(Path::new(BPFFS).join(name))
            .with_context(|| format!("removing {BPFFS}/{name}")),
    };
    if let Err(e) = result {
        println!("could not remove {item}: {e:#}");
    }
}

fn remove_cgroup(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup(&entry.path())?;
        }
    }
    // Every process in a test cgroup was started by the tests: cgroup.kill ends them all.
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    fs::remove_dir(dir).with_context(|| format!("rmdir {}", dir.display()))
}
