//! Hypervisor backends: one trait, one implementation per hypervisor.
//!
//! `vmd` drives OpenBSD's vmd(8) through vmctl(8); `qemu` drives qemu-system-x86_64 on
//! Linux. Everything above this module (up, doctor, ssh-proxy) speaks only the trait.

pub mod qemu;
pub mod vmd;

pub use qemu::accel::AccelChoice;

use std::time::Duration;

use almavmm_shared::runner::RunError;

use crate::state::spec::BackendKind;
use crate::state::vm::Vm;

/// Where the guest's sshd can be reached from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port == 22 { write!(f, "{}", self.host) } else { write!(f, "{}:{}", self.host, self.port) }
    }
}

/// What the hypervisor says about a guest. vmd's states (vmctl.c) plus "not defined".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Paused,
    Stopped,
    /// vmd: waiting for a resource before it can start.
    Waiting,
    Stopping,
    /// The hypervisor knows the guest but cannot say.
    Unknown,
    /// The hypervisor does not know the guest at all (vmd: no row in `vmctl status`).
    Undefined,
    /// The hypervisor halted it after an error (QEMU: internal-error, guest-panicked).
    Crashed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopped => "stopped",
            RunState::Waiting => "waiting",
            RunState::Stopping => "stopping",
            RunState::Unknown => "unknown",
            RunState::Undefined => "undefined",
            RunState::Crashed => "crashed",
        }
    }
    /// Anything but a clean "off": a process exists or is on its way.
    pub fn is_up(self) -> bool {
        matches!(
            self,
            RunState::Running | RunState::Paused | RunState::Waiting | RunState::Stopping | RunState::Crashed
        )
    }
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    AlreadyStopped,
    /// The guest powered itself off.
    Clean,
    /// It did not within the timeout; it was powered off hard.
    Forced {
        why: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Qmp(#[from] qemu::qmp::QmpError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Message(String),
}

impl BackendError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
        let context = context.into();
        move |source| BackendError::Io { context, source }
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// Asks the guest to power itself off (over SSH); used by backends without a clean
/// hypervisor-side shutdown.
pub type GuestPoweroff<'a> = &'a mut dyn FnMut() -> anyhow::Result<()>;

/// What runs the guest, as far as its clock is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hypervisor {
    /// OpenBSD vmm: offers a paravirtual clock (vmm's pvclock, and kvm-clock on newer hosts).
    Vmd,
    /// QEMU with KVM: offers kvm-clock.
    QemuKvm,
    /// QEMU with software emulation: no paravirtual clock at all.
    QemuTcg,
}

pub trait Backend {
    fn kind(&self) -> BackendKind;

    /// What the guest will find itself running on.
    fn hypervisor(&self) -> Hypervisor {
        Hypervisor::Vmd
    }

    /// Can this backend run guests here? Ok: a one-line description (version, accelerator);
    /// Err: what is missing and how to get it.
    fn check(&self) -> Result<String>;

    /// Make the hypervisor know the guest (vmd: its vm.conf entry). Idempotent.
    fn define(&self, vm: &Vm) -> Result<()>;

    /// Forget the guest (vmd: remove its vm.conf entry). The guest must be stopped.
    fn undefine(&self, vm: &Vm) -> Result<()>;

    /// Boot the guest. `accel` is QEMU's (vmd has only vmm(4)).
    fn start(&self, vm: &Vm, accel: AccelChoice) -> Result<()>;

    /// A guest that the hypervisor halted while booting, before its sshd answered: if the
    /// backend knows a way that works (QEMU: TCG instead of a KVM that passed the probe
    /// but cannot run this guest), start it again that way and say so in one line.
    fn recover_crashed_boot(&self, _vm: &Vm) -> Result<Option<String>> {
        Ok(None)
    }

    /// What this guest finds itself running on (QEMU: its run's accelerator).
    fn guest_hypervisor(&self, _vm: &Vm) -> Hypervisor {
        self.hypervisor()
    }

    fn state(&self, vm: &Vm) -> Result<RunState>;

    /// Where its sshd listens, once known.
    fn ssh_endpoint(&self, vm: &Vm) -> Result<Option<Endpoint>>;

    /// Stop cleanly within `timeout`, hard after that.
    fn stop(&self, vm: &Vm, poweroff: GuestPoweroff<'_>, timeout: Duration) -> Result<StopOutcome>;

    /// Attach the terminal to the guest's serial console until the user leaves.
    fn console(&self, vm: &Vm) -> Result<()>;

    /// Host checks particular to this backend, for `doctor` (vmd: firmware, forwarding,
    /// pf, resume hook).
    fn host_checks(&self) -> Vec<crate::check::Check> {
        Vec::new()
    }

    /// Host-side checks of one guest (vmd: its tap interface is up).
    fn guest_host_checks(&self, _vm: &Vm) -> Vec<crate::check::Check> {
        Vec::new()
    }
}

/// The backend for a kind.
pub fn for_kind(kind: BackendKind, home: &crate::state::home::Home) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Qemu => Ok(Box::new(qemu::Qemu::new(home.clone()))),
        BackendKind::Vmd => Ok(Box::new(vmd::Vmd::new(home.clone()))),
    }
}
