//! `almavmm-host start NAME`: boot an existing guest and wait until its sshd answers.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::backend::{AccelChoice, RunState};
use crate::lifecycle;
use crate::state::name::VmName;
use crate::state::vm::StartedBy;

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The guest to start.
    pub name: VmName,
    /// Seconds to wait for its sshd to answer (0: do not wait).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,

    /// QEMU accelerator: auto uses KVM when a test guest runs under it, and restarts a guest
    /// that crashes under KVM before its sshd answered under TCG (remembered until the
    /// host reboots); kvm and tcg force one. vmd has vmm(4) only.
    #[arg(long, value_enum, env = "ALMAVMM_ACCEL", default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
}

pub fn run(args: StartArgs) -> anyhow::Result<u8> {
    let g = lifecycle::open(&args.name)?;
    let _lock = g.vm.lock_waiting(lifecycle::LOCK_WAIT)?;
    if g.vm.state().provisioned_instance.as_deref() != Some(g.vm.spec.instance_id.as_str()) {
        bail!("{} was never brought up completely; run `almavmm-host up {}`", g.vm.name, g.vm.name);
    }
    match g.backend.state(&g.vm)? {
        RunState::Running => {
            // Whoever started it, a person now wants it running: the proxy must not stop it.
            g.vm.update_state(|s| s.started_by = StartedBy::Hand)?;
            eprintln!("{} is already running; it stays up until you stop it", g.vm.name);
            return Ok(crate::exit::OK);
        }
        RunState::Paused => bail!("{} is paused, not stopped", g.vm.name),
        _ => {}
    }
    g.backend.define(&g.vm)?;
    g.backend.start(&g.vm, args.accel)?;
    // Started by a person: the ssh-proxy must never stop it.
    g.vm.update_state(|s| s.started_by = StartedBy::Hand)?;
    g.vm.log_event("started by hand");
    eprintln!("{} started", g.vm.name);
    if args.timeout > 0 {
        let Some(t) = g.target()? else { bail!("{} started but has no address", g.vm.name) };
        lifecycle::wait_sshd(g.backend.as_ref(), &g.vm, &t.endpoint, Duration::from_secs(args.timeout))?;
        eprintln!("{}'s sshd answers at {}", g.vm.name, t.endpoint);
    }
    Ok(crate::exit::OK)
}
