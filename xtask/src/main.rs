//! `cargo xtask …`: everything about building, testing and shipping almavmm that is not
//! the product itself.

mod agent;
mod bench;
mod bundle;
mod demo;
mod deps;
mod dist;
mod e2e;
mod freshroot;
mod kmod;
mod limited;
mod man;
mod serve;
mod test;
mod testimage;
mod util;
mod vmdrig;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "almavmm project automation")]
struct Xtask {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bring up a demo guest (Debian test image) through almavmm-host and print doctor.
    Demo,
    /// The whole test suite, as CI runs it: packages, tests, kernel module, end to end.
    Test(test::TestArgs),
    /// Check (and with --install, install) the system packages the demo or the tests need.
    Deps(deps::DepsArgs),
    /// Check `deps --for demo --install` on a fresh Debian 12 (or 13) root (mmdebstrap, cached), from a cold apt.
    FreshRoot(freshroot::FreshRootArgs),
    /// Build the static Linux agent binary (musl if installed, else glibc with crt-static).
    Agent(agent::AgentArgs),
    /// Build the agent's source bundle (agent-src.tar.gz) for guests to build it themselves.
    Bundle,
    /// Compile kmod/ against every installed kernel header set and run its arithmetic tests.
    Kmod(kmod::KmodArgs),
    /// Build (or reuse from cache) the Debian test guest image.
    Image(testimage::ImageArgs),
    /// The end-to-end scenario: a real guest through `almavmm-host`, start to finish.
    E2e(e2e::E2eArgs),
    /// Release tree in target/dist (a /usr/local layout: binaries, man pages, completions, examples), checked.
    Dist(dist::DistArgs),
    /// Speed targets, measured.
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> anyhow::Result<()> {
    match Xtask::parse().cmd {
        Cmd::Demo => demo::run(),
        Cmd::Test(a) => test::run(a),
        Cmd::Deps(a) => deps::run(a),
        Cmd::FreshRoot(a) => freshroot::run(a),
        Cmd::Agent(a) => agent::run(a).map(|_| ()),
        Cmd::Bundle => bundle::run(),
        Cmd::Kmod(a) => kmod::run(a),
        Cmd::Image(a) => testimage::run(a).map(|_| ()),
        Cmd::E2e(a) => e2e::run(a),
        Cmd::Bench(b) => bench::run(b),
        Cmd::Dist(a) => dist::run(a),
    }
}
