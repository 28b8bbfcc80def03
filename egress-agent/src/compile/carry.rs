//! The name sets earlier generations handed out, carried into later ones: an address the
//! kernel learned under one generation holds the ids of the sets its names matched then, and
//! a reload that changes which patterns match a name changes its set id. Without the old
//! sets' name classes the address would stop meeting the rules it met (for a deny-list: a
//! denied name's address would pass until answered again).

use std::collections::{BTreeSet, HashMap, VecDeque};

use egress_common::dns::NameSetId;

/// Sets kept; the oldest go first beyond this. Learned addresses live at most the longest
/// TTL the agent allows (a day by default), and a set is only dropped after this many newer
/// ones were handed out.
const CAPACITY: usize = 16_384;

/// Name sets handed out by the generations this agent applied, oldest first.
#[derive(Debug, Default)]
pub struct NameSetHistory {
    order: VecDeque<NameSetId>,
    sets: HashMap<NameSetId, BTreeSet<String>>,
}

impl NameSetHistory {
    /// Remembers the sets a generation handed out (once applied).
    pub fn record(&mut self, sets: &[(NameSetId, BTreeSet<String>)]) {
        for (id, set) in sets {
            if self.sets.insert(*id, set.clone()).is_none() {
                self.order.push_back(*id);
            }
        }
        while self.order.len() > CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.sets.remove(&oldest);
            }
        }
    }

    /// Every remembered set, to carry into the next generation.
    pub fn carried(&self) -> Vec<(NameSetId, BTreeSet<String>)> {
        self.order
            .iter()
            .filter_map(|id| self.sets.get(id).map(|set| (*id, set.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use egress_common::{PARITY_BIT, verdict};

    use super::*;
    use crate::compile::{CgroupResolution, compile, compile_carrying, mapsim::MapSim};
    use crate::policy::parse_str;

    const DENY_API: &str = "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p}\nspec:\n  egress:\n    - name: no-api\n      action: deny\n      to: [{host: api.example.test}]\n";
    const ALLOW_ALL: &str =
        "    - name: rest\n      action: allow\n      to: [{host: \"*.example.test\"}]\n";

    /// An address learned for a denied name stays denied after a reload that adds a pattern
    /// matching the same name (which changes the name's set id).
    #[test]
    fn addresses_learned_before_a_reload_keep_their_rules() {
        let resolution = CgroupResolution::default();
        let before = parse_str(Path::new("a.yaml"), DENY_API).expect("valid test input");
        let first = compile(&before, &resolution, 0).expect("compiles");
        let learned = MapSim::new(&first).name_sets(&["api.example.test".to_owned()]);
        assert_eq!(learned.len(), 1);
        let after = parse_str(Path::new("a.yaml"), &format!("{DENY_API}{ALLOW_ALL}"))
            .expect("valid test input");
        let dst = "203.0.113.9".parse().expect("valid test input");
        let decide = |compiled| {
            MapSim::new(compiled)
                .decide_with_sets("/app", 0, dst, &learned, 6, 443)
                .verdict
        };
        let mut history = NameSetHistory::default();
        history.record(&first.name_sets);
        let carried = compile_carrying(&after, &resolution, PARITY_BIT, &history.carried())
            .expect("compiles");
        assert_eq!(decide(&carried), verdict::DENY);
        // Without the carried set the old entry would meet no rule: the address would pass.
        let fresh = compile(&after, &resolution, PARITY_BIT).expect("compiles");
        assert_eq!(decide(&fresh), verdict::ALLOW);
        // Answered again under the new generation, the name meets both rules: deny wins.
        let again = MapSim::new(&carried).name_sets(&["api.example.test".to_owned()]);
        assert_ne!(again, learned, "the name's set changed with the reload");
    }

    #[test]
    fn sets_are_kept_once_and_the_oldest_go_first() {
        let mut history = NameSetHistory::default();
        let set = |p: &str| BTreeSet::from([p.to_owned()]);
        history.record(&[(1, set("a.test")), (2, set("b.test"))]);
        history.record(&[(2, set("b.test"))]);
        assert_eq!(history.carried().len(), 2);
        let many: Vec<_> = (10..10 + CAPACITY as u64).map(|i| (i, set("x"))).collect();
        history.record(&many);
        let carried = history.carried();
        assert_eq!(carried.len(), CAPACITY);
        assert!(
            carried.iter().all(|(id, _)| *id >= 10),
            "the oldest went first"
        );
    }
}
