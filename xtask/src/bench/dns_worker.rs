//! The DNS benchmark's client, run inside the client namespace and the benchmark cgroup (the
//! bench binary re-executed with `--dns-worker`): it asks dnsmasq AAAA questions one at a
//! time over UDP and times each answer in userspace, and probes with `connect()` whether an
//! address is refused (EPERM) by the connect hook. It prints one JSON line.
//!
//! `latency SERVER COUNT POOL`: COUNT questions alternating `q{i}.denied.bench.test` and
//! `q{i}.allowed.bench.test`, i cycling over 1..=POOL, after a short warm-up.
//! `fill SERVER FIRST COUNT [PROBE...]`: questions for `n{i}.denied.bench.test`, i in
//! FIRST..FIRST+COUNT, then one non-blocking TCP connect to each PROBE's address.

use std::{
    io,
    net::{Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

/// How long one answer may take before it counts as a timeout.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Questions sent before the timed ones (socket, caches and neighbour entries warm).
const WARM_UP: usize = 50;
const AAAA: u16 = 28;

/// Third group of the address a fill name `n{i}` resolves to: `2001:db8:5300::i`.
pub const FILL_PREFIX: u16 = 0x5300;
/// Third groups of the latency names' addresses (denied, allowed).
pub const LATENCY_PREFIXES: (u16, u16) = (0x5310, 0x5311);

/// `2001:db8:PREFIX::LOW` (LOW up to 32 bits).
pub fn addr(prefix: u16, low: u32) -> Ipv6Addr {
    let [a, b, c, d] = low.to_be_bytes();
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        prefix,
        0,
        0,
        0,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
    )
}

pub fn fill_name(i: u32) -> String {
    format!("n{i}.denied.bench.test")
}

/// The `k`-th latency question's name.
pub fn latency_name(k: usize, pool: usize) -> String {
    let i = (k / 2) % pool.max(1) + 1;
    let kind = if k.is_multiple_of(2) {
        "denied"
    } else {
        "allowed"
    };
    format!("q{i}.{kind}.bench.test")
}

/// A recursion-desired AAAA question for `name` with id `id`.
fn question(id: u16, name: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(12 + name.len() + 6);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        // Names here are short ASCII labels well under 64 bytes.
        msg.push(u8::try_from(label.len()).unwrap_or(63));
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&AAAA.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg
}

/// What one question got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// An answer with at least one record, after this long.
    Answered(Duration),
    /// An answer without records or with an error code.
    Bad,
    Timeout,
}

/// Asks one question and waits for the answer with its id (others are stale: skipped).
fn ask(socket: &UdpSocket, id: u16, name: &str, buf: &mut [u8]) -> Result<Outcome> {
    let msg = question(id, name);
    let start = Instant::now();
    socket.send(&msg).context("sending a question")?;
    loop {
        match socket.recv(buf) {
            Ok(n) if n >= 12 && buf[..2] == id.to_be_bytes() => {
                let elapsed = start.elapsed();
                let rcode = buf[3] & 0x0f;
                let answers = u16::from_be_bytes([buf[6], buf[7]]);
                let is_answer = buf[2] & 0x80 != 0;
                return Ok(if is_answer && rcode == 0 && answers > 0 {
                    Outcome::Answered(elapsed)
                } else {
                    Outcome::Bad
                });
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Outcome::Timeout);
            }
            Err(e) => return Err(e).context("receiving an answer"),
        }
        if start.elapsed() >= ANSWER_TIMEOUT {
            return Ok(Outcome::Timeout);
        }
    }
}

fn socket(server: &str) -> Result<UdpSocket> {
    let server: SocketAddr = format!("{server}:53").parse().context("server address")?;
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    socket
        .connect(server)
        .context("connecting the UDP socket")?;
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(socket)
}

/// Counts of a series of questions.
#[derive(Default)]
struct Tally {
    answered: u64,
    bad: u64,
    timeouts: u64,
    ns: Vec<u64>,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Answered(d) => {
                self.answered += 1;
                self.ns
                    .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            }
            Outcome::Bad => self.bad += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
    }
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within a vector's length"
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

fn latency(server: &str, count: usize, pool: usize) -> Result<serde_json::Value> {
    let socket = socket(server)?;
    let mut buf = [0u8; 4096];
    for k in 0..WARM_UP {
        let outcome = ask(&socket, k as u16, &latency_name(k, pool), &mut buf)?;
        ensure!(
            matches!(outcome, Outcome::Answered(_)),
            "warm-up question {k}: {outcome:?}"
        );
    }
    let mut tally = Tally::default();
    for k in 0..count {
        #[expect(clippy::cast_possible_truncation, reason = "ids wrap by design")]
        let id = (k + WARM_UP) as u16;
        tally.add(ask(&socket, id, &latency_name(k, pool), &mut buf)?);
    }
    tally.ns.sort_unstable();
    Ok(serde_json::json!({
        "answered": tally.answered,
        "bad": tally.bad,
        "timeouts": tally.timeouts,
        "p50_ns": quantile(&tally.ns, 0.50),
        "p99_ns": quantile(&tally.ns, 0.99),
        "max_ns": tally.ns.last(),
    }))
}

/// Whether a TCP connect to `[ip]:80` is refused with EPERM (the connect hook) rather than
/// started or failed otherwise (no route, in progress: past the hook).
fn refused(ip: Ipv6Addr) -> Result<bool> {
    // SAFETY: plain socket creation; the descriptor is closed below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("creating a TCP socket");
    }
    let sa = libc::sockaddr_in6 {
        sin6_family: libc::sa_family_t::try_from(libc::AF_INET6)?,
        sin6_port: 80u16.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: ip.octets(),
        },
        sin6_scope_id: 0,
    };
    let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_in6>())?;
    // SAFETY: `sa` is a valid sockaddr_in6 of `len` bytes for the call's duration.
    let rc = unsafe { libc::connect(fd, (&raw const sa).cast(), len) };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    Ok(rc != 0 && err.raw_os_error() == Some(libc::EPERM))
}

fn fill(server: &str, first: u32, count: u32, probes: &[u32]) -> Result<serde_json::Value> {
    let socket = socket(server)?;
    let mut buf = [0u8; 4096];
    let mut tally = Tally::default();
    for i in first..first.saturating_add(count) {
        #[expect(clippy::cast_possible_truncation, reason = "ids wrap by design")]
        tally.add(ask(&socket, i as u16, &fill_name(i), &mut buf)?);
    }
    let mut refused_probes = Vec::new();
    for &p in probes {
        if refused(addr(FILL_PREFIX, p))? {
            refused_probes.push(p);
        }
    }
    Ok(serde_json::json!({
        "answered": tally.answered,
        "bad": tally.bad,
        "timeouts": tally.timeouts,
        "refused": refused_probes,
    }))
}

/// Entry point of `--dns-worker`.
pub fn run(args: &[String]) -> Result<()> {
    let num = |i: usize| -> Result<u32> {
        args.get(i)
            .context("missing argument")?
            .parse()
            .with_context(|| format!("argument {i}"))
    };
    let server = args.get(1).context("no server")?;
    let out = match args.first().map(String::as_str) {
        Some("latency") => latency(server, num(2)? as usize, num(3)? as usize)?,
        Some("fill") => {
            let probes = (4..args.len()).map(num).collect::<Result<Vec<_>>>()?;
            fill(server, num(2)?, num(3)?, &probes)?
        }
        other => bail!("unknown dns worker mode {other:?}"),
    };
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_has_the_header_labels_type_and_class() {
        let q = question(0x1234, "a.bc");
        assert_eq!(
            q,
            [
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 28, 0, 1
            ]
        );
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn names_alternate_and_addresses_carry_the_index() {
        assert_eq!(latency_name(0, 3), "q1.denied.bench.test");
        assert_eq!(latency_name(1, 3), "q1.allowed.bench.test");
        assert_eq!(latency_name(6, 3), "q1.denied.bench.test");
        assert_eq!(
            addr(FILL_PREFIX, 0x1_0002),
            "2001:db8:5300::1:2".parse::<Ipv6Addr>().expect("address")
        );
    }
}
