//! `cargo xtask bench …`: speed targets, measured here rather than asserted in tests.

pub mod image;
pub mod proxy;
pub mod seed;

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Seed ISO: ours against genisoimage, 5 MiB agent.
    Seed,
    /// A second guest's disk: our overlay against a full qemu-img copy.
    Image,
    /// ssh-proxy warm overhead and cold-start detection delay; doctor's duration.
    Proxy,
}

pub fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Seed => seed::run(),
        Bench::Image => image::run(),
        Bench::Proxy => proxy::run(),
    }
}
