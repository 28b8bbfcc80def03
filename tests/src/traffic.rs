//! Traffic the helper binary generates for the audit tests (run inside a namespace and a
//! cgroup by the fixtures): ICMP echoes over raw sockets (no `ping` binary needed), a TCP
//! connect whose process exits at once, and a flood of distinct UDP flows.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// Identifier in our echo requests, to tell their replies from others'.
const ECHO_ID: u16 = 0x6567;

/// Destination ports a flood socket uses before the next socket takes over.
pub const FLOOD_PORTS_PER_SOCKET: u32 = 50_000;
/// First destination port of a flood.
pub const FLOOD_FIRST_PORT: u16 = 10_000;

fn socket(domain: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the fd it returns is owned by the OwnedFd.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The internet checksum (RFC 1071).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one ICMP (v4) or ICMPv6 echo request to `addr` from a raw socket; Ok(true) when
/// its reply arrives within `timeout`, Ok(false) when the send is refused (EPERM from a
/// dropping filter) or no reply comes.
pub fn icmp_echo(addr: IpAddr, timeout: Duration) -> io::Result<bool> {
    let (fd, request_type, reply_type) = match addr {
        IpAddr::V4(_) => (socket(libc::AF_INET, libc::IPPROTO_ICMP)?, 8, 0),
        // The kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets.
        IpAddr::V6(_) => (socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?, 128, 129),
    };
    let mut packet = vec![request_type, 0, 0, 0];
    packet.extend_from_slice(&ECHO_ID.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet.extend_from_slice(b"egress-test-echo");
    if addr.is_ipv4() {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    match send_to(&fd, &packet, addr) {
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => return Ok(false),
        other => other?,
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        set_timeout(&fd, left.max(Duration::from_millis(1)))?;
        // SAFETY: reads into a buffer we own, of the length we pass.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return Ok(false);
            }
            return Err(err);
        }
        let received = buf
            .get(..usize::try_from(n).unwrap_or(0))
            .unwrap_or_default();
        // Raw IPv4 sockets receive the IP header too; IPv6 ones only the ICMPv6 message.
        let icmp = if addr.is_ipv4() {
            let header = usize::from(received.first().copied().unwrap_or(0) & 0x0f) * 4;
            received.get(header..).unwrap_or_default()
        } else {
            received
        };
        if icmp.first() == Some(&reply_type) && icmp.get(4..6) == Some(&ECHO_ID.to_be_bytes()) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn set_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    set_socket_timeout(fd, libc::SO_RCVTIMEO, timeout)
}

/// Sets `SO_RCVTIMEO` or `SO_SNDTIMEO` (`option`) of a socket.
pub fn set_socket_timeout(fd: &OwnedFd, option: libc::c_int, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: passes a timeval we own with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_to(fd: &OwnedFd, packet: &[u8], addr: IpAddr) -> io::Result<()> {
    // SAFETY: zeroed sockaddr structs are valid; the pointers and lengths passed to sendto
    // describe buffers we own.
    let rc = unsafe {
        match addr {
            IpAddr::V4(v4) => {
                let mut sa: libc::sockaddr_in = zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                libc::sendto(
                    fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            IpAddr::V6(v6) => {
                let mut sa: libc::sockaddr_in6 = zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = v6.octets();
                libc::sendto(
                    fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts a TCP connect to `addr` without waiting for it and returns at once, so that the
/// process exits while its SYN (and, for a dropped one, its retransmissions) is in flight.
/// Ok(false) when the connect was refused outright (EPERM).
pub fn connect_and_exit(addr: SocketAddr) -> io::Result<bool> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain system call; the fd is owned by the OwnedFd.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and ours; TcpStream takes ownership and closes it on drop.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let rc = match addr {
        SocketAddr::V4(v4) => connect_v4(&stream, v4),
        SocketAddr::V6(v6) => connect_v6(&stream, v6),
    };
    match rc {
        Ok(()) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => Ok(false),
        Err(err) => Err(err),
    }
}

fn connect_v4(stream: &TcpStream, addr: SocketAddrV4) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_in is valid; we pass its exact size.
    let rc = unsafe {
        let mut sa: libc::sockaddr_in = zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = addr.port().to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(addr.ip().octets());
        libc::connect(
            stream.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn connect_v6(stream: &TcpStream, addr: SocketAddrV6) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_in6 is valid; we pass its exact size.
    let rc = unsafe {
        let mut sa: libc::sockaddr_in6 = zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = addr.port().to_be();
        sa.sin6_addr.s6_addr = addr.ip().octets();
        libc::connect(
            stream.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends one datagram on each of `count` distinct flows to `addr`: destination ports from
/// [`FLOOD_FIRST_PORT`], a new socket every [`FLOOD_PORTS_PER_SOCKET`] flows. Returns how
/// many were sent.
pub fn udp_flood(addr: IpAddr, count: u32) -> io::Result<u32> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut sent = 0;
    let mut socket = UdpSocket::bind(bind)?;
    for flow in 0..count {
        let offset = flow % FLOOD_PORTS_PER_SOCKET;
        if offset == 0 && flow > 0 {
            socket = UdpSocket::bind(bind)?;
        }
        let port = FLOOD_FIRST_PORT + u16::try_from(offset).map_err(io::Error::other)?;
        if socket.send_to(b"f", SocketAddr::new(addr, port)).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

/// The helper binary's modes defined here; `None` for other arguments.
///
/// - `icmp ADDR TIMEOUT_MS`: one echo request; exit 0 if answered, 1 if not.
/// - `connect-and-exit ADDR`: start a TCP connect and exit at once; 1 if refused outright.
/// - `udp-flood ADDR COUNT`: one datagram on each of COUNT flows; prints how many were sent.
pub fn run(args: &[&str]) -> Option<Result<bool, String>> {
    let result = match args {
        ["icmp", addr, ms] => addr
            .parse::<IpAddr>()
            .map_err(|e| format!("bad address {addr}: {e}"))
            .and_then(|addr| {
                let ms = ms.parse().map_err(|e| format!("bad timeout {ms}: {e}"))?;
                icmp_echo(addr, Duration::from_millis(ms)).map_err(|e| format!("icmp {addr}: {e}"))
            }),
        ["connect-and-exit", addr] => addr
            .parse::<SocketAddr>()
            .map_err(|e| format!("bad address {addr}: {e}"))
            .and_then(|addr| connect_and_exit(addr).map_err(|e| format!("connect {addr}: {e}"))),
        ["udp-flood", addr, count] => addr
            .parse::<IpAddr>()
            .map_err(|e| format!("bad address {addr}: {e}"))
            .and_then(|addr| {
                let count = count
                    .parse()
                    .map_err(|e| format!("bad count {count}: {e}"))?;
                let sent = udp_flood(addr, count).map_err(|e| format!("flood {addr}: {e}"))?;
                println!("{sent}");
                Ok(true)
            }),
        _ => return None,
    };
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_a_known_echo_request() {
        // Type 8, code 0, id 1, seq 1: the checksum makes the whole message sum to 0xffff.
        let mut packet = vec![8, 0, 0, 0, 0, 1, 0, 1];
        let sum = checksum(&packet);
        assert_eq!(sum, 0xf7fd);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&packet), 0);
    }
}
