//! The almavmm guest agent: first-boot setup, the `vmm_clock` module, the clock watcher and
//! the health report the host reads over SSH. `cli` defines the command line and `main.rs`
//! runs it; everything else lives here so tests reach it.

pub mod cli;

// The agent runs in Linux guests only; everything but its command-line definition is
// Linux-specific (netlink, timerfd, /proc, /sys), so xtask can use `cli` on any host.
#[cfg(target_os = "linux")]
pub mod announce;
#[cfg(target_os = "linux")]
pub mod clockops;
#[cfg(target_os = "linux")]
pub mod clockpath;
#[cfg(target_os = "linux")]
pub mod clocksource;
#[cfg(target_os = "linux")]
pub mod distro;
#[cfg(target_os = "linux")]
pub mod events;
#[cfg(target_os = "linux")]
pub mod files;
#[cfg(target_os = "linux")]
pub mod gateway;
#[cfg(target_os = "linux")]
pub mod health;
#[cfg(target_os = "linux")]
pub mod hypervisor;
#[cfg(target_os = "linux")]
pub mod kernel_hook;
#[cfg(target_os = "linux")]
pub mod kmod;
#[cfg(target_os = "linux")]
pub mod net;
#[cfg(target_os = "linux")]
pub mod nethook;
#[cfg(target_os = "linux")]
pub mod netlink;
#[cfg(target_os = "linux")]
pub mod networkd_repair;
#[cfg(target_os = "linux")]
pub mod pkg;
#[cfg(target_os = "linux")]
pub mod probe;
#[cfg(target_os = "linux")]
pub mod procfs;
#[cfg(target_os = "linux")]
pub mod rtc;
#[cfg(target_os = "linux")]
pub mod service;
#[cfg(target_os = "linux")]
pub mod setup;
#[cfg(target_os = "linux")]
pub mod sysroot;
#[cfg(target_os = "linux")]
pub mod timekeeping;
#[cfg(target_os = "linux")]
pub mod watch;

/// The commit this agent was built from (`--version`, health reports).
pub const GIT_COMMIT: &str = env!("ALMAVMM_GIT_COMMIT");
