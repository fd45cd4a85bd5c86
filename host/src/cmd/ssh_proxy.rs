//! `almavmm-host ssh-proxy HOST PORT`: an OpenSSH ProxyCommand. It starts the guest when it
//! is down, relays the connection, and when the last session is gone stops a guest that it
//! started itself (never one started by hand).
//!
//! stdout belongs to ssh's transport: nothing but relayed bytes is ever written to it.
//! Progress and errors go to stderr.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use almavmm_shared::runner::Cmd;

use super::common;
use crate::backend::RunState;
use crate::clock::{self, human_offset};
use crate::exit::Classified;
use crate::proxy::{guest_of_host, idle, lease, relay};
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
stopped by the proxy. Before relaying, the guest's clock is measured (after a start, or if
it was not measured in the last 10 minutes) and synced when off by more than 100 ms.")]
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

fn say(msg: impl std::fmt::Display) {
    eprintln!("almavmm: {msg}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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
    let g = common::open(&name)?;
    // Take the lease before anything else: a reaper that wakes up now sees us and waits.
    let lease = lease::take(&g.vm.dir, std::process::id())?;
    let started_here = ensure_running(&g, Duration::from_secs(args.timeout))?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let endpoint = loop {
        if let Some(ep) = g.backend.ssh_endpoint(&g.vm)? {
            break ep;
        }
        if Instant::now() >= deadline {
            bail!("{name} is running but has no address after {}s", args.timeout);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if started_here {
        say(format!("waiting for {name}'s sshd at {endpoint}"));
    }
    // The connection that proves sshd is up (its banner arrived) is the one relayed: no
    // extra connection, which would cost the guest a whole sshd session. Short polls: the
    // relay begins within ~50 ms of sshd answering.
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
    let answered = relay::connect_answered(&endpoint, Duration::from_millis(50), left).with_context(|| {
        format!("{name}'s SSH server never came up at {endpoint}; see `almavmm-host console {name}`")
    })?;
    if started_here {
        g.vm.log_event("ssh-proxy: sshd answers");
    }
    check_clock(&g.vm, &endpoint, started_here);
    if started_here {
        g.vm.log_event("ssh-proxy: relaying");
    }

    let result = relay::relay_answered(std::io::stdin(), std::io::stdout(), answered);

    drop(lease);
    lease::record_end(&g.vm.dir, unix_now());
    if g.vm.state().started_by == StartedBy::Proxy {
        spawn_reaper(&name, args.idle);
    }
    result.context("relaying the SSH connection")?;
    Ok(crate::exit::OK)
}

fn unknown(home: &Home, host: &str) -> anyhow::Error {
    Classified::NoSuchGuest { name: guest_of_host(host).to_string(), known: home.guest_names() }.into()
}

/// Start the guest if it is down. Concurrent proxies serialise on the guest's lock, so only
/// one of them starts it. Returns whether this proxy started it.
fn ensure_running(g: &common::Guest, limit: Duration) -> anyhow::Result<bool> {
    if g.backend.state(&g.vm)? == RunState::Running {
        return Ok(false);
    }
    let _lock = VmLock::acquire_wait(&g.vm.lock_path(), g.vm.name.as_str(), limit)?;
    match g.backend.state(&g.vm)? {
        RunState::Running => Ok(false),
        RunState::Paused => bail!("{} is paused; resume it first", g.vm.name),
        _ => {
            if g.vm.state().provisioned_instance.as_deref() != Some(g.vm.spec.instance_id.as_str()) {
                bail!("{} was never brought up completely; run `almavmm-host up {}`", g.vm.name, g.vm.name);
            }
            say(format!("starting {}", g.vm.name));
            g.backend.define(&g.vm)?;
            g.backend.start(&g.vm).with_context(|| format!("could not start {}", g.vm.name))?;
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
        Ok((_, None)) => {}
        Err(e) => say(format!("could not check {}'s clock: {e}", vm.name)),
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

/// How long an idle stop waits for a clean power-off before forcing it.
pub const IDLE_STOP_TIMEOUT: Duration = Duration::from_secs(120);

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
    let g =
        common::Guest { home: home.clone(), vm: vm.clone(), backend: crate::backend::for_kind(vm.spec.backend, home)? };
    if g.backend.state(&g.vm)? == RunState::Running {
        vm.log_event("stopping: idle after the last ssh-proxy session");
        super::stop::stop(&g, IDLE_STOP_TIMEOUT)?;
    }
    Ok(crate::exit::OK)
}
