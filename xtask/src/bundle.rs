//! `cargo xtask bundle`: the agent's source bundle (`target/bundle/agent-src.tar.gz`), for
//! hosts that cannot build a Linux binary. Built by the same code `almavmm-host up` uses
//! when it finds no prebuilt agent.

use std::path::PathBuf;
use std::time::Instant;

use xshell::Shell;

use crate::util::project_root;

fn commit(sh: &Shell) -> String {
    xshell::cmd!(sh, "git rev-parse --short=12 HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Build the bundle and return its path.
pub fn build(sh: &Shell) -> anyhow::Result<PathBuf> {
    let out = project_root().join("target/bundle/agent-src.tar.gz");
    let started = Instant::now();
    let size = almavmm_host::agent::bundle::build(&project_root(), &out, &commit(sh))?;
    eprintln!(
        "bundle: {} ({}) in {:.1}s",
        out.display(),
        almavmm_host::ui::human_bytes(size),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

pub fn run(sh: &Shell) -> anyhow::Result<()> {
    println!("{}", build(sh)?.display());
    Ok(())
}
