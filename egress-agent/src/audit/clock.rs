//! Kernel event times are `CLOCK_BOOTTIME` nanoseconds; records carry wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts boot-time nanoseconds to wall-clock time with the offset measured at creation.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// Wall-clock time at boot, in nanoseconds since the epoch.
    boot_epoch_ns: i128,
}

impl BootClock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Self {
            boot_epoch_ns: wall - i128::from(boottime_ns()),
        }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let ns = (self.boot_epoch_ns + i128::from(boot_ns)).max(0);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

fn boottime_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
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
    fn boot_times_map_to_now() {
        let clock = BootClock::new();
        let wall = clock.wall(boottime_ns());
        let skew = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|err| err.duration());
        assert!(skew < Duration::from_secs(1), "skew {skew:?}");
        assert!(rfc3339(wall).ends_with('Z'));
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }
}
