//! Ways a process might get a packet past the egress enforcer, one per technique, for the
//! bypass suite (tests/tests/bypass.rs). Run inside the client namespace and a test cgroup.
//!
//! `egress-bypass TECHNIQUE ARGS...`; ADDR is `IP:PORT` (`[V6]:PORT`), IP a bare address:
//!
//! - `tcp-connect ADDR`, `tcp-fastopen ADDR` (sendto with MSG_FASTOPEN)
//! - `udp-connected ADDR SIZE`, `udp-sendto ADDR SIZE`, `udp-sendmsg ADDR SIZE`,
//!   `udp-sendmmsg ADDR SIZE` (two datagrams); SIZE above the MTU fragments
//! - `udp-preconnected ADDR`, `tcp-preconnected ADDR`: connect, print `ready`, wait for a
//!   line on stdin, send 1000 bytes
//! - `tcp-held ADDR`: connect, print `ready`, then send 1000 bytes and print `sent` for each
//!   line on stdin, until its end
//! - `raw-udp ADDR SIZE` (SOCK_RAW, IPPROTO_UDP), `raw-proto IP` (SOCK_RAW, protocol 253),
//!   `raw-fragments ADDR` (IP_HDRINCL, two hand-made fragments; IPv4)
//! - `packet IFNAME DST_MAC SRC_IP ADDR` (AF_PACKET frame; IPv4)
//! - `icmp-raw IP`, `icmp-dgram IP` (echo request from a raw or a ping socket)
//! - `uring-connect ADDR`, `uring-sendmsg ADDR SIZE`
//! - `fork TECHNIQUE ARGS...`: the technique in a child forked now
//! - `setuid-after-socket UID tcp|udp ADDR`, `seteuid-socket UID tcp|udp ADDR`
//!
//! Prints `ok` and exits 0 when the call succeeded; prints `errno=N NAME` and exits 1 when
//! it failed. Connect-like calls also print `latency_ns=N`. Exit 2: usage or setup error;
//! exit 3: the kernel lacks the facility (io_uring disabled).

mod craft;
mod creds;
mod inet;
mod link;
mod sys;
mod uring;

use std::{
    env, io,
    net::{IpAddr, SocketAddr},
    process::ExitCode,
};

/// What the network call did: `Ok`, or the kernel's errno.
pub type Call = io::Result<()>;

/// Why a technique could not even be tried.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or a failed preparatory step (exit 2).
    Setup(String),
    /// The kernel does not offer the facility (exit 3).
    Unavailable(String),
}

/// A technique's result.
pub type Outcome = Result<Call, Failure>;

const EXIT_CALL_FAILED: u8 = 1;
const EXIT_SETUP: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 3;

fn addr(text: &str) -> Result<SocketAddr, Failure> {
    text.parse()
        .map_err(|e| Failure::Setup(format!("bad address {text}: {e}")))
}

fn ip(text: &str) -> Result<IpAddr, Failure> {
    text.parse()
        .map_err(|e| Failure::Setup(format!("bad IP {text}: {e}")))
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, Failure>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| Failure::Setup(format!("bad number {text}: {e}")))
}

fn dispatch(args: &[&str]) -> Outcome {
    match args {
        ["tcp-connect", a] => inet::tcp_connect(addr(a)?),
        ["tcp-fastopen", a] => inet::tcp_fastopen(addr(a)?),
        ["udp-connected", a, n] => inet::udp_connected(addr(a)?, number(n)?),
        ["udp-sendto", a, n] => inet::udp_sendto(addr(a)?, number(n)?),
        ["udp-sendmsg", a, n] => inet::udp_sendmsg(addr(a)?, number(n)?),
        ["udp-sendmmsg", a, n] => inet::udp_sendmmsg(addr(a)?, number(n)?),
        ["udp-preconnected", a] => inet::preconnected(false, addr(a)?),
        ["tcp-preconnected", a] => inet::preconnected(true, addr(a)?),
        ["tcp-held", a] => inet::held(addr(a)?),
        ["raw-udp", a, n] => inet::raw_udp(addr(a)?, number(n)?),
        ["raw-proto", i] => inet::raw_proto(ip(i)?),
        ["raw-fragments", a] => inet::raw_fragments(addr(a)?),
        ["packet", ifname, mac, src, a] => link::packet_socket(ifname, mac, ip(src)?, addr(a)?),
        ["icmp-raw", i] => inet::icmp_echo(ip(i)?, false),
        ["icmp-dgram", i] => inet::icmp_echo(ip(i)?, true),
        ["uring-connect", a] => uring::connect(addr(a)?),
        ["uring-sendmsg", a, n] => uring::sendmsg(addr(a)?, number(n)?),
        ["setuid-after-socket", uid, proto, a] => {
            creds::setuid_after_socket(number(uid)?, proto, addr(a)?)
        }
        ["seteuid-socket", uid, proto, a] => creds::seteuid_socket(number(uid)?, proto, addr(a)?),
        _ => Err(Failure::Setup(format!(
            "usage: see the doc comment of egress-bypass; got {args:?}"
        ))),
    }
}

/// Runs a technique, prints its result, and returns the exit code.
fn run(args: &[&str]) -> u8 {
    if let ["fork", rest @ ..] = args {
        return match creds::fork(|| i32::from(run(rest))) {
            Ok(code) => u8::try_from(code).unwrap_or(EXIT_SETUP),
            Err(failure) => report_failure(&failure),
        };
    }
    match dispatch(args) {
        Ok(Ok(())) => {
            println!("ok");
            0
        }
        Ok(Err(e)) => {
            let errno = e.raw_os_error().unwrap_or(0);
            println!("errno={errno} {} ({e})", sys::errno_name(errno));
            EXIT_CALL_FAILED
        }
        Err(failure) => report_failure(&failure),
    }
}

fn report_failure(failure: &Failure) -> u8 {
    match failure {
        Failure::Setup(why) => {
            eprintln!("egress-bypass: {why}");
            EXIT_SETUP
        }
        Failure::Unavailable(why) => {
            eprintln!("egress-bypass: unavailable: {why}");
            EXIT_UNAVAILABLE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ExitCode::from(run(&args))
}
