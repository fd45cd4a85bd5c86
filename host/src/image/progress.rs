//! Progress of long image work on stderr: a bar with bytes, rate and ETA on a terminal,
//! plain lines (at every 10% and at least every 30 s) when stderr is a file or a pipe, so
//! logs stay readable. Nothing is shown when warnings are filtered out (`-q`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::ui::human_bytes;

/// What the counted quantity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// A percentage reported by a tool (0..=100).
    Percent,
}

#[derive(Debug)]
pub struct Progress {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Bar(ProgressBar),
    Lines(Lines),
    Hidden,
}

impl Progress {
    /// Start reporting `label` (e.g. "downloading X") from `start` of `total` (if known).
    pub fn start(label: &str, unit: Unit, total: Option<u64>, start: u64) -> Progress {
        let shown = tracing::level_filters::LevelFilter::current() >= tracing::level_filters::LevelFilter::WARN;
        let inner = if !shown {
            Inner::Hidden
        } else if std::io::stderr().is_terminal() {
            Inner::Bar(bar(label, unit, total, start))
        } else {
            Inner::Lines(Lines::new(label, unit, total, start, Instant::now()))
        };
        Progress { inner }
    }

    /// Report the amount done so far.
    pub fn set(&mut self, done: u64) {
        match &mut self.inner {
            Inner::Bar(b) => b.set_position(done),
            Inner::Lines(l) => {
                if let Some(line) = l.update(done, Instant::now()) {
                    eprintln!("{line}");
                }
            }
            Inner::Hidden => {}
        }
    }

    /// Clear the bar (lines stay); the caller prints its own outcome.
    pub fn finish(self) {
        if let Inner::Bar(b) = self.inner {
            b.finish_and_clear();
        }
    }
}

fn bar(label: &str, unit: Unit, total: Option<u64>, start: u64) -> ProgressBar {
    let template = match (unit, total) {
        (Unit::Bytes, Some(_)) => {
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}"
        }
        (Unit::Bytes, None) => "{spinner} {msg} {binary_bytes} {binary_bytes_per_sec}",
        (Unit::Percent, _) => "{msg} [{bar:30}] {pos}% ETA {eta}",
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    let b = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    b.set_style(style);
    b.set_message(label.to_string());
    b.set_position(start);
    b.reset_eta();
    b.enable_steady_tick(Duration::from_millis(200));
    b
}

/// When to print a plain progress line, and what it says.
#[derive(Debug)]
pub struct Lines {
    label: String,
    unit: Unit,
    total: Option<u64>,
    first: u64,
    started: Instant,
    last_line: Instant,
    last_tenth: u64,
}

/// Longest silence between two plain lines.
const QUIET_MAX: Duration = Duration::from_secs(30);

impl Lines {
    pub fn new(label: &str, unit: Unit, total: Option<u64>, start: u64, now: Instant) -> Lines {
        let tenth = |t: u64| start.saturating_mul(10).checked_div(t).unwrap_or(10);
        Lines {
            label: label.to_string(),
            unit,
            total,
            first: start,
            started: now,
            last_line: now,
            last_tenth: total.map(tenth).unwrap_or(0),
        }
    }

    /// The line to print now, if one is due: when a new tenth of the total is reached, or
    /// when nothing was printed for 30 s.
    pub fn update(&mut self, done: u64, now: Instant) -> Option<String> {
        let tenth = self.total.map(|t| done.saturating_mul(10).checked_div(t).unwrap_or(10));
        let new_tenth = tenth.is_some_and(|t| t > self.last_tenth);
        if !new_tenth && now.duration_since(self.last_line) < QUIET_MAX {
            return None;
        }
        if let Some(t) = tenth {
            self.last_tenth = t;
        }
        self.last_line = now;
        Some(self.line(done, now))
    }

    fn line(&self, done: u64, now: Instant) -> String {
        let secs = now.duration_since(self.started).as_secs_f64();
        let rate = if secs > 0.0 { done.saturating_sub(self.first) as f64 / secs } else { 0.0 };
        match (self.unit, self.total) {
            (Unit::Percent, _) => format!("{}: {done}%", self.label),
            (Unit::Bytes, None) => format!("{}: {} ({}/s)", self.label, human_bytes(done), human_bytes(rate as u64)),
            (Unit::Bytes, Some(total)) => {
                let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
                let eta = if rate > 0.0 {
                    format!(", about {} left", human_duration(total.saturating_sub(done) as f64 / rate))
                } else {
                    String::new()
                };
                format!(
                    "{}: {} of {} ({pct}%), {}/s{eta}",
                    self.label,
                    human_bytes(done),
                    human_bytes(total),
                    human_bytes(rate as u64)
                )
            }
        }
    }
}

fn human_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 90 { format!("{s} s") } else { format!("{} min", s.div_ceil(60)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_at_each_tenth_and_after_a_long_silence() {
        let t0 = Instant::now();
        let mib = 1 << 20;
        let mut l = Lines::new("downloading x.qcow2", Unit::Bytes, Some(100 * mib), 0, t0);
        assert_eq!(l.update(5 * mib, t0 + Duration::from_secs(1)), None);
        assert_eq!(
            l.update(10 * mib, t0 + Duration::from_secs(2)).unwrap(),
            "downloading x.qcow2: 10.0 MiB of 100.0 MiB (10%), 5.0 MiB/s, about 18 s left"
        );
        assert_eq!(l.update(15 * mib, t0 + Duration::from_secs(3)), None);
        assert!(l.update(16 * mib, t0 + Duration::from_secs(40)).unwrap().contains("(16%)"));
        // A jump over several tenths prints once.
        assert!(l.update(55 * mib, t0 + Duration::from_secs(41)).unwrap().contains("(55%)"));
        assert_eq!(l.update(56 * mib, t0 + Duration::from_secs(42)), None);
    }

    #[test]
    fn resumed_downloads_count_the_rate_from_where_they_resumed() {
        let t0 = Instant::now();
        let mut l = Lines::new("x", Unit::Bytes, Some(1000), 500, t0);
        assert_eq!(l.update(550, t0 + Duration::from_secs(1)), None);
        assert_eq!(
            l.update(600, t0 + Duration::from_secs(1)).unwrap(),
            "x: 600 B of 1000 B (60%), 100 B/s, about 4 s left"
        );
    }

    #[test]
    fn unknown_totals_print_every_30_s() {
        let t0 = Instant::now();
        let mut l = Lines::new("x", Unit::Bytes, None, 0, t0);
        assert_eq!(l.update(1 << 30, t0 + Duration::from_secs(29)), None);
        assert_eq!(l.update(1 << 30, t0 + Duration::from_secs(32)).unwrap(), "x: 1.0 GiB (32.0 MiB/s)");
    }
}
