//! `almavmm-agent.service`: the watcher, enabled and running.

use almavmm_shared::paths::{AGENT_BIN, SERVICE_NAME, SERVICE_UNIT};
use almavmm_shared::runner::{Cmd, RunError};

use crate::files::ensure_file;
use crate::sysroot::SysRoot;

/// No ordering after cloud-init: setup starts this unit from cloud-init's final stage, and
/// `systemctl start` of a unit ordered after cloud-final.service would wait for itself.
pub fn unit_text() -> String {
    format!(
        "\
[Unit]
Description=almavmm guest agent: clock watcher (steps, stalls, link-up checks)
Documentation=https://github.com/almavmm/almavmm
After=local-fs.target

[Service]
Type=simple
ExecStart={AGENT_BIN} watch
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"
    )
}

/// What systemd says about the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub unit_changed: bool,
    /// `systemctl is-enabled` output (`enabled`, `disabled`, `not-found`…).
    pub enabled: String,
    /// `systemctl is-active` output (`active`, `inactive`, `failed`…).
    pub active: String,
    /// The running watcher's binary was replaced since it started (a newer agent).
    pub binary_replaced: bool,
}

/// The commands that bring the unit to enabled and running the current binary.
pub fn plan(s: &UnitState) -> Vec<Cmd> {
    let mut cmds = Vec::new();
    if s.unit_changed {
        cmds.push(Cmd::new("systemctl").arg("daemon-reload"));
    }
    if s.enabled.trim() != "enabled" {
        cmds.push(Cmd::new("systemctl").args(["enable", SERVICE_NAME]));
    }
    let active = s.active.trim() == "active";
    if !active {
        cmds.push(Cmd::new("systemctl").args(["start", SERVICE_NAME]));
    } else if s.unit_changed || s.binary_replaced {
        cmds.push(Cmd::new("systemctl").args(["restart", SERVICE_NAME]));
    }
    cmds
}

/// `/proc/PID/exe` of a process whose binary was replaced reads `… (deleted)` (proc(5)).
pub fn exe_was_replaced(exe_link: &str) -> bool {
    exe_link.ends_with(" (deleted)")
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{SERVICE_NAME} did not stay active after start (is-active: {0}); see `journalctl -u {SERVICE_NAME}`")]
    NotActive(String),
}

/// Install the unit, enable and (re)start it; `(detail, changed)`.
pub fn ensure(root: &SysRoot) -> Result<(String, bool), ServiceError> {
    let unit_changed = ensure_file(&root.path(SERVICE_UNIT), unit_text().as_bytes(), 0o644)?.changed();
    let query = |verb: &str| -> Result<String, RunError> {
        Ok(Cmd::new("systemctl").args([verb, SERVICE_NAME]).output()?.stdout.trim().to_string())
    };
    let main_pid = Cmd::new("systemctl").args(["show", "-p", "MainPID", "--value", SERVICE_NAME]).output()?.stdout;
    let binary_replaced = main_pid
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|pid| *pid != 0)
        .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
        .is_some_and(|l| exe_was_replaced(&l.to_string_lossy()));
    let state = UnitState { unit_changed, enabled: query("is-enabled")?, active: query("is-active")?, binary_replaced };
    let cmds = plan(&state);
    for c in &cmds {
        c.run()?;
    }
    let active = query("is-active")?;
    if active != "active" {
        return Err(ServiceError::NotActive(active));
    }
    if cmds.is_empty() {
        Ok((format!("{SERVICE_NAME} already enabled and running"), false))
    } else {
        let done: Vec<String> = cmds.iter().map(Cmd::display).collect();
        Ok((format!("{SERVICE_NAME} enabled and running ({})", done.join("; ")), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(unit_changed: bool, enabled: &str, active: &str, binary_replaced: bool) -> UnitState {
        UnitState { unit_changed, enabled: enabled.into(), active: active.into(), binary_replaced }
    }

    fn shown(s: &UnitState) -> Vec<String> {
        plan(s).iter().map(Cmd::display).collect()
    }

    #[test]
    fn first_run_installs_enables_and_starts() {
        assert_eq!(
            shown(&state(true, "not-found", "inactive", false)),
            [
                "systemctl daemon-reload",
                "systemctl enable almavmm-agent.service",
                "systemctl start almavmm-agent.service"
            ]
        );
    }

    #[test]
    fn second_run_does_nothing() {
        assert!(shown(&state(false, "enabled", "active", false)).is_empty());
    }

    #[test]
    fn a_new_unit_or_binary_restarts_the_running_watcher() {
        assert_eq!(
            shown(&state(true, "enabled", "active", false)),
            ["systemctl daemon-reload", "systemctl restart almavmm-agent.service"]
        );
        assert_eq!(shown(&state(false, "enabled", "active", true)), ["systemctl restart almavmm-agent.service"]);
        assert_eq!(shown(&state(false, "enabled", "failed", false)), ["systemctl start almavmm-agent.service"]);
    }

    #[test]
    fn unit_runs_the_watcher_and_restarts_on_failure() {
        let u = unit_text();
        assert!(u.contains("ExecStart=/usr/local/bin/almavmm-agent watch\n"));
        assert!(u.contains("Restart=on-failure\n"));
        assert!(!u.contains("cloud-final"), "must not wait for the stage that starts it");
        assert!(exe_was_replaced("/usr/local/bin/almavmm-agent (deleted)"));
        assert!(!exe_was_replaced("/usr/local/bin/almavmm-agent"));
    }
}
