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
        cmd!(sh, "cargo nextest run --workspace --all-targets --no-fail-fast").run()?;
    }
    {
        let _s = Stage::new("kernel module");
        crate::kmod::run(sh, crate::kmod::KmodArgs::default())?;
    }
    if !args.no_e2e {
        let _s = Stage::new("end to end");
        crate::e2e::run(sh, crate::e2e::E2eArgs::default())?;
    }
    Ok(())
}
