//! Opening an existing guest and stopping it, the way every command that does either says
//! it: `stop`, `destroy` and the ssh-proxy's idle stop share this layer, so none of them
//! has to reach into another command.

use std::time::Duration;

use almavmm_shared::wait::Deadline;
use anyhow::bail;

use crate::agent::remote;
use crate::backend::{self, Backend, Endpoint, RunState, StopOutcome};
use crate::proxy::lease;
use crate::ssh::client::{self, Target};
use crate::state::home::Home;
use crate::state::name::VmName;
use crate::state::vm::Vm;

/// How long `start`, `stop` and `destroy` wait for another command that holds the guest: enough for
/// an ssh-proxy's idle stop, whose clean power-off may take its whole timeout, and the
/// forced one after it.
pub const LOCK_WAIT: Duration = Duration::from_secs(crate::proxy::idle::IDLE_STOP_TIMEOUT.as_secs() + 30);

/// An existing guest, ready to act on.
pub struct Guest {
    pub home: Home,
    pub vm: Vm,
    pub backend: Box<dyn Backend>,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest").field("vm", &self.vm.name).finish_non_exhaustive()
    }
}

/// The guest called `name` in the state directory, with its backend.
pub fn open(name: &VmName) -> anyhow::Result<Guest> {
    let home = Home::from_env()?;
    let vm = Vm::load(&home, name)?;
    Guest::of(home, vm)
}

impl Guest {
    /// A guest already loaded, with its backend.
    pub fn of(home: Home, vm: Vm) -> anyhow::Result<Guest> {
        let backend = backend::for_kind(vm.spec.backend, &home)?;
        Ok(Guest { home, vm, backend })
    }

    /// The SSH target of the running guest, if it has an address.
    pub fn target(&self) -> anyhow::Result<Option<Target>> {
        Ok(self.backend.ssh_endpoint(&self.vm)?.map(|ep| Target::for_vm(&self.vm, ep)))
    }
}

/// Stop cleanly (power off from inside over SSH) within `timeout`, by force after it, and
/// say how it went, on stderr and in events.log.
pub fn stop(g: &Guest, timeout: Duration) -> anyhow::Result<StopOutcome> {
    let target = g.target()?;
    let mut poweroff = || -> anyhow::Result<()> {
        match &target {
            Some(t) => Ok(remote::poweroff(t)?),
            None => anyhow::bail!("no address to reach the guest at"),
        }
    };
    let outcome = g.backend.stop(&g.vm, &mut poweroff, timeout)?;
    end_proxies(g);
    match &outcome {
        StopOutcome::AlreadyStopped => eprintln!("{} is not running", g.vm.name),
        StopOutcome::Clean => {
            g.vm.log_event("stopped cleanly");
            eprintln!("{} powered off cleanly", g.vm.name)
        }
        StopOutcome::Forced { why } => {
            g.vm.log_event(&format!("powered off by force: {why}"));
            eprintln!("{} was powered off by force: {why}", g.vm.name)
        }
    }
    Ok(outcome)
}

/// End the ssh-proxies that relay sessions to a guest that is now down: a guest that was
/// powered off by force (vmd) may never close their connections, and their ssh processes
/// (a ControlMaster, say) would sit on them. Proxies waiting to start it are left alone.
fn end_proxies(g: &Guest) {
    for pid in lease::relaying(&g.vm.dir, lease::is_almavmm_process) {
        let Ok(pid) = i32::try_from(pid) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        tracing::debug!("ending ssh-proxy {pid} of {}", g.vm.name);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        g.vm.log_event(&format!("ended ssh-proxy {pid}: the guest is down"));
    }
}

/// Wait for a booting guest's sshd, checking every few seconds that the guest is still
/// running, so that one that crashed or powered off fails now rather than at the timeout.
/// A guest the hypervisor halted is handed once to the backend's recovery (QEMU: TCG after
/// KVM crashed it), which keeps its address.
pub fn wait_sshd(backend: &dyn Backend, vm: &Vm, endpoint: &Endpoint, limit: Duration) -> anyhow::Result<()> {
    let deadline = Deadline::after(limit);
    let mut recovered = false;
    loop {
        let slice = deadline.left().min(Duration::from_secs(5));
        match client::wait_for_banner(endpoint, Duration::from_millis(250), slice) {
            Ok(_) => return Ok(()),
            Err(e) if deadline.passed() => bail!("{e}\n{}", boot_diagnosis(vm)),
            Err(_) => {}
        }
        match backend.state(vm)? {
            RunState::Running | RunState::Unknown => {}
            RunState::Crashed if !recovered => match backend.recover_crashed_boot(vm)? {
                Some(said) => {
                    eprintln!("{said}");
                    recovered = true;
                }
                None => bail!(
                    "{} crashed while booting (the hypervisor reports an internal error or a guest panic)\n{}",
                    vm.name,
                    vm.console_tail(30)
                ),
            },
            RunState::Crashed => bail!(
                "{} crashed while booting, again after a restart (the hypervisor reports an internal error or a \
                 guest panic)\n{}",
                vm.name,
                vm.console_tail(30)
            ),
            other => bail!("{} is {} instead of booting\n{}", vm.name, other.as_str(), vm.console_tail(30)),
        }
    }
}

/// What to tell a user whose guest never answered: the console, and the usual causes.
pub fn boot_diagnosis(vm: &Vm) -> String {
    format!(
        "{}\nLikely causes: the image did not boot (firmware or disk problem: see the console above); the guest has \
         no network (no DHCP lease: on OpenBSD check vmd's `local interface` and pf); sshd failed to start; or the \
         guest is just slow (software emulation): re-run `almavmm-host up {}` to keep waiting.",
        vm.console_tail(30),
        vm.name
    )
}
