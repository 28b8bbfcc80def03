//! Servers in the server namespace that count every connection and datagram they receive.

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    process::Stdio,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use crate::{
    error::{FixtureError, Result},
    net::NetNsGuard,
    process::{Placement, ProcessGuard, helper_bin},
};

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Transport protocol of a server event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One accepted TCP connection or one received UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEvent {
    pub proto: Proto,
    /// The address the client sent to.
    pub local: SocketAddr,
    /// The client's address.
    pub peer: SocketAddr,
}

#[derive(Default)]
struct State {
    ready: bool,
    events: Vec<ServerEvent>,
    stderr: String,
}

/// The helper's `serve` mode run in a namespace: an HTTP responder on every (address, TCP
/// port) and a UDP echo on every (address, UDP port). Killed on drop.
pub struct Servers {
    state: Arc<Mutex<State>>,
    _process: ProcessGuard,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn parse_event(line: &str) -> Option<ServerEvent> {
    let mut parts = line.split_whitespace();
    let proto = match parts.next()? {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    let local = parts.next()?.parse().ok()?;
    let peer = parts.next()?.parse().ok()?;
    Some(ServerEvent { proto, local, peer })
}

impl Servers {
    /// Starts the servers in `net` and waits until every socket is bound.
    pub fn start(
        net: &NetNsGuard,
        addrs: &[IpAddr],
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> Result<Self> {
        Self::start_placed(&Placement::new(net.path()), addrs, tcp_ports, udp_ports)
    }

    /// As [`Servers::start`], placed by `placement` (a namespace, and a cgroup or uid), for
    /// servers that are themselves the governed workload.
    pub fn start_placed(
        placement: &Placement,
        addrs: &[IpAddr],
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> Result<Self> {
        let mut specs = Vec::new();
        for addr in addrs {
            for port in tcp_ports {
                specs.push(format!("tcp:{}", SocketAddr::new(*addr, *port)));
            }
            for port in udp_ports {
                specs.push(format!("udp:{}", SocketAddr::new(*addr, *port)));
            }
        }
        let mut cmd = placement.command(helper_bin()?)?;
        cmd.arg("serve")
            .args(&specs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = ProcessGuard::spawn(&mut cmd, "egress-test-helper serve")?;
        let state = Arc::new(Mutex::new(State::default()));
        if let Some(stdout) = process.child_mut().stdout.take() {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut state = lock(&state);
                    if line == "ready" {
                        state.ready = true;
                    } else if let Some(event) = parse_event(&line) {
                        state.events.push(event);
                    }
                }
            });
        }
        if let Some(stderr) = process.child_mut().stderr.take() {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut state = lock(&state);
                    state.stderr.push_str(&line);
                    state.stderr.push('\n');
                }
            });
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if lock(&state).ready {
                break;
            }
            let exited = process.wait_timeout(Duration::from_millis(20))?;
            if exited.is_some() || Instant::now() >= deadline {
                thread::sleep(Duration::from_millis(50));
                return Err(FixtureError::Other(format!(
                    "servers did not become ready ({exited:?}): {}",
                    lock(&state).stderr
                )));
            }
        }
        Ok(Self {
            state,
            _process: process,
        })
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<ServerEvent> {
        lock(&self.state).events.clone()
    }

    /// How many events of `proto` were addressed to `local`.
    pub fn count(&self, proto: Proto, local: SocketAddr) -> usize {
        lock(&self.state)
            .events
            .iter()
            .filter(|e| e.proto == proto && e.local == local)
            .count()
    }

    /// TCP connections accepted on `local`.
    pub fn tcp_count(&self, local: SocketAddr) -> usize {
        self.count(Proto::Tcp, local)
    }

    /// UDP datagrams received on `local`.
    pub fn udp_count(&self, local: SocketAddr) -> usize {
        self.count(Proto::Udp, local)
    }

    /// Waits up to `timeout` until at least `n` events of `proto` reached `local`;
    /// returns the final count.
    pub fn wait_count(
        &self,
        proto: Proto,
        local: SocketAddr,
        n: usize,
        timeout: Duration,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.count(proto, local);
            if count >= n || Instant::now() >= deadline {
                return count;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events() {
        let e = parse_event("tcp [2001:db8:1::10]:80 [2001:db8::1]:41000").expect("event");
        assert_eq!(e.proto, Proto::Tcp);
        assert_eq!(e.local.port(), 80);
        assert_eq!(
            parse_event("udp 198.51.100.10:53 192.0.2.1:5000").map(|e| e.proto),
            Some(Proto::Udp)
        );
        assert_eq!(parse_event("ready"), None);
    }
}
