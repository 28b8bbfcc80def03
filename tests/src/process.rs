//! Processes: a guard that kills what we started, bounded runs, and commands that join a
//! network namespace, a cgroup and optionally another uid before exec.

use std::{
    env,
    ffi::OsStr,
    fs::{File, OpenOptions},
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::error::{FixtureError, IoContext as _, Result};

/// Name of the helper binary built from this crate (src/bin/egress-test-helper.rs).
const HELPER_NAME: &str = "egress-test-helper";

/// Path of the helper binary: `$EGRESS_TEST_HELPER`, else next to the test executable
/// (`target/debug/deps/<test>` → `target/debug/egress-test-helper`).
pub fn helper_bin() -> Result<PathBuf> {
    if let Some(path) = env::var_os("EGRESS_TEST_HELPER") {
        return Ok(path.into());
    }
    sibling_of_target_dir(HELPER_NAME)
}

/// Finds `name` in the directory above the current executable's directory, or in it.
pub(crate) fn sibling_of_target_dir(name: &str) -> Result<PathBuf> {
    let exe = env::current_exe().ctx(|| "locating the test executable".to_owned())?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            FixtureError::Other(format!(
                "cannot find {name} near {}; build the workspace first (`cargo xtask test`)",
                exe.display()
            ))
        })
}

/// A child process we started; killed (SIGKILL, by its PID) and reaped on drop.
#[derive(Debug)]
pub struct ProcessGuard {
    child: Child,
    name: String,
}

impl ProcessGuard {
    /// Spawns `cmd` and guards the child.
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Self> {
        let child = cmd.spawn().ctx(|| format!("spawning {name}"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    /// The child's PID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The guarded child, e.g. to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits at most `limit` for the child to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .ctx(|| format!("waiting for {}", self.name))?
            {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None))
            && let Err(e) = self.child.kill()
        {
            eprintln!("egress-tests: could not kill {}: {e}", self.name);
        }
        if let Err(e) = self.child.wait() {
            eprintln!("egress-tests: could not reap {}: {e}", self.name);
        }
    }
}

/// Reads a pipe to the end on a thread.
fn drain(pipe: Option<impl io::Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `cmd` to completion with captured output, killing it after `limit`.
pub fn run_bounded(cmd: &mut Command, name: &str, limit: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ProcessGuard::spawn(cmd, name)?;
    let stdout = drain(guard.child_mut().stdout.take());
    let stderr = drain(guard.child_mut().stderr.take());
    let status = guard.wait_timeout(limit)?;
    // Dropping the guard kills a child that overran, which closes the pipes.
    drop(guard);
    let join = |h: thread::JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
    let (stdout, stderr) = (join(stdout), join(stderr));
    let status = status.ok_or_else(|| {
        FixtureError::Other(format!(
            "{name} did not finish within {limit:?}; stderr: {}",
            String::from_utf8_lossy(&stderr)
        ))
    })?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Where a command runs: a network namespace, optionally a cgroup and a uid.
#[derive(Debug, Clone)]
pub struct Placement {
    netns: PathBuf,
    cgroup: Option<PathBuf>,
    uid: Option<u32>,
}

impl Placement {
    /// Runs in the network namespace bound at `netns` (e.g. /run/netns/NAME).
    pub fn new(netns: &Path) -> Self {
        Self {
            netns: netns.to_owned(),
            cgroup: None,
            uid: None,
        }
    }

    /// Also joins the cgroup directory `cgroup`.
    #[must_use]
    pub fn cgroup(mut self, cgroup: &Path) -> Self {
        self.cgroup = Some(cgroup.to_owned());
        self
    }

    /// Also switches to `uid` (and gid `uid`, no supplementary groups) after joining.
    #[must_use]
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// A command for `program` that, between fork and exec, joins the cgroup (writes "0",
    /// i.e. itself, to cgroup.procs), then the network namespace (setns), then drops to
    /// the uid. Files are opened here, before fork, so the child only makes system calls.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let netns: OwnedFd = File::open(&self.netns)
            .ctx(|| format!("opening {}", self.netns.display()))?
            .into();
        let procs: Option<OwnedFd> = match &self.cgroup {
            Some(dir) => {
                let file = dir.join("cgroup.procs");
                Some(
                    OpenOptions::new()
                        .write(true)
                        .open(&file)
                        .ctx(|| format!("opening {}", file.display()))?
                        .into(),
                )
            }
            None => None,
        };
        let uid = self.uid;
        let join = move || -> io::Result<()> {
            if let Some(procs) = &procs {
                // SAFETY: writes one byte from a static buffer to an fd we own.
                let n = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
                if n != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // SAFETY: setns on an fd we own.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(uid) = uid {
                // SAFETY: plain credential system calls, no memory is passed.
                let failed = unsafe {
                    libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                };
                if failed {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        let mut cmd = Command::new(program);
        cmd.current_dir("/");
        // SAFETY: the closure only makes async-signal-safe system calls on values prepared
        // before fork; it allocates nothing (io::Error::last_os_error does not allocate).
        unsafe {
            cmd.pre_exec(join);
        }
        Ok(cmd)
    }
}
