//! `almavmm-host ssh-proxy HOST PORT`: an OpenSSH ProxyCommand. It starts the guest when it
//! is down, relays the connection, and when the last session is gone stops a guest that it
//! started itself (never one started by hand).
//!
//! stdout belongs to ssh's transport: nothing but relayed bytes is ever written to it.
//! Progress and errors go to stderr.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use almavmm_shared::clock::unix_now;
use almavmm_shared::runner::Cmd;
use almavmm_shared::wait::{Deadline, wait_until};

use crate::backend::RunState;
use crate::clock::{self, human_offset};
use crate::exit::Classified;
use crate::lifecycle;
use crate::proxy::{guest_of_host, idle, lease, relay, start};
use crate::ssh::client::Target;
use crate::state::home::Home;
use crate::state::name::VmName;
use crate::state::vm::{StartedBy, Vm, VmLock};

/// How often the proxy re-measures a guest's clock it did not start itself.
const CLOCK_CHECK_EVERY: u64 = 600;

#[derive(Debug, Args)]
#[command(after_help = "\
Use it through `almavmm-host ssh-config`, or directly:
  ssh -o ProxyCommand='almavmm-host ssh-proxy %h %p' alma.almavmm

A guest that is down is started and the connection relayed as soon as its sshd answers.
When the proxy that started a guest ends and no other proxy session for that guest is
alive, the guest is stopped after --idle. A guest started with `up` or `start` is never
stopped by the proxy. While the session is relayed, the guest's clock is measured on a
connection of its own (after a start, or if it was not measured in the last 10 minutes) and
synced when off by more than 100 ms; the result goes to the guest's events.log.")]
pub struct SshProxyArgs {
    /// Host name as ssh gives it (%h): NAME.almavmm or NAME.
    pub host: String,
    /// Port as ssh gives it (%p); the guest's own sshd port is used.
    pub port: u16,
    /// Idle time before stopping a guest the proxy started: 600, 30s, 10m, 1h.
    #[arg(long, default_value = "10m", value_parser = idle::parse_duration)]
    pub idle: u64,
    /// How long to wait for a stopped guest to boot, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
}

/// `almavmm-host proxy-reaper NAME --idle SECS` (internal): started detached by a proxy
/// when its session ends; stops the guest once it has been idle long enough.
#[derive(Debug, Args)]
pub struct ReaperArgs {
    pub name: VmName,
    #[arg(long)]
    pub idle: u64,
}

/// A line for the person running ssh. With ControlPersist set, ssh points our stderr at
/// /dev/null (sshconnect.c, `ssh_proxy_connect`), so a cold start would be a silent minute:
/// then the line goes to the terminal ssh runs on, if there is one.
fn say(msg: impl std::fmt::Display) {
    use std::io::Write;
    let line = format!("almavmm: {msg}\n");
    if stderr_is_dev_null()
        && let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty")
    {
        let _ = tty.write_all(line.as_bytes());
        return;
    }
    eprint!("{line}");
}

fn stderr_is_dev_null() -> bool {
    let (Ok(err), Ok(null)) = (nix::sys::stat::fstat(std::io::stderr()), nix::sys::stat::stat("/dev/null")) else {
        return false;
    };
    (err.st_dev, err.st_ino, err.st_rdev) == (null.st_dev, null.st_ino, null.st_rdev)
}

pub fn run(args: SshProxyArgs) -> anyhow::Result<u8> {
    // ssh sends SIGHUP to its ProxyCommand when it is done; we still have bookkeeping to do.
    // SAFETY: SIG_IGN installs no handler code; nothing can run concurrently at this point.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn);
    }
    let home = Home::from_env()?;
    let name: VmName = guest_of_host(&args.host).parse().map_err(|_| unknown(&home, &args.host))?;
    if !home.vm_dir(&name).join("vm.yaml").is_file() {
        return Err(unknown(&home, &args.host));
    }
    let g = lifecycle::open(&name)?;
    // Take the lease before anything else: a reaper that wakes up now sees us and waits.
    let lease = lease::take(&g.vm.dir, std::process::id())?;
    let started_here = open_session(&g)?;
    let deadline = Deadline::after(Duration::from_secs(args.timeout));
    let Some(endpoint) = wait_until(deadline, Duration::from_millis(50), || g.backend.ssh_endpoint(&g.vm))? else {
        bail!("{name} is running but has no address after {}s", args.timeout);
    };
    if started_here {
        say(format!("waiting for {name}'s sshd at {endpoint}"));
    }
    // The connection that proves sshd is up (its banner arrived) is the one relayed: no
    // extra connection, which would cost the guest a whole sshd session. Short polls: the
    // relay begins within ~50 ms of sshd answering.
    let left = deadline.left().max(Duration::from_secs(5));
    let answered = relay::connect_answered(&endpoint, Duration::from_millis(50), left).with_context(|| {
        format!("{name}'s SSH server never came up at {endpoint}; see `almavmm-host console {name}`")
    })?;
    if started_here {
        g.vm.log_event("ssh-proxy: sshd answers");
    }
    // The clock is checked on a connection of its own while the session is relayed: the
    // user's first bytes do not wait for it.
    let clock = {
        let (vm, endpoint) = (g.vm.clone(), endpoint.clone());
        std::thread::spawn(move || check_clock(&vm, &endpoint, started_here))
    };
    lease.relaying()?;
    if started_here {
        g.vm.log_event("ssh-proxy: relaying");
    }

    let result = relay::relay_answered(std::io::stdin(), std::io::stdout(), answered);
    release_stdout();
    if started_here {
        g.vm.log_event("ssh-proxy: session ended");
    }

    // Let a clock check that is still under way finish (it is bounded by its ssh's limit),
    // so that every cold start is measured and logged even after a short session.
    let _ = clock.join();
    drop(lease);
    lease::record_end(&g.vm.dir, unix_now());
    if g.vm.state().started_by == StartedBy::Proxy {
        spawn_reaper(&name, args.idle);
    }
    result.context("relaying the SSH connection")?;
    Ok(crate::exit::OK)
}

/// Point fd 1 at /dev/null: the relay is over, and ssh (or its ControlMaster) must see end
/// of file now, not when this process exits after its bookkeeping.
fn release_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

fn unknown(home: &Home, host: &str) -> anyhow::Error {
    Classified::NoSuchGuest { name: guest_of_host(host).to_string(), known: home.guest_names() }.into()
}

/// Decide, under the guest's lock, whether to relay to it as it is or to start it first
/// (the protocol in `proxy/mod.rs`): a stop in progress holds the lock, so we wait for it to
/// end and then start the guest again, and never relay to a guest that is going down.
/// Returns whether this proxy started it.
fn open_session(g: &lifecycle::Guest) -> anyhow::Result<bool> {
    let _lock = g.vm.lock_waiting(lifecycle::LOCK_WAIT)?;
    let provisioned = g.vm.state().provisioned_instance.as_deref() == Some(g.vm.spec.instance_id.as_str());
    match start::plan(g.vm.name.as_str(), g.backend.state(&g.vm)?, provisioned) {
        start::Plan::Relay => Ok(false),
        start::Plan::Refuse(why) => bail!(why),
        start::Plan::Start => {
            say(format!("starting {}", g.vm.name));
            g.backend.define(&g.vm)?;
            g.backend
                .start(&g.vm, crate::backend::AccelChoice::from_env())
                .with_context(|| format!("could not start {}", g.vm.name))?;
            g.vm.update_state(|s| s.started_by = StartedBy::Proxy)?;
            g.vm.log_event("started by ssh-proxy");
            Ok(true)
        }
    }
}

/// Measure the guest's clock when it may have drifted (just booted, or not looked at
/// for a while: the host may have slept since), and sync it when off by more than the
/// warn level. Problems are reported, never fatal: the user wants their shell.
fn check_clock(vm: &Vm, endpoint: &crate::backend::Endpoint, started_here: bool) {
    let now = unix_now();
    let recent = vm.state().last_clock_check.is_some_and(|t| now.saturating_sub(t) < CLOCK_CHECK_EVERY && t <= now);
    if recent && !started_here {
        return;
    }
    match clock::sync_if_off(&Target::for_vm(vm, endpoint.clone())) {
        Ok((before, Some(after))) => {
            let (b, a) = (human_offset(before.offset_ns), human_offset(after.offset_ns));
            say(format!("{}'s clock was off by {b}; synced (now {a})", vm.name));
            vm.log_event(&format!("clock synced by ssh-proxy: {b} -> {a}"));
        }
        Ok((before, None)) => {
            vm.log_event(&format!("clock checked by ssh-proxy: {} off, no sync needed", human_offset(before.offset_ns)))
        }
        Err(e) => {
            say(format!("could not check {}'s clock: {e}", vm.name));
            vm.log_event(&format!("clock check by ssh-proxy failed: {e}"));
        }
    }
    let _ = vm.update_state(|s| s.last_clock_check = Some(now));
}

fn spawn_reaper(name: &VmName, idle: u64) {
    let Ok(exe) = std::env::current_exe() else { return };
    let cmd = Cmd::new(exe).args(["proxy-reaper", name.as_str(), "--idle", &idle.to_string()]);
    if let Err(e) = cmd.spawn_detached() {
        say(format!("cannot schedule the idle stop of {name}: {e}"));
    }
}

pub fn reap(args: ReaperArgs) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    let vm = Vm::load(&home, &args.name)?;
    loop {
        let decision = {
            let st = vm.state();
            let live = lease::live(&vm.dir, lease::is_almavmm_process).len();
            idle::decide(st.started_by, live, lease::last_end(&vm.dir), unix_now(), args.idle)
        };
        match decision {
            idle::Decision::Keep => {
                if vm.state().started_by == StartedBy::Proxy {
                    vm.log_event("ssh-proxy idle check: a session is live, keeping it running");
                }
                return Ok(crate::exit::OK);
            }
            idle::Decision::WaitMore(secs) => std::thread::sleep(Duration::from_secs(secs.max(1))),
            idle::Decision::Stop => return stop_if_still_idle(&home, &vm, args.idle),
        }
    }
}

/// Stop under the guest's lock, deciding once more inside it: a proxy may have started a
/// session between our decision and the lock.
fn stop_if_still_idle(home: &Home, vm: &Vm, idle_secs: u64) -> anyhow::Result<u8> {
    let Ok(_lock) = VmLock::acquire_wait(&vm.lock_path(), vm.name.as_str(), Duration::from_secs(30)) else {
        return Ok(crate::exit::OK);
    };
    let live = lease::live(&vm.dir, lease::is_almavmm_process).len();
    let st = vm.state();
    if idle::decide(st.started_by, live, lease::last_end(&vm.dir), unix_now(), idle_secs) != idle::Decision::Stop {
        return Ok(crate::exit::OK);
    }
    let g = lifecycle::Guest::of(home.clone(), vm.clone())?;
    if g.backend.state(&g.vm)? == RunState::Running {
        vm.log_event("stopping: idle after the last ssh-proxy session");
        lifecycle::stop(&g, idle::IDLE_STOP_TIMEOUT)?;
    }
    Ok(crate::exit::OK)
}
