//! `cargo xtask agent`: the guest agent as one static x86_64 Linux binary, which the seed
//! carries into any distribution's guest whatever its C library.
//!
//! musl (`x86_64-unknown-linux-musl`) when that target is installed; otherwise glibc with
//! `-C target-feature=+crt-static` (rustc's "static linking" of glibc targets). Either way
//! the result is checked with the host's own rule (`almavmm_host::agent::elf`): an ELF for
//! x86-64 with no program interpreter, i.e. no dynamic loader to find at run time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::limited::limited;
use crate::util::{Stage, project_root};

/// A cold release build of the agent on two cores takes a few minutes; cargo may also wait
/// for another cargo's lock on the target folder.
const CARGO_LIMIT: Duration = Duration::from_secs(30 * 60);
/// rustc --print, file.
const QUICK_LIMIT: Duration = Duration::from_secs(60);

const MUSL: &str = "x86_64-unknown-linux-musl";
const GNU: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, clap::Args)]
pub struct AgentArgs {}

/// Build, print the binary's path and size, return the path.
pub fn run(_args: AgentArgs) -> anyhow::Result<PathBuf> {
    let bin = build()?;
    let size = std::fs::metadata(&bin)?.len();
    println!("{} ({size} bytes, {:.1} MiB, static)", bin.display(), size as f64 / (1024.0 * 1024.0));
    Ok(bin)
}

/// Build the static agent in release mode and return its path (for other tasks: the e2e
/// passes it to `almavmm-host up --agent`).
pub fn build() -> anyhow::Result<PathBuf> {
    let musl = target_installed(MUSL);
    let target = if musl { MUSL } else { GNU };
    {
        let _s = Stage::new(format!(
            "agent: cargo build --release --target {target}{}",
            if musl { "" } else { " (glibc, +crt-static: the musl target is not installed)" }
        ));
        let mut build = limited("cargo", CARGO_LIMIT).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "almavmm-agent",
            "--target",
            target,
        ]);
        if !musl {
            // Applies to the target only: with --target, build scripts are not given RUSTFLAGS.
            build = build.env("RUSTFLAGS", "-C target-feature=+crt-static");
        }
        build.run_inherited().context("building the agent")?;
    }
    let bin = target_dir().join(target).join("release/almavmm-agent");
    ensure!(bin.is_file(), "cargo finished but {} is not there", bin.display());
    check_static(&std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?)
        .with_context(|| format!("{} is not a static x86-64 Linux binary", bin.display()))?;
    if let Ok(described) = limited("file", QUICK_LIMIT).arg("-b").arg(&bin).run() {
        eprintln!("agent: {}", described.stdout.trim());
    }
    Ok(bin)
}

/// Whether the standard library for `target` is installed (rustup or a distribution's
/// rust-std package put it in the sysroot's lib/rustlib/TARGET/lib).
fn target_installed(target: &str) -> bool {
    let libdir = match limited("rustc", QUICK_LIMIT).args(["--print", "target-libdir", "--target", target]).run() {
        Ok(out) => PathBuf::from(out.stdout.trim()),
        Err(_) => return false,
    };
    std::fs::read_dir(&libdir)
        .map(|rd| rd.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        .unwrap_or(false)
}

pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => project_root().join(d),
        None => project_root().join("target"),
    }
}

/// The same check `almavmm-host` applies to an agent before it goes on a seed.
fn check_static(elf: &[u8]) -> anyhow::Result<()> {
    Ok(almavmm_host::agent::elf::check_static_x86_64(elf)?)
}
