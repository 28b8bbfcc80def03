//! Enforcement survives the agent (issue 5): with a probe sending to a denied address at
//! least every millisecond from a governed cgroup, the agent is killed with SIGKILL,
//! restarted (adopting its pinned programs and maps), replaced by another program version,
//! and sent 100 policy changes in a row; not one probe packet may reach the receiver, and
//! an allowed TCP connection opened at the start must stay open throughout. An invalid
//! policy is rejected and leaves the generation in force.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use egress_tests::{
    AgentGuard, CgroupGuard, ProcessGuard, Proto, Servers, TestNet,
    agent::{AgentOptions, fresh_bpffs_dir},
    process::Placement,
    serial,
};
use serde_json::Value;

const SURVIVAL_BIN: &str = env!("CARGO_BIN_EXE_egress-survival");
const PROBE_PORT: u16 = 9999;
const ECHO_PORT: u16 = 7000;
const RELOADS: u64 = 100;

fn policy(cgroup: &str, extra_port: u16) -> String {
    // Every variant denies the probe's destination and allows the held connection; the extra
    // rule changes from one reload to the next so that every reload is a real change.
    format!(
        "apiVersion: egress.dev/v1alpha1
kind: EgressPolicy
metadata: {{name: survival}}
spec:
  selector: {{cgroups: [\"{cgroup}\"]}}
  defaultAction: allow
  egress:
    - name: deny-probe
      action: deny
      to: [{{cidr: 203.0.113.0/24}}, {{cidr: \"2001:db8:2::/48\"}}]
    - name: churn
      action: deny
      to: [{{cidr: 192.0.2.128/25}}]
      protocol: tcp
      ports: [{extra_port}]
"
    )
}

fn spawn_in(
    placement: &Placement,
    args: &[&str],
    name: &str,
) -> (ProcessGuard, BufReader<std::process::ChildStdout>) {
    let mut cmd: Command = placement.command(SURVIVAL_BIN).expect("placed command");
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = ProcessGuard::spawn(&mut cmd, name).expect("spawn");
    let stdout = guard.child_mut().stdout.take().expect("stdout");
    (guard, BufReader::new(stdout))
}

fn expect_line(reader: &mut BufReader<std::process::ChildStdout>, want: &str) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read helper output");
    assert!(line.starts_with(want), "expected `{want}`, got `{line}`");
}

fn wait_generation(agent: &AgentGuard, action: &str, generation: u64) -> Value {
    agent
        .wait_for_record(Duration::from_secs(20), |record| {
            record["kind"] == "policy"
                && record["action"] == action
                && record["generation"].as_u64() == Some(generation)
        })
        .unwrap_or_else(|| {
            panic!(
                "no `{action}` policy record for generation {generation}; records: {:#?}\n{}",
                agent.audit_records(),
                agent.output()
            )
        })
}

fn sighup(agent: &AgentGuard) {
    let pid = agent.pid().expect("the agent runs");
    // SAFETY: signals the agent process we started and have not reaped.
    let rc = unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid"), libc::SIGHUP) };
    assert_eq!(rc, 0, "SIGHUP to the agent");
}

/// Removes a file when dropped: the stop signal for the helpers, also on panic.
struct StopFile(PathBuf);

impl Drop for StopFile {
    fn drop(&mut self) {
        let _ = fs::write(&self.0, b"stop");
    }
}

#[test]
fn enforcement_survives_kill_restart_upgrade_and_reloads() {
    let _serial = serial();
    let net = TestNet::new().expect("test network");
    let cgroup = CgroupGuard::new("survival").expect("test cgroup");
    let denied = SocketAddr::new(IpAddr::V4(TestNet::DENIED_V4), PROBE_PORT);
    let servers = Servers::start(&net.server, &[denied.ip()], &[], &[PROBE_PORT]).expect("servers");
    let work = tempfile::tempdir().expect("tempdir");
    let stop = StopFile(work.path().join("stop"));
    let client = Placement::new(net.client.path()).cgroup(cgroup.path());

    // Positive control: with no agent, the probe's datagrams do arrive.
    {
        let control_stop = work.path().join("control-stop");
        let (mut probe, mut out) = spawn_in(
            &client,
            &[
                "probe",
                &denied.to_string(),
                control_stop.to_str().expect("utf-8"),
            ],
            "control probe",
        );
        expect_line(&mut out, "probing");
        let arrived = servers.wait_count(Proto::Udp, denied, 1, Duration::from_secs(5)) > 0;
        fs::write(&control_stop, b"stop").expect("stop the control probe");
        let _ = probe.wait_timeout(Duration::from_secs(5));
        assert!(
            arrived,
            "the probe never reached the receiver without an agent: the test could not detect a leak"
        );
    }
    thread::sleep(Duration::from_millis(300));
    let baseline = servers.udp_count(denied);

    let policy_file = work.path().join("policy.yaml");
    let relative = cgroup.relative_path().to_owned();
    fs::write(&policy_file, policy(&relative, 1)).expect("write policy");
    let bpffs = fresh_bpffs_dir();
    let options = |extra: &[&str]| AgentOptions {
        bpffs: Some(bpffs.clone()),
        keep_on_exit: true,
        audit_log: None,
        extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
    };

    let mut first = AgentGuard::start_with_options(&policy_file, &options(&[]));
    wait_generation(&first, "applied", 1);

    // The held connection and the probe run through everything that follows.
    let echo_addr = SocketAddr::new(IpAddr::V4(TestNet::ALLOWED_V4), ECHO_PORT);
    let server_side = Placement::new(net.server.path());
    let (_echo, mut echo_out) = spawn_in(
        &server_side,
        &["echo", &echo_addr.to_string()],
        "echo server",
    );
    expect_line(&mut echo_out, "ready");
    let stop_path = stop.0.to_str().expect("utf-8").to_owned();
    let (mut hold, mut hold_out) = spawn_in(
        &client,
        &["hold", &echo_addr.to_string(), "20", &stop_path],
        "held connection",
    );
    expect_line(&mut hold_out, "connected");
    let (mut probe, mut probe_out) = spawn_in(
        &client,
        &["probe", &denied.to_string(), &stop_path],
        "probe",
    );
    expect_line(&mut probe_out, "probing");
    thread::sleep(Duration::from_millis(500));

    // 1. SIGKILL: the pinned programs go on enforcing with nobody watching.
    first.kill().expect("kill -9 the agent");
    thread::sleep(Duration::from_secs(1));

    // 2. Restart, same version: adopts the pins with no gap.
    let mut second = AgentGuard::start_with_options(&policy_file, &options(&[]));
    assert!(
        second.output().contains("Adopted"),
        "the restarted agent did not adopt: {}",
        second.output()
    );
    wait_generation(&second, "applied", 2);
    second.stop().expect("graceful stop, keeping enforcement");
    thread::sleep(Duration::from_millis(500));

    // 3. Another program version: attaches beside the old one, then removes it.
    let third = AgentGuard::start_with_options(
        &policy_file,
        &options(&["--program-version", "survival-upgrade"]),
    );
    assert!(
        third.output().contains("Fresh"),
        "the upgraded agent did not attach its own programs: {}",
        third.output()
    );
    wait_generation(&third, "applied", 1);
    let versions: Vec<_> = fs::read_dir(&bpffs)
        .expect("pin dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        versions,
        vec![std::ffi::OsString::from("survival-upgrade")],
        "the old version's pins were not removed"
    );

    // 4. A hundred policy changes in a row.
    let started = Instant::now();
    for n in 0..RELOADS {
        fs::write(
            &policy_file,
            policy(&relative, 1000 + u16::try_from(n).expect("small")),
        )
        .expect("rewrite policy");
        sighup(&third);
        wait_generation(&third, "applied", 2 + n);
    }
    eprintln!("{RELOADS} reloads took {:?}", started.elapsed());

    // 5. An invalid policy is rejected; the generation in force stays.
    fs::write(&policy_file, "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: survival}\nspec: {egress: [{name: x, action: maybe, to: [{cidr: 203.0.113.0/24}]}]}\n").expect("write invalid");
    sighup(&third);
    let rejected = wait_generation(&third, "rejected", 1 + RELOADS);
    assert!(
        rejected["error"]
            .as_str()
            .is_some_and(|e| e.contains("maybe")),
        "rejection names the problem: {rejected}"
    );
    thread::sleep(Duration::from_millis(300));

    drop(stop);
    let held = hold
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("the held connection ends");
    let _ = probe.wait_timeout(Duration::from_secs(10));
    let mut summary = String::new();
    let _ = probe_out.read_line(&mut summary);
    thread::sleep(Duration::from_millis(300));
    let leaked = servers.udp_count(denied) - baseline;
    assert_eq!(
        leaked, 0,
        "{leaked} probe datagrams reached the denied receiver ({summary})"
    );
    let refused: u64 = summary
        .split_whitespace()
        .find_map(|field| field.strip_prefix("refused="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("probe summary: {summary}"));
    assert!(
        refused >= 1000,
        "the probe barely ran while enforced: {summary}"
    );
    assert!(
        held.success(),
        "the allowed connection opened before was cut"
    );
    drop(third);
    drop(second);
    drop(first);
    assert!(
        !Path::new(&bpffs).exists(),
        "the guards left pins at {}",
        bpffs.display()
    );
}

/// An upgrade that died after attaching the new version but before removing the old one
/// leaves two versions attached. The next agent, adopting its own version, must remove the
/// other: its programs would go on judging by their frozen policy.
#[test]
fn adopting_removes_another_versions_leftover_enforcement() {
    let _serial = serial();
    let cgroup = CgroupGuard::new("leftover").expect("test cgroup");
    let work = tempfile::tempdir().expect("tempdir");
    let policy_file = work.path().join("policy.yaml");
    fs::write(&policy_file, policy(cgroup.relative_path(), 1)).expect("write policy");
    let before = egress_tests::root_egress_programs().expect("bpftool");

    // The leftover: another version, pinned elsewhere, then moved beside ours.
    let elsewhere = fresh_bpffs_dir();
    let mut stale = AgentGuard::start_with_options(
        &policy_file,
        &AgentOptions {
            bpffs: Some(elsewhere.clone()),
            keep_on_exit: true,
            audit_log: None,
            extra_args: vec!["--program-version".into(), "stale-version".into()],
        },
    );
    stale.stop().expect("stop, keeping enforcement");
    let stale_programs: Vec<u64> = egress_tests::root_egress_programs()
        .expect("bpftool")
        .difference(&before)
        .copied()
        .collect();
    assert!(
        !stale_programs.is_empty(),
        "the stale version is not attached"
    );

    let ours = fresh_bpffs_dir();
    let options = AgentOptions {
        bpffs: Some(ours.clone()),
        keep_on_exit: true,
        audit_log: None,
        extra_args: Vec::new(),
    };
    let mut first = AgentGuard::start_with_options(&policy_file, &options);
    first.stop().expect("stop, keeping enforcement");
    fs::rename(elsewhere.join("stale-version"), ours.join("stale-version"))
        .expect("move the stale version beside ours (bpffs supports rename)");

    let adopting = AgentGuard::start_with_options(&policy_file, &options);
    assert!(
        adopting.output().contains("Adopted"),
        "{}",
        adopting.output()
    );
    assert!(
        !ours.join("stale-version").exists(),
        "the other version's pins are still there"
    );
    let attached = egress_tests::root_egress_programs().expect("bpftool");
    for id in &stale_programs {
        assert!(
            !attached.contains(id),
            "program {id} of the stale version is still attached"
        );
    }
    drop(adopting);
    drop(first);
    drop(stale);
}
