//! Turns policy sources into the active generation: load, compile, write, switch, record.
//! A rejected policy is recorded and leaves the active generation in force.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use sha2::{Digest as _, Sha256};

use crate::{
    audit::{AuditLog, RuleNames, clock::rfc3339, record::PolicyRecord},
    cgroup::Hierarchy,
    compile::{self, CgroupResolution, Compiled},
    datapath::{Applied, GenerationWriter},
    policy::{self, PolicySet},
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
}

/// What the active generation was built from.
struct Active {
    sources: Vec<PathBuf>,
    digest: String,
    policies: PolicySet,
    resolution: CgroupResolution,
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
        }
    }

    /// Loads `sources` and makes them the active generation.
    pub fn load(&mut self, sources: &[PathBuf]) -> Result<Applied, EnforceError> {
        let digest = digest_sources(sources);
        let result = policy::load(sources)
            .map_err(EnforceError::from)
            .and_then(|policies| {
                for warning in &policies.warnings {
                    tracing::warn!("{}", warning.render("warning"));
                }
                let resolution = self.resolve(&policies);
                let applied = self.switch(&policies, &resolution)?;
                Ok((applied, policies, resolution))
            });
        match result {
            Ok((applied, policies, resolution)) => {
                self.record(&applied, sources, &digest, &policies, None);
                self.active = Some(Active {
                    sources: sources.to_vec(),
                    digest,
                    policies,
                    resolution,
                });
                Ok(applied)
            }
            Err(err) => {
                self.record_rejection(sources, &digest, &err);
                Err(err)
            }
        }
    }

    /// Looks the selectors' units up again; re-applies when a unit appeared or moved.
    pub fn rescan_units(&mut self) -> Result<Option<Applied>, EnforceError> {
        let Some(active) = self.active.take() else {
            return Ok(None);
        };
        let resolution = self.resolve(&active.policies);
        if resolution == active.resolution {
            self.active = Some(active);
            return Ok(None);
        }
        match self.switch(&active.policies, &resolution) {
            Ok(applied) => {
                tracing::info!(
                    generation = applied.generation,
                    "units moved in the cgroup tree; re-applied"
                );
                self.record(
                    &applied,
                    &active.sources,
                    &active.digest,
                    &active.policies,
                    None,
                );
                self.active = Some(Active {
                    resolution,
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

    fn resolve(&self, policies: &PolicySet) -> CgroupResolution {
        let units = policies
            .policies
            .iter()
            .flat_map(|policy| policy.selector.units.iter().map(String::as_str));
        CgroupResolution {
            units: self.hierarchy.find_units(units),
        }
    }

    fn switch(
        &mut self,
        policies: &PolicySet,
        resolution: &CgroupResolution,
    ) -> Result<Applied, EnforceError> {
        let compiled: Compiled = compile::compile(policies, resolution, self.writer.next_parity())?;
        let applied = self.writer.apply(&compiled, &self.hierarchy)?;
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
        Ok(applied)
    }

    fn record(
        &self,
        applied: &Applied,
        sources: &[PathBuf],
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
            sources: sources.iter().map(|p| p.display().to_string()).collect(),
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

    fn record_rejection(&self, sources: &[PathBuf], digest: &str, err: &EnforceError) {
        let record = PolicyRecord {
            seq: 0,
            time: rfc3339(std::time::SystemTime::now()),
            kind: "policy",
            action: "rejected",
            generation: self.writer.active().generation,
            sha256: digest.to_owned(),
            sources: sources.iter().map(|p| p.display().to_string()).collect(),
            policies: 0,
            rules: 0,
            prefixes: 0,
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            error: Some(err.to_string()),
            by: None,
        };
        self.write(record);
    }

    fn write(&self, record: PolicyRecord) {
        let result = self
            .audit
            .lock()
            .map_err(|_| "poisoned")
            .map(|mut log| log.policy(record).and_then(|_| log.flush()));
        if let Ok(Err(err)) = result {
            tracing::error!(%err, "writing a policy record failed");
        }
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

/// SHA-256 over the policy files as read: each file's path and contents, in load order.
fn digest_sources(sources: &[PathBuf]) -> String {
    let mut hasher = Sha256::new();
    for file in policy::source_files(sources).unwrap_or_default() {
        hasher.update(file.display().to_string().as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(&file).unwrap_or_default());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
