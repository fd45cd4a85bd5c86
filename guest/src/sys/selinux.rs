//! SELinux labels of what the bootstrap and setup install. AlmaLinux enforces SELinux
//! (targeted policy); a file written by a process under cloud-init may keep a label that
//! does not fit where it lies (a file moved from /tmp keeps `*_tmp_t`), so setup resets
//! every installed path to the policy's default with `restorecon`, where the tool exists.
//! The expected contexts, and the domain the watcher runs in, are in docs/selinux.md.

use almavmm_shared::paths;
use almavmm_shared::runner::Cmd;

use crate::kmod::kernel_hook;
use crate::net::hook;
use crate::sys::sysroot::SysRoot;

/// Where the kernel says SELinux is on: selinuxfs is mounted and has `enforce`
/// (libselinux's `is_selinux_enabled()` looks for the same file system).
pub const SELINUXFS_ENFORCE: &str = "/sys/fs/selinux/enforce";

/// Every path the bootstrap or setup may install, for `kernel` (module directory).
pub fn installed_paths(kernel: &str) -> Vec<String> {
    vec![
        paths::AGENT_BIN.to_string(),
        paths::kmod_src_dir(),
        paths::SERVICE_UNIT.to_string(),
        paths::MODULES_LOAD_CONF.to_string(),
        hook::NM_HOOK.to_string(),
        hook::NETWORKD_FILE.to_string(),
        hook::NETWORKD_DISPATCHER_HOOK.to_string(),
        hook::IFUP_HOOK.to_string(),
        kernel_hook::DNF_HOOK.to_string(),
        kernel_hook::APT_HOOK.to_string(),
        kernel_hook::APT_HEADER_HOOK.to_string(),
        format!("/lib/modules/{kernel}/extra"),
        paths::STATE_DIR.to_string(),
    ]
}

/// What to do about labels.
#[derive(Debug, Clone)]
pub enum Plan {
    Skip(String),
    Restore(Cmd),
}

/// `restorecon -R -v PATH…` on the installed paths that exist, when SELinux is on and the
/// tool is there (policycoreutils, in AlmaLinux's minimal and cloud images). `-v` prints
/// one line per changed label ([`parse_relabeled`]); without `-F` only the type is reset,
/// the SELinux user of a file is left as it is (restorecon(8)).
pub fn plan(selinux_on: bool, have_restorecon: bool, existing: &[String]) -> Plan {
    if !selinux_on {
        return Plan::Skip(format!("SELinux is off ({SELINUXFS_ENFORCE} absent): no labels to set"));
    }
    if !have_restorecon {
        return Plan::Skip(
            "SELinux is on but restorecon is not installed (package policycoreutils): labels left as created".into(),
        );
    }
    if existing.is_empty() {
        return Plan::Skip("nothing installed yet".into());
    }
    Plan::Restore(Cmd::new("restorecon").args(["-R", "-v"]).args(existing))
}

/// One label restorecon changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relabel {
    pub path: String,
    pub from: String,
    pub to: String,
}

/// `restorecon -v` prints `Relabeled PATH from OLD to NEW` for each file it changed
/// (libselinux selinux_restorecon.c: "%s %s from %s to %s\n" with "Relabeled"); nothing
/// for a file already right.
pub fn parse_relabeled(stdout: &str) -> Vec<Relabel> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("Relabeled ")?;
            let (path, ctxs) = rest.rsplit_once(" from ")?;
            let (from, to) = ctxs.split_once(" to ")?;
            Some(Relabel { path: path.into(), from: from.into(), to: to.into() })
        })
        .collect()
}

/// Reset the labels; `(detail, changed)`.
pub fn ensure(root: &SysRoot, kernel: &str) -> anyhow::Result<(String, bool)> {
    let existing: Vec<String> = installed_paths(kernel).into_iter().filter(|p| root.exists(p)).collect();
    let selinux_on = root.exists(SELINUXFS_ENFORCE);
    // On a fixture tree the files are not the system's: labels are the real system's business.
    let have_restorecon = root.is_host_root() && on_path("restorecon");
    match plan(selinux_on, have_restorecon, &existing) {
        Plan::Skip(why) => Ok((why, false)),
        Plan::Restore(cmd) => {
            let out = cmd.run()?;
            // restorecon's log callback (policycoreutils setfiles.c) prints these INFO lines
            // on stdout; read stderr too, where libselinux's default callback would put them.
            let changed = parse_relabeled(&format!("{}\n{}", out.stdout, out.stderr));
            if changed.is_empty() {
                Ok((format!("SELinux labels already the policy's defaults on {} paths", existing.len()), false))
            } else {
                let what: Vec<String> = changed.iter().map(|r| format!("{}: {} -> {}", r.path, r.from, r.to)).collect();
                Ok((format!("restored SELinux labels: {}", what.join("; ")), true))
            }
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| std::path::Path::new(&d).join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn restorecon_runs_only_where_selinux_is_on_and_the_tool_exists() {
        let some = vec!["/usr/local/bin/almavmm-agent".to_string(), "/etc/systemd/system/almavmm-agent.service".into()];
        assert!(matches!(plan(false, true, &some), Plan::Skip(w) if w.contains("SELinux is off")));
        assert!(matches!(plan(true, false, &some), Plan::Skip(w) if w.contains("policycoreutils")));
        assert!(matches!(plan(true, true, &[]), Plan::Skip(_)));
        let Plan::Restore(cmd) = plan(true, true, &some) else { panic!() };
        assert_eq!(
            cmd.display(),
            "restorecon -R -v /usr/local/bin/almavmm-agent /etc/systemd/system/almavmm-agent.service"
        );
    }

    #[test]
    fn every_installed_path_is_relabelled() {
        let p = installed_paths("5.14.0-570.12.1.el9_6.x86_64");
        for want in [
            "/usr/local/bin/almavmm-agent",
            "/etc/systemd/system/almavmm-agent.service",
            "/etc/modules-load.d/vmm_clock.conf",
            "/etc/NetworkManager/dispatcher.d/90-almavmm-clock-check",
            "/etc/kernel/install.d/90-almavmm-vmm_clock.install",
            "/lib/modules/5.14.0-570.12.1.el9_6.x86_64/extra",
            "/var/lib/almavmm",
        ] {
            assert!(p.iter().any(|x| x == want), "{want} missing from {p:?}");
        }
        assert!(p.iter().any(|x| x.starts_with("/usr/src/vmm_clock-")));
    }

    #[test]
    fn relabel_lines_are_read() {
        let r = parse_relabeled(&fixture("selinux/restorecon-Rv-relabeled.txt"));
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].path, "/usr/local/bin/almavmm-agent");
        assert_eq!(r[0].from, "unconfined_u:object_r:user_tmp_t:s0");
        assert_eq!(r[0].to, "unconfined_u:object_r:bin_t:s0");
        assert_eq!(r[2].to, "system_u:object_r:NetworkManager_dispatcher_script_t:s0");
        assert!(parse_relabeled("").is_empty());
    }

    #[test]
    fn ensure_on_a_fixture_tree_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        std::fs::create_dir_all(root.path("/sys/fs/selinux")).unwrap();
        std::fs::write(root.path(SELINUXFS_ENFORCE), "1\n").unwrap();
        std::fs::create_dir_all(root.path("/usr/local/bin")).unwrap();
        std::fs::write(root.path(paths::AGENT_BIN), "").unwrap();
        let (detail, changed) = ensure(&root, "6.1.0-28-cloud-amd64").unwrap();
        assert!(!changed);
        assert!(detail.contains("restorecon is not installed"), "{detail}");
    }
}
