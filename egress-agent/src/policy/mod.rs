//! The policy language: the validated model, loading from YAML, and lints.
//!
//! See `docs/policy.md` for the format and the semantics that [`crate::eval`] implements.

mod dns;
mod error;
pub mod host;
#[cfg(test)]
mod host_tests;
mod lint;
mod load;
pub mod net;
mod pods;
mod probe;
mod raw;
mod raw_ingress;
mod raw_pods;
mod scalar;
mod schema;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

pub use error::{Diagnostic, LoadError, Location};
pub use host::{canonical_name, host_matches};
pub use load::{load, load_paths, parse_str, source_files};
pub use net::{Entity, Family, Prefix};
pub use pods::{LabelOperator, LabelRequirement, PodSelector};
pub use schema::spec_schema;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// Which decisions of a policy become events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    #[default]
    All,
    Deny,
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    #[default]
    Any,
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Inclusive destination port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// Which workloads a policy applies to; every non-empty condition must hold. (The loader
/// rejects empty lists, so empty always means "key absent".)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Cgroup v2 paths (normalized, starting with `/`); descendants included.
    pub cgroups: Vec<String>,
    /// systemd unit names, matched against any path component.
    pub units: Vec<String>,
    pub uids: Vec<u32>,
    /// Kubernetes pods; they select the cgroup paths the agent resolves for them, and nothing
    /// where there is no resolution (outside `--kubernetes`, or no matching pod on the node).
    pub pods: Option<PodSelector>,
    /// Cgroup paths (normalized) that the selector does not select, nor anything below them,
    /// whatever else holds. Never read from a policy document (not part of the schema): the
    /// agent sets it on policies it makes itself, such as Kubernetes mode's policy for pods it
    /// does not know yet, which leaves out the pods it knows. Only honoured beside a cgroup,
    /// unit or pod condition ([`Self::selects_cgroups`]).
    pub excluded: Vec<String>,
}

impl Selector {
    /// Whether the selector names cgroups at all (by path, unit or pod).
    pub fn selects_cgroups(&self) -> bool {
        !self.cgroups.is_empty() || !self.units.is_empty() || self.pods.is_some()
    }

    /// The cgroup part of the selector (paths, units, pods) holds for `path`, with no pod
    /// resolved: a pod selector then selects nothing.
    pub fn matches_cgroup(&self, path: &str) -> bool {
        self.matches_cgroup_with(path, &[])
    }

    /// The cgroup part of the selector holds for `path` when the pod selector (if any) has
    /// resolved to `pod_paths`; a path selects itself and its descendants, and an
    /// [excluded](Self::excluded) path deselects itself and its descendants.
    pub fn matches_cgroup_with(&self, path: &str, pod_paths: &[String]) -> bool {
        // Exclusions narrow a cgroup selection; with none to narrow, the policy is global.
        if self.selects_cgroups() && self.is_excluded(path) {
            return false;
        }
        let cgroup_ok =
            self.cgroups.is_empty() || self.cgroups.iter().any(|c| path_is_below(path, c));
        let unit_ok = self.units.is_empty()
            || path
                .split('/')
                .any(|part| self.units.iter().any(|u| u == part));
        let pod_ok = self.pods.is_none() || pod_paths.iter().any(|p| path_is_below(path, p));
        cgroup_ok && unit_ok && pod_ok
    }

    /// Whether `path` is, or lies below, one of the [excluded](Self::excluded) paths.
    pub fn is_excluded(&self, path: &str) -> bool {
        self.excluded.iter().any(|e| path_is_below(path, e))
    }

    pub fn matches_uid(&self, uid: u32) -> bool {
        self.uids.is_empty() || self.uids.contains(&uid)
    }

    pub fn matches(&self, path: &str, uid: u32) -> bool {
        self.matches_cgroup(path) && self.matches_uid(uid)
    }
}

/// Whether `path` equals `ancestor` or lies below it, component-wise.
pub fn path_is_below(path: &str, ancestor: &str) -> bool {
    let path = path.trim_end_matches('/');
    let ancestor = ancestor.trim_end_matches('/');
    path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// One entry of a rule's `to` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Cidr {
        prefix: Prefix,
        except: Vec<Prefix>,
    },
    Entity(Entity),
    /// A host pattern: an exact name or `*.` and a base name, canonical (lowercase, no
    /// trailing dot) when loaded. It holds the addresses the workload learned from DNS
    /// answers for names it matches ([`host_matches`]).
    Host(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Global id (see [`PolicySet::new`]).
    pub id: u32,
    pub name: String,
    pub action: Action,
    /// The peers the rule names: destinations (`to:`) of an egress rule, sources (`from:`) of
    /// an ingress rule. Ingress rules never hold [`Destination::Host`] (the loader rejects it).
    pub to: Vec<Destination>,
    pub protocol: Protocol,
    /// `None`: every port. Destination ports of egress packets; the local port (also the
    /// packet's destination port) of inbound ones.
    pub ports: Option<Vec<PortRange>>,
}

impl Rule {
    /// Calls `f` with every enforced address entry: a prefix and the prefixes cut out of it.
    pub fn for_each_prefix(&self, mut f: impl FnMut(&Prefix, &[Prefix])) {
        for dest in &self.to {
            match dest {
                Destination::Cidr { prefix, except } => f(prefix, except),
                Destination::Entity(e) => e.prefixes().iter().for_each(|p| f(p, &[])),
                Destination::Host(_) => {}
            }
        }
    }

    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        let mut hit = false;
        self.for_each_prefix(|p, except| {
            hit = hit || (p.contains_ip(ip) && !except.iter().any(|e| e.contains_ip(ip)));
        });
        hit
    }

    /// Whether the rule's protocol and ports admit a packet (`port` is ignored unless TCP/UDP).
    pub fn matches_protocol(&self, protocol: u8, port: u16) -> bool {
        let ports_ok = || {
            self.ports
                .as_ref()
                .is_none_or(|r| r.iter().any(|r| r.contains(port)))
        };
        match self.protocol {
            Protocol::Tcp => protocol == IPPROTO_TCP && ports_ok(),
            Protocol::Udp => protocol == IPPROTO_UDP && ports_ok(),
            Protocol::Icmp => protocol == IPPROTO_ICMP,
            Protocol::Icmpv6 => protocol == IPPROTO_ICMPV6,
            Protocol::Any if self.ports.is_none() => true,
            Protocol::Any => (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) && ports_ok(),
        }
    }

    /// The rule's host patterns.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.to.iter().filter_map(|d| match d {
            Destination::Host(pattern) => Some(pattern.as_str()),
            _ => None,
        })
    }

    /// Whether one of the rule's host patterns matches one of `names`.
    pub fn matches_names(&self, names: &[String]) -> bool {
        self.hosts()
            .any(|pattern| names.iter().any(|name| host_matches(pattern, name)))
    }

    /// The rule matches a packet to `ip` whose names (see [`Self::matches_named`]) are none.
    pub fn matches(&self, ip: IpAddr, protocol: u8, port: u16) -> bool {
        self.matches_named(ip, &[], protocol, port)
    }

    /// The rule matches a packet to `ip`, an address the workload learned for `names`: its
    /// protocol and ports admit the packet, and its address entries hold `ip` or one of its
    /// host patterns matches one of the names.
    pub fn matches_named(&self, ip: IpAddr, names: &[String], protocol: u8, port: u16) -> bool {
        self.matches_protocol(protocol, port) && (self.matches_ip(ip) || self.matches_names(names))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub selector: Selector,
    pub mode: Mode,
    pub default_action: Action,
    pub log: LogMode,
    /// `spec.egress`.
    pub rules: Vec<Rule>,
    /// Id of `name/default`.
    pub default_id: u32,
    /// `spec.inbound`: what happens to a new inbound connection no ingress rule matches.
    pub inbound: Action,
    /// `spec.ingress`: rules whose `to` holds the sources (`from:`).
    pub ingress: Vec<Rule>,
    /// Id of `name/inbound-default`; [`egress_common::NO_RULE`] unless the policy
    /// [restricts inbound traffic](Self::restricts_inbound).
    pub inbound_default_id: u32,
}

/// Name of the rule `spec.dns.resolvers` adds to allow DNS to the resolvers.
pub const DNS_RESOLVERS: &str = "dns-resolvers";
/// Name of the rule `spec.dns.resolvers` adds to deny DNS to every other address.
pub const DNS_OTHER_RESOLVERS: &str = "dns-other-resolvers";

/// Rule name of a policy's inbound default in the rule table (`<policy>/inbound-default`).
pub const INBOUND_DEFAULT: &str = "inbound-default";

impl Policy {
    /// Whether the policy takes part in judging new inbound connections: `inbound: deny`, or
    /// any ingress rule. Other policies say nothing about inbound traffic.
    pub fn restricts_inbound(&self) -> bool {
        self.inbound == Action::Deny || !self.ingress.is_empty()
    }
}

/// One line of the rule id table: what an id in an event stands for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleInfo {
    pub id: u32,
    pub policy: String,
    /// The rule name, or `default`.
    pub rule: String,
    #[serde(serialize_with = "ser_action")]
    pub action: Action,
    #[serde(serialize_with = "ser_mode")]
    pub mode: Mode,
}

fn ser_action<S: serde::Serializer>(a: &Action, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.as_str())
}

fn ser_mode<S: serde::Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match m {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    })
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// Loaded policies, sorted by name, with their rule ids assigned, and the load's warnings.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    pub warnings: Vec<Diagnostic>,
}

impl PolicySet {
    /// Sorts by name and assigns ids: per policy, its egress rules in file order, its ingress
    /// rules in file order, its default, then its inbound default if it
    /// [restricts inbound traffic](Policy::restricts_inbound) (so policies that do not keep
    /// the ids they always had). Names must be unique (the loader checks).
    pub fn new(mut policies: Vec<Policy>) -> Self {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut next = 1;
        for policy in &mut policies {
            for rule in policy.rules.iter_mut().chain(&mut policy.ingress) {
                rule.id = next;
                next += 1;
            }
            policy.default_id = next;
            next += 1;
            policy.inbound_default_id = egress_common::NO_RULE;
            if policy.restricts_inbound() {
                policy.inbound_default_id = next;
                next += 1;
            }
        }
        Self {
            policies,
            warnings: Vec::new(),
        }
    }

    pub fn rule_table(&self) -> Vec<RuleInfo> {
        let mut table = Vec::new();
        for p in &self.policies {
            for r in p.rules.iter().chain(&p.ingress) {
                table.push(RuleInfo {
                    id: r.id,
                    policy: p.name.clone(),
                    rule: r.name.clone(),
                    action: r.action,
                    mode: p.mode,
                });
            }
            table.push(RuleInfo {
                id: p.default_id,
                policy: p.name.clone(),
                rule: "default".into(),
                action: p.default_action,
                mode: p.mode,
            });
            if p.restricts_inbound() {
                table.push(RuleInfo {
                    id: p.inbound_default_id,
                    policy: p.name.clone(),
                    rule: INBOUND_DEFAULT.into(),
                    action: p.inbound,
                    mode: p.mode,
                });
            }
        }
        table
    }

    /// Rules of both directions.
    pub fn rule_count(&self) -> usize {
        self.policies
            .iter()
            .map(|p| p.rules.len() + p.ingress.len())
            .sum()
    }

    /// Ingress rules alone.
    pub fn ingress_rule_count(&self) -> usize {
        self.policies.iter().map(|p| p.ingress.len()).sum()
    }

    /// Policies that [restrict inbound traffic](Policy::restricts_inbound).
    pub fn inbound_policy_count(&self) -> usize {
        self.policies
            .iter()
            .filter(|p| p.restricts_inbound())
            .count()
    }

    /// Enforced prefixes named by all rules of both directions (entities expanded, excepts
    /// counted).
    pub fn prefix_count(&self) -> usize {
        let mut count = 0;
        for rule in self
            .policies
            .iter()
            .flat_map(|p| p.rules.iter().chain(&p.ingress))
        {
            rule.for_each_prefix(|_, except| count += 1 + except.len());
        }
        count
    }
}
