//! Techniques over IP sockets: TCP connect and Fast Open, every UDP send call, raw IP
//! sockets (kernel-built and hand-built headers, hand-made fragments) and ICMP echoes.

use std::{
    io::{self, BufRead as _, Write as _},
    mem::zeroed,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::{
    Call, Failure, Outcome,
    craft::{self, Ipv4, MORE_FRAGMENTS},
    sys::{self, connect, domain_of, sendto, set_int, sockaddr},
};

/// Bound on every blocking call, so that a dropped SYN cannot hang the helper.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Wraps a setup step's error.
pub fn setup<T>(result: io::Result<T>, what: &str) -> Result<T, Failure> {
    result.map_err(|e| Failure::Setup(format!("{what}: {e}")))
}

/// Runs `call`, printing how long the system call took (`latency_ns=`).
pub fn timed<T>(call: impl FnOnce() -> io::Result<T>) -> Call {
    let start = Instant::now();
    let result = call();
    println!("latency_ns={}", start.elapsed().as_nanos());
    result.map(drop)
}

/// A TCP socket for `addr`'s family, with bounded connects.
pub fn stream_socket(addr: &SocketAddr) -> Result<OwnedFd, Failure> {
    let fd = setup(
        sys::socket(domain_of(addr), libc::SOCK_STREAM, 0),
        "socket(SOCK_STREAM)",
    )?;
    dual_stack(&fd, addr)?;
    setup(sys::set_send_timeout(&fd, TIMEOUT), "SO_SNDTIMEO")?;
    Ok(fd)
}

/// A UDP socket for `addr`'s family that fragments datagrams larger than the path MTU
/// locally instead of refusing them.
pub fn dgram_socket(addr: &SocketAddr) -> Result<OwnedFd, Failure> {
    let fd = setup(
        sys::socket(domain_of(addr), libc::SOCK_DGRAM, 0),
        "socket(SOCK_DGRAM)",
    )?;
    dual_stack(&fd, addr)?;
    allow_fragments(&fd, addr.is_ipv4())?;
    Ok(fd)
}

/// IPv6 sockets also reach IPv4 peers through mapped addresses (the `::ffff:` case).
fn dual_stack(fd: &OwnedFd, addr: &SocketAddr) -> Result<(), Failure> {
    if addr.is_ipv6() {
        setup(
            set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0),
            "IPV6_V6ONLY=0",
        )?;
    }
    Ok(())
}

fn allow_fragments(fd: &OwnedFd, v4: bool) -> Result<(), Failure> {
    let (level, name, value) = if v4 {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )
    } else {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        )
    };
    setup(set_int(fd, level, name, value), "MTU_DISCOVER=DONT")
}

fn data(size: usize) -> Vec<u8> {
    vec![b'x'; size]
}

pub fn tcp_connect(addr: SocketAddr) -> Outcome {
    let fd = stream_socket(&addr)?;
    Ok(timed(|| connect(&fd, &addr)))
}

/// `sendto(MSG_FASTOPEN)` on an unconnected TCP socket: connects and sends in one call.
pub fn tcp_fastopen(addr: SocketAddr) -> Outcome {
    let fd = stream_socket(&addr)?;
    Ok(timed(|| {
        sendto(&fd, b"fast-open", libc::MSG_FASTOPEN, &addr)
    }))
}

pub fn udp_connected(addr: SocketAddr, size: usize) -> Outcome {
    let fd = dgram_socket(&addr)?;
    Ok(timed(|| connect(&fd, &addr)).and_then(|()| sys::send(&fd, &data(size)).map(drop)))
}

pub fn udp_sendto(addr: SocketAddr, size: usize) -> Outcome {
    let fd = dgram_socket(&addr)?;
    Ok(timed(|| sendto(&fd, &data(size), 0, &addr)))
}

pub fn udp_sendmsg(addr: SocketAddr, size: usize) -> Outcome {
    let fd = dgram_socket(&addr)?;
    let mut payload = data(size);
    let (mut name, name_len) = sockaddr(&addr);
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let msg = msghdr(&mut name, name_len, &mut iov);
    // SAFETY: the message points at the address, iovec and payload above, alive for the call.
    Ok(timed(|| {
        sys::check(unsafe { libc::sendmsg(fd.as_raw_fd(), &raw const msg, 0) })
    }))
}

/// Two datagrams in one `sendmmsg`; success only when the kernel took both.
pub fn udp_sendmmsg(addr: SocketAddr, size: usize) -> Outcome {
    let fd = dgram_socket(&addr)?;
    let mut payload = data(size);
    let (mut name, name_len) = sockaddr(&addr);
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut msgs = [
        libc::mmsghdr {
            msg_hdr: msghdr(&mut name, name_len, &mut iov),
            msg_len: 0,
        },
        libc::mmsghdr {
            msg_hdr: msghdr(&mut name, name_len, &mut iov),
            msg_len: 0,
        },
    ];
    // SAFETY: both messages point at memory alive for the call; the count matches the array.
    let sent =
        sys::check(unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), 2, 0) } as isize);
    Ok(match sent {
        Ok(2) => Ok(()),
        Ok(n) => Err(io::Error::other(format!("sendmmsg sent {n} of 2"))),
        Err(e) => Err(e),
    })
}

/// A message carrying one buffer to an explicit destination.
pub fn msghdr(
    name: &mut libc::sockaddr_storage,
    name_len: libc::socklen_t,
    iov: &mut libc::iovec,
) -> libc::msghdr {
    // SAFETY: all-zero bytes are a valid msghdr (no control data, no flags).
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&raw mut *name).cast();
    msg.msg_namelen = name_len;
    msg.msg_iov = &raw mut *iov;
    msg.msg_iovlen = 1;
    msg
}

/// A datagram held open from before the policy loaded: connects, prints `ready`, waits for
/// a line on stdin, then sends (TCP: on the connection established before).
pub fn preconnected(tcp: bool, addr: SocketAddr) -> Outcome {
    let fd = if tcp {
        stream_socket(&addr)?
    } else {
        dgram_socket(&addr)?
    };
    setup(connect(&fd, &addr), "connecting before the policy")?;
    println!("ready");
    setup(io::stdout().flush(), "flushing stdout")?;
    let mut line = String::new();
    setup(io::stdin().lock().read_line(&mut line), "reading stdin")?;
    Ok(sys::send(&fd, &data(1000)).map(drop))
}

/// A TCP connection held across policy changes: connects, prints `ready`, then sends 1000
/// bytes and prints `sent` for each line on stdin, until its end.
pub fn held(addr: SocketAddr) -> Outcome {
    let fd = stream_socket(&addr)?;
    setup(connect(&fd, &addr), "connecting")?;
    println!("ready");
    setup(io::stdout().flush(), "flushing stdout")?;
    for line in io::stdin().lock().lines() {
        setup(line, "reading stdin")?;
        if let Err(err) = sys::send(&fd, &data(1000)) {
            return Ok(Err(err));
        }
        println!("sent");
        setup(io::stdout().flush(), "flushing stdout")?;
    }
    Ok(Ok(()))
}

/// A raw socket of `protocol` whose IP header the kernel builds.
fn raw_socket(ip: IpAddr, protocol: i32) -> Result<OwnedFd, Failure> {
    let domain = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    setup(
        sys::socket(domain, libc::SOCK_RAW, protocol),
        "socket(SOCK_RAW)",
    )
}

/// A UDP datagram written through a raw IPPROTO_UDP socket: no UDP socket, so no
/// `sendmsg` hook; only the packet hook can see it. Large sizes are fragmented by the kernel.
pub fn raw_udp(addr: SocketAddr, size: usize) -> Outcome {
    let fd = raw_socket(addr.ip(), libc::IPPROTO_UDP)?;
    if addr.is_ipv6() {
        // Offset of the UDP checksum: the kernel computes it (mandatory over IPv6).
        setup(
            set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 6),
            "IPV6_CHECKSUM",
        )?;
    }
    allow_fragments(&fd, addr.is_ipv4())?;
    let mut packet = craft::udp_header(addr.port(), size);
    packet.extend_from_slice(&data(size));
    // A raw socket's "port" must be 0 (or its protocol).
    let to = SocketAddr::new(addr.ip(), 0);
    Ok(sendto(&fd, &packet, 0, &to).map(drop))
}

/// A raw socket of an unassigned protocol (253, for experiments): neither TCP nor UDP.
pub fn raw_proto(ip: IpAddr) -> Outcome {
    let fd = raw_socket(ip, 253)?;
    Ok(sendto(&fd, b"egress-bypass-proto", 0, &SocketAddr::new(ip, 0)).map(drop))
}

/// Two hand-made fragments of one UDP datagram through an IP_HDRINCL socket: the first
/// carries the UDP header, the second only data (no ports). Both are sent whatever the
/// first did; the call fails if either send failed.
pub fn raw_fragments(addr: SocketAddr) -> Outcome {
    let IpAddr::V4(dst) = addr.ip() else {
        return Err(Failure::Setup("hand-made fragments are IPv4 only".into()));
    };
    let fd = raw_socket(addr.ip(), libc::IPPROTO_RAW)?;
    let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(1);
    let header = |frag: u16, len: usize| {
        Ipv4 {
            src: std::net::Ipv4Addr::UNSPECIFIED,
            dst,
            protocol: 17,
            id,
            frag,
        }
        .header(len)
    };
    // 24-byte datagram: 8 bytes of UDP header and 8 of data, then 8 at offset 16 (2 units).
    let mut first = header(MORE_FRAGMENTS, 16);
    first.extend_from_slice(&craft::udp_header(addr.port(), 16));
    first.extend_from_slice(b"fragment");
    let mut second = header(2, 8);
    second.extend_from_slice(b"-second-");
    let to = SocketAddr::new(addr.ip(), 0);
    let results = [first, second].map(|packet| sendto(&fd, &packet, 0, &to));
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(_) => println!("fragment{}=ok", i + 1),
            Err(e) => println!("fragment{}=errno {}", i + 1, e.raw_os_error().unwrap_or(0)),
        }
    }
    Ok(results.into_iter().try_for_each(|r| r.map(drop)))
}

/// An echo request from a raw ICMP/ICMPv6 socket (`dgram` false) or from an unprivileged
/// ping socket (`dgram` true; needs net.ipv4.ping_group_range to include our gid).
pub fn icmp_echo(ip: IpAddr, dgram: bool) -> Outcome {
    let (domain, protocol) = if ip.is_ipv4() {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    } else {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    };
    let kind = if dgram {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_RAW
    };
    let fd = setup(sys::socket(domain, kind, protocol), "ICMP socket")?;
    let to = SocketAddr::new(ip, 0);
    Ok(sendto(&fd, &craft::echo_request(ip), 0, &to).map(drop))
}
