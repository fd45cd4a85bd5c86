//! `almavmm-host seed`: write a cloud-init seed ISO by hand, for booting a guest without
//! `up` (for example with `vmctl start -r seed.iso`).

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::seed::{self, AgentPayload, Checksummed, SeedInputs};
use crate::ssh::keys;
use crate::state::name::VmName;
use crate::ui;
use almavmm_shared::atomic::{self, Durability};

#[derive(Debug, Args)]
#[command(after_help = "\
The seed carries a freshly generated ed25519 host key for the guest. Its public half is
pinned in a known_hosts file written beside the ISO (seed.iso -> seed.known_hosts), so the
first SSH connection is already verified; the private half exists only inside the ISO.

Example:
  almavmm-host seed alma --ssh-key ~/.ssh/id_ed25519.pub --agent ./almavmm-agent -o alma-seed.iso
  vmctl start -m 2G -L -d alma.qcow2 -r alma-seed.iso alma")]
pub struct SeedArgs {
    /// Guest name: letters, digits, '.', '-', '_' (not first), under 64 characters.
    pub name: VmName,

    /// Your SSH public key, installed for the login user.
    #[arg(long, value_name = "PATH")]
    pub ssh_key: PathBuf,

    /// Where to write the ISO.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,

    /// Login user created in the guest, with passwordless sudo.
    #[arg(long, default_value = "almalinux")]
    pub user: String,

    /// Guest hostname [default: the guest name, made hostname-safe].
    #[arg(long)]
    pub hostname: Option<String>,

    /// almavmm-agent binary (static Linux x86_64) to install in the guest.
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,

    /// Replace the ISO and known_hosts file if they exist.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: SeedArgs) -> anyhow::Result<u8> {
    // The agent first, so a wrong --agent is refused before anything else is done.
    let agent = match &args.agent {
        Some(p) => AgentPayload::Binary(Checksummed::file(open_agent(p)?)?),
        None => AgentPayload::Missing,
    };
    let hostname = args.hostname.clone().unwrap_or_else(|| seed::default_hostname(args.name.as_str()));
    seed::check_hostname(&hostname)?;
    seed::check_user(&args.user)?;
    let authorized = keys::read_authorized_key(&args.ssh_key)?;
    let known_hosts_path = args.output.with_extension("known_hosts");
    if !args.force {
        for p in [&args.output, &known_hosts_path] {
            if p.exists() {
                bail!("{} already exists; pass --force to replace it", p.display());
            }
        }
    }

    let host_key = keys::generate_host_key(args.name.as_str())?;
    let instance_id = seed::new_instance_id(args.name.as_str());
    let inputs = SeedInputs {
        hostname: &hostname,
        user: &args.user,
        authorized_key: &authorized,
        instance_id: &instance_id,
        host_key: Some(&host_key),
        agent,
    };
    // Both files are the user's artifacts, written the way mkisofs writes its output (see
    // Durability); a power cut that keeps the ISO but empties the pin fails safe, as ssh
    // with StrictHostKeyChecking=yes refuses an unknown key. The pin is in place before the
    // seed, as in `up`, so no seed is ever without its pin. It is written while the image
    // is: replacing a file can wait on the disk (freed blocks are discarded on a `discard`
    // mount), and the image need not wait with it.
    let pin = |bytes: &[u8]| atomic::write_with(&known_hosts_path, 0o600, Durability::Unsynced, |f| f.write_all(bytes));
    let old_pin = if args.force { std::fs::read(&known_hosts_path).ok() } else { None };
    let line = keys::known_hosts_line(args.name.as_str(), &host_key.public_openssh);
    let (staged, pinned) = std::thread::scope(|s| {
        let pinning = s.spawn(|| pin(line.as_bytes()));
        let staged = seed::stage_seed(&args.output, inputs, args.force, Durability::Unsynced);
        (staged, pinning.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    // A failed pin leaves the old one; the staged image, dropped, leaves nothing.
    pinned.with_context(|| format!("cannot write {}", known_hosts_path.display()))?;
    let size = match staged.and_then(|image| image.commit()) {
        Ok(size) => size,
        Err(e) => {
            // The old seed, if any, is untouched: leave its pin as it was too.
            let _ = match old_pin {
                Some(old) => pin(&old),
                None => std::fs::remove_file(&known_hosts_path),
            };
            return Err(e.into());
        }
    };

    // One report, written at once: stderr is unbuffered, and a line per write would reach
    // whoever reads it in pieces.
    let mut report = format!(
        "wrote {} ({}, volume CIDATA): user {}, hostname {hostname}, instance {instance_id}\n",
        args.output.display(),
        ui::human_bytes(size),
        args.user
    );
    report += &format!("pinned the guest's host key in {} under the name {}\n", known_hosts_path.display(), args.name);
    if args.agent.is_none() {
        report += "warning: no agent given (--agent PATH): the guest will boot and accept SSH, but its bootstrap stops before setup\n";
    }
    report += &format!(
        "connect once it has booted: ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o HostKeyAlias={} {}@ADDRESS\n",
        known_hosts_path.display(),
        args.name,
        args.user
    );
    eprint!("{report}");
    Ok(crate::exit::OK)
}

/// Open the agent to be copied onto the seed, after checking it is an ELF file at all.
fn open_agent(path: &Path) -> anyhow::Result<std::fs::File> {
    let cannot = || format!("cannot read the agent binary {}", path.display());
    let file = std::fs::File::open(path).with_context(cannot)?;
    let mut magic = [0u8; 4];
    let n = file.read_at(&mut magic, 0).with_context(cannot)?;
    if n < 4 || magic != *b"\x7fELF" {
        bail!("{} is not an ELF binary; --agent wants the static Linux build of almavmm-agent", path.display());
    }
    Ok(file)
}
