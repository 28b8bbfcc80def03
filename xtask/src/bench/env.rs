//! The traffic benchmarks' world: two network namespaces joined by a veth pair (documentation
//! addresses only), a cgroup for the clients, an iperf3 server and a connection acceptor in
//! the server namespace. Everything is removed by the fixtures' guards, on error too.

use std::{fs, path::PathBuf, thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use egress_tests::{
    CgroupGuard, ProcessGuard, TestNet,
    process::{Placement, run_bounded},
};

use super::policy::TRAFFIC_PORT;

const ACCEPT_PORT: u16 = 5202;

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

    /// Short TCP connections per second over `secs`, from `workers` parallel clients;
    /// returns (connections per second, failures).
    pub fn connection_rate(&self, secs: f64, workers: usize) -> Result<(f64, u64)> {
        let target = format!("{}:{ACCEPT_PORT}", TestNet::SERVER_V4);
        let secs_text = secs.to_string();
        let results: Vec<Result<(u64, u64)>> = thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| -> Result<(u64, u64)> {
                        let out = run_bounded(
                            self.client().command(&self.exe)?.args([
                                "bench",
                                "--connect-worker",
                                &target,
                                &secs_text,
                            ]),
                            "connect worker",
                            Duration::from_secs_f64(secs + 20.0),
                        )?;
                        let text = String::from_utf8_lossy(&out.stdout);
                        super::workers::parse_connect_output(&text).with_context(|| {
                            format!(
                                "connect worker said: {text} {}",
                                String::from_utf8_lossy(&out.stderr)
                            )
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| bail!("connect worker thread panicked"))
                })
                .collect()
        });
        let (mut ok, mut failed) = (0, 0);
        for result in results {
            let (o, f) = result?;
            ok += o;
            failed += f;
        }
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        Ok((ok as f64 / secs, failed))
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
