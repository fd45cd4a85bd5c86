//! Long commands report one line per stage: a spinner with the elapsed time while the
//! stage runs (on a terminal), then a final line with its outcome and duration. Off a
//! terminal the same lines are printed plainly, so logs and CI output stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Done,
    /// Nothing to do: its output already existed and checked out.
    Skipped,
    Failed,
}

/// One stage's record, for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
    pub seconds: f64,
}

/// Stages of one command.
#[derive(Debug)]
pub struct Stages {
    total: usize,
    records: Vec<StageRecord>,
    fancy: bool,
    quiet: bool,
}

/// A stage in progress, as [`Stages::run`] hands it to the stage's body.
#[derive(Debug)]
pub struct Running {
    name: String,
    /// `[i/n] name`, fixed when the stage starts, so that a stage body can add notes without
    /// borrowing the `Stages` that counts them.
    label: String,
    quiet: bool,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Running {
    /// Update what the stage is doing (e.g. "waiting for sshd").
    pub fn note(&self, what: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("{}: {what}", self.label)),
            None if !self.quiet => eprintln!("      {what}"),
            None => {}
        }
    }
}

/// How a stage run by [`Stages::run`] ended, the detail shown on its line, and the value it
/// hands on to later stages.
#[derive(Debug)]
#[must_use]
pub struct Ended<T = ()> {
    outcome: Outcome,
    detail: String,
    value: T,
}

impl Ended {
    pub fn done(detail: impl Into<String>) -> Ended {
        Ended { outcome: Outcome::Done, detail: detail.into(), value: () }
    }

    pub fn skipped(detail: impl Into<String>) -> Ended {
        Ended { outcome: Outcome::Skipped, detail: detail.into(), value: () }
    }

    /// Recorded as failed, yet not an error: the command goes on without what this stage
    /// would have given (a stage that must stop the command returns `Err` instead).
    pub fn failed(detail: impl Into<String>) -> Ended {
        Ended { outcome: Outcome::Failed, detail: detail.into(), value: () }
    }
}

impl<T> Ended<T> {
    /// The same ending, handing `value` on.
    pub fn with<U>(self, value: U) -> Ended<U> {
        Ended { outcome: self.outcome, detail: self.detail, value }
    }
}

/// The detail a failed stage shows when its error does not give a shorter one with
/// [`FailsAs::fails_as`]: the error itself is printed once, by whoever handles it.
pub const FAILED: &str = "failed";

/// An error that carries the short detail for its stage's line; [`Stages::run`] takes it
/// off again, so the error that comes out is the one the stage body returned.
#[derive(Debug)]
struct StageFailure {
    detail: String,
    error: anyhow::Error,
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for StageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Give a stage's failure line a short detail (e.g. "no SSH server") instead of [`FAILED`].
pub trait FailsAs<T> {
    fn fails_as(self, detail: &str) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> FailsAs<T> for Result<T, E> {
    fn fails_as(self, detail: &str) -> anyhow::Result<T> {
        self.map_err(|e| StageFailure { detail: detail.to_string(), error: e.into() }.into())
    }
}

impl Stages {
    /// `quiet` prints nothing (the records are still kept, e.g. for `--json`).
    pub fn new(total: usize, quiet: bool) -> Stages {
        Stages { total, records: Vec::new(), fancy: std::io::stderr().is_terminal(), quiet }
    }

    fn label(&self, name: &str) -> String {
        format!("[{}/{}] {name}", self.records.len() + 1, self.total)
    }

    fn start(&self, name: &str) -> Running {
        let bar = if self.quiet {
            None
        } else if self.fancy {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("static template"));
            bar.set_message(self.label(name));
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("{} …", self.label(name));
            None
        };
        Running { name: name.to_string(), label: self.label(name), quiet: self.quiet, started: Instant::now(), bar }
    }

    /// Run one stage: its line while `stage` works, then its record. An `Err` is recorded
    /// as failed (with the detail given by [`FailsAs::fails_as`], else [`FAILED`]) and
    /// returned unchanged.
    pub fn run<T>(
        &mut self,
        name: &str,
        stage: impl FnOnce(&Running) -> anyhow::Result<Ended<T>>,
    ) -> anyhow::Result<T> {
        let r = self.start(name);
        match stage(&r) {
            Ok(ended) => {
                self.finish(r, ended.outcome, ended.detail);
                Ok(ended.value)
            }
            Err(e) => {
                let (detail, e) = match e.downcast::<StageFailure>() {
                    Ok(f) => (f.detail, f.error),
                    Err(e) => (FAILED.to_string(), e),
                };
                self.finish(r, Outcome::Failed, detail);
                Err(e)
            }
        }
    }

    fn finish(&mut self, r: Running, outcome: Outcome, detail: String) {
        let secs = r.started.elapsed().as_secs_f64();
        let mark = match outcome {
            Outcome::Done => "ok",
            Outcome::Skipped => "--",
            Outcome::Failed => "!!",
        };
        let line = format!("{mark} {}: {detail} ({secs:.1}s)", self.label(&r.name));
        match r.bar {
            Some(bar) => {
                bar.set_style(ProgressStyle::with_template("{msg}").expect("static template"));
                bar.finish_with_message(line);
            }
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
        self.records.push(StageRecord { name: r.name, outcome, detail, seconds: (secs * 10.0).round() / 10.0 });
    }

    pub fn records(&self) -> &[StageRecord] {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Stages {
        Stages::new(4, true)
    }

    fn record(st: &Stages, i: usize) -> (&str, Outcome, &str) {
        let r = &st.records()[i];
        (r.name.as_str(), r.outcome, r.detail.as_str())
    }

    #[test]
    fn a_done_stage_is_recorded_and_hands_on_its_value() {
        let mut st = quiet();
        let n = st.run("image", |_| Ok(Ended::done("cached").with(7))).unwrap();
        assert_eq!(n, 7);
        assert_eq!(record(&st, 0), ("image", Outcome::Done, "cached"));
        assert!(st.records()[0].seconds >= 0.0);
    }

    #[test]
    fn a_skipped_stage_is_recorded_as_skipped() {
        let mut st = quiet();
        st.run("disk", |_| Ok(Ended::skipped("exists; never overwritten"))).unwrap();
        assert_eq!(record(&st, 0), ("disk", Outcome::Skipped, "exists; never overwritten"));
    }

    #[test]
    fn a_stage_can_fail_without_stopping_the_command() {
        let mut st = quiet();
        let h: Option<u8> = st.run("health", |_| Ok(Ended::failed("agent did not answer").with(None))).unwrap();
        assert_eq!(h, None);
        assert_eq!(record(&st, 0), ("health", Outcome::Failed, "agent did not answer"));
    }

    #[test]
    fn an_error_is_recorded_with_its_short_detail_and_passed_through_unchanged() {
        let mut st = quiet();
        let err = st
            .run("ssh", |r| -> anyhow::Result<Ended> {
                r.note("waiting for sshd");
                Err(std::io::Error::other("connection refused")).fails_as("no SSH server")?;
                unreachable!()
            })
            .unwrap_err();
        assert_eq!(record(&st, 0), ("ssh", Outcome::Failed, "no SSH server"));
        assert_eq!(format!("{err:#}"), "connection refused");
        // Still the stage's own error: exit codes and callers that look at its type see it.
        assert_eq!(err.downcast_ref::<std::io::Error>().unwrap().kind(), std::io::ErrorKind::Other);
    }

    #[test]
    fn an_error_without_a_detail_is_recorded_as_failed_and_keeps_its_context() {
        use anyhow::Context;
        let mut st = quiet();
        st.run("host", |_| Ok(Ended::done("qemu"))).unwrap();
        let err = st
            .run("image", |_| -> anyhow::Result<Ended<u8>> {
                Err(anyhow::anyhow!("404 Not Found")).context("download of x.qcow2 failed")
            })
            .unwrap_err();
        assert_eq!(record(&st, 1), ("image", Outcome::Failed, FAILED));
        assert_eq!(format!("{err:#}"), "download of x.qcow2 failed: 404 Not Found");
        assert_eq!(st.records().len(), 2);
    }

    #[test]
    fn records_serialise_for_json_as_before() {
        let mut st = quiet();
        st.run("start", |_| Ok(Ended::skipped("already running"))).unwrap();
        let v = serde_json::to_value(st.records()).unwrap();
        assert_eq!(v[0]["name"], "start");
        assert_eq!(v[0]["outcome"], "skipped");
        assert_eq!(v[0]["detail"], "already running");
        assert!(v[0]["seconds"].is_number());
    }
}
