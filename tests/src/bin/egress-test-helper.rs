//! Helper processes for the integration tests, run inside namespaces and cgroups:
//!
//! - `connect ADDR TIMEOUT_MS`: TCP connect; exit 0 if established, 1 if not.
//! - `udp ADDR TIMEOUT_MS`: send a datagram, wait for its echo; exit 0 if echoed, 1 if not.
//! - `serve (tcp|udp):ADDR...`: HTTP responders and UDP echoes; prints `ready` once bound,
//!   then one line `tcp|udp LOCAL PEER` per accepted connection or received datagram.
//! - `info`: prints `cgroup=`, `uid=` and `netns=` lines.
//! - `sleep SECS`.
//! - `icmp`, `connect-and-exit`, `udp-flood`: see `egress_tests::traffic::run`.
//! - `resolve-connect RESOLV_CONF PATTERN COUNT PORT TIMEOUT_MS WALL_MS`: in a mount
//!   namespace of its own with RESOLV_CONF bind-mounted over /etc/resolv.conf, resolves each
//!   of COUNT names (PATTERN with `{i}` replaced by 1..=COUNT in decimal, `{x}` in hex) with
//!   getaddrinfo, the system resolver, and at once connects over TCP to the first address;
//!   prints one JSON summary line (see `Tally::summary`). Exit 0 once it ran.
//!
//! Exit code 2 means a usage or setup error.

use std::{
    env,
    ffi::CString,
    fs,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _, UdpSocket},
    os::fd::AsRawFd as _,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

const PING: &[u8] = b"egress-test-ping";
/// Backlog of the `serve` listeners.
const LISTEN_BACKLOG: i32 = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["connect", addr, ms] => parse(addr, ms).map(|(a, t)| connect(a, t)),
        ["udp", addr, ms] => parse(addr, ms).map(|(a, t)| udp(a, t)),
        ["serve", specs @ ..] => serve(specs),
        ["info"] => info(),
        ["resolve-connect", resolv, pattern, count, port, ms, wall_ms] => {
            resolve_connect(resolv, pattern, count, port, ms, wall_ms)
        }
        ["resolve-hold", resolv, name, port, hold_ms] => resolve_hold(resolv, name, port, hold_ms),
        ["sleep", secs] => secs
            .parse()
            .map_err(|e| format!("bad seconds: {e}"))
            .map(|s| {
                thread::sleep(Duration::from_secs(s));
                true
            }),
        // The audit tests' traffic (`icmp`, `connect-and-exit`, `udp-flood`).
        other => egress_tests::traffic::run(other)
            .unwrap_or_else(|| Err(format!("usage: see the helper's doc comment; got {args:?}"))),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("egress-test-helper: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse(addr: &str, ms: &str) -> Result<(SocketAddr, Duration), String> {
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let ms = ms.parse().map_err(|e| format!("bad timeout {ms}: {e}"))?;
    Ok((addr, Duration::from_millis(ms)))
}

fn connect(addr: SocketAddr, timeout: Duration) -> bool {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("connect {addr}: {e}");
            false
        }
    }
}

fn udp(addr: SocketAddr, timeout: Duration) -> bool {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let run = || -> io::Result<bool> {
        let socket = UdpSocket::bind(bind)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send_to(PING, addr)?;
        let mut buf = [0u8; 256];
        let (n, from) = socket.recv_from(&mut buf)?;
        Ok(from == addr && buf.get(..n) == Some(PING))
    };
    match run() {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("udp {addr}: {e}");
            false
        }
    }
}

fn event(proto: &str, local: SocketAddr, peer: SocketAddr) {
    // println! locks stdout and the line writer flushes at the newline.
    println!("{proto} {local} {peer}");
}

fn serve(specs: &[&str]) -> Result<bool, String> {
    // Die with the test process even if it is killed before its guards run.
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let mut handles = Vec::new();
    for spec in specs {
        let (proto, addr) = spec
            .split_once(':')
            .ok_or_else(|| format!("bad spec {spec}"))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        match proto {
            "tcp" => {
                let listener =
                    TcpListener::bind(addr).map_err(|e| format!("bind tcp {addr}: {e}"))?;
                // std listens with a backlog of 128, which bursts of thousands of connects
                // (the DNS suite) overflow; a dropped SYN would look like a slow verdict.
                // Listening again only raises the backlog (the kernel caps it at somaxconn).
                // SAFETY: listen on a socket the listener owns.
                if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
                    return Err(format!("listen {addr}: {}", io::Error::last_os_error()));
                }
                handles.push(thread::spawn(move || serve_tcp(&listener, addr)));
            }
            "udp" => {
                let socket = UdpSocket::bind(addr).map_err(|e| format!("bind udp {addr}: {e}"))?;
                handles.push(thread::spawn(move || serve_udp(&socket, addr)));
            }
            _ => return Err(format!("bad protocol in {spec}")),
        }
    }
    println!("ready");
    for handle in handles {
        let _ = handle.join();
    }
    Ok(true)
}

fn serve_tcp(listener: &TcpListener, local: SocketAddr) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        event("tcp", local, peer);
        thread::spawn(move || {
            // Long enough for a client that holds its connection before asking (resolve-hold).
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(buf.get(..n).unwrap_or_default()),
                }
            }
            let body = format!("egress-test-server {local}\n");
            let response = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        });
    }
}

fn serve_udp(socket: &UdpSocket, local: SocketAddr) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        event("udp", local, peer);
        let _ = socket.send_to(buf.get(..n).unwrap_or_default(), peer);
    }
}

fn info() -> Result<bool, String> {
    let cgroup = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let v2 = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("?");
    let netns = fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    println!("cgroup={v2}");
    println!("uid={uid}");
    println!("netns={}", netns.display());
    Ok(true)
}

/// Gives this process a mount namespace of its own in which `resolv_conf` is
/// /etc/resolv.conf, so that glibc's resolver asks the test's DNS server. Must run while the
/// process is single-threaded (unshare(CLONE_NEWNS) implies CLONE_FS).
fn private_resolv_conf(resolv_conf: &str) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|e| format!("{s}: {e}"));
    let (root, etc, source) = (c("/")?, c("/etc/resolv.conf")?, c(resolv_conf)?);
    let check = |rc: i32, what: &str| {
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("{what}: {}", io::Error::last_os_error()))
        }
    };
    // SAFETY: system calls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?;
        // Private first: the bind mount must not propagate back to the host's namespace.
        check(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making / private",
        )?;
        check(
            libc::mount(
                source.as_ptr(),
                etc.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ),
            "bind-mounting over /etc/resolv.conf",
        )
    }
}

/// Counts of one `resolve-connect` run.
#[derive(Default)]
struct Tally {
    attempted: u64,
    resolved: u64,
    unresolved: u64,
    connected: u64,
    refused: u64,
    timed_out: u64,
    other: u64,
    /// Connects that took longer than a SYN retransmission would need.
    slow: u64,
    connect_us: Vec<u64>,
    resolve_us: Vec<u64>,
    first_addr: Option<IpAddr>,
    errors: Vec<String>,
}

/// A connect that takes longer than this waited for a retransmitted SYN (the first
/// retransmission comes after 1 s; nothing local takes 200 ms).
const SLOW_CONNECT: Duration = Duration::from_millis(200);
/// Error messages kept for the summary.
const KEPT_ERRORS: usize = 5;

impl Tally {
    fn error(&mut self, what: String) {
        if self.errors.len() < KEPT_ERRORS {
            self.errors.push(what);
        }
    }

    fn attempt(&mut self, name: &str, port: u16, timeout: Duration) {
        self.attempted += 1;
        let start = Instant::now();
        let addr = (name, port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_owned()));
        self.resolve_us.push(micros(start.elapsed()));
        let addr = match addr {
            Ok(addr) => addr,
            Err(e) => {
                self.unresolved += 1;
                self.error(format!("resolving {name}: {e}"));
                return;
            }
        };
        self.resolved += 1;
        self.first_addr.get_or_insert(addr.ip());
        let start = Instant::now();
        let outcome = TcpStream::connect_timeout(&addr, timeout);
        let took = start.elapsed();
        match outcome {
            Ok(_) => {
                self.connected += 1;
                self.connect_us.push(micros(took));
                if took > SLOW_CONNECT {
                    self.slow += 1;
                    self.error(format!("connecting to {name} ({addr}) took {took:?}"));
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
                self.refused += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                self.timed_out += 1;
                self.error(format!("connecting to {name} ({addr}): {e}"));
            }
            Err(e) => {
                self.other += 1;
                self.error(format!("connecting to {name} ({addr}): {e}"));
            }
        }
    }

    fn summary(mut self) -> serde_json::Value {
        self.connect_us.sort_unstable();
        self.resolve_us.sort_unstable();
        serde_json::json!({
            "attempted": self.attempted,
            "resolved": self.resolved,
            "unresolved": self.unresolved,
            "connected": self.connected,
            "refused": self.refused,
            "timed_out": self.timed_out,
            "other": self.other,
            "slow": self.slow,
            "connect_p50_us": percentile(&self.connect_us, 50),
            "connect_p99_us": percentile(&self.connect_us, 99),
            "resolve_p50_us": percentile(&self.resolve_us, 50),
            "resolve_p99_us": percentile(&self.resolve_us, 99),
            "first_addr": self.first_addr.map(|a| a.to_string()),
            "errors": self.errors,
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The `p`th percentile of sorted `values` (nearest rank), or null when there are none.
fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn resolve_connect(
    resolv_conf: &str,
    pattern: &str,
    count: &str,
    port: &str,
    ms: &str,
    wall_ms: &str,
) -> Result<bool, String> {
    let number = |s: &str| s.parse::<u64>().map_err(|e| format!("bad number {s}: {e}"));
    let (count, timeout, wall) = (number(count)?, number(ms)?, number(wall_ms)?);
    let port: u16 = port.parse().map_err(|e| format!("bad port {port}: {e}"))?;
    private_resolv_conf(resolv_conf)?;
    let deadline = Instant::now() + Duration::from_millis(wall);
    let mut tally = Tally::default();
    for i in 1..=count {
        if Instant::now() >= deadline {
            tally.error(format!(
                "wall time of {wall} ms ran out after {} names",
                i - 1
            ));
            break;
        }
        let name = pattern
            .replace("{i}", &i.to_string())
            .replace("{x}", &format!("{i:x}"));
        tally.attempt(&name, port, Duration::from_millis(timeout));
    }
    println!("{}", tally.summary());
    Ok(true)
}

/// `resolve-hold RESOLV NAME PORT HOLD_MS`: resolves NAME with the system resolver, connects
/// over TCP, waits HOLD_MS, then sends an HTTP request and reads the answer (3 s at most);
/// prints `{"connected":..,"answered":..}`. Shows whether a connection outlives its name.
fn resolve_hold(resolv_conf: &str, name: &str, port: &str, hold_ms: &str) -> Result<bool, String> {
    let port: u16 = port.parse().map_err(|e| format!("bad port {port}: {e}"))?;
    let hold: u64 = hold_ms
        .parse()
        .map_err(|e| format!("bad hold {hold_ms}: {e}"))?;
    private_resolv_conf(resolv_conf)?;
    let addr = (name, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {name}: {e}"))?
        .next()
        .ok_or_else(|| format!("no address for {name}"))?;
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
        println!(
            "{}",
            serde_json::json!({"connected": false, "answered": false})
        );
        return Ok(true);
    };
    thread::sleep(Duration::from_millis(hold));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let mut answer = Vec::new();
    let answered = stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
        && stream.read_to_end(&mut answer).is_ok()
        && answer.starts_with(b"HTTP/1.0 200");
    println!(
        "{}",
        serde_json::json!({"connected": true, "answered": answered})
    );
    Ok(true)
}
