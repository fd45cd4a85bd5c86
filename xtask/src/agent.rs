//! `cargo xtask agent`: the guest agent as one static x86_64 Linux binary, which the seed
//! carries into any distribution's guest whatever its C library.
//!
//! musl (`x86_64-unknown-linux-musl`) when that target is installed; otherwise glibc with
//! `-C target-feature=+crt-static` (rustc's "static linking" of glibc targets). Either way
//! the result is checked: an ELF for x86-64 with no `PT_INTERP` program header, i.e. no
//! dynamic loader to find at run time (a static-pie binary still has `PT_DYNAMIC`, for its
//! own relocations, but no interpreter).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use xshell::{Shell, cmd};

use crate::util::{Stage, project_root};

const MUSL: &str = "x86_64-unknown-linux-musl";
const GNU: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, clap::Args)]
pub struct AgentArgs {}

/// Build, print the binary's path and size, return the path.
pub fn run(sh: &Shell, _args: AgentArgs) -> anyhow::Result<PathBuf> {
    let bin = build(sh)?;
    let size = std::fs::metadata(&bin)?.len();
    println!("{} ({size} bytes, {:.1} MiB, static)", bin.display(), size as f64 / (1024.0 * 1024.0));
    Ok(bin)
}

/// Build the static agent in release mode and return its path (for other tasks: the e2e
/// passes it to `almavmm-host up --agent`).
pub fn build(sh: &Shell) -> anyhow::Result<PathBuf> {
    let musl = target_installed(sh, MUSL);
    let target = if musl { MUSL } else { GNU };
    {
        let _s = Stage::new(format!(
            "agent: cargo build --release --target {target}{}",
            if musl { "" } else { " (glibc, +crt-static: the musl target is not installed)" }
        ));
        let mut build = cmd!(sh, "cargo build --release --locked -p almavmm-agent --target {target}");
        if !musl {
            // Applies to the target only: with --target, build scripts are not given RUSTFLAGS.
            build = build.env("RUSTFLAGS", "-C target-feature=+crt-static");
        }
        build.run().context("building the agent")?;
    }
    let bin = target_dir().join(target).join("release/almavmm-agent");
    ensure!(bin.is_file(), "cargo finished but {} is not there", bin.display());
    check_static(&std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?)
        .with_context(|| format!("{} is not a static x86-64 Linux binary", bin.display()))?;
    if let Ok(described) = cmd!(sh, "file -b {bin}").quiet().ignore_stderr().read() {
        eprintln!("agent: {described}");
    }
    Ok(bin)
}

/// Whether the standard library for `target` is installed (rustup or a distribution's
/// rust-std package put it in the sysroot's lib/rustlib/TARGET/lib).
fn target_installed(sh: &Shell, target: &str) -> bool {
    let libdir = match cmd!(sh, "rustc --print target-libdir --target {target}").quiet().ignore_stderr().read() {
        Ok(dir) => PathBuf::from(dir.trim()),
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

/// An ELF64 little-endian x86-64 executable without a `PT_INTERP` program header (ELF
/// gABI: e_machine at 0x12, e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38;
/// p_type is the first word of each program header; PT_INTERP = 3).
fn check_static(elf: &[u8]) -> anyhow::Result<()> {
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| elf.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |at: usize| elf.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    ensure!(elf.starts_with(b"\x7fELF\x02\x01"), "not a 64-bit little-endian ELF file");
    ensure!(u16_at(0x12) == Some(62), "not built for x86-64 (e_machine {:?})", u16_at(0x12));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        bail!("truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        match u32_at(at) {
            Some(3) => bail!("it has a PT_INTERP header: it needs a dynamic loader"),
            Some(_) => {}
            None => bail!("program header {i} lies outside the file"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 x86-64 header with the given program header types.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            e.extend(ph);
        }
        e
    }

    #[test]
    fn static_and_dynamic_binaries_are_told_apart() {
        assert!(check_static(&elf(&[6, 1, 1, 2])).is_ok(), "static-pie: PT_DYNAMIC but no PT_INTERP");
        let e = check_static(&elf(&[6, 3, 1])).unwrap_err().to_string();
        assert!(e.contains("PT_INTERP"), "{e}");
        assert!(check_static(b"#!/bin/sh\n").is_err());
    }

    // The test binary itself is dynamically linked on glibc hosts.
    #[test]
    fn this_test_binary_is_recognised_for_what_it_is() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = me.windows(b"ld-linux".len()).any(|w| w == b"ld-linux");
        assert_eq!(check_static(&me).is_ok(), !interp);
    }
}
