//! The one way this project runs an external program.
//!
//! Every call goes through [`Cmd`]: the full command line is logged at debug level before it
//! runs, and a failure becomes a [`RunError`] that names the command, its exit status and
//! the tail of its standard error, so that a user reading the message knows what ran and
//! why it failed without re-running anything with more verbosity.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How many trailing lines of stderr an error carries.
const STDERR_TAIL_LINES: usize = 12;

/// An external program to run, with its arguments.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    missing_hint: Option<String>,
}

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The exit code; `None` when a signal ended the program.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Why a command could not be run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("`{program}` was not found on PATH{}", hint_suffix(.hint))]
    NotFound { program: String, hint: Option<String> },
    #[error("could not run `{cmdline}`: {source}")]
    Spawn {
        cmdline: String,
        #[source]
        source: io::Error,
    },
    #[error("`{cmdline}` failed ({status}){}", tail_suffix(.stderr_tail))]
    Failed { cmdline: String, status: String, stderr_tail: String },
    #[error("`{cmdline}` did not finish within {}s and was killed", .after.as_secs())]
    TimedOut { cmdline: String, after: Duration },
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() { String::new() } else { format!(":\n{tail}") }
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            stdin: None,
            timeout: None,
            missing_hint: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Bytes fed to the program's standard input.
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Kill the program and fail when it runs longer than this.
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// What to tell the user when the program is not installed, e.g.
    /// "install it with `pkg_add qemu` (OpenBSD) or `apt-get install qemu-utils` (Debian)".
    pub fn hint_if_missing(mut self, hint: impl Into<String>) -> Self {
        self.missing_hint = Some(hint.into());
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    /// The command line as a user could paste it into a shell.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args);
        for (k, v) in &self.env {
            e = e.env(k, v);
        }
        if let Some(dir) = &self.dir {
            e = e.dir(dir);
        }
        e
    }

    fn spawn_error(&self, source: io::Error) -> RunError {
        if source.kind() == io::ErrorKind::NotFound && self.dir.as_ref().is_none_or(|d| d.is_dir()) {
            RunError::NotFound { program: self.program.to_string_lossy().into_owned(), hint: self.missing_hint.clone() }
        } else {
            RunError::Spawn { cmdline: self.display(), source }
        }
    }

    /// Run to completion, capturing stdout and stderr, and return what it printed whatever
    /// its exit status. Use this where a non-zero exit is an answer, not a failure.
    pub fn output(&self) -> Result<Output, RunError> {
        let cmdline = self.display();
        tracing::debug!(cmd = %cmdline, "running");
        let started = Instant::now();
        let mut expr = self.expression().stdout_capture().stderr_capture().unchecked();
        if let Some(input) = &self.stdin {
            expr = expr.stdin_bytes(input.clone());
        } else {
            expr = expr.stdin_null();
        }
        let out = match self.timeout {
            None => expr.run().map_err(|e| self.spawn_error(e))?,
            Some(limit) => {
                let handle = expr.start().map_err(|e| self.spawn_error(e))?;
                loop {
                    if let Some(out) = handle.try_wait().map_err(|e| self.spawn_error(e))? {
                        break out.clone();
                    }
                    if started.elapsed() >= limit {
                        let _ = handle.kill();
                        return Err(RunError::TimedOut { cmdline, after: limit });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let output = Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        tracing::debug!(
            cmd = %cmdline,
            status = %output.status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "finished"
        );
        Ok(output)
    }

    /// Run to completion and fail unless it exits 0.
    pub fn run(&self) -> Result<Output, RunError> {
        let out = self.output()?;
        if out.status.success() { Ok(out) } else { Err(self.failure(&out)) }
    }

    /// The error describing a finished command that did not succeed.
    pub fn failure(&self, out: &Output) -> RunError {
        RunError::Failed {
            cmdline: self.display(),
            status: describe_status(out.status),
            stderr_tail: tail(if out.stderr.trim().is_empty() { &out.stdout } else { &out.stderr }),
        }
    }

    /// Run with the terminal attached (stdin, stdout and stderr inherited), for interactive
    /// programs such as `ssh` or `vmctl console`. Returns the exit status.
    pub fn run_attached(&self) -> Result<ExitStatus, RunError> {
        let cmdline = self.display();
        tracing::debug!(cmd = %cmdline, "running attached");
        let out = self.expression().unchecked().run().map_err(|e| self.spawn_error(e))?;
        Ok(out.status)
    }

    /// Start in the background with stdout captured into a pipe the caller reads line by
    /// line (for progress output), stderr captured for the error message.
    pub fn stream_stdout(&self) -> Result<Streaming, RunError> {
        let cmdline = self.display();
        tracing::debug!(cmd = %cmdline, "running (streamed)");
        let mut expr = self.expression().stderr_capture().unchecked();
        expr = match &self.stdin {
            Some(input) => expr.stdin_bytes(input.clone()),
            None => expr.stdin_null(),
        };
        let reader = expr.reader().map_err(|e| self.spawn_error(e))?;
        Ok(Streaming { cmd: self.clone(), reader })
    }
    /// Start in the background, detached from our terminal and process group, with no
    /// stdio, and do not wait for it (a helper that must outlive us).
    pub fn spawn_detached(&self) -> Result<u32, RunError> {
        use std::os::unix::process::CommandExt;
        tracing::debug!(cmd = %self.display(), "running (detached)");
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(dir) = &self.dir {
            c.current_dir(dir);
        }
        let child = c.spawn().map_err(|e| self.spawn_error(e))?;
        Ok(child.id())
    }

    /// Start with stdin and stdout as pipes the caller talks through (a line protocol over
    /// `ssh`, for instance); stderr is collected for the error message. With a
    /// [`Cmd::timeout`], the program is killed when the conversation outlasts it, so a peer
    /// that stops answering ends the caller's reads instead of blocking them for ever.
    pub fn spawn_piped(&self) -> Result<Piped, RunError> {
        let cmdline = self.display();
        tracing::debug!(cmd = %cmdline, "running (piped)");
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(dir) = &self.dir {
            c.current_dir(dir);
        }
        let mut child = c.spawn().map_err(|e| self.spawn_error(e))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let err_thread = std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = stderr.read_to_string(&mut buf);
            buf
        });
        let child = Arc::new(Mutex::new(child));
        let fired = Arc::new(AtomicBool::new(false));
        let watchdog = self.timeout.map(|limit| {
            let (cancel, cancelled) = mpsc::channel::<()>();
            let (child, fired) = (child.clone(), fired.clone());
            std::thread::spawn(move || {
                // A message or a dropped sender: the conversation ended in time.
                if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(limit) {
                    fired.store(true, Ordering::SeqCst);
                    let _ = lock(&child).kill();
                }
            });
            cancel
        });
        Ok(Piped {
            cmd: self.clone(),
            child,
            stdin: Some(stdin),
            stdout,
            err_thread: Some(err_thread),
            _watchdog: watchdog,
            fired,
        })
    }
}

/// A running command the caller converses with over its stdin and stdout.
#[derive(Debug)]
pub struct Piped {
    cmd: Cmd,
    child: Arc<Mutex<std::process::Child>>,
    stdin: Option<std::process::ChildStdin>,
    pub stdout: std::io::BufReader<std::process::ChildStdout>,
    err_thread: Option<std::thread::JoinHandle<String>>,
    /// Dropped with the conversation, which stands the watchdog down.
    _watchdog: Option<mpsc::Sender<()>>,
    /// The watchdog killed the program.
    fired: Arc<AtomicBool>,
}

fn lock(child: &Mutex<std::process::Child>) -> std::sync::MutexGuard<'_, std::process::Child> {
    child.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Piped {
    /// Write one line (the newline is the caller's) and flush it.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin closed"))?;
        stdin.write_all(line.as_bytes())?;
        stdin.flush()
    }

    /// Read one line; `None` at end of output.
    pub fn recv(&mut self) -> io::Result<Option<String>> {
        use std::io::BufRead;
        let mut line = String::new();
        Ok((self.stdout.read_line(&mut line)? > 0).then_some(line))
    }

    /// Close stdin (the peer sees EOF), wait for the end, fail unless it exited 0.
    pub fn finish(mut self) -> Result<(), RunError> {
        self.stdin = None;
        // Polled, not wait(): the watchdog must be able to take the lock and kill it.
        let status = loop {
            match lock(&self.child).try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => return Err(RunError::Spawn { cmdline: self.cmd.display(), source: e }),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = self.err_thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        if self.fired.load(Ordering::SeqCst) {
            return Err(self.timed_out());
        }
        if status.success() { Ok(()) } else { Err(self.cmd.failure(&Output { status, stdout: String::new(), stderr })) }
    }

    /// The error for a program its time limit ended (its reads then saw end of output).
    pub fn timed_out(&self) -> RunError {
        RunError::TimedOut { cmdline: self.cmd.display(), after: self.cmd.timeout.unwrap_or_default() }
    }

    /// Did the watchdog end it?
    pub fn was_killed_for_time(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// After the conversation broke down (stdout ended early): wait for the program to end,
    /// killing it if it lingers, and return everything it wrote on stderr.
    pub fn stderr_after_end(&mut self) -> String {
        self.stdin = None;
        for _ in 0..50 {
            if let Ok(Some(_)) = lock(&self.child).try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = lock(&self.child).kill();
        let _ = lock(&self.child).wait();
        self.err_thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

/// A running command whose stdout is read as it comes.
#[derive(Debug)]
pub struct Streaming {
    cmd: Cmd,
    reader: duct::ReaderHandle,
}

impl Streaming {
    /// Read the next chunk of stdout; 0 at end of output.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }

    /// Wait for the program to end (draining what is left of stdout) and fail unless it
    /// exited 0.
    pub fn finish(mut self) -> Result<(), RunError> {
        let spawn_err = |cmd: &Cmd, source| RunError::Spawn { cmdline: cmd.display(), source };
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).map_err(|e| spawn_err(&self.cmd, e))?;
        // At end of output duct has already reaped the child.
        let out = match self.reader.try_wait().map_err(|e| spawn_err(&self.cmd, e))? {
            Some(out) => out.clone(),
            None => return Ok(()),
        };
        if out.status.success() {
            Ok(())
        } else {
            Err(self.cmd.failure(&Output {
                status: out.status,
                stdout: String::new(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }))
        }
    }

    /// Stop the program (used when the caller is interrupted or gives up).
    pub fn kill(&self) {
        let _ = self.reader.kill();
    }
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => {
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                if let Some(sig) = status.signal() {
                    return format!("killed by signal {sig}");
                }
            }
            "ended abnormally".to_string()
        }
    }
}

/// The last few non-empty lines of a program's output, indented for an error message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[start..].iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// Quote one word for a POSIX shell, leaving plain words alone so logs stay readable.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piped_program_that_outlasts_its_limit_is_killed_and_says_so() {
        // A peer that greets and then never answers.
        let cmd = Cmd::new("sh").args(["-c", "echo hello; exec sleep 30"]).timeout(Duration::from_millis(300));
        let mut p = cmd.spawn_piped().unwrap();
        assert_eq!(p.recv().unwrap().as_deref(), Some("hello\n"));
        assert_eq!(p.recv().unwrap(), None, "the read ends when the watchdog kills it");
        assert!(p.was_killed_for_time());
        assert!(matches!(p.finish(), Err(RunError::TimedOut { .. })));
    }

    #[test]
    fn a_piped_program_that_ends_in_time_is_left_alone() {
        let cmd = Cmd::new("sh").args(["-c", "read x; echo got $x"]).timeout(Duration::from_secs(30));
        let mut p = cmd.spawn_piped().unwrap();
        p.send("it\n").unwrap();
        assert_eq!(p.recv().unwrap().as_deref(), Some("got it\n"));
        assert!(!p.was_killed_for_time());
        p.finish().unwrap();
    }

    #[test]
    fn quotes_only_words_that_need_it() {
        assert_eq!(shell_quote("qemu-img"), "qemu-img");
        assert_eq!(shell_quote("/a/b.qcow2"), "/a/b.qcow2");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn failure_names_command_status_and_stderr_tail() {
        let err = Cmd::new("sh").args(["-c", "echo out; echo boom >&2; exit 3"]).run().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`sh -c 'echo out; echo boom >&2; exit 3'`"), "{msg}");
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(!msg.contains("out\n"), "stdout is not the reason when stderr has one: {msg}");
    }

    #[test]
    fn missing_program_says_how_to_get_it() {
        let err = Cmd::new("almavmm-no-such-program")
            .hint_if_missing("install it with `apt-get install nothing`")
            .run()
            .unwrap_err();
        assert!(matches!(err, RunError::NotFound { .. }));
        assert_eq!(
            err.to_string(),
            "`almavmm-no-such-program` was not found on PATH; install it with `apt-get install nothing`"
        );
    }

    #[test]
    fn output_returns_nonzero_exit_as_an_answer() {
        let out = Cmd::new("sh").args(["-c", "printf hi; exit 1"]).output().unwrap();
        assert_eq!(out.code(), Some(1));
        assert_eq!(out.stdout, "hi");
    }

    #[test]
    fn stdin_is_fed() {
        let out = Cmd::new("cat").stdin_bytes("abc").run().unwrap();
        assert_eq!(out.stdout, "abc");
    }

    #[test]
    fn timeout_kills() {
        let err = Cmd::new("sleep").arg("5").timeout(Duration::from_millis(100)).run().unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
    }

    #[test]
    fn streamed_failure_is_reported() {
        let mut s = Cmd::new("sh").args(["-c", "echo 1; echo bad >&2; exit 2"]).stream_stdout().unwrap();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        loop {
            let n = s.read_chunk(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"1\n");
        let err = s.finish().unwrap_err().to_string();
        assert!(err.contains("exit status 2") && err.contains("bad"), "{err}");
    }

    #[test]
    fn piped_conversation_and_failure() {
        let mut p = Cmd::new("sh")
            .args(["-c", "while read l; do echo \"got $l\"; done; echo bye >&2; exit 4"])
            .spawn_piped()
            .unwrap();
        p.send("one\n").unwrap();
        assert_eq!(p.recv().unwrap().as_deref(), Some("got one\n"));
        p.send("two\n").unwrap();
        assert_eq!(p.recv().unwrap().as_deref(), Some("got two\n"));
        let err = p.finish().unwrap_err().to_string();
        assert!(err.contains("exit status 4") && err.contains("bye"), "{err}");
    }
}
