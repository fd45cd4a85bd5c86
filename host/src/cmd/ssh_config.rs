//! `almavmm-host ssh-config`: write (or print) the ssh_config fragment that makes
//! `ssh NAME.almavmm` work (see `ssh::config`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::ssh::config::{self, includes_fragment};
use crate::state::home::Home;

#[derive(Debug, Args)]
#[command(after_help = "\
Writes ~/.ssh/config.d/almavmm (or prints it with --print): one `Host NAME.almavmm` block
per guest with its user, key and pinned host key, and one `Host *.almavmm` block with the
on-demand proxy and connection sharing. ssh reads it once ~/.ssh/config has, before its
first Host line:

    Include config.d/almavmm

Then `ssh NAME.almavmm` starts the guest if it is down (and stops it again once the shared
connection has been idle for 10 minutes), and checks the guest's pinned host key. Once the
file exists, `up` and `destroy` keep it current; an unknown NAME gets the list of guests.")]
pub struct SshConfigArgs {
    /// Print the fragment on stdout instead of writing it.
    #[arg(long)]
    pub print: bool,
}

pub fn run(args: SshConfigArgs) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    let exe = crate::agent::locate::own_exe().context("cannot tell where almavmm-host is installed")?;
    let (text, guests) = config::fragment(&home, &exe)?;
    if args.print {
        print!("{text}");
        return Ok(crate::exit::OK);
    }
    let ssh_dir = PathBuf::from(std::env::var_os("HOME").context("HOME is not set; use --print")?).join(".ssh");
    let path = config::fragment_path()?;
    config::write(&path, &text)?;
    eprintln!("wrote {} ({guests} guest{})", path.display(), if guests == 1 { "" } else { "s" });
    let main = std::fs::read_to_string(ssh_dir.join("config")).unwrap_or_default();
    if !includes_fragment(&main) {
        eprintln!(
            "add this line to {} before its first Host line:\n\n    Include config.d/almavmm\n",
            ssh_dir.join("config").display()
        );
    }
    Ok(crate::exit::OK)
}
