//! `almavmm-host stop NAME`: power a guest off cleanly, by force only after a timeout.

use std::time::Duration;

use clap::Args;

use super::common;
use crate::agent::remote;
use crate::backend::StopOutcome;
use crate::state::name::VmName;

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The guest to stop.
    pub name: VmName,
    /// Seconds to wait for a clean power-off before forcing it.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub timeout: u64,
}

pub fn run(args: StopArgs) -> anyhow::Result<u8> {
    let g = common::open(&args.name)?;
    let _lock = g.vm.lock_waiting(common::LOCK_WAIT)?;
    stop(&g, Duration::from_secs(args.timeout))?;
    Ok(crate::exit::OK)
}

/// Stop and say how it went (shared with destroy and the ssh-proxy).
pub fn stop(g: &common::Guest, timeout: Duration) -> anyhow::Result<StopOutcome> {
    let target = g.target()?;
    let mut poweroff = || -> anyhow::Result<()> {
        match &target {
            Some(t) => Ok(remote::poweroff(t)?),
            None => anyhow::bail!("no address to reach the guest at"),
        }
    };
    let outcome = g.backend.stop(&g.vm, &mut poweroff, timeout)?;
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
