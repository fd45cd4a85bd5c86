//! Hooks that rebuild `vmm_clock` for every newly installed kernel.
//!
//! - dnf systems: kernel-install(8) runs `/etc/kernel/install.d/*.install` with
//!   `COMMAND KERNEL-VERSION ENTRY-DIR KERNEL-IMAGE [INITRD…]`; we act on `add`.
//! - apt systems: the kernel image package runs `/etc/kernel/postinst.d/*` with
//!   `KERNEL-VERSION [IMAGE-PATH]`, and the headers package runs
//!   `/etc/kernel/header_postinst.d/*` with `KERNEL-VERSION` (Debian kernel-handbook, "Kernel
//!   hook scripts"). Headers may be configured after the image, so both run the build and
//!   the one that runs before the headers exist does nothing. run-parts(8) only runs names
//!   made of letters, digits, `_` and `-`: no dots.
//!
//! A hook never fails the package transaction: without the module the new kernel still boots
//! on the clocksource it picks itself, and the failure is printed with the command to retry.
//! It runs no package manager (the transaction holds its lock), hence `--no-deps`.

use almavmm_shared::health::PackageManager;
use almavmm_shared::paths::AGENT_BIN;

use crate::sys::sysroot::SysRoot;
use almavmm_shared::atomic::{Written, ensure_file};

pub const DNF_HOOK: &str = "/etc/kernel/install.d/90-almavmm-vmm_clock.install";
pub const APT_HOOK: &str = "/etc/kernel/postinst.d/almavmm-vmm-clock";
pub const APT_HEADER_HOOK: &str = "/etc/kernel/header_postinst.d/almavmm-vmm-clock";

/// (path, contents) of the hooks for this package manager.
pub fn hooks(pm: PackageManager) -> Vec<(&'static str, String)> {
    match pm {
        PackageManager::Dnf => vec![(DNF_HOOK, dnf_script())],
        PackageManager::Apt => vec![(APT_HOOK, apt_script()), (APT_HEADER_HOOK, apt_script())],
    }
}

fn dnf_script() -> String {
    format!(
        r#"#!/bin/sh
# Installed by almavmm-agent: build and install the vmm_clock clocksource module for each
# kernel that kernel-install(8) adds (arguments: COMMAND KERNEL-VERSION ENTRY-DIR IMAGE...).
# Never fails the transaction: the new kernel boots without the module if the build fails.
[ "$1" = add ] || exit 0
[ -n "$2" ] || exit 0
if ! {AGENT_BIN} kmod install --kernel "$2" --no-deps; then
    echo "almavmm: vmm_clock was not built for kernel $2; retry with: {AGENT_BIN} kmod install --kernel $2" >&2
fi
exit 0
"#
    )
}

fn apt_script() -> String {
    format!(
        r#"#!/bin/sh
# Installed by almavmm-agent: build and install the vmm_clock clocksource module for each
# newly installed kernel (argument: KERNEL-VERSION). Runs from both postinst.d and
# header_postinst.d; whichever runs while the headers are missing does nothing.
# Never fails the transaction: the new kernel boots without the module if the build fails.
[ -n "$1" ] || exit 0
[ -e "/lib/modules/$1/build/Makefile" ] || exit 0
if ! {AGENT_BIN} kmod install --kernel "$1" --no-deps; then
    echo "almavmm: vmm_clock was not built for kernel $1; retry with: {AGENT_BIN} kmod install --kernel $1" >&2
fi
exit 0
"#
    )
}

/// Install the hooks; the paths that changed.
pub fn install(root: &SysRoot, pm: PackageManager) -> std::io::Result<Vec<&'static str>> {
    let mut changed = Vec::new();
    for (path, script) in hooks(pm) {
        if ensure_file(&root.path(path), script.as_bytes(), 0o755)? != Written::Unchanged {
            changed.push(path);
        }
    }
    Ok(changed)
}

/// Any of our hooks is in place.
pub fn installed(root: &SysRoot) -> bool {
    [DNF_HOOK, APT_HOOK, APT_HEADER_HOOK].iter().any(|p| root.path(p).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_hook_names_are_valid_for_run_parts() {
        for p in [APT_HOOK, APT_HEADER_HOOK] {
            let name = p.rsplit('/').next().unwrap();
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{name}");
        }
        assert!(DNF_HOOK.ends_with(".install"), "kernel-install only runs *.install");
    }

    #[test]
    fn installs_once_per_package_manager() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        assert!(!installed(&root));
        assert_eq!(install(&root, PackageManager::Apt).unwrap(), [APT_HOOK, APT_HEADER_HOOK]);
        assert!(installed(&root));
        assert!(install(&root, PackageManager::Apt).unwrap().is_empty(), "second run changes nothing");
        assert_eq!(install(&root, PackageManager::Dnf).unwrap(), [DNF_HOOK]);
    }

    // Run the real scripts with a stand-in agent: the dnf hook acts only on `add`, the apt
    // hook only when the headers exist, and neither fails when the build does.
    #[test]
    fn scripts_call_the_agent_and_never_fail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let fake = dir.path().join("agent");
        std::fs::write(&fake, format!("#!/bin/sh\necho \"$@\" >> {}\nexit 3\n", log.display())).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let dnf = dnf_script().replace(AGENT_BIN, &fake.display().to_string());
        let run = |script: &str, args: &[&str]| {
            let out = std::process::Command::new("sh").arg("-c").arg(script).arg("hook").args(args).output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        assert_eq!(run(&dnf, &["remove", "5.14.0-1.el9.x86_64"]).0, Some(0));
        assert!(!log.exists(), "remove does nothing");
        let (code, stderr) = run(&dnf, &["add", "5.14.0-1.el9.x86_64", "/boot/x", "/boot/vmlinuz"]);
        assert_eq!(code, Some(0));
        assert!(stderr.contains("retry with:"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "kmod install --kernel 5.14.0-1.el9.x86_64 --no-deps\n");
        let apt = apt_script().replace(AGENT_BIN, &fake.display().to_string());
        assert_eq!(run(&apt, &["9.9.9-no-such-kernel"]).0, Some(0));
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1, "no headers: nothing run");
    }
}
