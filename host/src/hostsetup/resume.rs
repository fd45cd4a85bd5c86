//! The /etc/apm/resume hook: after the host resumes, sync every guest's clock.
//!
//! apmd(8) runs /etc/apm/resume after resuming from suspend or standby, as root with no
//! arguments; the file "must be an executable binary or shell script suitable for execution
//! by execve(2)", so it needs a `#!` line and execute bits. The hook is one line running
//! `almavmm-host sync --all` as the guests' owner through su(1) (root needs no password; `-s
//! /bin/sh` makes `-c` mean the same whatever the owner's shell), in the background so that
//! apmd is not held up, its output to syslog with logger(1). A file that exists keeps every
//! byte it had; the line is added once.

use std::path::Path;

use almavmm_shared::runner::shell_quote;

use super::plan::{Check, FileEdit, file_steps};
use super::{Action, FileState, HostSetupError, Privilege, Probe, TMP};

pub const APM_RESUME: &str = "/etc/apm/resume";
/// Ends our line, so that a later run recognises (and can update) it.
const MARKER: &str = "# almavmm-host: sync guest clocks after resume";
pub const TITLE: &str = "resume hook";

/// What the hook plan needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFacts {
    pub privilege: Privilege,
    pub user: String,
    /// This program, by absolute path.
    pub exe: String,
    /// The owner's state folder.
    pub home: String,
    pub resume: Probe<Option<FileState>>,
    pub apmd_enabled: Probe<bool>,
    pub stamp: String,
}

/// The line to add.
pub fn hook_line(user: &str, exe: &str, home: &str) -> String {
    let inner = format!("ALMAVMM_HOME={} {} sync --all", shell_quote(home), shell_quote(exe));
    format!(
        "/usr/bin/su -s /bin/sh {} -c {} 2>&1 | /usr/bin/logger -t almavmm & {MARKER}",
        shell_quote(user),
        shell_quote(&inner)
    )
}

/// Does this resume script sync guest clocks (our line, or one written by hand)?
pub fn installed(text: &str) -> bool {
    text.lines().any(|l| {
        let code = l.trim_start();
        !code.starts_with('#') && code.contains("almavmm-host") && code.contains("sync --all")
    })
}

/// The script with `line` in it exactly once: a new script when there is none, our older line
/// replaced, a hand-written sync line respected, else the line appended.
pub fn with_hook(existing: Option<&str>, line: &str) -> String {
    let Some(text) = existing else { return format!("#!/bin/sh\n{line}\n") };
    if text.lines().any(|l| l == line) {
        return text.to_string();
    }
    let ours: Vec<usize> = super::conftext::physical_lines(text)
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(MARKER))
        .map(|(i, _)| i)
        .collect();
    if let Some(&first) = ours.first() {
        let mut out = text.to_string();
        for &i in ours.iter().skip(1).rev() {
            out = super::conftext::replace_lines(&out, i, i, "");
        }
        return super::conftext::replace_lines(&out, first, first, &format!("{line}\n"));
    }
    if installed(text) {
        return text.to_string();
    }
    super::conftext::append(text, &format!("{line}\n"))
}

/// Add execute permission wherever there is read permission, so apmd can run the script.
fn executable(mode: u32) -> u32 {
    mode | ((mode & 0o444) >> 2)
}

/// The steps that install the hook; empty when it is there.
pub fn plan_resume_hook(f: &ResumeFacts) -> Result<Vec<Action>, HostSetupError> {
    let current = match &f.resume {
        Probe::Known(c) => c.as_ref(),
        Probe::Unknown(why) => return Err(HostSetupError::Blocked(format!("cannot read {APM_RESUME}: {why}"))),
    };
    let line = hook_line(&f.user, &f.exe, &f.home);
    let after = with_hook(current.map(|c| c.text.as_str()), &line);
    let mode_ok = current.is_none_or(|c| executable(c.mode) == c.mode);
    if current.is_some_and(|c| c.text == after) && mode_ok {
        return Ok(Vec::new());
    }
    let finding = match current {
        None => format!("{APM_RESUME} does not exist, so nothing runs after the host resumes"),
        Some(c) if c.text != after && c.text.contains(MARKER) => {
            format!("the hook in {APM_RESUME} runs another almavmm-host or user")
        }
        Some(c) if c.text != after => format!("{APM_RESUME} does not sync guest clocks"),
        Some(_) => format!("{APM_RESUME} is not executable, so apmd cannot run it"),
    };
    let edit = FileEdit {
        path: APM_RESUME.into(),
        staged: "resume".into(),
        before: current.map(|c| c.text.clone()),
        after,
        mode: current.map(|c| executable(c.mode) & 0o7777).unwrap_or(0o755),
    };
    // The new script must at least parse; sh needs no privilege to read the staged copy.
    let check = Check { copy: None, argv: vec!["sh".into(), "-n".into(), format!("{TMP}/resume")] };
    let steps = file_steps(f.privilege, &f.stamp, &[edit], Some(check));
    Ok(vec![Action { title: TITLE.into(), finding, steps }])
}

/// A note when apmd, which runs the hook, is not enabled.
pub fn apmd_note(f: &ResumeFacts) -> Option<String> {
    (f.apmd_enabled == Probe::Known(false)).then(|| {
        format!(
            "note: apmd is not enabled, and only apmd runs {APM_RESUME}: {} && {}",
            f.privilege.show("rcctl enable apmd"),
            f.privilege.show("rcctl start apmd")
        )
    })
}

/// Is the hook installed? (For doctor; the file is world-readable.)
pub fn resume_hook_installed() -> bool {
    std::fs::read_to_string(APM_RESUME).is_ok_and(|t| installed(&t))
}

/// Read what the hook plan needs.
pub fn gather_resume(access: super::Access) -> Result<ResumeFacts, HostSetupError> {
    let privilege = Privilege::current();
    let owner = super::privilege::guest_owner().map_err(HostSetupError::Owner)?;
    let home = super::privilege::owner_home(&owner).map_err(HostSetupError::Owner)?;
    let exe = own_path().ok_or_else(|| {
        HostSetupError::Blocked("cannot tell where almavmm-host is installed; run it by its full path".into())
    })?;
    Ok(ResumeFacts {
        privilege,
        user: owner.name.clone(),
        exe,
        home: home.root().display().to_string(),
        resume: super::gather::read_state(Path::new(APM_RESUME), privilege, access),
        apmd_enabled: super::gather::rcctl_enabled("apmd"),
        stamp: super::gather::stamp(),
    })
}

/// This program's absolute path: the running executable, else the first `almavmm-host` on
/// PATH (on OpenBSD the executable path comes from argv[0]).
fn own_path() -> Option<String> {
    if let Ok(p) = std::env::current_exe()
        && p.is_absolute()
        && p.is_file()
    {
        return Some(p.canonicalize().unwrap_or(p).display().to_string());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("almavmm-host")).find(|p| p.is_file()).map(|p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "/usr/bin/su -s /bin/sh alice -c 'ALMAVMM_HOME=/home/alice/.local/share/almavmm /usr/local/bin/almavmm-host sync --all' 2>&1 | /usr/bin/logger -t almavmm & # almavmm-host: sync guest clocks after resume";

    fn facts(resume: Option<(&str, u32)>) -> ResumeFacts {
        ResumeFacts {
            privilege: Privilege::Doas,
            user: "alice".into(),
            exe: "/usr/local/bin/almavmm-host".into(),
            home: "/home/alice/.local/share/almavmm".into(),
            resume: Probe::Known(resume.map(|(t, m)| FileState { text: t.into(), mode: m })),
            apmd_enabled: Probe::Known(true),
            stamp: "20250102-030405".into(),
        }
    }

    fn commands(a: &[Action]) -> Vec<String> {
        crate::hostsetup::plan::tests::commands(a)
    }

    #[test]
    fn the_line_runs_sync_as_the_owner_in_the_background() {
        assert_eq!(hook_line("alice", "/usr/local/bin/almavmm-host", "/home/alice/.local/share/almavmm"), LINE);
        // Awkward paths stay one shell word each.
        let odd = hook_line("bob", "/opt/alma vmm/almavmm-host", "/home/bob/it's");
        assert_eq!(
            odd,
            "/usr/bin/su -s /bin/sh bob -c 'ALMAVMM_HOME='\\''/home/bob/it'\\''\\'\\'''\\''s'\\'' '\\''/opt/alma vmm/almavmm-host'\\'' sync --all' 2>&1 | /usr/bin/logger -t almavmm & # almavmm-host: sync guest clocks after resume"
        );
        assert!(installed(LINE));
    }

    #[test]
    fn the_line_is_valid_shell() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resume");
        std::fs::write(
            &p,
            with_hook(Some("#!/bin/sh\necho resumed\n"), &hook_line("bob", "/opt/a b/almavmm-host", "/h/it's")),
        )
        .unwrap();
        let ok = std::process::Command::new("sh").arg("-n").arg(&p).status().unwrap();
        assert!(ok.success());
    }

    #[test]
    fn missing_file_is_created_executable() {
        assert_eq!(with_hook(None, LINE), format!("#!/bin/sh\n{LINE}\n"));
        let a = plan_resume_hook(&facts(None)).unwrap();
        assert_eq!(a[0].finding, "/etc/apm/resume does not exist, so nothing runs after the host resumes");
        assert_eq!(
            commands(&a),
            [
                "sh -n $TMP/resume",
                "doas install -d -o root -g wheel -m 0755 /etc/apm",
                "doas install -o root -g wheel -m 0755 $TMP/resume /etc/apm/resume.almavmm-new",
                "doas mv /etc/apm/resume.almavmm-new /etc/apm/resume",
            ]
        );
    }

    #[test]
    fn dry_run_shows_the_new_script_and_the_commands() {
        let text = crate::hostsetup::apply::describe(&plan_resume_hook(&facts(None)).unwrap());
        assert_eq!(
            text,
            format!(
                "Dry run: nothing below is done. $TMP is the private folder where new files are staged and checked.\n\n\
                 resume hook: /etc/apm/resume does not exist, so nothing runs after the host resumes\n\
                 \x20 new file /etc/apm/resume (mode 0755):\n\
                 \x20   +#!/bin/sh\n\
                 \x20   +{LINE}\n\
                 \x20 $ sh -n $TMP/resume\n\
                 \x20 $ doas install -d -o root -g wheel -m 0755 /etc/apm\n\
                 \x20 $ doas install -o root -g wheel -m 0755 $TMP/resume /etc/apm/resume.almavmm-new\n\
                 \x20 $ doas mv /etc/apm/resume.almavmm-new /etc/apm/resume\n"
            )
        );
    }

    #[test]
    fn existing_content_is_kept_byte_for_byte() {
        let mine = "#!/bin/sh\n# mine\nifconfig iwm0 scan >/dev/null"; // no final newline
        let out = with_hook(Some(mine), LINE);
        assert_eq!(out, format!("{mine}\n{LINE}\n"));
        let a = plan_resume_hook(&facts(Some((mine, 0o755)))).unwrap();
        assert_eq!(a[0].finding, "/etc/apm/resume does not sync guest clocks");
        assert!(
            commands(&a).contains(&"doas cp -p /etc/apm/resume /etc/apm/resume.almavmm-20250102-030405".to_string())
        );
    }

    #[test]
    fn installed_is_never_duplicated() {
        let done = format!("#!/bin/sh\n{LINE}\n");
        assert_eq!(with_hook(Some(&done), LINE), done);
        assert_eq!(plan_resume_hook(&facts(Some((&done, 0o755)))).unwrap(), []);
        // A sync line written by hand counts as installed.
        let by_hand = "#!/bin/sh\nsu alice -c 'almavmm-host sync --all'\n";
        assert!(installed(by_hand));
        assert_eq!(with_hook(Some(by_hand), LINE), by_hand);
        // A commented-out one does not.
        assert!(!installed("#!/bin/sh\n# almavmm-host sync --all\n"));
    }

    #[test]
    fn our_outdated_line_is_replaced_in_place() {
        let old = LINE.replace("/usr/local/bin", "/home/alice/bin");
        let text = format!("#!/bin/sh\n{old}\necho after\n");
        let out = with_hook(Some(&text), LINE);
        assert_eq!(out, format!("#!/bin/sh\n{LINE}\necho after\n"));
        let a = plan_resume_hook(&facts(Some((&text, 0o755)))).unwrap();
        assert_eq!(a[0].finding, "the hook in /etc/apm/resume runs another almavmm-host or user");
    }

    #[test]
    fn a_non_executable_script_is_made_executable() {
        let done = format!("#!/bin/sh\n{LINE}\n");
        let a = plan_resume_hook(&facts(Some((&done, 0o644)))).unwrap();
        assert_eq!(a[0].finding, "/etc/apm/resume is not executable, so apmd cannot run it");
        assert!(
            commands(&a)
                .contains(&"doas install -o root -g wheel -m 0755 $TMP/resume /etc/apm/resume.almavmm-new".to_string())
        );
        assert_eq!(executable(0o600), 0o700);
        assert_eq!(executable(0o640), 0o750);
    }

    #[test]
    fn unreadable_file_blocks_with_a_reason() {
        let mut f = facts(None);
        f.resume = Probe::Unknown("not UTF-8 text".into());
        assert!(plan_resume_hook(&f).unwrap_err().to_string().contains("not UTF-8"));
    }

    #[test]
    fn apmd_off_is_pointed_out() {
        let mut f = facts(None);
        f.apmd_enabled = Probe::Known(false);
        assert_eq!(
            apmd_note(&f).unwrap(),
            "note: apmd is not enabled, and only apmd runs /etc/apm/resume: doas rcctl enable apmd && doas rcctl start apmd"
        );
        assert_eq!(apmd_note(&facts(None)), None);
    }
}
