//! The agent's command line. It lives in the library, apart from what the commands do, so
//! that `cargo xtask dist` can render the agent's man page from these definitions (on any
//! host: this module compiles everywhere, unlike the Linux-only rest of the crate).

use clap::{Args, Parser, Subcommand};

/// Version and the commit it was built from, in the same form as `almavmm-host --version`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ALMAVMM_GIT_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(
    name = "almavmm-agent",
    version = VERSION,
    about = "The almavmm guest agent: first-boot setup, the vmm_clock module, the clock watcher and health reports",
    long_about = "The almavmm guest agent. It runs as root inside a guest made by almavmm-host: `setup` \
                  prepares the guest on first boot (safe to run again), `watch` is the service that keeps \
                  the clock right, and the host calls `health`, `clock` and `kmod` over SSH.",
    after_help = "Exit status: 0 on success, 1 on failure, 2 for a command-line error \
                  (`clock check`: 1 when the clock is off, 2 when it cannot compare)."
)]
pub struct Cli {
    /// Resolve system paths under this folder instead of / (for tests on fixture trees;
    /// commands such as systemctl still act on the real system).
    #[arg(long, global = true, hide = true, env = "ALMAVMM_AGENT_ROOT", default_value = "/")]
    pub root: std::path::PathBuf,
    /// Log more (debug: every external command line).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prepare this guest: distro, clock path, vmm_clock module when the host needs it,
    /// network hook, the watcher service and the boot-done marker. Every step is checked
    /// before it is done and recorded in /var/lib/almavmm/setup.json; running it again
    /// changes nothing that is already right.
    Setup(SetupArgs),
    /// The clock watcher (what almavmm-agent.service runs): notices wall-clock steps and
    /// stalls, and steps the clock from the RTC when it is off by more than 2 s.
    Watch(WatchArgs),
    /// Report agent, distro, kernel, clock, module, network, setup, uptime and memory.
    Health(HealthArgs),
    /// Measure, set and check the clock.
    #[command(subcommand)]
    Clock(ClockCmd),
    /// The vmm_clock module steps of setup on their own, whatever the clock path says.
    #[command(subcommand)]
    Kmod(KmodCmd),
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// When the running kernel's headers are no longer in the repositories, install the
    /// newest kernel with its headers, build the module for it, and ask for a reboot.
    #[arg(long)]
    pub update_kernel: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Seconds between stall and RTC checks.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tick_secs: u64,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Print the versioned JSON report (almavmm_shared::health::HealthReport).
    #[arg(long)]
    pub json: bool,
    /// Name to resolve for the DNS check (a failure is reported, not fatal).
    #[arg(long, default_value = "repo.almalinux.org")]
    pub resolve: String,
}

#[derive(Debug, Subcommand)]
pub enum ClockCmd {
    /// Line protocol on stdin/stdout for the host's offset measurement: the agent greets
    /// with `ALMAVMM-CLOCK <protocol> <version>`, then answers `PROBE <seq>` with
    /// `TIME <seq> <ns>` and `SET <host_ns> <rtt_ns>` with `SET-DONE …`, until EOF.
    Probe,
    /// Step the clock to the host's time plus half the round trip, then write the RTC.
    Set {
        /// The host's CLOCK_REALTIME when it sent the request, ns since the Unix epoch.
        #[arg(long, allow_negative_numbers = true)]
        host_ns: i64,
        /// The round trip the host measured, ns.
        #[arg(long)]
        rtt_ns: i64,
    },
    /// Compare the system clock with the RTC once and print a one-line verdict; exit 0
    /// within ±2 s, 1 off, 2 when it cannot compare.
    Check {
        /// When off, step the clock from the RTC (as the watcher does) and ask chrony to
        /// step; exits 0 when the clock ends within bounds.
        #[arg(long)]
        fix: bool,
    },
}

#[derive(Debug, Args)]
pub struct KernelArg {
    /// Kernel release to act on (default: the running kernel).
    #[arg(long, value_name = "KVER")]
    pub kernel: Option<String>,
}

#[derive(Debug, Args)]
pub struct DepsArgs {
    /// Install no packages: fail, naming what is missing (used by the kernel hooks, which
    /// run inside a package transaction).
    #[arg(long)]
    pub no_deps: bool,
    /// When the kernel's headers are gone from the repositories, install the newest kernel
    /// with its headers and build for it instead.
    #[arg(long, conflicts_with = "no_deps")]
    pub update_kernel: bool,
}

#[derive(Debug, Subcommand)]
pub enum KmodCmd {
    /// Build vmm_clock from /usr/src/vmm_clock-VERSION (in /var/lib/almavmm/kmod-build),
    /// installing the build dependencies first when they are missing.
    Build {
        #[command(flatten)]
        kernel: KernelArg,
        #[command(flatten)]
        deps: DepsArgs,
    },
    /// Build if needed, then install to /lib/modules/KVER/extra (make install, depmod), and
    /// install the kernel hook that rebuilds it for new kernels.
    Install {
        #[command(flatten)]
        kernel: KernelArg,
        #[command(flatten)]
        deps: DepsArgs,
    },
    /// Install if needed, modprobe, persist in /etc/modules-load.d and select the vmm-clock
    /// clocksource. Fails with the kernel's reason (e.g. "not under OpenBSD vmm (ENODEV)").
    Load {
        #[command(flatten)]
        kernel: KernelArg,
    },
    /// Built, installed, loaded, persisted, hook installed; after a failed load, the
    /// kernel's reason from its log.
    Status {
        #[command(flatten)]
        kernel: KernelArg,
        /// Print the state as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
