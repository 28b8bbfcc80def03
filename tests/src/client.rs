//! Clients that run inside the client namespace and a test cgroup.

use std::{net::SocketAddr, path::Path, time::Duration};

use crate::{
    cgroup::CgroupGuard,
    error::{FixtureError, Result},
    net::NetNsGuard,
    process::{Placement, helper_bin, run_bounded},
};

/// Slack on top of a client's own timeout before the fixture kills it.
const SLACK: Duration = Duration::from_secs(5);

/// Exit code of the helper for "the network operation failed".
const HELPER_FAILED: i32 = 1;

/// How an HTTP request through curl ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpOutcome {
    /// The response body.
    Body(String),
    /// curl failed with this exit code and stderr.
    Failed { code: Option<i32>, stderr: String },
}

impl HttpOutcome {
    /// The body, if the request succeeded.
    pub fn body(&self) -> Option<&str> {
        match self {
            Self::Body(body) => Some(body),
            Self::Failed { .. } => None,
        }
    }

    /// Whether the connection itself failed: curl's "couldn't connect" (7) or
    /// "timed out" (28). Any other failure means something else went wrong.
    pub fn is_blocked(&self) -> bool {
        matches!(
            self,
            Self::Failed {
                code: Some(7 | 28),
                ..
            }
        )
    }
}

/// Runs programs in a network namespace and cgroup, optionally as another uid.
#[derive(Debug, Clone)]
pub struct Client {
    placement: Placement,
}

impl Client {
    /// A client in `net` and `cgroup`, as root.
    pub fn new(net: &NetNsGuard, cgroup: &CgroupGuard) -> Self {
        Self::in_cgroup_dir(net, cgroup.path())
    }

    /// A client in `net` and the cgroup directory `dir`.
    pub fn in_cgroup_dir(net: &NetNsGuard, dir: &Path) -> Self {
        Self {
            placement: Placement::new(net.path()).cgroup(dir),
        }
    }

    /// The same client running as `uid`.
    #[must_use]
    pub fn with_uid(&self, uid: u32) -> Self {
        Self {
            placement: self.placement.clone().uid(uid),
        }
    }

    /// Where this client's commands run.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Runs the helper binary with `args`; Ok(true) on success, Ok(false) when its network
    /// operation failed, Err for anything else.
    fn helper(&self, args: &[String], limit: Duration) -> Result<bool> {
        let helper = helper_bin()?;
        let mut cmd = self.placement.command(&helper)?;
        cmd.args(args);
        let out = run_bounded(&mut cmd, "egress-test-helper", limit)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(HELPER_FAILED) => Ok(false),
            _ => Err(FixtureError::Command {
                command: format!("egress-test-helper {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }),
        }
    }

    /// Whether a TCP connection to `addr` is established within `timeout`.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<bool> {
        let args = [
            "connect".to_owned(),
            addr.to_string(),
            timeout.as_millis().to_string(),
        ];
        self.helper(&args, timeout + SLACK)
    }

    /// Sends one UDP datagram to `addr` and whether its echo came back within `timeout`.
    /// A send refused by the kernel (EPERM from a dropping filter) counts as failure.
    pub fn udp_send_and_receive(&self, addr: SocketAddr, timeout: Duration) -> Result<bool> {
        let args = [
            "udp".to_owned(),
            addr.to_string(),
            timeout.as_millis().to_string(),
        ];
        self.helper(&args, timeout + SLACK)
    }

    /// Fetches `url` with curl (`-g` so IPv6 literals in brackets work).
    pub fn curl(&self, url: &str, timeout: Duration) -> Result<HttpOutcome> {
        let secs = format!("{:.3}", timeout.as_secs_f64());
        let mut cmd = self.placement.command("curl")?;
        // -q first: ignore ~/.curlrc (not even readable after a uid switch).
        cmd.args([
            "-q",
            "-sS",
            "-g",
            "--noproxy",
            "*",
            "--connect-timeout",
            &secs,
        ])
        .args(["--max-time", &secs, url]);
        let out = run_bounded(&mut cmd, "curl", timeout + SLACK)?;
        Ok(if out.status.success() {
            HttpOutcome::Body(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            HttpOutcome::Failed {
                code: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }
        })
    }

    /// Fetches `url` with curl and returns the body; any failure is an error.
    pub fn curl_get(&self, url: &str, timeout: Duration) -> Result<String> {
        match self.curl(url, timeout)? {
            HttpOutcome::Body(body) => Ok(body),
            HttpOutcome::Failed { code, stderr } => Err(FixtureError::Command {
                command: format!("curl {url}"),
                status: format!("{code:?}"),
                stderr,
            }),
        }
    }

    /// Runs the helper's `info` mode: its cgroup v2 path, uid and network namespace.
    pub fn info(&self) -> Result<String> {
        let helper = helper_bin()?;
        let mut cmd = self.placement.command(&helper)?;
        cmd.arg("info");
        let out = run_bounded(&mut cmd, "egress-test-helper info", SLACK)?;
        crate::error::check_output("egress-test-helper info", &out)
    }
}

/// `http://ADDR:PORT/` with IPv6 addresses in brackets.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}
