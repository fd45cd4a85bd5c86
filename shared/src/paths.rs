//! Where things live inside the guest. The host reads these over SSH and the seed's
//! bootstrap writes some of them, so both sides take them from here.

/// The agent binary the seed installs.
pub const AGENT_BIN: &str = "/usr/local/bin/almavmm-agent";

/// The agent's state directory.
pub const STATE_DIR: &str = "/var/lib/almavmm";

/// Setup steps with their outcomes, written by `almavmm-agent setup`.
pub const SETUP_JSON: &str = "/var/lib/almavmm/setup.json";

/// Written last by setup; holds the cloud-init instance id it was written for, so a marker
/// left from an earlier instance never counts as done.
pub const BOOT_DONE: &str = "/var/lib/almavmm/boot-done";

/// The bootstrap's own log (what it also writes to the console).
pub const BOOTSTRAP_LOG: &str = "/var/lib/almavmm/bootstrap.log";

/// Clock events recorded by the watcher, one JSON object per line, size bounded.
pub const CLOCK_EVENTS: &str = "/var/lib/almavmm/clock-events.jsonl";

/// cloud-init's current instance id.
pub const CLOUD_INSTANCE_ID: &str = "/var/lib/cloud/data/instance-id";

/// Source directory of the kernel module for this version (DKMS-style name).
pub fn kmod_src_dir() -> String {
    format!("/usr/src/vmm_clock-{}", crate::VERSION)
}

/// `prebuilt` or `built-in-guest`: how the agent got here, written by the seed's bootstrap.
pub const AGENT_ORIGIN: &str = "/var/lib/almavmm/agent-origin";

/// Where the agent builds the module, one folder per kernel release, so `/usr/src` stays
/// as the seed left it.
pub fn kmod_build_dir(kernel: &str) -> String {
    format!("/var/lib/almavmm/kmod-build/{kernel}")
}

/// Name of the module and of its `modules-load.d` file.
pub const KMOD_NAME: &str = "vmm_clock";

/// Makes systemd-modules-load(8) load the module at boot.
pub const MODULES_LOAD_CONF: &str = "/etc/modules-load.d/vmm_clock.conf";

/// The watcher's systemd unit.
pub const SERVICE_NAME: &str = "almavmm-agent.service";
pub const SERVICE_UNIT: &str = "/etc/systemd/system/almavmm-agent.service";
