//! The network hook: keep DHCP on the virtio NIC whatever it is named, and check the clock
//! against the RTC whenever a link comes (back) up.
//!
//! Link-up triggers, by network manager:
//! - NetworkManager: a dispatcher script (NetworkManager-dispatcher(8) runs
//!   `/etc/NetworkManager/dispatcher.d/*` as root with `INTERFACE ACTION`; we act on `up`).
//!   cloud-init's connection profile is left alone.
//! - systemd-networkd: it runs no scripts itself. Where networkd-dispatcher is installed
//!   (Ubuntu), a script in its `routable.d`. Where it is not (Debian cloud images), the
//!   watcher (`almavmm-agent.service`) is the trigger: it listens for link changes on an
//!   rtnetlink socket and runs the same check, with no extra package.
//! - ifupdown: `/etc/network/if-up.d/` (run by ifup with `$IFACE`).
//!
//! In every case the check is `almavmm-agent clock check --fix`: compare with the RTC and
//! step the clock when it is off by more than 2 s.

use almavmm_shared::paths::AGENT_BIN;
use almavmm_shared::runner::Cmd;

use crate::sys::sysroot::SysRoot;
use almavmm_shared::atomic::{Written, ensure_file};

/// Who configures the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    NetworkManager,
    Networkd,
    Ifupdown,
    Unknown,
}

/// Units asked about, in the order [`parse_is_active`] expects the answers.
pub const UNITS: [&str; 3] = ["NetworkManager.service", "systemd-networkd.service", "networking.service"];

pub fn is_active_cmd() -> Cmd {
    Cmd::new("systemctl").arg("is-active").args(UNITS)
}

/// `systemctl is-active A B C` prints one state per unit, in order (`active`, `inactive`,
/// `failed`, `activating`…; an unknown unit is `inactive`), and exits non-zero unless all
/// are active.
pub fn parse_is_active(stdout: &str) -> Manager {
    let states: Vec<&str> = stdout.lines().map(str::trim).collect();
    let active = |i: usize| states.get(i).is_some_and(|s| *s == "active" || *s == "activating" || *s == "reloading");
    if active(0) {
        Manager::NetworkManager
    } else if active(1) {
        Manager::Networkd
    } else if active(2) {
        Manager::Ifupdown
    } else {
        Manager::Unknown
    }
}

pub const NM_HOOK: &str = "/etc/NetworkManager/dispatcher.d/90-almavmm-clock-check";
pub const NETWORKD_FILE: &str = "/etc/systemd/network/50-almavmm-virtio.network";
pub const NETWORKD_DISPATCHER_DIR: &str = "/etc/networkd-dispatcher";
pub const NETWORKD_DISPATCHER_HOOK: &str = "/etc/networkd-dispatcher/routable.d/50-almavmm-clock-check";
pub const IFUP_HOOK: &str = "/etc/network/if-up.d/almavmm-clock-check";

/// Matches by driver: the kernel may call the NIC eth0, ens3 or enp0s3. networkd applies
/// the first file in lexical order that matches, so cloud-init's `10-cloud-init-*.network`
/// keeps precedence for the interface it names and this one catches the NIC otherwise.
const NETWORKD_CONTENT: &str = "\
# Installed by almavmm-agent: DHCP on the virtio NIC whatever the kernel names it.
# cloud-init's 10-cloud-init-*.network sorts first and wins for the interface it names.
[Match]
Driver=virtio_net

[Network]
DHCP=ipv4
";

fn nm_script() -> String {
    format!(
        r#"#!/bin/sh
# Installed by almavmm-agent: when a link comes up, compare the clock with the RTC and
# step it when it is off (NetworkManager-dispatcher(8): $1 interface, $2 action).
[ "$2" = up ] || exit 0
exec {AGENT_BIN} clock check --fix
"#
    )
}

fn networkd_dispatcher_script() -> String {
    format!(
        r#"#!/bin/sh
# Installed by almavmm-agent: when a link becomes routable, compare the clock with the RTC
# and step it when it is off (networkd-dispatcher runs routable.d with $IFACE set).
exec {AGENT_BIN} clock check --fix
"#
    )
}

fn ifup_script() -> String {
    format!(
        r#"#!/bin/sh
# Installed by almavmm-agent: when an interface comes up, compare the clock with the RTC
# and step it when it is off (ifup runs if-up.d with $IFACE set).
[ "$IFACE" = lo ] && exit 0
exec {AGENT_BIN} clock check --fix
"#
    )
}

/// A file the hook consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFile {
    pub path: &'static str,
    pub contents: String,
    pub mode: u32,
}

/// What to install, and the sentence that explains the trigger.
pub fn plan(manager: Manager, networkd_dispatcher: bool) -> (Vec<HookFile>, String) {
    let file = |path, contents: String, mode| HookFile { path, contents, mode };
    match manager {
        Manager::NetworkManager => (
            vec![file(NM_HOOK, nm_script(), 0o755)],
            format!("NetworkManager manages the network: cloud-init's profile left alone; {NM_HOOK} runs `almavmm-agent clock check --fix` when a link comes up"),
        ),
        Manager::Networkd if networkd_dispatcher => (
            vec![
                file(NETWORKD_FILE, NETWORKD_CONTENT.to_string(), 0o644),
                file(NETWORKD_DISPATCHER_HOOK, networkd_dispatcher_script(), 0o755),
            ],
            format!("systemd-networkd manages the network: {NETWORKD_FILE} gives the virtio NIC DHCP (matched by driver); {NETWORKD_DISPATCHER_HOOK} runs `almavmm-agent clock check --fix` when a link becomes routable"),
        ),
        Manager::Networkd => (
            vec![file(NETWORKD_FILE, NETWORKD_CONTENT.to_string(), 0o644)],
            format!("systemd-networkd manages the network: {NETWORKD_FILE} gives the virtio NIC DHCP (matched by driver); networkd-dispatcher is not installed, so the watcher (almavmm-agent.service) listens for link-up on rtnetlink and runs the same check"),
        ),
        Manager::Ifupdown => (
            vec![file(IFUP_HOOK, ifup_script(), 0o755)],
            format!("ifupdown manages the network: {IFUP_HOOK} runs `almavmm-agent clock check --fix` when an interface comes up"),
        ),
        Manager::Unknown => (
            vec![],
            "no known network manager is active (NetworkManager, systemd-networkd, ifupdown): the watcher's rtnetlink listener is the only link-up trigger".to_string(),
        ),
    }
}

/// Install the planned files; `(detail, changed)`.
pub fn install(root: &SysRoot, manager: Manager) -> std::io::Result<(String, bool)> {
    let dispatcher = root.path(NETWORKD_DISPATCHER_DIR).is_dir();
    let (files, detail) = plan(manager, dispatcher);
    let mut written = Vec::new();
    for f in &files {
        if ensure_file(&root.path(f.path), f.contents.as_bytes(), f.mode)? != Written::Unchanged {
            written.push(f.path);
        }
    }
    let changed = !written.is_empty();
    let suffix = if changed { format!(" (wrote {})", written.join(", ")) } else { " (already in place)".to_string() };
    Ok((format!("{detail}{suffix}"), changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Output format of `systemctl is-active UNIT...` (systemd systemctl-is-active.c: one
    // state per argument, in order), as on AlmaLinux 9 (NetworkManager) and a Debian cloud
    // image (systemd-networkd).
    #[test]
    fn detects_the_manager() {
        assert_eq!(parse_is_active("active\ninactive\ninactive\n"), Manager::NetworkManager);
        assert_eq!(parse_is_active("inactive\nactive\ninactive\n"), Manager::Networkd);
        assert_eq!(parse_is_active("inactive\ninactive\nactive\n"), Manager::Ifupdown);
        assert_eq!(parse_is_active("inactive\nfailed\ninactive\n"), Manager::Unknown);
        assert_eq!(parse_is_active(""), Manager::Unknown);
        assert_eq!(
            is_active_cmd().display(),
            "systemctl is-active NetworkManager.service systemd-networkd.service networking.service"
        );
    }

    #[test]
    fn networkmanager_gets_only_a_dispatcher_script() {
        let (files, detail) = plan(Manager::NetworkManager, false);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "/etc/NetworkManager/dispatcher.d/90-almavmm-clock-check");
        assert!(
            files[0]
                .contents
                .contains("[ \"$2\" = up ] || exit 0\nexec /usr/local/bin/almavmm-agent clock check --fix\n")
        );
        assert!(detail.contains("cloud-init's profile left alone"));
    }

    #[test]
    fn networkd_matches_by_driver_and_names_its_trigger() {
        let (files, detail) = plan(Manager::Networkd, false);
        assert_eq!(files.len(), 1);
        assert!(files[0].contents.contains("[Match]\nDriver=virtio_net\n"));
        assert!(!files[0].contents.contains("Name="), "no hard-coded interface name");
        assert!(detail.contains("listens for link-up on rtnetlink"), "{detail}");
        let (files, _) = plan(Manager::Networkd, true);
        assert_eq!(files[1].path, NETWORKD_DISPATCHER_HOOK);
    }

    // The scripts run for real with a stand-in agent.
    #[test]
    fn scripts_act_only_on_link_up() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("agent");
        std::fs::write(&fake, "#!/bin/sh\necho \"$@\"\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let nm = nm_script().replace(AGENT_BIN, &fake.display().to_string());
        let run = |script: &str, args: &[&str], env: &[(&str, &str)]| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("hook")
                .args(args)
                .envs(env.iter().copied())
                .output()
                .unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
        };
        assert_eq!(run(&nm, &["eth0", "down"], &[]), (Some(0), String::new()));
        assert_eq!(run(&nm, &["eth0", "up"], &[]), (Some(0), "clock check --fix\n".into()));
        let ifup = ifup_script().replace(AGENT_BIN, &fake.display().to_string());
        assert_eq!(run(&ifup, &[], &[("IFACE", "lo")]), (Some(0), String::new()));
        assert_eq!(run(&ifup, &[], &[("IFACE", "eth0")]).1, "clock check --fix\n");
    }

    #[test]
    fn install_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        let (d1, c1) = install(&root, Manager::Networkd).unwrap();
        assert!(c1 && d1.ends_with("(wrote /etc/systemd/network/50-almavmm-virtio.network)"), "{d1}");
        let (d2, c2) = install(&root, Manager::Networkd).unwrap();
        assert!(!c2 && d2.ends_with("(already in place)"), "{d2}");
    }
}
