//! The compiled maps, as the kernel reads them, decide exactly like the reference evaluator.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egress_common::{PARITY_BIT, config_flags, verdict};
use proptest::prelude::*;

use super::mapsim::MapSim;
use super::{CgroupResolution, compile};
use crate::eval;
use crate::policy::net::mask;
use crate::policy::{
    Action, Destination, Entity, Family, LogMode, Mode, PodSelector, Policy, PolicySet, PortRange,
    Prefix, Protocol, Rule, Selector,
};

pub(super) const CGROUPS: &[&str] = &[
    "/",
    "/a",
    "/a/b",
    "/a/b/c",
    "/c",
    "/cc",
    "/x/u.service",
    "/a/u.service",
    "/a/u.service/z",
    "/d",
];
pub(super) const UIDS: &[u32] = &[0, 1000, 1001];
pub(super) const PORTS: &[u16] = &[1, 52, 53, 54, 80, 443, 444, 8000, 8100, 65535];
pub(super) const PROTOCOLS: &[u8] = &[6, 17, 1, 58, 47, 0];
const V4_SEEDS: &[u32] = &[
    0x0a00_0000,
    0x0a01_0000,
    0xcb00_7100,
    0xa9fe_a9fe,
    0x7f00_0001,
];
const V6_SEEDS: &[u128] = &[
    0x2001_0db8_0000_0000_0000_0000_0000_0000,
    0x2001_0db8_0001_0000_0000_0000_0000_0000,
    0xfd00_0ec2_0000_0000_0000_0000_0000_0254,
    0x0000_0000_0000_0000_0000_ffff_0a00_0001,
];

fn prefix() -> impl Strategy<Value = Prefix> {
    let v4 = (
        prop::sample::select(V4_SEEDS),
        any::<u16>(),
        prop::sample::select(&[0u8, 4, 8, 12, 15, 16, 20, 24, 25, 28, 31, 32][..]),
    )
        .prop_map(|(seed, noise, len)| {
            let addr = u128::from(seed ^ u32::from(noise));
            Prefix {
                family: Family::V4,
                addr: mask(addr, len, 32),
                len,
            }
        });
    let v6 = (
        prop::sample::select(V6_SEEDS),
        any::<u16>(),
        prop::sample::select(&[0u8, 7, 16, 32, 48, 64, 100, 120, 127, 128][..]),
    )
        .prop_map(|(seed, noise, len)| {
            let addr = seed ^ u128::from(noise);
            Prefix {
                family: Family::V6,
                addr: mask(addr, len, 128),
                len,
            }
        });
    prop_oneof![3 => v4, 2 => v6]
}

/// A prefix inside `outer`, `extra` bits longer (at most the full width).
fn inside(outer: Prefix, noise: u128, extra: u8) -> Prefix {
    let width = outer.family.width();
    let len = outer.len.saturating_add(extra).min(width);
    let host_bits = width - outer.len;
    let low = match host_bits {
        0 => 0,
        128 => u128::MAX,
        n => (1u128 << n) - 1,
    };
    let noise_bits = noise & low;
    Prefix {
        family: outer.family,
        addr: mask(outer.addr | noise_bits, len, width),
        len,
    }
}

pub(super) fn destination() -> impl Strategy<Value = Destination> {
    let cidr = (
        prefix(),
        prop::collection::vec((any::<u128>(), 0u8..12), 0..3),
    )
        .prop_map(|(p, holes)| Destination::Cidr {
            prefix: p,
            except: holes.into_iter().map(|(n, e)| inside(p, n, e)).collect(),
        });
    let entity = prop::sample::select(
        &[
            Entity::Any,
            Entity::Localhost,
            Entity::LinkLocal,
            Entity::Multicast,
            Entity::Private,
            Entity::CloudMetadata,
        ][..],
    )
    .prop_map(Destination::Entity);
    prop_oneof![7 => cidr, 2 => entity, 1 => Just(Destination::Host("a.example.com".into()))]
}

/// A `from` entry: a destination that is not a host name (the loader rejects those).
fn source() -> impl Strategy<Value = Destination> {
    destination().prop_filter("host names cannot select sources", |d| {
        !matches!(d, Destination::Host(_))
    })
}

fn ports() -> impl Strategy<Value = Option<Vec<PortRange>>> {
    let range =
        (prop::sample::select(PORTS), prop::sample::select(PORTS)).prop_map(|(a, b)| PortRange {
            first: a.min(b),
            last: a.max(b),
        });
    prop::option::weighted(0.5, prop::collection::vec(range, 1..3))
}

fn ingress_rule() -> impl Strategy<Value = Rule> {
    rule_with(source().boxed())
}

pub(super) fn rule_with(peer: BoxedStrategy<Destination>) -> impl Strategy<Value = Rule> {
    let protocol = prop::sample::select(
        &[
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Icmp,
            Protocol::Icmpv6,
            Protocol::Any,
            Protocol::Any,
        ][..],
    );
    (
        any::<bool>(),
        protocol,
        ports(),
        prop::collection::vec(peer, 1..4),
    )
        .prop_map(|(deny, protocol, ports, to)| Rule {
            id: 0,
            name: String::new(),
            action: if deny { Action::Deny } else { Action::Allow },
            ports: if matches!(protocol, Protocol::Icmp | Protocol::Icmpv6) {
                None
            } else {
                ports
            },
            protocol,
            to,
        })
}

fn selector() -> impl Strategy<Value = Selector> {
    let cgroups = prop::option::weighted(
        0.4,
        prop::sample::subsequence(&["/a", "/a/b", "/c"][..], 1..=2),
    );
    let units = prop::option::weighted(0.2, Just(vec!["u.service".to_string()]));
    let uids = prop::option::weighted(0.3, prop::sample::subsequence(&[1000u32, 1001][..], 1..=2));
    let pods = prop::option::weighted(0.3, 0..POD_SELECTORS);
    // Below selected paths, unit paths and pod paths alike (see `resolution`).
    let excluded = prop::option::weighted(
        0.3,
        prop::sample::subsequence(&["/a/b", "/a/u.service", "/d"][..], 1..=2),
    );
    (cgroups, units, uids, pods, excluded).prop_map(|(c, units, uids, pods, excluded)| Selector {
        cgroups: c.map_or_else(Vec::new, |c| c.into_iter().map(String::from).collect()),
        units: units.unwrap_or_default(),
        uids: uids.unwrap_or_default(),
        pods: pods.map(pod_selector),
        excluded: excluded.map_or_else(Vec::new, |e| e.into_iter().map(String::from).collect()),
    })
}

/// Pod selectors the tests draw from (see [`resolution`]).
const POD_SELECTORS: usize = 4;

fn pod_selector(i: usize) -> PodSelector {
    PodSelector {
        namespaces: vec![format!("ns{i}")],
        ..PodSelector::default()
    }
}

/// A policy whose egress rules are drawn from `rule`.
fn policy(rule: BoxedStrategy<Rule>) -> impl Strategy<Value = Policy> {
    (
        selector(),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(&[LogMode::All, LogMode::Deny, LogMode::None][..]),
        prop::collection::vec(rule, 0..5),
        prop::bool::weighted(0.4),
        prop::option::weighted(0.5, prop::collection::vec(ingress_rule(), 1..4)),
    )
        .prop_map(
            |(selector, audit, deny, log, mut rules, inbound_deny, ingress)| {
                let mut ingress = ingress.unwrap_or_default();
                for (i, r) in rules.iter_mut().chain(&mut ingress).enumerate() {
                    r.name = format!("r{i}");
                }
                Policy {
                    name: String::new(),
                    selector,
                    mode: if audit { Mode::Audit } else { Mode::Enforce },
                    default_action: if deny { Action::Deny } else { Action::Allow },
                    log,
                    rules,
                    default_id: 0,
                    inbound: if inbound_deny {
                        Action::Deny
                    } else {
                        Action::Allow
                    },
                    ingress,
                    inbound_default_id: 0,
                }
            },
        )
}

fn policy_set() -> impl Strategy<Value = PolicySet> {
    policy_set_with(rule_with(destination().boxed()).boxed())
}

/// One to four policies with egress rules drawn from `rule`.
pub(super) fn policy_set_with(rule: BoxedStrategy<Rule>) -> impl Strategy<Value = PolicySet> {
    prop::collection::vec(policy(rule), 1..=4).prop_map(|mut list| {
        // Reverse names so that sorting reorders them.
        let n = list.len();
        for (i, p) in list.iter_mut().enumerate() {
            p.name = format!("p{}", n - i);
        }
        PolicySet::new(list)
    })
}

/// SplitMix64: packets are drawn from a seed so one case checks many of them cheaply.
pub(super) struct Rng(pub u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

pub(super) fn address(rng: &mut Rng, prefixes: &[Prefix]) -> IpAddr {
    let p = if !prefixes.is_empty() && !rng.next().is_multiple_of(4) {
        let p = rng.pick(prefixes);
        match rng.next() % 4 {
            0 => p,
            1 => inside(p, u128::MAX, 128),
            _ => inside(
                p,
                u128::from(rng.next()) << 64 | u128::from(rng.next()),
                128,
            ),
        }
    } else if rng.next().is_multiple_of(2) {
        let seed = u128::from(rng.pick(V4_SEEDS) ^ (rng.next() as u32 & 0xffff));
        Prefix {
            family: Family::V4,
            addr: seed,
            len: 32,
        }
    } else {
        Prefix {
            family: Family::V6,
            addr: rng.pick(V6_SEEDS) ^ u128::from(rng.next() as u16),
            len: 128,
        }
    };
    match p.family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from_bits(p.addr as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from_bits(p.addr)),
    }
}

/// Where the tests' units and pod selectors are: 0 and 1 resolve, 2 resolves to no path,
/// 3 is unresolved.
pub(super) fn resolution() -> CgroupResolution {
    let mut resolution = CgroupResolution::default();
    resolution.units.insert(
        "u.service".into(),
        vec!["/x/u.service".into(), "/a/u.service".into()],
    );
    resolution
        .pods
        .insert(pod_selector(0), vec!["/a/b".into(), "/d".into()]);
    resolution
        .pods
        .insert(pod_selector(1), vec!["/a/u.service".into(), "/cc".into()]);
    resolution.pods.insert(pod_selector(2), Vec::new());
    resolution
}

/// The prefixes (and excepts) the rules of both directions name: addresses worth drawing.
pub(super) fn named_prefixes(set: &PolicySet) -> Vec<Prefix> {
    let mut prefixes = Vec::new();
    for rule in set
        .policies
        .iter()
        .flat_map(|p| p.rules.iter().chain(&p.ingress))
    {
        rule.for_each_prefix(|p, except| {
            prefixes.push(*p);
            prefixes.extend_from_slice(except);
        });
    }
    prefixes
}

fn check(set: &PolicySet, seed: u64, packets: usize, parity: bool) -> Result<(), TestCaseError> {
    let resolution = resolution();
    let parity = if parity { PARITY_BIT } else { 0 };
    let compiled =
        compile(set, &resolution, parity).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let restricts = set.policies.iter().any(Policy::restricts_inbound);
    prop_assert_eq!(compiled.flags & config_flags::INGRESS != 0, restricts);
    let egress_ids: HashSet<u32> = compiled.scopes.iter().map(|(_, v)| v.scope).collect();
    for (_, value) in &compiled.scopes {
        if value.ingress_default.verdict != verdict::NONE {
            prop_assert!(
                !egress_ids.contains(&value.ingress_scope),
                "ingress scope {:#x} is also an egress scope",
                value.ingress_scope
            );
        }
    }
    let sim = MapSim::new(&compiled);
    let prefixes = named_prefixes(set);
    let mut rng = Rng(seed);
    for _ in 0..packets {
        let cgroup = rng.pick(CGROUPS);
        let uid = rng.pick(UIDS);
        let peer = address(&mut rng, &prefixes);
        let protocol = rng.pick(PROTOCOLS);
        let port = match rng.next() % 3 {
            0 => rng.pick(PORTS),
            1 => rng.pick(PORTS).wrapping_add(1),
            _ => rng.next() as u16,
        };
        let want = eval::decide_in(set, &resolution, cgroup, uid, peer, protocol, port);
        let got = sim.decide(cgroup, uid, peer, protocol, port);
        prop_assert_eq!(
            got,
            want,
            "{} uid {} -> {} proto {} port {}",
            cgroup,
            uid,
            peer,
            protocol,
            port
        );
        // The same packet seen inbound: `peer` is its source, `port` the local port.
        let want = eval::decide_ingress_in(set, &resolution, cgroup, uid, peer, protocol, port);
        let got = sim.decide_ingress(cgroup, uid, peer, protocol, port);
        prop_assert_eq!(
            got,
            want,
            "ingress: {} uid {} <- {} proto {} port {}",
            cgroup,
            uid,
            peer,
            protocol,
            port
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn compiled_maps_decide_like_eval(set in policy_set(), seed in any::<u64>(), parity in any::<bool>()) {
        check(&set, seed, 50, parity)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// 2,000 policy sets × 200 packets: 400,000 packets per run.
    #[test]
    fn compiled_maps_decide_like_eval_many(set in policy_set(), seed in any::<u64>()) {
        check(&set, seed, 200, true)?;
    }
}
