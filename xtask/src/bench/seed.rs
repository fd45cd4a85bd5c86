//! `cargo xtask bench seed`: building a seed with a 5 MiB agent, our pure-Rust writer (the
//! real `almavmm-host seed` command) against `genisoimage -J -R` on the same files. The two
//! take turns, 21 rounds after a warm-up, both replacing their previous output as a re-run
//! does and writing a new file, and the medians are compared; the goal is a ratio of at
//! most 1 (ours not slower) in both cases.
//! Our ISO writer alone, on genisoimage's input, is measured too: the command does more
//! (host key, user-data, SHA-256 manifest of the agent) than genisoimage is asked to.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::limited::{Limited, limited};

/// One seed or genisoimage run (tens of milliseconds), `xorriso` or `sync`.
const TOOL_LIMIT: Duration = Duration::from_secs(120);

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

fn time(c: Limited) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = c.output()?;
    let d = t.elapsed();
    out.ok()?;
    Ok(d)
}

pub fn run() -> anyhow::Result<()> {
    let bin = crate::e2e::build_host(true)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let key = d.join("id");
    crate::e2e::keygen(&key)?;
    std::fs::write(d.join("agent"), stand_in_agent())?;
    let ours = |out: &Path| seed_command(&bin, &key, &d.join("agent"), out);
    time(ours(&d.join("ours.iso")))?;

    // The same tree for genisoimage: take it out of our own ISO, so the bytes are equal.
    let tree = d.join("tree");
    limited("xorriso", TOOL_LIMIT)
        .args(["-osirrox", "on", "-indev"])
        .arg(d.join("ours.iso"))
        .args(["-extract", "/"])
        .arg(&tree)
        .run()?;
    let theirs = |out: &Path| genisoimage_command(&tree, out);
    time(theirs(&d.join("theirs.iso")))?;
    // Two cases, each in its own series (mixed, one tool's writeback still in flight would
    // fall on the other's next run): a re-run replacing the previous output (--force;
    // genisoimage truncates it), then a new file each time.
    let replacing = take_turns(&ours, &theirs, |_, who| d.join(format!("{who}.iso")))?;
    let new_file = take_turns(&ours, &theirs, |i, who| d.join(format!("{who}-{i}.iso")))?;
    let writer = time_writer_alone(&tree, &d.join("writer.iso"))?;
    print_results(replacing, new_file, writer);
    Ok(())
}

/// A 5 MiB stand-in agent: ELF magic, then incompressible bytes.
fn stand_in_agent() -> Vec<u8> {
    let mut agent = b"\x7fELF".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while agent.len() < 5 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        agent.extend_from_slice(&x.to_le_bytes());
    }
    agent
}

/// The real `almavmm-host seed` command, replacing `out` if it exists.
fn seed_command(bin: &Path, key: &Path, agent: &Path, out: &Path) -> Limited {
    limited(bin, TOOL_LIMIT)
        .args(["seed", "bench", "--ssh-key"])
        .arg(key.with_extension("pub"))
        .arg("--agent")
        .arg(agent)
        .arg("-o")
        .arg(out)
        .arg("--force")
}

fn genisoimage_command(tree: &Path, out: &Path) -> Limited {
    limited("genisoimage", TOOL_LIMIT).args(["-quiet", "-J", "-R", "-V", "CIDATA", "-o"]).arg(out).arg(tree)
}

/// Medians of `ROUNDS` runs of each, writing to `out(round, "ours" | "theirs")`. Taking
/// turns: whatever else the machine does hits both alike. `sync` first, so the series
/// starts with a clean disk.
fn take_turns(
    ours: &dyn Fn(&Path) -> Limited,
    theirs: &dyn Fn(&Path) -> Limited,
    out: impl Fn(usize, &str) -> PathBuf,
) -> anyhow::Result<(Duration, Duration)> {
    let (mut ours_runs, mut their_runs) = (Vec::new(), Vec::new());
    limited("sync", TOOL_LIMIT).run()?;
    for i in 0..ROUNDS {
        ours_runs.push(time(ours(&out(i, "ours")))?);
        their_runs.push(time(theirs(&out(i, "theirs")))?);
    }
    Ok((median(ours_runs), median(their_runs)))
}

/// The ISO writer alone, on exactly genisoimage's input (the files read from disk inside
/// the timed region, unsynced like the seed command's output), in this process.
fn time_writer_alone(tree: &Path, out: &Path) -> anyhow::Result<Duration> {
    let files = collect(tree, tree)?;
    let iso_only = || -> anyhow::Result<Duration> {
        use almavmm_host::seed::iso::{Contents, IsoFile, write_iso};
        let t = Instant::now();
        let mut list = Vec::new();
        for rel in &files {
            list.push(IsoFile { path: rel.clone(), contents: Contents::open(&tree.join(rel))?, mode: 0o644 });
        }
        let unsynced = almavmm_shared::atomic::Durability::Unsynced;
        write_iso(out, "CIDATA", list, true, unsynced)?;
        Ok(t.elapsed())
    };
    iso_only()?;
    Ok(median((0..ROUNDS).map(|_| iso_only()).collect::<anyhow::Result<Vec<_>>>()?))
}

/// `replacing` and `new_file`: (ours, genisoimage) medians of each series.
fn print_results(replacing: (Duration, Duration), new_file: (Duration, Duration), t_writer: Duration) {
    let ((t_ours, t_theirs), (t_ours_new, t_theirs_new)) = (replacing, new_file);
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
}
