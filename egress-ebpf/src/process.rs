//! Attribution: which process a socket belongs to, recorded in process context so that
//! packets sent later from softirq context are attributed, for as long as the socket is open.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
            bpf_get_socket_cookie,
        },
    },
    macros::cgroup_sock,
    programs::SockContext,
};
use egress_common::{
    SocketOwner,
    event::{DecidedConnection, ReportedConnection},
};

use crate::{
    events,
    maps::{EGRESS_OWNER_SCRATCH, EGRESS_SOCKETS},
};

/// Return value of `cgroup/sock_create` that lets the socket be created (and the only one
/// `cgroup/sock_release` may return).
const ALLOW: i32 = 1;

#[cgroup_sock(sock_create)]
pub fn egress_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the helper reads the socket the kernel passed us.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    record(cookie, current_fsuid());
    ALLOW
}

/// Forgets a closed socket's owner. Without it the map is always full and recording a new
/// socket evicts an old one, which cost about 800 ns of every short connection (BPF
/// run-time stats); with it, a socket's entry lives while the socket does, and the LRU only
/// evicts entries of sockets closed while no agent was attached. Packets the kernel still
/// sends for a closed socket (retransmissions) are judged as ever, and reported, where a
/// policy change denies them, without their process.
#[cgroup_sock(sock_release)]
pub fn egress_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the helper reads the socket the kernel passed us.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Absent: never recorded, or already evicted.
    if let Some(owner) = EGRESS_SOCKETS.get_ptr(cookie) {
        // SAFETY: an LRU value pointer valid for this program run; plain data.
        events::forget_connection(cookie, unsafe { &(*owner).reported });
        let _ = EGRESS_SOCKETS.remove(cookie);
    }
    ALLOW
}

/// Records the current process as the owner of the socket with `cookie`.
pub fn record(cookie: u64, uid: u32) {
    let Some(owner) = EGRESS_OWNER_SCRATCH.get_ptr_mut(0) else {
        return; // the one entry of a per-CPU array is always there
    };
    // SAFETY: plain helper calls in process context; this CPU's scratch entry, which no
    // other program uses while this one runs, is written whole before it is read.
    unsafe {
        let pid = bpf_get_current_pid_tgid() >> 32;
        *owner = SocketOwner {
            pid: pid as u32,
            uid,
            comm: bpf_get_current_comm().unwrap_or_default(),
            reported: ReportedConnection::default(),
            decided: DecidedConnection::default(),
        };
        // By reference: a copy would put the owner back on the stack.
        let owner: &SocketOwner = &*owner;
        // An LRU insert only fails under memory pressure: the socket is then unattributed.
        let _ = EGRESS_SOCKETS.insert(cookie, owner, 0);
    }
}

/// Records the calling process as the owner of the socket with `cookie`, which it is about to
/// send with, and returns the socket's uid: the one recorded at its creation, or (for a socket
/// created before the agent) the caller's fsuid. A recorded socket is updated in place: an
/// LRU update allocates a new element and frees the old, which cost about 550 ns per
/// `connect()`.
pub fn claim(cookie: u64) -> u32 {
    let Some(owner) = EGRESS_SOCKETS.get_ptr_mut(cookie) else {
        let uid = current_fsuid();
        record(cookie, uid);
        return uid;
    };
    // SAFETY: plain helper call in process context.
    let pid = (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32;
    // SAFETY: an LRU value pointer valid for this program run; plain data. Another CPU
    // reading the entry while it changes may attribute an event to a mix of the two
    // processes' pid and name, never change a verdict: the uid is not written. The name is
    // read again even for the same pid: a thread may be named otherwise, or the process
    // may have exec'd.
    unsafe {
        (*owner).pid = pid;
        (*owner).comm = bpf_get_current_comm().unwrap_or_default();
        (*owner).uid
    }
}

/// Offset of the `cred` pointer in `struct task_struct`, and of `fsuid` in `struct cred`,
/// set by the agent from the kernel's BTF (0: unknown). Read with `read_volatile`: LLVM
/// would otherwise fold these constants to their initial value.
#[unsafe(no_mangle)]
static TASK_CRED_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CRED_FSUID_OFFSET: u32 = 0;

/// The uid a socket created now would be owned by: the kernel sets a socket's uid from its
/// creator's fsuid (`sock_init_data` → `SOCK_INODE(sock)->i_uid`), which is what the packet
/// hook's `bpf_get_socket_uid` returns. `bpf_get_current_uid_gid` gives the real uid
/// instead, which differs in set-uid programs and after `seteuid`; it is only the fallback
/// when the agent could not find the offsets.
pub fn current_fsuid() -> u32 {
    // SAFETY: reads of two constants patched at load time.
    let (task_cred, cred_fsuid) = unsafe {
        (
            read_volatile(&raw const TASK_CRED_OFFSET),
            read_volatile(&raw const CRED_FSUID_OFFSET),
        )
    };
    if task_cred != 0 && cred_fsuid != 0 {
        // SAFETY: probe reads of kernel memory at offsets the agent took from this kernel's
        // BTF; a failed read returns an error, never faults.
        let fsuid = unsafe {
            let task = bpf_get_current_task() as *const u8;
            bpf_probe_read_kernel(task.add(task_cred as usize).cast::<u64>()).and_then(|cred| {
                bpf_probe_read_kernel((cred as *const u8).add(cred_fsuid as usize).cast::<u32>())
            })
        };
        if let Ok(fsuid) = fsuid {
            return fsuid;
        }
    }
    // SAFETY: plain helper call in process context.
    unsafe { bpf_get_current_uid_gid() as u32 }
}
