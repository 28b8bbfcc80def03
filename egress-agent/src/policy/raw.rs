//! The YAML document shape, checked while deserializing so that errors carry positions.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};

use super::probe::{self, PROBE_MESSAGE};
use super::raw_ingress::RawIngressRule;
use super::raw_pods::RawPods;
use super::scalar::{
    ApiVersion, CgroupPath, HostName, Kind, PolicyName, PortItem, PrefixDe, RuleName, Uid,
    UnitName, rejected,
};
use super::{Action, Destination, Entity, LogMode, Mode, Policy, Protocol, Rule, Selector};

/// A mapping that is checked as a whole once read; errors point at the mapping.
pub(crate) trait Checked: Sized {
    type Out;
    /// Runs before the mapping is read (probes hook in here).
    fn enter() -> Result<(), String> {
        Ok(())
    }
    fn check(self) -> Result<Self::Out, String>;
}

pub(crate) struct Valid<T: Checked>(pub T::Out);

impl<'de, T: Checked + Deserialize<'de>> Deserialize<'de> for Valid<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Checked + Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Valid<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Valid<T>, A::Error> {
                T::enter().map_err(de::Error::custom)?;
                let raw = T::deserialize(MapAccessDeserializer::new(map))?;
                raw.check().map(Valid).map_err(de::Error::custom)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The schema of what is checked; the checks themselves stay in the parser.
impl<T: Checked + JsonSchema> JsonSchema for Valid<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A list that must not be empty; the error points at the list.
pub(crate) struct NonEmpty<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NonEmpty<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = NonEmpty<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                if items.is_empty() {
                    return Err(de::Error::custom(
                        "empty list: list at least one entry, or leave the key out",
                    ));
                }
                Ok(NonEmpty(items))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for NonEmpty<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("NonEmpty_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "array",
            "items": generator.subschema_for::<T>(),
            "minItems": 1,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawDocument {
    #[expect(dead_code, reason = "validated while deserializing; nothing to keep")]
    api_version: ApiVersion,
    #[expect(dead_code, reason = "validated while deserializing; nothing to keep")]
    kind: Kind,
    metadata: RawMetadata,
    spec: RawSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    name: PolicyName,
}

fn from_in_egress<'de, D: Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
    rejected(
        d,
        "egress rules match destinations: use `to:` instead of `from:` (or move the rule under `spec.ingress`)".into(),
    )
}

// Doc comments on these types become the CRD's descriptions (`kubernetes::crd`).

/// Which workloads the policy governs and what their egress may reach; see docs/policy.md.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSpec {
    /// Omitted: every process on the node. Several keys must all hold.
    selector: Option<RawSelector>,
    /// enforce (default) drops what the policy denies; audit only records it.
    mode: Option<Mode>,
    /// Decision when no rule matches (default allow).
    default_action: Option<Action>,
    /// Which decisions become events (default all).
    log: Option<LogMode>,
    /// Rules; a matching deny beats any allow.
    egress: Option<Vec<Valid<RawRule>>>,
    /// New inbound connections and flows no ingress rule matches: allow (default) or deny
    /// (outbound-only: replies to the workload's own connections still pass).
    inbound: Option<Action>,
    /// Rules for new inbound connections by source and local port; a matching deny beats
    /// any allow.
    ingress: Option<Vec<Valid<RawIngressRule>>>,
    /// The workloads' DNS resolvers: adds the rules `dns-resolvers` (allow port 53 to them)
    /// and `dns-other-resolvers` (deny port 53 to any other address).
    dns: Option<RawDns>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawDns {
    /// Addresses or CIDR prefixes of the resolvers the workloads may ask.
    resolvers: NonEmpty<PrefixDe>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    /// cgroup v2 paths relative to the cgroup2 root; each selects its subtree.
    cgroups: Option<NonEmpty<CgroupPath>>,
    /// systemd units, wherever they sit in the cgroup tree.
    units: Option<NonEmpty<UnitName>>,
    /// Socket owner uids.
    uids: Option<NonEmpty<Uid>>,
    /// Kubernetes pods (agent in Kubernetes mode); they select the pods' cgroups.
    pods: Option<Valid<RawPods>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: RuleName,
    action: Action,
    to: NonEmpty<Valid<RawTo>>,
    protocol: Option<Protocol>,
    ports: Option<NonEmpty<PortItem>>,
    #[serde(default, deserialize_with = "from_in_egress")]
    #[schemars(skip)]
    #[expect(dead_code, reason = "present only to reject the key")]
    from: Option<()>,
}

impl Checked for RawRule {
    type Out = Rule;

    fn enter() -> Result<(), String> {
        probe::enter_rule();
        Ok(())
    }

    fn check(self) -> Result<Rule, String> {
        let Self {
            name,
            action,
            to,
            protocol,
            ports,
            from: _,
        } = self;
        let to = to.0.into_iter().map(|t| t.0).collect();
        build_rule(name.0, action, to, protocol, ports)
    }
}

/// A rule of either direction from its parsed parts; `peers` are the `to` or `from` entries.
pub(crate) fn build_rule(
    name: String,
    action: Action,
    peers: Vec<Destination>,
    protocol: Option<Protocol>,
    ports: Option<NonEmpty<PortItem>>,
) -> Result<Rule, String> {
    let protocol = protocol.unwrap_or_default();
    if ports.is_some() && matches!(protocol, Protocol::Icmp | Protocol::Icmpv6) {
        return Err(format!(
            "rule `{name}`: ports only apply to tcp, udp or any, not to {}",
            if protocol == Protocol::Icmp {
                "icmp"
            } else {
                "icmpv6"
            }
        ));
    }
    let mut ports = ports.map(|p| p.0.into_iter().map(|p| p.0).collect::<Vec<_>>());
    if let Some(p) = &mut ports {
        p.sort_unstable();
        p.dedup();
    }
    Ok(Rule {
        id: 0,
        name,
        action,
        to: peers,
        protocol,
        ports,
    })
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawTo {
    cidr: Option<PrefixDe>,
    except: Option<Vec<PrefixDe>>,
    entity: Option<Entity>,
    host: Option<HostName>,
}

impl Checked for RawTo {
    type Out = Destination;

    fn enter() -> Result<(), String> {
        if probe::enter_to() {
            return Err(PROBE_MESSAGE.into());
        }
        Ok(())
    }

    fn check(self) -> Result<Destination, String> {
        let except = self
            .except
            .map(|e| e.into_iter().map(|p| p.0).collect::<Vec<_>>());
        match (self.cidr, self.entity, self.host) {
            (Some(cidr), None, None) => cidr_entry(cidr.0, except),
            (None, entity, host) if except.is_some() && (entity.is_some() || host.is_some()) => {
                Err("`except` only applies to `cidr` entries".into())
            }
            (None, Some(entity), None) => Ok(Destination::Entity(entity)),
            (None, None, Some(host)) => Ok(Destination::Host(host.0)),
            (None, None, None) => Err("a `to` entry needs one of `cidr`, `entity` or `host`".into()),
            _ => Err("a `to` entry takes exactly one of `cidr`, `entity` or `host`; write one entry per destination".into()),
        }
    }
}

/// A `cidr` entry (of `to` or `from`) with its `except` list, which must lie inside it.
pub(crate) fn cidr_entry(
    prefix: super::Prefix,
    except: Option<Vec<super::Prefix>>,
) -> Result<Destination, String> {
    let except = except.unwrap_or_default();
    if let Some(bad) = except.iter().find(|e| !prefix.contains(e)) {
        return Err(format!("except {bad} is not inside cidr {prefix}"));
    }
    Ok(Destination::Cidr { prefix, except })
}

impl RawDocument {
    pub(crate) fn into_policy(self) -> Policy {
        let spec = self.spec;
        let selector = spec.selector.map_or_else(Selector::default, |s| Selector {
            cgroups: s
                .cgroups
                .map_or_else(Vec::new, |l| l.0.into_iter().map(|c| c.0).collect()),
            units: s
                .units
                .map_or_else(Vec::new, |l| l.0.into_iter().map(|u| u.0).collect()),
            uids: s
                .uids
                .map_or_else(Vec::new, |l| l.0.into_iter().map(|u| u.0).collect()),
            pods: s.pods.map(|p| p.0),
            excluded: Vec::new(),
        });
        let mut rules: Vec<Rule> = spec
            .egress
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.0)
            .collect();
        if let Some(dns) = spec.dns {
            let resolvers: Vec<super::Prefix> = dns.resolvers.0.into_iter().map(|p| p.0).collect();
            rules.extend(super::dns::resolver_rules(&resolvers));
        }
        Policy {
            name: self.metadata.name.0,
            selector,
            mode: spec.mode.unwrap_or_default(),
            default_action: spec.default_action.unwrap_or_default(),
            log: spec.log.unwrap_or_default(),
            rules,
            default_id: 0,
            inbound: spec.inbound.unwrap_or_default(),
            ingress: spec
                .ingress
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.0)
                .collect(),
            inbound_default_id: 0,
        }
    }
}
