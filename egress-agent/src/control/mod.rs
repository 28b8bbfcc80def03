//! The control socket: a small versioned JSON API between the running agent and the
//! `egress status`, `rules`, `apply` and `explain` subcommands (protocol: [`protocol`]).

pub mod client;
pub mod diff;
pub mod handler;
pub mod protocol;
pub mod server;

use std::path::PathBuf;

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/egress/egress.sock";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{what} the control socket {path}: {source}")]
    Socket {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "connecting to the agent at {path} failed (is it running? reading needs root or the \
         socket's group): {source}"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("another agent is listening on {0}")]
    InUse(PathBuf),
    #[error("unknown group `{0}` for the control socket")]
    UnknownGroup(String),
    #[error("the agent's answer could not be read: {0}")]
    Protocol(String),
    /// The agent answered with an error.
    #[error("{0}")]
    Agent(String),
}
