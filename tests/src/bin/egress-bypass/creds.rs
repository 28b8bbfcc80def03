//! Processes that change identity: a child forked after the policy loaded, and uid changes
//! between creating a socket and using it. A socket's owner uid is fixed when it is created
//! (from the creator's fsuid); these techniques show which uid the hooks judge.

use std::{io, net::SocketAddr};

use crate::{
    Failure, Outcome,
    inet::{dgram_socket, stream_socket, timed},
    sys::{connect, sendto},
};

/// Runs `technique` in a child forked now and exits as it does.
pub fn fork(run: impl FnOnce() -> i32) -> Result<i32, Failure> {
    // SAFETY: the helper is single-threaded, so the child may run ordinary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Failure::Setup(format!(
            "fork: {}",
            io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        std::process::exit(run());
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &raw mut status, 0) } != pid {
        return Err(Failure::Setup(format!(
            "waitpid: {}",
            io::Error::last_os_error()
        )));
    }
    println!("child_pid={pid}");
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(Failure::Setup(format!(
            "child ended with status {status:#x}"
        )))
    }
}

/// The socket for `proto` (`tcp` or `udp`).
fn socket_for(proto: &str, addr: &SocketAddr) -> Result<std::os::fd::OwnedFd, Failure> {
    match proto {
        "tcp" => stream_socket(addr),
        "udp" => dgram_socket(addr),
        other => Err(Failure::Setup(format!("unknown protocol {other}"))),
    }
}

/// The call under test on an existing socket: connect for TCP, sendto for UDP.
fn use_socket(proto: &str, fd: &std::os::fd::OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    if proto == "tcp" {
        timed(|| connect(fd, addr))
    } else {
        timed(|| sendto(fd, b"egress-bypass-uid", 0, addr))
    }
}

fn check(rc: i32, what: &str) -> Result<(), Failure> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Failure::Setup(format!(
            "{what}: {}",
            io::Error::last_os_error()
        )))
    }
}

/// Creates the socket as the current user (root), then drops every uid to `uid` for good
/// and makes the call.
pub fn setuid_after_socket(uid: u32, proto: &str, addr: SocketAddr) -> Outcome {
    let fd = socket_for(proto, &addr)?;
    // SAFETY: credential system calls without memory arguments.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setgid(uid), "setgid")?;
        check(libc::setuid(uid), "setuid")?;
    }
    Ok(use_socket(proto, &fd, &addr))
}

/// Creates the socket with the effective (and so file-system) uid `uid` while the real and
/// saved uids stay root, switches back to root, then makes the call: the socket stays
/// `uid`'s.
pub fn seteuid_socket(uid: u32, proto: &str, addr: SocketAddr) -> Outcome {
    // SAFETY: credential system calls without memory arguments; -1 keeps an id unchanged.
    unsafe {
        check(libc::setresuid(u32::MAX, uid, u32::MAX), "seteuid(uid)")?;
    }
    let fd = socket_for(proto, &addr);
    // SAFETY: as above; the saved uid is still root, so this may switch back.
    unsafe {
        check(libc::setresuid(u32::MAX, 0, u32::MAX), "seteuid(0)")?;
    }
    let fd = fd?;
    Ok(use_socket(proto, &fd, &addr))
}
