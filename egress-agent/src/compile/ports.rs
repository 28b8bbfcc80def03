//! Port entries: per address class and protocol, the decisions of the runs of ports its
//! rules cut the ports into, as a table, or as prefixes where the runs do not fit one.

use egress_common::keys::{CLASS_AND_PROTOCOL_BITS, port_data};
use egress_common::ports::{ANY_PROTOCOL, PortTable, PortTableKey};
use egress_common::{Decision, PortData};

use crate::policy::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Protocol, Rule};

/// A protocol no rule can name, standing for "every other protocol" (GRE).
const OTHER_PROTOCOL: u8 = 47;

/// A scope's decision when exactly the rules the predicate accepts match; `None`: no entry.
pub(crate) type DecisionFn<'a> = dyn Fn(&dyn Fn(&Rule) -> bool) -> Option<Decision> + 'a;

/// The port entries of a generation: a table per (class, protocol), and the trie entries of
/// the tables whose runs did not fit ([`PortTable::IN_TRIE`]).
#[derive(Clone, Debug, Default)]
pub struct PortEntries {
    pub tables: Vec<(PortTableKey, PortTable)>,
    /// (prefix length including class and protocol bits, key data, decision).
    pub trie: Vec<(u32, PortData, Decision)>,
}

impl PortEntries {
    pub fn len(&self) -> usize {
        self.tables.len() + self.trie.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Emits the entries of address class `class` (with parity), whose addresses match `rules`.
/// `decision` is the scope's decision when exactly the rules it is given match (egress or
/// ingress semantics; `None` writes no entry).
///
/// A protocol no rule of the class matches gets no table: the kernel then reads the class's
/// any-protocol table, and without one the scope default decides, which is the decision
/// with no matching rule. The any-protocol table exists only if a rule matches every
/// protocol and port; then every TCP and UDP port has a matching rule too, so their own
/// tables cover those protocols completely and never hide it.
pub(crate) fn emit(class: u32, rules: &[&Rule], decision: &DecisionFn<'_>, out: &mut PortEntries) {
    if rules.is_empty() {
        return;
    }
    let decide = |protocol: u8, port: u16| -> Option<Decision> {
        let hit = |r: &Rule| {
            r.matches_protocol(protocol, port)
                && rules.binary_search_by_key(&r.id, |x| x.id).is_ok()
        };
        if rules.iter().any(|r| hit(r)) {
            decision(&hit)
        } else {
            None
        }
    };
    let key = |protocol| PortTableKey::new(class, protocol);
    for (protocol, named) in [(IPPROTO_TCP, Protocol::Tcp), (IPPROTO_UDP, Protocol::Udp)] {
        let runs = port_runs(rules, named, |port| decide(protocol, port));
        if runs.iter().all(|(_, _, decision)| decision.is_none()) {
            continue;
        }
        let lasts: Vec<(u16, Option<Decision>)> = runs
            .iter()
            .map(|(_, last, decision)| (u16::try_from(*last).unwrap_or(u16::MAX), *decision))
            .collect();
        if let Some(table) = PortTable::of_runs(&lasts) {
            out.tables.push((key(protocol), table));
            continue;
        }
        out.tables.push((key(protocol), PortTable::IN_TRIE));
        for (first, last, decision) in runs {
            if let Some(decision) = decision {
                for (port, len) in aligned_blocks(first, last) {
                    out.trie
                        .push((len, port_data(class, protocol, port), decision));
                }
            }
        }
    }
    for (protocol, named) in [
        (IPPROTO_ICMP, Protocol::Icmp),
        (IPPROTO_ICMPV6, Protocol::Icmpv6),
    ] {
        if rules.iter().any(|r| r.protocol == named)
            && let Some(decision) = decide(protocol, 0)
        {
            out.tables.push((key(protocol), whole(decision)));
        }
    }
    if let Some(decision) = decide(OTHER_PROTOCOL, 0) {
        out.tables.push((key(ANY_PROTOCOL), whole(decision)));
    }
}

/// One run over every port.
fn whole(decision: Decision) -> PortTable {
    PortTable::of_runs(&[(u16::MAX, Some(decision))]).unwrap_or(PortTable::IN_TRIE)
}

/// The runs `(first, last, decision)` into which the port lists of `rules` for protocol
/// `named` (or any protocol) cut the ports 0..=65535, neighbours with equal decisions merged.
fn port_runs(
    rules: &[&Rule],
    named: Protocol,
    decide: impl Fn(u16) -> Option<Decision>,
) -> Vec<(u32, u32, Option<Decision>)> {
    let mut cuts: Vec<u32> = vec![0];
    for rule in rules
        .iter()
        .filter(|r| r.protocol == named || r.protocol == Protocol::Any)
    {
        for range in rule.ports.iter().flatten() {
            cuts.push(u32::from(range.first));
            cuts.push(u32::from(range.last) + 1);
        }
    }
    cuts.retain(|c| *c <= u32::from(u16::MAX));
    cuts.sort_unstable();
    cuts.dedup();
    let mut runs: Vec<(u32, u32, Option<Decision>)> = Vec::new();
    for (k, first) in cuts.iter().enumerate() {
        let last = cuts.get(k + 1).map_or(u32::from(u16::MAX), |next| next - 1);
        let decision = decide(u16::try_from(*first).unwrap_or(u16::MAX));
        match runs.last_mut() {
            Some(run) if run.2 == decision => run.1 = last,
            _ => runs.push((*first, last, decision)),
        }
    }
    runs
}

/// Splits the inclusive port range into aligned blocks: (first port, key prefix length).
fn aligned_blocks(first: u32, last: u32) -> Vec<(u16, u32)> {
    let mut blocks = Vec::new();
    let mut start = first;
    while start <= last {
        let mut size: u32 = if start == 0 {
            1 << 16
        } else {
            start & start.wrapping_neg()
        };
        while start + size - 1 > last {
            size >>= 1;
        }
        let port = u16::try_from(start).unwrap_or(u16::MAX);
        blocks.push((port, CLASS_AND_PROTOCOL_BITS + 16 - size.trailing_zeros()));
        start += size;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::aligned_blocks;

    #[test]
    fn blocks_are_aligned_and_exact() {
        assert_eq!(aligned_blocks(0, 65535), [(0, 40)]);
        assert_eq!(aligned_blocks(443, 443), [(443, 56)]);
        let blocks = aligned_blocks(8000, 8100);
        let total: u32 = blocks.iter().map(|(_, len)| 1 << (56 - len)).sum();
        assert_eq!(total, 101);
        assert!(blocks.len() <= 32);
        assert_eq!(aligned_blocks(1, 65535).len(), 16);
    }
}
