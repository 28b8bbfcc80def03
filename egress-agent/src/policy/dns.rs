//! `spec.dns`: the rules that keep a workload's DNS on its resolvers.
//!
//! Host rules judge addresses by the DNS answers the workload received, so a policy can
//! insist that those answers come from resolvers it trusts: the two rules below go after the
//! policy's own egress rules (the next ids, before `default`) and follow the usual order, so a
//! user deny rule still beats `dns-resolvers`.

use super::net::{Entity, Family, Prefix};
use super::{Action, DNS_OTHER_RESOLVERS, DNS_RESOLVERS, Destination, PortRange, Protocol, Rule};

const DNS_PORT: PortRange = PortRange {
    first: 53,
    last: 53,
};

/// `dns-resolvers` (allow port 53, any protocol, to the resolvers) and `dns-other-resolvers`
/// (deny port 53, any protocol, to every address of both families except the resolvers).
pub(crate) fn resolver_rules(resolvers: &[Prefix]) -> [Rule; 2] {
    let rule = |name: &str, action, to| Rule {
        id: 0,
        name: name.to_string(),
        action,
        to,
        protocol: Protocol::Any,
        ports: Some(vec![DNS_PORT]),
    };
    let allow = resolvers
        .iter()
        .map(|p| Destination::Cidr {
            prefix: *p,
            except: Vec::new(),
        })
        .collect();
    let others = Entity::Any
        .prefixes()
        .iter()
        .map(|all| Destination::Cidr {
            prefix: *all,
            except: of_family(resolvers, all.family),
        })
        .collect();
    [
        rule(DNS_RESOLVERS, Action::Allow, allow),
        rule(DNS_OTHER_RESOLVERS, Action::Deny, others),
    ]
}

/// The resolvers of one family, without repeats (an except listed twice changes nothing).
fn of_family(resolvers: &[Prefix], family: Family) -> Vec<Prefix> {
    let mut out: Vec<Prefix> = resolvers
        .iter()
        .copied()
        .filter(|p| p.family == family)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
