//! The release agent binary as the benchmarks run it, through the test fixture's launcher
//! (`egress_tests::AgentGuard`): its own pin directory (`/sys/fs/bpf/egress-bench-<pid>`),
//! `--on-exit detach`, its own control socket and audit log (never rotated) in a temporary
//! directory. Dropping it stops the agent and removes its pins, on error too.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use egress_agent::control::{
    client::call_as,
    protocol::{EventStats, Method, Status},
};
use egress_tests::{AgentGuard, agent::AgentOptions};

pub struct BenchAgent {
    agent: AgentGuard,
}

impl BenchAgent {
    /// Starts `bin` with `policy_yaml` and waits until it enforces.
    pub fn start(bin: &Path, policy_yaml: &str) -> Result<Self> {
        let options = AgentOptions {
            bpffs: Some(PathBuf::from(format!(
                "/sys/fs/bpf/egress-bench-{}",
                std::process::id()
            ))),
            keep_on_exit: false,
            audit_log: None,
            extra_args: vec!["--audit-log-max-bytes".into(), "0".into()],
        };
        let agent = AgentGuard::try_start(bin, policy_yaml, &options)
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { agent })
    }

    pub fn pid(&self) -> Result<u32> {
        self.agent.id().context("the agent is not running")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.agent.audit_path()
    }

    /// Records written and kernel events lost, from `status` on the control socket.
    pub fn events(&self) -> Result<EventStats> {
        let status: Status = call_as(&self.agent.control_socket(), Method::Status)
            .context("status over the control socket")?;
        Ok(status.events)
    }
}
