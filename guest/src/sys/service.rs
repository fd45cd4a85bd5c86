//! `almavmm-agent.service`: the watcher, enabled and running.

use almavmm_shared::paths::{AGENT_BIN, SERVICE_NAME, SERVICE_UNIT, STATE_DIR};
use almavmm_shared::runner::{Cmd, RunError};

use crate::sys::sysroot::SysRoot;
use almavmm_shared::atomic::ensure_file;

/// No ordering after cloud-init: setup starts this unit from cloud-init's final stage, and
/// `systemctl start` of a unit ordered after cloud-final.service would wait for itself.
///
/// Confinement (docs/confinement.md has the full reasoning and the measured exposures): the
/// watcher runs forever as root, so it gets no more than what it uses, and must rate no
/// higher than chrony's unit beside it in `systemd-analyze security` (a test measures both).
/// What it uses, and what keeps each working:
/// - set the clock (clock_settime) and the RTC (RTC_SET_TIME ioctl): CAP_SYS_TIME in the
///   bounding set, `@clock` in the syscall allow-list, ProtectClock= left off (it would take
///   both away), and `/dev/rtc*` allowed through `DeviceAllow=char-rtc rw` as chrony does;
/// - rtnetlink link events: AF_NETLINK; `chronyc makestep`: AF_UNIX to chronyd's socket
///   under /run/chrony, where chronyc (as root) binds its own reply socket, so that directory
///   is writable (`-`: absent without chrony) and CAP_DAC_OVERRIDE is kept because chronyd's
///   runtime directory belongs to its own user (0700 on Debian, 0750 on AlmaLinux);
/// - its state under /var/lib/almavmm: the only other writable path;
/// - chronyd's /proc/PID/comm is read to see that it runs, so ProtectProc=/ProcSubset= stay
///   at their defaults.
///
/// Ordered after chrony (Debian's chrony.service, AlmaLinux's chronyd.service; ordering only,
/// no dependency): `ReadWritePaths=-/run/chrony` is resolved when the unit starts, and a
/// directory chronyd had not made yet would be skipped, leaving chronyc read-only there.
///
/// Every directive here exists in systemd 252 (AlmaLinux 9, Debian 12) and 257 (Debian 13),
/// so one text serves all three; kernel module loading is `setup`'s job, which runs once from
/// cloud-init outside this unit, so ProtectKernelModules= costs the watcher nothing.
pub fn unit_text() -> String {
    format!(
        "\
[Unit]
Description=almavmm guest agent: clock watcher (steps, stalls, link-up checks)
Documentation=https://github.com/almavmm/almavmm
After=local-fs.target chrony.service chronyd.service

[Service]
Type=simple
ExecStart={AGENT_BIN} watch
Restart=on-failure
RestartSec=5
# Confinement: see almavmm's docs/confinement.md. The watcher sets the system clock and the
# RTC, listens on rtnetlink, runs chronyc, and writes {STATE_DIR}; nothing else.
CapabilityBoundingSet=CAP_SYS_TIME CAP_DAC_OVERRIDE
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={STATE_DIR} -/run/chrony
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
ProtectClock=no
DevicePolicy=closed
DeviceAllow=char-rtc rw
ProtectKernelModules=yes
ProtectKernelTunables=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_NETLINK
IPAddressDeny=any
RestrictNamespaces=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service @clock
SystemCallErrorNumber=EPERM
UMask=0077

[Install]
WantedBy=multi-user.target
"
    )
}

/// The overall exposure `systemd-analyze security UNIT` prints on its last line:
/// `→ Overall exposure level for NAME: 2.5 OK 🙂` (src/analyze/analyze-security.c, systemd
/// 252 and 257 alike). Lower is more confined; 0.0 to 10.0.
pub fn parse_exposure(stdout: &str) -> Option<f64> {
    let line = stdout.lines().rev().find(|l| l.contains("Overall exposure level for "))?;
    let (_, after) = line.rsplit_once(": ")?;
    after.split_whitespace().next()?.parse().ok()
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
    fn exposure_is_read_from_the_last_line() {
        let out = "  NAME   DESCRIPTION   EXPOSURE\n✗ PrivateNetwork=   Service has access to the host's network   0.5\n\n\
                   → Overall exposure level for almavmm-agent.service: 2.5 OK 🙂\n";
        assert_eq!(parse_exposure(out), Some(2.5));
        assert_eq!(parse_exposure("→ Overall exposure level for chrony.service: 3.7 OK 🙂"), Some(3.7));
        assert_eq!(parse_exposure("→ Overall exposure level for x.service: 9.6 UNSAFE 😨"), Some(9.6));
        assert_eq!(parse_exposure("Failed to open unit file\n"), None);
    }

    #[test]
    fn unit_keeps_what_the_watcher_needs() {
        let u = unit_text();
        let has = |line: &str| u.lines().any(|l| l == line);
        // Setting the clock and the RTC.
        assert!(has("ProtectClock=no"));
        assert!(u.lines().any(|l| l.starts_with("CapabilityBoundingSet=") && l.contains("CAP_SYS_TIME")));
        assert!(has("SystemCallFilter=@system-service @clock"));
        assert!(has("DeviceAllow=char-rtc rw"));
        // rtnetlink and chronyc's Unix socket; its reply socket goes beside chronyd's.
        assert!(has("RestrictAddressFamilies=AF_UNIX AF_NETLINK"));
        assert!(has("ReadWritePaths=/var/lib/almavmm -/run/chrony"));
        // ...which must exist when the unit starts, so chrony starts first at boot.
        assert!(has("After=local-fs.target chrony.service chronyd.service"));
        // chronyd_running reads another user's /proc/PID/comm.
        assert!(!u.contains("ProtectProc="), "would hide chronyd from the watcher");
        assert!(!u.contains("ProcSubset="));
        assert!(!u.contains("PrivateNetwork=yes"), "would hide the links it watches");
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
