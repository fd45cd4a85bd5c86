//! The contract between `almavmm-host` and `almavmm-agent`.
//!
//! Everything both sides must agree on lives here and nowhere else: the protocol version,
//! the JSON report types, where things live inside the guest, the layout of the seed ISO,
//! the clock-offset arithmetic, and the runner every external program goes through.

pub mod calendar;
pub mod clock;
pub mod health;
pub mod paths;
pub mod runner;
pub mod seed;
pub mod setup;

/// Version of the workspace; the agent, the host and the kernel module share it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the host↔agent protocol (health JSON, clock probe lines). Bumped on any
/// change a peer of the previous version would misread; the host refuses reports whose
/// major protocol it does not know.
pub const PROTOCOL_VERSION: u32 = 1;
