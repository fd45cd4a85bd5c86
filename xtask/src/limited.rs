//! The one way the harness runs an external program: with a time limit.
//!
//! `limited(program, limit)` builds the command; `output`, `status`, `run` and `spawn` run
//! it. Each child starts in a process group of its own, and a watchdog thread kills that
//! whole group (the program and whatever it started in it: an ssh's ProxyCommand, a
//! shell's children) when the limit passes; the caller then gets an [`Overran`] error that
//! names the command and the limit. The child also dies with us (`PR_SET_PDEATHSIG`), since
//! being in its own group it no longer gets the terminal's Ctrl-C.
//!
//! Waiting is a blocking `wait`, not polling, so timings taken around a command (the
//! benchmarks) are not rounded up to a poll interval.
//!
//! Nothing in the harness may build a `std::process::Command` (or an xshell `cmd!`, a duct
//! expression) itself: a test at the end of this file reads the sources and fails if one
//! does. That is also why xtask no longer uses xshell, which the harness started with: its
//! commands run to their end with no time limit and no process group to kill.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::util::project_root;

/// What happens to a child's stdout or stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// Collected and returned in [`Output`].
    Capture,
    /// Shared with ours (the user sees it as it comes).
    Inherit,
    /// Discarded.
    Null,
}

/// A command that will be killed if it runs longer than its limit.
#[derive(Debug)]
pub struct Limited {
    cmd: Command,
    limit: Duration,
    stdin: Option<std::fs::File>,
    stdout: Io,
    stderr: Io,
}

/// Build a command for `program` that may run for at most `limit`. It runs in the
/// workspace root unless told otherwise, with standard input from /dev/null (or a file).
pub fn limited(program: impl AsRef<OsStr>, limit: Duration) -> Limited {
    let mut cmd = Command::new(program);
    cmd.current_dir(project_root());
    Limited { cmd, limit, stdin: None, stdout: Io::Capture, stderr: Io::Capture }
}

/// The program ran past its limit and was killed with its process group.
#[derive(Debug)]
pub struct Overran {
    pub cmdline: String,
    pub limit: Duration,
}

impl std::fmt::Display for Overran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` did not finish within {} and was killed", self.cmdline, human(self.limit))
    }
}

impl std::error::Error for Overran {}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{} ms", d.as_millis()) } else { format!("{} s", d.as_secs()) }
}

/// How a finished command ended and what it printed (what was captured).
#[derive(Debug)]
pub struct Output {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// This output if the command exited 0, else an error with its status and stderr.
    pub fn ok(self) -> anyhow::Result<Output> {
        anyhow::ensure!(
            self.status.success(),
            "`{}` failed ({}){}",
            self.cmdline,
            self.status,
            if self.stderr.trim().is_empty() { String::new() } else { format!(":\n{}", self.stderr.trim_end()) }
        );
        Ok(self)
    }
}

impl Limited {
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.cmd.env_remove(key);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Standard input from this file instead of /dev/null (a file, not a pipe: nothing to
    /// write, so nothing that can block us).
    pub fn stdin_file(mut self, file: std::fs::File) -> Self {
        self.stdin = Some(file);
        self
    }

    pub fn stdout(mut self, io: Io) -> Self {
        self.stdout = io;
        self
    }

    pub fn stderr(mut self, io: Io) -> Self {
        self.stderr = io;
        self
    }

    /// The command line as one could paste it into a shell.
    pub fn cmdline(&self) -> String {
        std::iter::once(self.cmd.get_program())
            .chain(self.cmd.get_args())
            .map(|a| almavmm_shared::runner::shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run to the end (or the limit) and return its output whatever its exit status.
    pub fn output(self) -> anyhow::Result<Output> {
        self.spawn()?.wait()
    }

    /// Run to the end, output captured, and fail unless it exits 0.
    pub fn run(self) -> anyhow::Result<Output> {
        self.output()?.ok()
    }

    /// Run with stdout and stderr shared with ours; return the exit status.
    pub fn status(self) -> anyhow::Result<ExitStatus> {
        Ok(self.stdout(Io::Inherit).stderr(Io::Inherit).output()?.status)
    }

    /// Run with stdout and stderr shared with ours, and fail unless it exits 0.
    pub fn run_inherited(self) -> anyhow::Result<()> {
        let cmdline = self.cmdline();
        let status = self.status()?;
        anyhow::ensure!(status.success(), "`{cmdline}` failed ({status})");
        Ok(())
    }

    /// Start it; the limit counts from now, whether or not anyone waits for it.
    pub fn spawn(mut self) -> anyhow::Result<Running> {
        let cmdline = self.cmdline();
        let pipe = |io: Io| match io {
            Io::Capture => Stdio::piped(),
            Io::Inherit => Stdio::inherit(),
            Io::Null => Stdio::null(),
        };
        let stdin = self.stdin.take().map_or_else(Stdio::null, Stdio::from);
        self.cmd.stdin(stdin).stdout(pipe(self.stdout)).stderr(pipe(self.stderr)).process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe { self.cmd.pre_exec(die_with_parent) };
        let mut child = self.cmd.spawn().with_context(|| format!("cannot run `{cmdline}`"))?;
        let started = Instant::now();
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        let fired = Arc::new(AtomicBool::new(false));
        let (done, done_rx) = mpsc::channel::<()>();
        let watchdog = {
            let fired = fired.clone();
            let pid = child.id() as i32;
            let limit = self.limit;
            std::thread::spawn(move || {
                // A disconnect (the Running was finished or dropped) means: stand down.
                if let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(limit) {
                    fired.store(true, Ordering::SeqCst);
                    kill_group(pid);
                }
            })
        };
        Ok(Running {
            cmdline,
            limit: self.limit,
            started,
            child,
            stdout,
            stderr,
            fired,
            done: Some(done),
            watchdog: Some(watchdog),
            waited: false,
        })
    }
}

/// A started command. Dropping it kills its process group if it is still running.
#[derive(Debug)]
pub struct Running {
    cmdline: String,
    limit: Duration,
    started: Instant,
    child: Child,
    stdout: Option<Receiver<Vec<u8>>>,
    stderr: Option<Receiver<Vec<u8>>>,
    fired: Arc<AtomicBool>,
    done: Option<Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
    waited: bool,
}

impl Running {
    /// Wait for the end (the watchdog ends it at the limit) and return what it printed.
    pub fn wait(mut self) -> anyhow::Result<Output> {
        let status = self.child.wait().with_context(|| format!("waiting for `{}`", self.cmdline))?;
        self.waited = true;
        // The program is gone, but something it started may hold its output open: that too
        // ends at the limit (the watchdog kills the group), plus a moment for the pipes.
        let until = self.started + self.limit + Duration::from_secs(1);
        let stdout = self.stdout.take().map(|rx| drain(&rx, until)).transpose();
        let stderr = self.stderr.take().map(|rx| drain(&rx, until)).transpose();
        self.stand_down();
        let (Ok(stdout), Ok(stderr)) = (stdout, stderr) else {
            // Only a process outside the group (it started a session of its own) can do this.
            anyhow::bail!(
                "`{}` ended, but a process it left behind still held its output open after {}",
                self.cmdline,
                human(self.limit)
            );
        };
        if self.fired.load(Ordering::SeqCst) {
            return Err(Overran { cmdline: self.cmdline.clone(), limit: self.limit }.into());
        }
        let text = |b: Option<Vec<u8>>| String::from_utf8_lossy(&b.unwrap_or_default()).into_owned();
        Ok(Output { cmdline: self.cmdline.clone(), status, stdout: text(stdout), stderr: text(stderr) })
    }

    fn stand_down(&mut self) {
        self.done.take();
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.waited {
            kill_group(self.child.id() as i32);
            let _ = self.child.wait();
        }
        self.stand_down();
    }
}

fn collect(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

fn drain(rx: &Receiver<Vec<u8>>, until: Instant) -> Result<Vec<u8>, RecvTimeoutError> {
    rx.recv_timeout(until.saturating_duration_since(Instant::now()))
}

// Two libc calls; std links libc already, and a crate for them would touch the shared lock file.
unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, ...) -> i32;
}

const SIGKILL: i32 = 9;
const PR_SET_PDEATHSIG: i32 = 1;

fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG, sig) reads only its arguments.
    if unsafe { prctl(PR_SET_PDEATHSIG, SIGKILL as std::ffi::c_ulong) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// SIGKILL to the process group led by `pid`, and to `pid` itself in case it left it.
fn kill_group(pid: i32) {
    // SAFETY: kill(2) has no memory effects; a stale pid at worst gets ESRCH.
    unsafe {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::path::Path;

    use almavmm_shared::wait::{Deadline, wait_until};

    use super::*;

    #[test]
    fn an_overrunning_command_is_killed_and_named() {
        let err = limited("sleep", Duration::from_millis(200)).arg("30").output().unwrap_err();
        let over = err.downcast_ref::<Overran>().expect("an Overran error");
        assert_eq!(over.cmdline, "sleep 30");
        assert_eq!(over.limit, Duration::from_millis(200));
        assert_eq!(err.to_string(), "`sleep 30` did not finish within 200 ms and was killed");
    }

    #[test]
    fn the_whole_process_group_is_killed() {
        // The shell waits for a grandchild that holds stdout open; both must go.
        let marker = tempfile::NamedTempFile::new().unwrap();
        let script = format!("sleep 30 & echo $! >{}; wait", marker.path().display());
        let err = limited("sh", Duration::from_millis(300)).args(["-c", &script]).output().unwrap_err();
        assert!(err.downcast_ref::<Overran>().is_some(), "{err:#}");
        let pid = std::fs::read_to_string(marker.path()).unwrap().trim().to_string();
        // Gone, or a zombie waiting for init: not sleeping any more. SIGKILL takes effect
        // when the process is next scheduled, so allow it a moment.
        let mut state = String::new();
        let dead = || {
            state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            Ok::<_, Infallible>((state.is_empty() || state.contains(") Z ")).then_some(()))
        };
        let waited = wait_until(Deadline::after(Duration::from_secs(5)), Duration::from_millis(10), dead).unwrap();
        assert!(waited.is_some(), "the grandchild survived: {state}");
    }

    #[test]
    fn a_quick_command_returns_its_output_and_status() {
        let out =
            limited("sh", Duration::from_secs(20)).args(["-c", "echo out; echo err >&2; exit 3"]).output().unwrap();
        assert_eq!((out.code(), out.stdout.as_str(), out.stderr.as_str()), (Some(3), "out\n", "err\n"));
        let err = out.ok().unwrap_err().to_string();
        assert!(err.contains("`sh -c 'echo out; echo err >&2; exit 3'` failed") && err.contains("err"), "{err}");
    }

    #[test]
    fn output_held_open_by_an_escaped_process_ends_at_the_limit() {
        // setsid puts the sleeper out of the group: the program ends, its pipe stays open.
        let err = limited("sh", Duration::from_millis(300))
            .args(["-c", "setsid sleep 5 & exit 0"])
            .output()
            .unwrap_err()
            .to_string();
        assert!(err.contains("still held its output open"), "{err}");
    }

    #[test]
    fn dropping_a_running_command_kills_it() {
        let r = limited("sleep", Duration::from_secs(60)).arg("30").stdout(Io::Null).stderr(Io::Null).spawn().unwrap();
        let pid = r.child.id();
        drop(r);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "sleep {pid} is still there");
    }

    /// Files of xtask/src that are not part of the e2e harness, demo or deps and may run
    /// programs another way: the image, module, release-tree and agent builds.
    /// The stand-in is not the harness: it plays OpenBSD's tools, and the QEMU it starts as
    /// `vmctl start` is a daemon that lives until `vmctl stop` (the rig's PID namespace
    /// ends it, whatever happens).
    const OUTSIDE_THE_HARNESS: &[&str] = &[
        "limited.rs",
        // The stand-ins are the OpenBSD tools the product runs, not the harness: their
        // children (QEMU, dnsmasq) live as long as the VM they play, as under vmd.
        "bin/openbsd-standin/main.rs",
    ];

    /// What running a program without the helper looks like in source: std's Command
    /// (named through `process::`, however imported; clap's Command is not one), xshell's
    /// `cmd!`, duct.
    fn bypasses(source: &str) -> Vec<(usize, &'static str)> {
        let mut found = Vec::new();
        for (i, line) in source.lines().enumerate() {
            if line.contains("process::") && line.contains("Command") {
                found.push((i + 1, "std::process::Command"));
            }
            for b in ["cmd!(", ".cmd(", "duct::"] {
                if line.contains(b) {
                    found.push((i + 1, b));
                }
            }
        }
        found
    }

    #[test]
    fn the_scan_finds_a_bypass() {
        assert_eq!(bypasses("let x = 1;\nstd::process::Command::new(\"ssh\")"), vec![(2, "std::process::Command")]);
        assert_eq!(bypasses("use std::process::{Child, Command, Stdio};"), vec![(1, "std::process::Command")]);
        assert_eq!(bypasses("cmd!(sh, \"ls\").run()?;"), vec![(1, "cmd!(")]);
        assert!(bypasses("limited(\"ssh\", LIMIT).arg(\"-V\")").is_empty());
        assert!(bypasses("use clap::Command;\nlet c = Command::new(\"almavmm-host\");").is_empty());
    }

    #[test]
    fn no_harness_file_runs_a_program_without_a_limit() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let mut found = Vec::new();
        let mut scanned = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&src).unwrap().display().to_string();
            if OUTSIDE_THE_HARNESS.contains(&rel.as_str()) {
                continue;
            }
            for (line, what) in bypasses(&std::fs::read_to_string(&f).unwrap()) {
                found.push(format!("{rel}:{line}: {what}"));
            }
            scanned.push(rel);
        }
        for must in ["e2e.rs", "serve.rs", "demo.rs", "deps.rs", "freshroot.rs", "test.rs", "bench/proxy.rs"] {
            assert!(scanned.iter().any(|s| s == must), "{must} was not scanned: {scanned:?}");
        }
        assert!(found.is_empty(), "commands built without `limited` (so without a time limit):\n{}", found.join("\n"));
    }
}
