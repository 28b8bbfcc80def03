//! io_uring: connect and sendmsg submitted through a ring instead of system calls. The ring
//! ends in the same kernel functions (`__sys_connect_file`, `__sys_sendmsg_sock`), so the
//! same hooks must apply. A kernel with io_uring disabled is reported as such (exit 3), never
//! as a blocked call: its EPERM would look exactly like ours.

use std::{io, net::SocketAddr, os::fd::AsRawFd as _, time::Instant};

use io_uring::{IoUring, opcode, squeue, types};

use crate::{
    Failure, Outcome,
    inet::{dgram_socket, msghdr, setup, stream_socket},
    sys::sockaddr,
};

/// A ring, or `Unavailable` when the kernel refuses to make one.
fn ring() -> Result<IoUring, Failure> {
    IoUring::new(4).map_err(|e| {
        Failure::Unavailable(format!(
            "io_uring_setup: {e} (see sysctl kernel.io_uring_disabled)"
        ))
    })
}

/// Submits one entry and returns its completion's result (an errno as `Err`).
fn run_one(ring: &mut IoUring, entry: &squeue::Entry) -> Result<io::Result<i32>, Failure> {
    // SAFETY: every buffer the entry points at outlives the ring, which the caller drops
    // before them.
    setup(
        unsafe { ring.submission().push(entry) }.map_err(io::Error::other),
        "queueing",
    )?;
    setup(ring.submit_and_wait(1), "io_uring_enter")?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| Failure::Setup("no completion".into()))?;
    let res = cqe.result();
    Ok(if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res)
    })
}

pub fn connect(addr: SocketAddr) -> Outcome {
    let fd = stream_socket(&addr)?;
    let (sa, len) = sockaddr(&addr);
    let entry = opcode::Connect::new(types::Fd(fd.as_raw_fd()), (&raw const sa).cast(), len)
        .build()
        .user_data(1);
    let mut ring = ring()?;
    let start = Instant::now();
    let result = run_one(&mut ring, &entry)?;
    println!("latency_ns={}", start.elapsed().as_nanos());
    Ok(result.map(drop))
}

pub fn sendmsg(addr: SocketAddr, size: usize) -> Outcome {
    let fd = dgram_socket(&addr)?;
    let mut payload = vec![b'u'; size];
    let (mut name, name_len) = sockaddr(&addr);
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let msg = msghdr(&mut name, name_len, &mut iov);
    let entry = opcode::SendMsg::new(types::Fd(fd.as_raw_fd()), &raw const msg)
        .build()
        .user_data(2);
    let mut ring = ring()?;
    Ok(run_one(&mut ring, &entry)?.map(drop))
}
