//! `almavmm-host stop NAME`: power a guest off cleanly, by force only after a timeout.

use std::time::Duration;

use clap::Args;

use crate::lifecycle;
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
    let g = lifecycle::open(&args.name)?;
    let _lock = g.vm.lock_waiting(lifecycle::LOCK_WAIT)?;
    lifecycle::stop(&g, Duration::from_secs(args.timeout))?;
    Ok(crate::exit::OK)
}
