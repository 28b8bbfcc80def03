//! The release agent binary as the benchmarks run it: its own pin directory
//! (`/sys/fs/bpf/egress-bench-<pid>`), `--on-exit detach`, its own control socket and audit
//! log (never rotated) in a temporary directory. Dropping the guard stops it (SIGTERM, then
//! SIGKILL) and removes its pins with `egress uninstall --bpffs DIR`, on error too.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use egress_agent::control::{
    client::call_as,
    protocol::{EventStats, Method, Status},
};
use egress_tests::process::run_bounded;
use tempfile::TempDir;

const READY: &str = "enforcing policy";
const START_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(10);

pub struct BenchAgent {
    child: Option<Child>,
    output: Arc<Mutex<String>>,
    dir: TempDir,
    bin: PathBuf,
    bpffs: PathBuf,
}

fn collect(pipe: Option<impl std::io::Read + Send + 'static>, output: &Arc<Mutex<String>>) {
    if let Some(pipe) = pipe {
        let output = Arc::clone(output);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut out = output.lock().unwrap_or_else(PoisonError::into_inner);
                // Only the start-up lines matter (the ready marker, errors); the rest would
                // grow without bound under load.
                if out.len() < 1 << 20 {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        });
    }
}

impl BenchAgent {
    /// Starts `bin` with `policy_yaml` and waits until it enforces.
    pub fn start(bin: &Path, policy_yaml: &str) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating the agent's temp dir")?;
        let policy = dir.path().join("policy.yaml");
        fs::write(&policy, policy_yaml).context("writing the policy")?;
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/egress-bench-{}", std::process::id()));
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .arg("--policy")
            .arg(&policy)
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"))
            .args(["--audit-log-max-bytes", "0"])
            .arg("--bpffs")
            .arg(&bpffs)
            .args(["--on-exit", "detach"])
            .arg("--control-socket")
            .arg(dir.path().join("egress.sock"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let output = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take(), &output);
        collect(child.stderr.take(), &output);
        let mut agent = Self {
            child: Some(child),
            output,
            dir,
            bin: bin.to_owned(),
            bpffs,
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if agent.output().contains(READY) {
                return Ok(agent);
            }
            let exited = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten();
            if exited.is_some() || Instant::now() >= deadline {
                thread::sleep(Duration::from_millis(200));
                bail!(
                    "the agent {} before logging `{READY}`; its output:\n{}",
                    exited.map_or_else(|| "timed out".to_owned(), |s| format!("exited ({s})")),
                    agent.output()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("the agent is not running")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// Records written and kernel events lost, from `status` on the control socket.
    pub fn events(&self) -> Result<EventStats> {
        let status: Status = call_as(&self.dir.path().join("egress.sock"), Method::Status)
            .context("status over the control socket")?;
        Ok(status.events)
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: signals our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: the agent ignored SIGTERM for {STOP_LIMIT:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        self.stop();
        let mut uninstall = Command::new(&self.bin);
        uninstall.arg("uninstall").arg("--bpffs").arg(&self.bpffs);
        match run_bounded(&mut uninstall, "egress uninstall", Duration::from_secs(10)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "bench: egress uninstall --bpffs {} failed: {}",
                self.bpffs.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => eprintln!("bench: egress uninstall: {err}"),
        }
    }
}
