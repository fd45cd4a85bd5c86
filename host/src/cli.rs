//! The command line: one enum of subcommands, each defined next to its implementation.

use clap::{Parser, Subcommand};

use crate::cmd;

#[derive(Debug, Parser)]
#[command(
    name = "almavmm-host",
    version = crate::cli::LONG_VERSION,
    about = "Run AlmaLinux guests on OpenBSD vmd (or QEMU on Linux), with pinned SSH host keys and a clock that survives host suspend",
    long_about = None,
    after_help = "Exit status, for every command: 0 success, 1 failure, 2 command-line error, 3 no such guest.\n\
                  The manual page almavmm-host(1) has more: files, environment, examples.",
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More detail on stderr: -v shows each step, -vv every command run.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, display_order = 900)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose", display_order = 901)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Version and the commit it was built from.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ALMAVMM_GIT_COMMIT"), ")");

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create (or resume creating) a guest and bring it up, reachable over SSH.
    Up(cmd::up::UpArgs),
    /// Start an existing guest and wait for its sshd.
    Start(cmd::start::StartArgs),
    /// Power a guest off cleanly (by force only after a timeout).
    Stop(cmd::stop::StopArgs),
    /// List guests: state, address, memory, uptime, disk use.
    Status(cmd::status::StatusArgs),
    /// Stop a guest and delete it (its shared base image stays).
    Destroy(cmd::destroy::DestroyArgs),
    /// Attach to a guest's serial console.
    Console(cmd::console::ConsoleArgs),
    /// Check host, guest, clock and network end to end.
    Doctor(cmd::doctor::DoctorArgs),
    /// Step guest clocks to the host's time (after a host suspend).
    Sync(cmd::sync::SyncArgs),
    /// Set up this OpenBSD host for vmd guests (idempotent).
    Host(cmd::host::HostArgs),
    /// Write the ssh_config fragment that makes `ssh NAME.almavmm` work.
    SshConfig(cmd::ssh_config::SshConfigArgs),
    /// OpenSSH ProxyCommand: start the guest on demand, relay, stop it when idle.
    SshProxy(cmd::ssh_proxy::SshProxyArgs),
    /// (internal) Stop a guest the ssh-proxy started once it has been idle long enough.
    #[command(hide = true)]
    ProxyReaper(cmd::ssh_proxy::ReaperArgs),
    /// Write a cloud-init NoCloud seed ISO for a guest.
    Seed(cmd::seed::SeedArgs),
    /// Fetch, verify, inspect and prepare guest images.
    Image(cmd::image::ImageArgs),
    /// (internal) Say which agent `up` would put on a new guest's seed, and where it was found.
    #[command(hide = true)]
    WhichAgent(cmd::which_agent::WhichAgentArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            Command::Up(a) => cmd::up::run(a),
            Command::Start(a) => cmd::start::run(a),
            Command::Stop(a) => cmd::stop::run(a),
            Command::Status(a) => cmd::status::run(a),
            Command::Destroy(a) => cmd::destroy::run(a),
            Command::Console(a) => cmd::console::run(a),
            Command::Doctor(a) => cmd::doctor::run(a),
            Command::Sync(a) => cmd::sync::run(a),
            Command::Host(a) => cmd::host::run(a),
            Command::SshConfig(a) => cmd::ssh_config::run(a),
            Command::SshProxy(a) => cmd::ssh_proxy::run(a),
            Command::ProxyReaper(a) => cmd::ssh_proxy::reap(a),
            Command::Seed(a) => cmd::seed::run(a),
            Command::Image(a) => cmd::image::run(a),
            Command::WhichAgent(a) => cmd::which_agent::run(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn fetch_help_names_the_pinned_fingerprint() {
        let mut cli = super::Cli::command();
        let fetch = cli.find_subcommand_mut("image").unwrap().find_subcommand_mut("fetch").unwrap();
        let help = fetch.render_long_help().to_string();
        assert!(help.contains(crate::image::ALMALINUX_9_FINGERPRINT), "{help}");
    }
}
