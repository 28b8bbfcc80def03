//! The agent's side of the control socket and the metrics endpoint: answers each request
//! from the run loop, which owns the enforcer, so that a request never races a reload.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use egress_common::{capacity, maps};
use serde::Serialize;
use tokio::sync::oneshot;

use super::protocol::{
    Applied, AttachStatus, DnsStats, EventStats, ExplainParams, Explained, MapUsage, Method,
    PolicyStatus, ReloadStats, RuleStatus, Rules, Status,
};
use crate::{
    audit::{KernelClock, clock::rfc3339},
    datapath::{Attachment, Counters, LearnedAddresses, PROGRAMS, RuleHitCounters},
    enforcer::{EnforceError, Enforcer, record_rejection_by},
    eval,
    policy::Mode,
    source::PolicySource,
};

/// A request for the run loop, with where its answer goes.
pub enum Call {
    Control {
        method: Method,
        /// The client's uid, from the socket's peer credentials.
        uid: u32,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
    /// The Prometheus exposition text.
    Metrics { reply: oneshot::Sender<String> },
}

/// What the agent knows beyond the enforcer: how it runs and the kernel's counters.
pub struct AgentState {
    pub started: Instant,
    pub program_version: String,
    pub bpffs: PathBuf,
    pub cgroup_root: PathBuf,
    pub attachment: Attachment,
    pub counters: Counters,
    pub rule_hits: RuleHitCounters,
    pub learned: LearnedAddresses,
    /// Connection records written by the event reader.
    pub events_written: Arc<AtomicU64>,
    pub reloads: ReloadStats,
}

fn to_value<T: Serialize>(value: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|err| err.to_string())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    }
}

impl AgentState {
    /// Answers one control request of the client with uid `uid`.
    pub fn handle(
        &mut self,
        enforcer: &mut Enforcer,
        method: Method,
        uid: u32,
    ) -> Result<serde_json::Value, String> {
        if method.needs_root() && uid != 0 {
            let error = format!("changing policy requires root; the client runs as uid {uid}");
            if let Method::Apply { paths, .. } = &method {
                // The files are not read for a refused client: the record has no digest.
                record_rejection_by(
                    enforcer.audit(),
                    enforcer.generation(),
                    &PolicySource::Files(paths.clone()),
                    "",
                    &error,
                    Some(uid),
                );
            }
            return Err(error);
        }
        match method {
            Method::Status => to_value(&self.status(enforcer)),
            Method::Rules { policy } => to_value(&self.rules(enforcer, policy.as_deref())?),
            Method::Explain(params) => to_value(&explain(enforcer, &params)?),
            Method::Apply { paths, dry_run } => {
                to_value(&self.apply(enforcer, paths, dry_run, uid)?)
            }
        }
    }

    /// Reloads `source` (SIGHUP, a file change), counting the result.
    pub fn reload(&mut self, enforcer: &mut Enforcer, source: &PolicySource, why: &str) {
        match enforcer.load(source) {
            Ok(applied) => {
                self.reloads.applied += 1;
                tracing::info!(generation = applied.generation, "reloaded on {why}");
            }
            Err(err) => {
                self.reloads.rejected += 1;
                tracing::error!("reload on {why} rejected; the generation in force stays: {err}");
            }
        }
    }

    fn apply(
        &mut self,
        enforcer: &mut Enforcer,
        paths: Vec<PathBuf>,
        dry_run: bool,
        uid: u32,
    ) -> Result<Applied, String> {
        if paths.is_empty() {
            return Err("apply needs at least one policy path".into());
        }
        let source = PolicySource::Files(paths);
        let render = |err: EnforceError| format!("the policy was rejected: {err}");
        if dry_run {
            let diff = enforcer.dry_run(&source).map_err(render)?;
            return Ok(Applied {
                dry_run,
                generation: enforcer.generation(),
                diff,
            });
        }
        let before = enforcer.active_policies().cloned();
        match enforcer.load_by(&source, uid) {
            Ok(applied) => {
                self.reloads.applied += 1;
                tracing::info!(generation = applied.generation, uid, "applied on request");
                let diff = match enforcer.active_policies() {
                    Some(after) => super::diff::diff(before.as_ref(), after),
                    None => super::protocol::PolicyDiff::default(),
                };
                Ok(Applied {
                    dry_run,
                    generation: applied.generation,
                    diff,
                })
            }
            Err(err) => {
                self.reloads.rejected += 1;
                Err(render(err))
            }
        }
    }

    pub fn status(&self, enforcer: &Enforcer) -> Status {
        let entries = enforcer.map_entries();
        let usage = |name: &str, entries: usize, capacity: u32| MapUsage {
            name: name.to_owned(),
            entries: entries as u64,
            capacity: u64::from(capacity),
        };
        let counters = self.counters.read().unwrap_or_default();
        let learned_entries = self.learned.entries();
        let dns = DnsStats {
            answers: counters.dns_answers,
            learned: counters.dns_learned,
            dropped: counters.dns_dropped,
            unread: counters.dns_unread,
            learned_entries,
            learned_capacity: u64::from(capacity::LEARNED),
            learned_evicted: counters.dns_new.saturating_sub(learned_entries),
        };
        Status {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            program_version: self.program_version.clone(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            generation: enforcer.generation(),
            sha256: enforcer.active_digest().unwrap_or_default().to_owned(),
            sources: enforcer
                .active_source()
                .map(PolicySource::names)
                .unwrap_or_default(),
            policies: enforcer
                .active_policies()
                .map(|set| {
                    set.policies
                        .iter()
                        .map(|p| PolicyStatus {
                            name: p.name.clone(),
                            mode: mode_name(p.mode).to_owned(),
                            rules: p.rules.len() + p.ingress.len(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            attach: AttachStatus {
                cgroup: self.cgroup_root.display().to_string(),
                programs: PROGRAMS.map(str::to_owned).to_vec(),
                attachment: match self.attachment {
                    Attachment::Fresh => "fresh",
                    Attachment::Adopted => "adopted",
                }
                .to_owned(),
                bpffs: self.bpffs.display().to_string(),
            },
            maps: vec![
                usage(
                    maps::CGROUP_CLASSES,
                    entries.cgroups,
                    capacity::CGROUP_CLASSES,
                ),
                usage(maps::SCOPES, entries.scopes, capacity::SCOPES),
                usage(maps::ADDR4, entries.addr4, capacity::ADDR4),
                usage(maps::ADDR6, entries.addr6, capacity::ADDR6),
                usage(
                    maps::PORT_TABLES,
                    entries.port_tables,
                    capacity::PORT_TABLES,
                ),
                usage(maps::PORTS, entries.ports, capacity::PORTS),
            ],
            events: EventStats {
                written: self.events_written.load(Ordering::Relaxed),
                lost: counters.events_lost,
            },
            reloads: self.reloads,
            dns,
        }
    }

    /// Every rule of the generation in force (of `policy` only, if given) with its hits.
    pub fn rules(&self, enforcer: &Enforcer, policy: Option<&str>) -> Result<Rules, String> {
        let set = enforcer.active_policies();
        if let Some(name) = policy
            && !set.is_some_and(|set| set.policies.iter().any(|p| p.name == name))
        {
            return Err(format!("no policy named `{name}` is in force"));
        }
        let table = set.map(|set| set.rule_table()).unwrap_or_default();
        // Last-hit times are `CLOCK_MONOTONIC`, which stops while the host is suspended:
        // its offset to wall time is taken now, not once at start.
        let clock = KernelClock::monotonic();
        let mut rules = Vec::with_capacity(table.len());
        for info in table {
            if policy.is_some_and(|name| name != info.policy) {
                continue;
            }
            // Rule ids past the counters' capacity are decided but not counted: zeros.
            let hits = self.rule_hits.read(info.id).unwrap_or_default();
            rules.push(RuleStatus {
                id: info.id,
                policy: info.policy,
                rule: info.rule,
                action: info.action.as_str().to_owned(),
                mode: mode_name(info.mode).to_owned(),
                packets_allowed: hits.packets_allowed,
                packets_denied: hits.packets_denied,
                connections_allowed: hits.connections_allowed,
                connections_denied: hits.connections_denied,
                last_hit: (hits.last_hit_ns != 0).then(|| rfc3339(clock.wall(hits.last_hit_ns))),
            });
        }
        Ok(Rules {
            generation: enforcer.generation(),
            rules,
        })
    }
}

fn explain(enforcer: &Enforcer, params: &ExplainParams) -> Result<Explained, String> {
    let ExplainParams {
        cgroup,
        uid,
        to,
        protocol,
        port,
        names,
    } = params;
    let set = enforcer
        .active_policies()
        .ok_or("no policy is in force yet")?;
    let explanation = eval::explain_named(set, cgroup, *uid, *to, names, *protocol, *port);
    let mut text = Vec::new();
    crate::cli::explain::write_text(&mut text, set, &explanation).map_err(|e| e.to_string())?;
    Ok(Explained {
        json: crate::cli::explain::to_json(set, &explanation),
        text: String::from_utf8_lossy(&text).into_owned(),
    })
}
