//! Kernel times are `CLOCK_BOOTTIME` nanoseconds (events) or `CLOCK_MONOTONIC` nanoseconds
//! (the coarse clock of rule hits); records carry wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts one kernel clock's nanoseconds to wall-clock time with the offset measured at
/// creation.
#[derive(Clone, Copy, Debug)]
pub struct KernelClock {
    /// Wall-clock time at the clock's zero, in nanoseconds since the epoch.
    zero_epoch_ns: i128,
}

impl KernelClock {
    /// For `bpf_ktime_get_boot_ns` times.
    pub fn boot() -> Self {
        Self::of(libc::CLOCK_BOOTTIME)
    }

    /// For `bpf_ktime_get_ns` and `bpf_ktime_get_coarse_ns` times.
    pub fn monotonic() -> Self {
        Self::of(libc::CLOCK_MONOTONIC)
    }

    fn of(clock: libc::clockid_t) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Self {
            zero_epoch_ns: wall - i128::from(clock_ns(clock)),
        }
    }

    pub fn wall(&self, kernel_ns: u64) -> SystemTime {
        let ns = (self.zero_epoch_ns + i128::from(kernel_ns)).max(0);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// RFC 3339 in UTC with nanoseconds, as every record's `time`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_times_map_to_now() {
        for (clock, id) in [
            (KernelClock::boot(), libc::CLOCK_BOOTTIME),
            (KernelClock::monotonic(), libc::CLOCK_MONOTONIC_COARSE),
        ] {
            let wall = clock.wall(clock_ns(id));
            let skew = SystemTime::now()
                .duration_since(wall)
                .unwrap_or_else(|err| err.duration());
            assert!(skew < Duration::from_secs(1), "skew {skew:?}");
        }
        let wall = KernelClock::boot().wall(clock_ns(libc::CLOCK_BOOTTIME));
        assert!(rfc3339(wall).ends_with('Z'));
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }
}
