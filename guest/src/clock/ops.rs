//! What the agent does to the clock: compare it with the RTC, step it (from the RTC, or to
//! the host's time), and ask chrony to step too.

use std::time::Duration;

use almavmm_shared::clock::{RtcWrite, format_offset};
use almavmm_shared::health::ClockEventKind;
use almavmm_shared::runner::Cmd;

use crate::clock::events;
use crate::clock::rtc::{Rtc, RtcError};
use crate::clock::timekeeping;
use crate::sys::sysroot::SysRoot;

/// Off by more than this from the RTC: step.
pub const STEP_THRESHOLD_NS: i64 = 2_000_000_000;
/// A coarse read (whole RTC seconds, ±0.5 s) beyond this is confirmed at the RTC's tick.
const CONFIRM_ABOVE_NS: i64 = 1_500_000_000;

/// System clock minus RTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcComparison {
    pub offset_ns: i64,
    /// Measured at the RTC's seconds edge (milliseconds) rather than within its second.
    pub precise: bool,
}

impl RtcComparison {
    pub fn within_bounds(&self) -> bool {
        self.offset_ns.unsigned_abs() <= STEP_THRESHOLD_NS as u64
    }

    /// "system clock -30.002 s from the RTC".
    pub fn describe(&self) -> String {
        let pm = if self.precise { "" } else { " (±0.5 s)" };
        format!("system clock {}{pm} from the RTC", format_offset(self.offset_ns))
    }
}

/// Compare the system clock with the RTC: a quick read, confirmed at the RTC's tick when it
/// looks off (so a 2 s decision is not made on a 1 s-resolution reading).
pub fn compare(rtc: &Rtc) -> Result<RtcComparison, RtcError> {
    let before = timekeeping::realtime_ns();
    let secs = rtc.read_secs()?;
    let after = timekeeping::realtime_ns();
    let sys = before + (after - before) / 2;
    // The RTC's true time is somewhere in [secs, secs + 1): take the middle.
    let coarse = sys - (secs * 1_000_000_000 + 500_000_000);
    if coarse.abs() <= CONFIRM_ABOVE_NS {
        return Ok(RtcComparison { offset_ns: coarse, precise: false });
    }
    let (rtc_ns, sys_ns) = rtc.read_edge()?;
    Ok(RtcComparison { offset_ns: sys_ns - rtc_ns, precise: true })
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("stepping the clock needs root (CAP_SYS_TIME): run it with sudo")]
    NotPermitted,
    #[error("clock_settime: {0}")]
    Io(std::io::Error),
}

/// Add `correction_ns` to CLOCK_REALTIME; returns (before, after).
pub fn step_by(correction_ns: i64) -> Result<(i64, i64), StepError> {
    let before = timekeeping::realtime_ns();
    set(before.saturating_add(correction_ns))?;
    Ok((before, timekeeping::realtime_ns()))
}

fn set(ns: i64) -> Result<(), StepError> {
    timekeeping::set_realtime_ns(ns).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(1) {
            StepError::NotPermitted
        } else {
            StepError::Io(e)
        }
    })
}

/// Step the system clock to the RTC's time (given the comparison just made), record it,
/// then ask chrony to step as well when it runs. Returns what was done, for a log line.
pub fn step_from_rtc(root: &SysRoot, cmp: &RtcComparison) -> Result<String, StepError> {
    step_by(-cmp.offset_ns)?;
    let mut detail = format!("stepped the system clock by {} to the RTC's time", format_offset(-cmp.offset_ns));
    let _ = events::append(root, &events::event(ClockEventKind::SteppedFromRtc, Some(-cmp.offset_ns), detail.clone()));
    if let Some(chrony) = chrony_makestep(root) {
        let _ = events::append(root, &events::event(ClockEventKind::ChronyStep, None, chrony.clone()));
        detail.push_str("; ");
        detail.push_str(&chrony);
    }
    Ok(detail)
}

/// `/run/chrony/chronyd.pid` names a live chronyd (the path both Debian and RHEL builds use).
pub fn chronyd_running(root: &SysRoot) -> bool {
    let Ok(Some(pid)) = root.read_optional("/run/chrony/chronyd.pid") else { return false };
    let pid = pid.trim();
    !pid.is_empty()
        && root.read_optional(format!("/proc/{pid}/comm")).ok().flatten().is_some_and(|c| c.trim() == "chronyd")
}

/// chronyc prints `200 OK` when the daemon accepted a command (chrony client.c), or a code
/// and reason otherwise (`501 Not authorised`, `506 Cannot talk to daemon`).
pub fn chronyc_accepted(stdout: &str) -> bool {
    stdout.lines().any(|l| l.trim() == "200 OK")
}

/// Whether `chronyc -n tracking` says chrony has synchronised the clock: its `Leap status`
/// line reads `Normal` (or announces a leap second) once synchronised, `Not synchronised`
/// before (chrony client.c, process_cmd_tracking).
pub fn tracking_synchronised(stdout: &str) -> bool {
    stdout.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim() == "Leap status" && matches!(v.trim(), "Normal" | "Insert second" | "Delete second")
        })
    })
}

/// Whether a running chronyd has the clock synchronised (false when it does not run).
pub fn chrony_synchronised(root: &SysRoot) -> bool {
    chronyd_running(root)
        && Cmd::new("chronyc")
            .args(["-n", "tracking"])
            .timeout(Duration::from_secs(5))
            .output()
            .is_ok_and(|o| o.status.success() && tracking_synchronised(&o.stdout))
}

/// Ask chrony to step when it runs: `None` when it does not, else what happened.
pub fn chrony_makestep(root: &SysRoot) -> Option<String> {
    if !chronyd_running(root) {
        return None;
    }
    let out = Cmd::new("chronyc").arg("makestep").timeout(Duration::from_secs(10)).output();
    Some(match out {
        Ok(o) if o.status.success() && chronyc_accepted(&o.stdout) => "chronyc makestep: 200 OK".to_string(),
        Ok(o) => format!("chronyc makestep refused: {}", o.stdout.trim().lines().next().unwrap_or(o.stderr.trim())),
        Err(e) => format!("chronyc makestep failed: {e}"),
    })
}

/// Step to the host's time as `clock set` and a probe session's SET do: host_ns plus half
/// the round trip, plus how long ago the request arrived; then write the RTC.
pub fn host_set(
    root: &SysRoot,
    host_ns: i64,
    rtt_ns: i64,
    since_arrival_ns: i64,
) -> Result<(i64, i64, RtcWrite), StepError> {
    let target = almavmm_shared::clock::set_target_ns(host_ns, rtt_ns).saturating_add(since_arrival_ns.max(0));
    let before = timekeeping::realtime_ns();
    set(target)?;
    let after = timekeeping::realtime_ns();
    let rtc = match Rtc::open(root).and_then(|r| r.write_from_system()) {
        Ok(()) => RtcWrite::Written,
        Err(e) => RtcWrite::Failed(e.to_string()),
    };
    let step = target - before;
    let rtc_note = match &rtc {
        RtcWrite::Written => "RTC written".to_string(),
        RtcWrite::Failed(why) => format!("RTC not written: {why}"),
    };
    let _ = events::append(
        root,
        &events::event(
            ClockEventKind::HostSet,
            Some(step),
            format!("host set the clock: stepped by {}; {rtc_note}", format_offset(step)),
        ),
    );
    Ok((before, after, rtc))
}

/// The one-line verdict of `clock check`, and its exit code (0 within bounds, 1 off, 2 when
/// it could not compare). With `fix`, an off clock is stepped and the verdict says so.
pub fn check(root: &SysRoot, fix: bool) -> (String, i32) {
    let rtc = match Rtc::open(root) {
        Ok(r) => r,
        Err(e) => return (format!("clock: cannot check: {e}"), 2),
    };
    let cmp = match compare(&rtc) {
        Ok(c) => c,
        Err(e) => return (format!("clock: cannot check: {e}"), 2),
    };
    let bound = format_offset(STEP_THRESHOLD_NS).trim_start_matches('+').to_string();
    if cmp.within_bounds() {
        return (format!("clock ok: {} (within ±{bound})", cmp.describe()), 0);
    }
    let off = format!("clock off: {} (more than ±{bound})", cmp.describe());
    let _ = events::append(root, &events::event(ClockEventKind::RtcCheck, Some(cmp.offset_ns), off.clone()));
    if !fix {
        return (off, 1);
    }
    // Run from a network hook, nobody reads stdout: say it where people look.
    let (line, code) = match step_from_rtc(root, &cmp) {
        Ok(done) => (format!("{off}; {done}"), 0),
        Err(e) => (format!("{off}; not fixed: {e}"), 1),
    };
    crate::sys::announce::say(crate::sys::announce::Level::Warn, &format!("clock check: {line}"));
    (line, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_wording() {
        let ok = RtcComparison { offset_ns: 400_000_000, precise: false };
        assert!(ok.within_bounds());
        assert_eq!(ok.describe(), "system clock +400.0 ms (±0.5 s) from the RTC");
        let paused = RtcComparison { offset_ns: -30_002_000_000, precise: true };
        assert!(!paused.within_bounds());
        assert_eq!(paused.describe(), "system clock -30.002 s from the RTC");
        assert!(RtcComparison { offset_ns: -2_000_000_000, precise: true }.within_bounds());
    }

    #[test]
    fn chronyc_replies() {
        assert!(chronyc_accepted("200 OK\n"));
        assert!(!chronyc_accepted("506 Cannot talk to daemon\n"));
        assert!(!chronyc_accepted(""));
    }

    #[test]
    fn chrony_tracking_tells_synchronised_from_not() {
        // `chronyc -n tracking` of chrony 4.3, synchronised and just started.
        let synced = "Reference ID    : C0A80101 (192.168.1.1)\nStratum         : 3\n\
                      System time     : 0.000012345 seconds fast of NTP time\nLeap status     : Normal\n";
        let unsynced = "Reference ID    : 00000000 ()\nStratum         : 0\nLeap status     : Not synchronised\n";
        assert!(tracking_synchronised(synced));
        assert!(!tracking_synchronised(unsynced));
        assert!(!tracking_synchronised("506 Cannot talk to daemon\n"));
    }

    #[test]
    fn chronyd_is_found_through_its_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        assert!(!chronyd_running(&root));
        std::fs::create_dir_all(dir.path().join("run/chrony")).unwrap();
        std::fs::write(dir.path().join("run/chrony/chronyd.pid"), "612\n").unwrap();
        assert!(!chronyd_running(&root), "stale pid file");
        std::fs::create_dir_all(dir.path().join("proc/612")).unwrap();
        std::fs::write(dir.path().join("proc/612/comm"), "chronyd\n").unwrap();
        assert!(chronyd_running(&root));
    }

    #[test]
    fn check_without_rtc_says_so_with_exit_2() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check(&SysRoot::new(dir.path()), false),
            ("clock: cannot check: no RTC at /dev/rtc0".to_string(), 2)
        );
    }
}
