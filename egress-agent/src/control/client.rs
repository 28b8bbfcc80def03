//! The command line's side of the control socket: one request, one response.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;

use super::{
    ControlError,
    protocol::{Method, Request, Response, VERSION},
};

/// Applying a large policy compiles and writes maps: allow for it.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Where the socket is, for the subcommands that talk to the agent.
#[derive(Clone, Debug, clap::Args)]
pub struct SocketArgs {
    /// The running agent's control socket.
    #[arg(long = "socket", value_name = "PATH", default_value = super::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// Sends `method` and returns the agent's result, or its error as [`ControlError::Agent`].
pub fn call(socket: &Path, method: Method) -> Result<serde_json::Value, ControlError> {
    let response = exchange(socket, method)?;
    let Response {
        version: _,
        ok,
        result,
        error,
    } = response;
    if ok {
        Ok(result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ControlError::Agent(
            error.unwrap_or_else(|| "the agent gave no reason".into()),
        ))
    }
}

/// [`call`], with the result read as `T`.
pub fn call_as<T: DeserializeOwned>(socket: &Path, method: Method) -> Result<T, ControlError> {
    let value = call(socket, method)?;
    serde_json::from_value(value).map_err(|err| ControlError::Protocol(err.to_string()))
}

fn exchange(socket: &Path, method: Method) -> Result<Response, ControlError> {
    let io = |what| {
        move |source| ControlError::Socket {
            what,
            path: socket.to_owned(),
            source,
        }
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(io("configuring"))?;
    let request = Request {
        version: VERSION,
        method,
    };
    let mut line =
        serde_json::to_string(&request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(io("writing to"))?;
    let mut answer = String::new();
    BufReader::new(stream.take(64 << 20))
        .read_line(&mut answer)
        .map_err(io("reading from"))?;
    if answer.is_empty() {
        return Err(ControlError::Protocol(
            "the agent closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(e.to_string()))
}
