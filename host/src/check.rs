//! One finding of a check, as `doctor` shows it and `--json` reports it: the type every
//! layer that checks something (host setup, backends, the guest's health) returns, so
//! none of them has to import the doctor that renders them. Imports nothing of ours.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Could not be checked because an earlier check failed (e.g. the guest is down).
    Skip,
}

impl Status {
    /// How bad it is: ok, skip, warn, fail.
    pub fn severity(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Skip => 1,
            Status::Warn => 2,
            Status::Fail => 3,
        }
    }
    /// The worse of the two.
    pub fn max_by_severity(self, other: Status) -> Status {
        if other.severity() > self.severity() { other } else { self }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Host,
    Guest,
    Clock,
    Network,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub group: Group,
    /// Stable identifier, e.g. `clock.offset`.
    pub id: String,
    pub status: Status,
    pub finding: String,
    /// The command that fixes it, when not ok.
    pub fix: Option<String>,
}

impl Check {
    pub fn new(group: Group, id: &str, status: Status, finding: impl Into<String>) -> Check {
        Check { group, id: id.to_string(), status, finding: finding.into(), fix: None }
    }
    pub fn fix(mut self, cmd: impl Into<String>) -> Check {
        if self.status != Status::Ok {
            self.fix = Some(cmd.into());
        }
        self
    }
}
