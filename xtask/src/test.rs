//! `cargo xtask test`: the whole test suite, as CI runs it and as the README tells a
//! developer to run it: system packages, unit and integration tests, the kernel module
//! checks, the fresh-machine check of the demo's packages, and the end-to-end scenario in a
//! booted guest, through QEMU and through vmd's stand-ins.

use std::time::Duration;

use crate::deps::{self, Purpose};
use crate::limited::{Io, limited};
use crate::util::Stage;

/// Building and running every test of the workspace (a cold build is most of it).
const TESTS_LIMIT: Duration = Duration::from_secs(45 * 60);

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the end-to-end scenario (it boots a guest; a few minutes under TCG).
    #[arg(long)]
    pub no_e2e: bool,
    /// Skip the fresh-machine check of the demo's packages (`cargo xtask fresh-root`).
    #[arg(long)]
    pub no_fresh_root: bool,
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    {
        let _s = Stage::new("system packages");
        deps::ensure(Purpose::Test, true)?;
    }
    {
        let _s = Stage::new("unit and integration tests");
        // nextest when installed (it is on the machines this project uses), else cargo test.
        let nextest = limited("cargo", Duration::from_secs(60))
            .args(["nextest", "--version"])
            .stdout(Io::Null)
            .stderr(Io::Null)
            .output()
            .is_ok_and(|o| o.status.success());
        let runner: &[&str] = if nextest { &["nextest", "run"] } else { &["test"] };
        limited("cargo", TESTS_LIMIT)
            .args(runner)
            .args(["--workspace", "--all-targets", "--no-fail-fast"])
            .run_inherited()?;
    }
    {
        let _s = Stage::new("kernel module");
        crate::kmod::run(crate::kmod::KmodArgs::default())?;
    }
    {
        let _s = Stage::new("release tree (dist): man pages, completions, layout, with the dev-profile host");
        crate::dist::build_and_check(crate::dist::HostProfile::Dev)?;
    }
    if !args.no_fresh_root {
        let _s = Stage::new("fresh Debian 12 root: `xtask deps --for demo --install` from a cold apt");
        crate::freshroot::run(crate::freshroot::FreshRootArgs::default())?;
    }
    if !args.no_e2e {
        {
            let _s = Stage::new("end to end");
            crate::e2e::run(crate::e2e::E2eArgs::default())?;
        }
        {
            // The same scenario through the vmd backend, against the OpenBSD stand-ins in
            // private namespaces (crate::vmdrig): about 7 minutes under TCG.
            let _s = Stage::new("end to end through vmd (OpenBSD stand-ins)");
            crate::e2e::run(crate::e2e::E2eArgs { backend: Some("vmd".into()), ..Default::default() })?;
        }
        let _s = Stage::new("end to end: agent built in the guest from the source bundle");
        if crate::bundle::verified()? {
            eprintln!(
                "skipped: the bundle scenario already passed with exactly these inputs ({}); \
                 it runs again whenever the agent's crates, the lock file, the bundle code, the bootstrap \
                 or the Debian 13 image recipe change",
                crate::bundle::VERIFIED_STAMP
            );
        } else {
            crate::e2e::run(crate::e2e::E2eArgs { bundle: true, ..Default::default() })?;
        }
    }
    Ok(())
}
