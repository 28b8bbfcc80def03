//! The control plane against a real agent: the control socket and its permissions, `egress
//! status`, `rules`, `apply` (and `--dry-run`) in JSON, rule hit counters after real traffic,
//! reloads on a policy file change, and the metrics endpoint.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use egress_tests::{
    AgentGuard, CgroupGuard, Client, SerialGuard, Servers, TestNet,
    agent::{AgentOptions, egress_bin},
    process::run_bounded,
    serial,
};
use serde_json::Value;
use tempfile::TempDir;

/// A uid and gid no account on the machine has.
const STRANGER: u32 = 4242;
const RECORDED: Duration = Duration::from_secs(10);

/// A test agent with its own control socket, in a directory any uid may traverse.
struct Control {
    agent: AgentGuard,
    socket: PathBuf,
    policy: PathBuf,
    cgroup: CgroupGuard,
    dir: TempDir,
    _serial: SerialGuard,
}

fn policy_yaml(cgroup: &str, denied: &str) -> String {
    format!(
        "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: ctl}}\n\
         spec:\n  selector: {{cgroups: [\"{cgroup}\"]}}\n  defaultAction: allow\n  egress:\n\
         \x20   - name: deny-doc\n      action: deny\n      to: [{{cidr: \"{denied}\"}}]\n\
         \x20   - name: allow-doc\n      action: allow\n      to: [{{cidr: 198.51.100.0/24}}]\n"
    )
}

impl Control {
    fn start(name: &str, extra: &[&str]) -> Self {
        let serial = serial();
        let cgroup = CgroupGuard::new(name).expect("test cgroup");
        let dir = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let socket = dir.path().join("egress.sock");
        let policy = dir.path().join("policy.yaml");
        fs::write(
            &policy,
            policy_yaml(cgroup.relative_path(), "203.0.113.0/24"),
        )
        .expect("write policy");
        let mut extra_args = vec!["--control-socket".to_owned(), socket.display().to_string()];
        extra_args.extend(extra.iter().map(|s| (*s).to_owned()));
        let agent = AgentGuard::start_with_options(
            &policy,
            &AgentOptions {
                extra_args,
                ..AgentOptions::default()
            },
        );
        Self {
            agent,
            socket,
            policy,
            cgroup,
            dir,
            _serial: serial,
        }
    }

    /// Runs `egress ARGS --socket S`, as `uid` (and its own group) when given.
    fn egress(&self, args: &[&str], uid: Option<u32>) -> Output {
        let mut cmd = Command::new(egress_bin().expect("egress binary"));
        cmd.args(args).arg("--socket").arg(&self.socket);
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        run_bounded(&mut cmd, "egress", Duration::from_secs(60)).expect("egress runs")
    }

    /// `egress ARGS --json` as root, which must succeed; its JSON.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.egress(&all, None);
        assert!(out.status.success(), "egress {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    }

    fn generation(&self) -> u64 {
        self.json(&["status"])["generation"]
            .as_u64()
            .expect("a generation")
    }

    fn policy_records(&self) -> Vec<Value> {
        self.agent
            .audit_records()
            .into_iter()
            .filter(|r| r["kind"] == "policy")
            .collect()
    }

    /// A variant of the policy in another file, denying `denied` instead.
    fn variant(&self, file: &str, denied: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        fs::write(&path, policy_yaml(self.cgroup.relative_path(), denied)).expect("write");
        path
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn status_rules_and_dry_run_answer_in_json() {
    let ctl = Control::start("ctl-status", &[]);
    let meta = fs::metadata(&ctl.socket).expect("the socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "root only");

    let status = ctl.json(&["status"]);
    assert_eq!(status["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["generation"], 1);
    assert_eq!(status["pid"].as_u64(), ctl.agent.pid().map(u64::from));
    assert_eq!(status["policies"][0]["name"], "ctl");
    assert_eq!(status["policies"][0]["mode"], "enforce");
    assert_eq!(status["policies"][0]["rules"], 2);
    assert_eq!(status["attach"]["attachment"], "fresh");
    assert_eq!(
        status["attach"]["programs"],
        serde_json::json!(egress_agent::datapath::PROGRAMS),
        "status lists every program the agent attaches"
    );
    assert_eq!(status["sha256"].as_str().map(str::len), Some(64));
    let maps = status["maps"].as_array().expect("maps");
    let addr4 = maps
        .iter()
        .find(|m| m["name"] == "EGRESS_ADDR4")
        .expect("the IPv4 trie");
    assert!(addr4["entries"].as_u64() >= Some(2), "{addr4}");
    assert_eq!(addr4["capacity"], egress_common::capacity::ADDR4);
    assert!(status["events"]["lost"].is_u64() && status["events"]["written"].is_u64());

    let rules = ctl.json(&["rules"]);
    let names: Vec<&str> = rules["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert_eq!(names, ["deny-doc", "allow-doc", "default"]);
    assert_eq!(rules["rules"][0]["action"], "deny");
    assert_eq!(rules["rules"][0]["connections_denied"], 0);
    let one = ctl.json(&["rules", "--policy", "ctl"]);
    assert_eq!(one["rules"], rules["rules"]);
    let missing = ctl.egress(&["rules", "--policy", "nope"], None);
    assert!(!missing.status.success(), "{}", text(&missing));

    // A dry run compiles and diffs, and changes nothing.
    let records_before = ctl.policy_records().len();
    let variant = ctl.variant("narrower.yaml", "203.0.113.0/25");
    let dry = ctl.json(&["apply", "--dry-run", path_str(&variant)]);
    assert_eq!(dry["ok"], true, "{dry}");
    let diff = &dry["result"]["diff"];
    assert_eq!(
        diff["rules_changed"],
        serde_json::json!(["ctl/deny-doc"]),
        "{dry}"
    );
    assert_eq!(diff["rules_added"], serde_json::json!([]), "{dry}");
    assert_eq!(dry["result"]["generation"], 1);
    assert_eq!(ctl.generation(), 1, "a dry run applies nothing");
    assert_eq!(ctl.policy_records().len(), records_before, "nor records");

    // An invalid policy is rejected as a whole: printed, non-zero, recorded, no change.
    let bad = ctl.dir.path().join("bad.yaml");
    fs::write(
        &bad,
        "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nspec: [",
    )
    .expect("w");
    let out = ctl.egress(&["apply", path_str(&bad)], None);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.yaml"),
        "the error names the file: {}",
        text(&out)
    );
    assert_eq!(ctl.generation(), 1, "the old generation stays in force");
    let rejected = ctl
        .agent
        .wait_for_record(RECORDED, |r| r["action"] == "rejected")
        .expect("a rejected record");
    assert_eq!(rejected["by"], 0);
    assert_eq!(rejected["generation"], 1);
    assert!(rejected["error"].as_str().is_some_and(|e| !e.is_empty()));

    // A stranger cannot even connect to a root-only socket.
    let out = ctl.egress(&["status"], Some(STRANGER));
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn only_root_changes_policy_and_every_change_names_its_uid() {
    let gid = STRANGER.to_string();
    let ctl = Control::start("ctl-root", &["--control-group", &gid]);
    let meta = fs::metadata(&ctl.socket).expect("the socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // The group reads...
    let out = ctl.egress(&["status", "--json"], Some(STRANGER));
    assert!(out.status.success(), "{}", text(&out));
    // ...but cannot change policy, not even in a dry run.
    let variant = ctl.variant("other.yaml", "203.0.113.0/25");
    for dry in [true, false] {
        let mut args = vec!["apply", path_str(&variant)];
        if dry {
            args.push("--dry-run");
        }
        let out = ctl.egress(&args, Some(STRANGER));
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("requires root"),
            "{}",
            text(&out)
        );
    }
    let refused = ctl
        .agent
        .wait_for_record(RECORDED, |r| r["kind"] == "policy" && r["by"] == STRANGER)
        .expect("the refusal is recorded");
    assert_eq!(refused["action"], "rejected");
    assert_eq!(refused["generation"], 1, "nothing changed");
    assert_eq!(ctl.generation(), 1);

    // Root applies; the record names uid 0 and the files now in force.
    let out = ctl.egress(&["apply", path_str(&variant)], None);
    assert!(out.status.success(), "{}", text(&out));
    let applied = ctl
        .agent
        .wait_for_record(RECORDED, |r| {
            r["action"] == "applied" && r["generation"] == 2
        })
        .expect("an applied record");
    assert_eq!(applied["by"], 0);
    assert_eq!(applied["sources"][0], path_str(&variant));
    assert_eq!(ctl.generation(), 2);
    // The applied files are what the agent watches now: editing them reloads.
    fs::write(
        &variant,
        policy_yaml(ctl.cgroup.relative_path(), "203.0.113.0/26"),
    )
    .expect("edit");
    assert!(
        ctl.agent
            .wait_for_record(RECORDED, |r| r["action"] == "applied"
                && r["generation"] == 3)
            .is_some(),
        "editing the applied file reloads"
    );
}

#[test]
fn rule_hit_counters_count_real_connections() {
    let ctl = Control::start("ctl-hits", &[]);
    let net = TestNet::new().expect("test network");
    let servers = Servers::start(&net.server, &TestNet::TARGETS, &[80], &[]).expect("servers");
    let client = Client::new(&net.client, &ctl.cgroup);
    let denied = SocketAddr::new(IpAddr::from(TestNet::DENIED_V4), 80);
    let allowed = SocketAddr::new(IpAddr::from(TestNet::ALLOWED_V4), 80);
    for _ in 0..2 {
        assert!(
            !client
                .tcp_connect(denied, Duration::from_millis(800))
                .expect("helper")
        );
        assert!(
            client
                .tcp_connect(allowed, Duration::from_secs(3))
                .expect("helper")
        );
    }
    assert_eq!(servers.tcp_count(denied), 0);
    let rules = ctl.json(&["rules"]);
    let rule = |name: &str| -> Value {
        rules["rules"]
            .as_array()
            .and_then(|all| all.iter().find(|r| r["rule"] == name).cloned())
            .unwrap_or_else(|| panic!("no rule {name} in {rules}"))
    };
    let deny = rule("deny-doc");
    assert_eq!(deny["connections_denied"], 2, "{deny}");
    assert!(deny["packets_denied"].as_u64() >= Some(2), "{deny}");
    assert_eq!(deny["connections_allowed"], 0, "{deny}");
    assert!(
        deny["last_hit"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{deny}"
    );
    let allow = rule("allow-doc");
    assert_eq!(allow["connections_allowed"], 2, "{allow}");
    assert!(allow["packets_allowed"].as_u64() >= Some(2), "{allow}");
    assert_eq!(rule("default")["last_hit"], Value::Null);
}

#[test]
fn editing_the_policy_file_reloads_within_a_second() {
    let ctl = Control::start("ctl-watch", &[]);
    let started = Instant::now();
    fs::write(
        &ctl.policy,
        policy_yaml(ctl.cgroup.relative_path(), "203.0.113.0/25"),
    )
    .expect("edit the policy");
    let applied = ctl
        .agent
        .wait_for_record(RECORDED, |r| {
            r["action"] == "applied" && r["generation"] == 2
        })
        .expect("a reload after the edit");
    let took = started.elapsed();
    eprintln!("reloaded {took:?} after the edit");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(applied["changed"], serde_json::json!(["ctl"]));
    // A touch changes no byte: no new generation.
    let policy = fs::File::options()
        .append(true)
        .open(&ctl.policy)
        .expect("open");
    policy
        .set_modified(std::time::SystemTime::now())
        .expect("touch");
    drop(policy);
    thread::sleep(Duration::from_millis(800));
    assert_eq!(ctl.generation(), 2);
    // An invalid edit is rejected and the generation stays.
    fs::write(&ctl.policy, "kind: [").expect("break the policy");
    assert!(
        ctl.agent
            .wait_for_record(RECORDED, |r| r["action"] == "rejected")
            .is_some()
    );
    assert_eq!(ctl.generation(), 2);
}

/// `GET path` over plain TCP; the status code and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn the_metrics_endpoint_serves_every_series_and_the_probes() {
    // A free port: bound, then released for the agent.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ctl = Control::start("ctl-metrics", &["--metrics", &addr.to_string()]);
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    for series in [
        r#"egress_decisions_total{policy="ctl",rule="deny-doc",verdict="deny"} "#,
        r#"egress_packets_total{policy="ctl",rule="allow-doc",verdict="allow"} "#,
        "egress_events_written_total ",
        "egress_events_lost_total ",
        r#"egress_reloads_total{result="applied"} "#,
        r#"egress_reloads_total{result="rejected"} "#,
        r#"egress_map_entries{map="EGRESS_ADDR4"} "#,
        r#"egress_map_capacity{map="EGRESS_ADDR4"} 2200000"#,
        "egress_generation 1",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(series)),
            "no `{series}` in\n{body}"
        );
    }
    assert_eq!(http_get(addr, "/healthz").0, 200);
    assert_eq!(http_get(addr, "/readyz").0, 200);
    assert_eq!(http_get(addr, "/nothing").0, 404);
    // The series follow the agent: a SIGHUP reload counts and moves the generation.
    let pid = libc::pid_t::try_from(ctl.agent.pid().expect("running")).expect("pid");
    // SAFETY: signals the agent this test started, which has not been reaped.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    assert!(
        ctl.agent
            .wait_for_record(RECORDED, |r| r["action"] == "applied"
                && r["generation"] == 2)
            .is_some()
    );
    let (_, body) = http_get(addr, "/metrics");
    assert!(body.lines().any(|l| l == "egress_generation 2"), "{body}");
    assert!(
        body.lines()
            .any(|l| l == r#"egress_reloads_total{result="applied"} 1"#),
        "{body}"
    );
}
