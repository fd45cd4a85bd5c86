//! The QEMU backend (Linux): one qemu-system-x86_64 process per running guest, daemonized,
//! with its pid file, QMP socket, serial socket and console log in the guest's folder.

pub mod accel;
pub mod cmdline;
pub mod console;
pub mod qmp;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use almavmm_shared::runner::Cmd;
use almavmm_shared::wait::{Deadline, wait_until};

use super::{Backend, BackendError, Endpoint, GuestPoweroff, Result, RunState, StopOutcome};
use crate::check::{Check, Group, Status};
use crate::state::home::Home;
use crate::state::spec::BackendKind;
use crate::state::vm::{AccelUsed, Vm};

const QEMU: &str = "qemu-system-x86_64";
const QEMU_HINT: &str =
    "install it with `apt-get install qemu-system-x86 qemu-utils` (Debian/Ubuntu) or `dnf install qemu-kvm` (Fedora)";
/// Unix socket paths must fit `sockaddr_un.sun_path` (108 bytes on Linux, 104 on BSD).
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug)]
pub struct Qemu {
    home: Home,
}

impl Qemu {
    pub fn new(home: Home) -> Qemu {
        Qemu { home }
    }

    /// The accelerator a new guest of `memory_mib` would get under auto.
    pub fn accel(&self, memory_mib: u64) -> accel::Accel {
        accel::detect(QEMU, self.home.root(), memory_mib)
    }

    fn pidfile(vm: &Vm) -> PathBuf {
        vm.dir.join("qemu.pid")
    }
    pub fn qmp_socket(vm: &Vm) -> PathBuf {
        vm.dir.join("qmp.sock")
    }
    pub fn console_socket(vm: &Vm) -> PathBuf {
        vm.dir.join("console.sock")
    }

    /// The pid of the guest's QEMU if it is alive.
    fn pid(vm: &Vm) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(Self::pidfile(vm)).ok()?.trim().parse().ok()?;
        process_is_ours(pid, vm.name.as_str()).then_some(pid)
    }

    /// Open QMP to a running guest.
    pub fn qmp(vm: &Vm) -> Result<qmp::Qmp> {
        Ok(qmp::Qmp::connect(&Self::qmp_socket(vm))?)
    }
}

/// Is `pid` alive and the QEMU of guest `name`? (A stale pid file may name a recycled pid.)
fn process_is_ours(pid: i32, name: &str) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(raw) => raw.split(|b| *b == 0).any(|arg| arg == format!("{name},process=almavmm-{name}").as_bytes()),
            Err(_) => false,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = name;
        true
    }
}

/// A free TCP port on 127.0.0.1, chosen by the kernel.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn check_path(p: &Path, what: &str) -> Result<()> {
    let s = p.display().to_string();
    if s.contains(',') {
        return Err(BackendError::Message(format!(
            "{what} {s} contains a comma, which QEMU's option syntax cannot take; set ALMAVMM_HOME to a path without one"
        )));
    }
    Ok(())
}

fn check_socket_path(p: &Path) -> Result<()> {
    if p.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(BackendError::Message(format!(
            "the socket path {} is too long for a unix socket ({} bytes, at most {MAX_SOCKET_PATH}); set ALMAVMM_HOME to a shorter path",
            p.display(),
            p.as_os_str().len()
        )));
    }
    Ok(())
}

impl Backend for Qemu {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn hypervisor(&self) -> super::Hypervisor {
        match self.accel(PROBE_MEMORY_MIB) {
            accel::Accel::Kvm => super::Hypervisor::QemuKvm,
            accel::Accel::Tcg { .. } => super::Hypervisor::QemuTcg,
        }
    }

    fn guest_hypervisor(&self, vm: &Vm) -> super::Hypervisor {
        match vm.state().accel.filter(|_| Self::pid(vm).is_some()) {
            Some(a) if a.name == "tcg" => super::Hypervisor::QemuTcg,
            Some(_) => super::Hypervisor::QemuKvm,
            None => self.hypervisor(),
        }
    }

    fn check(&self) -> Result<String> {
        let out = Cmd::new(QEMU).arg("--version").hint_if_missing(QEMU_HINT).run()?;
        let version = out.stdout.lines().next().unwrap_or("").trim().to_string();
        Ok(format!("{version}; {}", self.accel(PROBE_MEMORY_MIB).describe()))
    }

    fn define(&self, _vm: &Vm) -> Result<()> {
        // QEMU needs no registration: the command line is the definition.
        Ok(())
    }

    fn undefine(&self, vm: &Vm) -> Result<()> {
        for p in [Self::qmp_socket(vm), Self::console_socket(vm), Self::pidfile(vm)] {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    fn start(&self, vm: &Vm, choice: accel::AccelChoice) -> Result<()> {
        self.launch(vm, choice, None)
    }

    fn state(&self, vm: &Vm) -> Result<RunState> {
        if Self::pid(vm).is_none() {
            return Ok(RunState::Stopped);
        }
        let status = Self::qmp(vm).and_then(|mut q| Ok(q.status()?));
        Ok(match status.as_deref() {
            Ok("running") => RunState::Running,
            Ok("paused") | Ok("suspended") | Ok("prelaunch") | Ok("inmigrate") => RunState::Paused,
            Ok("shutdown") => RunState::Stopping,
            Ok("internal-error") | Ok("guest-panicked") | Ok("io-error") => RunState::Crashed,
            Ok(_) | Err(_) => RunState::Unknown,
        })
    }

    fn ssh_endpoint(&self, vm: &Vm) -> Result<Option<Endpoint>> {
        if Self::pid(vm).is_none() {
            return Ok(None);
        }
        Ok(vm.state().ssh_port.map(|port| Endpoint { host: "127.0.0.1".into(), port }))
    }

    fn stop(&self, vm: &Vm, _poweroff: GuestPoweroff<'_>, timeout: Duration) -> Result<StopOutcome> {
        let Some(pid) = Self::pid(vm) else { return Ok(StopOutcome::AlreadyStopped) };
        let status = Self::qmp(vm).and_then(|mut q| Ok(q.status()?));
        if let Ok(halted @ ("internal-error" | "guest-panicked" | "shutdown")) = status.as_deref() {
            // Nothing in there can react to the power button: end QEMU at once.
            self.end_process(vm, pid)?;
            return Ok(StopOutcome::Forced {
                why: format!("it was halted (QMP status {halted}), so QEMU was ended without waiting"),
            });
        }
        // ACPI power button: the guest's logind shuts it down cleanly.
        let asked = Self::qmp(vm).and_then(|mut q| Ok(q.execute("system_powerdown", None)?));
        let why = match asked {
            Ok(_) if wait_exit(pid, vm, timeout) => return Ok(StopOutcome::Clean),
            Ok(_) => format!("the guest did not power off within {}s of the ACPI power button", timeout.as_secs()),
            Err(e) => format!("could not press the ACPI power button: {e}"),
        };
        self.end_process(vm, pid)?;
        Ok(StopOutcome::Forced { why })
    }

    fn recover_crashed_boot(&self, vm: &Vm) -> Result<Option<String>> {
        let Some(pid) = Self::pid(vm) else { return Ok(None) };
        let Ok(halted) = Self::qmp(vm).and_then(|mut q| Ok(q.status()?)) else { return Ok(None) };
        if !falls_back_to_tcg(vm.state().accel.as_ref(), &halted) {
            return Ok(None);
        }
        let why = format!("KVM passed the probe but stopped a real guest ({halted}) before it booted");
        accel::remember_failure(self.home.root(), &why);
        vm.log_event(&format!("crashed under KVM ({halted}) while booting; starting again under TCG"));
        let port = vm.state().ssh_port;
        self.end_process(vm, pid)?;
        // The same port: whoever waits for this guest's sshd keeps its address.
        self.launch(vm, accel::AccelChoice::Auto, port)?;
        Ok(Some(format!(
            "{} stopped under KVM ({halted}) before its sshd answered; started it again under TCG (software \
             emulation, slower). Guests use TCG on this host until it reboots.",
            vm.name
        )))
    }

    fn guest_host_checks(&self, vm: &Vm) -> Vec<Check> {
        let Some(used) = vm.state().accel.filter(|_| Self::pid(vm).is_some()) else { return Vec::new() };
        vec![accel_check(vm.name.as_str(), &used)]
    }

    fn console(&self, vm: &Vm) -> Result<()> {
        if Self::pid(vm).is_none() {
            return Err(BackendError::Message(format!(
                "{} is not running; its last console output is in {}",
                vm.name,
                vm.console_log().display()
            )));
        }
        console::attach(&Self::console_socket(vm), vm.name.as_str())
    }
}

impl Qemu {
    /// Start QEMU for `vm` under `choice`, forwarding `port` (a free one if none).
    fn launch(&self, vm: &Vm, choice: accel::AccelChoice, port: Option<u16>) -> Result<()> {
        if let Some(pid) = Self::pid(vm) {
            return Err(BackendError::Message(format!("{} is already running (qemu pid {pid})", vm.name)));
        }
        let disk = vm.disk();
        if !disk.is_file() {
            return Err(BackendError::Message(format!("{} has no disk at {}", vm.name, disk.display())));
        }
        for p in [disk.as_path(), vm.seed().as_path(), vm.console_log().as_path()] {
            check_path(p, "path")?;
        }
        for s in [Self::qmp_socket(vm), Self::console_socket(vm)] {
            check_socket_path(&s)?;
            check_path(&s, "socket path")?;
            let _ = std::fs::remove_file(&s);
        }
        let accel = accel::resolve(choice, QEMU, self.home.root(), vm.spec.memory.as_mib());
        if let accel::Accel::Tcg { why } = &accel {
            tracing::warn!("{}: no usable KVM ({why}): running under TCG, software emulation", vm.name);
        }
        let used = AccelUsed {
            name: accel.qemu_name().to_string(),
            why: match &accel {
                accel::Accel::Tcg { why } => Some(why.clone()),
                accel::Accel::Kvm => None,
            },
            auto: choice == accel::AccelChoice::Auto,
        };
        let port = match port {
            Some(p) => p,
            None => free_port().map_err(BackendError::io("cannot find a free port on 127.0.0.1"))?,
        };
        let launch = cmdline::Launch {
            name: vm.name.to_string(),
            memory_mib: vm.spec.memory.as_mib(),
            cpus: vm.spec.cpus,
            accel,
            disk,
            seed: Some(vm.seed()).filter(|s| s.is_file()),
            ssh_port: port,
            qmp_socket: Self::qmp_socket(vm),
            console_socket: Self::console_socket(vm),
            console_log: vm.console_log(),
            pidfile: Self::pidfile(vm),
        };
        let cmd =
            Cmd::new(QEMU).args(cmdline::args(&launch)).hint_if_missing(QEMU_HINT).timeout(Duration::from_secs(120));
        cmd.run().map_err(|e| match &e {
            almavmm_shared::runner::RunError::Failed { stderr_tail, .. }
                if stderr_tail.contains("hostfwd") || stderr_tail.contains("host forwarding") =>
            {
                BackendError::Message(format!(
                    "QEMU could not forward 127.0.0.1:{port} to the guest's sshd (port taken in the meantime?); run the command again\n{e}"
                ))
            }
            _ => BackendError::Run(e),
        })?;
        let now = Some(almavmm_shared::clock::unix_now());
        vm.update_state(|s| {
            s.ssh_port = Some(port);
            s.started_at = now;
            s.accel = Some(used);
        })
        .map_err(BackendError::io("cannot record the guest's state"))?;
        Ok(())
    }

    /// QMP `quit`, then SIGKILL if QEMU is still there; then forget its sockets.
    fn end_process(&self, vm: &Vm, pid: i32) -> Result<()> {
        let _ = Self::qmp(vm).and_then(|mut q| Ok(q.execute("quit", None)?));
        if !wait_exit(pid, vm, Duration::from_secs(10)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            wait_exit(pid, vm, Duration::from_secs(5));
        }
        self.undefine(vm)
    }
}

/// Should a guest in QMP status `halted` be started again under TCG? Only when auto chose
/// KVM for it (a KVM the user asked for is theirs to judge) and KVM stopped it with an
/// error: a guest that merely shut down or paused is not KVM's fault.
pub fn falls_back_to_tcg(used: Option<&AccelUsed>, halted: &str) -> bool {
    used.is_some_and(|a| a.auto && a.name == "kvm") && matches!(halted, "internal-error" | "guest-panicked")
}

/// Memory for the probe behind `doctor`'s and `check`'s answers, where no guest is named:
/// the size `up` gives a guest by default.
const PROBE_MEMORY_MIB: u64 = 2048;

/// `host.accel`: what a running guest's QEMU uses, and why.
pub fn accel_check(name: &str, used: &AccelUsed) -> Check {
    let how = if used.auto { "chosen by --accel auto" } else { "asked for with --accel" };
    match (used.name.as_str(), &used.why) {
        ("kvm", _) => Check::new(Group::Host, "host.accel", Status::Ok, format!("{name} runs under KVM ({how})")),
        (_, why) => Check::new(
            Group::Host,
            "host.accel",
            Status::Warn,
            format!(
                "{name} runs under TCG, software emulation ({}); it is slower and has no paravirtual clock",
                why.as_deref().unwrap_or(how)
            ),
        )
        .fix("make /dev/kvm usable (a host reboot clears a remembered KVM failure), then restart the guest"),
    }
}

/// Wait for the QEMU process to be gone, with short polls.
fn wait_exit(pid: i32, vm: &Vm, timeout: Duration) -> bool {
    let gone = || Ok::<_, Infallible>((!process_is_ours(pid, vm.name.as_str())).then_some(()));
    matches!(wait_until(Deadline::after(timeout), Duration::from_millis(100), gone), Ok(Some(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_auto_kvm_guest_halted_by_an_error_falls_back() {
        let used = |name: &str, auto| AccelUsed { name: name.into(), why: None, auto };
        assert!(falls_back_to_tcg(Some(&used("kvm", true)), "internal-error"));
        assert!(falls_back_to_tcg(Some(&used("kvm", true)), "guest-panicked"));
        assert!(!falls_back_to_tcg(Some(&used("kvm", false)), "internal-error"), "--accel kvm: no second guess");
        assert!(!falls_back_to_tcg(Some(&used("tcg", true)), "internal-error"), "already under TCG");
        assert!(!falls_back_to_tcg(Some(&used("kvm", true)), "shutdown"));
        assert!(!falls_back_to_tcg(Some(&used("kvm", true)), "running"));
        assert!(!falls_back_to_tcg(None, "internal-error"), "a guest from before accel was recorded");
    }

    #[test]
    fn the_accel_check_says_which_and_why() {
        let kvm = accel_check("alma", &AccelUsed { name: "kvm".into(), why: None, auto: true });
        assert_eq!((kvm.status, kvm.finding.as_str()), (Status::Ok, "alma runs under KVM (chosen by --accel auto)"));
        let why = "KVM passed the probe but stopped a real guest (internal-error) before it booted";
        let tcg = accel_check("alma", &AccelUsed { name: "tcg".into(), why: Some(why.into()), auto: true });
        assert_eq!(tcg.status, Status::Warn);
        assert!(tcg.finding.contains(why) && tcg.fix.is_some(), "{tcg:?}");
    }
}
