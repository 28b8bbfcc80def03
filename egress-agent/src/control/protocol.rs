//! The control socket's wire format: one JSON request per line, one JSON response per line.
//!
//! Request: `{"version":1,"method":"status"}`, or with parameters
//! `{"version":1,"method":"apply","params":{"paths":["/etc/egress/policies"],"dry_run":true}}`.
//! Response: `{"version":1,"ok":true,"result":{...}}` or
//! `{"version":1,"ok":false,"error":"..."}`. A request of another version is answered with
//! an error naming the version this agent speaks; fields are only ever added within a version.

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub method: Method,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Method {
    /// Read-only: [`Status`].
    Status,
    /// Read-only: [`Rules`], of one policy or all.
    Rules {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
    },
    /// Read-only: the reference evaluator's verdict on the active policy, as
    /// [`Explained`].
    Explain(ExplainParams),
    /// Root only: load policy from `paths` (read by the agent) and make it the active
    /// generation, or with `dry_run` only validate, compile and diff it. Answered with
    /// [`Applied`].
    Apply {
        paths: Vec<PathBuf>,
        #[serde(default)]
        dry_run: bool,
    },
}

impl Method {
    /// Whether the method changes what the agent enforces (or reads files as root).
    pub fn needs_root(&self) -> bool {
        matches!(self, Self::Apply { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainParams {
    pub cgroup: String,
    pub uid: u32,
    pub to: IpAddr,
    pub protocol: u8,
    pub port: u16,
    /// Names the destination was learned for (`egress explain --host`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn from_result(result: Result<serde_json::Value, String>) -> Self {
        match result {
            Ok(value) => Self {
                version: VERSION,
                ok: true,
                result: Some(value),
                error: None,
            },
            Err(error) => Self {
                version: VERSION,
                ok: false,
                result: None,
                error: Some(error),
            },
        }
    }
}

/// `status`: what the agent runs and enforces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub agent_version: String,
    /// The kernel object version the pins are kept under.
    pub program_version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub generation: u64,
    /// SHA-256 of the policy in force, as in its audit record.
    pub sha256: String,
    pub sources: Vec<String>,
    pub policies: Vec<PolicyStatus>,
    pub attach: AttachStatus,
    pub maps: Vec<MapUsage>,
    pub events: EventStats,
    pub reloads: ReloadStats,
    /// Hostname rules: DNS answers read and addresses learned.
    #[serde(default)]
    pub dns: DnsStats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub name: String,
    /// `enforce` or `audit`.
    pub mode: String,
    pub rules: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachStatus {
    /// The cgroup every program is attached to (the cgroup2 root).
    pub cgroup: String,
    pub programs: Vec<String>,
    /// `fresh` (attached by this agent) or `adopted` (pinned links of an earlier agent).
    pub attachment: String,
    pub bpffs: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapUsage {
    pub name: String,
    /// Entries of the active generation.
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStats {
    /// Connection records this agent wrote to the audit log.
    pub written: u64,
    /// Events the kernel could not queue (ring buffer full), since its maps were created.
    pub lost: u64,
}

/// The kernel's DNS counters (since its maps were created) and learned-address map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStats {
    /// DNS answers read.
    pub answers: u64,
    /// Addresses recorded or refreshed from answers whose names some host rule matched.
    pub learned: u64,
    /// Answers dropped because they could not be read completely (workloads with host rules).
    pub dropped: u64,
    /// Answers that could not be read, delivered (workloads without host rules).
    pub unread: u64,
    /// Entries in the learned-address map, and its capacity.
    pub learned_entries: u64,
    pub learned_capacity: u64,
    /// Learned addresses the map evicted when full (least recently used first).
    pub learned_evicted: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStats {
    pub applied: u64,
    pub rejected: u64,
}

/// `rules`: every compiled rule of the active generation with its hit counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub generation: u64,
    pub rules: Vec<RuleStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub id: u32,
    pub policy: String,
    /// The rule name, or `default` for the policy's default action.
    pub rule: String,
    pub action: String,
    pub mode: String,
    pub packets_allowed: u64,
    pub packets_denied: u64,
    pub connections_allowed: u64,
    pub connections_denied: u64,
    /// RFC 3339 time of the last decision by this rule; absent when it never decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_hit: Option<String>,
}

/// `apply`: the change, applied or (with `dry_run`) not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub dry_run: bool,
    /// The generation in force after the call (unchanged by a dry run).
    pub generation: u64,
    pub diff: PolicyDiff,
}

/// What a policy change adds, removes and changes. Rules are named `policy/rule`; a
/// policy's default action is its rule `default`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDiff {
    pub policies_added: Vec<String>,
    pub policies_removed: Vec<String>,
    pub policies_changed: Vec<String>,
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    pub rules_changed: Vec<String>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        let Self {
            policies_added,
            policies_removed,
            policies_changed,
            rules_added,
            rules_removed,
            rules_changed,
        } = self;
        policies_added.is_empty()
            && policies_removed.is_empty()
            && policies_changed.is_empty()
            && rules_added.is_empty()
            && rules_removed.is_empty()
            && rules_changed.is_empty()
    }
}

/// `explain`: the verdict as `egress explain --json` prints it, and as text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explained {
    pub json: serde_json::Value,
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_shape() {
        let status: Request =
            serde_json::from_str(r#"{"version":1,"method":"status"}"#).expect("parses");
        assert_eq!(status.method, Method::Status);
        let apply: Request = serde_json::from_str(
            r#"{"version":1,"method":"apply","params":{"paths":["/p"],"dry_run":true}}"#,
        )
        .expect("parses");
        assert_eq!(
            apply.method,
            Method::Apply {
                paths: vec![PathBuf::from("/p")],
                dry_run: true
            }
        );
        assert!(apply.method.needs_root());
        let rules = Request {
            version: VERSION,
            method: Method::Rules { policy: None },
        };
        let line = serde_json::to_string(&rules).expect("serializes");
        assert_eq!(line, r#"{"version":1,"method":"rules","params":{}}"#);
        assert_eq!(
            serde_json::from_str::<Request>(&line).expect("round trip"),
            rules
        );
        assert!(serde_json::from_str::<Request>(r#"{"version":1,"method":"reboot"}"#).is_err());
    }

    #[test]
    fn errors_omit_the_result() {
        let response = Response::from_result(Err("no".into()));
        assert_eq!(
            serde_json::to_string(&response).expect("serializes"),
            r#"{"version":1,"ok":false,"error":"no"}"#
        );
    }
}
