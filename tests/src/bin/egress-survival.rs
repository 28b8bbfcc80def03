//! Traffic for the survival tests (enforcement across agent crashes, restarts, upgrades and
//! reloads), run inside the test namespaces and cgroups:
//!
//! - `echo ADDR`: a TCP echo server; prints `ready` once listening.
//! - `hold ADDR INTERVAL_MS STOPFILE`: opens one TCP connection and exchanges a byte every
//!   interval until STOPFILE exists; exits 0 only if every exchange succeeded, so a reload
//!   that cut the connection fails it.
//! - `probe ADDR STOPFILE`: sends a UDP datagram to ADDR at least every millisecond until
//!   STOPFILE exists, whatever the send returns; prints how many sends the kernel accepted
//!   and how many it refused.
//!
//! Both stop by themselves after two minutes or 200,000 sends at the latest.
//!
//! Exit code 2 means a usage or setup error.

use std::{
    env,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

const MAX_PROBES: u64 = 200_000;
const MAX_RUN: Duration = Duration::from_secs(120);

/// True when the test asked us to stop, or we ran for too long.
fn done(stop: &Path, started: Instant) -> bool {
    stop.exists() || started.elapsed() >= MAX_RUN
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["echo", addr] => addr_arg(addr).and_then(echo),
        ["hold", addr, interval, stop] => {
            addr_arg(addr).and_then(|addr| hold(addr, millis(interval)?, Path::new(stop)))
        }
        ["probe", addr, stop] => addr_arg(addr).and_then(|addr| probe(addr, Path::new(stop))),
        _ => Err(format!("usage: see the doc comment; got {args:?}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("egress-survival: {err}");
            ExitCode::from(2)
        }
    }
}

fn addr_arg(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|e| format!("bad address {text}: {e}"))
}

fn millis(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_millis)
        .map_err(|e| format!("bad milliseconds {text}: {e}"))
}

fn echo(addr: SocketAddr) -> Result<bool, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("ready");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        thread::spawn(move || {
            let mut byte = [0u8; 1];
            while matches!(stream.read(&mut byte), Ok(1)) {
                if stream.write_all(&byte).is_err() {
                    break;
                }
            }
        });
    }
    Ok(true)
}

fn hold(addr: SocketAddr, interval: Duration, stop: &Path) -> Result<bool, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    println!("connected");
    let started = Instant::now();
    let mut exchanges = 0u64;
    while !done(stop, started) {
        let sent = [(exchanges % 251) as u8];
        let mut got = [0u8; 1];
        let ok = stream.write_all(&sent).is_ok() && matches!(stream.read(&mut got), Ok(1));
        if !ok || got != sent {
            println!("broken after {exchanges} exchanges");
            return Ok(false);
        }
        exchanges += 1;
        thread::sleep(interval);
    }
    println!("held {exchanges} exchanges");
    Ok(true)
}

fn probe(addr: SocketAddr, stop: &Path) -> Result<bool, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    let started = Instant::now();
    let (mut accepted, mut refused, mut sent) = (0u64, 0u64, 0u64);
    println!("probing");
    while !done(stop, started) && sent < MAX_PROBES {
        match socket.send_to(b"egress-probe", addr) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
        sent += 1;
        thread::sleep(Duration::from_micros(500));
    }
    println!("sent={sent} accepted={accepted} refused={refused}");
    Ok(true)
}
