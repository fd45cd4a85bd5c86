//! `cargo xtask test`: the whole test suite, as CI runs it and as the README tells a
//! developer to run it: system packages, unit and integration tests, the kernel module
//! checks, and the end-to-end scenario in a booted guest.

use xshell::{Shell, cmd};

use crate::util::Stage;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the end-to-end scenario (it boots a guest; a few minutes under TCG).
    #[arg(long)]
    pub no_e2e: bool,
}

pub fn run(sh: &Shell, args: TestArgs) -> anyhow::Result<()> {
    {
        let _s = Stage::new("system packages");
        crate::deps::run(sh, crate::deps::DepsArgs { install: true })?;
    }
    {
        let _s = Stage::new("unit and integration tests");
        // nextest when installed (it is on the machines this project uses), else cargo test.
        if cmd!(sh, "cargo nextest --version").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
            cmd!(sh, "cargo nextest run --workspace --all-targets --no-fail-fast").run()?;
        } else {
            cmd!(sh, "cargo test --workspace --all-targets --no-fail-fast").run()?;
        }
    }
    {
        let _s = Stage::new("kernel module");
        crate::kmod::run(sh, crate::kmod::KmodArgs::default())?;
    }
    {
        let _s = Stage::new("release tree (dist): man pages, completions, layout");
        crate::dist::run(sh, crate::dist::DistArgs {})?;
    }
    if !args.no_e2e {
        {
            let _s = Stage::new("end to end");
            crate::e2e::run(sh, crate::e2e::E2eArgs::default())?;
        }
        let _s = Stage::new("end to end: agent built in the guest from the source bundle");
        if crate::bundle::verified(sh)? {
            eprintln!(
                "skipped: the bundle scenario already passed with exactly these inputs ({}); \
                 it runs again whenever the agent's crates, the lock file, the bundle code, the bootstrap \
                 or the Debian 13 image recipe change",
                crate::bundle::VERIFIED_STAMP
            );
        } else {
            crate::e2e::run(sh, crate::e2e::E2eArgs { bundle: true, ..Default::default() })?;
        }
    }
    Ok(())
}
