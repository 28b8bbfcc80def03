//! Flattens a [`PolicySet`] into the kernel's lookup maps (see `egress_common`'s crate docs).
//!
//! Every packet is decided by a fixed chain of lookups; the compiler precomputes, for every
//! combination the chain can reach, the decision [`crate::eval`] would make. The property tests
//! in this module replay random packets through [`mapsim`] and the evaluator and compare.

mod addr;
mod carry;
#[cfg(test)]
mod host_proptests;
#[cfg(test)]
mod host_tests;
mod hosts;
pub mod mapsim;
mod ports;

pub use ports::PortEntries;
#[cfg(test)]
mod proptests;
mod scopes;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use egress_common::dns::{HostKeyData, NameClassKey, NameSetId};
use egress_common::keys::{addr4_data, addr6_data};
use egress_common::{Addr4Data, Addr6Data, PARITY_BIT, ScopeKey, ScopeValue, config_flags};

use crate::eval::{decision_for, ingress_decision_for};
use crate::policy::{Family, PodSelector, Policy, PolicySet, Rule, RuleInfo, Selector};
pub use carry::NameSetHistory;
pub use hosts::name_set_id;
use scopes::{DistinctScope, scopes};

/// Where the loader found each systemd unit and each pod selector named in a selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupResolution {
    /// Unit name to cgroup paths (relative to the cgroup2 root, starting with `/`).
    pub units: HashMap<String, Vec<String>>,
    /// Pod selector to the cgroup paths of the pods it matches on this node. A pod selector
    /// selects exactly these paths (and their descendants); absent means none.
    pub pods: HashMap<PodSelector, Vec<String>>,
}

impl CgroupResolution {
    pub fn paths(&self, unit: &str) -> &[String] {
        self.units.get(unit).map_or(&[], Vec::as_slice)
    }

    /// The cgroup paths resolved for `selector`'s pod selector (none without one).
    pub fn pod_paths(&self, selector: &Selector) -> &[String] {
        selector
            .pods
            .as_ref()
            .and_then(|pods| self.pods.get(pods))
            .map_or(&[], Vec::as_slice)
    }

    /// The cgroup part of `selector` holds for `path`, pods resolved through `self`.
    pub fn matches_cgroup(&self, selector: &Selector, path: &str) -> bool {
        selector.matches_cgroup_with(path, self.pod_paths(selector))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("parity must be 0 or {PARITY_BIT:#x}, not {0:#x}")]
    BadParity(u32),
    #[error("too many {0}: compiled ids must stay below 2^31")]
    IdsExhausted(&'static str),
    #[error("host `{0}` is not a name the kernel can match")]
    InvalidHost(String),
    #[error("two different sets of host patterns have the same id {0:#x}; rename a host pattern")]
    NameSetCollision(NameSetId),
    #[error(
        "the policies need {entries} entries in {map}, more than the {limit} a generation may use (half its capacity: a reload writes the next generation beside the running one)"
    )]
    TooLarge {
        map: &'static str,
        entries: usize,
        limit: usize,
    },
}

/// Sizes of a compiled policy, for summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub policies: usize,
    pub rules: usize,
    /// Address prefixes written to the address tries (both families).
    pub prefixes: usize,
    pub cgroups: usize,
    pub scopes: usize,
    /// Distinct ingress scopes (sets of applicable policies that restrict inbound traffic).
    pub ingress_scopes: usize,
    pub ports: usize,
    /// Entries of the host name trie.
    pub hostnames: usize,
    /// (scope, name set) entries.
    pub name_classes: usize,
}

/// Map-ready output of [`compile`]. Every id carries the parity bit.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub parity: u32,
    /// [`config_flags`].
    pub flags: u32,
    /// Cgroup path (relative to the cgroup2 root) to cgroup class.
    pub cgroups: Vec<(String, u32)>,
    pub scopes: Vec<(ScopeKey, ScopeValue)>,
    /// (prefix length including the 32 scope bits, key data, address class).
    pub addr4: Vec<(u32, Addr4Data, u32)>,
    pub addr6: Vec<(u32, Addr6Data, u32)>,
    /// `PORT_TABLES` and `PORTS`.
    pub ports: PortEntries,
    /// `HOSTNAMES`: (prefix length in bits, parity byte included; key data; name set id,
    /// 0 for "no set").
    pub hostnames: Vec<(u32, HostKeyData, NameSetId)>,
    /// `NAME_CLASSES`: (egress scope with parity, name set) to the class (with parity) whose
    /// `PORTS` entries decide packets to addresses learned for names of the set.
    pub name_classes: Vec<(NameClassKey, u32)>,
    /// The name sets this generation's trie hands out, with their patterns: the caller keeps
    /// them to carry into later generations ([`compile_carrying`]).
    pub name_sets: Vec<(NameSetId, BTreeSet<String>)>,
    pub rules: Vec<RuleInfo>,
    pub summary: Summary,
}

/// Hands out ids `first..` for distinct keys.
struct Interner<K> {
    ids: HashMap<K, u32>,
    next: u32,
    what: &'static str,
}

impl<K: Hash + Eq> Interner<K> {
    fn new(first: u32, what: &'static str) -> Self {
        Self {
            ids: HashMap::new(),
            next: first,
            what,
        }
    }

    /// The key's id, and whether it is new.
    fn intern(&mut self, key: K) -> Result<(u32, bool), CompileError> {
        if let Some(id) = self.ids.get(&key) {
            return Ok((*id, false));
        }
        let id = self.next;
        if id >= PARITY_BIT {
            return Err(CompileError::IdsExhausted(self.what));
        }
        self.next += 1;
        self.ids.insert(key, id);
        Ok((id, true))
    }

    /// The key's id; `on_new` sees keys the first time, with their new id.
    fn intern_with(&mut self, key: K, on_new: impl FnOnce(u32, &K)) -> Result<u32, CompileError> {
        if let Some(id) = self.ids.get(&key) {
            return Ok(*id);
        }
        let id = self.next;
        if id >= PARITY_BIT {
            return Err(CompileError::IdsExhausted(self.what));
        }
        self.next += 1;
        on_new(id, &key);
        self.ids.insert(key, id);
        Ok(id)
    }
}

/// Compiles `policies` for the generation with `parity` (0 or [`PARITY_BIT`]).
pub fn compile(
    policies: &PolicySet,
    cgroups: &CgroupResolution,
    parity: u32,
) -> Result<Compiled, CompileError> {
    compile_carrying(policies, cgroups, parity, &[])
}

/// [`compile`], also writing name classes for `carried` name sets of earlier generations
/// (see [`Compiled::name_sets`]): addresses learned while they were in force still carry
/// their ids, and must keep meeting the rules of the patterns they name.
pub fn compile_carrying(
    policies: &PolicySet,
    cgroups: &CgroupResolution,
    parity: u32,
    carried: &[(NameSetId, BTreeSet<String>)],
) -> Result<Compiled, CompileError> {
    if parity != 0 && parity != PARITY_BIT {
        return Err(CompileError::BadParity(parity));
    }
    let all = &policies.policies;
    let mut out = Compiled {
        parity,
        rules: policies.rule_table(),
        ..Compiled::default()
    };
    if all.iter().any(|p| p.selector.selects_cgroups()) {
        out.flags |= config_flags::CGROUP_SELECTORS;
    }
    if all.iter().any(|p| !p.selector.uids.is_empty()) {
        out.flags |= config_flags::UID_SELECTORS;
    }
    // Set whenever a loaded policy restricts inbound traffic, even if its selector resolves to
    // nothing yet: the flag also makes the egress program record UDP peers, and records only
    // made from now on can recognise replies once a pod or unit appears.
    if all.iter().any(Policy::restricts_inbound) {
        out.flags |= config_flags::INGRESS;
    }
    let hosts = hosts::index(all, carried, &mut out)?;
    let classes = cgroup_classes(all, cgroups, parity, &mut out)?;
    let distinct = scopes(all, &classes, parity, &mut out)?;

    let mut by_id: Vec<Option<&Rule>> = Vec::new();
    for rule in all.iter().flat_map(|p| p.rules.iter().chain(&p.ingress)) {
        let index = rule.id as usize;
        if by_id.len() <= index {
            by_id.resize(index + 1, None);
        }
        by_id[index] = Some(rule);
    }
    // Egress and ingress scope ids come from one interner, so the (scope, set) keys, and with
    // them the address classes, of the two directions never collide.
    let mut addr_classes: Interner<(u32, Vec<u32>)> = Interner::new(1, "address classes");
    for scope in &distinct {
        emit_scope(all, scope, &by_id, &hosts, &mut addr_classes, &mut out)?;
    }
    out.summary = Summary {
        policies: all.len(),
        rules: policies.rule_count(),
        prefixes: out.addr4.len() + out.addr6.len(),
        cgroups: out.cgroups.len(),
        scopes: distinct.iter().filter(|s| !s.ingress).count(),
        ingress_scopes: distinct.iter().filter(|s| s.ingress).count(),
        ports: out.ports.len(),
        hostnames: out.hostnames.len(),
        name_classes: out.name_classes.len(),
    };
    check_capacity(&out)?;
    Ok(out)
}

/// The address and port entries of one scope: egress rules by destination, or ingress rules
/// by source; and the name classes of an egress scope.
fn emit_scope(
    all: &[Policy],
    scope: &DistinctScope,
    by_id: &[Option<&Rule>],
    hosts: &hosts::HostIndex,
    addr_classes: &mut Interner<(u32, Vec<u32>)>,
    out: &mut Compiled,
) -> Result<(), CompileError> {
    let parity = out.parity;
    let applicable: Vec<&Policy> = scope.members.iter().map(|i| &all[*i]).collect();
    let rules: Vec<&Rule> = applicable
        .iter()
        .flat_map(|p| if scope.ingress { &p.ingress } else { &p.rules })
        .collect();
    let decide = |matched: &dyn Fn(&Rule) -> bool| {
        if scope.ingress {
            ingress_decision_for(&applicable, matched)
        } else {
            Some(decision_for(&applicable, matched))
        }
    };
    let scope_id = scope.id | parity;
    for family in [Family::V4, Family::V6] {
        for (prefix, set) in addr::classify(&rules, family) {
            let class = addr_classes.intern_with((scope.id, set), |id, (_, set)| {
                let class_rules: Vec<&Rule> =
                    set.iter().filter_map(|id| by_id[*id as usize]).collect();
                ports::emit(id | parity, &class_rules, &decide, &mut out.ports);
            })? | parity;
            match family {
                Family::V4 => {
                    // Truncation is intended: IPv4 prefixes live in the low 32 bits.
                    let bytes = (prefix.addr as u32).to_be_bytes();
                    out.addr4.push((
                        32 + u32::from(prefix.len),
                        addr4_data(scope_id, bytes),
                        class,
                    ));
                }
                Family::V6 => {
                    let bytes = prefix.addr.to_be_bytes();
                    out.addr6.push((
                        32 + u32::from(prefix.len),
                        addr6_data(scope_id, bytes),
                        class,
                    ));
                }
            }
        }
    }
    if !scope.ingress {
        hosts::emit_name_classes(hosts, scope.id, &rules, &decide, addr_classes, out)?;
    }
    Ok(())
}

/// Cgroup classes: for each selected or excluded path, the policies whose cgroup part selects
/// it. Returns the classes (id without parity, member policy indexes); class 0 selects nothing.
fn cgroup_classes(
    all: &[Policy],
    resolution: &CgroupResolution,
    parity: u32,
    out: &mut Compiled,
) -> Result<Vec<(u32, Vec<usize>)>, CompileError> {
    let mut paths = BTreeSet::new();
    let normalized =
        |p: &String| Some(p.trim_end_matches('/').to_string()).filter(|p| !p.is_empty());
    for selector in all.iter().map(|p| &p.selector) {
        paths.extend(selector.cgroups.iter().cloned());
        // An excluded path must be listed: the kernel uses the deepest listed ancestor, which
        // would otherwise be the selected path above it.
        paths.extend(selector.excluded.iter().filter_map(normalized));
        for unit in &selector.units {
            paths.extend(resolution.paths(unit).iter().filter_map(normalized));
        }
        paths.extend(resolution.pod_paths(selector).iter().filter_map(normalized));
    }
    let mut classes = vec![(0, Vec::new())];
    let mut interner: Interner<Vec<usize>> = Interner::new(1, "cgroup classes");
    // Class (without parity) of each listed path; ancestors sort before their descendants.
    let mut listed: HashMap<String, u32> = HashMap::new();
    for path in paths {
        let members: Vec<usize> = (0..all.len())
            .filter(|i| {
                all[*i].selector.selects_cgroups()
                    && resolution.matches_cgroup(&all[*i].selector, &path)
            })
            .collect();
        // An empty class needs no entry unless a listed ancestor has a class (an exclusion
        // below a selected path): the kernel's "no entry" (class 0) says the same.
        if members.is_empty() && inherited_class(&listed, &path) == 0 {
            continue;
        }
        let id = if members.is_empty() {
            0
        } else {
            let (id, new) = interner.intern(members.clone())?;
            if new {
                classes.push((id, members));
            }
            id
        };
        listed.insert(path.clone(), id);
        out.cgroups.push((path, id | parity));
    }
    Ok(classes)
}

/// The class of `path`'s deepest listed proper ancestor, as the kernel would find it; 0 if none.
fn inherited_class(listed: &HashMap<String, u32>, path: &str) -> u32 {
    let mut ancestor = path;
    while let Some((parent, _)) = ancestor.rsplit_once('/') {
        if let Some(class) = listed.get(parent) {
            return *class;
        }
        ancestor = parent;
    }
    0
}

/// Every map holds two generations during a reload: a generation may fill half of it.
fn check_capacity(out: &Compiled) -> Result<(), CompileError> {
    use egress_common::{capacity, maps};
    for (map, entries, capacity) in [
        (
            maps::CGROUP_CLASSES,
            out.cgroups.len(),
            capacity::CGROUP_CLASSES,
        ),
        (maps::SCOPES, out.scopes.len(), capacity::SCOPES),
        (maps::ADDR4, out.addr4.len(), capacity::ADDR4),
        (maps::ADDR6, out.addr6.len(), capacity::ADDR6),
        (
            maps::PORT_TABLES,
            out.ports.tables.len(),
            capacity::PORT_TABLES,
        ),
        (maps::PORTS, out.ports.trie.len(), capacity::PORTS),
        (maps::HOSTNAMES, out.hostnames.len(), capacity::HOSTNAMES),
        (
            maps::NAME_CLASSES,
            out.name_classes.len(),
            capacity::NAME_CLASSES,
        ),
    ] {
        let limit = usize::try_from(capacity / 2).unwrap_or(usize::MAX);
        if entries > limit {
            return Err(CompileError::TooLarge {
                map,
                entries,
                limit,
            });
        }
    }
    Ok(())
}
