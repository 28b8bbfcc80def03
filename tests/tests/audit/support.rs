//! The audit tests' own fixtures: agents sharing one audit log, reading a log with its
//! rotated files, and helper runs whose PID the test knows.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use egress_agent::audit::LogFiles;
use egress_tests::{
    AgentGuard, Client,
    agent::{AgentOptions, egress_bin, fresh_bpffs_dir},
    helper_bin,
    process::{ProcessGuard, run_bounded},
};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The fixture's agent, with a chosen audit log (so that several runs can share one) and
/// extra flags; each run has its own bpffs pin directory and detaches on exit.
pub struct Agent {
    guard: AgentGuard,
}

impl Agent {
    /// Starts the agent and waits until it enforces.
    pub fn start(policy: &Path, log: &Path, extra: &[&str]) -> Self {
        let options = AgentOptions {
            audit_log: Some(log.to_owned()),
            extra_args: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            ..AgentOptions::default()
        };
        Self {
            guard: AgentGuard::start_with_options(policy, &options),
        }
    }

    /// Sends `signal` to the agent (the guard's child, not reaped while it runs).
    pub fn signal(&self, signal: i32) {
        let pid = self.guard.id().expect("the agent runs");
        let pid = libc::pid_t::try_from(pid).unwrap_or_else(|e| panic!("pid: {e}"));
        // SAFETY: signals our own child, which has not been reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Stops the agent cleanly (continued first, in case the test stopped it).
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGCONT);
        self.guard
            .stop()
            .unwrap_or_else(|e| panic!("stopping the agent: {e}\n{}", self.guard.output()))
    }

    /// Kills the agent (SIGKILL): an unclean stop.
    pub fn kill(mut self) -> ExitStatus {
        self.guard
            .kill()
            .unwrap_or_else(|e| panic!("killing the agent: {e}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) agent would ignore the guard's SIGTERM until killed.
        if self.guard.id().is_some() {
            self.signal(libc::SIGCONT);
        }
    }
}

/// Runs an agent expected to exit by itself (e.g. on a rejected policy), with a pin
/// directory of its own; returns its output and that directory.
pub fn run_agent_to_exit(policy: &Path, log: &Path) -> (Output, PathBuf) {
    let bpffs = fresh_bpffs_dir();
    let bin = egress_bin().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(bin);
    cmd.arg("agent")
        .arg("--policy")
        .arg(policy)
        .arg("--audit-log")
        .arg(log)
        .arg("--bpffs")
        .arg(&bpffs)
        .args(["--on-exit", "detach"]);
    let output =
        run_bounded(&mut cmd, "egress agent", START_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    (output, bpffs)
}

/// Every whole record of the log, rotated files first; a line that is not JSON (torn by a
/// crash) is skipped.
pub fn log_records(log: &Path) -> Vec<Value> {
    LogFiles::new(log)
        .oldest_first()
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect()
}

/// Waits up to `timeout` until `done(records)` holds; returns the records either way.
pub fn wait_records(log: &Path, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = log_records(log);
        if done(&records) || Instant::now() >= deadline {
            return records;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The `seq` of every record, asserting they count up by one from `first`.
pub fn assert_contiguous(records: &[Value], first: u64) {
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| r["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {r}")))
        .collect();
    let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seq is not contiguous");
}

/// Connection records of `cgroup` sent to `dst` (and `port`, when given) over `protocol`.
pub fn connections<'a>(
    records: &'a [Value],
    cgroup: &str,
    protocol: &str,
    dst: IpAddr,
    port: Option<u16>,
) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "connection" && r["direction"] == "egress")
        .filter(|r| r["cgroup"] == cgroup && r["protocol"] == protocol)
        .filter(|r| r["dst_ip"] == dst.to_string())
        .filter(|r| port.is_none_or(|port| r["dst_port"] == port))
        .collect()
}

/// Runs the helper in `client`'s placement; returns its PID, exit code and stdout.
pub fn helper_run(client: &Client, args: &[&str], limit: Duration) -> (u32, Option<i32>, String) {
    let helper = helper_bin().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = client
        .placement()
        .command(helper)
        .unwrap_or_else(|e| panic!("{e}"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard =
        ProcessGuard::spawn(&mut cmd, "egress-test-helper").unwrap_or_else(|e| panic!("{e}"));
    let pid = guard.id();
    let stdout = guard.child_mut().stdout.take();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = stdout {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        }
        text
    });
    let status = guard
        .wait_timeout(limit)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the helper {args:?} ran longer than {limit:?}"));
    drop(guard);
    (pid, status.code(), reader.join().unwrap_or_default())
}

/// A temporary directory holding a policy file and the audit log.
pub struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}")),
        }
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("log/audit.jsonl")
    }

    /// Writes `yaml` as the policy file and returns its path.
    pub fn policy(&self, yaml: &str) -> PathBuf {
        let path = self.dir.path().join("policy.yaml");
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("writing the policy: {e}"));
        path
    }
}
