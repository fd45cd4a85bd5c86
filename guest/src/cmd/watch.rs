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
//!   step too. The RTC has whole seconds, and its second does not begin where the host's
//!   does, so the step uses the RTC's phase (where its seconds begin against the system
//!   clock's), measured at an RTC edge whenever the clock is known good: in the first ticks
//!   after a host `clock set`/sync, or while chrony is synchronised. That lands the step
//!   within 100 ms instead of within a second;
//! - an rtnetlink socket: a link coming back up triggers the same RTC check.

use std::os::fd::OwnedFd;
use std::time::Duration;

use almavmm_shared::clock::format_offset;
use almavmm_shared::health::{ClockEvent, ClockEventKind};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime};

use crate::clock::ops::RtcComparison;
use crate::clock::rtc::{Rtc, RtcError, RtcPhase, corrected_offset, phase_from_edge};
use crate::clock::{self, events, timekeeping};
use crate::sys::announce::{Level, say};
use crate::sys::sysroot::SysRoot;

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
    own_ns.abs() > clock::ops::STEP_THRESHOLD_NS && (own_ns + foreign_ns).abs() < 1_000_000_000
}

/// A host set this recent (and nothing since that made the clock wrong) means the clock is
/// right: the host stepped it to its own time within milliseconds.
const HOST_SET_FRESH_NS: i64 = 5 * 60 * 1_000_000_000;

/// Why the clock is known good now, if it is: a recent host set that nothing has spoiled
/// since (a stall, or a step from the RTC), or chrony synchronised (`chrony` is asked only
/// when needed, hence a closure). Returns the reason and, for a host set, its time.
pub fn known_good(events: &[ClockEvent], now_ns: i64, chrony: impl FnOnce() -> bool) -> Option<(&'static str, i64)> {
    let newest = events
        .iter()
        .rev()
        .find(|e| matches!(e.kind, ClockEventKind::HostSet | ClockEventKind::Stall | ClockEventKind::SteppedFromRtc));
    // No let chains here: the agent builds with Debian 13's rustc 1.85 (see Cargo.toml).
    let fresh_host_set =
        newest.filter(|e| e.kind == ClockEventKind::HostSet && (0..=HOST_SET_FRESH_NS).contains(&(now_ns - e.at_ns)));
    if let Some(e) = fresh_host_set {
        return Some(("right after a host clock set", e.at_ns));
    }
    chrony().then_some(("chrony is synchronised", now_ns))
}

/// Whether to measure the RTC's phase now: none yet (in this boot), it is old, or the clock
/// was set by the host after it was measured (the host's set also rewrote the RTC).
pub fn phase_due(phase: Option<&RtcPhase>, boot_id: &str, boot_now_ns: i64, good_since_ns: i64) -> bool {
    match phase {
        Some(p) if p.this_boot(boot_id) => p.stale(boot_now_ns) || good_since_ns > p.measured_at_ns,
        _ => true,
    }
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
    /// The RTC's phase, from this boot (or loaded from the last watcher in it).
    phase: Option<RtcPhase>,
    boot_id: String,
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
    fn new(root: SysRoot, period_ns: i64) -> Watcher {
        Watcher {
            root,
            period_ns,
            baseline_ns: realtime_minus_boottime(),
            last_tick_boot_ns: timekeeping::boottime_ns(),
            own_pending: None,
            last_own_step: None,
            rtc_distrusted: false,
            rtc_unavailable_said: false,
            phase: None,
            boot_id: String::new(),
        }
        .with_saved_phase()
    }

    fn with_saved_phase(mut self) -> Watcher {
        self.boot_id = self
            .root
            .read_optional("/proc/sys/kernel/random/boot_id")
            .ok()
            .flatten()
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        self.phase = RtcPhase::load(&self.root).filter(|p| p.this_boot(&self.boot_id));
        self
    }

    /// Measure and remember the RTC's phase while the clock is known good and the phase is
    /// due. Waits for an RTC edge (up to 1.2 s of 2 ms polls), so it runs only when due: at
    /// most every ten minutes, and after each host set.
    fn maybe_measure_phase(&mut self) {
        if self.rtc_distrusted {
            return;
        }
        let now = timekeeping::realtime_ns();
        let boot_now = timekeeping::boottime_ns();
        let recent = events::read_last(&self.root, 32);
        // Cheap test first: nothing to do while the phase is fresh and no host set is newer.
        let newest_set = recent.iter().rev().find(|e| e.kind == ClockEventKind::HostSet).map_or(i64::MIN, |e| e.at_ns);
        if !phase_due(self.phase.as_ref(), &self.boot_id, boot_now, newest_set) {
            return;
        }
        let root = self.root.clone();
        let Some((why, _)) = known_good(&recent, now, || clock::ops::chrony_synchronised(&root)) else { return };
        let Ok(rtc) = Rtc::open(&self.root) else { return };
        let Ok((rtc_ns, sys_ns)) = rtc.read_edge() else { return };
        let Some(phase_ns) = phase_from_edge(rtc_ns, sys_ns) else {
            let off = format_offset(sys_ns - rtc_ns);
            tracing::info!(
                "RTC edge {off} from the system clock while it is right ({why}): whole seconds wrong, no phase kept"
            );
            return;
        };
        let p = RtcPhase { phase_ns, measured_at_ns: sys_ns, boot_ns: boot_now, boot_id: self.boot_id.clone() };
        if let Err(e) = p.save(&self.root) {
            tracing::warn!("could not keep the RTC phase: {e}");
        }
        tracing::info!("RTC phase {} ({why})", format_offset(phase_ns));
        self.phase = Some(p);
    }

    /// The first line in the journal and the events: what is watched, and which RTC.
    fn announce_start(&self, tick: Duration, link_events: bool) {
        let rtc_note = match Rtc::open(&self.root) {
            Ok(r) => format!("RTC {}", r.device.display()),
            Err(e) => format!("{e}"),
        };
        record(
            self,
            Level::Info,
            ClockEventKind::WatchStarted,
            None,
            format!(
                "watching (agent {}): wall-clock steps, stalls and the RTC every {}s ({rtc_note}){}",
                almavmm_shared::VERSION,
                tick.as_secs(),
                if link_events { ", link-up events" } else { "" }
            ),
        );
    }

    /// The cancel-on-set timer is readable: the wall clock was set, or (a year on) the
    /// timer expired and is armed again.
    fn on_wall_timer(&mut self, wall: &OwnedFd) -> anyhow::Result<()> {
        match read_timer(wall) {
            Ok(None) => self.on_clock_set(),
            Ok(Some(_)) => arm_cancel_on_set(wall)?,
            Err(Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn on_tick_timer(&mut self, ticker: &OwnedFd) -> anyhow::Result<()> {
        match read_timer(ticker) {
            Ok(_) => self.on_tick(),
            Err(Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn on_link_messages(&mut self, links: &OwnedFd, tracker: &mut crate::net::netlink::LinkTracker) {
        for name in tracker.update(&crate::net::netlink::drain(links)) {
            record(self, Level::Info, ClockEventKind::LinkUp, None, format!("link {name} came up"));
            self.check_rtc(&format!("link {name} up"));
        }
    }

    fn check_rtc(&mut self, why: &str) {
        if self.rtc_distrusted {
            return;
        }
        let rtc = match Rtc::open(&self.root) {
            Ok(r) => r,
            Err(e) => return self.rtc_unavailable(e),
        };
        let cmp = match clock::ops::compare(&rtc) {
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
        // An edge reading with a known phase gives the true offset; without one the RTC's
        // second boundary is taken for the true one (off by up to a second).
        let mut cmp = *cmp;
        let phase_note = match &self.phase {
            Some(p) if cmp.precise => {
                cmp.offset_ns = corrected_offset(cmp.offset_ns, p.phase_ns);
                format!(" (RTC phase {} applied)", format_offset(p.phase_ns))
            }
            _ => " (RTC phase unknown: within a second)".to_string(),
        };
        record(
            self,
            Level::Warn,
            ClockEventKind::RtcCheck,
            Some(cmp.offset_ns),
            format!("{why}: {}{phase_note}", cmp.describe()),
        );
        match clock::ops::step_from_rtc(&self.root, &cmp) {
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
        self.maybe_measure_phase();
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

/// The wall-clock timer (notified of every clock set) and the periodic one.
fn create_timers(period_ns: i64) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let flags = TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK;
    let wall = timerfd_create(TimerfdClockId::Realtime, flags)?;
    arm_cancel_on_set(&wall)?;
    let ticker = timerfd_create(TimerfdClockId::Monotonic, flags)?;
    let period = timekeeping::timespec(period_ns);
    timerfd_settime(&ticker, TimerfdTimerFlags::empty(), &Itimerspec { it_interval: period, it_value: period })?;
    Ok((wall, ticker))
}

/// The rtnetlink socket, or `None` with a warning when it cannot be had: the watcher still
/// does its other work without link-up events.
fn subscribe_links() -> Option<OwnedFd> {
    match crate::net::netlink::subscribe() {
        Ok(fd) => Some(fd),
        Err(e) => {
            say(Level::Warn, &format!("watch: no link-up events (rtnetlink: {e})"));
            None
        }
    }
}

/// Which descriptors have something to read.
#[derive(Debug, Default)]
struct Ready {
    wall: bool,
    tick: bool,
    links: bool,
}

/// Sleep until a descriptor is readable; nothing is ready when a signal interrupted.
fn wait(wall: &OwnedFd, ticker: &OwnedFd, links: Option<&OwnedFd>) -> Result<Ready, Errno> {
    let mut fds = vec![PollFd::new(wall, PollFlags::IN), PollFd::new(ticker, PollFlags::IN)];
    if let Some(l) = links {
        fds.push(PollFd::new(l, PollFlags::IN));
    }
    match poll(&mut fds, None) {
        Ok(_) => {}
        Err(Errno::INTR) => return Ok(Ready::default()),
        Err(e) => return Err(e),
    }
    let ready = |i: usize| fds.get(i).is_some_and(|f| !f.revents().is_empty());
    Ok(Ready { wall: ready(0), tick: ready(1), links: ready(2) })
}

pub fn run(root: SysRoot, tick: Duration) -> anyhow::Result<()> {
    let period_ns = tick.as_nanos().min(i64::MAX as u128) as i64;
    anyhow::ensure!(period_ns >= 1_000_000_000, "--tick-secs must be at least 1");
    let (wall, ticker) = create_timers(period_ns)?;
    let links = subscribe_links();
    let mut tracker = crate::net::netlink::LinkTracker::default();
    let mut w = Watcher::new(root, period_ns);
    w.announce_start(tick, links.is_some());
    w.check_rtc("at start");
    w.maybe_measure_phase();
    loop {
        let ready = wait(&wall, &ticker, links.as_ref())?;
        if ready.wall {
            w.on_wall_timer(&wall)?;
        }
        if ready.tick {
            w.on_tick_timer(&ticker)?;
        }
        if ready.links {
            if let Some(l) = &links {
                w.on_link_messages(l, &mut tracker);
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

    fn ev(kind: ClockEventKind, at_ns: i64) -> ClockEvent {
        ClockEvent { at_ns, kind, offset_ns: None, detail: String::new() }
    }

    #[test]
    fn the_clock_is_known_good_after_a_host_set_until_a_stall_or_rtc_step() {
        let s = 1_000_000_000;
        let set = ev(ClockEventKind::HostSet, 1000 * s);
        let no_chrony = || false;
        assert_eq!(
            known_good(std::slice::from_ref(&set), 1010 * s, no_chrony),
            Some(("right after a host clock set", 1000 * s))
        );
        // The watcher's own record of the host's step, and link events, change nothing.
        let noise = [set.clone(), ev(ClockEventKind::WallClockStep, 1000 * s), ev(ClockEventKind::LinkUp, 1001 * s)];
        assert!(known_good(&noise, 1010 * s, no_chrony).is_some());
        // A pause since, or a step from the RTC: no longer known good.
        assert_eq!(known_good(&[set.clone(), ev(ClockEventKind::Stall, 1005 * s)], 1010 * s, no_chrony), None);
        assert_eq!(known_good(&[set.clone(), ev(ClockEventKind::SteppedFromRtc, 1005 * s)], 1010 * s, no_chrony), None);
        // Too old.
        assert_eq!(known_good(std::slice::from_ref(&set), 1000 * s + HOST_SET_FRESH_NS + 1, no_chrony), None);
        // chrony, asked only when no host set decides.
        assert_eq!(known_good(&[], 5 * s, || true), Some(("chrony is synchronised", 5 * s)));
        assert!(known_good(&[set], 1010 * s, || panic!("chrony asked although a host set decided")).is_some());
    }

    #[test]
    fn the_phase_is_measured_when_missing_old_from_another_boot_or_older_than_a_host_set() {
        let p = RtcPhase { phase_ns: 0, measured_at_ns: 2_000, boot_ns: 1_000, boot_id: "a".into() };
        assert!(phase_due(None, "a", 1_000, 0));
        assert!(!phase_due(Some(&p), "a", 2_000, 1_500), "fresh, and the host set is older");
        assert!(phase_due(Some(&p), "a", 2_000, 2_500), "the host set the clock (and the RTC) since");
        assert!(phase_due(Some(&p), "b", 2_000, 0), "another boot");
        assert!(phase_due(Some(&p), "a", 1_001 + crate::clock::rtc::PHASE_MAX_AGE_NS, 0), "old");
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
