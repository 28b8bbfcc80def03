//! Address classes: which rules' destinations contain an address, as longest-prefix entries.
//!
//! For every prefix P a rule names (as a destination or an exception), the class of P is the
//! set of rules with an entry (C, excepts) where C contains P and no except contains P. The
//! longest listed prefix containing an address then has exactly the rules that match it: any
//! listed prefix containing the address also contains that longest one.
//!
//! Sorting prefixes by (address, length) lists them in pre-order of their containment tree, so
//! one pass with a stack of ancestors computes every class in O(n log n).

use std::collections::BTreeMap;

use crate::policy::net::{Prefix, mask};
use crate::policy::{Family, Rule};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tag {
    // Covers sort before excepts of the same prefix: an except may equal its cidr.
    Cover,
    Except,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Item {
    addr: u128,
    len: u8,
    tag: Tag,
    entry: u32,
}

/// Counts of active entries per rule, with the changes made at each open prefix.
struct State {
    rule_of: Vec<u32>,
    covering: Vec<bool>,
    excepted: Vec<u32>,
    active: BTreeMap<u32, u32>,
}

impl State {
    fn bump(&mut self, entry: usize, up: bool) {
        let rule = self.rule_of[entry];
        if up {
            *self.active.entry(rule).or_default() += 1;
        } else if let Some(count) = self.active.get_mut(&rule) {
            *count -= 1;
            if *count == 0 {
                self.active.remove(&rule);
            }
        }
    }

    fn apply(&mut self, item: &Item) {
        let e = item.entry as usize;
        match item.tag {
            Tag::Cover => {
                self.covering[e] = true;
                if self.excepted[e] == 0 {
                    self.bump(e, true);
                }
            }
            Tag::Except => {
                self.excepted[e] += 1;
                if self.excepted[e] == 1 && self.covering[e] {
                    self.bump(e, false);
                }
            }
        }
    }

    fn revert(&mut self, item: &Item) {
        let e = item.entry as usize;
        match item.tag {
            Tag::Cover => {
                if self.excepted[e] == 0 {
                    self.bump(e, false);
                }
                self.covering[e] = false;
            }
            Tag::Except => {
                if self.excepted[e] == 1 && self.covering[e] {
                    self.bump(e, true);
                }
                self.excepted[e] -= 1;
            }
        }
    }
}

struct Frame {
    addr: u128,
    len: u8,
    /// Index of the first item applied at this prefix.
    first: usize,
    end: usize,
    class: Vec<u32>,
}

/// The prefixes of `family` that need an entry, with their sets of rule ids (sorted).
/// Prefixes whose set equals their nearest listed ancestor's (or is empty at the top) are
/// left out: the longest-prefix match falls back to an entry with the same set, or to none.
pub(crate) fn classify(rules: &[&Rule], family: Family) -> Vec<(Prefix, Vec<u32>)> {
    let mut items = Vec::new();
    let mut rule_of = Vec::new();
    for rule in rules {
        rule.for_each_prefix(|prefix, except| {
            if prefix.family != family {
                return;
            }
            let Ok(entry) = u32::try_from(rule_of.len()) else {
                return;
            };
            rule_of.push(rule.id);
            let item = |p: &Prefix, tag| Item {
                addr: p.addr,
                len: p.len,
                tag,
                entry,
            };
            items.push(item(prefix, Tag::Cover));
            items.extend(except.iter().map(|e| item(e, Tag::Except)));
        });
    }
    items.sort_unstable();
    let width = family.width();
    let entries = rule_of.len();
    let mut state = State {
        rule_of,
        covering: vec![false; entries],
        excepted: vec![0; entries],
        active: BTreeMap::new(),
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let (addr, len) = (items[i].addr, items[i].len);
        let end = i + items[i..]
            .iter()
            .take_while(|it| it.addr == addr && it.len == len)
            .count();
        while let Some(top) = stack.last() {
            if top.len <= len && mask(addr, top.len, width) == top.addr {
                break;
            }
            for item in items[top.first..top.end].iter().rev() {
                state.revert(item);
            }
            stack.pop();
        }
        for item in &items[i..end] {
            state.apply(item);
        }
        let class: Vec<u32> = state.active.keys().copied().collect();
        let inherited = stack.last().map_or(&[][..], |f| f.class.as_slice());
        if class != inherited {
            out.push((Prefix { family, addr, len }, class.clone()));
        }
        stack.push(Frame {
            addr,
            len,
            first: i,
            end,
            class,
        });
        i = end;
    }
    out
}
