//! The audit tests' world: a test network, a cgroup with a unit-named child the clients run
//! in, servers and a log; and what a connection record must hold.

use std::{net::IpAddr, path::PathBuf, thread, time::Duration};

use egress_tests::{CgroupGuard, Client, SerialGuard, Servers, TestNet, serial};
use serde_json::Value;

use super::support::{Agent, Files, connections, log_records, wait_records};

/// Timeout for traffic expected to pass.
pub const PASS: Duration = Duration::from_secs(3);
/// Timeout for traffic expected to be dropped.
pub const DROP: Duration = Duration::from_millis(1500);
/// Records reach the file within one flush interval (1 s); this leaves room.
pub const RECORDED: Duration = Duration::from_secs(10);
/// Long enough for a duplicate record to be flushed after the first.
pub const FLUSH: Duration = Duration::from_millis(1500);
/// `comm` of the helper binary: the kernel keeps 15 bytes of the name.
pub const HELPER_COMM: &str = "egress-test-hel";

/// One test's world: the network, a cgroup with a unit-named child the clients run in,
/// servers, and the log. Fields drop in order: servers, cgroups, network, then the lock.
pub struct World {
    pub servers: Servers,
    unit: CgroupGuard,
    cgroup: CgroupGuard,
    pub net: TestNet,
    pub files: Files,
    _serial: SerialGuard,
}

impl World {
    pub fn new(name: &str) -> Self {
        let serial = serial();
        let net = TestNet::new().expect("test network");
        let cgroup = CgroupGuard::new(name).expect("test cgroup");
        let unit = cgroup.child("audit-test.service").expect("unit cgroup");
        let servers =
            Servers::start(&net.server, &TestNet::TARGETS, &[80], &[5300]).expect("servers");
        Self {
            servers,
            unit,
            cgroup,
            net,
            files: Files::new(),
            _serial: serial,
        }
    }

    /// A client in the unit cgroup, governed by the policy on its parent.
    pub fn client(&self) -> Client {
        Client::new(&self.net.client, &self.unit)
    }

    /// Denies everything to 203.0.113.0/24 and 2001:db8:2::/48, allows the rest, logs all.
    pub fn policy(&self) -> PathBuf {
        self.files.policy(&format!(
            "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: test}}\n\
             spec:\n  selector: {{cgroups: [\"{}\"]}}\n  defaultAction: allow\n  log: all\n  \
             egress:\n    - name: deny-doc\n      action: deny\n      \
             to: [{{cidr: 203.0.113.0/24}}, {{cidr: \"2001:db8:2::/48\"}}]\n",
            self.cgroup.relative_path()
        ))
    }

    pub fn start_agent(&self, extra: &[&str]) -> Agent {
        Agent::start(&self.policy(), &self.files.log(), extra)
    }

    pub fn unit_path(&self) -> String {
        format!("{}/audit-test.service", self.cgroup.relative_path())
    }
}

pub fn client_ip(target: IpAddr) -> IpAddr {
    if target.is_ipv4() {
        TestNet::CLIENT_V4.into()
    } else {
        TestNet::CLIENT_V6.into()
    }
}

/// The generation of the last `applied` policy record.
pub fn applied_generation(records: &[Value]) -> u64 {
    records
        .iter()
        .rev()
        .find(|r| r["kind"] == "policy" && r["action"] == "applied")
        .and_then(|r| r["generation"].as_u64())
        .unwrap_or_else(|| panic!("no applied policy record in {records:#?}"))
}

/// What a test expects of one connection record.
pub struct Expect {
    pub protocol: &'static str,
    pub dst: IpAddr,
    pub port: Option<u16>,
    pub denied: bool,
}

/// Asserts the record's fields: exact names, no nulls, absent fields omitted.
pub fn assert_fields(record: &Value, world: &World, generation: u64, expect: &Expect) {
    let object = record.as_object().unwrap_or_else(|| panic!("{record}"));
    assert!(
        object.values().all(|v| !v.is_null()),
        "a null field: {record}"
    );
    let allowed_keys = [
        "seq",
        "time",
        "kind",
        "direction",
        "verdict",
        "audit_verdict",
        "policy",
        "rule",
        "generation",
        "protocol",
        "src_ip",
        "src_port",
        "dst_ip",
        "dst_port",
        "dst_host",
        "cgroup",
        "unit",
        "uid",
        "pid",
        "comm",
        "dropped_packets",
    ];
    for key in object.keys() {
        assert!(
            allowed_keys.contains(&key.as_str()),
            "unknown field {key}: {record}"
        );
    }
    let time = record["time"].as_str().unwrap_or_default();
    let fraction = time.rsplit_once('.').map_or("", |(_, f)| f);
    assert!(
        fraction.len() == 10 && fraction.ends_with('Z'),
        "time {time}"
    );
    assert!(record["seq"].as_u64().is_some_and(|s| s > 0), "{record}");
    assert_eq!(
        record["verdict"],
        if expect.denied { "deny" } else { "allow" },
        "{record}"
    );
    assert_eq!(record["policy"], "test", "{record}");
    assert_eq!(
        record["rule"],
        if expect.denied { "deny-doc" } else { "default" },
        "{record}"
    );
    assert!(
        record.get("audit_verdict").is_none(),
        "no audit policy: {record}"
    );
    assert_eq!(record["generation"], generation, "{record}");
    // A connect() or sendto() refused by the kernel before it chose a source reports the
    // unspecified source address and no source port.
    let unspecified = record["src_ip"] == "0.0.0.0" || record["src_ip"] == "::";
    if !(expect.denied && unspecified) {
        assert_eq!(
            record["src_ip"],
            client_ip(expect.dst).to_string(),
            "{record}"
        );
    }
    assert_eq!(record["unit"], "audit-test.service", "{record}");
    assert_eq!(record["cgroup"], world.unit_path(), "{record}");
    assert_eq!(record["uid"], 0, "{record}");
    if unspecified {
        assert!(record.get("src_port").is_none(), "{record}");
        assert_eq!(record["dst_port"], expect.port.unwrap_or(0), "{record}");
    } else if let Some(port) = expect.port {
        assert!(
            record["src_port"].as_u64().is_some_and(|p| p > 0),
            "{record}"
        );
        assert_eq!(record["dst_port"], port, "{record}");
    } else {
        assert!(
            record.get("src_port").is_none() && record.get("dst_port").is_none(),
            "{record}"
        );
    }
    if expect.denied {
        assert!(
            record["dropped_packets"].as_u64().is_some_and(|n| n >= 1),
            "{record}"
        );
    } else {
        assert!(record.get("dropped_packets").is_none(), "{record}");
    }
}

/// Waits for one record per expectation, waits one more flush, and asserts each has exactly
/// one record with the right fields.
pub fn assert_one_record_each(world: &World, expects: &[Expect]) -> Vec<Value> {
    let log = world.files.log();
    let path = world.unit_path();
    let find = |records: &[Value], e: &Expect| {
        connections(records, &path, e.protocol, e.dst, e.port).len()
    };
    wait_records(&log, RECORDED, |records| {
        expects.iter().all(|e| find(records, e) > 0)
    });
    thread::sleep(FLUSH);
    let records = log_records(&log);
    let generation = applied_generation(&records);
    for expect in expects {
        let found = connections(&records, &path, expect.protocol, expect.dst, expect.port);
        assert_eq!(
            found.len(),
            1,
            "{} to {} port {:?}: {found:#?}",
            expect.protocol,
            expect.dst,
            expect.port
        );
        assert_fields(found[0], world, generation, expect);
    }
    records
}
