//! The Prometheus endpoint (`--metrics ADDR`): the series below, in the text exposition
//! format, plus `/healthz` and `/readyz` for probes (see [`http`]).
//!
//! Every value is read when scraped (the kernel's per-CPU counters, the enforcer's state),
//! so nothing is kept twice and a scrape always agrees with `egress status` and `egress
//! rules`. The format is written here directly: it is a few lines of text per series.

pub mod http;

use std::fmt::Write as _;

use crate::control::protocol::{Rules, Status};

/// The exposition text for one scrape.
pub fn render(status: &Status, rules: &Rules) -> String {
    let mut out = Exposition::default();
    out.family(
        "egress_decisions_total",
        "counter",
        "Connections (and rejected calls) decided, by policy, rule and verdict.",
    );
    for rule in &rules.rules {
        for (verdict, value) in [
            ("allow", rule.connections_allowed),
            ("deny", rule.connections_denied),
        ] {
            out.sample(
                "egress_decisions_total",
                &[
                    ("policy", &rule.policy),
                    ("rule", &rule.rule),
                    ("verdict", verdict),
                ],
                value,
            );
        }
    }
    out.family(
        "egress_packets_total",
        "counter",
        "Packets decided, by policy, rule and verdict.",
    );
    for rule in &rules.rules {
        for (verdict, value) in [
            ("allow", rule.packets_allowed),
            ("deny", rule.packets_denied),
        ] {
            out.sample(
                "egress_packets_total",
                &[
                    ("policy", &rule.policy),
                    ("rule", &rule.rule),
                    ("verdict", verdict),
                ],
                value,
            );
        }
    }
    out.single(
        "egress_events_written_total",
        "counter",
        "Connection records this agent wrote to the audit log.",
        status.events.written,
    );
    out.single(
        "egress_events_lost_total",
        "counter",
        "Events the kernel could not queue (ring buffer full).",
        status.events.lost,
    );
    out.family(
        "egress_reloads_total",
        "counter",
        "Policy reloads, by result.",
    );
    out.sample(
        "egress_reloads_total",
        &[("result", "applied")],
        status.reloads.applied,
    );
    out.sample(
        "egress_reloads_total",
        &[("result", "rejected")],
        status.reloads.rejected,
    );
    out.family(
        "egress_map_entries",
        "gauge",
        "Entries of the generation in force, by map.",
    );
    for map in &status.maps {
        out.sample("egress_map_entries", &[("map", &map.name)], map.entries);
    }
    out.family(
        "egress_map_capacity",
        "gauge",
        "Capacity of each policy map.",
    );
    for map in &status.maps {
        out.sample("egress_map_capacity", &[("map", &map.name)], map.capacity);
    }
    let dns = &status.dns;
    for (name, kind, help, value) in [
        (
            "egress_dns_answers_total",
            "counter",
            "DNS answers the kernel read.",
            dns.answers,
        ),
        (
            "egress_dns_learned_total",
            "counter",
            "Addresses recorded or refreshed from answers whose names a host rule matched.",
            dns.learned,
        ),
        (
            "egress_dns_dropped_total",
            "counter",
            "DNS answers dropped: not completely readable, for workloads with host rules.",
            dns.dropped,
        ),
        (
            "egress_dns_unread_total",
            "counter",
            "DNS answers not completely readable, delivered (no host rules apply).",
            dns.unread,
        ),
        (
            "egress_dns_learned_entries",
            "gauge",
            "Entries in the learned-address map.",
            dns.learned_entries,
        ),
        (
            "egress_dns_learned_capacity",
            "gauge",
            "Capacity of the learned-address map.",
            dns.learned_capacity,
        ),
        (
            "egress_dns_learned_evicted_total",
            "counter",
            "Learned addresses evicted (least recently used) because the map was full.",
            dns.learned_evicted,
        ),
    ] {
        out.single(name, kind, help, value);
    }
    out.single(
        "egress_generation",
        "gauge",
        "The policy generation in force.",
        status.generation,
    );
    out.single(
        "egress_policies",
        "gauge",
        "Policies in force.",
        status.policies.len() as u64,
    );
    out.single(
        "egress_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        status.uptime_seconds,
    );
    out.family(
        "egress_build_info",
        "gauge",
        "The agent and kernel program versions.",
    );
    out.sample(
        "egress_build_info",
        &[
            ("version", &status.agent_version),
            ("program_version", &status.program_version),
        ],
        1,
    );
    out.text
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, label)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape(label));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline (exposition format 0.0.4).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{
        AttachStatus, DnsStats, EventStats, MapUsage, ReloadStats, RuleStatus,
    };

    #[test]
    fn every_series_is_rendered_with_escaped_labels() {
        let status = Status {
            agent_version: "0.1.0".into(),
            program_version: "abc".into(),
            pid: 1,
            uptime_seconds: 5,
            generation: 3,
            sha256: String::new(),
            sources: Vec::new(),
            policies: Vec::new(),
            attach: AttachStatus {
                cgroup: "/sys/fs/cgroup".into(),
                programs: Vec::new(),
                attachment: "fresh".into(),
                bpffs: "/sys/fs/bpf/egress".into(),
            },
            maps: vec![MapUsage {
                name: "EGRESS_PORTS".into(),
                entries: 7,
                capacity: 9,
            }],
            events: EventStats {
                written: 11,
                lost: 2,
            },
            reloads: ReloadStats {
                applied: 4,
                rejected: 1,
            },
            dns: DnsStats {
                learned_evicted: 8,
                ..DnsStats::default()
            },
        };
        let rules = Rules {
            generation: 3,
            rules: vec![RuleStatus {
                id: 1,
                policy: "p".into(),
                rule: "say \"hi\"".into(),
                action: "deny".into(),
                mode: "enforce".into(),
                packets_allowed: 0,
                packets_denied: 12,
                connections_allowed: 0,
                connections_denied: 6,
                last_hit: None,
            }],
        };
        let text = render(&status, &rules);
        for line in [
            r#"egress_decisions_total{policy="p",rule="say \"hi\"",verdict="deny"} 6"#,
            r#"egress_packets_total{policy="p",rule="say \"hi\"",verdict="deny"} 12"#,
            "egress_events_written_total 11",
            "egress_events_lost_total 2",
            r#"egress_reloads_total{result="rejected"} 1"#,
            r#"egress_map_entries{map="EGRESS_PORTS"} 7"#,
            r#"egress_map_capacity{map="EGRESS_PORTS"} 9"#,
            "egress_generation 3",
            "egress_dns_learned_evicted_total 8",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }
}
