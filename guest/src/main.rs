//! `almavmm-agent`: runs as root inside the guest. Installed by the seed, which runs
//! `setup` once per instance; the host calls `health`, `clock …` and `kmod …` over SSH.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use almavmm_agent::distro::OsRelease;
use almavmm_agent::kmod::{Module, running_kernel};
use almavmm_agent::sysroot::SysRoot;
use almavmm_agent::{clockops, health, pkg, probe, setup, watch};
use almavmm_shared::clock::format_offset;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

const VERSION_LINE: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("ALMAVMM_GIT_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(
    name = "almavmm-agent",
    version = VERSION_LINE,
    about = "The almavmm guest agent: first-boot setup, the vmm_clock module, the clock watcher and health reports",
    long_about = "The almavmm guest agent. It runs as root inside a guest made by almavmm-host: `setup` \
                  prepares the guest on first boot (safe to run again), `watch` is the service that keeps \
                  the clock right, and the host calls `health`, `clock` and `kmod` over SSH."
)]
struct Cli {
    /// Resolve system paths under this folder instead of / (for tests on fixture trees;
    /// commands such as systemctl still act on the real system).
    #[arg(long, global = true, hide = true, env = "ALMAVMM_AGENT_ROOT", default_value = "/")]
    root: std::path::PathBuf,
    /// Log more (debug: every external command line).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
struct SetupArgs {
    /// When the running kernel's headers are no longer in the repositories, install the
    /// newest kernel with its headers, build the module for it, and ask for a reboot.
    #[arg(long)]
    update_kernel: bool,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Seconds between stall and RTC checks.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    tick_secs: u64,
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// Print the versioned JSON report (almavmm_shared::health::HealthReport).
    #[arg(long)]
    json: bool,
    /// Name to resolve for the DNS check (a failure is reported, not fatal).
    #[arg(long, default_value = "repo.almalinux.org")]
    resolve: String,
}

#[derive(Debug, Subcommand)]
enum ClockCmd {
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
struct KernelArg {
    /// Kernel release to act on (default: the running kernel).
    #[arg(long, value_name = "KVER")]
    kernel: Option<String>,
}

#[derive(Debug, Args)]
struct DepsArgs {
    /// Install no packages: fail, naming what is missing (used by the kernel hooks, which
    /// run inside a package transaction).
    #[arg(long)]
    no_deps: bool,
    /// When the kernel's headers are gone from the repositories, install the newest kernel
    /// with its headers and build for it instead.
    #[arg(long, conflicts_with = "no_deps")]
    update_kernel: bool,
}

#[derive(Debug, Subcommand)]
enum KmodCmd {
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
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    // The journal stamps its own time; elsewhere (SSH, a terminal) keep it short too.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let root = SysRoot::new(&cli.root);
    match run(&root, cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("almavmm-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(root: &SysRoot, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Setup(a) => {
            let report = setup::run(root, &setup::Options { update_kernel: a.update_kernel });
            println!("{}", setup::summary(&report));
            Ok(if report.succeeded() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Watch(a) => {
            watch::run(root.clone(), Duration::from_secs(a.tick_secs))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health(a) => {
            let report = health::gather(root, &a.resolve)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", health::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Clock(c) => clock(root, c),
        Command::Kmod(k) => kmod(root, k),
    }
}

fn clock(root: &SysRoot, cmd: ClockCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ClockCmd::Probe => {
            let stdin = std::io::stdin().lock();
            let stdout = std::io::stdout().lock();
            probe::serve(stdin, stdout, &mut probe::SystemClock { root: root.clone() })?;
            Ok(ExitCode::SUCCESS)
        }
        ClockCmd::Set { host_ns, rtt_ns } => {
            anyhow::ensure!(rtt_ns >= 0, "--rtt-ns cannot be negative");
            let (before, after, rtc) = clockops::host_set(root, host_ns, rtt_ns, 0)?;
            let rtc = match rtc {
                almavmm_shared::clock::RtcWrite::Written => "RTC written".to_string(),
                almavmm_shared::clock::RtcWrite::Failed(why) => format!("RTC not written: {why}"),
            };
            println!("clock set: stepped by {}; {rtc}", format_offset(after - before));
            Ok(ExitCode::SUCCESS)
        }
        ClockCmd::Check { fix } => {
            let (line, code) = clockops::check(root, fix);
            println!("{line}");
            let _ = std::io::stdout().flush();
            Ok(ExitCode::from(code as u8))
        }
    }
}

fn kernel_of(root: &SysRoot, k: KernelArg) -> anyhow::Result<String> {
    match k.kernel {
        Some(k) => Ok(k),
        None => running_kernel(root).context("reading the running kernel's release"),
    }
}

/// Make sure the module can be built for `kver`; returns the kernel to build for (a newer
/// one after `--update-kernel`).
fn prepare(root: &SysRoot, kver: String, deps: &DepsArgs) -> anyhow::Result<String> {
    if deps.no_deps {
        return Ok(kver);
    }
    let os = OsRelease::read(root)?;
    let Some(pm) = os.package_manager() else {
        let missing = pkg::missing_without_package_manager(root, &kver);
        anyhow::ensure!(missing.is_empty(), "missing {}: {}", missing.join(", "), os.describe());
        return Ok(kver);
    };
    match pkg::ensure_build_deps(root, pm, &kver) {
        Ok(done) => {
            eprintln!("build dependencies: {}", done.detail);
            Ok(kver)
        }
        Err(pkg::DepsError::HeadersUnavailable { .. }) if deps.update_kernel => {
            let (newer, pkgs) = pkg::update_kernel(root, pm, &os, &kver)?;
            eprintln!(
                "installed {} (kernel {newer}); building for it: reboot into it to load the module",
                pkgs.join(" ")
            );
            Ok(newer)
        }
        Err(e) => Err(e.into()),
    }
}

fn kmod(root: &SysRoot, cmd: KmodCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KmodCmd::Build { kernel, deps } => {
            let kver = prepare(root, kernel_of(root, kernel)?, &deps)?;
            println!("{}", Module::new(root.clone(), kver).build()?.detail);
        }
        KmodCmd::Install { kernel, deps } => {
            let kver = prepare(root, kernel_of(root, kernel)?, &deps)?;
            println!("{}", Module::new(root.clone(), kver).install()?.detail);
            if let Some(pm) = OsRelease::read(root).ok().and_then(|o| o.package_manager()) {
                let hooks = almavmm_agent::kernel_hook::install(root, pm)?;
                if !hooks.is_empty() {
                    println!("installed the kernel hook {}", hooks.join(", "));
                }
            }
        }
        KmodCmd::Load { kernel } => {
            let kver = kernel_of(root, kernel)?;
            println!("{}", Module::new(root.clone(), kver).load()?.detail);
        }
        KmodCmd::Status { kernel, json } => {
            let state = Module::new(root.clone(), kernel_of(root, kernel)?).status();
            if json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                print!("{}", almavmm_agent::kmod::render_status(&state));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
