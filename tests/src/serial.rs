//! Serializes tests that share kernel state (attached programs, namespaces, cgroups),
//! within one test binary and across test binaries.

use std::{
    fs::{File, OpenOptions},
    io,
    os::fd::AsRawFd as _,
    sync::{Mutex, MutexGuard},
};

const LOCK_FILE: &str = "/run/egress-tests.lock";

static LOCK: Mutex<()> = Mutex::new(());

/// Holds the process-wide mutex and an exclusive `flock` on /run/egress-tests.lock.
pub struct SerialGuard {
    _file: File,
    _mutex: MutexGuard<'static, ()>,
}

/// Takes the global test lock, waiting for other tests (in any test binary) to finish.
///
/// # Panics
/// When the lock file cannot be opened or locked.
pub fn serial() -> SerialGuard {
    // A test that panicked while holding the lock poisons it; its guards still cleaned up.
    let mutex = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("cannot open {LOCK_FILE}: {e}"));
    loop {
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            panic!("cannot lock {LOCK_FILE}: {err}");
        }
    }
    SerialGuard {
        _file: file,
        _mutex: mutex,
    }
}
