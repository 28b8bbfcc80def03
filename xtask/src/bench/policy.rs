//! Benchmark policies of a given prefix count: half IPv4, half IPv6, in deny rules of 100
//! prefixes each with TCP port ranges, between an allow rule matched first and a deny rule
//! matched last. The filler prefixes (10.0.0.0/8, fd00::/16) are map contents only: no
//! benchmark ever sends to them. Traffic only goes to documentation prefixes.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use egress_agent::policy::{
    Action, Destination, LogMode, Mode, Policy, PolicySet, PortRange, Prefix, Protocol, Rule,
    Selector,
};

/// Prefixes per filler rule.
const PER_RULE: usize = 100;
/// The first rule (allow) holds these; the benchmark traffic goes to them.
pub const EARLY_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const EARLY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The last rule (deny) holds these.
pub const LATE_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const LATE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
/// In no rule.
pub const MISS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const MISS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x10);
/// The port the benchmark traffic uses (inside the first rule's ports).
pub const TRAFFIC_PORT: u16 = 5201;

/// What a generated policy looks like.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Total address prefixes (at least 4: the first and last rules hold two each).
    pub prefixes: usize,
    /// `None`: every process (for test runs, which have no socket); else one cgroup path.
    pub cgroup: Option<String>,
    pub log: LogMode,
}

/// One filler prefix: (IPv4 /29 in 10.0.0.0/8) or (IPv6 /64 in fd00::/16), alternating.
fn filler(index: usize) -> Prefix {
    let n = u32::try_from(index / 2).unwrap_or(u32::MAX);
    if index.is_multiple_of(2) {
        Prefix::v4(
            Ipv4Addr::from_bits((10 << 24) | ((n << 3) & 0x00ff_fff8)),
            29,
        )
    } else {
        Prefix::v6(
            Ipv6Addr::from_bits((0xfd00_u128 << 112) | (u128::from(n) << 64)),
            64,
        )
    }
}

fn cidr(prefix: Prefix) -> Destination {
    Destination::Cidr {
        prefix,
        except: Vec::new(),
    }
}

fn host(ip: IpAddr) -> Prefix {
    match ip {
        IpAddr::V4(v4) => Prefix::v4(v4, 32),
        IpAddr::V6(v6) => Prefix::v6(v6, 128),
    }
}

/// The rules of a policy with `spec.prefixes` prefixes, before ids are assigned.
fn rules(prefixes: usize) -> Vec<Rule> {
    let rule = |name: String, action, to, ports| Rule {
        id: 0,
        name,
        action,
        to,
        protocol: Protocol::Tcp,
        ports: Some(ports),
    };
    let mut out = vec![rule(
        "early".to_owned(),
        Action::Allow,
        vec![
            cidr(host(IpAddr::V4(EARLY_V4))),
            cidr(host(IpAddr::V6(EARLY_V6))),
        ],
        vec![PortRange {
            first: 5000,
            last: 5999,
        }],
    )];
    let fillers = prefixes.saturating_sub(4);
    for (chunk, start) in (0..fillers).step_by(PER_RULE).enumerate() {
        let end = (start + PER_RULE).min(fillers);
        // Ranges that differ per rule, so port entries are not all shared.
        let base = 1000 + u16::try_from(chunk % 500).unwrap_or(0);
        out.push(rule(
            format!("r{chunk}"),
            Action::Deny,
            (start..end).map(|i| cidr(filler(i))).collect(),
            vec![
                PortRange {
                    first: base,
                    last: base + 1000,
                },
                PortRange {
                    first: 8080,
                    last: 8080,
                },
            ],
        ));
    }
    out.push(rule(
        "late".to_owned(),
        Action::Deny,
        vec![
            cidr(Prefix::v4(Ipv4Addr::new(203, 0, 113, 0), 24)),
            cidr(Prefix::v6(
                Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0),
                48,
            )),
        ],
        vec![PortRange {
            first: 1,
            last: 65535,
        }],
    ));
    out
}

/// The policy set for `spec`, rule ids assigned.
pub fn policy_set(spec: &Spec) -> PolicySet {
    PolicySet::new(vec![Policy {
        name: "bench".to_owned(),
        selector: Selector {
            cgroups: spec.cgroup.iter().cloned().collect(),
            units: Vec::new(),
            uids: Vec::new(),
            pods: None,
            excluded: Vec::new(),
        },
        mode: Mode::Enforce,
        default_action: Action::Allow,
        log: spec.log,
        rules: rules(spec.prefixes),
        ..Policy::default()
    }])
}

fn prefix_text(prefix: &Prefix) -> String {
    match prefix.family {
        egress_agent::policy::Family::V4 => {
            let addr = Ipv4Addr::from_bits(u32::try_from(prefix.addr).unwrap_or(0));
            format!("{addr}/{}", prefix.len)
        }
        egress_agent::policy::Family::V6 => {
            format!("{}/{}", Ipv6Addr::from_bits(prefix.addr), prefix.len)
        }
    }
}

/// The same policy as YAML, for the agent binary.
pub fn yaml(spec: &Spec) -> String {
    let mut out = String::from(
        "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: bench\nspec:\n",
    );
    if let Some(cgroup) = &spec.cgroup {
        let _ = writeln!(out, "  selector:\n    cgroups: [\"{cgroup}\"]");
    }
    let log = match spec.log {
        LogMode::All => "all",
        LogMode::Deny => "deny",
        LogMode::None => "none",
    };
    let _ = writeln!(
        out,
        "  mode: enforce\n  defaultAction: allow\n  log: {log}\n  egress:"
    );
    for rule in rules(spec.prefixes) {
        let _ = writeln!(
            out,
            "    - name: {}\n      action: {}\n      protocol: tcp\n      to:",
            rule.name,
            rule.action.as_str()
        );
        rule.for_each_prefix(|prefix, _| {
            let _ = writeln!(out, "        - cidr: {}", prefix_text(prefix));
        });
        let ports: Vec<String> = rule
            .ports
            .iter()
            .flatten()
            .map(|r| {
                if r.first == r.last {
                    r.first.to_string()
                } else {
                    format!("\"{}-{}\"", r.first, r.last)
                }
            })
            .collect();
        let _ = writeln!(out, "      ports: [{}]", ports.join(", "));
    }
    out
}

/// The nftables ruleset with the same deny prefixes and ports: one interval set per family
/// (address . port range) and one rule per family in the output hook.
pub fn nft_ruleset(prefixes: usize) -> String {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for rule in rules(prefixes).iter().filter(|r| r.action == Action::Deny) {
        rule.for_each_prefix(|prefix, _| {
            for range in rule.ports.iter().flatten() {
                let element = format!("{} . {}-{}", prefix_text(prefix), range.first, range.last);
                match prefix.family {
                    egress_agent::policy::Family::V4 => v4.push(element),
                    egress_agent::policy::Family::V6 => v6.push(element),
                }
            }
        });
    }
    format!(
        "table inet egress_bench {{\n\
         set deny4 {{ type ipv4_addr . inet_service; flags interval; elements = {{ {} }} }}\n\
         set deny6 {{ type ipv6_addr . inet_service; flags interval; elements = {{ {} }} }}\n\
         chain output {{ type filter hook output priority 0; policy accept;\n\
         ip daddr . tcp dport @deny4 drop\n\
         ip6 daddr . tcp dport @deny6 drop\n\
         }}\n}}\n",
        v4.join(",\n"),
        v6.join(",\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_prefixes_and_round_trips_through_the_parser() {
        let spec = Spec {
            prefixes: 250,
            cgroup: Some("/bench".to_owned()),
            log: LogMode::All,
        };
        let set = policy_set(&spec);
        let mut count = 0;
        for rule in &set.policies[0].rules {
            rule.for_each_prefix(|_, _| count += 1);
        }
        assert_eq!(count, 250);
        let parsed = egress_agent::policy::parse_str(std::path::Path::new("b.yaml"), &yaml(&spec))
            .expect("the generated YAML parses");
        assert_eq!(parsed.policies, set.policies);
        let nft = nft_ruleset(10);
        assert!(nft.contains("10.0.0.0/29 . 1000-2000"), "{nft}");
    }
}
