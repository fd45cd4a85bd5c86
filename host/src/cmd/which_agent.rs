//! `almavmm-host which-agent` (hidden): which agent `up` would put on a new guest's seed, and
//! where it was found, by `up`'s own lookup. For checking an installed or unpacked release
//! (`cargo xtask dist` runs it from the tree it built) without booting a guest.

use clap::Args;

use crate::state::home::Home;

#[derive(Debug, Args)]
pub struct WhichAgentArgs {}

pub fn run(_args: WhichAgentArgs) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    println!("{}", crate::agent::for_seed(&home, None)?.desc);
    Ok(crate::exit::OK)
}
