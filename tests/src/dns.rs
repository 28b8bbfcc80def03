//! DNS for the hostname-rule tests: dnsmasq in a test network namespace answering from a
//! hosts file and CNAME entries the test writes, with a chosen TTL, over UDP and TCP; `dig`
//! run inside a namespace (and cgroup); and AnyIP prefixes, so that thousands of names can
//! each resolve to an address of their own that one listener serves.

use std::{
    env, fs,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{
    error::{FixtureError, IoContext as _, Result, check_output},
    net::NetNsGuard,
    process::{Placement, ProcessGuard, run_bounded},
};

/// How long dnsmasq may take to answer its first query, or a reload.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const DIG_LIMIT: Duration = Duration::from_secs(10);
/// Bytes of dnsmasq's log kept for messages.
const MAX_LOG: usize = 1 << 16;
/// The probe name of each hosts-file version (`g<N>.probe.dns-fixture.test`), answered with
/// this address; a reload is complete when the new version's probe answers.
const PROBE_ADDR: &str = "192.0.2.253";

/// A name and the address dnsmasq answers for it.
pub type HostEntry = (String, IpAddr);

/// Path of a program that the DNS tests need, searched in `$PATH` and the sbin directories
/// (root's `$PATH` may lack them).
///
/// # Errors
/// When it is not installed: the suite fails rather than skips (`cargo xtask setup`
/// installs dnsmasq-base and bind9-dnsutils).
pub fn require_program(name: &str) -> Result<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            FixtureError::Other(format!(
                "`{name}` is not installed; the DNS tests need dnsmasq (dnsmasq-base) and dig \
                 (bind9-dnsutils): run `cargo xtask setup`"
            ))
        })
}

/// Makes every address of the IPv6 `prefix` local in `net` (`ip -6 route add local PREFIX
/// dev lo`), so that a socket bound to `[::]` there accepts connections to any of them.
///
/// # Errors
/// When `ip` fails.
pub fn add_anyip_prefix(net: &NetNsGuard, prefix: &str) -> Result<()> {
    net.ip(&["-6", "route", "add", "local", prefix, "dev", "lo"])
        .map(drop)
}

/// Asks `server` for `name` (record type `qtype`, e.g. `AAAA`) with `dig`, run at
/// `placement`, over TCP if `tcp`; returns the addresses of the answer (CNAME lines left out).
///
/// # Errors
/// When dig is missing or gets no answer (a NXDOMAIN or empty answer is `Ok(vec![])`).
pub fn dig(
    placement: &Placement,
    server: IpAddr,
    name: &str,
    qtype: &str,
    tcp: bool,
) -> Result<Vec<IpAddr>> {
    let mut cmd = placement.command(require_program("dig")?)?;
    cmd.args(["+short", "+time=2", "+tries=2"]);
    if tcp {
        cmd.arg("+tcp");
    }
    cmd.arg(format!("@{server}")).args([name, qtype]);
    let out = run_bounded(&mut cmd, "dig", DIG_LIMIT)?;
    let text = check_output(&format!("dig @{server} {name} {qtype}"), &out)?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// dnsmasq serving a hosts file and CNAMEs on one address (UDP and TCP port 53) of a test
/// namespace; killed by its PID on drop (and dies with the test process).
pub struct DnsServer {
    process: ProcessGuard,
    dir: TempDir,
    listen: IpAddr,
    netns: PathBuf,
    version: AtomicU32,
    log: Arc<Mutex<String>>,
}

impl DnsServer {
    /// Starts dnsmasq in `net` on `listen` (an address of that namespace) answering `hosts`
    /// and `cnames` (alias, target: the target must be in `hosts`) with TTL `ttl` seconds,
    /// and waits until it answers.
    ///
    /// # Errors
    /// When dnsmasq is missing, does not start, or does not answer within 10 s.
    pub fn start(
        net: &NetNsGuard,
        listen: IpAddr,
        ttl: u32,
        hosts: &[HostEntry],
        cnames: &[(&str, &str)],
    ) -> Result<Self> {
        let dnsmasq = require_program("dnsmasq")?;
        require_program("dig")?;
        let dir = tempfile::tempdir().ctx(|| "creating a temp dir".to_owned())?;
        let resolv = dir.path().join("resolv.conf");
        // No search list: names are asked exactly as the test writes them.
        fs::write(
            &resolv,
            format!("nameserver {listen}\noptions timeout:2 attempts:2\n"),
        )
        .ctx(|| format!("writing {}", resolv.display()))?;
        let hosts_file = dir.path().join("hosts");
        write_hosts(&hosts_file, 0, hosts)?;
        let mut cmd = Placement::new(net.path()).command(&dnsmasq)?;
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--log-facility=-",
            "--pid-file=",
            // The temp dir is root's; dnsmasq must still read it after a SIGHUP.
            "--user=root",
            "--group=root",
        ])
        .arg(format!("--listen-address={listen}"))
        .arg(format!("--addn-hosts={}", hosts_file.display()))
        .arg(format!("--local-ttl={ttl}"));
        for (alias, target) in cnames {
            cmd.arg(format!("--cname={alias},{target}"));
        }
        // Die with the test process even if it is killed before the guard runs.
        // SAFETY: prctl with integer arguments only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = ProcessGuard::spawn(&mut cmd, "dnsmasq")?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = process.child_mut().stderr.take() {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                    if log.len() < MAX_LOG {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            });
        }
        let server = Self {
            process,
            dir,
            listen,
            netns: net.path().to_owned(),
            version: AtomicU32::new(0),
            log,
        };
        server.wait_for_version(0)?;
        Ok(server)
    }

    /// The address dnsmasq listens on.
    pub fn addr(&self) -> IpAddr {
        self.listen
    }

    /// A resolv.conf naming only this server, for the helper's `resolve-connect`.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.path().join("resolv.conf")
    }

    /// dnsmasq's PID.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Everything dnsmasq logged so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the hosts file with `hosts`, makes dnsmasq reread it (SIGHUP to its PID)
    /// and waits until it answers from the new file. CNAMEs stay as started.
    ///
    /// # Errors
    /// When the file cannot be written or dnsmasq does not reload within 10 s.
    pub fn set_hosts(&self, hosts: &[HostEntry]) -> Result<()> {
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let file = self.dir.path().join("hosts");
        // Written aside and renamed, so that dnsmasq never reads half a file.
        let next = self.dir.path().join("hosts.next");
        write_hosts(&next, version, hosts)?;
        fs::rename(&next, &file).ctx(|| format!("renaming to {}", file.display()))?;
        let pid = libc::pid_t::try_from(self.process.id())
            .map_err(|e| FixtureError::Other(format!("dnsmasq pid: {e}")))?;
        // SAFETY: signals the dnsmasq we started and have not reaped (the guard holds it).
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            return Err(FixtureError::Io {
                context: "SIGHUP to dnsmasq".to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        self.wait_for_version(version)
    }

    /// Asks this server for `name` from inside its own namespace (no cgroup).
    ///
    /// # Errors
    /// As [`dig`].
    pub fn query(&self, name: &str, qtype: &str, tcp: bool) -> Result<Vec<IpAddr>> {
        dig(&Placement::new(&self.netns), self.listen, name, qtype, tcp)
    }

    fn wait_for_version(&self, version: u32) -> Result<()> {
        let probe = probe_name(version);
        let expected: IpAddr = PROBE_ADDR
            .parse()
            .map_err(|e| FixtureError::Other(format!("probe address: {e}")))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let answer = self.query(&probe, "A", false);
            if matches!(&answer, Ok(addrs) if addrs.contains(&expected)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(FixtureError::Other(format!(
                    "dnsmasq did not answer {probe} within {READY_TIMEOUT:?} ({answer:?}); \
                     its log:\n{}",
                    self.log()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn probe_name(version: u32) -> String {
    format!("g{version}.probe.dns-fixture.test")
}

fn write_hosts(path: &Path, version: u32, hosts: &[HostEntry]) -> Result<()> {
    let mut text = format!("{PROBE_ADDR} {}\n", probe_name(version));
    for (name, addr) in hosts {
        text.push_str(&format!("{addr} {name}\n"));
    }
    fs::write(path, text).ctx(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_has_the_probe_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("hosts");
        let addr: IpAddr = "2001:db8:5300::1".parse().expect("address");
        write_hosts(&file, 3, &[("a.test".to_owned(), addr)]).expect("written");
        let text = fs::read_to_string(&file).expect("read");
        assert_eq!(
            text,
            "192.0.2.253 g3.probe.dns-fixture.test\n2001:db8:5300::1 a.test\n"
        );
    }
}
