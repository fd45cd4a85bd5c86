//! The almavmm guest agent: first-boot setup, the `vmm_clock` module, the clock watcher and
//! the health report the host reads over SSH. `main.rs` is the command line; everything
//! else lives here so tests reach it.

pub mod announce;
pub mod clockops;
pub mod clockpath;
pub mod clocksource;
pub mod distro;
pub mod events;
pub mod files;
pub mod gateway;
pub mod health;
pub mod hypervisor;
pub mod kernel_hook;
pub mod kmod;
pub mod net;
pub mod nethook;
pub mod netlink;
pub mod networkd_repair;
pub mod pkg;
pub mod probe;
pub mod procfs;
pub mod rtc;
pub mod service;
pub mod setup;
pub mod sysroot;
pub mod timekeeping;
pub mod watch;

/// The commit this agent was built from (`--version`, health reports).
pub const GIT_COMMIT: &str = env!("ALMAVMM_GIT_COMMIT");
