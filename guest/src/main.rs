//! `almavmm-agent`: runs as root inside the guest. Installed by the seed, which runs
//! `setup` once per instance; the host calls `health`, `clock …` and `kmod …` over SSH.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use almavmm_agent::cli::{Cli, ClockCmd, Command, DepsArgs, KernelArg, KmodCmd};
use almavmm_agent::clock::{ops, probe};
use almavmm_agent::cmd::{health, setup, watch};
use almavmm_agent::kmod::{Module, kernel_hook, pkg, running_kernel};
use almavmm_agent::sys::distro::OsRelease;
use almavmm_agent::sys::sysroot::SysRoot;
use almavmm_shared::clock::format_offset;
use anyhow::Context;
use clap::Parser;

/// Log level from `-v`, overridable with `ALMAVMM_LOG` (a level: error, warn, info, debug
/// or trace).
fn init_logging(verbose: bool) {
    let default = if verbose { tracing::Level::DEBUG } else { tracing::Level::INFO };
    let level = std::env::var("ALMAVMM_LOG").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default);
    // The journal stamps its own time; elsewhere (SSH, a terminal) keep it short too.
    tracing_subscriber::fmt()
        .with_max_level(level)
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
            let (before, after, rtc) = ops::host_set(root, host_ns, rtt_ns, 0)?;
            let rtc = match rtc {
                almavmm_shared::clock::RtcWrite::Written => "RTC written".to_string(),
                almavmm_shared::clock::RtcWrite::Failed(why) => format!("RTC not written: {why}"),
            };
            println!("clock set: stepped by {}; {rtc}", format_offset(after - before));
            Ok(ExitCode::SUCCESS)
        }
        ClockCmd::Check { fix } => {
            let (line, code) = ops::check(root, fix);
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
                let hooks = kernel_hook::install(root, pm)?;
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
