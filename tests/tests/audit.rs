//! The audit log end to end: real clients in a test cgroup and namespace, the real agent,
//! and its JSON Lines log (format: docs/audit.md). Each connection or flow is exactly one
//! record with the right fields; policy changes and losses are recorded; `seq` stays
//! contiguous across restarts, crashes and rotations.

// The crate root's modules resolve beside it, not in `audit/`.
#[path = "audit/support.rs"]
mod support;
#[path = "audit/world.rs"]
mod world;

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use egress_tests::{
    Client, TestNet,
    traffic::{FLOOD_FIRST_PORT, FLOOD_PORTS_PER_SOCKET},
};
use serde_json::Value;
use support::{
    assert_contiguous, connections, helper_run, log_records, run_agent_to_exit, wait_records,
};
use world::{DROP, Expect, FLUSH, HELPER_COMM, PASS, RECORDED, World, assert_one_record_each};

#[test]
fn tcp_and_udp_v4_v6_allowed_and_denied_give_one_record_each() {
    let world = World::new("audit-conn");
    let _agent = world.start_agent(&[]);
    let client = world.client();
    let mut expects = Vec::new();
    for (dst, denied) in [
        (IpAddr::from(TestNet::ALLOWED_V4), false),
        (TestNet::ALLOWED_V6.into(), false),
        (TestNet::DENIED_V4.into(), true),
        (TestNet::DENIED_V6.into(), true),
    ] {
        let timeout = if denied { DROP } else { PASS };
        let tcp = SocketAddr::new(dst, 80);
        assert_eq!(
            client.tcp_connect(tcp, timeout).expect("helper"),
            !denied,
            "tcp {tcp}"
        );
        let udp = SocketAddr::new(dst, 5300);
        assert_eq!(
            client.udp_send_and_receive(udp, timeout).expect("helper"),
            !denied,
            "udp {udp}"
        );
        expects.push(Expect {
            protocol: "tcp",
            dst,
            port: Some(80),
            denied,
        });
        expects.push(Expect {
            protocol: "udp",
            dst,
            port: Some(5300),
            denied,
        });
    }
    let records = assert_one_record_each(&world, &expects);
    assert_eq!(
        world
            .servers
            .tcp_count(SocketAddr::new(TestNet::DENIED_V4.into(), 80)),
        0
    );
    assert_contiguous(&records, 1);
}

#[test]
fn icmp_echo_v4_v6_allowed_and_denied_give_one_record_each() {
    let world = World::new("audit-icmp");
    let _agent = world.start_agent(&[]);
    let client = world.client();
    let mut expects = Vec::new();
    for (dst, denied) in [
        (IpAddr::from(TestNet::ALLOWED_V4), false),
        (TestNet::ALLOWED_V6.into(), false),
        (TestNet::DENIED_V4.into(), true),
        (TestNet::DENIED_V6.into(), true),
    ] {
        let timeout = if denied { DROP } else { PASS };
        let ms = timeout.as_millis().to_string();
        let (_, code, _) = helper_run(&client, &["icmp", &dst.to_string(), &ms], timeout * 3);
        assert_eq!(code, Some(if denied { 1 } else { 0 }), "echo to {dst}");
        let protocol = if dst.is_ipv4() { "icmp" } else { "icmpv6" };
        expects.push(Expect {
            protocol,
            dst,
            port: None,
            denied,
        });
    }
    assert_one_record_each(&world, &expects);
}

#[test]
fn retransmitted_syns_of_a_denied_connect_give_one_record() {
    let world = World::new("audit-syn");
    let _agent = world.start_agent(&[]);
    let client = world.client();
    let dst = SocketAddr::new(TestNet::DENIED_V4.into(), 80);
    // Over 3 s the kernel retransmits the SYN (after 1 s and 3 s) unless connect() fails.
    assert!(
        !client
            .tcp_connect(dst, Duration::from_secs(3))
            .expect("helper")
    );
    let records = assert_one_record_each(
        &world,
        &[Expect {
            protocol: "tcp",
            dst: dst.ip(),
            port: Some(80),
            denied: true,
        }],
    );
    let record = connections(&records, &world.unit_path(), "tcp", dst.ip(), Some(80))[0];
    assert_eq!(record["comm"], HELPER_COMM, "{record}");
}

#[test]
fn a_process_that_connects_and_exits_at_once_is_attributed() {
    let world = World::new("audit-pid");
    let _agent = world.start_agent(&[]);
    let client = world.client();
    let tcp = SocketAddr::new(TestNet::ALLOWED_V4.into(), 80);
    let (tcp_pid, code, _) = helper_run(&client, &["connect-and-exit", &tcp.to_string()], PASS);
    assert_eq!(code, Some(0));
    let udp = SocketAddr::new(TestNet::ALLOWED_V6.into(), 5300);
    let (udp_pid, code, _) = helper_run(&client, &["udp", &udp.to_string(), "3000"], PASS * 2);
    assert_eq!(code, Some(0));
    let records = assert_one_record_each(
        &world,
        &[
            Expect {
                protocol: "tcp",
                dst: tcp.ip(),
                port: Some(80),
                denied: false,
            },
            Expect {
                protocol: "udp",
                dst: udp.ip(),
                port: Some(5300),
                denied: false,
            },
        ],
    );
    let path = world.unit_path();
    for (protocol, dst, port, pid) in [
        ("tcp", tcp.ip(), 80, tcp_pid),
        ("udp", udp.ip(), 5300, udp_pid),
    ] {
        let record = connections(&records, &path, protocol, dst, Some(port))[0];
        assert_eq!(record["pid"], pid, "{record}");
        assert_eq!(record["comm"], HELPER_COMM, "{record}");
    }
}

#[test]
fn policy_applies_and_rejections_are_recorded() {
    let world = World::new("audit-policy");
    let log = world.files.log();
    let policy = world.policy();
    let agent = world.start_agent(&[]);
    let records = wait_records(&log, RECORDED, |r| !r.is_empty());
    let applied = &records[0];
    assert_eq!(applied["kind"], "policy", "{applied}");
    assert_eq!(applied["action"], "applied");
    assert_eq!(applied["seq"], 1);
    assert!(
        applied["generation"].as_u64().is_some_and(|g| g >= 1),
        "{applied}"
    );
    let sha = applied["sha256"].as_str().unwrap_or_default();
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{sha}"
    );
    assert_eq!(
        applied["sources"],
        serde_json::json!([policy.display().to_string()])
    );
    assert_eq!(
        (applied["policies"].clone(), applied["rules"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(applied["prefixes"], 2);
    assert_eq!(applied["added"], serde_json::json!(["test"]));
    assert_eq!(applied["removed"], serde_json::json!([]));
    assert_eq!(applied["changed"], serde_json::json!([]));
    assert!(applied.get("error").is_none(), "{applied}");
    assert!(agent.stop().success());

    // A policy the compiler rejects: the agent records why and exits with an error.
    let bad = world.files.policy(
        "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: bad}\n\
         spec:\n  egress:\n    - name: x\n      action: deny\n      to: [{cidr: 203.0.113.1/24}]\n",
    );
    let (output, bpffs) = run_agent_to_exit(&bad, &log);
    assert!(
        !output.status.success(),
        "a rejected policy must fail the agent"
    );
    assert!(!bpffs.exists(), "a rejected policy pins nothing");
    let records = log_records(&log);
    assert_contiguous(&records, 1);
    let rejected = records.last().expect("a record");
    assert_eq!(rejected["kind"], "policy", "{rejected}");
    assert_eq!(rejected["action"], "rejected", "{rejected}");
    assert!(
        rejected["error"]
            .as_str()
            .is_some_and(|e| e.contains("203.0.113.1/24")),
        "{rejected}"
    );
    assert_eq!(
        rejected["sources"],
        serde_json::json!([bad.display().to_string()])
    );
}

/// Sends `n` UDP flows, each a new socket (a new helper process), to the echo server.
fn udp_flows(client: &Client, n: usize) {
    let dst = SocketAddr::new(TestNet::ALLOWED_V4.into(), 5300);
    for _ in 0..n {
        assert!(client.udp_send_and_receive(dst, PASS).expect("helper"));
    }
}

#[test]
fn restarts_crashes_and_rotation_keep_seq_contiguous() {
    let world = World::new("audit-rotate");
    let log = world.files.log();
    let client = world.client();
    let tiny = ["--audit-log-max-bytes", "2000", "--audit-log-keep", "100"];
    let count = |records: &[Value]| records.iter().filter(|r| r["kind"] == "connection").count();

    let agent = world.start_agent(&tiny);
    udp_flows(&client, 12);
    wait_records(&log, RECORDED, |r| count(r) >= 12);
    assert!(agent.stop().success());
    let first_run = log_records(&log).len();

    // A crash: the records of the last flush window are gone, and the next start says so.
    let agent = world.start_agent(&tiny);
    udp_flows(&client, 12);
    wait_records(&log, RECORDED, |r| count(r) >= 24);
    thread::sleep(FLUSH);
    agent.kill();
    let before_restart = log_records(&log).len();

    let agent = world.start_agent(&tiny);
    udp_flows(&client, 12);
    wait_records(&log, RECORDED, |r| count(r) >= 36);
    assert!(agent.stop().success());

    let records = log_records(&log);
    assert_contiguous(&records, 1);
    assert_eq!(count(&records), 36);
    let files = egress_agent::audit::LogFiles::new(&log).oldest_first();
    assert!(
        files.len() >= 4,
        "tiny rotation made only {} files",
        files.len()
    );
    for file in &files {
        let len = std::fs::metadata(file).expect("stat").len();
        assert!(len <= 2000, "{} has {len} bytes", file.display());
    }
    let losses: Vec<&Value> = records.iter().filter(|r| r["kind"] == "loss").collect();
    assert_eq!(losses.len(), 1, "one unclean stop: {losses:#?}");
    assert_eq!(
        losses[0]["seq"],
        before_restart as u64 + 1,
        "first record of the restart"
    );
    assert!(
        losses[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("did not stop cleanly"))
    );
    // A clean stop is not a loss: the second run's policy record follows the first run's.
    assert_eq!(records[first_run]["kind"], "policy");

    // `egress events --json` prints the same records, rotated files first.
    let bin = egress_tests::agent::egress_bin().expect("egress");
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["events", "--json", "--audit-log"]).arg(&log);
    let out = egress_tests::process::run_bounded(&mut cmd, "egress events", PASS).expect("events");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(printed, records);
    let mut cmd = std::process::Command::new(egress_tests::agent::egress_bin().expect("egress"));
    cmd.args(["events", "--verdict", "allow", "--audit-log"])
        .arg(&log);
    let out = egress_tests::process::run_bounded(&mut cmd, "egress events", PASS).expect("events");
    let text = String::from_utf8_lossy(&out.stdout);
    let decisions = text.lines().filter(|l| l.contains(" allow ")).count();
    assert_eq!(decisions, 36, "{text}");
    assert!(
        text.contains("audit-test.service uid=0") && text.contains("test/default"),
        "{text}"
    );
}

#[test]
fn a_full_ring_buffer_is_recorded_as_loss_and_changes_no_verdict() {
    const FLOWS: u32 = 120_000;
    let world = World::new("audit-loss");
    let log = world.files.log();
    let agent = world.start_agent(&[]);
    let client = world.client();
    // A stopped agent reads nothing: the 8 MiB ring buffer (about 70 000 events) fills.
    agent.signal(libc::SIGSTOP);
    let target = IpAddr::from(TestNet::ALLOWED_V4);
    let (_, code, sent) = helper_run(
        &client,
        &["udp-flood", &target.to_string(), &FLOWS.to_string()],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0));
    assert_eq!(sent.trim(), FLOWS.to_string(), "datagrams sent");
    // With the buffer full, verdicts are those of the policy.
    let allowed = SocketAddr::new(target, 5300);
    let denied = SocketAddr::new(TestNet::DENIED_V4.into(), 5300);
    assert!(client.udp_send_and_receive(allowed, PASS).expect("helper"));
    assert!(!client.udp_send_and_receive(denied, DROP).expect("helper"));
    assert!(
        client
            .tcp_connect(SocketAddr::new(target, 80), PASS)
            .expect("helper")
    );
    assert!(
        !client
            .tcp_connect(SocketAddr::new(denied.ip(), 80), DROP)
            .expect("helper")
    );
    assert_eq!(world.servers.udp_count(denied), 0);
    agent.signal(libc::SIGCONT);

    let lost = |records: &[Value]| -> u64 {
        records
            .iter()
            .filter(|r| r["kind"] == "loss")
            .filter_map(|r| r["lost"].as_u64())
            .sum()
    };
    wait_records(&log, Duration::from_secs(30), |r| lost(r) > 0);
    // The agent writes the records it finds in the buffer, and the loss, within a flush.
    thread::sleep(FLUSH * 2);
    let records = log_records(&log);
    let total_lost = lost(&records);
    let last_port = u32::from(FLOOD_FIRST_PORT) + FLOWS.min(FLOOD_PORTS_PER_SOCKET);
    let flood = connections(&records, &world.unit_path(), "udp", target, None)
        .into_iter()
        .filter(|r| {
            r["dst_port"]
                .as_u64()
                .is_some_and(|p| p >= u64::from(FLOOD_FIRST_PORT) && p < u64::from(last_port))
        })
        .count() as u64;
    eprintln!("ring buffer test: {flood} records + {total_lost} lost for {FLOWS} flows");
    assert!(total_lost > 0, "no loss recorded");
    // Every flow is accounted for: a record, or counted in a loss record. The checks above
    // (and what else the kernel reports meanwhile) may have been lost too: a small slack.
    assert!(
        flood + total_lost >= u64::from(FLOWS) && flood + total_lost <= u64::from(FLOWS) + 64,
        "{flood} records + {total_lost} lost for {FLOWS} flows"
    );
    assert_contiguous(&records, 1);
    assert!(agent.stop().success());
}
