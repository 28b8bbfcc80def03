//! Port entries: per address class, the decision for each protocol and port, as prefixes.

use egress_common::Decision;
use egress_common::keys::{CLASS_AND_PROTOCOL_BITS, ID_BITS, port_data};

use crate::policy::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Protocol, Rule};

/// A protocol no rule can name, standing for "every other protocol" (GRE).
const OTHER_PROTOCOL: u8 = 47;

/// A scope's decision when exactly the rules the predicate accepts match; `None`: no entry.
pub(crate) type DecisionFn<'a> = dyn Fn(&dyn Fn(&Rule) -> bool) -> Option<Decision> + 'a;

/// Emits the entries of address class `class` (with parity), whose addresses match `rules`.
/// `decision` is the scope's decision when exactly the rules it is given match (egress or
/// ingress semantics; `None` writes no entry).
///
/// Where no rule of the class matches, no entry is written and the kernel uses the scope
/// default, which is the decision with no matching rule. A class-wide entry (all protocols)
/// exists only if a rule matches every protocol and port; then every TCP and UDP port has a
/// matching rule too, so the per-port entries cover those protocols completely.
pub(crate) fn emit(
    class: u32,
    rules: &[&Rule],
    decision: &DecisionFn<'_>,
    out: &mut Vec<(u32, egress_common::PortData, Decision)>,
) {
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
    for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
        let named = if protocol == IPPROTO_TCP {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
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
            let port = u16::try_from(*first).unwrap_or(u16::MAX);
            let decision = decide(protocol, port);
            match runs.last_mut() {
                Some(run) if run.2 == decision => run.1 = last,
                _ => runs.push((*first, last, decision)),
            }
        }
        for (first, last, decision) in runs {
            if let Some(decision) = decision {
                for (port, len) in aligned_blocks(first, last) {
                    out.push((len, port_data(class, protocol, port), decision));
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
            out.push((
                CLASS_AND_PROTOCOL_BITS,
                port_data(class, protocol, 0),
                decision,
            ));
        }
    }
    if let Some(decision) = decide(OTHER_PROTOCOL, 0) {
        out.push((ID_BITS, port_data(class, 0, 0), decision));
    }
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
