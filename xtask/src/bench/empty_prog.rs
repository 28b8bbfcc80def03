//! The baseline: an empty `cgroup_skb` program (`r0 = 1; exit`, i.e. pass), loaded, test-run,
//! attached and queried with raw bpf(2) calls. It cannot live in the kernel crate (built by
//! another owner for the real program), and it needs no maps, relocations or BTF, so two
//! instructions and a handful of `bpf_attr` layouts are all it takes.
//!
//! Layouts follow include/uapi/linux/bpf.h of v6.18; every struct is zero-padded to the size
//! the kernel checks (it rejects non-zero bytes past the fields it knows).

use std::{
    ffi::c_long,
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_PROG_LOAD: c_long = 5;
const BPF_PROG_ATTACH: c_long = 8;
const BPF_PROG_DETACH: c_long = 9;
const BPF_PROG_TEST_RUN: c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: c_long = 15;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
/// Lets this program sit beside others on the same cgroup.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// A zeroed `union bpf_attr`, large enough for every command used here.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32(&mut self, offset: usize, value: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn u64(&mut self, offset: usize, value: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn get_u32(&self, offset: usize) -> u32 {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_ne_bytes(bytes)
    }
}

fn bpf(cmd: c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, writable bpf_attr of the size passed; pointers inside it
    // (set by the callers) point at buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            size_of::<Attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn ptr<T>(value: *const T) -> u64 {
    value as usize as u64
}

/// The loaded empty program; unloaded when dropped (and detached by its guard first).
pub struct EmptyProgram {
    fd: OwnedFd,
}

/// The outcome of a test run: return value and average ns per run.
pub struct RunResult {
    pub retval: u32,
    pub ns_per_run: u32,
}

impl EmptyProgram {
    pub fn load() -> io::Result<Self> {
        // r0 = 1 (BPF_ALU64 | BPF_MOV | BPF_K); exit (BPF_JMP | BPF_EXIT).
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = b"GPL\0";
        let mut name = [0u8; 16];
        name[..11].copy_from_slice(b"bench_empty");
        let mut attr = Attr::new();
        // prog_type, insn_cnt, insns, license; prog_name at 48; expected_attach_type at 68.
        attr.u32(0, BPF_PROG_TYPE_CGROUP_SKB)
            .u32(4, 2)
            .u64(8, ptr(insns.as_ptr()))
            .u64(16, ptr(license.as_ptr()));
        attr.0[48..64].copy_from_slice(&name);
        attr.u32(68, BPF_CGROUP_INET_EGRESS);
        let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        let fd = i32::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn raw(&self) -> u32 {
        u32::try_from(self.fd.as_raw_fd()).unwrap_or(u32::MAX)
    }

    /// BPF_PROG_TEST_RUN on an Ethernet frame, `repeat` times.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> io::Result<RunResult> {
        let mut attr = Attr::new();
        // prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration.
        attr.u32(0, self.raw())
            .u32(8, u32::try_from(frame.len()).map_err(io::Error::other)?)
            .u64(16, ptr(frame.as_ptr()))
            .u32(32, repeat);
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(RunResult {
            retval: attr.get_u32(4),
            ns_per_run: attr.get_u32(36),
        })
    }

    /// The kernel's program id (first fields of `struct bpf_prog_info`: type, id).
    pub fn id(&self) -> io::Result<u32> {
        let mut info = [0u32; 2];
        let mut attr = Attr::new();
        attr.u32(0, self.raw())
            .u32(4, 8)
            .u64(8, ptr(info.as_mut_ptr()));
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(info[1])
    }

    /// Attaches to the egress hook of the cgroup directory `cgroup` until the guard drops.
    pub fn attach(&self, cgroup: &Path) -> io::Result<Attached<'_>> {
        let dir = File::open(cgroup)?;
        attach_cmd(BPF_PROG_ATTACH, &dir, self.raw())?;
        Ok(Attached { program: self, dir })
    }
}

fn attach_cmd(cmd: c_long, dir: &File, prog: u32) -> io::Result<()> {
    let mut attr = Attr::new();
    // target_fd, attach_bpf_fd, attach_type, attach_flags.
    attr.u32(0, u32::try_from(dir.as_raw_fd()).unwrap_or(u32::MAX))
        .u32(4, prog)
        .u32(8, BPF_CGROUP_INET_EGRESS)
        .u32(
            12,
            if cmd == BPF_PROG_ATTACH {
                BPF_F_ALLOW_MULTI
            } else {
                0
            },
        );
    bpf(cmd, &mut attr).map(drop)
}

/// The empty program attached to a cgroup; detached on drop.
pub struct Attached<'a> {
    program: &'a EmptyProgram,
    dir: File,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if let Err(err) = attach_cmd(BPF_PROG_DETACH, &self.dir, self.program.raw()) {
            eprintln!("bench: detaching the empty program failed: {err}");
        }
    }
}
