//! The agent under test, and queries about what it attached.

use std::{
    collections::BTreeSet,
    env, fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use crate::{
    cgroup::cgroup2_root,
    error::{FixtureError, IoContext as _, Result, check_output},
    process::{run_bounded, sibling_of_target_dir},
};

/// The line substring the agent logs once enforcement is in place.
pub const READY_MARKER: &str = "enforcing policy";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of agent output kept for messages.
const MAX_OUTPUT: usize = 1 << 20;

/// Path of the agent binary: `$EGRESS_BIN`, else `egress` next to the test executable.
pub fn egress_bin() -> Result<PathBuf> {
    match env::var_os("EGRESS_BIN") {
        Some(path) => Ok(path.into()),
        None => sibling_of_target_dir("egress"),
    }
}

/// A running `egress agent`; stopped with SIGTERM (then SIGKILL after 5 s) on drop.
pub struct AgentGuard {
    child: Option<Child>,
    output: Arc<Mutex<String>>,
    dir: TempDir,
    bin: PathBuf,
    /// This agent's own bpffs pin directory, removed (with `egress uninstall`) on drop so
    /// that nothing it pinned outlives the test, even after a SIGKILL.
    bpffs: PathBuf,
}

/// How a test agent runs, beyond its policy.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// The bpffs pin directory (default: a fresh one per agent). Agents that share one adopt
    /// each other's enforcement; every guard removes it on drop.
    pub bpffs: Option<PathBuf>,
    /// `--on-exit keep` instead of `detach`.
    pub keep_on_exit: bool,
    /// The audit log (default: one in the guard's temporary directory).
    pub audit_log: Option<PathBuf>,
    /// More arguments for `egress agent`.
    pub extra_args: Vec<String>,
}

/// A pin directory of its own for each agent (or group of agents) a test starts.
pub fn fresh_bpffs_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(format!(
        "/sys/fs/bpf/egress-test-{}-{n}",
        std::process::id()
    ))
}

fn collect(pipe: Option<impl std::io::Read + Send + 'static>, output: &Arc<Mutex<String>>) {
    if let Some(pipe) = pipe {
        let output = Arc::clone(output);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut out = output.lock().unwrap_or_else(PoisonError::into_inner);
                // The start-up lines are what matter (the ready marker, errors); an agent
                // under load for minutes would otherwise grow this without bound.
                if out.len() < MAX_OUTPUT {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        });
    }
}

impl AgentGuard {
    /// Writes `policy_yaml` to a temporary file and starts the agent with it.
    ///
    /// # Panics
    /// When the agent cannot start or does not log `enforcing policy` within 30 s: the
    /// panic message carries its whole output. A test never skips because BPF is missing.
    pub fn start(policy_yaml: &str) -> Self {
        let bin = egress_bin().unwrap_or_else(|e| panic!("{e}"));
        Self::start_program(&bin, policy_yaml)
    }

    /// As [`AgentGuard::start`], with another agent binary (e.g. a stand-in).
    ///
    /// # Panics
    /// As [`AgentGuard::start`].
    pub fn start_program(bin: &Path, policy_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        let policy = dir.path().join("policy.yaml");
        fs::write(&policy, policy_yaml).unwrap_or_else(|e| panic!("writing the policy: {e}"));
        Self::start_in(bin, dir, &policy, &AgentOptions::default())
    }

    /// Starts the agent with an existing policy file.
    ///
    /// # Panics
    /// As [`AgentGuard::start`].
    pub fn start_with_file(policy: &Path) -> Self {
        let bin = egress_bin().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        Self::start_in(&bin, dir, policy, &AgentOptions::default())
    }

    /// Starts the agent with an existing policy file and `options`.
    ///
    /// # Panics
    /// As [`AgentGuard::start`].
    pub fn start_with_options(policy: &Path, options: &AgentOptions) -> Self {
        let bin = egress_bin().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        Self::start_in(&bin, dir, policy, options)
    }

    /// Starts `bin` with `policy_yaml` and `options`, and waits until it enforces; for
    /// callers that report failures rather than panic (the benchmarks).
    ///
    /// # Errors
    /// When the agent cannot be started or does not log `enforcing policy` in time; the
    /// error carries its whole output.
    pub fn try_start(bin: &Path, policy_yaml: &str, options: &AgentOptions) -> Result<Self> {
        let dir = tempfile::tempdir().ctx(|| "creating a temp dir".to_owned())?;
        let policy = dir.path().join("policy.yaml");
        fs::write(&policy, policy_yaml).ctx(|| "writing the policy".to_owned())?;
        Self::launch(bin, dir, &policy, options)
    }

    fn start_in(bin: &Path, dir: TempDir, policy: &Path, options: &AgentOptions) -> Self {
        Self::launch(bin, dir, policy, options).unwrap_or_else(|err| {
            panic!("{err}; eBPF could not be put in place and this test fails (it never skips)")
        })
    }

    fn launch(bin: &Path, dir: TempDir, policy: &Path, options: &AgentOptions) -> Result<Self> {
        let AgentOptions {
            bpffs,
            keep_on_exit,
            audit_log,
            extra_args,
        } = options;
        let audit = audit_log
            .clone()
            .unwrap_or_else(|| dir.path().join("audit.jsonl"));
        let bpffs = bpffs.clone().unwrap_or_else(fresh_bpffs_dir);
        let mut cmd = Command::new(bin);
        cmd.arg("agent");
        // Kubernetes mode takes its policy from the API server and refuses policy files.
        if !extra_args.iter().any(|arg| arg == "--kubernetes") {
            cmd.arg("--policy").arg(policy);
        }
        cmd.arg("--audit-log")
            .arg(&audit)
            .arg("--bpffs")
            .arg(&bpffs)
            .arg("--on-exit")
            .arg(if *keep_on_exit { "keep" } else { "detach" })
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Every agent gets a control socket of its own unless the test names one, so that
        // test agents never meet each other (or a real agent) on /run/egress/egress.sock.
        if !extra_args.iter().any(|arg| arg == "--control-socket") {
            cmd.arg("--control-socket")
                .arg(dir.path().join("egress.sock"));
        }
        if env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().ctx(|| format!("starting {}", bin.display()))?;
        let output = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take(), &output);
        collect(child.stderr.take(), &output);
        let mut guard = Self {
            child: Some(child),
            output,
            dir,
            bin: bin.to_owned(),
            bpffs,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if guard.output().contains(READY_MARKER) {
                return Ok(guard);
            }
            let exited = guard
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten();
            if exited.is_some() || Instant::now() >= deadline {
                thread::sleep(Duration::from_millis(200));
                let why = exited.map_or_else(
                    || format!("did not log `{READY_MARKER}` within {START_TIMEOUT:?}"),
                    |s| format!("exited ({s}) before enforcing"),
                );
                let output = guard.output();
                drop(guard);
                return Err(FixtureError::Other(format!(
                    "the agent {why}\n--- agent output ---\n{output}--- end ---"
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the agent printed so far (stderr and stdout, line by line).
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The agent's PID while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's control socket (its own, unless the options named another).
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("egress.sock")
    }

    /// The audit log path.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// Every complete JSON line of the audit log so far (a missing file means none).
    pub fn audit_records(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.audit_path()).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits up to `timeout` for an audit record matching `pred`.
    pub fn wait_for_record(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.audit_records().into_iter().find(|r| pred(r)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent (SIGTERM, SIGKILL after 5 s) and returns how it exited.
    /// Kills the agent with SIGKILL, as a crash or the OOM killer would, and reaps it.
    ///
    /// # Errors
    /// When the agent was already stopped or cannot be reaped.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(FixtureError::Other(
                "the agent was already stopped".to_owned(),
            ));
        };
        child.kill().ctx(|| "killing the agent".to_owned())?;
        child.wait().ctx(|| "reaping the agent".to_owned())
    }

    /// The bpffs directory the agent pins into.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(FixtureError::Other(
                "the agent was already stopped".to_owned(),
            ));
        };
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|e| FixtureError::Other(format!("agent pid: {e}")))?;
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child
                .try_wait()
                .ctx(|| "waiting for the agent".to_owned())?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "egress-tests: the agent ignored SIGTERM for {STOP_TIMEOUT:?}; killing it"
                );
                child.kill().ctx(|| "killing the agent".to_owned())?;
                return child.wait().ctx(|| "reaping the agent".to_owned());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("egress-tests: stopping the agent: {e}");
        }
        let mut uninstall = Command::new(&self.bin);
        uninstall.arg("uninstall").arg("--bpffs").arg(&self.bpffs);
        match run_bounded(&mut uninstall, "egress uninstall", Duration::from_secs(10)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "egress-tests: egress uninstall --bpffs {} failed: {}",
                self.bpffs.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("egress-tests: egress uninstall: {e}"),
        }
    }
}

/// IDs of the programs attached to the cgroup2 root at an egress hook, per
/// `bpftool -j cgroup show <root>`.
pub fn root_egress_programs() -> Result<BTreeSet<u64>> {
    let root = cgroup2_root()?;
    let mut cmd = Command::new("bpftool");
    cmd.arg("-j").arg("cgroup").arg("show").arg(&root);
    let out = run_bounded(&mut cmd, "bpftool", Duration::from_secs(10))?;
    let text = check_output("bpftool -j cgroup show", &out)?;
    parse_egress_programs(&text)
}

fn parse_egress_programs(json: &str) -> Result<BTreeSet<u64>> {
    if json.trim().is_empty() {
        return Ok(BTreeSet::new());
    }
    let value: Value = serde_json::from_str(json)
        .map_err(|e| FixtureError::Other(format!("bpftool printed bad JSON ({e}): {json}")))?;
    let progs = value.as_array().cloned().unwrap_or_default();
    Ok(progs
        .iter()
        .filter(|p| {
            p.get("attach_type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.contains("egress"))
        })
        .filter_map(|p| p.get("id").and_then(Value::as_u64))
        .collect())
}

/// `bpftool cgroup tree <cgroup2 root>`, as text, for messages.
pub fn cgroup_tree() -> Result<String> {
    let root = cgroup2_root()?;
    let mut cmd = Command::new("bpftool");
    cmd.arg("cgroup").arg("tree").arg(&root);
    let out = run_bounded(&mut cmd, "bpftool", Duration::from_secs(10))?;
    check_output("bpftool cgroup tree", &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftool_json() {
        let json = r#"[{"id":7,"attach_type":"cgroup_inet_egress","attach_flags":"multi","name":"egress"},
                      {"id":8,"attach_type":"cgroup_inet_ingress","attach_flags":"","name":"x"}]"#;
        let ids = parse_egress_programs(json).expect("parses");
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![7]);
        assert!(parse_egress_programs("").expect("empty").is_empty());
    }
}
