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

/// A stage in progress; finish it with `done`, `skipped` or `failed`.
#[derive(Debug)]
pub struct Running {
    name: String,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Stages {
    /// `quiet` prints nothing (the records are still kept, e.g. for `--json`).
    pub fn new(total: usize, quiet: bool) -> Stages {
        Stages { total, records: Vec::new(), fancy: std::io::stderr().is_terminal(), quiet }
    }

    fn label(&self, name: &str) -> String {
        format!("[{}/{}] {name}", self.records.len() + 1, self.total)
    }

    pub fn start(&self, name: &str) -> Running {
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
        Running { name: name.to_string(), started: Instant::now(), bar }
    }

    /// Update what a running stage is doing (e.g. "waiting for sshd").
    pub fn note(&self, r: &Running, what: &str) {
        match &r.bar {
            Some(bar) => bar.set_message(format!("{}: {what}", self.label(&r.name))),
            None if !self.quiet => eprintln!("      {what}"),
            None => {}
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

    pub fn done(&mut self, r: Running, detail: impl Into<String>) {
        self.finish(r, Outcome::Done, detail.into());
    }

    pub fn skipped(&mut self, r: Running, detail: impl Into<String>) {
        self.finish(r, Outcome::Skipped, detail.into());
    }

    pub fn failed(&mut self, r: Running, detail: impl Into<String>) {
        self.finish(r, Outcome::Failed, detail.into());
    }

    pub fn records(&self) -> &[StageRecord] {
        &self.records
    }
}
