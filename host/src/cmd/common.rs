//! What several commands do first: find the state directory, the guest and its backend.

use crate::backend::{self, Backend};
use crate::ssh::client::Target;
use crate::state::home::Home;
use crate::state::name::VmName;
use crate::state::vm::Vm;

/// How long `start` and `stop` wait for another command that holds the guest: enough for
/// an ssh-proxy's idle stop, whose clean power-off may take its whole timeout, and the
/// forced one after it.
pub const LOCK_WAIT: std::time::Duration =
    std::time::Duration::from_secs(super::ssh_proxy::IDLE_STOP_TIMEOUT.as_secs() + 30);

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

pub fn open(name: &VmName) -> anyhow::Result<Guest> {
    let home = Home::from_env()?;
    let vm = Vm::load(&home, name)?;
    let backend = backend::for_kind(vm.spec.backend, &home)?;
    Ok(Guest { home, vm, backend })
}

impl Guest {
    /// The SSH target of the running guest, if it has an address.
    pub fn target(&self) -> anyhow::Result<Option<Target>> {
        Ok(self.backend.ssh_endpoint(&self.vm)?.map(|ep| Target::for_vm(&self.vm, ep)))
    }
}
