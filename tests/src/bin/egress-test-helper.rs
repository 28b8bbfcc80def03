//! Helper processes for the integration tests, run inside namespaces and cgroups:
//!
//! - `connect ADDR TIMEOUT_MS`: TCP connect; exit 0 if established, 1 if not.
//! - `udp ADDR TIMEOUT_MS`: send a datagram, wait for its echo; exit 0 if echoed, 1 if not.
//! - `serve (tcp|udp):ADDR...`: HTTP responders and UDP echoes; prints `ready` once bound,
//!   then one line `tcp|udp LOCAL PEER` per accepted connection or received datagram.
//! - `info`: prints `cgroup=`, `uid=` and `netns=` lines.
//! - `sleep SECS`.
//! - `icmp`, `connect-and-exit`, `udp-flood`: see `egress_tests::traffic::run`.
//!
//! Exit code 2 means a usage or setup error.

use std::{
    env, fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
    time::Duration,
};

const PING: &[u8] = b"egress-test-ping";

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
    let run = || -> std::io::Result<bool> {
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
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
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
