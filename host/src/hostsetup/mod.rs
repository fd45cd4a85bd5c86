//! Setting up an OpenBSD host for vmd guests: each item a check and an idempotent fix.
//!
//! The items: vmd enabled and running; vmd's BIOS firmware; IPv4 forwarding now and at boot;
//! pf NAT and a DNS redirect for the guests' local prefix, in an anchor of ours hooked into
//! /etc/pf.conf; our vm.conf file included by /etc/vm.conf. Separately, the /etc/apm/resume
//! line that syncs guest clocks after the host resumes (`host install-resume-hook`).
//!
//! Everything almavmm writes under /etc lives in /etc/almavmm/: `pf.conf` (the anchor's
//! rules) and `vm-USER.conf` (each user's guests). The system files it edits gain a few
//! lines and keep every other byte: /etc/pf.conf (the anchor hook), /etc/vm.conf (one include
//! per user), /etc/sysctl.conf (`net.inet.ip.forwarding=1`), /etc/apm/resume (the hook).
//!
//! The flow: [`gather`] reads the system into [`HostFacts`]; [`plan`], a pure function of
//! the facts, returns the [`Action`]s that fix what is not right (nothing on a set-up host);
//! [`apply`] shows them (`--dry-run` stops there) and carries them out. A changed file is
//! written to a private staging folder first, the whole new configuration is checked
//! (`pfctl -nf`, `vmd -n`, `sh -n`) before anything is replaced, the old file is backed up
//! beside itself, and the new one is renamed into place. [`checks`] turns the same facts into
//! doctor's findings.

pub mod apply;
pub mod checks;
pub mod conftext;
pub mod diff;
pub mod gather;
pub mod pf;
pub mod plan;
pub mod privilege;
pub mod rcctl;
pub mod release;
pub mod resolv;
pub mod resume;
pub mod sysctl;
pub mod vmconf;
pub mod vmctl;

use std::path::PathBuf;

pub use apply::{Applied, apply};
pub use checks::{CheckStatus, HostCheck, checks};
pub use gather::{gather, gather_auto, gather_with};
pub use plan::plan;
pub use privilege::{Access, Privilege};
pub use resume::{plan_resume_hook, resume_hook_installed};

use almavmm_shared::runner::RunError;

/// What could be read, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe<T> {
    Known(T),
    Unknown(String),
}

impl<T> Probe<T> {
    pub fn known(&self) -> Option<&T> {
        match self {
            Probe::Known(v) => Some(v),
            Probe::Unknown(_) => None,
        }
    }
}

/// A text file's contents and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub text: String,
    pub mode: u32,
}

/// pf's running state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PfRuntime {
    pub enabled: bool,
    /// The loaded main ruleset calls anchor "almavmm".
    pub hooked: bool,
    /// The anchor holds rules.
    pub anchor_loaded: bool,
}

/// Everything the plan and the checks need, read from the system by [`gather`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub privilege: Privilege,
    /// The user whose guests these are (the `owner` of their vm.conf blocks).
    pub user: String,
    /// Names backups: `/etc/pf.conf.almavmm-STAMP`.
    pub stamp: String,
    pub vmd_enabled: Probe<bool>,
    pub vmd_running: Probe<bool>,
    /// Can the user talk to vmd (its socket is root:wheel, mode 0660)? Known only while vmd runs.
    pub vmctl_access: Probe<bool>,
    pub firmware: bool,
    pub forwarding: Probe<bool>,
    /// /etc/sysctl.conf (`None`: no such file).
    pub sysctl_conf: Probe<Option<FileState>>,
    /// /etc/resolv.conf's text.
    pub resolv_conf: Option<String>,
    /// /etc/vm.conf.
    pub vm_conf: Probe<Option<FileState>>,
    /// Our file of the user's guests as it is, and as it should be.
    pub our_vm_conf: Probe<Option<FileState>>,
    pub our_vm_conf_wanted: Probe<String>,
    /// /etc/pf.conf (`None`: no such file, as on a host that never had one).
    pub pf_conf: Probe<Option<FileState>>,
    pub pf_anchor: Probe<Option<FileState>>,
    pub pf_runtime: Probe<PfRuntime>,
    /// /etc/apm/resume, for the doctor's resume-hook check.
    pub apm_resume: Probe<Option<FileState>>,
}

/// One fix: a finding and the steps that fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The item, as doctor names it.
    pub title: String,
    /// What is wrong.
    pub finding: String,
    pub steps: Vec<Step>,
}

/// `$TMP` in step arguments stands for the private staging folder `apply` creates.
pub const TMP: &str = "$TMP";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write `contents` to `$TMP/NAME` (no privilege needed).
    Stage {
        name: String,
        contents: String,
        shown: Shown,
        /// Replace `$TMP` in the contents with the staging folder (check copies only).
        expand_tmp: bool,
    },
    /// Run a command. A failing `check` means the new configuration was refused.
    Run { argv: Vec<String>, check: bool },
}

/// How a staged file is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// As the change it makes to `path` (a diff, or all lines for a new file).
    Change { path: PathBuf, before: Option<String>, mode: u32 },
    /// As a note (check copies).
    Note(String),
}

#[derive(Debug, thiserror::Error)]
pub enum HostSetupError {
    #[error("{title}: `{cmd}` refused the new configuration, so nothing was replaced")]
    Refused {
        title: String,
        cmd: String,
        #[source]
        source: RunError,
    },
    #[error("{title}: `{cmd}` failed; the steps listed before it were done, the ones after it were not")]
    Failed {
        title: String,
        cmd: String,
        #[source]
        source: RunError,
    },
    #[error("cannot write {what} to the staging folder")]
    Stage {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot tell whose guests to set up: {0}")]
    Owner(String),
    #[error("{0}")]
    Blocked(String),
}

impl HostSetupError {
    /// The message with its causes on one string, for errors that travel as text.
    pub fn full_message(&self) -> String {
        let mut s = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            s.push_str(&format!("\n  caused by: {e}"));
            source = e.source();
        }
        s
    }
}
