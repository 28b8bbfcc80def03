//! Packet counters at a receiver: named nftables counters in a network namespace, hooked at
//! prerouting priority -500, before conntrack's defragmentation (-400), so every fragment
//! counts on its own. They prove what reached the receiver, whatever the sender believed.
//! The table goes with the namespace; nothing to clean up.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    error::{FixtureError, IoContext as _, Result, check_output},
    net::NetNsGuard,
    process::{Placement, run_bounded},
};

/// Bound on one `nft` run.
const NFT_LIMIT: Duration = Duration::from_secs(10);

/// The counters of one table in one namespace.
pub struct PacketCounters {
    netns: PathBuf,
    table: String,
}

impl PacketCounters {
    /// Installs table `table` in `netns` with one counter per `(name, nft match expression)`,
    /// e.g. `("denied4", "ip daddr 203.0.113.0/24")`.
    pub fn install(netns: &NetNsGuard, table: &str, counters: &[(&str, &str)]) -> Result<Self> {
        let mut rules = format!("table inet {table} {{\n");
        for (name, _) in counters {
            rules.push_str(&format!("  counter {name} {{}}\n"));
        }
        rules.push_str(
            "  chain pre {\n    type filter hook prerouting priority -500; policy accept;\n",
        );
        for (name, matches) in counters {
            rules.push_str(&format!("    {matches} counter name {name}\n"));
        }
        rules.push_str("  }\n}\n");
        let this = Self {
            netns: netns.path().to_path_buf(),
            table: table.to_owned(),
        };
        let mut cmd = this.nft()?;
        cmd.args(["-f", "-"]).stdin(Stdio::piped());
        let mut child = cmd.spawn().ctx(|| "starting nft -f".to_owned())?;
        child
            .stdin
            .take()
            .ok_or_else(|| FixtureError::Other("nft has no stdin".to_owned()))?
            .write_all(rules.as_bytes())
            .ctx(|| "writing the ruleset".to_owned())?;
        let status = child.wait().ctx(|| "waiting for nft".to_owned())?;
        if !status.success() {
            return Err(FixtureError::Other(format!("nft -f failed:\n{rules}")));
        }
        Ok(this)
    }

    /// Packets counted so far by the counter `name`.
    pub fn packets(&self, name: &str) -> Result<u64> {
        let mut cmd = self.nft()?;
        cmd.args(["-j", "list", "counter", "inet", &self.table, name]);
        let json = check_output(
            "nft list counter",
            &run_bounded(&mut cmd, "nft", NFT_LIMIT)?,
        )?;
        let value: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| FixtureError::Other(format!("nft JSON: {e}: {json}")))?;
        value["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|item| item["counter"]["packets"].as_u64())
            .ok_or_else(|| FixtureError::Other(format!("no counter {name} in {json}")))
    }

    fn nft(&self) -> Result<Command> {
        Placement::new(&self.netns).command("nft")
    }
}
