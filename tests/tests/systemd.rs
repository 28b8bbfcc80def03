//! `packaging/systemd/egress.service` passes `systemd-analyze verify` without a single
//! warning, and keeps the properties operations rely on (docs/operations.md); the agent
//! speaks the notify protocol the unit's `Type=notify` expects.

use std::{
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use egress_tests::{
    ProcessGuard,
    agent::{egress_bin, fresh_bpffs_dir, root_egress_programs},
    process::run_bounded,
    serial,
};

const UNIT: &str = include_str!("../../packaging/systemd/egress.service");

/// The unit's `Key=value` lines of `[Service]`.
fn service_settings() -> Vec<(&'static str, &'static str)> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            out.push((key, value));
        }
    }
    out
}

#[test]
fn the_unit_verifies_without_warnings() {
    let bin = egress_bin().expect("egress binary");
    assert!(bin.exists(), "{} must be built first", bin.display());
    let dir = tempfile::tempdir().expect("temp dir");
    // The unit names the installed path; the copy names the binary under test, which exists.
    let unit = UNIT.replace("/usr/bin/egress", &bin.display().to_string());
    assert_ne!(unit, UNIT, "ExecStart no longer names /usr/bin/egress");
    let path = dir.path().join("egress.service");
    fs::write(&path, unit).expect("write the unit");
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify").arg(&path);
    let out = run_bounded(
        &mut verify,
        "systemd-analyze verify",
        Duration::from_secs(60),
    )
    .expect("systemd-analyze runs (systemd is installed)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stderr.trim().is_empty() && stdout.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{stdout}{stderr}",
        Path::new(&path).display(),
        out.status
    );
}

#[test]
fn the_unit_notifies_reloads_restarts_and_is_hardened() {
    let settings = service_settings();
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(get("Type"), ["notify"]);
    assert_eq!(get("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(get("Restart"), ["on-failure"]);
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    assert_eq!(get("ProtectSystem"), ["strict"]);
    let mut caps: Vec<&str> = get("CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    caps.sort_unstable();
    assert_eq!(caps, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
    assert!(
        get("ReadWritePaths")
            .iter()
            .any(|v| v.contains("/sys/fs/bpf"))
    );
    assert_eq!(
        get("RuntimeDirectory"),
        ["egress"],
        "the control socket's directory"
    );
    assert_eq!(
        get("LogsDirectory"),
        ["egress"],
        "the audit log's directory"
    );
}

/// Removes what an agent pinned under its directory, on success and on panic.
struct Unpin {
    bpffs: PathBuf,
}

impl Drop for Unpin {
    fn drop(&mut self) {
        if let Ok(bin) = egress_bin() {
            let mut uninstall = Command::new(bin);
            uninstall.arg("uninstall").arg("--bpffs").arg(&self.bpffs);
            if let Err(e) = run_bounded(&mut uninstall, "egress uninstall", Duration::from_secs(10))
            {
                eprintln!("egress-tests: egress uninstall: {e}");
            }
        }
    }
}

#[test]
fn the_agent_notifies_ready_after_enforcing_then_reloads_and_stops() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let notify = UnixDatagram::bind(dir.path().join("notify")).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let receive = || {
        let mut buffer = [0u8; 4096];
        let n = notify.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    let unpin = Unpin {
        bpffs: fresh_bpffs_dir(),
    };
    let mut cmd = Command::new(egress_bin().expect("egress binary"));
    cmd.arg("agent")
        .arg("--bpffs")
        .arg(&unpin.bpffs)
        .arg("--on-exit")
        .arg("detach")
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .arg("--control-socket")
        .arg(dir.path().join("egress.sock"))
        .env("NOTIFY_SOCKET", dir.path().join("notify"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let before = root_egress_programs().expect("bpftool works");
    let mut agent = ProcessGuard::spawn(&mut cmd, "egress agent").expect("spawn the agent");
    let ready = receive();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS=enforcing generation 1"), "{ready}");
    // The programs are attached by the time READY=1 arrives: a link is pinned only once
    // its program is attached (the version directory exists before that), and the cgroup
    // root carries egress programs it did not carry before the agent started.
    let versions: Vec<PathBuf> = fs::read_dir(&unpin.bpffs)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    let [version] = versions.as_slice() else {
        panic!(
            "one pinned program version under {}: {versions:?}",
            unpin.bpffs.display()
        );
    };
    for program in egress_agent::datapath::PROGRAMS {
        let link = version.join("links").join(program);
        assert!(link.exists(), "{} is not pinned at READY=1", link.display());
    }
    let attached = root_egress_programs().expect("bpftool works");
    assert!(
        !attached.is_subset(&before),
        "no new egress program on the cgroup2 root at READY=1: before {before:?}, now {attached:?}"
    );
    let pid = libc::pid_t::try_from(agent.id()).expect("pid");
    // SAFETY: signals the agent this test started, which has not been reaped.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloaded = receive();
    assert!(
        reloaded.contains("STATUS=enforcing generation 2"),
        "{reloaded}"
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(receive().lines().any(|l| l == "STOPPING=1"));
    let status = agent
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("the agent stops on SIGTERM");
    assert!(status.success(), "{status}");
}
