//! `almavmm-agent watch`, the service: notices wall-clock steps and stalls, and keeps the
//! system clock within 2 s of the RTC, with no busy polling.
//!
//! It sleeps in `poll(2)` on three descriptors:
//! - a CLOCK_REALTIME timerfd armed far in the future with TFD_TIMER_CANCEL_ON_SET: its
//!   `read` fails with ECANCELED whenever the wall clock is set (timerfd_create(2)), which is
//!   read here directly (nix's `TimerFd::wait` hides that error). The size of the step is
//!   the change of CLOCK_REALTIME − CLOCK_BOOTTIME, which nothing but a step moves;
//! - a periodic CLOCK_MONOTONIC timerfd (`--tick-secs`): each tick compares the elapsed
//!   CLOCK_BOOTTIME with the period (a guest that did not run for a while shows a lag) and
//!   the system clock with the RTC. A VM paused by its host (QMP `stop` … `cont`, or a host
//!   suspend without a paravirtual clock) comes back with its clock behind the RTC by the
//!   pause: off by more than 2 s, the clock is stepped from the RTC, then chrony is asked to
//!   step too;
//! - an rtnetlink socket: a link coming back up triggers the same RTC check.

use std::os::fd::OwnedFd;
use std::time::Duration;

use almavmm_shared::clock::format_offset;
use almavmm_shared::health::ClockEventKind;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime};

use crate::announce::{Level, say};
use crate::clockops::{self, RtcComparison};
use crate::events;
use crate::rtc::{Rtc, RtcError};
use crate::sysroot::SysRoot;
use crate::timekeeping;

/// A tick later than the period by more than this is a stall.
pub const STALL_THRESHOLD_NS: i64 = 2_000_000_000;
/// A clock-set notification whose step is within this of ours is our own.
const OWN_STEP_TOLERANCE_NS: i64 = 100_000_000;
/// A notification with a step smaller than this is not a step (a resume notifies too).
const NO_STEP_NS: i64 = 1_000_000;

/// What a clock-set notification was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSet {
    /// The step the watcher itself just made.
    Own,
    /// Notified without a step: typically a resume from suspend.
    Resume,
    /// Someone else stepped the clock by this much.
    Step(i64),
}

pub fn classify_clock_set(delta_ns: i64, own_pending: Option<i64>) -> ClockSet {
    if let Some(own) = own_pending {
        if (delta_ns - own).abs() <= OWN_STEP_TOLERANCE_NS {
            return ClockSet::Own;
        }
    }
    if delta_ns.abs() < NO_STEP_NS { ClockSet::Resume } else { ClockSet::Step(delta_ns) }
}

/// Whether a foreign step took back one the watcher made from the RTC (chrony or a person
/// disagreeing with the RTC): then the RTC is not to be trusted any more in this run, or the
/// two would step the clock back and forth.
pub fn undoes(own_ns: i64, foreign_ns: i64) -> bool {
    own_ns.abs() > clockops::STEP_THRESHOLD_NS && (own_ns + foreign_ns).abs() < 1_000_000_000
}

/// How much later than the period a tick came, when that is a stall.
pub fn stall(period_ns: i64, elapsed_boot_ns: i64) -> Option<i64> {
    let lag = elapsed_boot_ns - period_ns;
    (lag > STALL_THRESHOLD_NS).then_some(lag)
}

#[derive(Debug)]
struct Watcher {
    root: SysRoot,
    period_ns: i64,
    /// CLOCK_REALTIME − CLOCK_BOOTTIME as last seen.
    baseline_ns: i64,
    last_tick_boot_ns: i64,
    own_pending: Option<i64>,
    last_own_step: Option<i64>,
    rtc_distrusted: bool,
    rtc_unavailable_said: bool,
}

fn realtime_minus_boottime() -> i64 {
    timekeeping::realtime_ns() - timekeeping::boottime_ns()
}

fn record(w: &Watcher, level: Level, kind: ClockEventKind, offset_ns: Option<i64>, detail: String) {
    say(level, &format!("watch: {detail}"));
    if let Err(e) = events::append(&w.root, &events::event(kind, offset_ns, detail)) {
        tracing::warn!("could not record the event: {e}");
    }
}

impl Watcher {
    fn check_rtc(&mut self, why: &str) {
        if self.rtc_distrusted {
            return;
        }
        let rtc = match Rtc::open(&self.root) {
            Ok(r) => r,
            Err(e) => return self.rtc_unavailable(e),
        };
        let cmp = match clockops::compare(&rtc) {
            Ok(c) => c,
            Err(e) => return self.rtc_unavailable(e),
        };
        if cmp.within_bounds() {
            tracing::debug!("{why}: {}", cmp.describe());
            return;
        }
        self.step_from_rtc(why, &cmp);
    }

    fn step_from_rtc(&mut self, why: &str, cmp: &RtcComparison) {
        record(self, Level::Warn, ClockEventKind::RtcCheck, Some(cmp.offset_ns), format!("{why}: {}", cmp.describe()));
        match clockops::step_from_rtc(&self.root, cmp) {
            Ok(done) => {
                say(Level::Warn, &format!("watch: {done}"));
                self.own_pending = Some(-cmp.offset_ns);
                self.last_own_step = Some(-cmp.offset_ns);
            }
            Err(e) => record(self, Level::Error, ClockEventKind::Error, None, format!("could not step the clock: {e}")),
        }
    }

    fn rtc_unavailable(&mut self, e: RtcError) {
        if !self.rtc_unavailable_said {
            self.rtc_unavailable_said = true;
            record(
                self,
                Level::Warn,
                ClockEventKind::Error,
                None,
                format!("cannot compare with the RTC ({e}); still watching for steps and stalls"),
            );
        }
    }

    fn on_clock_set(&mut self) {
        let now = realtime_minus_boottime();
        let delta = now - self.baseline_ns;
        self.baseline_ns = now;
        match classify_clock_set(delta, self.own_pending.take()) {
            ClockSet::Own => {}
            ClockSet::Resume => {
                record(
                    self,
                    Level::Info,
                    ClockEventKind::Resume,
                    None,
                    "clock-change notification without a step (resume)".into(),
                );
                self.check_rtc("after resume");
            }
            ClockSet::Step(d) => {
                record(
                    self,
                    Level::Info,
                    ClockEventKind::WallClockStep,
                    Some(d),
                    format!("the wall clock was stepped by {}", format_offset(d)),
                );
                if self.last_own_step.take().is_some_and(|own| undoes(own, d)) {
                    self.rtc_distrusted = true;
                    record(
                        self,
                        Level::Warn,
                        ClockEventKind::Error,
                        None,
                        "a step from the RTC was taken back by someone else (chrony or an administrator): \
                         no more steps from the RTC until the watcher restarts; check the host's RTC"
                            .into(),
                    );
                }
                // No RTC check now: whoever stepped may write the RTC next (the host's
                // `clock set` does, right after stepping); the next tick compares.
            }
        }
    }

    fn on_tick(&mut self) {
        let now = timekeeping::boottime_ns();
        let elapsed = now - self.last_tick_boot_ns;
        self.last_tick_boot_ns = now;
        if let Some(lag) = stall(self.period_ns, elapsed) {
            record(
                self,
                Level::Warn,
                ClockEventKind::Stall,
                Some(lag),
                format!("the periodic check came {} late: the guest did not run for a while", format_offset(lag)),
            );
        }
        self.check_rtc("periodic check");
    }
}

fn arm_cancel_on_set(fd: &OwnedFd) -> std::io::Result<()> {
    // Far in the future: this timer exists for its cancellation, not its expiry.
    let at = timekeeping::realtime_ns().saturating_add(365 * 86_400 * 1_000_000_000);
    let spec = Itimerspec { it_interval: timekeeping::timespec(0), it_value: timekeeping::timespec(at) };
    timerfd_settime(fd, TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET, &spec)?;
    Ok(())
}

/// Read a timerfd: `Ok(Some(expirations))`, `Ok(None)` when the wall clock was set
/// (ECANCELED), `Err(EAGAIN)` when there is nothing to read.
fn read_timer(fd: &OwnedFd) -> Result<Option<u64>, Errno> {
    let mut buf = [0u8; 8];
    match rustix::io::read(fd, &mut buf) {
        Ok(8) => Ok(Some(u64::from_ne_bytes(buf))),
        Ok(_) => Err(Errno::IO),
        Err(Errno::CANCELED) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn run(root: SysRoot, tick: Duration) -> anyhow::Result<()> {
    let period_ns = tick.as_nanos().min(i64::MAX as u128) as i64;
    anyhow::ensure!(period_ns >= 1_000_000_000, "--tick-secs must be at least 1");
    let flags = TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK;
    let wall = timerfd_create(TimerfdClockId::Realtime, flags)?;
    arm_cancel_on_set(&wall)?;
    let ticker = timerfd_create(TimerfdClockId::Monotonic, flags)?;
    let period = timekeeping::timespec(period_ns);
    timerfd_settime(&ticker, TimerfdTimerFlags::empty(), &Itimerspec { it_interval: period, it_value: period })?;
    let links = match crate::netlink::subscribe() {
        Ok(fd) => Some(fd),
        Err(e) => {
            say(Level::Warn, &format!("watch: no link-up events (rtnetlink: {e})"));
            None
        }
    };
    let mut tracker = crate::netlink::LinkTracker::default();
    let mut w = Watcher {
        root,
        period_ns,
        baseline_ns: realtime_minus_boottime(),
        last_tick_boot_ns: timekeeping::boottime_ns(),
        own_pending: None,
        last_own_step: None,
        rtc_distrusted: false,
        rtc_unavailable_said: false,
    };
    let rtc_note = match Rtc::open(&w.root) {
        Ok(r) => format!("RTC {}", r.device.display()),
        Err(e) => format!("{e}"),
    };
    record(
        &w,
        Level::Info,
        ClockEventKind::WatchStarted,
        None,
        format!(
            "watching (agent {}): wall-clock steps, stalls and the RTC every {}s ({rtc_note}){}",
            almavmm_shared::VERSION,
            tick.as_secs(),
            if links.is_some() { ", link-up events" } else { "" }
        ),
    );
    w.check_rtc("at start");
    loop {
        let (wall_ready, tick_ready, link_ready) = {
            let mut fds = vec![PollFd::new(&wall, PollFlags::IN), PollFd::new(&ticker, PollFlags::IN)];
            if let Some(l) = &links {
                fds.push(PollFd::new(l, PollFlags::IN));
            }
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |i: usize| fds.get(i).is_some_and(|f| !f.revents().is_empty());
            (ready(0), ready(1), ready(2))
        };
        if wall_ready {
            match read_timer(&wall) {
                Ok(None) => w.on_clock_set(),
                Ok(Some(_)) => arm_cancel_on_set(&wall)?,
                Err(Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if tick_ready {
            match read_timer(&ticker) {
                Ok(_) => w.on_tick(),
                Err(Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if link_ready {
            if let Some(l) = &links {
                for name in tracker.update(&crate::netlink::drain(l)) {
                    record(&w, Level::Info, ClockEventKind::LinkUp, None, format!("link {name} came up"));
                    w.check_rtc(&format!("link {name} up"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_set_notifications_are_told_apart() {
        assert_eq!(classify_clock_set(30_000_050_000, Some(30_000_000_000)), ClockSet::Own);
        assert_eq!(classify_clock_set(200, None), ClockSet::Resume);
        assert_eq!(classify_clock_set(-5_000_000_000, None), ClockSet::Step(-5_000_000_000));
        assert_eq!(classify_clock_set(-5_000_000_000, Some(30_000_000_000)), ClockSet::Step(-5_000_000_000));
    }

    #[test]
    fn a_step_taken_back_means_the_rtc_is_not_trusted() {
        assert!(undoes(30_000_000_000, -29_800_000_000));
        assert!(!undoes(30_000_000_000, -10_000_000_000));
        assert!(!undoes(500_000_000, -500_000_000), "small steps are not a fight");
    }

    #[test]
    fn stalls_are_ticks_late_by_more_than_two_seconds() {
        let p = 10_000_000_000;
        assert_eq!(stall(p, p + 1_000_000), None);
        assert_eq!(stall(p, p + 2_000_000_000), None);
        assert_eq!(stall(p, p + 35_000_000_000), Some(35_000_000_000));
    }

    // The kernel behaviour the watcher is built on: a cancel-on-set timerfd reports a clock
    // set as ECANCELED. Setting the clock needs root and would disturb this machine, so
    // this only checks that arming works and that a quiet timer reads EAGAIN.
    #[test]
    fn cancel_on_set_timer_arms_and_reads_eagain_when_quiet() {
        let fd = timerfd_create(TimerfdClockId::Realtime, TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK).unwrap();
        arm_cancel_on_set(&fd).unwrap();
        assert_eq!(read_timer(&fd), Err(Errno::AGAIN));
    }
}
