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
