//! Turns policy sources into the active generation: load, compile, write, switch, record.
//! A rejected policy is recorded and leaves the active generation in force.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use crate::{
    audit::{AuditLog, RuleNames, clock::rfc3339, record::PolicyRecord},
    cgroup::Hierarchy,
    compile::{self, CgroupResolution, Compiled, NameSetHistory},
    control::{self, protocol::PolicyDiff},
    datapath::{Applied, GenerationWriter},
    policy::{self, PolicySet},
    source::PolicySource,
};

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    Load(#[from] policy::LoadError),
    #[error("compiling the policy failed: {0}")]
    Compile(#[from] compile::CompileError),
    #[error(transparent)]
    Write(#[from] crate::datapath::generation::WriteError),
}

pub struct Enforcer {
    hierarchy: Hierarchy,
    writer: GenerationWriter,
    audit: Arc<Mutex<AuditLog>>,
    rule_names: Arc<Mutex<RuleNames>>,
    active: Option<Active>,
    /// Name sets of the generations applied so far, carried into the next ones.
    name_sets: NameSetHistory,
}

/// What the active generation was built from.
struct Active {
    source: PolicySource,
    digest: String,
    policies: PolicySet,
    resolution: CgroupResolution,
    /// The cgroups the generation selects as they were when it was written.
    cgroups: CgroupIds,
    entries: MapEntries,
}

/// Every cgroup path a generation selects, with the id the kernel knows it by (`None`
/// while it does not exist). The cgroup map is keyed by id, looked up from the path when a
/// generation is written: a cgroup removed and made again at the same path (a restarted
/// service) has a new id that the map does not hold until the generation is written again.
type CgroupIds = BTreeMap<String, Option<u64>>;

/// Entries the active generation wrote to each policy map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapEntries {
    pub cgroups: usize,
    pub scopes: usize,
    pub addr4: usize,
    pub addr6: usize,
    pub port_tables: usize,
    /// `PORTS` trie entries (of tables whose runs did not fit).
    pub ports: usize,
}

impl Enforcer {
    pub fn new(
        hierarchy: Hierarchy,
        writer: GenerationWriter,
        audit: Arc<Mutex<AuditLog>>,
        rule_names: Arc<Mutex<RuleNames>>,
    ) -> Self {
        Self {
            hierarchy,
            writer,
            audit,
            rule_names,
            active: None,
            name_sets: NameSetHistory::default(),
        }
    }

    /// Loads `source` and makes it the active generation.
    pub fn load(&mut self, source: &PolicySource) -> Result<Applied, EnforceError> {
        self.apply_loaded(source, source.load())
    }

    /// [`Self::load`] on behalf of the client with uid `by`, which the audit record names.
    pub fn load_by(&mut self, source: &PolicySource, by: u32) -> Result<Applied, EnforceError> {
        self.apply_loaded_by(source, source.load(), Some(by))
    }

    /// Makes the policy loaded from `source` the active generation, or records why not.
    pub fn apply_loaded(
        &mut self,
        source: &PolicySource,
        loaded: Result<PolicySet, policy::LoadError>,
    ) -> Result<Applied, EnforceError> {
        self.apply_loaded_by(source, loaded, None)
    }

    /// Validates and compiles `source` in full, as an apply would, and returns what it would
    /// change; the kernel maps and the audit log are left alone.
    pub fn dry_run(&self, source: &PolicySource) -> Result<PolicyDiff, EnforceError> {
        let policies = source.load()?;
        let resolution = self.resolve(source, &policies);
        compile::compile_carrying(
            &policies,
            &resolution,
            self.writer.next_parity(),
            &self.name_sets.carried(),
        )?;
        Ok(control::diff::diff(self.active_policies(), &policies))
    }

    /// The policy in force, once one was applied.
    pub fn active_policies(&self) -> Option<&PolicySet> {
        self.active.as_ref().map(|active| &active.policies)
    }

    /// Where the policy in force came from.
    pub fn active_source(&self) -> Option<&PolicySource> {
        self.active.as_ref().map(|active| &active.source)
    }

    /// The digest of the policy in force, as its audit record carries it.
    pub fn active_digest(&self) -> Option<&str> {
        self.active.as_ref().map(|active| active.digest.as_str())
    }

    /// Entries the generation in force wrote to each policy map.
    pub fn map_entries(&self) -> MapEntries {
        self.active
            .as_ref()
            .map(|active| active.entries)
            .unwrap_or_default()
    }

    /// The audit log policy records go to.
    pub fn audit(&self) -> &Mutex<AuditLog> {
        &self.audit
    }

    /// The generation in force (0 before the first apply).
    pub fn generation(&self) -> u64 {
        self.writer.active().generation
    }

    /// [`Self::apply_loaded`], naming the client uid `by` (if any) in the audit record.
    pub fn apply_loaded_by(
        &mut self,
        source: &PolicySource,
        loaded: Result<PolicySet, policy::LoadError>,
        by: Option<u32>,
    ) -> Result<Applied, EnforceError> {
        let digest = source.digest();
        let result = loaded.map_err(EnforceError::from).and_then(|policies| {
            for warning in &policies.warnings {
                tracing::warn!("{}", warning.render("warning"));
            }
            let resolution = self.resolve(source, &policies);
            // Looked up before the switch: a cgroup recreated while the generation is
            // written then differs at the next rescan, which writes it again.
            let cgroups = cgroup_ids(&self.hierarchy, &policies, &resolution);
            let (applied, entries) = self.switch(&policies, &resolution)?;
            Ok((applied, policies, resolution, cgroups, entries))
        });
        match result {
            Ok((applied, policies, resolution, cgroups, entries)) => {
                self.record(&applied, source, &digest, &policies, by);
                self.active = Some(Active {
                    source: source.clone(),
                    digest,
                    policies,
                    resolution,
                    cgroups,
                    entries,
                });
                Ok(applied)
            }
            Err(err) => {
                record_rejection_by(
                    &self.audit,
                    self.writer.active().generation,
                    source,
                    &digest,
                    &err.to_string(),
                    by,
                );
                Err(err)
            }
        }
    }

    /// Looks the selected cgroups up again; re-applies when a unit appeared or moved, or a
    /// selected cgroup appeared, disappeared or was made again with a new id.
    pub fn rescan_cgroups(&mut self) -> Result<Option<Applied>, EnforceError> {
        let Some(active) = self.active.take() else {
            return Ok(None);
        };
        let resolution = self.resolve(&active.source, &active.policies);
        let cgroups = cgroup_ids(&self.hierarchy, &active.policies, &resolution);
        if resolution == active.resolution && cgroups == active.cgroups {
            self.active = Some(active);
            return Ok(None);
        }
        match self.switch(&active.policies, &resolution) {
            Ok((applied, entries)) => {
                tracing::info!(
                    generation = applied.generation,
                    "selected cgroups appeared, moved or were made again; re-applied"
                );
                self.record(
                    &applied,
                    &active.source,
                    &active.digest,
                    &active.policies,
                    None,
                );
                self.active = Some(Active {
                    resolution,
                    cgroups,
                    entries,
                    ..active
                });
                Ok(Some(applied))
            }
            Err(err) => {
                self.active = Some(active);
                Err(err)
            }
        }
    }

    fn resolve(&self, source: &PolicySource, policies: &PolicySet) -> CgroupResolution {
        let units = policies
            .policies
            .iter()
            .flat_map(|policy| policy.selector.units.iter().map(String::as_str));
        CgroupResolution {
            units: self.hierarchy.find_units(units),
            // Resolved by the Kubernetes watch; none for file sources.
            pods: source.pods(),
        }
    }

    fn switch(
        &mut self,
        policies: &PolicySet,
        resolution: &CgroupResolution,
    ) -> Result<(Applied, MapEntries), EnforceError> {
        let compiled: Compiled = compile::compile_carrying(
            policies,
            resolution,
            self.writer.next_parity(),
            &self.name_sets.carried(),
        )?;
        let applied = self.writer.apply(&compiled, &self.hierarchy)?;
        self.name_sets.record(&compiled.name_sets);
        for path in &applied.missing_cgroups {
            tracing::warn!(cgroup = %path, "a selected cgroup does not exist; it governs nothing until it does");
        }
        let names: HashMap<u32, (String, String)> = policies
            .rule_table()
            .into_iter()
            .map(|info| (info.id, (info.policy, info.rule)))
            .collect();
        if let Ok(mut rule_names) = self.rule_names.lock() {
            rule_names.insert(applied.generation, names);
        }
        let entries = MapEntries {
            cgroups: compiled
                .cgroups
                .len()
                .saturating_sub(applied.missing_cgroups.len()),
            scopes: compiled.scopes.len(),
            addr4: compiled.addr4.len(),
            addr6: compiled.addr6.len(),
            port_tables: compiled.ports.tables.len(),
            ports: compiled.ports.trie.len(),
        };
        Ok((applied, entries))
    }

    fn record(
        &self,
        applied: &Applied,
        source: &PolicySource,
        digest: &str,
        policies: &PolicySet,
        by: Option<u32>,
    ) {
        let previous = self.active.as_ref().map(|active| &active.policies);
        let (added, removed, changed) = diff(previous, policies);
        let record = PolicyRecord {
            seq: 0,
            time: rfc3339(std::time::SystemTime::now()),
            kind: "policy",
            action: "applied",
            generation: applied.generation,
            sha256: digest.to_owned(),
            sources: source.names(),
            policies: policies.policies.len(),
            rules: policies.rule_count(),
            prefixes: policies.prefix_count(),
            added,
            removed,
            changed,
            error: None,
            by,
        };
        self.write(record);
    }

    fn write(&self, record: PolicyRecord) {
        write_policy_record(&self.audit, record);
    }
}

/// Records that the policy from `source` was rejected and `generation` stays in force.
pub fn record_rejection(
    audit: &Mutex<AuditLog>,
    generation: u64,
    source: &PolicySource,
    digest: &str,
    error: &str,
) {
    record_rejection_by(audit, generation, source, digest, error, None);
}

/// [`record_rejection`], naming the client uid `by` that asked for the change.
pub fn record_rejection_by(
    audit: &Mutex<AuditLog>,
    generation: u64,
    source: &PolicySource,
    digest: &str,
    error: &str,
    by: Option<u32>,
) {
    let record = PolicyRecord {
        seq: 0,
        time: rfc3339(std::time::SystemTime::now()),
        kind: "policy",
        action: "rejected",
        generation,
        sha256: digest.to_owned(),
        sources: source.names(),
        policies: 0,
        rules: 0,
        prefixes: 0,
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        error: Some(error.to_owned()),
        by,
    };
    write_policy_record(audit, record);
}

/// The ids of every cgroup path the policies select through `resolution`: paths named by
/// selectors, and the paths their units and pods resolved to.
fn cgroup_ids(
    hierarchy: &Hierarchy,
    policies: &PolicySet,
    resolution: &CgroupResolution,
) -> CgroupIds {
    let mut paths = BTreeSet::new();
    for selector in policies.policies.iter().map(|policy| &policy.selector) {
        paths.extend(selector.cgroups.iter());
        paths.extend(
            selector
                .units
                .iter()
                .flat_map(|unit| resolution.paths(unit)),
        );
        paths.extend(resolution.pod_paths(selector));
    }
    paths
        .into_iter()
        .map(|path| (path.clone(), hierarchy.id_of(path).ok()))
        .collect()
}

fn write_policy_record(audit: &Mutex<AuditLog>, record: PolicyRecord) {
    // Records can carry what a client sent (paths, and errors that quote them): capped, so
    // that no request makes the agent write an outsized record.
    let record = record.capped();
    let result = audit
        .lock()
        .map_err(|_| "poisoned")
        .map(|mut log| log.policy(record).and_then(|_| log.flush()));
    if let Ok(Err(err)) = result {
        tracing::error!(%err, "writing a policy record failed");
    }
}

/// Policy names added, removed and changed between two sets.
fn diff(previous: Option<&PolicySet>, next: &PolicySet) -> (Vec<String>, Vec<String>, Vec<String>) {
    let index = |set: &PolicySet| -> BTreeMap<String, policy::Policy> {
        set.policies
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect()
    };
    let before = previous.map(index).unwrap_or_default();
    let after = index(next);
    let added = after
        .keys()
        .filter(|name| !before.contains_key(*name))
        .cloned()
        .collect();
    let removed = before
        .keys()
        .filter(|name| !after.contains_key(*name))
        .cloned()
        .collect();
    let changed = after
        .iter()
        .filter(|(name, policy)| before.get(*name).is_some_and(|old| old != *policy))
        .map(|(name, _)| name.clone())
        .collect();
    (added, removed, changed)
}
