//! `/etc/egress/agent.yaml`: every `egress agent` flag as configuration. Keys are the long
//! flag names (`audit-log: /var/log/egress/audit.jsonl`); lists give a flag that takes several
//! values; `true` sets a switch. The file's values go through the same parser as the flags,
//! into the same [`AgentArgs`], in one order of precedence: clap defaults < file < flags. A
//! flag given on the command line replaces the file's value, lists included.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{Args as _, FromArgMatches as _, parser::ValueSource};

use crate::agent::AgentArgs;

/// Read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG: &str = "/etc/egress/agent.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Flags(#[from] clap::Error),
}

fn command() -> clap::Command {
    AgentArgs::augment_args(clap::Command::new("egress agent").no_binary_name(true))
}

/// The agent's arguments from `flags` (what follows `egress agent` on the command line) and
/// the configuration file they name, or the default one if it exists.
pub fn agent_args(flags: Vec<OsString>) -> Result<AgentArgs, ConfigError> {
    let matches = command().try_get_matches_from(&flags)?;
    let (path, required) = match matches.get_one::<PathBuf>("config") {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(AgentArgs::from_arg_matches(&matches)?);
        }
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let mut argv = file_flags(&path, &text, &matches)?;
    argv.extend(flags);
    let merged = command()
        .try_get_matches_from(argv)
        .map_err(|err| ConfigError::Invalid {
            path: path.clone(),
            message: err.render().to_string(),
        })?;
    Ok(AgentArgs::from_arg_matches(&merged)?)
}

/// The file's settings as flags, leaving out those the command line gives.
fn file_flags(
    path: &Path,
    text: &str,
    cli: &clap::ArgMatches,
) -> Result<Vec<OsString>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let document: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|err| invalid(err.to_string()))?;
    let mapping = match document {
        serde_yaml::Value::Mapping(mapping) => mapping,
        serde_yaml::Value::Null => return Ok(Vec::new()),
        _ => return Err(invalid("expected a mapping of flag names to values".into())),
    };
    let command = command();
    let mut argv = Vec::new();
    for (key, value) in mapping {
        let key = key
            .as_str()
            .ok_or_else(|| invalid(format!("keys are flag names, not {key:?}")))?;
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(key) && !arg.is_hide_set())
            .filter(|arg| arg.get_id() != "config")
            .ok_or_else(|| invalid(format!("unknown setting `{key}`")))?;
        if cli.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let items = match value {
            serde_yaml::Value::Null => continue,
            serde_yaml::Value::Sequence(items) => items,
            scalar => vec![scalar],
        };
        for item in items {
            let text = match item {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) if !arg.get_action().takes_values() => {
                    if b {
                        argv.push(OsString::from(format!("--{key}")));
                    }
                    continue;
                }
                serde_yaml::Value::Bool(b) => b.to_string(),
                other => return Err(invalid(format!("`{key}`: unexpected value {other:?}"))),
            };
            argv.push(OsString::from(format!("--{key}={text}")));
        }
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: &str, flags: &[&str]) -> Result<AgentArgs, ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, config).expect("write config");
        let mut argv: Vec<OsString> = vec!["--config".into(), path.into()];
        argv.extend(flags.iter().map(OsString::from));
        agent_args(argv)
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let a = args(
            "policy: [/etc/egress/policies, /extra.yaml]\naudit-log: /var/log/x.jsonl\n\
             audit-log-keep: 9\nmetrics: 127.0.0.1:9464\n",
            &["--audit-log", "/tmp/flag.jsonl"],
        )
        .expect("valid");
        assert_eq!(
            a.policy,
            [
                PathBuf::from("/etc/egress/policies"),
                PathBuf::from("/extra.yaml")
            ]
        );
        assert_eq!(a.audit_log, PathBuf::from("/tmp/flag.jsonl"), "flags win");
        assert_eq!(a.audit_log_keep, 9, "the file beats the default");
        assert_eq!(a.metrics, Some("127.0.0.1:9464".parse().expect("addr")));
        assert_eq!(a.bpffs, PathBuf::from("/sys/fs/bpf/egress"), "default kept");
    }

    #[test]
    fn a_list_on_the_command_line_replaces_the_file_list() {
        let a = args("policy: [/a.yaml, /b.yaml]\n", &["--policy", "/c.yaml"]).expect("valid");
        assert_eq!(a.policy, [PathBuf::from("/c.yaml")]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_file() {
        let err = args("polcy: /a.yaml\n", &[]).expect_err("unknown key");
        assert!(err.to_string().contains("unknown setting `polcy`"), "{err}");
        let err = args("audit-log-keep: 0\n", &[]).expect_err("out of range");
        assert!(err.to_string().contains("agent.yaml"), "{err}");
        let err = args("on-exit: maybe\n", &[]).expect_err("bad enum");
        assert!(err.to_string().contains("maybe"), "{err}");
    }

    #[test]
    fn a_missing_default_file_is_fine_but_a_named_one_is_not() {
        let err = agent_args(vec!["--config".into(), "/nonexistent/agent.yaml".into()])
            .expect_err("named file missing");
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn the_example_configuration_parses() {
        let example = include_str!("../../packaging/egress/agent.yaml");
        let a = args(example, &[]).expect("the example is valid");
        assert_eq!(
            a.control_socket,
            PathBuf::from(crate::control::DEFAULT_SOCKET)
        );
    }
}
