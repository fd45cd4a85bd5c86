//! The hardware clock through `/dev/rtc0` (Linux Documentation/admin-guide/rtc.rst):
//! `RTC_RD_TIME` and `RTC_SET_TIME` carry a `struct rtc_time` (include/uapi/linux/rtc.h: nine
//! ints laid out like the first nine fields of `struct tm`), in UTC on the machines we run
//! on (QEMU's and vmd's mc146818 emulations keep UTC; `/etc/adjtime` says otherwise when a
//! guest keeps local time, which we then refuse to compare).
//!
//! The device allows one opener at a time (drivers/rtc/dev.c returns EBUSY to a second), so
//! it is opened per use and never held.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use almavmm_shared::wait::{Deadline, wait_until};
use rustix::ioctl::{Getter, Setter, ioctl, opcode};

use crate::clock::timekeeping;
use crate::sys::sysroot::SysRoot;

pub const DEVICE: &str = "/dev/rtc0";

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcTime {
    pub tm_sec: i32,
    pub tm_min: i32,
    pub tm_hour: i32,
    pub tm_mday: i32,
    /// 0-11.
    pub tm_mon: i32,
    /// Years since 1900.
    pub tm_year: i32,
    pub tm_wday: i32,
    pub tm_yday: i32,
    pub tm_isdst: i32,
}

/// `_IOR('p', 0x09, struct rtc_time)`.
const RTC_RD_TIME: rustix::ioctl::Opcode = opcode::read::<RtcTime>(b'p', 0x09);
/// `_IOW('p', 0x0a, struct rtc_time)`.
const RTC_SET_TIME: rustix::ioctl::Opcode = opcode::write::<RtcTime>(b'p', 0x0a);

pub use almavmm_shared::calendar::{civil_from_days, days_from_civil};

impl RtcTime {
    pub fn to_unix(&self) -> i64 {
        let days = days_from_civil(i64::from(self.tm_year) + 1900, i64::from(self.tm_mon) + 1, i64::from(self.tm_mday));
        days * 86_400 + i64::from(self.tm_hour) * 3600 + i64::from(self.tm_min) * 60 + i64::from(self.tm_sec)
    }

    pub fn from_unix(secs: i64) -> RtcTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        RtcTime {
            tm_sec: (rem % 60) as i32,
            tm_min: (rem / 60 % 60) as i32,
            tm_hour: (rem / 3600) as i32,
            tm_mday: d as i32,
            tm_mon: (m - 1) as i32,
            tm_year: (y - 1900) as i32,
            tm_wday: (days + 4).rem_euclid(7) as i32,
            tm_yday: (days - days_from_civil(y, 1, 1)) as i32,
            tm_isdst: 0,
        }
    }
}

/// Whether `/etc/adjtime` (hwclock(8): third line `UTC` or `LOCAL`) says the RTC keeps
/// local time.
pub fn keeps_local_time(adjtime: &str) -> bool {
    adjtime.lines().nth(2).is_some_and(|l| l.trim() == "LOCAL")
}

/// How long after a write the RTC's seconds first advance (the kernel's
/// `rtc_device.set_offset_nsec`, include/linux/rtc.h): the MC146818 that QEMU and vmd
/// emulate restarts its divider chain on a write and ticks 0.5 s later (drivers/rtc/rtc-cmos.c
/// sets NSEC_PER_SEC / 2); most other RTCs tick a full second after the write.
pub fn set_offset_ns(sysfs_name: Option<&str>) -> i64 {
    match sysfs_name {
        Some(n) if n.trim_start().starts_with("rtc_cmos") => 500_000_000,
        _ => 1_000_000_000,
    }
}

/// When to write second `V` so the RTC ticks to `V + 1` exactly when the system clock does:
/// at `V + 1 - set_offset`, i.e. at this fraction of the system second.
pub fn write_phase_ns(set_offset_ns: i64) -> i64 {
    (1_000_000_000 - set_offset_ns).rem_euclid(1_000_000_000)
}

/// How long to wait from `now_ns` until the system clock is at `phase_ns` into a second.
pub fn wait_for_phase_ns(now_ns: i64, phase_ns: i64) -> i64 {
    (phase_ns - now_ns.rem_euclid(1_000_000_000)).rem_euclid(1_000_000_000)
}

/// Where the watcher keeps the RTC's second phase, so a restarted watcher still has it.
pub const PHASE_FILE: &str = "/var/lib/almavmm/rtc-phase.json";
/// A phase older than this is measured again while the clock is known good: a kernel in
/// NTP-synchronised mode rewrites the RTC every 11 minutes (kernel/time/ntp.c,
/// sync_hw_clock), and a host `clock set` writes it too, each time with a new phase.
pub const PHASE_MAX_AGE_NS: i64 = 10 * 60 * 1_000_000_000;
/// A measured phase beyond this means the RTC's whole seconds are wrong (not just where its
/// second begins): remembering it would make the RTC's error the clock's.
const PHASE_PLAUSIBLE_NS: i64 = 1_100_000_000;

/// Where the RTC's seconds begin, against the system clock: at an RTC edge the system clock
/// read `rtc_secs + phase_ns`. The RTC has whole seconds, and an emulator's second boundary
/// is not the host's. Measured while the system clock is known good, it turns a later edge
/// reading into the true offset, as long as the emulator keeps it:
///
/// - QEMU's MC146818 (hw/rtc/mc146818rtc.c) counts from the host clock with `-rtc
///   clock=host` (what almavmm passes) plus a sub-second `offset` set when the guest last
///   wrote it; a QMP `stop`/`cont` changes neither, so the phase survives a pause. The e2e
///   step 5b checks the result within 100 ms after 15 s and 45 s pauses; run here (December
///   2026, TCG): phase +0.042 s after a host sync, and the watcher's steps left the clock
///   +0.0000 s and -0.0001 s from the host's (doctor's error ±0.6 ms). The edge readings'
///   own bias (the kernel's rtc-cmos waits out the update-in-progress window) is the same
///   in the phase and in the later reading, so it cancels.
/// - vmd's (usr.sbin/vmd/mc146818.c 1.18, the revision read) refreshes its time registers
///   from the host's `time()`, whole seconds, in `rtc_fire1`, a libevent timer re-armed for
///   1 s after each firing; so its edge falls where that timer fires, which drifts later by
///   each firing's latency and OpenBSD's timer granularity, and restarts on `vmctl unpause`
///   (`mc146818_start`). A guest's write to the time registers only lasts until the next
///   firing overwrites it, and a host clock jump of more than 5 s sends `VMMCI_SYNCRTC`,
///   which Linux has no driver for. On vmd the phase therefore does not hold for long: a
///   step from its RTC is good to about a second, and the host's resume hook (`sync`) is
///   what lands within milliseconds there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtcPhase {
    pub phase_ns: i64,
    /// CLOCK_REALTIME when it was measured.
    pub measured_at_ns: i64,
    /// CLOCK_BOOTTIME when it was measured, for its age.
    pub boot_ns: i64,
    /// The kernel's boot id (/proc/sys/kernel/random/boot_id) then: a phase from another
    /// boot is not used (the emulator may have restarted since, with a new phase).
    pub boot_id: String,
}

/// The phase an edge reading gives, if it is plausible: (RTC ns, system ns) at the edge,
/// as [`Rtc::read_edge`] returns them, taken while the system clock is right.
pub fn phase_from_edge(rtc_ns: i64, sys_ns: i64) -> Option<i64> {
    let phase = sys_ns - rtc_ns;
    (phase.abs() <= PHASE_PLAUSIBLE_NS).then_some(phase)
}

/// The system clock's true offset from an edge reading (`sys − rtc` at the edge), given the
/// phase remembered from when the clock was right: what the edge says minus what it said then.
pub fn corrected_offset(edge_offset_ns: i64, phase_ns: i64) -> i64 {
    edge_offset_ns - phase_ns
}

impl RtcPhase {
    /// Whether it was measured in this boot (`boot_id` now).
    pub fn this_boot(&self, boot_id: &str) -> bool {
        !boot_id.is_empty() && self.boot_id == boot_id
    }

    /// Whether it is due for measuring again (at boottime `boot_now_ns`).
    pub fn stale(&self, boot_now_ns: i64) -> bool {
        boot_now_ns < self.boot_ns || boot_now_ns - self.boot_ns > PHASE_MAX_AGE_NS
    }

    pub fn load(root: &SysRoot) -> Option<RtcPhase> {
        let text = root.read_optional(PHASE_FILE).ok().flatten()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self, root: &SysRoot) -> io::Result<()> {
        let path = root.path(PHASE_FILE);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        almavmm_shared::atomic::write_atomic(&path, &json, 0o644)
    }
}

/// One hardware clock.
#[derive(Debug, Clone)]
pub struct Rtc {
    pub device: PathBuf,
    /// See [`set_offset_ns`].
    pub set_offset_ns: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("no RTC at {0}")]
    Missing(String),
    #[error(
        "the RTC keeps local time (/etc/adjtime says LOCAL): comparing it with UTC would be wrong; set it to UTC with `timedatectl set-local-rtc 0`"
    )]
    LocalTime,
    #[error("{device}: {source}")]
    Io {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: the RTC's seconds did not advance within 1.2 s")]
    Stuck(String),
}

impl Rtc {
    /// The RTC of this system, if it has one that keeps UTC.
    pub fn open(root: &SysRoot) -> Result<Rtc, RtcError> {
        let device = root.path(DEVICE);
        if !device.exists() {
            return Err(RtcError::Missing(DEVICE.into()));
        }
        if root.read_optional("/etc/adjtime").ok().flatten().is_some_and(|t| keeps_local_time(&t)) {
            return Err(RtcError::LocalTime);
        }
        // /sys/class/rtc/rtc0/name: "DRIVER DEVICE", e.g. "rtc_cmos 00:05" (drivers/rtc/sysfs.c).
        let name = root.read_optional("/sys/class/rtc/rtc0/name").ok().flatten();
        Ok(Rtc { device, set_offset_ns: set_offset_ns(name.as_deref()) })
    }

    fn io_err(&self, source: io::Error) -> RtcError {
        RtcError::Io { device: self.device.display().to_string(), source }
    }

    fn file(&self, write: bool) -> Result<File, RtcError> {
        // A second opener gets EBUSY (hwclock or chrony may hold it a moment): retry briefly.
        let mut tries = 0;
        loop {
            match std::fs::OpenOptions::new().read(true).write(write).open(&self.device) {
                Ok(f) => return Ok(f),
                Err(e) if e.raw_os_error() == Some(16) && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(self.io_err(e)),
            }
        }
    }

    fn read_with(&self, f: &File) -> Result<i64, RtcError> {
        // SAFETY: RTC_RD_TIME writes exactly one struct rtc_time, which RtcTime mirrors.
        let tm = unsafe { ioctl(f, Getter::<RTC_RD_TIME, RtcTime>::new()) }.map_err(|e| self.io_err(e.into()))?;
        Ok(tm.to_unix())
    }

    /// The RTC's time, whole seconds since the Unix epoch.
    pub fn read_secs(&self) -> Result<i64, RtcError> {
        let f = self.file(false)?;
        self.read_with(&f)
    }

    /// Wait for the RTC's seconds to tick and return (RTC ns, system ns) at that edge:
    /// the RTC only has whole seconds, the edge pins them to within a few milliseconds.
    /// Polls every 2 ms for at most 1.2 s; used only when a coarse read looked wrong.
    pub fn read_edge(&self) -> Result<(i64, i64), RtcError> {
        let f = self.file(false)?;
        let first = self.read_with(&f)?;
        let mut before = timekeeping::realtime_ns();
        let ticked = || {
            let secs = self.read_with(&f)?;
            let after = timekeeping::realtime_ns();
            // The tick fell between the two reads: take the middle.
            let edge = (secs != first).then(|| (secs * 1_000_000_000, before + (after - before) / 2));
            before = after;
            Ok(edge)
        };
        wait_until(Deadline::after(Duration::from_millis(1200)), Duration::from_millis(2), ticked)?
            .ok_or_else(|| RtcError::Stuck(self.device.display().to_string()))
    }

    /// Set the RTC to the system time, timed so that its seconds tick with the system's
    /// (waits up to a second for the right moment).
    pub fn write_from_system(&self) -> Result<(), RtcError> {
        let f = self.file(true)?;
        let wait = wait_for_phase_ns(timekeeping::realtime_ns(), write_phase_ns(self.set_offset_ns));
        std::thread::sleep(Duration::from_nanos(wait as u64));
        let secs = timekeeping::realtime_ns().div_euclid(1_000_000_000);
        let tm = RtcTime::from_unix(secs);
        // SAFETY: RTC_SET_TIME reads exactly one struct rtc_time, which RtcTime mirrors.
        unsafe { ioctl(&f, Setter::<RTC_SET_TIME, RtcTime>::new(tm)) }.map_err(|e| self.io_err(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtc_time_round_trips() {
        // 2024-02-29T23:59:59Z, a Thursday, day 59 of the year.
        let t = RtcTime::from_unix(1_709_251_199);
        assert_eq!((t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec), (124, 1, 29, 23, 59, 59));
        assert_eq!((t.tm_wday, t.tm_yday), (4, 59));
        assert_eq!(t.to_unix(), 1_709_251_199);
        assert_eq!(RtcTime::from_unix(0).to_unix(), 0);
    }

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // include/uapi/linux/rtc.h, on x86_64 (36-byte struct).
        assert_eq!(RTC_RD_TIME, 0x8024_7009);
        assert_eq!(RTC_SET_TIME, 0x4024_700a);
    }

    // hwclock(8) /etc/adjtime: drift line, last-calibration line, UTC or LOCAL.
    #[test]
    fn adjtime_local_or_utc() {
        assert!(keeps_local_time("0.000000 1700000000 0.000000\n1700000000\nLOCAL\n"));
        assert!(!keeps_local_time("0.0 0 0.0\n0\nUTC\n"));
        assert!(!keeps_local_time(""));
    }

    #[test]
    fn writes_are_timed_for_the_rtcs_tick() {
        assert_eq!(set_offset_ns(Some("rtc_cmos 00:05\n")), 500_000_000);
        assert_eq!(set_offset_ns(Some("rtc-efi rtc-efi.0\n")), 1_000_000_000);
        assert_eq!(set_offset_ns(None), 1_000_000_000);
        // An MC146818 is written half way through the second, others at the second.
        assert_eq!(write_phase_ns(500_000_000), 500_000_000);
        assert_eq!(write_phase_ns(1_000_000_000), 0);
        assert_eq!(wait_for_phase_ns(10_200_000_000, 500_000_000), 300_000_000);
        assert_eq!(wait_for_phase_ns(10_700_000_000, 500_000_000), 800_000_000);
        assert_eq!(wait_for_phase_ns(10_000_000_000, 0), 0);
    }

    #[test]
    fn the_phase_turns_an_edge_reading_into_the_true_offset() {
        // Measured while right: the RTC's second began 320 ms after the system's.
        let phase = phase_from_edge(1_700_000_000_000_000_000, 1_700_000_000_320_000_000).unwrap();
        assert_eq!(phase, 320_000_000);
        // After a 45 s pause the clock is behind: the edge reads sys − rtc = −44.68 s; the
        // true offset is −45 s, which the whole-second reading alone got wrong by 0.32 s.
        assert_eq!(corrected_offset(-44_680_000_000, phase), -45_000_000_000);
        // A phase of the other sign, and none.
        assert_eq!(corrected_offset(-14_900_000_000, -100_000_000), -14_800_000_000);
        assert_eq!(corrected_offset(-15_000_000_000, 0), -15_000_000_000);
    }

    #[test]
    fn an_rtc_wrong_by_whole_seconds_gives_no_phase() {
        assert_eq!(phase_from_edge(1_000_000_000_000, 1_000_999_000_000), Some(999_000_000));
        assert_eq!(phase_from_edge(1_000_000_000_000, 999_100_000_000), Some(-900_000_000));
        assert_eq!(phase_from_edge(1_000_000_000_000, 1_002_000_000_000), None);
        assert_eq!(phase_from_edge(1_000_000_000_000, 998_000_000_000), None);
    }

    #[test]
    fn a_phase_goes_stale_with_age_and_across_boots() {
        let p = RtcPhase { phase_ns: 1, measured_at_ns: 0, boot_ns: 100_000_000_000, boot_id: "b1".into() };
        assert!(!p.stale(100_000_000_000 + PHASE_MAX_AGE_NS));
        assert!(p.stale(100_000_000_001 + PHASE_MAX_AGE_NS));
        assert!(p.stale(50_000_000_000), "boottime before the measurement: another boot");
        assert!(p.this_boot("b1"));
        assert!(!p.this_boot("b2"));
        assert!(!p.this_boot(""), "an unknown boot id is no match");
    }

    #[test]
    fn the_phase_is_kept_across_watcher_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        assert_eq!(RtcPhase::load(&root), None);
        let p = RtcPhase {
            phase_ns: -250_000_000,
            measured_at_ns: 1_700_000_000_000_000_000,
            boot_ns: 42,
            boot_id: "4c1d…".into(),
        };
        p.save(&root).unwrap();
        assert_eq!(RtcPhase::load(&root), Some(p.clone()));
    }

    #[test]
    fn missing_device_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = Rtc::open(&SysRoot::new(dir.path())).unwrap_err();
        assert_eq!(e.to_string(), "no RTC at /dev/rtc0");
    }
}
