//! The contract between `almavmm-host` and `almavmm-agent`.
//!
//! Everything both sides must agree on lives here and nowhere else: the protocol version,
//! the JSON report types, where things live inside the guest, the layout of the seed ISO,
//! the clock-offset arithmetic, and the runner every external program goes through; and the
//! few helpers both sides need the same way (atomic writes, bounded waits, the Unix time).

pub mod atomic;
pub mod calendar;
pub mod clock;
pub mod health;
pub mod paths;
pub mod runner;
pub mod seed;
pub mod setup;
pub mod wait;

/// Version of the workspace; the agent, the host and the kernel module share it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the host↔agent protocol (health JSON, clock probe lines). Bumped on any
/// change a peer of the previous version would misread; the host refuses reports whose
/// major protocol it does not know.
pub const PROTOCOL_VERSION: u32 = 1;

/// Revision within [`PROTOCOL_VERSION`]: bumped when fields are added that a peer of the
/// same major version may lack. Hosts and agents of any revision of one major version work
/// together: a reader ignores fields it does not know, and every field added by a revision
/// has a default that means "the peer did not say" (see `health::HealthReport`).
///
/// - 0: (no `protocol_minor` field) clock, module, network, setup, uptime, memory.
/// - 1: filesystems, load and CPUs, swap and OOM kills, failed systemd units.
pub const PROTOCOL_MINOR: u32 = 1;
