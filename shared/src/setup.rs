//! The record `almavmm-agent setup` leaves in `/var/lib/almavmm/setup.json`: every step with
//! its outcome, what it found or did, and how long it took. The host reads it (over SSH)
//! to tell the user how first boot went, and `health` carries it.

use serde::{Deserialize, Serialize};

/// Names of the steps, in the order setup runs them. The host may look steps up by name.
pub mod step {
    pub const DISTRO: &str = "distro";
    pub const CLOCK_PATH: &str = "clock path";
    pub const NETWORKD_REPAIR: &str = "networkd repair";
    pub const BUILD_DEPS: &str = "build dependencies";
    pub const KERNEL_UPDATE: &str = "kernel update";
    pub const MODULE_BUILD: &str = "module build";
    pub const MODULE_INSTALL: &str = "module install";
    pub const KERNEL_HOOK: &str = "kernel hook";
    pub const MODULE_LOAD: &str = "module load";
    /// The module steps as one, when the clock path needs no module.
    pub const MODULE: &str = "module";
    pub const NETWORK_HOOK: &str = "network hook";
    pub const SERVICE: &str = "service";
    /// `restorecon` on what was installed, where SELinux is on.
    pub const SELINUX_LABELS: &str = "selinux labels";
    pub const BOOT_DONE: &str = "boot-done marker";
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    /// Done now, or found already done.
    Ok,
    /// Not needed here (the detail says why).
    Skipped,
    /// Could not be done (the detail says why and what to do).
    Failed,
    /// Something wrong was found and put right (the detail says what).
    Repaired,
}

impl std::fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepOutcome::Ok => "ok",
            StepOutcome::Skipped => "skipped",
            StepOutcome::Failed => "FAILED",
            StepOutcome::Repaired => "repaired",
        })
    }
}

/// One step of setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupStep {
    pub step: String,
    pub outcome: StepOutcome,
    pub detail: String,
    pub duration_ms: u64,
    /// Whether this run changed anything on the system for this step. A second run of a
    /// finished setup has `false` everywhere.
    #[serde(default)]
    pub changed: bool,
}

/// The whole record of the latest setup run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupReport {
    pub protocol: u32,
    pub agent_version: String,
    /// cloud-init's instance id when setup ran, if cloud-init had one.
    pub instance_id: Option<String>,
    /// Wall-clock start of the run, seconds since the Unix epoch.
    pub started_at: i64,
    /// `false` while setup is still running (or when it died half way).
    pub finished: bool,
    pub steps: Vec<SetupStep>,
}

impl SetupReport {
    pub fn step(&self, name: &str) -> Option<&SetupStep> {
        self.steps.iter().find(|s| s.step == name)
    }

    pub fn failed_steps(&self) -> impl Iterator<Item = &SetupStep> {
        self.steps.iter().filter(|s| s.outcome == StepOutcome::Failed)
    }

    /// Finished with no failed step.
    pub fn succeeded(&self) -> bool {
        self.finished && self.failed_steps().next().is_none()
    }

    pub fn changed_anything(&self) -> bool {
        self.steps.iter().any(|s| s.changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_stable() {
        let report = SetupReport {
            protocol: 1,
            agent_version: "0.1.0".into(),
            instance_id: Some("iid-e2e".into()),
            started_at: 1_700_000_000,
            finished: true,
            steps: vec![SetupStep {
                step: step::MODULE.into(),
                outcome: StepOutcome::Skipped,
                detail: "no paravirtual clock offered".into(),
                duration_ms: 3,
                changed: false,
            }],
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["steps"][0]["outcome"], "skipped");
        assert_eq!(json["steps"][0]["step"], "module");
        assert_eq!(json["steps"][0]["duration_ms"], 3);
        let back: SetupReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        assert!(back.succeeded());
        assert!(!back.changed_anything());
    }

    #[test]
    fn a_failed_or_unfinished_run_did_not_succeed() {
        let mut r: SetupReport = serde_json::from_str(
            r#"{"protocol":1,"agent_version":"0.1.0","instance_id":null,"started_at":0,"finished":true,
                "steps":[{"step":"module build","outcome":"failed","detail":"make failed","duration_ms":10}]}"#,
        )
        .unwrap();
        assert!(!r.succeeded());
        assert_eq!(r.failed_steps().count(), 1);
        r.steps.clear();
        r.finished = false;
        assert!(!r.succeeded());
    }
}
