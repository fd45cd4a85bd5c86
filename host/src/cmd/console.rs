//! `almavmm-host console NAME`: the guest's serial console (vmd: `vmctl console`).

use clap::Args;

use crate::lifecycle;
use crate::state::name::VmName;

#[derive(Debug, Args)]
#[command(
    after_help = "Type ~. at the start of a line to leave. Everything the console printed since boot is also in the guest's console.log."
)]
pub struct ConsoleArgs {
    /// The guest whose console to attach to.
    pub name: VmName,
}

pub fn run(args: ConsoleArgs) -> anyhow::Result<u8> {
    let g = lifecycle::open(&args.name)?;
    g.backend.console(&g.vm)?;
    Ok(crate::exit::OK)
}
