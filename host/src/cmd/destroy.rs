//! `almavmm-host destroy NAME`: stop a guest and delete it (disk, seed, keys, logs). The
//! shared base image it was made from stays in the image cache.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::lifecycle;
use crate::state::name::VmName;

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The guest to delete.
    pub name: VmName,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub fn run(args: DestroyArgs) -> anyhow::Result<u8> {
    let g = lifecycle::open(&args.name)?;
    // Like stop: right after an idle stop, the proxy's reaper may still hold the guest.
    let _lock = g.vm.lock_waiting(lifecycle::LOCK_WAIT)?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!("refusing to destroy {} without confirmation: pass --yes", g.vm.name);
        }
        eprint!(
            "Destroy {} and delete its disk {}? Type the guest's name to confirm: ",
            g.vm.name,
            g.vm.disk().display()
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != g.vm.name.as_str() {
            bail!("not confirmed; {} is untouched", g.vm.name);
        }
    }
    lifecycle::stop(&g, Duration::from_secs(60))?;
    g.backend.undefine(&g.vm)?;
    std::fs::remove_dir_all(&g.vm.dir)?;
    if let Some(exe) = crate::agent::locate::own_exe() {
        crate::ssh::config::refresh(&g.home, &exe);
    }
    eprintln!("{} destroyed (its base image stays in {})", g.vm.name, g.home.images_dir().display());
    Ok(crate::exit::OK)
}
