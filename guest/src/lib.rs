//! The almavmm guest agent: first-boot setup, the `vmm_clock` module, the clock watcher and
//! the health report the host reads over SSH. `cli` defines the command line and `main.rs`
//! runs it; everything else lives here so tests reach it.

pub mod cli;

// The agent runs in Linux guests only; everything but its command-line definition is
// Linux-specific (netlink, timerfd, /proc, /sys), so xtask can use `cli` on any host.
#[cfg(target_os = "linux")]
pub mod clock;
#[cfg(target_os = "linux")]
pub mod cmd;
#[cfg(target_os = "linux")]
pub mod kmod;
#[cfg(target_os = "linux")]
pub mod net;
#[cfg(target_os = "linux")]
pub mod sys;

/// The commit this agent was built from (`--version`, health reports).
pub const GIT_COMMIT: &str = env!("ALMAVMM_GIT_COMMIT");
