//! From facts to actions: pure functions, so every plan can be tested on samples.

use std::path::{Path, PathBuf};

use super::{Action, FileState, HostFacts, Privilege, Probe, Shown, Step, TMP, pf, resolv, sysctl};
use crate::hostsetup::vmconf;

/// Item names, shared with the checks.
pub const FIRMWARE: &str = "vmm firmware";
pub const FORWARDING: &str = "IP forwarding";
pub const FORWARDING_AT_BOOT: &str = "IP forwarding at boot";
pub const PF: &str = "pf NAT and DNS";
pub const VM_CONF: &str = "vm.conf";
pub const VMD_ENABLED: &str = "vmd enabled";
pub const VMD_RUNNING: &str = "vmd running";

/// vmd's BIOS, installed by `fw_update vmm` (vm.conf(5), `boot`).
pub const FIRMWARE_FILE: &str = "/etc/firmware/vmm-bios";
pub const SYSCTL_CONF: &str = "/etc/sysctl.conf";

/// What to do to set the host up; empty when it is. The order matters: files and kernel
/// settings first, then vmd, which reads vm.conf when it starts.
pub fn plan(f: &HostFacts) -> Vec<Action> {
    let p = f.privilege;
    let mut actions = Vec::new();
    if !f.firmware {
        actions.push(Action {
            title: FIRMWARE.into(),
            finding: format!("{FIRMWARE_FILE} is missing; vmd cannot boot a guest without it"),
            steps: vec![run(p, &["fw_update", "vmm"])],
        });
    }
    if f.forwarding == Probe::Known(false) {
        actions.push(Action {
            title: FORWARDING.into(),
            finding: format!("{} is 0; guests cannot reach beyond the host", sysctl::FORWARDING),
            steps: vec![run(p, &["sysctl", &format!("{}=1", sysctl::FORWARDING)])],
        });
    }
    if let Probe::Known(conf) = &f.sysctl_conf {
        actions.extend(sysctl_action(p, &f.stamp, conf.as_ref()));
    }
    actions.extend(pf_action(f));
    if let (Probe::Known(main), Probe::Known(ours), Probe::Known(wanted)) =
        (&f.vm_conf, &f.our_vm_conf, &f.our_vm_conf_wanted)
    {
        let reload = f.vmd_running == Probe::Known(true);
        actions.extend(vm_conf_action(p, &f.stamp, &f.user, main.as_ref(), ours.as_ref(), wanted, reload));
    }
    if f.vmd_enabled == Probe::Known(false) {
        actions.push(Action {
            title: VMD_ENABLED.into(),
            finding: "vmd does not start at boot".into(),
            steps: vec![run(p, &["rcctl", "enable", "vmd"])],
        });
    }
    if f.vmd_running == Probe::Known(false) {
        actions.push(Action {
            title: VMD_RUNNING.into(),
            finding: "vmd is not running".into(),
            steps: vec![run(p, &["rcctl", "start", "vmd"])],
        });
    }
    actions
}

fn run(p: Privilege, argv: &[&str]) -> Step {
    Step::Run { argv: p.command(argv), check: false }
}

/// A file to replace.
#[derive(Debug, Clone)]
pub struct FileEdit {
    pub path: PathBuf,
    /// Its name in the staging folder.
    pub staged: String,
    /// Its text now (`None`: it does not exist).
    pub before: Option<String>,
    pub after: String,
    pub mode: u32,
}

impl FileEdit {
    /// Replace `before` (keeping its mode) or create the file with `new_mode`.
    pub fn new(path: &str, staged: &str, before: Option<&FileState>, after: String, new_mode: u32) -> FileEdit {
        FileEdit {
            path: path.into(),
            staged: staged.into(),
            before: before.map(|b| b.text.clone()),
            after,
            mode: before.map(|b| b.mode & 0o7777).unwrap_or(new_mode),
        }
    }
}

/// A check of the new configuration, run before anything is replaced.
#[derive(Debug, Clone)]
pub struct Check {
    /// A copy of the configuration to check, when the check needs one made.
    pub copy: Option<CheckCopy>,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CheckCopy {
    pub staged: String,
    /// May name staged files as `$TMP/NAME`.
    pub contents: String,
    pub note: String,
}

/// Stage the new files, check them, then for each: install it beside the old one, back the
/// old one up (`PATH.almavmm-STAMP`) and rename the new one over it.
pub fn file_steps(p: Privilege, stamp: &str, edits: &[FileEdit], check: Option<Check>) -> Vec<Step> {
    let mut steps = Vec::new();
    for e in edits {
        steps.push(Step::Stage {
            name: e.staged.clone(),
            contents: e.after.clone(),
            shown: Shown::Change { path: e.path.clone(), before: e.before.clone(), mode: e.mode },
            expand_tmp: false,
        });
    }
    if let Some(c) = check {
        if let Some(copy) = c.copy {
            steps.push(Step::Stage {
                name: copy.staged,
                contents: copy.contents,
                shown: Shown::Note(copy.note),
                expand_tmp: true,
            });
        }
        steps.push(Step::Run { argv: c.argv, check: true });
    }
    let mut dirs: Vec<&Path> = Vec::new();
    for e in edits.iter().filter(|e| e.before.is_none()) {
        if let Some(dir) = e.path.parent()
            && dir != Path::new("/etc")
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        steps.push(run(p, &["install", "-d", "-o", "root", "-g", "wheel", "-m", "0755", &dir.display().to_string()]));
    }
    for e in edits {
        let path = e.path.display().to_string();
        let new = format!("{path}.almavmm-new");
        let staged = format!("{TMP}/{}", e.staged);
        let mode = format!("{:04o}", e.mode);
        steps.push(run(p, &["install", "-o", "root", "-g", "wheel", "-m", &mode, &staged, &new]));
        if e.before.is_some() {
            steps.push(run(p, &["cp", "-p", &path, &format!("{path}.almavmm-{stamp}")]));
        }
        steps.push(run(p, &["mv", &new, &path]));
    }
    steps
}

/// /etc/sysctl.conf setting forwarding exactly once.
fn sysctl_action(p: Privilege, stamp: &str, conf: Option<&FileState>) -> Option<Action> {
    let text = conf.map(|c| c.text.as_str());
    let after = sysctl::with_setting(text, sysctl::FORWARDING, "1");
    if Some(after.as_str()) == text {
        return None;
    }
    let name = sysctl::FORWARDING;
    let finding = match text.map(|t| sysctl::settings(t, name)) {
        None => format!("{SYSCTL_CONF} does not exist, so forwarding is off after a reboot"),
        Some(v) if v.is_empty() => format!("{SYSCTL_CONF} does not set {name}, so forwarding is off after a reboot"),
        Some(v) if v.len() > 1 => format!("{SYSCTL_CONF} sets {name} {} times", v.len()),
        Some(v) => format!("{SYSCTL_CONF} sets {name}={}", v[0]),
    };
    let edit = FileEdit::new(SYSCTL_CONF, "sysctl.conf", conf, after, 0o644);
    Some(Action { title: FORWARDING_AT_BOOT.into(), finding, steps: file_steps(p, stamp, &[edit], None) })
}

/// The local prefix from /etc/vm.conf, when it can be read.
pub fn local_prefix(f: &HostFacts) -> Result<vmconf::Ipv4Prefix, String> {
    match &f.vm_conf {
        Probe::Known(None) => Ok(vmconf::DEFAULT_PREFIX),
        Probe::Known(Some(c)) => vmconf::local_prefix(&c.text).map_err(|e| e.to_string()),
        Probe::Unknown(why) => Err(why.clone()),
    }
}

/// The anchor file as it should be, from the prefix and the resolver.
pub fn wanted_anchor(f: &HostFacts) -> Result<String, String> {
    let prefix = local_prefix(f)?;
    let dns = resolv::resolver(f.resolv_conf.as_deref().unwrap_or("")).address();
    Ok(pf::render_anchor(prefix, dns))
}

fn pf_action(f: &HostFacts) -> Option<Action> {
    let (Probe::Known(main), Probe::Known(anchor)) = (&f.pf_conf, &f.pf_anchor) else { return None };
    let anchor_want = wanted_anchor(f).ok()?;
    let main_text = main.as_ref().map(|m| m.text.as_str()).unwrap_or("");
    let main_want = pf::with_hook(main_text);
    let anchor_changed = anchor.as_ref().map(|a| a.text.as_str()) != Some(anchor_want.as_str());
    let main_changed = main.is_none() || main_want != main_text;
    let runtime = f.pf_runtime.known();
    let mut why = Vec::new();
    match anchor {
        None => why.push(format!("{} does not exist", pf::ANCHOR_FILE)),
        Some(_) if anchor_changed => {
            why.push(format!("{} is out of date (local prefix or resolver changed)", pf::ANCHOR_FILE))
        }
        Some(_) => {}
    }
    if main_changed {
        why.push(format!("{} does not load anchor \"{}\"", pf::PF_CONF, pf::ANCHOR));
    }
    let loaded = runtime.is_some_and(|r| r.hooked && r.anchor_loaded);
    if !anchor_changed && !main_changed && runtime.is_some() && !loaded {
        why.push("the running ruleset does not have the anchor's rules".into());
    }
    let disabled = runtime.is_some_and(|r| !r.enabled);
    if disabled {
        why.push("pf is disabled".into());
    }
    if why.is_empty() {
        return None;
    }
    let p = f.privilege;
    let mut edits = Vec::new();
    if anchor_changed {
        edits.push(FileEdit::new(pf::ANCHOR_FILE, "almavmm.pf", anchor.as_ref(), anchor_want, 0o644));
    }
    if main_changed {
        edits.push(FileEdit::new(pf::PF_CONF, "pf.conf", main.as_ref(), main_want.clone(), 0o600));
    }
    let check = (!edits.is_empty()).then(|| {
        let contents =
            if anchor_changed { pf::repoint_load(&main_want, &format!("{TMP}/almavmm.pf")) } else { main_want.clone() };
        Check {
            copy: Some(CheckCopy {
                staged: "pf.conf.check".into(),
                contents,
                note: format!(
                    "{TMP}/pf.conf.check: the new {} with the new anchor rules, checked before anything is replaced",
                    pf::PF_CONF
                ),
            }),
            argv: p.command(&["pfctl", "-nf", &format!("{TMP}/pf.conf.check")]),
        }
    });
    let mut steps = file_steps(p, &f.stamp, &edits, check);
    if !edits.is_empty() || !loaded {
        steps.push(run(p, &["pfctl", "-f", pf::PF_CONF]));
    }
    if disabled {
        steps.push(run(p, &["pfctl", "-e"]));
    }
    Some(Action { title: PF.into(), finding: why.join("; "), steps })
}

/// Our vm.conf file for `owner` as `wanted`, included once by /etc/vm.conf, checked with
/// `vmd -n` as a whole before either file is replaced; `vmctl reload` after, when vmd runs.
/// `None` when both files are as they should be.
pub fn vm_conf_action(
    p: Privilege,
    stamp: &str,
    owner: &str,
    main: Option<&FileState>,
    ours: Option<&FileState>,
    wanted: &str,
    reload: bool,
) -> Option<Action> {
    let ours_path = vmconf::our_file(owner);
    let main_text = main.map(|m| m.text.as_str());
    let main_want = vmconf::with_include(main_text, &ours_path, owner);
    let ours_changed = ours.map(|o| o.text.as_str()) != Some(wanted);
    let main_changed = main_text != Some(main_want.as_str());
    if !ours_changed && !main_changed {
        return None;
    }
    let staged_ours = format!("vm-{owner}.conf");
    let mut why = Vec::new();
    let mut edits = Vec::new();
    if ours_changed {
        why.push(match ours {
            None => format!("{} does not exist", ours_path.display()),
            Some(_) => format!("{} does not match {owner}'s guests", ours_path.display()),
        });
        // Ours first: /etc/vm.conf must never include a file that is not there yet.
        edits.push(FileEdit::new(&ours_path.display().to_string(), &staged_ours, ours, wanted.to_string(), 0o644));
    }
    if main_changed {
        why.push(format!("{} does not include {}", vmconf::MAIN, ours_path.display()));
        edits.push(FileEdit::new(vmconf::MAIN, "vm.conf", main, main_want.clone(), 0o644));
    }
    let contents = if ours_changed {
        vmconf::repoint_include(&main_want, &ours_path, Path::new(&format!("{TMP}/{staged_ours}")))
    } else {
        main_want.clone()
    };
    let check = Check {
        copy: Some(CheckCopy {
            staged: "vm.conf.check".into(),
            contents,
            note: format!(
                "{TMP}/vm.conf.check: the new {} with the new guest file, checked before anything is replaced",
                vmconf::MAIN
            ),
        }),
        argv: p.command(&["vmd", "-n", "-f", &format!("{TMP}/vm.conf.check")]),
    };
    let mut steps = file_steps(p, stamp, &edits, Some(check));
    if reload {
        steps.push(run(p, &["vmctl", "reload"]));
    }
    Some(Action { title: VM_CONF.into(), finding: why.join("; "), steps })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hostsetup::PfRuntime;

    pub const DEFAULT_PF_CONF: &str = include_str!("../../tests/fixtures/openbsd/pf.conf.default");
    pub const RESOLV_CONF: &str = "nameserver 192.0.2.1 # resolvd: em0\nlookup file bind\n";

    fn argv(step: &Step) -> Option<String> {
        match step {
            Step::Run { argv, .. } => Some(argv.join(" ")),
            Step::Stage { .. } => None,
        }
    }

    pub fn commands(actions: &[Action]) -> Vec<String> {
        actions.iter().flat_map(|a| a.steps.iter().filter_map(argv)).collect()
    }

    fn fs(text: &str, mode: u32) -> FileState {
        FileState { text: text.into(), mode }
    }

    /// A freshly installed OpenBSD, seen by user alice: nothing of ours is there.
    pub fn fresh(privilege: Privilege) -> HostFacts {
        HostFacts {
            privilege,
            user: "alice".into(),
            stamp: "20250102-030405".into(),
            vmd_enabled: Probe::Known(false),
            vmd_running: Probe::Known(false),
            vmctl_access: Probe::Unknown("vmd is not running".into()),
            firmware: false,
            forwarding: Probe::Known(false),
            sysctl_conf: Probe::Known(None),
            resolv_conf: Some(RESOLV_CONF.into()),
            vm_conf: Probe::Known(None),
            our_vm_conf: Probe::Known(None),
            our_vm_conf_wanted: Probe::Known(
                vmconf::render("alice", &[], super::super::release::vmd_path_limit(None)).unwrap(),
            ),
            pf_conf: Probe::Known(Some(fs(DEFAULT_PF_CONF, 0o600))),
            pf_anchor: Probe::Known(None),
            pf_runtime: Probe::Known(PfRuntime { enabled: true, hooked: false, anchor_loaded: false }),
            apm_resume: Probe::Known(None),
        }
    }

    /// The same host after `host setup` ran.
    pub fn set_up(privilege: Privilege) -> HostFacts {
        let f = fresh(privilege);
        let ours = vmconf::our_file("alice");
        HostFacts {
            vmd_enabled: Probe::Known(true),
            vmd_running: Probe::Known(true),
            vmctl_access: Probe::Known(true),
            firmware: true,
            forwarding: Probe::Known(true),
            sysctl_conf: Probe::Known(Some(fs("net.inet.ip.forwarding=1\n", 0o644))),
            vm_conf: Probe::Known(Some(fs(&vmconf::with_include(None, &ours, "alice"), 0o644))),
            our_vm_conf: Probe::Known(Some(fs(f.our_vm_conf_wanted.known().unwrap(), 0o644))),
            pf_conf: Probe::Known(Some(fs(&pf::with_hook(DEFAULT_PF_CONF), 0o600))),
            pf_anchor: Probe::Known(Some(fs(&wanted_anchor(&f).unwrap(), 0o644))),
            pf_runtime: Probe::Known(PfRuntime { enabled: true, hooked: true, anchor_loaded: true }),
            ..f
        }
    }

    #[test]
    fn a_set_up_host_needs_nothing() {
        assert_eq!(plan(&set_up(Privilege::Doas)), []);
        assert_eq!(plan(&set_up(Privilege::Root)), []);
    }

    #[test]
    fn fresh_host_plan_as_a_user_runs_every_root_step_through_doas() {
        let actions = plan(&fresh(Privilege::Doas));
        let titles: Vec<&str> = actions.iter().map(|a| a.title.as_str()).collect();
        assert_eq!(titles, [FIRMWARE, FORWARDING, FORWARDING_AT_BOOT, PF, VM_CONF, VMD_ENABLED, VMD_RUNNING]);
        assert_eq!(
            commands(&actions),
            [
                "doas fw_update vmm",
                "doas sysctl net.inet.ip.forwarding=1",
                "doas install -o root -g wheel -m 0644 $TMP/sysctl.conf /etc/sysctl.conf.almavmm-new",
                "doas mv /etc/sysctl.conf.almavmm-new /etc/sysctl.conf",
                "doas pfctl -nf $TMP/pf.conf.check",
                "doas install -d -o root -g wheel -m 0755 /etc/almavmm",
                "doas install -o root -g wheel -m 0644 $TMP/almavmm.pf /etc/almavmm/pf.conf.almavmm-new",
                "doas mv /etc/almavmm/pf.conf.almavmm-new /etc/almavmm/pf.conf",
                "doas install -o root -g wheel -m 0600 $TMP/pf.conf /etc/pf.conf.almavmm-new",
                "doas cp -p /etc/pf.conf /etc/pf.conf.almavmm-20250102-030405",
                "doas mv /etc/pf.conf.almavmm-new /etc/pf.conf",
                "doas pfctl -f /etc/pf.conf",
                "doas vmd -n -f $TMP/vm.conf.check",
                "doas install -d -o root -g wheel -m 0755 /etc/almavmm",
                "doas install -o root -g wheel -m 0644 $TMP/vm-alice.conf /etc/almavmm/vm-alice.conf.almavmm-new",
                "doas mv /etc/almavmm/vm-alice.conf.almavmm-new /etc/almavmm/vm-alice.conf",
                "doas install -o root -g wheel -m 0644 $TMP/vm.conf /etc/vm.conf.almavmm-new",
                "doas mv /etc/vm.conf.almavmm-new /etc/vm.conf",
                "doas rcctl enable vmd",
                "doas rcctl start vmd",
            ]
        );
    }

    #[test]
    fn as_root_the_same_commands_run_bare() {
        let user = commands(&plan(&fresh(Privilege::Doas)));
        let root = commands(&plan(&fresh(Privilege::Root)));
        assert_eq!(root.len(), user.len());
        for (r, u) in root.iter().zip(&user) {
            assert_eq!(format!("doas {r}"), *u);
        }
    }

    #[test]
    fn checks_come_before_the_files_they_guard() {
        for a in plan(&fresh(Privilege::Doas)) {
            let first_change = a
                .steps
                .iter()
                .position(|s| matches!(s, Step::Run { argv, check: false } if argv.contains(&"mv".to_string())));
            let check = a.steps.iter().position(|s| matches!(s, Step::Run { check: true, .. }));
            if let (Some(c), Some(m)) = (check, first_change) {
                assert!(c < m, "{}: check after a change", a.title);
            }
        }
    }

    #[test]
    fn the_pf_check_copy_loads_the_staged_anchor() {
        let actions = plan(&fresh(Privilege::Doas));
        let pf_action = actions.iter().find(|a| a.title == PF).unwrap();
        let check = pf_action
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Stage { name, contents, expand_tmp: true, .. } if name == "pf.conf.check" => Some(contents),
                _ => None,
            })
            .unwrap();
        assert!(check.starts_with(DEFAULT_PF_CONF));
        assert!(check.ends_with("anchor \"almavmm\"\nload anchor \"almavmm\" from \"$TMP/almavmm.pf\"\n"), "{check}");
    }

    #[test]
    fn the_vm_conf_check_copy_includes_the_staged_guest_file() {
        let actions = plan(&fresh(Privilege::Doas));
        let a = actions.iter().find(|a| a.title == VM_CONF).unwrap();
        let check = a
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Stage { name, contents, expand_tmp: true, .. } if name == "vm.conf.check" => Some(contents),
                _ => None,
            })
            .unwrap();
        assert!(check.ends_with("include \"$TMP/vm-alice.conf\"\n"), "{check}");
        assert!(!check.contains("/etc/almavmm/vm-alice.conf"), "{check}");
    }

    #[test]
    fn only_what_is_wrong_is_fixed() {
        // Forwarding on now but sysctl.conf has it at 0.
        let mut f = set_up(Privilege::Doas);
        f.sysctl_conf = Probe::Known(Some(fs("net.inet.ip.forwarding=0\n", 0o644)));
        let a = plan(&f);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].finding, "/etc/sysctl.conf sets net.inet.ip.forwarding=0");
        assert_eq!(
            commands(&a),
            [
                "doas install -o root -g wheel -m 0644 $TMP/sysctl.conf /etc/sysctl.conf.almavmm-new",
                "doas cp -p /etc/sysctl.conf /etc/sysctl.conf.almavmm-20250102-030405",
                "doas mv /etc/sysctl.conf.almavmm-new /etc/sysctl.conf",
            ]
        );
        // The resolver changed: only the anchor is rewritten, checked through the hooked
        // pf.conf, and the ruleset reloaded.
        let mut f = set_up(Privilege::Doas);
        f.resolv_conf = Some("nameserver 198.51.100.53\n".into());
        let a = plan(&f);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].finding, "/etc/almavmm/pf.conf is out of date (local prefix or resolver changed)");
        assert_eq!(
            commands(&a),
            [
                "doas pfctl -nf $TMP/pf.conf.check",
                "doas install -o root -g wheel -m 0644 $TMP/almavmm.pf /etc/almavmm/pf.conf.almavmm-new",
                "doas cp -p /etc/almavmm/pf.conf /etc/almavmm/pf.conf.almavmm-20250102-030405",
                "doas mv /etc/almavmm/pf.conf.almavmm-new /etc/almavmm/pf.conf",
                "doas pfctl -f /etc/pf.conf",
            ]
        );
        // Files right, ruleset never loaded (pf flushed, or rebooted with pf.conf broken).
        let mut f = set_up(Privilege::Doas);
        f.pf_runtime = Probe::Known(PfRuntime { enabled: false, hooked: false, anchor_loaded: false });
        assert_eq!(commands(&plan(&f)), ["doas pfctl -f /etc/pf.conf", "doas pfctl -e"]);
        // A guest was added: our file changes, vmd running, so it is reloaded.
        let mut f = set_up(Privilege::Doas);
        f.our_vm_conf_wanted = Probe::Known(format!("{}\n# changed\n", f.our_vm_conf_wanted.known().unwrap()));
        assert_eq!(
            commands(&plan(&f)),
            [
                "doas vmd -n -f $TMP/vm.conf.check",
                "doas install -o root -g wheel -m 0644 $TMP/vm-alice.conf /etc/almavmm/vm-alice.conf.almavmm-new",
                "doas cp -p /etc/almavmm/vm-alice.conf /etc/almavmm/vm-alice.conf.almavmm-20250102-030405",
                "doas mv /etc/almavmm/vm-alice.conf.almavmm-new /etc/almavmm/vm-alice.conf",
                "doas vmctl reload",
            ]
        );
    }

    #[test]
    fn what_cannot_be_read_is_not_touched() {
        let mut f = fresh(Privilege::Doas);
        f.pf_conf = Probe::Unknown("needs root".into());
        f.pf_runtime = Probe::Unknown("needs root".into());
        f.vm_conf = Probe::Unknown("not UTF-8".into());
        let titles: Vec<String> = plan(&f).into_iter().map(|a| a.title).collect();
        assert!(!titles.iter().any(|t| t == PF || t == VM_CONF), "{titles:?}");
    }

    #[test]
    fn existing_files_keep_their_mode() {
        let mut f = fresh(Privilege::Root);
        f.sysctl_conf = Probe::Known(Some(fs("kern.maxfiles=4096\n", 0o640)));
        let a = plan(&f);
        let c = commands(&a);
        assert!(
            c.contains(&"install -o root -g wheel -m 0640 $TMP/sysctl.conf /etc/sysctl.conf.almavmm-new".to_string()),
            "{c:?}"
        );
    }
}
