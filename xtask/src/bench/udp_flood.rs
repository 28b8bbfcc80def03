//! The decision-event generator (`bench --udp-worker ADDR RATE COUNT`), run inside the
//! benchmark cgroup and client namespace: one-byte UDP datagrams from unconnected sockets to
//! distinct destination ports of one allowed documentation address. Every (socket, address,
//! port) is a new flow for the kernel program, so every datagram is one decision event;
//! `sendmmsg` sends a batch of them per system call, so the generator offers flows far faster
//! than one connection at a time could.

use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 64;
/// Flows per socket before the next socket: well inside the port space, so each flow is new.
const FLOWS_PER_SOCKET: u64 = 50_000;
const FIRST_PORT: u64 = 1024;
/// Hard bound on one run, whatever the arguments say.
const MAX_SECS: f64 = 30.0;

/// What one run did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sent {
    pub flows: u64,
    pub secs: f64,
    /// `sendmmsg` calls that failed with a transient error (the batch was retried).
    pub stalls: u64,
}

fn sockaddr(addr: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Sends `count` new flows to `addr`, paced at `rate` flows/s (0: as fast as it can).
pub fn flood(addr: Ipv4Addr, rate: f64, count: u64) -> Result<Sent> {
    let payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    let mut names = [sockaddr(addr, 0); BATCH];
    // SAFETY: mmsghdr is plain data for which all zeroes is valid; pointers are set below.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let start = Instant::now();
    let (mut sent, mut stalls) = (0u64, 0u64);
    let mut socket: Option<UdpSocket> = None;
    while sent < count {
        if start.elapsed().as_secs_f64() > MAX_SECS {
            bail!("stopped after {MAX_SECS} s with {sent} of {count} flows sent");
        }
        if sent.is_multiple_of(FLOWS_PER_SOCKET) || socket.is_none() {
            socket = Some(UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?);
        }
        let fd = socket.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        // A batch never crosses into the next socket's flows.
        let left_on_socket = FLOWS_PER_SOCKET - sent % FLOWS_PER_SOCKET;
        let n =
            usize::try_from((count - sent).min(left_on_socket).min(BATCH as u64)).unwrap_or(BATCH);
        for (i, (msg, name)) in msgs.iter_mut().zip(names.iter_mut()).take(n).enumerate() {
            let flow = sent + i as u64;
            let port = FIRST_PORT + flow % FLOWS_PER_SOCKET;
            *name = sockaddr(addr, u16::try_from(port).unwrap_or(u16::MAX));
            msg.msg_hdr.msg_name = (&raw mut *name).cast();
            msg.msg_hdr.msg_namelen = u32::try_from(size_of::<libc::sockaddr_in>()).unwrap_or(16);
            msg.msg_hdr.msg_iov = &raw mut iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..n]` point at live sockaddrs and one iovec over a live buffer.
        let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), u32::try_from(n)?, 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
                    stalls += 1;
                    thread::sleep(Duration::from_micros(50));
                    continue;
                }
                _ => return Err(err).context("sendmmsg"),
            }
        }
        sent += u64::try_from(rc)?;
        if rate > 0.0 {
            #[expect(clippy::cast_precision_loss, reason = "flow counts far below 2^52")]
            let due = Duration::from_secs_f64(sent as f64 / rate);
            let elapsed = start.elapsed();
            if due > elapsed {
                thread::sleep(due - elapsed);
            }
        }
    }
    Ok(Sent {
        flows: sent,
        secs: start.elapsed().as_secs_f64(),
        stalls,
    })
}

/// Entry point of the worker process: prints `sent N secs S stalls K`.
pub fn run(args: &[String]) -> Result<()> {
    let [addr, rate, count] = args else {
        bail!("udp worker takes ADDR RATE COUNT");
    };
    let addr: Ipv4Addr = addr.parse().context("udp worker address")?;
    let rate: f64 = rate.parse().context("udp worker rate")?;
    let count: u64 = count.parse().context("udp worker count")?;
    let Sent {
        flows,
        secs,
        stalls,
    } = flood(addr, rate, count)?;
    println!("sent {flows} secs {secs:.6} stalls {stalls}");
    Ok(())
}

/// Parses the worker's summary line.
pub fn parse(text: &str) -> Option<Sent> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words[..] {
        ["sent", flows, "secs", secs, "stalls", stalls] => Some(Sent {
            flows: flows.parse().ok()?,
            secs: secs.parse().ok()?,
            stalls: stalls.parse().ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        assert_eq!(
            parse("sent 200000 secs 1.5 stalls 2\n"),
            Some(Sent {
                flows: 200_000,
                secs: 1.5,
                stalls: 2
            })
        );
        assert_eq!(parse("sent x"), None);
    }

    #[test]
    fn sends_paced_flows_on_loopback() {
        // Loopback of this namespace, to a port range nobody listens on: datagrams are
        // dropped on arrival. Checks the count and that pacing slows the sender down.
        let sent = flood(Ipv4Addr::LOCALHOST, 20_000.0, 2_000).expect("flood");
        assert_eq!(sent.flows, 2_000);
        assert!(
            sent.secs >= 0.09,
            "paced at 20k/s, 2k flows took {}",
            sent.secs
        );
    }
}
