//! The YAML document shape, checked while deserializing so that errors carry positions.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};

use super::probe::{self, PROBE_MESSAGE};
use super::scalar::{
    ApiVersion, CgroupPath, HostName, Kind, PolicyName, PortItem, PrefixDe, RuleName, Uid,
    UnitName, unsupported,
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

fn inbound<'de, D: Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
    unsupported(d, "spec.inbound")
}
fn ingress<'de, D: Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
    unsupported(d, "spec.ingress")
}
fn dns<'de, D: Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
    unsupported(d, "spec.dns")
}
fn pods<'de, D: Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
    unsupported(d, "selector.pods")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    selector: Option<RawSelector>,
    mode: Option<Mode>,
    default_action: Option<Action>,
    log: Option<LogMode>,
    egress: Option<Vec<Valid<RawRule>>>,
    #[serde(default, deserialize_with = "inbound")]
    #[expect(dead_code, reason = "present only to reject the key")]
    inbound: Option<()>,
    #[serde(default, deserialize_with = "ingress")]
    #[expect(dead_code, reason = "present only to reject the key")]
    ingress: Option<()>,
    #[serde(default, deserialize_with = "dns")]
    #[expect(dead_code, reason = "present only to reject the key")]
    dns: Option<()>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    cgroups: Option<NonEmpty<CgroupPath>>,
    units: Option<NonEmpty<UnitName>>,
    uids: Option<NonEmpty<Uid>>,
    #[serde(default, deserialize_with = "pods")]
    #[expect(dead_code, reason = "present only to reject the key")]
    pods: Option<()>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: RuleName,
    action: Action,
    to: NonEmpty<Valid<RawTo>>,
    protocol: Option<Protocol>,
    ports: Option<NonEmpty<PortItem>>,
}

impl Checked for RawRule {
    type Out = Rule;

    fn enter() -> Result<(), String> {
        probe::enter_rule();
        Ok(())
    }

    fn check(self) -> Result<Rule, String> {
        let protocol = self.protocol.unwrap_or_default();
        if self.ports.is_some() && matches!(protocol, Protocol::Icmp | Protocol::Icmpv6) {
            return Err(format!(
                "rule `{}`: ports only apply to tcp, udp or any, not to {}",
                self.name.0,
                if protocol == Protocol::Icmp {
                    "icmp"
                } else {
                    "icmpv6"
                }
            ));
        }
        let mut ports = self
            .ports
            .map(|p| p.0.into_iter().map(|p| p.0).collect::<Vec<_>>());
        if let Some(p) = &mut ports {
            p.sort_unstable();
            p.dedup();
        }
        Ok(Rule {
            id: 0,
            name: self.name.0,
            action: self.action,
            to: self.to.0.into_iter().map(|t| t.0).collect(),
            protocol,
            ports,
        })
    }
}

#[derive(Deserialize)]
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
            (Some(cidr), None, None) => {
                let prefix = cidr.0;
                let except = except.unwrap_or_default();
                if let Some(bad) = except.iter().find(|e| !prefix.contains(e)) {
                    return Err(format!("except {bad} is not inside cidr {prefix}"));
                }
                Ok(Destination::Cidr { prefix, except })
            }
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
        });
        Policy {
            name: self.metadata.name.0,
            selector,
            mode: spec.mode.unwrap_or_default(),
            default_action: spec.default_action.unwrap_or_default(),
            log: spec.log.unwrap_or_default(),
            rules: spec
                .egress
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.0)
                .collect(),
            default_id: 0,
        }
    }
}
