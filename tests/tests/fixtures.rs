//! The fixtures themselves, with no agent: the network carries traffic, clients land in
//! the right namespace, cgroup and uid, servers count, and guards clean up.

use std::{
    net::{IpAddr, SocketAddr},
    panic,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use egress_tests::{
    AgentGuard, CgroupGuard, Client, NetNsGuard, ProcessGuard, Proto, Servers, TestNet,
    cgroup2_root, client::url, helper_bin, process::Placement, serial,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn cgroup2_root_is_a_cgroup2_mount() {
    let root = cgroup2_root().expect("cgroup2 is mounted");
    assert!(
        root.join("cgroup.procs").is_file(),
        "{} is no cgroup2 root",
        root.display()
    );
    assert!(
        !root.join("cgroup.events").exists(),
        "{} is not the root cgroup",
        root.display()
    );
}

#[test]
fn traffic_flows_without_an_agent() {
    let _serial = serial();
    let net = TestNet::new().expect("test network");
    let cgroup = CgroupGuard::new("fixture").expect("cgroup");
    let servers =
        Servers::start(&net.server, &TestNet::TARGETS, &[80], &[5300]).expect("servers start");
    let client = Client::new(&net.client, &cgroup);

    for ip in TestNet::TARGETS {
        let tcp = SocketAddr::new(ip, 80);
        assert!(
            client.tcp_connect(tcp, TIMEOUT).expect("helper runs"),
            "tcp {tcp}"
        );
        assert_eq!(
            servers.wait_count(Proto::Tcp, tcp, 1, TIMEOUT),
            1,
            "server saw {tcp}"
        );

        let body = client.curl_get(&url(tcp), TIMEOUT).expect("curl succeeds");
        assert_eq!(body, format!("egress-test-server {tcp}\n"));
        assert_eq!(
            servers.wait_count(Proto::Tcp, tcp, 2, TIMEOUT),
            2,
            "server saw curl"
        );

        let udp = SocketAddr::new(ip, 5300);
        assert!(
            client
                .udp_send_and_receive(udp, TIMEOUT)
                .expect("helper runs"),
            "udp {udp}"
        );
        assert_eq!(
            servers.udp_count(udp),
            1,
            "server saw the datagram to {udp}"
        );
    }
    // Every event came from the client namespace's addresses.
    for event in servers.events() {
        let expected: IpAddr = if event.local.is_ipv4() {
            TestNet::CLIENT_V4.into()
        } else {
            TestNet::CLIENT_V6.into()
        };
        assert_eq!(event.peer.ip().to_canonical(), expected, "{event:?}");
    }
    // Nothing listens on port 81: refused quickly, and that is reported as a failure.
    let closed = SocketAddr::new(TestNet::ALLOWED_V4.into(), 81);
    assert!(!client.tcp_connect(closed, TIMEOUT).expect("helper runs"));
    assert!(
        client
            .curl(&url(closed), TIMEOUT)
            .expect("curl runs")
            .is_blocked()
    );
}

#[test]
fn clients_run_in_their_namespace_cgroup_and_uid() {
    let _serial = serial();
    let net = TestNet::new().expect("test network");
    let cgroup = CgroupGuard::new("placement").expect("cgroup");
    let child = cgroup.child("leaf").expect("child cgroup");
    let client = Client::in_cgroup_dir(&net.client, child.path());

    let info = client.info().expect("info");
    assert!(
        info.contains(&format!("cgroup={}\n", child.relative_path())),
        "helper not in {}: {info}",
        child.relative_path()
    );
    assert!(info.contains("uid=0\n"), "{info}");
    let own = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    assert!(
        !info.contains(&format!("netns={}", own.display())),
        "still in our netns: {info}"
    );

    let info = client.with_uid(4242).info().expect("info as 4242");
    assert!(info.contains("uid=4242\n"), "{info}");
    assert!(child.id().expect("cgroup id") > 1);
    assert!(child.procs().expect("procs").is_empty(), "clients exited");
}

#[test]
fn uid_switched_curl_reaches_the_server() {
    let _serial = serial();
    let net = TestNet::new().expect("test network");
    let cgroup = CgroupGuard::new("uid").expect("cgroup");
    let servers = Servers::start(&net.server, &[TestNet::ALLOWED_V4.into()], &[80], &[])
        .expect("servers start");
    let target = SocketAddr::new(TestNet::ALLOWED_V4.into(), 80);
    let client = Client::new(&net.client, &cgroup).with_uid(4242);
    let body = client
        .curl_get(&url(target), TIMEOUT)
        .expect("curl as uid 4242");
    assert!(body.starts_with("egress-test-server"), "{body}");
    assert_eq!(servers.tcp_count(target), 1);
}

/// Sets up every kind of guard, with a live process in the cgroup, and returns what to
/// check afterwards; `fail` panics before the guards are dropped.
fn build_and_drop(fail: bool) -> (Vec<String>, Vec<PathBuf>, u32) {
    let net = TestNet::new().expect("test network");
    let extra = NetNsGuard::new("extra").expect("netns");
    let cgroup = CgroupGuard::new("cleanup").expect("cgroup");
    let child = cgroup.child("child").expect("child cgroup");
    let servers = Servers::start(&net.server, &[TestNet::ALLOWED_V4.into()], &[80], &[5300])
        .expect("servers");
    let mut cmd = Placement::new(net.client.path())
        .cgroup(child.path())
        .command(helper_bin().expect("helper"))
        .expect("command");
    cmd.args(["sleep", "600"]);
    let sleeper = ProcessGuard::spawn(&mut cmd, "sleeper").expect("sleeper");
    assert_eq!(child.procs().expect("procs"), vec![sleeper.id()]);
    let names = vec![
        net.client.name().to_owned(),
        net.server.name().to_owned(),
        extra.name().to_owned(),
    ];
    let dirs = vec![cgroup.path().to_owned(), child.path().to_owned()];
    let pid = sleeper.id();
    for name in &names {
        assert!(netns_exists(name), "{name} exists while guarded");
    }
    if fail {
        panic!("deliberate failure with live guards");
    }
    drop((sleeper, servers));
    (names, dirs, pid)
}

fn assert_gone(names: &[String], dirs: &[PathBuf], pid: u32) {
    for name in names {
        assert!(!netns_exists(name), "netns {name} leaked");
    }
    for dir in dirs {
        assert!(!dir.exists(), "cgroup {} leaked", dir.display());
    }
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "process {pid} leaked"
    );
}

#[test]
fn guards_clean_up_on_success() {
    let _serial = serial();
    let (names, dirs, pid) = build_and_drop(false);
    assert_gone(&names, &dirs, pid);
}

#[test]
fn guards_clean_up_on_panic() {
    let _serial = serial();
    let before: Vec<String> = leftover_names();
    let result = panic::catch_unwind(|| build_and_drop(true));
    assert!(result.is_err(), "build_and_drop(true) panics");
    assert_eq!(
        leftover_names(),
        before,
        "the panic left namespaces or cgroups behind"
    );
}

/// Names of fixture namespaces and cgroups that exist right now.
fn leftover_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list runs");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(egress_tests::net::NETNS_PREFIX))
        .map(str::to_owned)
        .collect();
    let root = cgroup2_root().expect("cgroup2 root");
    for entry in std::fs::read_dir(root).expect("cgroup root lists") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with(egress_tests::cgroup::CGROUP_PREFIX) {
            names.push(name);
        }
    }
    names.sort();
    names
}

/// Drops made by nftables in the client namespace stand in for the agent: the fixtures
/// report them as a failed client and zero arrivals, for TCP, HTTP and UDP, v4 and v6.
#[test]
fn drops_are_seen_as_failed_clients_and_zero_arrivals() {
    let _serial = serial();
    let net = TestNet::new().expect("test network");
    let cgroup = CgroupGuard::new("drops").expect("cgroup");
    let servers =
        Servers::start(&net.server, &TestNet::TARGETS, &[80], &[5300]).expect("servers start");
    let ruleset = "table inet egress_fixture {\n\
                     chain out {\n\
                       type filter hook output priority 0; policy accept;\n\
                       ip daddr 203.0.113.0/24 drop\n\
                       ip6 daddr 2001:db8:2::/48 drop\n\
                     }\n\
                   }\n";
    let mut nft = Placement::new(net.client.path())
        .command("nft")
        .expect("nft command");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().expect("nft starts");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("nft stdin");
        stdin
            .write_all(ruleset.as_bytes())
            .expect("ruleset written");
    }
    assert!(
        child.wait().expect("nft exits").success(),
        "nft loaded the ruleset"
    );

    let client = Client::new(&net.client, &cgroup);
    for ip in [TestNet::DENIED_V4.into(), IpAddr::from(TestNet::DENIED_V6)] {
        let tcp = SocketAddr::new(ip, 80);
        assert!(
            !client.tcp_connect(tcp, TIMEOUT).expect("helper runs"),
            "tcp {tcp}"
        );
        let outcome = client.curl(&url(tcp), TIMEOUT).expect("curl runs");
        assert!(outcome.is_blocked(), "curl {tcp}: {outcome:?}");
        let udp = SocketAddr::new(ip, 5300);
        assert!(
            !client
                .udp_send_and_receive(udp, TIMEOUT)
                .expect("helper runs")
        );
    }
    for ip in [
        TestNet::ALLOWED_V4.into(),
        IpAddr::from(TestNet::ALLOWED_V6),
    ] {
        let tcp = SocketAddr::new(ip, 80);
        assert!(client.curl_get(&url(tcp), TIMEOUT).is_ok(), "curl {tcp}");
    }
    let denied: Vec<_> = servers
        .events()
        .into_iter()
        .filter(|e| !matches!(e.local.ip(), IpAddr::V4(a) if a == TestNet::ALLOWED_V4))
        .filter(|e| !matches!(e.local.ip(), IpAddr::V6(a) if a == TestNet::ALLOWED_V6))
        .collect();
    assert!(denied.is_empty(), "dropped traffic arrived: {denied:?}");
    assert_eq!(servers.events().len(), 2, "both allowed requests arrived");
}

/// The agent guard against a stand-in agent script: waits for `enforcing policy`, passes
/// the contract's arguments, reads the audit log, stops it with SIGTERM.
#[test]
fn agent_guard_drives_a_stand_in_agent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("fake-egress");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         [ \"$1 $2 $4\" = 'agent --policy --audit-log' ] || { echo \"bad args: $*\" >&2; exit 3; }\n\
         grep -q EgressPolicy \"$3\" || exit 4\n\
         echo '{\"kind\":\"connection\",\"dst_ip\":\"192.0.2.1\"}' > \"$5\"\n\
         echo 'INFO egress: enforcing policy test' >&2\n\
         trap 'echo stopping >&2; exit 0' TERM\n\
         while :; do sleep 0.05; done\n",
    )
    .expect("script written");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("script executable");
    let mut agent = AgentGuard::start_program(&script, "kind: EgressPolicy\n");
    let records = agent.audit_records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["dst_ip"], "192.0.2.1");
    let status = agent.stop().expect("stops");
    assert!(status.success(), "{status}: {}", agent.output());
    assert!(agent.output().contains("stopping"), "{}", agent.output());

    let failing = dir.path().join("failing-egress");
    std::fs::write(&failing, "#!/bin/sh\necho 'cannot load BPF' >&2\nexit 1\n").expect("written");
    std::fs::set_permissions(
        &failing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("script executable");
    let panic = panic::catch_unwind(|| AgentGuard::start_program(&failing, "x"))
        .err()
        .expect("a failing agent panics");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("cannot load BPF"), "{message}");
}
