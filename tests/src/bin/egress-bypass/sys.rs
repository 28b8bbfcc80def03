//! Thin, checked wrappers over the socket system calls the techniques use. Every wrapper
//! returns the kernel's errno untouched: the tests assert on it (EPERM from the cgroup hooks).

use std::{
    io,
    mem::{size_of, zeroed},
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    ptr,
    time::Duration,
};

/// Creates a socket (close-on-exec).
pub fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the descriptor it returns is owned by the OwnedFd.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The address family of `addr`'s socket. IPv4-mapped IPv6 addresses stay IPv6: the point
/// of that case is an IPv6 socket.
pub fn domain_of(addr: &SocketAddr) -> i32 {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// `addr` as a sockaddr the kernel accepts, with its length.
pub fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Turns a system call's return value into a result.
pub fn check(rc: isize) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

pub fn connect(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    // SAFETY: the sockaddr and its length describe memory we own.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    check(rc as isize).map(drop)
}

pub fn sendto(fd: &OwnedFd, data: &[u8], flags: i32, addr: &SocketAddr) -> io::Result<usize> {
    let (sa, len) = sockaddr(addr);
    sendto_raw(fd, data, flags, (&raw const sa).cast(), len)
}

/// `sendto` with a prepared address (any family, e.g. `sockaddr_ll`).
pub fn sendto_raw(
    fd: &OwnedFd,
    data: &[u8],
    flags: i32,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> io::Result<usize> {
    // SAFETY: the buffer and the address describe memory the caller owns for the call.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            flags,
            addr,
            len,
        )
    };
    check(rc)
}

pub fn send(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the buffer is ours for the call.
    let rc = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
    check(rc)
}

/// Sets an integer socket option.
pub fn set_int(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes an i32 we own with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    check(rc as isize).map(drop)
}

/// Bounds blocking sends and connects (`connect()` honours SO_SNDTIMEO).
pub fn set_send_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    egress_tests::traffic::set_socket_timeout(fd, libc::SO_SNDTIMEO, timeout)
}

/// The symbolic name of the errnos the tests meet, for readable output.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EINVAL => "EINVAL",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EAGAIN => "EAGAIN",
        _ => "other",
    }
}
