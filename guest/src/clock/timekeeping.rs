//! The system clocks, in nanoseconds.

use rustix::time::{ClockId, Timespec, clock_gettime, clock_settime};

fn ns(ts: Timespec) -> i64 {
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

/// CLOCK_REALTIME: wall-clock time, ns since the Unix epoch.
pub fn realtime_ns() -> i64 {
    ns(clock_gettime(ClockId::Realtime))
}

/// CLOCK_BOOTTIME: time since boot, counting time suspended; never stepped.
pub fn boottime_ns() -> i64 {
    ns(clock_gettime(ClockId::Boottime))
}

/// CLOCK_MONOTONIC: never stepped, stops while suspended.
pub fn monotonic_ns() -> i64 {
    ns(clock_gettime(ClockId::Monotonic))
}

pub fn timespec(ns: i64) -> Timespec {
    Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) }
}

/// Step CLOCK_REALTIME (needs CAP_SYS_TIME).
pub fn set_realtime_ns(ns: i64) -> std::io::Result<()> {
    clock_settime(ClockId::Realtime, timespec(ns)).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespec_splits_negative_and_positive() {
        let t = timespec(-1);
        assert_eq!((t.tv_sec, t.tv_nsec), (-1, 999_999_999));
        assert_eq!(ns(timespec(1_700_000_000_123_456_789)), 1_700_000_000_123_456_789);
    }

    #[test]
    fn clocks_read_sensibly() {
        assert!(realtime_ns() > 1_600_000_000_000_000_000);
        let mono = monotonic_ns();
        assert!(boottime_ns() >= mono, "boottime counts everything monotonic does");
    }
}
