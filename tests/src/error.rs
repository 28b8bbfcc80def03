//! The fixtures' error type.

use std::{io, process::Output};

/// What can go wrong while setting up or driving a fixture.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A command ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// Anything else, described in words.
    #[error("{0}")]
    Other(String),
}

/// Results of fixture operations.
pub type Result<T, E = FixtureError> = std::result::Result<T, E>;

/// Adds a description to `io::Result`s.
pub trait IoContext<T> {
    /// Wraps the error with `context`.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| FixtureError::Io {
            context: context(),
            source,
        })
    }
}

/// Turns a finished command's output into its stdout, or an error carrying its stderr.
pub(crate) fn check_output(command: &str, output: &Output) -> Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(FixtureError::Command {
            command: command.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
