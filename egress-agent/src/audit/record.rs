//! Audit records: one JSON object a line, with field names fixed by the audit log format
//! (docs/audit.md). Absent fields are omitted, never null.

use std::net::IpAddr;

use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub seq: u64,
    pub time: String,
    pub kind: &'static str,
    pub direction: &'static str,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_verdict: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub generation: u64,
    pub protocol: String,
    pub src_ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    pub dst_ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    pub cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Kubernetes: the namespace, pod and container the cgroup belongs to, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The name the workload asked DNS for when it learned `dst_ip`, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_host: Option<String>,
    /// Every name the workload learned `dst_ip` for (question names and CNAME targets), sorted:
    /// a host rule for any of them took part in the decision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dst_names: Vec<String>,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_packets: Option<u32>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PolicyRecord {
    pub seq: u64,
    pub time: String,
    pub kind: &'static str,
    /// "applied" or "rejected".
    pub action: &'static str,
    pub generation: u64,
    pub sha256: String,
    pub sources: Vec<String>,
    pub policies: usize,
    pub rules: usize,
    pub prefixes: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<u32>,
}

/// Sources a policy record lists; more are summarised in one last entry.
pub const MAX_RECORD_SOURCES: usize = 16;
/// Characters kept of each source and of the error of a policy record.
pub const MAX_SOURCE_CHARS: usize = 256;
pub const MAX_ERROR_CHARS: usize = 4096;

impl PolicyRecord {
    /// The record with its sources and error cut to [`MAX_RECORD_SOURCES`],
    /// [`MAX_SOURCE_CHARS`] and [`MAX_ERROR_CHARS`]: they can hold what a control client
    /// sent, which must not decide how much the agent writes.
    pub fn capped(mut self) -> Self {
        let total = self.sources.len();
        if total > MAX_RECORD_SOURCES {
            self.sources.truncate(MAX_RECORD_SOURCES - 1);
            let more = total - self.sources.len();
            self.sources.push(format!("... and {more} more"));
        }
        for source in &mut self.sources {
            cut(source, MAX_SOURCE_CHARS);
        }
        if let Some(error) = &mut self.error {
            cut(error, MAX_ERROR_CHARS);
        }
        self
    }
}

/// Keeps the first `max` characters of `text`, marking the cut with `...`.
fn cut(text: &mut String, max: usize) {
    if let Some((end, _)) = text.char_indices().nth(max) {
        text.truncate(end);
        text.push_str("...");
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LossRecord {
    pub seq: u64,
    pub time: String,
    pub kind: &'static str,
    pub lost: u64,
    pub reason: String,
}

/// Name of an IP protocol number as the policy language spells it.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        other => other.to_string(),
    }
}

pub fn verdict_name(verdict: u8) -> Option<&'static str> {
    match verdict {
        egress_common::verdict::ALLOW => Some("allow"),
        egress_common::verdict::DENY => Some("deny"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sources: Vec<String>, error: Option<String>) -> PolicyRecord {
        PolicyRecord {
            seq: 0,
            time: String::new(),
            kind: "policy",
            action: "rejected",
            generation: 1,
            sha256: String::new(),
            sources,
            policies: 0,
            rules: 0,
            prefixes: 0,
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            error,
            by: Some(1000),
        }
    }

    #[test]
    fn capping_bounds_sources_and_error_and_keeps_small_records_as_they_are() {
        // What a refused client could send: thousands of long paths, quoted in the error.
        let long = format!("/tmp/{}", "é".repeat(10_000));
        let sources = vec![long.clone(); 5_000];
        let error = format!("cannot read {long}");
        let capped = record(sources, Some(error)).capped();
        assert_eq!(capped.sources.len(), MAX_RECORD_SOURCES);
        assert_eq!(
            capped.sources.last().map(String::as_str),
            Some("... and 4985 more")
        );
        for source in &capped.sources {
            assert!(source.chars().count() <= MAX_SOURCE_CHARS + 3, "{source}");
        }
        assert!(capped.sources[0].starts_with("/tmp/éé") && capped.sources[0].ends_with("..."));
        let error = capped.error.as_deref().unwrap_or_default();
        assert_eq!(error.chars().count(), MAX_ERROR_CHARS + 3);
        let line = serde_json::to_string(&capped).expect("encodes");
        assert!(line.len() < 32 << 10, "{} bytes", line.len());

        let small = record(vec!["/etc/egress/policies".into()], Some("bad port".into()));
        assert_eq!(small.clone().capped(), small);
        let exact = record(vec!["x".repeat(MAX_SOURCE_CHARS); MAX_RECORD_SOURCES], None);
        assert_eq!(exact.clone().capped(), exact);
    }
}
