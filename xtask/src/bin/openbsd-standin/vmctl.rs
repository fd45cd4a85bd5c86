//! vmctl(8): usr.sbin/vmctl/main.c 1.87 (command table, `parse_vmid`, `vmmaction`'s exit
//! status) and vmctl.c 1.94 (the messages of `vm_start_complete`,
//! `terminate_vm_complete`, `waitfor_vm`, `print_vm_info`, `vm_console`), with vmd's
//! answers from vmd.c `vmd_dispatch_control` as shared/FACTS.md records them.

use std::path::Path;
use std::time::Duration;

use crate::Out;
use crate::state::State;
use crate::table::{self, InfoRow, Selector, StateBits};
use crate::vmd::{self, Missing};

/// main.c's table, in its order: a command may be abbreviated (`strncmp` on the length
/// given); two matches are "ambiguous argument".
const COMMANDS: &[&str] = &[
    "console", "create", "load", "log", "pause", "reload", "reset", "show", "start", "status", "stop", "unpause",
    "wait",
];

const NOT_RUNNING: &str = "vmctl: connect: /var/run/vmd.sock: No such file or directory\n";

fn usage() -> Out {
    Out::err("usage:\tvmctl [-v] command [arg ...]\n", 1)
}

/// Which command `word` names.
pub fn command(word: &str) -> Result<&'static str, Out> {
    let found: Vec<&&str> = COMMANDS.iter().filter(|c| c.starts_with(word) && !word.is_empty()).collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(Out::err(&format!("unknown argument: {word}\n"), 1).and(usage())),
        _ => Err(Out::err(&format!("ambiguous argument: {word}\n"), 1).and(usage())),
    }
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string())
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name).unwrap_or_else(|| gid.to_string())
}

/// vmd's `vmop_info_result` for every VM.
pub fn info_rows(st: &State) -> Vec<InfoRow> {
    st.vms
        .iter()
        .map(|v| {
            let running = v.run.is_some();
            InfoRow {
                id: v.id,
                pid: v.run.as_ref().map(|r| r.pid).unwrap_or(0),
                vcpus: 1,
                memory: v.memory,
                // vmm maps all guest memory up front: what is in use is the memory size.
                used: if running { v.memory } else { 0 },
                tty: v.run.as_ref().map(|r| r.tty.clone()).unwrap_or_default(),
                user: user_name(v.uid),
                group: v.gid.map(group_name),
                state: StateBits {
                    running,
                    disabled: v.disabled,
                    shutdown: v.shutdown && running,
                    paused: false,
                    waiting: false,
                },
                name: v.name.clone(),
            }
        })
        .collect()
}

fn find(st: &State, sel: &Selector) -> Option<usize> {
    st.vms.iter().position(|v| match sel {
        Selector::Id(id) => v.id == *id,
        Selector::Name(n) => v.name == *n,
    })
}

/// One vmctl call. `state_dir` holds the VMs' consoles and logs.
pub fn run(args: &[String], st: &mut State, state_dir: &Path) -> Out {
    let Some(first) = args.first() else { return usage() };
    let cmd = match command(first) {
        Ok(c) => c,
        Err(out) => return out,
    };
    let rest = &args[1..];
    if cmd == "create" {
        return create(rest);
    }
    if !st.vmd_running {
        return Out::err(NOT_RUNNING, 1);
    }
    vmd::reap(st);
    match cmd {
        "status" | "show" => status(rest, st),
        "start" => start(rest, st, state_dir),
        "stop" => stop(rest, st),
        "wait" => Out::not_modelled("vmctl wait is answered by the stand-in's main loop"),
        "reload" => reload(rest, st),
        "console" => Out::not_modelled("vmctl console is answered by the stand-in's main loop"),
        other => Out::not_modelled(&format!("vmctl {other}")),
    }
}

fn status(rest: &[String], st: &State) -> Out {
    let mut running_only = false;
    let mut select = None;
    for a in rest {
        match a.as_str() {
            "-r" => running_only = true,
            s if s.starts_with('-') => return Out::err("usage:\tvmctl [-v] status [-r] [id]\n", 1),
            s => select = Some(Selector::parse(s)),
        }
    }
    let (text, code) = table::print(&info_rows(st), select.as_ref(), running_only);
    Out::stdout(&text, code)
}

fn start(rest: &[String], st: &mut State, state_dir: &Path) -> Out {
    let [name] = rest else {
        return Out::not_modelled("vmctl start with options (only `vmctl start NAME` of a vm.conf VM is modelled)");
    };
    let sel = Selector::parse(name);
    let Some(i) = find(st, &sel) else {
        // vmd: a VM neither in the configuration nor running, with nothing to create it from.
        return Out::err("vmctl: start vm command failed: No such file or directory\n", 1);
    };
    if st.vms[i].run.is_some() {
        return Out::err("vmctl: start vm command failed: Operation already in progress\n", 1);
    }
    match vmd::precheck(&st.vms[i]) {
        Err(Missing::Bios) => return Out::err("vmctl: vmm bios firmware file not found.\n", 1),
        Err(Missing::Disk) => return Out::err("vmctl: could not open disk image(s)\n", 1),
        Err(Missing::Cdrom) => return Out::err("vmctl: could not find specified iso image\n", 1),
        Ok(()) => {}
    }
    if let Some(why) = vmd::fatal_disk(&st.vms[i]) {
        // vmd answers before the disk process reads the image; that process then dies
        // (fatalx) and takes the VM with it. The message goes to vmd's log.
        let log = state_dir.join("daemon.log");
        let line = format!("vmd: {}: vioblk: {why}\n", st.vms[i].name);
        let _ = std::fs::OpenOptions::new().create(true).append(true).open(&log).and_then(|mut f| {
            use std::io::Write;
            f.write_all(line.as_bytes())
        });
        let id = st.vms[i].id;
        return Out::err(&format!("vmctl: started vm {id} successfully, tty /dev/ttyp0\n"), 0);
    }
    match vmd::start_vm(st, i, state_dir) {
        Ok((id, tty)) => Out::err(&format!("vmctl: started vm {id} successfully, tty {tty}\n"), 0),
        Err(e) => Out::err(&format!("openbsd-standin: could not emulate the VM: {e:#}\n"), 70),
    }
}

fn stop(rest: &[String], st: &mut State) -> Out {
    let mut force = false;
    let mut wait = false;
    let mut target = None;
    for a in rest {
        match a.as_str() {
            "-f" => force = true,
            "-w" => wait = true,
            "-fw" | "-wf" => (force, wait) = (true, true),
            "-a" => return Out::not_modelled("vmctl stop -a"),
            s if s.starts_with('-') => return Out::err("usage:\tvmctl [-v] stop [-fw] [id | -a]\n", 1),
            s => target = Some(s.to_string()),
        }
    }
    let Some(target) = target else { return Out::err("usage:\tvmctl [-v] stop [-fw] [id | -a]\n", 1) };
    let sel = Selector::parse(&target);
    // terminate_vm: `stopping vm NAME: ` (or `stopping vm: ` for an id) before the answer.
    let lead = match &sel {
        Selector::Name(n) => format!("stopping vm {n}: "),
        Selector::Id(_) => "stopping vm: ".to_string(),
    };
    let Some(i) = find(st, &sel) else { return Out::err(&format!("{lead}vm not found\n"), 1) };
    let id = st.vms[i].id;
    if st.vms[i].run.is_none() {
        return Out::err(&format!("{lead}failed: Invalid argument\n"), 1);
    }
    if force {
        if let Err(e) = vmd::kill_vm(st, i) {
            return Out::err(&format!("{lead}openbsd-standin: {e:#}\n"), 70);
        }
        // With -w the answer is the termination event; without, the request's answer.
        return Out::err(
            &if wait {
                format!("{lead}terminated vm {id}\n")
            } else {
                format!("{lead}requested to shutdown vm {id}\n")
            },
            0,
        );
    }
    if st.vms[i].shutdown {
        return Out::err(&format!("{lead}failed: Operation already in progress\n"), 1);
    }
    if wait {
        return Out::not_modelled("vmctl stop -w without -f (a Linux guest never acts on vmmci's request)");
    }
    // vmd asks the guest through vmmci(4); Linux has no driver for it and does nothing.
    st.vms[i].shutdown = true;
    Out::err(&format!("{lead}requested to shutdown vm {id}\n"), 0)
}

/// The first part of `vmctl wait`: what to wait for, or vmd's refusal.
pub fn wait_target(rest: &[String], st: &mut State) -> Result<(u32, u32, String), Out> {
    if !st.vmd_running {
        return Err(Out::err(NOT_RUNNING, 1));
    }
    vmd::reap(st);
    let [target] = rest else { return Err(Out::err("usage:\tvmctl [-v] wait id\n", 1)) };
    let sel = Selector::parse(target);
    let lead = match &sel {
        Selector::Name(n) => format!("waiting for vm {n}: "),
        Selector::Id(_) => "waiting for vm: ".to_string(),
    };
    let Some(i) = find(st, &sel) else { return Err(Out::err(&format!("{lead}vm not found\n"), 1)) };
    match &st.vms[i].run {
        None => Err(Out::err(&format!("{lead}failed: Invalid argument\n"), 1)),
        Some(r) => Ok((st.vms[i].id, r.pid, lead)),
    }
}

fn reload(rest: &[String], st: &mut State) -> Out {
    if !rest.is_empty() {
        return Out::err("usage:\tvmctl [-v] reload \n", 1);
    }
    let cfg = match crate::conf::parse_file(Path::new(vmd::VM_CONF)) {
        Ok(c) => c,
        // vmd logs the parse error and answers IMSG_CTL_FAIL: main.c `errx(1, "command failed")`.
        Err(e) => return Out::err("vmctl: command failed\n", 1).log(&e.to_string()),
    };
    match vmd::apply_config(st, &cfg) {
        Ok(()) => Out::ok(),
        Err(e) => Out::err(&format!("{e:#}\n"), 70),
    }
}

/// `vmctl create [-b base] [-s size] disk` (main.c 1.87 `ctl_create`): only the overlay
/// form almavmm uses. vioqcow2.c `virtio_qcow2_create` writes a qcow2 v3 image with
/// 64 KiB clusters and the base's size; an existing file is `EEXIST`.
fn create(rest: &[String]) -> Out {
    let (base, disk) = match rest {
        [b, base, disk] if b == "-b" => (base, disk),
        _ => return Out::not_modelled("vmctl create other than `create -b BASE DISK`"),
    };
    let disk = disk.strip_prefix("qcow2:").unwrap_or(disk);
    if Path::new(disk).exists() {
        return Out::err("vmctl: create imagefile operation failed: File exists\n", 1);
    }
    let made = almavmm_shared::runner::Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "compat=1.1,cluster_size=65536,refcount_bits=16", "-b"])
        .arg(base)
        .args(["-F", "qcow2", disk])
        .timeout(Duration::from_secs(60))
        .run();
    match made {
        Ok(_) => {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(disk, std::fs::Permissions::from_mode(0o600));
            Out::err("vmctl: qcow2 imagefile created\n", 0)
        }
        Err(e) => Out::err(&format!("vmctl: create imagefile operation failed: {e}\n"), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Run, VmEntry};

    fn st(running: bool) -> State {
        State {
            vmd_running: true,
            vms: vec![VmEntry {
                name: "alma".into(),
                id: 1,
                uid: 0,
                gid: None,
                memory: 2 << 30,
                disks: vec![],
                cdrom: None,
                local_interfaces: 1,
                disabled: true,
                shutdown: false,
                // Our own pid: a process that is alive for the test's length.
                run: running.then(|| Run {
                    pid: std::process::id(),
                    tty: "/dev/ttyp0".into(),
                    taps: vec![],
                    dnsmasq: vec![],
                }),
            }],
            ..State::default()
        }
    }

    fn call(args: &[&str], s: &mut State) -> Out {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        run(&args, s, Path::new("/nonexistent"))
    }

    #[test]
    fn commands_are_abbreviated_as_main_c_allows() {
        assert_eq!(command("stat"), Ok("status"));
        assert_eq!(command("rel"), Ok("reload"));
        let e = command("st").unwrap_err();
        assert!(e.stderr.starts_with("ambiguous argument: st\n") && e.code == 1, "{e:?}");
        let e = command("frob").unwrap_err();
        assert!(e.stderr.starts_with("unknown argument: frob\n") && e.code == 1, "{e:?}");
    }

    #[test]
    fn vmd_not_running_is_a_connect_error() {
        let mut s = State::default();
        let o = call(&["status"], &mut s);
        assert_eq!((o.stdout.as_str(), o.stderr.as_str(), o.code), ("", NOT_RUNNING, 1));
    }

    #[test]
    fn status_of_nothing_exits_1_with_the_header_only() {
        let mut s = State { vmd_running: true, ..State::default() };
        let o = call(&["status"], &mut s);
        assert_eq!(o.code, 1);
        assert_eq!(o.stdout.lines().count(), 1);
        assert!(o.stderr.is_empty());
        assert!(almavmm_host::hostsetup::vmctl::empty_listing(Some(o.code), &o.stdout, &o.stderr));
    }

    #[test]
    fn status_rows_read_back_through_the_products_parser() {
        let mut s = st(true);
        let o = call(&["status"], &mut s);
        assert_eq!(o.code, 0);
        let rows = almavmm_host::backend::vmd::status::parse(&o.stdout).unwrap();
        assert_eq!((rows[0].id, rows[0].name.as_str()), (1, "alma"));
        assert_eq!(rows[0].state, almavmm_host::backend::RunState::Running);
        assert_eq!(rows[0].tty.as_deref(), Some("ttyp0"));
        let mut s = st(false);
        let o = call(&["status"], &mut s);
        assert!(
            o.stdout
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("    1     -     1    2.0G       -       -         root  stopped alma")
        );
    }

    #[test]
    fn stop_answers_as_vmd_does() {
        let mut s = st(false);
        let o = call(&["stop", "-f", "alma"], &mut s);
        assert_eq!((o.stderr.as_str(), o.code), ("stopping vm alma: failed: Invalid argument\n", 1));
        let o = call(&["stop", "-f", "nosuch"], &mut s);
        assert_eq!((o.stderr.as_str(), o.code), ("stopping vm nosuch: vm not found\n", 1));
        // Without -f a running Linux guest is only marked: it keeps running, "stopping".
        let mut s = st(true);
        let o = call(&["stop", "alma"], &mut s);
        assert_eq!((o.stderr.as_str(), o.code), ("stopping vm alma: requested to shutdown vm 1\n", 0));
        assert!(s.vms[0].run.is_some());
        assert!(call(&["status"], &mut s).stdout.contains(" stopping alma\n"));
        let o = call(&["stop", "alma"], &mut s);
        assert_eq!((o.stderr.as_str(), o.code), ("stopping vm alma: failed: Operation already in progress\n", 1));
        // A number is an id (parse_vmid), never a name.
        let o = call(&["stop", "-f", "7"], &mut s);
        assert_eq!((o.stderr.as_str(), o.code), ("stopping vm: vm not found\n", 1));
    }

    #[test]
    fn start_refuses_a_running_vm_and_unknown_names() {
        let mut s = st(true);
        let o = call(&["start", "alma"], &mut s);
        assert_eq!((o.stderr.as_str(), o.code), ("vmctl: start vm command failed: Operation already in progress\n", 1));
        let o = call(&["start", "nosuch"], &mut s);
        assert_eq!(o.code, 1);
        let o = call(&["start", "-c", "alma"], &mut s);
        assert_eq!(o.code, crate::NOT_MODELLED);
    }

    #[test]
    fn wait_refuses_stopped_and_unknown_vms() {
        let mut s = st(false);
        let e = wait_target(&["alma".into()], &mut s).unwrap_err();
        assert_eq!((e.stderr.as_str(), e.code), ("waiting for vm alma: failed: Invalid argument\n", 1));
        let e = wait_target(&["x".into()], &mut s).unwrap_err();
        assert_eq!((e.stderr.as_str(), e.code), ("waiting for vm x: vm not found\n", 1));
        let mut s = st(true);
        assert_eq!(wait_target(&["alma".into()], &mut s).unwrap().0, 1);
    }

    #[test]
    fn create_refuses_to_overwrite_and_models_only_overlays() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let o = create(&["-b".into(), "/base.qcow2".into(), f.path().display().to_string()]);
        assert_eq!((o.stderr.as_str(), o.code), ("vmctl: create imagefile operation failed: File exists\n", 1));
        let o = create(&["-s".into(), "1G".into(), "/x.qcow2".into()]);
        assert_eq!(o.code, crate::NOT_MODELLED);
    }
}
