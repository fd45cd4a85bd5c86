//! OpenBSD's vmctl, vmd, rcctl, ifconfig, sysctl, pfctl, fw_update and doas, emulated from
//! OpenBSD's source for the vmd end-to-end rig (`cargo xtask e2e --backend vmd`). One
//! program, busybox-style: it acts as the program it is called as (a symlink's name), or
//! as its first argument. Test code only, never shipped.
//!
//! It implements exactly what almavmm relies on, each behaviour citing the source it
//! follows, and fails loudly (exit 99, "not modelled, refusing to guess") for anything
//! else. State lives in `$OPENBSD_STANDIN_STATE`, inside the rig's private namespaces.
//!
//! Sources (openbsd/src), read at these revisions: usr.sbin/vmctl/main.c 1.87 (2025-06-09),
//! usr.sbin/vmctl/vmctl.c 1.94 (2025-06-09), usr.sbin/vmd/vmd.h 1.140 (2025-08-08; 1.101
//! for the older path limit), lib/libutil/fmt_scaled.c (current text), the current
//! vioqcow2.c `qc2_open` and vmm.c terminate handling; and as shared/FACTS.md records
//! them: usr.sbin/vmd/priv.c 1.29 (`vm_priv_addr`, tap descriptions), dhcp.c, control.c
//! 1.52, vmd.c's control answers (EINVAL, EALREADY, ENOENT), rc.subr(8), sysctl(8),
//! pfctl(8), ifconfig(8). parse.y's grammar is followed for the subset almavmm writes,
//! revision not pinned.

mod conf;
mod scaled;
mod state;
mod table;
mod tools;
mod vmctl;
mod vmd;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Exit status for a call the stand-in does not model.
pub const NOT_MODELLED: i32 = 99;

/// What one call prints and returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
    /// A line for vmd's log (syslog's daemon facility on OpenBSD; a file in the state).
    pub log: Option<String>,
}

impl Out {
    pub fn ok() -> Out {
        Out::default()
    }
    pub fn code(code: i32) -> Out {
        Out { code, ..Out::default() }
    }
    pub fn stdout(s: &str, code: i32) -> Out {
        Out { stdout: s.into(), code, ..Out::default() }
    }
    pub fn err(s: &str, code: i32) -> Out {
        Out { stderr: s.into(), code, ..Out::default() }
    }
    pub fn not_modelled(what: &str) -> Out {
        Out::err(&format!("openbsd-standin: not modelled, refusing to guess: {what}\n"), NOT_MODELLED)
    }
    /// Both outputs, the later exit status.
    pub fn and(mut self, o: Out) -> Out {
        self.stdout += &o.stdout;
        self.stderr += &o.stderr;
        self.code = o.code;
        self
    }
    pub fn log(mut self, line: &str) -> Out {
        self.log = Some(line.to_string());
        self
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let argv0 = Path::new(&args[0]).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tool = if argv0 == "openbsd-standin" {
        if args.len() < 2 {
            eprintln!("usage: openbsd-standin TOOL [ARG...]  (or run it through a symlink named TOOL)");
            std::process::exit(2);
        }
        args.remove(0);
        args[0].clone()
    } else {
        argv0
    };
    let rest: Vec<String> = args[1..].to_vec();
    std::process::exit(match run(&tool, &rest) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("openbsd-standin ({tool}): {e:#}");
            70
        }
    });
}

fn emit(out: &Out, dir: &Path) -> i32 {
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    let _ = std::io::stdout().flush();
    if let Some(line) = &out.log {
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .and_then(|mut f| writeln!(f, "{line}"));
    }
    out.code
}

fn run(tool: &str, args: &[String]) -> anyhow::Result<i32> {
    if tool == "doas" {
        return doas(args);
    }
    let dir = state::dir()?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    if tool == "vmctl" && matches!(vmctl::command(a.first().copied().unwrap_or("")), Ok("wait")) {
        return wait(&args[1..], &dir);
    }
    if tool == "vmctl" && matches!(vmctl::command(a.first().copied().unwrap_or("")), Ok("console")) {
        return console(&args[1..], &dir);
    }
    let mut locked = state::Locked::open(&dir)?;
    let st = &mut locked.state;
    let out = match tool {
        "vmctl" => vmctl::run(args, st, &dir),
        "vmd" => tools::vmd_main(&a, st),
        "rcctl" => tools::rcctl(&a, st),
        "sysctl" => tools::sysctl(&a, st),
        "pfctl" => tools::pfctl(&a, st),
        "fw_update" => tools::fw_update(&a),
        "ifconfig" => tools::ifconfig(&a),
        other => Out::not_modelled(&format!("a program called {other}")),
    };
    locked.save()?;
    Ok(emit(&out, &dir))
}

/// doas(1): we are root in the rig, so the command runs as it is (`-n` is accepted).
fn doas(args: &[String]) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let mut rest = args;
    while let Some(first) = rest.first() {
        match first.as_str() {
            "-n" => rest = &rest[1..],
            "-u" if rest.get(1).is_some_and(|u| u == "root") => rest = &rest[2..],
            s if s.starts_with('-') => {
                print!("{}", Out::not_modelled(&format!("doas {s}")).stdout);
                eprintln!("openbsd-standin: not modelled, refusing to guess: doas {s}");
                return Ok(NOT_MODELLED);
            }
            _ => break,
        }
    }
    let Some(prog) = rest.first() else {
        eprintln!("usage: doas [-Lns] [-a style] [-C config] [-u user] command [arg ...]");
        return Ok(1);
    };
    let e = std::process::Command::new(prog).args(&rest[1..]).exec();
    eprintln!("doas: {prog}: {e}");
    Ok(127)
}

/// `vmctl wait NAME`: vmd answers when the VM's process ends (vmctl.c `waitfor_vm`,
/// `terminated vm ID`). The state is not held locked while waiting. vmctl waits for ever;
/// the stand-in gives up after an hour, loudly.
fn wait(args: &[String], dir: &Path) -> anyhow::Result<i32> {
    let (id, pid, lead) = {
        let mut locked = state::Locked::open(dir)?;
        let r = vmctl::wait_target(args, &mut locked.state);
        locked.save()?;
        match r {
            Ok(t) => t,
            Err(out) => return Ok(emit(&out, dir)),
        }
    };
    eprint!("{lead}");
    let ended = almavmm_shared::wait::wait_until(
        almavmm_shared::wait::Deadline::after(Duration::from_secs(3600)),
        Duration::from_millis(100),
        || Ok::<_, std::convert::Infallible>((!state::alive(pid)).then_some(())),
    )?;
    if ended.is_none() {
        eprintln!("openbsd-standin: the VM's process {pid} was still running after an hour of `vmctl wait`");
        return Ok(70);
    }
    let mut locked = state::Locked::open(dir)?;
    vmd::reap(&mut locked.state);
    locked.save()?;
    eprintln!("terminated vm {id}");
    Ok(0)
}

/// `vmctl console NAME`: vmctl.c `vm_console` opens the VM's tty with cu(1); here the
/// serial console's socket, relayed to and from the terminal until either side closes.
fn console(args: &[String], dir: &Path) -> anyhow::Result<i32> {
    let [name] = args else {
        eprintln!("usage:\tvmctl [-v] console id");
        return Ok(1);
    };
    let sock = {
        let mut locked = state::Locked::open(dir)?;
        if !locked.state.vmd_running {
            eprintln!("vmctl: connect: /var/run/vmd.sock: No such file or directory");
            return Ok(1);
        }
        vmd::reap(&mut locked.state);
        locked.save()?;
        let running = locked.state.vms.iter().any(|v| v.name == *name && v.run.is_some());
        if !running {
            eprintln!("vmctl: console not found");
            return Ok(1);
        }
        vmd::vm_dir(dir, name).join("console.sock")
    };
    let stream = std::os::unix::net::UnixStream::connect(&sock)?;
    let mut to_vm = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut to_vm);
        let _ = to_vm.shutdown(std::net::Shutdown::Write);
    });
    let mut from_vm = stream;
    std::io::copy(&mut from_vm, &mut std::io::stdout())?;
    Ok(0)
}
