//! Network namespaces and the two-namespace test network.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    error::{Result, check_output},
    process::run_bounded,
};

/// Prefix of every network namespace the fixtures create.
pub const NETNS_PREFIX: &str = "egr-";

const IP_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS...`, failing with its stderr on a non-zero exit.
fn ip(args: &[&str]) -> Result<String> {
    let out = run_bounded(Command::new("ip").args(args), "ip", IP_TIMEOUT)?;
    check_output(&format!("ip {}", args.join(" ")), &out)
}

/// A named network namespace (`ip netns add egr-<name>-<pid>-<n>`), deleted on drop.
#[derive(Debug)]
pub struct NetNsGuard {
    name: String,
    path: PathBuf,
}

impl NetNsGuard {
    /// Creates the namespace and brings its loopback up.
    pub fn new(name: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{name}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let guard = Self {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        guard.ip(&["link", "set", "lo", "up"])?;
        Ok(guard)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount of the namespace, for setns or `nsenter --net=`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("egress-tests: could not delete netns {}: {e}", self.name);
        }
    }
}

/// A client namespace and a server namespace joined by a veth pair.
///
/// Client: 192.0.2.1/24, 2001:db8::1/64, default routes via the server side.
/// Server: 192.0.2.2/24, 2001:db8::2/64 on the veth, and the target addresses on `lo`.
#[derive(Debug)]
pub struct TestNet {
    /// Where clients run.
    pub client: NetNsGuard,
    /// Where servers run; owns the target addresses.
    pub server: NetNsGuard,
}

impl TestNet {
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    /// A target that policies allow.
    pub const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    /// A target inside 203.0.113.0/24, which policies deny.
    pub const DENIED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    /// A second target inside 203.0.113.0/24.
    pub const DENIED_V4_ALT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
    /// A target inside 2001:db8:1::/48, which policies allow.
    pub const ALLOWED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    /// A target inside 2001:db8:2::/48, which policies deny.
    pub const DENIED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);

    /// All target addresses served from the server namespace.
    pub const TARGETS: [IpAddr; 5] = [
        IpAddr::V4(Self::ALLOWED_V4),
        IpAddr::V4(Self::DENIED_V4),
        IpAddr::V4(Self::DENIED_V4_ALT),
        IpAddr::V6(Self::ALLOWED_V6),
        IpAddr::V6(Self::DENIED_V6),
    ];

    /// Builds the network.
    pub fn new() -> Result<Self> {
        let client = NetNsGuard::new("c")?;
        let server = NetNsGuard::new("s")?;
        // Created inside the client namespace with its peer directly in the server one:
        // nothing ever appears in the host namespace.
        client.ip(&[
            "link",
            "add",
            "veth-c",
            "type",
            "veth",
            "peer",
            "name",
            "veth-s",
            "netns",
            server.name(),
        ])?;
        client.ip(&["addr", "add", "192.0.2.1/24", "dev", "veth-c"])?;
        client.ip(&["addr", "add", "2001:db8::1/64", "dev", "veth-c", "nodad"])?;
        client.ip(&["link", "set", "veth-c", "up"])?;
        server.ip(&["addr", "add", "192.0.2.2/24", "dev", "veth-s"])?;
        server.ip(&["addr", "add", "2001:db8::2/64", "dev", "veth-s", "nodad"])?;
        server.ip(&["link", "set", "veth-s", "up"])?;
        for target in Self::TARGETS {
            let prefix = if target.is_ipv4() { 32 } else { 128 };
            server.ip(&["addr", "add", &format!("{target}/{prefix}"), "dev", "lo"])?;
        }
        client.ip(&["route", "add", "default", "via", "192.0.2.2"])?;
        client.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"])?;
        Ok(Self { client, server })
    }
}
