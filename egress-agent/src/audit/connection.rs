//! Kernel connection events, decoded and enriched into records.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use egress_common::{ConnectionEvent, Direction, NO_RULE};

use super::{
    KernelClock,
    clock::rfc3339,
    record::{ConnectionRecord, protocol_name, verdict_name},
};
use crate::cgroup::{PathCache, unit_of};

/// Reads one event from a ring buffer item; `None` when the size does not match, which
/// means the agent and the kernel program disagree on the layout.
pub fn decode_event(bytes: &[u8]) -> Option<ConnectionEvent> {
    if bytes.len() < size_of::<ConnectionEvent>() {
        return None;
    }
    // SAFETY: the length is checked above; ConnectionEvent is plain data valid for every bit
    // pattern, and read_unaligned does not require the ring buffer's alignment.
    Some(unsafe { bytes.as_ptr().cast::<ConnectionEvent>().read_unaligned() })
}

/// Rule id → (policy name, rule name) in one generation.
pub type GenerationRules = HashMap<u32, (String, String)>;

/// The rule names of each generation still referenced by events in flight.
#[derive(Debug, Default)]
pub struct RuleNames {
    generations: BTreeMap<u64, Arc<GenerationRules>>,
}

impl RuleNames {
    /// Generations kept: events of older ones are named only by id.
    const KEEP: usize = 8;

    pub fn insert(&mut self, generation: u64, names: GenerationRules) {
        self.generations.insert(generation, Arc::new(names));
        while self.generations.len() > Self::KEEP {
            self.generations.pop_first();
        }
    }

    fn lookup(&self, generation: u64, rule: u32) -> Option<&(String, String)> {
        if rule == NO_RULE {
            return None;
        }
        self.generations.get(&generation)?.get(&rule)
    }
}

fn address(ip_version: u8, bytes: [u8; 16]) -> IpAddr {
    if ip_version == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Turns an event into a record (without `seq`, which the sink assigns).
pub fn enrich(
    event: &ConnectionEvent,
    clock: &KernelClock,
    rules: &RuleNames,
    cgroups: &mut PathCache,
) -> ConnectionRecord {
    let ConnectionEvent {
        boot_ns,
        generation,
        cgroup_id,
        socket_cookie: _,
        rule,
        audit_rule: _,
        uid,
        pid,
        src,
        dst,
        src_port,
        dst_port,
        ip_version,
        protocol,
        verdict,
        audit_verdict,
        direction,
        icmp_type: _,
        _pad,
        dropped_packets,
        comm,
    } = *event;
    let has_ports = matches!(protocol, 6 | 17);
    let cgroup = cgroups
        .path_of(cgroup_id)
        .map_or_else(|| format!("id:{cgroup_id}"), str::to_owned);
    let unit = unit_of(&cgroup).map(str::to_owned);
    let (policy, rule) = rules
        .lookup(generation, rule)
        .map(|(policy, rule)| (policy.clone(), rule.clone()))
        .unzip();
    let comm_len = comm
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(comm.len());
    ConnectionRecord {
        seq: 0,
        time: rfc3339(clock.wall(boot_ns)),
        kind: "connection",
        direction: if direction == Direction::Ingress as u8 {
            "ingress"
        } else {
            "egress"
        },
        verdict: verdict_name(verdict).unwrap_or("allow"),
        audit_verdict: verdict_name(audit_verdict),
        policy,
        rule,
        generation,
        protocol: protocol_name(protocol),
        src_ip: address(ip_version, src),
        // A connect() refused before the kernel chose a source has no source port (and an
        // unspecified source address).
        src_port: (has_ports && src_port != 0).then_some(src_port),
        dst_ip: address(ip_version, dst),
        dst_port: has_ports.then_some(dst_port),
        cgroup,
        unit,
        // Filled in by the event reader from the Kubernetes watch's pods (agent::events).
        namespace: None,
        pod: None,
        container: None,
        // Filled in by the event reader from the DNS answers the kernel read (agent::dns).
        dst_host: None,
        dst_names: Vec::new(),
        uid,
        pid: (pid != 0).then_some(pid),
        comm: (comm_len > 0).then(|| String::from_utf8_lossy(&comm[..comm_len]).into_owned()),
        dropped_packets: (dropped_packets > 0).then_some(dropped_packets),
    }
}

#[cfg(test)]
mod tests {
    use egress_common::verdict;

    use super::*;
    use crate::cgroup::Hierarchy;

    fn event() -> ConnectionEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        ConnectionEvent {
            boot_ns: 0,
            generation: 3,
            cgroup_id: 123_456_789,
            socket_cookie: 1,
            rule: 7,
            audit_rule: NO_RULE,
            uid: 1000,
            pid: 42,
            src: [0; 16],
            dst: [203, 0, 113, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 0,
            dst_port: 443,
            ip_version: 4,
            protocol: 6,
            verdict: verdict::DENY,
            audit_verdict: verdict::NONE,
            direction: Direction::Egress as u8,
            icmp_type: 0,
            _pad: [0; 2],
            dropped_packets: 2,
            comm,
        }
    }

    #[test]
    fn enriches_names_process_and_omits_what_is_unknown() {
        // A directory tree stands in for the cgroup2 mount: ids are inode numbers.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cgroup.procs"), "").expect("procs");
        let unit = dir.path().join("system.slice/app.service");
        std::fs::create_dir_all(&unit).expect("mkdir");
        let cgroup_id =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&unit).expect("stat"));
        let mut cgroups = PathCache::new(Hierarchy::new(dir.path().to_owned()).expect("dir"));
        let mut rules = RuleNames::default();
        rules.insert(3, [(7, ("p".to_owned(), "r".to_owned()))].into());
        let record = enrich(
            &ConnectionEvent {
                cgroup_id,
                ..event()
            },
            &KernelClock::boot(),
            &rules,
            &mut cgroups,
        );
        let json = serde_json::to_value(&record).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "seq": 0, "time": json["time"], "kind": "connection", "direction": "egress",
                "verdict": "deny", "policy": "p", "rule": "r", "generation": 3,
                "protocol": "tcp", "src_ip": "0.0.0.0", "dst_ip": "203.0.113.10",
                "dst_port": 443, "cgroup": "/system.slice/app.service", "unit": "app.service",
                "uid": 1000, "pid": 42,
                "comm": "curl", "dropped_packets": 2
            })
        );
        // Another generation's rule ids name nothing; an unknown cgroup is named by its id.
        let other = ConnectionEvent {
            generation: 4,
            ..event()
        };
        let record = enrich(&other, &KernelClock::boot(), &rules, &mut cgroups);
        assert_eq!((record.policy, record.rule), (None, None));
        assert_eq!(
            (record.cgroup.as_str(), record.unit),
            ("id:123456789", None)
        );
    }
}
