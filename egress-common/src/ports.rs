//! Port tables: the decisions of one address class for one protocol, as runs of ports.
//!
//! Step 5 of the lookup chain reads one [`PortTable`] by hash and scans at most
//! [`PORT_RUNS`] run ends, instead of walking the `PORTS` trie: the trie is keyed by class
//! bits first, so its depth grows with the number of classes and the port ranges' prefixes
//! (up to 85 ns per lookup at 1,000,000 prefixes by BPF_PROG_TEST_RUN, against about 20 ns
//! for a table). Only a class whose ports of one protocol fall into more runs than a table
//! holds keeps its entries in the trie; its table then says so ([`PortTable::runs`] 0).

use crate::Decision;

/// Runs a table holds. A rule's port list of *k* ports or ranges makes at most 2*k*+1
/// runs, so seven distinct ports or ranges fit.
pub const PORT_RUNS: usize = 16;

/// The protocol of the table that decides protocols without a table of their own (a rule
/// for any protocol). No packet is parsed with this number, except an IPv6 packet whose
/// extension headers are not all walked; the any-protocol table is the right one for it.
pub const ANY_PROTOCOL: u8 = 0;

/// Key of [`crate::maps::PORT_TABLES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortTableKey {
    /// Address or name class, with the parity bit.
    pub class: u32,
    /// IP protocol number, or [`ANY_PROTOCOL`].
    pub protocol: u8,
    pub _pad: [u8; 3],
}

impl PortTableKey {
    #[inline(always)]
    pub const fn new(class: u32, protocol: u8) -> Self {
        Self {
            class,
            protocol,
            _pad: [0; 3],
        }
    }
}

/// Value of [`crate::maps::PORT_TABLES`]: run `i` covers the ports from `lasts[i - 1] + 1`
/// (0 for the first run) to `lasts[i]`. Tables of protocols without ports (ICMP, any) have
/// one run over every port, and the kernel passes them port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortTable {
    /// Last port of each run, ascending. The last run used ends at 65535, and so does every
    /// slot after it, so the first run whose end is not below the port is its run.
    pub lasts: [u16; PORT_RUNS],
    /// Bit `i`: a rule of the class matches run `i`, and `decisions[i]` decides it; clear:
    /// no rule does, the scope's default decides.
    pub decided: u16,
    /// Runs used, or 0: more runs than fit; the `PORTS` trie holds this protocol's entries.
    pub runs: u8,
    pub _pad: u8,
    pub decisions: [Decision; PORT_RUNS],
}

impl PortTable {
    /// A table that sends lookups to the `PORTS` trie.
    pub const IN_TRIE: Self = Self {
        lasts: [u16::MAX; PORT_RUNS],
        decided: 0,
        runs: 0,
        _pad: 0,
        decisions: [Decision::UNGOVERNED; PORT_RUNS],
    };

    /// The table for runs `(last port, decision)` in ascending order, the last ending at
    /// 65535; `None` when they do not fit (or do not cover every port).
    pub fn of_runs(runs: &[(u16, Option<Decision>)]) -> Option<Self> {
        if runs.is_empty() || runs.len() > PORT_RUNS || runs.last()?.0 != u16::MAX {
            return None;
        }
        let mut table = Self {
            runs: u8::try_from(runs.len()).ok()?,
            ..Self::IN_TRIE
        };
        for (i, (last, decision)) in runs.iter().enumerate() {
            table.lasts[i] = *last;
            if let Some(decision) = decision {
                table.decided |= 1 << i;
                table.decisions[i] = *decision;
            }
        }
        Some(table)
    }

    /// The index of the run holding `port`; `None` for a table whose runs do not cover it
    /// (never written by the agent).
    #[inline(always)]
    pub fn run_of(&self, port: u16) -> Option<usize> {
        // Unrolled on the BPF target: a bounded scan of 16 compares.
        let mut i = 0;
        while i < PORT_RUNS {
            if port <= self.lasts[i] {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// The decision of the run holding `port`; `None` when no rule matches it.
    #[inline(always)]
    pub fn decide(&self, port: u16) -> Option<Decision> {
        let i = self.run_of(port)?;
        if self.decided & (1 << i) == 0 {
            return None;
        }
        self.decisions.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict;

    fn deny(rule: u32) -> Decision {
        Decision {
            rule,
            verdict: verdict::DENY,
            ..Decision::UNGOVERNED
        }
    }

    #[test]
    fn runs_decide_their_ports() {
        let table = PortTable::of_runs(&[(79, None), (80, Some(deny(1))), (u16::MAX, None)])
            .unwrap_or(PortTable::IN_TRIE);
        assert_eq!(table.runs, 3);
        assert_eq!(table.decide(0), None);
        assert_eq!(table.decide(79), None);
        assert_eq!(table.decide(80), Some(deny(1)));
        assert_eq!(table.decide(81), None);
        assert_eq!(table.decide(u16::MAX), None);
    }

    #[test]
    fn too_many_or_incomplete_runs_do_not_fit() {
        let many: Vec<_> = (0..=PORT_RUNS as u16)
            .map(|i| (if i == PORT_RUNS as u16 { u16::MAX } else { i }, None))
            .collect();
        assert_eq!(PortTable::of_runs(&many), None);
        assert_eq!(PortTable::of_runs(&[(80, Some(deny(1)))]), None);
        assert_eq!(PortTable::of_runs(&[]), None);
        let full: Vec<_> = many[many.len() - PORT_RUNS..].to_vec();
        assert_eq!(
            PortTable::of_runs(&full).map(|t| t.runs),
            Some(PORT_RUNS as u8)
        );
    }
}
