//! `cargo xtask bench seed`: building a seed with a 5 MiB agent, our pure-Rust writer (the
//! real `almavmm-host seed` command) against `genisoimage -J -R` on the same files. The two
//! take turns, 21 rounds after a warm-up, both replacing their previous output as a re-run
//! does and writing a new file, and the medians are compared; the goal is a ratio of at
//! most 1 (ours not slower) in both cases.
//! Our ISO writer alone, on genisoimage's input, is measured too: the command does more
//! (host key, user-data, SHA-256 manifest of the agent) than genisoimage is asked to.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use xshell::{Shell, cmd};

use crate::util::project_root;

const ROUNDS: usize = 21;

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
    time(ours(&d.join("ours.iso")))?;

    // The same tree for genisoimage: take it out of our own ISO, so the bytes are equal.
    let tree = d.join("tree");
    cmd!(sh, "xorriso -osirrox on -indev {d}/ours.iso -extract / {tree}").quiet().ignore_stderr().run()?;
    let theirs = |out: &Path| {
        let mut c = Command::new("genisoimage");
        c.args(["-quiet", "-J", "-R", "-V", "CIDATA", "-o"]).arg(out).arg(&tree);
        c
    };
    time(theirs(&d.join("theirs.iso")))?;
    // Taking turns: whatever else the machine does hits both alike. Two cases, each in its
    // own series (mixed, one tool's writeback still in flight would fall on the other's
    // next run): a re-run replacing the previous output (--force; genisoimage truncates
    // it), then a new file each time. `sync` first, so each series starts with a clean disk.
    let (mut ours_runs, mut their_runs) = (Vec::new(), Vec::new());
    cmd!(sh, "sync").run()?;
    for _ in 0..ROUNDS {
        ours_runs.push(time(ours(&d.join("ours.iso")))?);
        their_runs.push(time(theirs(&d.join("theirs.iso")))?);
    }
    let (mut ours_new, mut their_new) = (Vec::new(), Vec::new());
    cmd!(sh, "sync").run()?;
    for i in 0..ROUNDS {
        ours_new.push(time(ours(&d.join(format!("ours-{i}.iso"))))?);
        their_new.push(time(theirs(&d.join(format!("theirs-{i}.iso"))))?);
    }
    let (t_ours, t_theirs) = (median(ours_runs), median(their_runs));
    let (t_ours_new, t_theirs_new) = (median(ours_new), median(their_new));

    // The ISO writer alone, on exactly genisoimage's input (the files read from disk inside
    // the timed region, unsynced like the seed command's output), in this process.
    let files = collect(&tree, &tree)?;
    let iso_only = || -> anyhow::Result<Duration> {
        use almavmm_host::seed::iso::{Contents, IsoFile, write_iso};
        let t = Instant::now();
        let mut list = Vec::new();
        for rel in &files {
            list.push(IsoFile { path: rel.clone(), contents: Contents::open(&tree.join(rel))?, mode: 0o644 });
        }
        let unsynced = almavmm_host::state::atomic::Durability::Unsynced;
        write_iso(&d.join("writer.iso"), "CIDATA", list, true, unsynced)?;
        Ok(t.elapsed())
    };
    iso_only()?;
    let t_writer = median((0..ROUNDS).map(|_| iso_only()).collect::<anyhow::Result<Vec<_>>>()?);

    let ms = |t: Duration| t.as_secs_f64() * 1e3;
    let ratio = ms(t_ours) / ms(t_theirs);
    let ratio_new = ms(t_ours_new) / ms(t_theirs_new);
    println!("seed with a 5 MiB agent (medians of {ROUNDS} alternating rounds):");
    println!("                                                          replacing   new file");
    println!(
        "  almavmm-host seed (whole command: host key, manifest, ISO): {:>6.1} ms  {:>6.1} ms",
        ms(t_ours),
        ms(t_ours_new)
    );
    println!(
        "  genisoimage -J -R (ISO only, same files):                  {:>6.1} ms  {:>6.1} ms",
        ms(t_theirs),
        ms(t_theirs_new)
    );
    println!("  ratio ours/genisoimage:                                    {ratio:>6.2}     {ratio_new:>6.2}");
    let met = ratio <= 1.0 && ratio_new <= 1.0;
    println!("  goal: ours not slower (ratio <= 1.00) in both: {}", if met { "MET" } else { "NOT MET" });
    println!(
        "  our ISO writer alone on genisoimage's input (in process, replacing): {:.1} ms, ratio {:.2}",
        ms(t_writer),
        ms(t_writer) / ms(t_theirs)
    );
    Ok(())
}
