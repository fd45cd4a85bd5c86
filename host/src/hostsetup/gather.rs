//! Reading the host: thin I/O around the parsers. Nothing here changes anything.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use almavmm_shared::runner::Cmd;

use super::plan::FIRMWARE_FILE;
use super::{Access, FileState, HostFacts, HostSetupError, PfRuntime, Privilege, Probe, pf, rcctl, sysctl};
use crate::hostsetup::vmconf;

/// Read the host without ever asking for a password: what needs root and a password stays
/// unknown (for `doctor` and `up`).
pub fn gather() -> Result<HostFacts, HostSetupError> {
    gather_with(Access::NoPrompt)
}

/// Read the host; with [`Access::MayPrompt`] root-only state is read through `doas`, which
/// may ask for the password.
pub fn gather_with(access: Access) -> Result<HostFacts, HostSetupError> {
    let privilege = Privilege::current();
    let owner = super::privilege::guest_owner().map_err(HostSetupError::Owner)?;
    let home = super::privilege::owner_home(&owner).map_err(HostSetupError::Owner)?;
    let user = owner.name.clone();
    // vmctl.c 1.94 exits 1, header only and stderr empty, when vmd knows no VM: that
    // answer is a success here (see super::vmctl).
    let vmctl = Cmd::new("vmctl").arg("status").output().map(|mut out| {
        if super::vmctl::empty_listing(out.code(), &out.stdout, &out.stderr) {
            use std::os::unix::process::ExitStatusExt;
            out.status = std::process::ExitStatus::from_raw(0);
        }
        out
    });
    let vmd_running = vmd_running(vmctl.as_ref());
    let vmctl_access = match (&vmd_running, &vmctl) {
        (Probe::Known(true), Ok(out)) if out.status.success() => Probe::Known(true),
        (Probe::Known(true), Ok(out)) if out.stderr.contains("Permission denied") => Probe::Known(false),
        (Probe::Known(true), Ok(out)) => Probe::Unknown(format!("`vmctl status` failed: {}", out.stderr.trim())),
        (Probe::Known(true), Err(e)) => Probe::Unknown(e.to_string()),
        _ => Probe::Unknown("vmd is not running".into()),
    };
    let read = |path: &str| read_state(Path::new(path), privilege, access);
    Ok(HostFacts {
        privilege,
        stamp: stamp(),
        vmd_enabled: rcctl_enabled("vmd"),
        vmd_running,
        vmctl_access,
        firmware: Path::new(FIRMWARE_FILE).is_file(),
        forwarding: forwarding(),
        sysctl_conf: read(super::plan::SYSCTL_CONF),
        resolv_conf: std::fs::read_to_string("/etc/resolv.conf").ok(),
        vm_conf: read(vmconf::MAIN),
        our_vm_conf: read(&vmconf::our_file(&user).display().to_string()),
        our_vm_conf_wanted: match vmconf::wanted_vm_conf(&home, &user, None) {
            Ok(text) => Probe::Known(text),
            Err(why) => Probe::Unknown(why),
        },
        pf_conf: read(pf::PF_CONF),
        pf_anchor: read(pf::ANCHOR_FILE),
        pf_runtime: pf_runtime(privilege, access),
        apm_resume: read(super::resume::APM_RESUME),
        user,
    })
}

/// For `up`: [`gather`], and only when a root-only file the plan needs could not be read
/// and the files anyone can read show setup is not complete (our pf anchor file or the vm.conf
/// include missing or out of date) [`gather_with`] `MayPrompt`. A host that is set up is
/// never asked for a password.
pub fn gather_auto() -> Result<HostFacts, HostSetupError> {
    let quiet = gather()?;
    let blind = matches!(quiet.pf_conf, Probe::Unknown(_)) || matches!(quiet.vm_conf, Probe::Unknown(_));
    let anchor_stale = match (&quiet.pf_anchor, super::plan::wanted_anchor(&quiet)) {
        (Probe::Known(Some(a)), Ok(want)) => a.text != want,
        _ => true,
    };
    if blind && (anchor_stale || !super::plan::plan(&quiet).is_empty()) {
        return gather_with(Access::MayPrompt);
    }
    Ok(quiet)
}

/// `rcctl get DAEMON status`: enabled at boot?
pub(crate) fn rcctl_enabled(daemon: &str) -> Probe<bool> {
    match Cmd::new("rcctl").args(["get", daemon, "status"]).output() {
        Ok(out) => match rcctl::enabled_from_exit(out.code()) {
            Ok(v) => Probe::Known(v),
            Err(why) => Probe::Unknown(why),
        },
        Err(e) => Probe::Unknown(e.to_string()),
    }
}

/// `rcctl check vmd`, or when rc.d refuses a user that check, what `vmctl status` says: it
/// works only while vmd runs, and fails on the missing socket when it does not.
fn vmd_running(vmctl: Result<&almavmm_shared::runner::Output, &almavmm_shared::runner::RunError>) -> Probe<bool> {
    let rcctl = Cmd::new("rcctl").args(["check", "vmd"]).output();
    if let Ok(out) = &rcctl
        && let Some(running) = rcctl::check_result(&out.stdout, "vmd")
    {
        return Probe::Known(running);
    }
    match vmctl {
        Ok(out) if out.status.success() => Probe::Known(true),
        Ok(out) if out.stderr.contains("vmd.sock") && !out.stderr.contains("Permission denied") => Probe::Known(false),
        _ => Probe::Unknown(match rcctl {
            Ok(out) => format!("`rcctl check vmd` said {:?}", format!("{}{}", out.stdout, out.stderr).trim()),
            Err(e) => e.to_string(),
        }),
    }
}

fn forwarding() -> Probe<bool> {
    match Cmd::new("sysctl").arg(sysctl::FORWARDING).run() {
        Ok(out) => match sysctl::value(&out.stdout, sysctl::FORWARDING) {
            Some(v) => Probe::Known(v == "1"),
            None => Probe::Unknown(format!("`sysctl {}` said {:?}", sysctl::FORWARDING, out.stdout.trim())),
        },
        Err(e) => Probe::Unknown(e.to_string()),
    }
}

/// pf's state needs /dev/pf, which only root may open.
fn pf_runtime(privilege: Privilege, access: Access) -> Probe<PfRuntime> {
    let query = |args: &[&str]| -> Result<String, String> {
        let argv = privilege.read_command(access, args);
        let cmd = Cmd::new(&argv[0]).args(&argv[1..]);
        match cmd.output() {
            Ok(out) if out.status.success() => Ok(out.stdout),
            Ok(out) => Err(format!("`{}` failed: {}", cmd.display(), out.stderr.trim())),
            Err(e) => Err(e.to_string()),
        }
    };
    let info = match query(&["pfctl", "-s", "info"]) {
        Ok(i) => i,
        Err(why) => return Probe::Unknown(why),
    };
    let Some(enabled) = pf::enabled(&info) else {
        return Probe::Unknown(format!("`pfctl -s info` said {:?}", info.lines().next().unwrap_or("")));
    };
    let hooked = match query(&["pfctl", "-s", "rules"]) {
        Ok(rules) => pf::rules_call_anchor(&rules),
        Err(why) => return Probe::Unknown(why),
    };
    // Querying an anchor that was never created fails; it then holds nothing.
    let anchor_loaded =
        hooked && query(&["pfctl", "-a", pf::ANCHOR, "-s", "rules"]).is_ok_and(|r| pf::anchor_has_rules(&r));
    Probe::Known(PfRuntime { enabled, hooked, anchor_loaded })
}

/// A text file as it is, read through doas when only root may read it (/etc/pf.conf is
/// mode 0600). Not UTF-8 means "leave it alone": editing it could not keep its bytes.
pub fn read_state(path: &Path, privilege: Privilege, access: Access) -> Probe<Option<FileState>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Probe::Known(None),
        Err(e) => return Probe::Unknown(format!("cannot read {}: {e}", path.display())),
    };
    let mode = meta.permissions().mode() & 0o7777;
    let not_text = || Probe::Unknown(format!("{} is not UTF-8 text; almavmm leaves it alone", path.display()));
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Probe::Known(Some(FileState { text, mode })),
            Err(_) => not_text(),
        },
        Err(e) if e.kind() == ErrorKind::PermissionDenied && privilege == Privilege::Doas => {
            let argv = privilege.read_command(access, &["cat", &path.display().to_string()]);
            let cmd = Cmd::new(&argv[0]).args(&argv[1..]);
            match cmd.output() {
                // The runner decodes lossily: a replacement character means it was not text.
                Ok(out) if out.status.success() && out.stdout.contains('\u{FFFD}') => not_text(),
                Ok(out) if out.status.success() => Probe::Known(Some(FileState { text: out.stdout, mode })),
                Ok(out) => Probe::Unknown(format!("only root may read {}: {}", path.display(), out.stderr.trim())),
                Err(e) => Probe::Unknown(format!("only root may read {}: {e}", path.display())),
            }
        }
        Err(e) => Probe::Unknown(format!("cannot read {}: {e}", path.display())),
    }
}

/// The time now in UTC as `YYYYMMDD-HHMMSS`, for backup names.
pub fn stamp() -> String {
    let secs = almavmm_shared::clock::unix_now();
    stamp_of(secs)
}

fn stamp_of(secs: u64) -> String {
    // "2025-01-02 03:04:05" -> "20250102-030405"
    almavmm_shared::calendar::utc_timestamp(secs as i64).replace(['-', ':'], "").replace(' ', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(stamp_of(0), "19700101-000000");
        assert_eq!(stamp_of(1_735_787_045), "20250102-030405");
        assert_eq!(stamp_of(951_782_400), "20000229-000000");
    }

    #[test]
    fn reads_files_with_their_mode_and_knows_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sysctl.conf");
        assert_eq!(read_state(&p, Privilege::Root, Access::NoPrompt), Probe::Known(None));
        std::fs::write(&p, "a=1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            read_state(&p, Privilege::Root, Access::NoPrompt),
            Probe::Known(Some(FileState { text: "a=1\n".into(), mode: 0o640 }))
        );
        std::fs::write(&p, b"\xff\xfe").unwrap();
        let Probe::Unknown(why) = read_state(&p, Privilege::Root, Access::NoPrompt) else { panic!() };
        assert!(why.contains("not UTF-8"), "{why}");
    }
}
