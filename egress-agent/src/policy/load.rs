//! Loading policy files: documents, cross-document checks, warnings with positions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{Diagnostic, LoadError, Location, from_yaml};
use super::probe::{self, PROBE_MESSAGE, Target};
use super::raw::RawDocument;
use super::{Policy, PolicySet, lint};

/// Warnings beyond this many are reported at their file without a position: each position
/// costs a parse of the file.
const MAX_LOCATED_WARNINGS: usize = 200;

struct Source {
    path: PathBuf,
    text: String,
}

/// Where a policy came from: the source and the document index within it.
#[derive(Clone, Copy)]
struct Origin {
    source: usize,
    document: usize,
}

/// Loads every policy in the given files and directories (`*.yaml`, `*.yml`, sorted).
pub fn load(paths: &[PathBuf]) -> Result<PolicySet, LoadError> {
    load_paths(paths)
}

/// [`load`].
pub fn load_paths(paths: &[PathBuf]) -> Result<PolicySet, LoadError> {
    let mut sources = Vec::new();
    for path in source_files(paths)? {
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        sources.push(Source { path, text });
    }
    load_sources(&sources)
}

/// The files [`load`] reads for `paths`, in load order: files as given, and the `*.yaml` and
/// `*.yml` files of directories, sorted.
pub fn source_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(LoadError::Empty(path.clone()));
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Loads the policies in `text`, reporting positions against `file`.
pub fn parse_str(file: &Path, text: &str) -> Result<PolicySet, LoadError> {
    load_sources(&[Source {
        path: file.to_path_buf(),
        text: text.to_string(),
    }])
}

fn load_sources(sources: &[Source]) -> Result<PolicySet, LoadError> {
    let mut errors = Vec::new();
    let mut policies: Vec<(Policy, Origin)> = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        for (document, de) in serde_yaml::Deserializer::from_str(&source.text).enumerate() {
            probe::reset(None);
            match Option::<RawDocument>::deserialize(de) {
                Ok(Some(raw)) => {
                    let origin = Origin {
                        source: index,
                        document,
                    };
                    let policy = raw.into_policy();
                    check_rule_names(&policy, sources, origin, &mut errors);
                    policies.push((policy, origin));
                }
                Ok(None) => {}
                Err(err) => {
                    let diag = from_yaml(&source.path, &err);
                    // After a syntax error serde_yaml's document iterator yields the same
                    // error forever: a repeat means nothing more can be read from this file.
                    if errors.contains(&diag) {
                        break;
                    }
                    errors.push(diag);
                }
            }
        }
    }
    let mut first_seen: HashMap<String, Origin> = HashMap::new();
    for (policy, origin) in &policies {
        match first_seen.get(&policy.name) {
            None => {
                first_seen.insert(policy.name.clone(), *origin);
            }
            Some(first) => {
                let first_place = diagnostic(sources, *first, Target::PolicyName, String::new());
                errors.push(diagnostic(
                    sources,
                    *origin,
                    Target::PolicyName,
                    format!(
                        "duplicate policy name `{}`; first defined at {}",
                        policy.name,
                        first_place.place()
                    ),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    let mut set = PolicySet::new(policies.into_iter().map(|(p, _)| p).collect());
    let mut located = 0;
    for warning in lint::warnings(&set) {
        let origin = first_seen[&warning.policy];
        let diag = if located < MAX_LOCATED_WARNINGS {
            located += 1;
            diagnostic(sources, origin, warning.target, warning.message)
        } else {
            Diagnostic {
                file: sources[origin.source].path.clone(),
                location: None,
                message: warning.message,
            }
        };
        set.warnings.push(diag);
    }
    Ok(set)
}

/// Rule names are unique within a policy across both directions: events and the rule table
/// name a rule by (policy, rule).
fn check_rule_names(
    policy: &Policy,
    sources: &[Source],
    origin: Origin,
    errors: &mut Vec<Diagnostic>,
) {
    let egress = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r, Target::RuleName(i)));
    let ingress = policy
        .ingress
        .iter()
        .enumerate()
        .map(|(i, r)| (r, Target::IngressRuleName(i)));
    let mut seen: HashMap<&str, Target> = HashMap::new();
    for (rule, target) in egress.chain(ingress) {
        // Later duplicates keep pointing at the first one.
        let Some(first) = seen.get(rule.name.as_str()).copied() else {
            seen.insert(&rule.name, target);
            continue;
        };
        let first_at = locate(sources, origin, first)
            .map(|l| format!(" (first at line {}, column {})", l.line, l.column))
            .unwrap_or_default();
        errors.push(diagnostic(
            sources,
            origin,
            target,
            format!(
                "duplicate rule name `{}` in policy `{}`{first_at}",
                rule.name, policy.name
            ),
        ));
    }
}

fn diagnostic(sources: &[Source], origin: Origin, target: Target, message: String) -> Diagnostic {
    Diagnostic {
        file: sources[origin.source].path.clone(),
        location: locate(sources, origin, target),
        message,
    }
}

/// Parses the origin's document again with a probe armed at `target`.
fn locate(sources: &[Source], origin: Origin, target: Target) -> Option<Location> {
    let de =
        serde_yaml::Deserializer::from_str(&sources[origin.source].text).nth(origin.document)?;
    probe::reset(Some(target));
    let result = Option::<RawDocument>::deserialize(de);
    probe::reset(None);
    let err = result.err()?;
    if !err.to_string().contains(PROBE_MESSAGE) {
        return None;
    }
    err.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    })
}
