//! `cargo xtask bench seed`: building a seed with a 5 MiB agent, our pure-Rust writer (the
//! real `almavmm-host seed` command) against `genisoimage -J -R` on the same files, medians
//! of 9 runs after a warm-up; the goal is a ratio of at most 1 (ours not slower). Our ISO
//! writer alone, on genisoimage's input, is measured too: the command does more (host key,
//! module tarball, SHA-256 manifest, fsync) than genisoimage is asked to.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use xshell::{Shell, cmd};

use crate::util::project_root;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Files below `dir`, as `/`-separated paths relative to `root`.
fn collect(root: &Path, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(collect(root, &p)?);
        } else {
            out.push(p.strip_prefix(root)?.display().to_string());
        }
    }
    out.sort();
    Ok(out)
}

fn time(mut c: Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = c.output().with_context(|| format!("cannot run {c:?}"))?;
    let d = t.elapsed();
    ensure!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(d)
}

pub fn run(sh: &Shell) -> anyhow::Result<()> {
    cmd!(sh, "cargo build -q --release -p almavmm-host").run()?;
    let bin = project_root().join("target/release/almavmm-host");
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let key = d.join("id");
    ensure!(
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status()?.success(),
        "ssh-keygen failed"
    );
    // A 5 MiB stand-in agent: ELF magic, then incompressible bytes.
    let mut agent = b"\x7fELF".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while agent.len() < 5 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        agent.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(d.join("agent"), &agent)?;

    let ours = |out: &Path| {
        let mut c = Command::new(&bin);
        c.args(["seed", "bench", "--ssh-key"]).arg(key.with_extension("pub")).arg("--agent").arg(d.join("agent"));
        c.arg("-o").arg(out).arg("--force");
        c
    };
    time(ours(&d.join("warm.iso")))?;
    let t_ours = median((0..9).map(|_| time(ours(&d.join("ours.iso")))).collect::<anyhow::Result<Vec<_>>>()?);

    // The same tree for genisoimage: take it out of our own ISO, so the bytes are equal.
    let tree = d.join("tree");
    cmd!(sh, "xorriso -osirrox on -indev {d}/ours.iso -extract / {tree}").quiet().ignore_stderr().run()?;
    let theirs = |out: &Path| {
        let mut c = Command::new("genisoimage");
        c.args(["-quiet", "-J", "-R", "-V", "CIDATA", "-o"]).arg(out).arg(&tree);
        c
    };
    time(theirs(&d.join("warm2.iso")))?;
    let t_theirs = median((0..9).map(|_| time(theirs(&d.join("theirs.iso")))).collect::<anyhow::Result<Vec<_>>>()?);

    // The ISO writer alone, on exactly genisoimage's input (the files read from disk inside
    // the timed region, and synced as ours always is), in this process.
    let files = collect(&tree, &tree)?;
    let iso_only = || -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut list = Vec::new();
        for rel in &files {
            list.push(almavmm_host::seed::iso::IsoFile {
                path: rel.clone(),
                contents: std::fs::read(tree.join(rel))?,
                mode: 0o644,
            });
        }
        almavmm_host::seed::iso::write_iso(&d.join("writer.iso"), "CIDATA", list, true)?;
        Ok(t.elapsed())
    };
    iso_only()?;
    let t_writer = median((0..9).map(|_| iso_only()).collect::<anyhow::Result<Vec<_>>>()?);

    let ratio = t_ours.as_secs_f64() / t_theirs.as_secs_f64();
    println!("seed with a 5 MiB agent:");
    println!(
        "  almavmm-host seed (whole command: key generation, tarball, ISO): {:>8.1} ms",
        t_ours.as_secs_f64() * 1e3
    );
    println!(
        "  genisoimage -J -R (ISO only, same files):                       {:>8.1} ms",
        t_theirs.as_secs_f64() * 1e3
    );
    println!(
        "  our ISO writer alone on genisoimage's input (in process):       {:>8.1} ms",
        t_writer.as_secs_f64() * 1e3
    );
    println!("  ratio ours/genisoimage: {ratio:.2} (goal: <= 1.00) {}", if ratio <= 1.0 { "MET" } else { "NOT MET" });
    let writer_ratio = t_writer.as_secs_f64() / t_theirs.as_secs_f64();
    println!("  ratio ISO writer/genisoimage: {writer_ratio:.2}");
    Ok(())
}
