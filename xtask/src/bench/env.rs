//! The traffic benchmarks' world: two network namespaces joined by a veth pair (documentation
//! addresses only), a cgroup for the clients, an iperf3 server and a connection acceptor in
//! the server namespace, and a sink for the event generator's datagrams in the client namespace.
//! Everything is removed by the fixtures' guards (the sink with its namespace), on error too.

use std::{fs, net::Ipv4Addr, path::PathBuf, thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use egress_tests::{
    CgroupGuard, ProcessGuard, TestNet,
    process::{Placement, run_bounded},
};

use super::{policy::TRAFFIC_PORT, udp_flood};

const ACCEPT_PORT: u16 = 5202;
/// The event generator's destination: an allowed documentation address behind a sink in
/// the client namespace, so its datagrams never reach a socket or provoke ICMP errors.
pub const FLOOD_TARGET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);

pub struct Env {
    pub net: TestNet,
    pub cgroup: CgroupGuard,
    exe: PathBuf,
    _servers: Vec<ProcessGuard>,
}

impl Env {
    pub fn new() -> Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let net = TestNet::new()?;
        // The generator's sink: a veth pair inside the client namespace with a connected
        // route (beats the default route) and a permanent neighbour whose MAC the peer does
        // not own, so the peer drops each datagram on arrival as another host's frame.
        for args in [
            &[
                "link",
                "add",
                "bench-sink",
                "type",
                "veth",
                "peer",
                "name",
                "bench-sinkp",
            ][..],
            &["addr", "add", "198.51.100.1/24", "dev", "bench-sink"],
            &["link", "set", "bench-sink", "up"],
            &["link", "set", "bench-sinkp", "up"],
            &[
                "neigh",
                "add",
                &FLOOD_TARGET.to_string(),
                "lladdr",
                "02:00:00:00:00:77",
                "dev",
                "bench-sink",
                "nud",
                "permanent",
            ],
        ] {
            net.client.ip(args)?;
        }
        // Per-namespace settings of the client side only: a wide port range, and reuse of
        // TIME_WAIT ports for new connections should any remain.
        for setting in [
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65000",
        ] {
            let out = run_bounded(
                Placement::new(net.client.path())
                    .command("sysctl")?
                    .args(["-w", setting]),
                "sysctl",
                Duration::from_secs(10),
            )?;
            if !out.status.success() {
                bail!(
                    "sysctl -w {setting} in the client namespace: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let cgroup = CgroupGuard::new("bench")?;
        let server = Placement::new(net.server.path());
        let target = TestNet::SERVER_V4.to_string();
        let iperf = ProcessGuard::spawn(
            server
                .command("iperf3")?
                .args(["-s", "-B", &target, "-p", &TRAFFIC_PORT.to_string()])
                .stdout(std::process::Stdio::null()),
            "iperf3 server",
        )?;
        let accept = ProcessGuard::spawn(
            server
                .command(&exe)?
                .args([
                    "bench",
                    "--accept-worker",
                    &format!("{target}:{ACCEPT_PORT}"),
                ])
                .stdout(std::process::Stdio::null()),
            "accept worker",
        )?;
        // Both bind at once; give them a moment before the first client.
        thread::sleep(Duration::from_millis(500));
        Ok(Self {
            net,
            cgroup,
            exe,
            _servers: vec![iperf, accept],
        })
    }

    fn client(&self) -> Placement {
        Placement::new(self.net.client.path()).cgroup(self.cgroup.path())
    }

    /// TCP throughput of one iperf3 stream client → server for `secs`, in Gbit/s.
    pub fn throughput(&self, secs: u32) -> Result<f64> {
        let target = TestNet::SERVER_V4.to_string();
        let mut last = String::new();
        // The server takes one test at a time; a retry covers a slow start.
        for _ in 0..3 {
            let out = run_bounded(
                self.client().command("iperf3")?.args([
                    "-c",
                    &target,
                    "-p",
                    &TRAFFIC_PORT.to_string(),
                    "-t",
                    &secs.to_string(),
                    "-J",
                ]),
                "iperf3",
                Duration::from_secs(u64::from(secs) + 20),
            )?;
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            if let Some(bps) = json
                .pointer("/end/sum_received/bits_per_second")
                .and_then(serde_json::Value::as_f64)
            {
                return Ok(bps / 1e9);
            }
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            thread::sleep(Duration::from_millis(300));
        }
        bail!("iperf3 gave no result: {last}")
    }

    /// Short TCP connections per second over `secs` from one client process of `threads`
    /// threads; returns (connections per second, failures).
    pub fn connection_rate(&self, secs: f64, threads: usize) -> Result<(f64, u64)> {
        let target = format!("{}:{ACCEPT_PORT}", TestNet::SERVER_V4);
        let out = run_bounded(
            self.client().command(&self.exe)?.args([
                "bench",
                "--connect-worker",
                &target,
                &secs.to_string(),
                &threads.to_string(),
            ]),
            "connect worker",
            Duration::from_secs_f64(secs + 20.0),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (ok, failed) = super::workers::parse_connect_output(&text).with_context(|| {
            format!(
                "connect worker said: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        Ok((ok as f64 / secs, failed))
    }

    /// Offers `count` new UDP flows at `rate` flows/s (0: unpaced) from one process in the
    /// benchmark cgroup.
    pub fn udp_flood(&self, rate: f64, count: u64) -> Result<udp_flood::Sent> {
        let out = run_bounded(
            self.client().command(&self.exe)?.args([
                "bench",
                "--udp-worker",
                &FLOOD_TARGET.to_string(),
                &rate.to_string(),
                &count.to_string(),
            ]),
            "udp worker",
            Duration::from_secs(40),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        udp_flood::parse(&text).with_context(|| {
            format!(
                "udp worker said: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Runs `nft -f FILE` in the client namespace.
    pub fn nft_file(&self, ruleset: &str, limit: Duration) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("ruleset.nft");
        fs::write(&file, ruleset)?;
        self.nft(&["-f", &file.to_string_lossy()], limit)
    }

    pub fn nft(&self, args: &[&str], limit: Duration) -> Result<()> {
        let out = run_bounded(
            Placement::new(self.net.client.path())
                .command("nft")?
                .args(args),
            "nft",
            limit,
        )?;
        if !out.status.success() {
            bail!(
                "nft {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
                    .chars()
                    .take(2000)
                    .collect::<String>()
            );
        }
        Ok(())
    }
}
