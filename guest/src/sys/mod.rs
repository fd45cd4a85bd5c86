//! What the rest of the agent stands on: the root every path resolves against (a fixture
//! tree in tests), safe file writes, /proc and sysinfo's system facts, systemd's failed units, the distribution, the agent's own service and
//! the lines it announces. Nothing here knows about clocks or the module, so every other
//! folder can use it without pulling in those.

pub mod announce;
pub mod distro;
pub mod procfs;
pub mod selinux;
pub mod service;
pub mod sysroot;
pub mod system;
pub mod units;
