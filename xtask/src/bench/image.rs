//! `cargo xtask bench image`: what a second guest costs from an already prepared base.
//!
//! Our path for a guest disk is `image::prepare` (finding the cached base) plus
//! `image::create_overlay` (a thin qcow2 on it). The manual recipe converts the compressed
//! cloud image into a full uncompressed copy for every guest (`qemu-img convert -O qcow2`).
//! This times both (median of three rounds, in one run) and compares the disk space each new disk takes (allocated blocks,
//! not apparent size), on a synthetic compressed image shaped like the AlmaLinux one
//! (2 GiB virtual, 768 MiB of data that zlib shrinks about 2.5x; the real one is 10 GiB
//! virtual with about 550 MiB compressed), so it runs offline.
//! Goal: at least 100x faster and 100x smaller.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use almavmm_host::image::{self, OverlayTool};
use almavmm_host::state::home::Home;
use almavmm_host::ui::human_bytes;
use anyhow::{Context, bail};

use crate::limited::limited;
use crate::util::{Stage, project_root};

/// One `qemu-img convert` of the 2 GiB synthetic image (seconds; a minute on a busy disk).
const CONVERT_LIMIT: Duration = Duration::from_secs(600);

const VIRTUAL: u64 = 2 << 30;
const DATA: u64 = 768 << 20;
/// Bump when the synthetic image changes, so a cached one is rebuilt.
const SOURCE_NAME: &str = "synthetic-v2.qcow2";
const GOAL: f64 = 100.0;
/// Both paths are timed this many times and the medians compared: one qemu-img start-up
/// more or less on a busy machine should not decide the verdict.
const ROUNDS: usize = 3;

pub fn run() -> anyhow::Result<()> {
    let dir = project_root().join("target/bench-image");
    fs::create_dir_all(&dir)?;
    let source = synthetic_source(&dir)?;
    let home = Home::at(dir.join("home"));

    let sha = image::sha256_file(&source)?;
    let base = {
        let _s = Stage::new("prepare the base once (not timed)");
        image::prepare(&home, &source, &sha)?
    };
    anyhow::ensure!(base.converted, "the synthetic source should need converting");

    let vm = dir.join("vm2");
    let copy = dir.join("vm2-copy.qcow2");
    let disk = vm.join("disk.qcow2");
    let clean = || {
        let _ = fs::remove_dir_all(&vm);
        let _ = fs::remove_file(&copy);
    };

    let _s = Stage::new(format!("second guest disk: overlay vs full copy (median of {ROUNDS})"));
    let (mut t_overlays, mut t_copies) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        clean();
        fs::create_dir_all(&vm)?;
        let started = Instant::now();
        let again = image::prepare(&home, &source, &sha)?;
        image::create_overlay(&again.path, &disk, VIRTUAL * 2, OverlayTool::QemuImg)?;
        t_overlays.push(started.elapsed());

        let started = Instant::now();
        limited("qemu-img", CONVERT_LIMIT)
            .args(["convert", "-O", "qcow2"])
            .arg(&source)
            .arg(&copy)
            .run()
            .context("qemu-img convert (the manual recipe)")?;
        t_copies.push(started.elapsed());
    }
    let (t_overlay, t_copy) = (median(t_overlays), median(t_copies));
    let b_overlay = allocated(&disk)?;
    let b_copy = allocated(&copy)?;
    let time_ratio = t_copy.as_secs_f64() / t_overlay.as_secs_f64().max(1e-6);
    let size_ratio = b_copy as f64 / b_overlay.max(1) as f64;

    println!(
        "image bench: synthetic source {} virtual, {} of data, {} compressed",
        human_bytes(VIRTUAL),
        human_bytes(DATA),
        human_bytes(fs::metadata(&source)?.len())
    );
    println!("{:<28} {:>10} {:>12}", "second guest disk", "time", "disk used");
    println!("{:<28} {:>10} {:>12}", "overlay (almavmm)", secs(t_overlay), human_bytes(b_overlay));
    println!("{:<28} {:>10} {:>12}", "full copy (manual recipe)", secs(t_copy), human_bytes(b_copy));
    println!("{:<28} {:>9.0}x {:>11.0}x   (goal: at least {GOAL:.0}x each)", "ratio", time_ratio, size_ratio);

    clean();
    if time_ratio < GOAL || size_ratio < GOAL {
        bail!("goal not met: {time_ratio:.0}x faster and {size_ratio:.0}x smaller (want {GOAL:.0}x each)");
    }
    println!("goal met");
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Bytes the file's blocks take on disk.
fn allocated(p: &Path) -> anyhow::Result<u64> {
    Ok(fs::metadata(p).with_context(|| format!("cannot stat {}", p.display()))?.blocks() * 512)
}

/// The compressed source, built once and kept in target/bench-image.
fn synthetic_source(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join(SOURCE_NAME);
    if out.is_file() && image::inspect(&out).is_ok_and(|i| i.compressed) {
        return Ok(out);
    }
    let _s = Stage::new("build the synthetic compressed image (once)");
    let raw = dir.join("synthetic.raw");
    write_raw(&raw)?;
    let part = dir.join(format!("{SOURCE_NAME}.part"));
    limited("qemu-img", CONVERT_LIMIT)
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&part)
        .run()?;
    fs::rename(&part, &out)?;
    fs::remove_file(&raw)?;
    Ok(out)
}

/// A sparse raw disk: an MBR signature, then DATA bytes spread over the first 1.5 GiB in
/// 1 MiB runs, each 4 KiB page 3/8 noise and 5/8 text, which zlib shrinks about 2.5x
/// (roughly what it does to a Linux root filesystem).
fn write_raw(path: &Path) -> anyhow::Result<()> {
    let f = fs::File::create(path)?;
    f.set_len(VIRTUAL)?;
    let mut mbr = vec![0u8; 512];
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all_at(&mbr, 0)?;
    let text = b"almavmm benchmark: a line of text as in config files and logs\n";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut run = vec![0u8; 1 << 20];
    let runs = DATA >> 20;
    let stride = (VIRTUAL * 3 / 4) / runs;
    for r in 0..runs {
        for (i, page) in run.chunks_mut(4096).enumerate() {
            let (noise, rest) = page.split_at_mut(1536);
            for b in noise.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            for (j, b) in rest.iter_mut().enumerate() {
                *b = text[(i + j) % text.len()];
            }
        }
        f.write_all_at(&run, (1 << 20) + r * stride)?;
    }
    Ok(())
}
