//! The YAML shape of `spec.ingress` rules, checked while deserializing like the rest of `raw`.
//!
//! An ingress rule has the shape of an egress rule with `from:` instead of `to:`. Its entries
//! name sources by prefix or entity; host names cannot name a source, since a packet's source
//! address says nothing about the name anyone looked it up by.

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::Deserializer;

use super::probe;
use super::raw::{Checked, NonEmpty, Valid, build_rule, cidr_entry};
use super::scalar::{PortItem, PrefixDe, RuleName, rejected};
use super::{Action, Destination, Entity, Protocol, Rule};

fn to_in_ingress<'de, D: Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
    rejected(
        d,
        "ingress rules match sources: use `from:` instead of `to:` (or move the rule under `spec.egress`)".into(),
    )
}

fn host_in_from<'de, D: Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
    rejected(
        d,
        "host names cannot select inbound sources: a packet's source address carries no name; use `cidr` or `entity`".into(),
    )
}

/// An ingress rule: which new inbound connections it matches by source, protocol and local
/// port.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIngressRule {
    name: RuleName,
    action: Action,
    /// Sources; at least one entry.
    from: NonEmpty<Valid<RawFrom>>,
    protocol: Option<Protocol>,
    /// Local ports (the destination ports of the inbound packets).
    ports: Option<NonEmpty<PortItem>>,
    #[serde(default, deserialize_with = "to_in_ingress")]
    #[schemars(skip)]
    #[expect(dead_code, reason = "present only to reject the key")]
    to: Option<()>,
}

impl Checked for RawIngressRule {
    type Out = Rule;

    fn enter() -> Result<(), String> {
        probe::enter_ingress_rule();
        Ok(())
    }

    fn check(self) -> Result<Rule, String> {
        let Self {
            name,
            action,
            from,
            protocol,
            ports,
            to: _,
        } = self;
        let from = from.0.into_iter().map(|f| f.0).collect();
        build_rule(name.0, action, from, protocol, ports)
    }
}

/// One `from` entry: exactly one of `cidr` (with optional `except`) or `entity`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawFrom {
    cidr: Option<PrefixDe>,
    except: Option<Vec<PrefixDe>>,
    entity: Option<Entity>,
    #[serde(default, deserialize_with = "host_in_from")]
    #[schemars(skip)]
    #[expect(dead_code, reason = "present only to reject the key")]
    host: Option<()>,
}

impl Checked for RawFrom {
    type Out = Destination;

    fn check(self) -> Result<Destination, String> {
        let Self {
            cidr,
            except,
            entity,
            host: _,
        } = self;
        let except = except.map(|e| e.into_iter().map(|p| p.0).collect::<Vec<_>>());
        match (cidr, entity) {
            (Some(cidr), None) => cidr_entry(cidr.0, except),
            (None, Some(_)) if except.is_some() => {
                Err("`except` only applies to `cidr` entries".into())
            }
            (None, Some(entity)) => Ok(Destination::Entity(entity)),
            (None, None) => Err("a `from` entry needs one of `cidr` or `entity`".into()),
            (Some(_), Some(_)) => Err(
                "a `from` entry takes exactly one of `cidr` or `entity`; write one entry per source"
                    .into(),
            ),
        }
    }
}
