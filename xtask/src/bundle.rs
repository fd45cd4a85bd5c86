//! `cargo xtask bundle`: the agent's source bundle (`target/bundle/agent-src.tar.gz`), for
//! hosts that cannot build a Linux binary. Built by the same code `almavmm-host up` uses
//! when it finds no prebuilt agent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::limited::limited;
use crate::util::project_root;

/// git on this checkout.
const GIT_LIMIT: Duration = Duration::from_secs(60);

fn commit() -> String {
    limited("git", GIT_LIMIT)
        .args(["rev-parse", "--short=12", "HEAD"])
        .run()
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Build the bundle and return its path.
pub fn build() -> anyhow::Result<PathBuf> {
    let out = project_root().join("target/bundle/agent-src.tar.gz");
    let started = Instant::now();
    let size = almavmm_host::agent::bundle::build(&project_root(), &out, &commit())?;
    eprintln!(
        "bundle: {} ({}) in {:.1}s",
        out.display(),
        almavmm_host::ui::human_bytes(size),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Where the hash of the bundle's inputs is recorded when `cargo xtask e2e --bundle` passes.
/// Commit it: `cargo xtask test` runs the (slow: a whole Rust build under emulation) bundle
/// scenario only when these inputs differ from the ones last verified.
pub const VERIFIED_STAMP: &str = "xtask/bundle-e2e.verified";

/// What the bundle scenario proves depends on: the agent's crates, the lock, the bundle
/// builder and lookup, the bootstrap that builds it, and the Debian 13 image recipe.
const INPUTS: &[&str] = &[
    "guest",
    "shared",
    "Cargo.toml",
    "Cargo.lock",
    "host/src/agent/bundle.rs",
    "host/src/agent/locate.rs",
    "host/src/seed/bootstrap.sh",
    "xtask/src/testimage.rs",
];

/// SHA-256 over the tracked files of [`INPUTS`] (path and contents, in path order).
pub fn inputs_hash() -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let listed = limited("git", GIT_LIMIT).args(["ls-files", "--"]).args(INPUTS).run()?.stdout;
    let mut files: Vec<&str> = listed.lines().collect();
    files.sort_unstable();
    anyhow::ensure!(!files.is_empty(), "git lists none of the bundle's inputs");
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_bytes());
        h.update([0]);
        h.update(std::fs::read(project_root().join(f))?);
        h.update([0]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether the bundle scenario has passed with exactly these inputs.
pub fn verified() -> anyhow::Result<bool> {
    let stamp = std::fs::read_to_string(project_root().join(VERIFIED_STAMP)).unwrap_or_default();
    Ok(stamp.split_whitespace().next() == Some(inputs_hash()?.as_str()))
}

/// Record that the bundle scenario passed with the inputs whose hash is `hash`.
pub fn mark_verified(hash: &str) -> anyhow::Result<()> {
    let line = format!("{hash}  bundle e2e passed with these inputs ({})\n", INPUTS.join(" "));
    std::fs::write(project_root().join(VERIFIED_STAMP), line)?;
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    println!("{}", build()?.display());
    Ok(())
}
