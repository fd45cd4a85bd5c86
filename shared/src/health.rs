//! The health report `almavmm-agent health --json` prints and the host reads over SSH, and
//! the clock events the watcher records (also part of the report).
//!
//! Versioning: the report carries `protocol`, the major protocol version, and
//! `protocol_minor`, the revision within it ([`crate::PROTOCOL_MINOR`]; absent, so 0, from
//! agents that predate revisions). Within one protocol, fields are only ever added (readers
//! ignore fields they do not know, and every field added later has a default meaning "not
//! reported"), so an older host reads a newer agent's report of the same protocol and a
//! newer host reads an older agent's. A different protocol is refused by [`parse_report`]
//! with a message that says what to do.

use serde::{Deserialize, Serialize};

use crate::setup::SetupReport;

/// Everything the host wants to know about the guest, in one document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub protocol: u32,
    /// Revision within `protocol`; 0 from agents that predate revisions.
    #[serde(default)]
    pub protocol_minor: u32,
    pub agent: AgentInfo,
    /// Guest CLOCK_REALTIME when the report was made, ns since the Unix epoch.
    pub generated_at_ns: i64,
    pub distro: DistroInfo,
    /// Running kernel release (`uname -r`).
    pub kernel: String,
    pub clocksource: ClocksourceInfo,
    pub clock_path: ClockPathInfo,
    pub module: ModuleState,
    /// The newest clock events, oldest first.
    #[serde(default)]
    pub clock_events: Vec<ClockEvent>,
    pub network: NetworkInfo,
    /// The latest setup run, if setup ever ran.
    pub setup: Option<SetupReport>,
    pub uptime_secs: f64,
    pub memory: MemoryInfo,
    /// Load averages and CPU count; `None` from agents before revision 1.
    #[serde(default)]
    pub load: Option<LoadInfo>,
    /// Mounted local filesystems; `None` from agents before revision 1.
    #[serde(default)]
    pub filesystems: Option<Vec<FilesystemInfo>>,
    /// systemd's failed units; `None` from agents before revision 1.
    #[serde(default)]
    pub units: Option<UnitsInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub commit: String,
    pub origin: AgentOrigin,
}

/// How the agent binary got into the guest (written by the seed's bootstrap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentOrigin {
    /// A binary built on the host and carried by the seed.
    Prebuilt,
    /// Built inside the guest from the seed's source bundle.
    BuiltInGuest,
    /// No record (installed by hand, or an origin this host does not know).
    #[serde(other)]
    Unknown,
}

impl AgentOrigin {
    /// Parse the contents of `/var/lib/almavmm/agent-origin`.
    pub fn from_marker(text: &str) -> AgentOrigin {
        match text.trim() {
            "prebuilt" => AgentOrigin::Prebuilt,
            "built-in-guest" => AgentOrigin::BuiltInGuest,
            _ => AgentOrigin::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistroInfo {
    /// `ID` from os-release (`almalinux`, `debian`…).
    pub id: String,
    /// `VERSION_ID` (`9.6`, `12`…), empty when absent.
    pub version_id: String,
    pub pretty_name: String,
    /// The package manager setup uses; `None` for a distribution it does not support.
    pub package_manager: Option<PackageManager>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Dnf,
    Apt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClocksourceInfo {
    pub current: Option<String>,
    pub available: Vec<String>,
}

/// Which clock the guest follows the host with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClockPath {
    /// The hypervisor offers kvm-clock (current OpenBSD vmm answers as KVM too): no module.
    KvmClock,
    /// OpenBSD vmm without the KVM signature: our `vmm_clock` module.
    VmmClock,
    /// No paravirtual clock offered (QEMU without KVM, other hypervisors): no module.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockPathInfo {
    pub path: ClockPath,
    /// Why, with what was seen (signatures, clocksources).
    pub reason: String,
}

/// Where the `vmm_clock` module stands for the running kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModuleState {
    /// The kernel release these facts are about.
    pub kernel: String,
    pub built: bool,
    pub installed: bool,
    pub loaded: bool,
    /// Listed in `/etc/modules-load.d/vmm_clock.conf`.
    pub persisted: bool,
    /// The kernel-update hook that rebuilds it for new kernels is in place.
    pub hook_installed: bool,
    /// When not loaded although a load was attempted: the kernel's reason from its log.
    pub load_error: Option<String>,
}

/// Something the watcher (or a clock command) noticed or did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockEvent {
    /// Guest CLOCK_REALTIME when recorded, ns since the Unix epoch.
    pub at_ns: i64,
    pub kind: ClockEventKind,
    /// The offset or step concerned, ns (system minus reference; negative: system behind).
    pub offset_ns: Option<i64>,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClockEventKind {
    /// The watcher started.
    WatchStarted,
    /// Someone set the wall clock (timerfd cancel-on-set fired); `offset_ns` is the step.
    WallClockStep,
    /// The clock-change notification fired without a step (typically a resume).
    Resume,
    /// The periodic timer fired later than it should: the guest did not run for a while.
    Stall,
    /// The system clock was compared with the RTC; `offset_ns` is system minus RTC.
    RtcCheck,
    /// The system clock was stepped to the RTC's time; `offset_ns` is the correction.
    SteppedFromRtc,
    /// `chronyc makestep` was asked for after a step.
    ChronyStep,
    /// The host stepped the clock (`clock set` or a SET in a probe session).
    HostSet,
    /// A network link came (back) up.
    LinkUp,
    /// Something went wrong (the detail says what).
    Error,
    /// A kind this reader does not know (recorded by a newer agent).
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The interface of the default route.
    pub interface: Option<String>,
    /// Its IPv4 address with prefix length (`100.64.1.3/31`).
    pub address: Option<String>,
    /// The default route's gateway.
    pub default_route: Option<String>,
    pub dns_servers: Vec<String>,
    pub resolve: ResolveCheck,
    /// Whether the default gateway (the host) answers; absent from agents that predate it.
    #[serde(default)]
    pub gateway: Option<GatewayCheck>,
}

/// One probe of the default gateway from inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GatewayCheck {
    pub address: String,
    pub ok: bool,
    /// How it answered (or why not), e.g. "ICMP echo reply in 0.4 ms".
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResolveCheck {
    pub name: String,
    pub ok: bool,
    pub addresses: Vec<String>,
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub total_kib: u64,
    pub available_kib: u64,
    /// `None` from agents before revision 1.
    #[serde(default)]
    pub swap: Option<SwapInfo>,
    /// OOM kills since boot (`oom_kill` of /proc/vmstat); `None` when unknown (an agent
    /// before revision 1, or a kernel before 4.13, which does not count them).
    #[serde(default)]
    pub oom_kills: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SwapInfo {
    pub total_kib: u64,
    pub used_kib: u64,
}

/// The run queue, as /proc/loadavg has it, and what it is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LoadInfo {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
    /// Online CPUs.
    pub cpus: u32,
}

/// One mounted local filesystem (pseudo, network and read-only media ones are left out).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FilesystemInfo {
    pub mount_point: String,
    /// The mounted device (`/dev/vda1`), as /proc/mounts names it.
    pub device: String,
    pub fs_type: String,
    pub size_bytes: u64,
    /// Free space an unprivileged user can use (statvfs `f_bavail`).
    pub available_bytes: u64,
    /// Space in use (statvfs `f_blocks - f_bfree`), so that blocks reserved for root count
    /// neither as used nor as available, as in df(1); `None` when statvfs failed.
    #[serde(default)]
    pub used_bytes: Option<u64>,
    /// Inodes in all and free; `None` for filesystems without a fixed number (btrfs, vfat
    /// report 0) or when statvfs failed.
    #[serde(default)]
    pub inodes: Option<u64>,
    #[serde(default)]
    pub inodes_free: Option<u64>,
}

impl FilesystemInfo {
    /// Blocks in use, in percent, the way df(1) counts them: used / (used + available),
    /// rounded up. Without `used_bytes`, everything not available counts as used.
    pub fn block_use_percent(&self) -> Option<u32> {
        let used = self.used_bytes.unwrap_or(self.size_bytes.saturating_sub(self.available_bytes));
        percent_up(used, used.saturating_add(self.available_bytes))
    }

    /// Inodes in use, in percent, rounded up; `None` when the filesystem has no inode count.
    pub fn inode_use_percent(&self) -> Option<u32> {
        let (all, free) = (self.inodes?, self.inodes_free?);
        percent_up(all.saturating_sub(free), all)
    }
}

/// `part` of `whole` in percent, rounded up like df(1); `None` for an empty whole.
fn percent_up(part: u64, whole: u64) -> Option<u32> {
    if whole == 0 {
        return None;
    }
    let p = (u128::from(part) * 100).div_ceil(u128::from(whole));
    Some(p.min(100) as u32)
}

/// systemd's view of the units.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UnitsInfo {
    /// Names of the units in the failed state (`foo.service`).
    pub failed: Vec<String>,
    /// Why the list could not be had (no systemd, systemctl failed); `failed` is then empty.
    #[serde(default)]
    pub error: Option<String>,
}

/// Why a report was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("the agent's answer is not JSON ({source}); first bytes: {head:?}")]
    NotJson {
        head: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agent's answer is JSON but not an almavmm health report (no \"protocol\" field)")]
    NotAReport,
    #[error(
        "the guest's agent reports protocol {theirs} but this almavmm ({version}) understands protocol {ours}: \
         install the agent that comes with this almavmm in the guest (the seed carries it), or use a host of the agent's version",
        version = crate::VERSION
    )]
    Incompatible { theirs: u32, ours: u32 },
    #[error("the agent's report (protocol {protocol}) could not be read: {source}")]
    Malformed {
        protocol: u32,
        #[source]
        source: serde_json::Error,
    },
}

/// Accept a report only when it speaks our protocol; say clearly what to do otherwise.
pub fn parse_report(json: &str) -> Result<HealthReport, HealthError> {
    #[derive(Deserialize)]
    struct Envelope {
        protocol: Option<u32>,
    }
    let head: String = json.chars().take(80).collect();
    let envelope: Envelope = serde_json::from_str(json).map_err(|source| HealthError::NotJson { head, source })?;
    let protocol = envelope.protocol.ok_or(HealthError::NotAReport)?;
    check_protocol(protocol)?;
    serde_json::from_str(json).map_err(|source| HealthError::Malformed { protocol, source })
}

/// Whether this side understands a peer speaking `protocol` (same major version).
pub fn check_protocol(protocol: u32) -> Result<(), HealthError> {
    if protocol == crate::PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(HealthError::Incompatible { theirs: protocol, ours: crate::PROTOCOL_VERSION })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HealthReport {
        HealthReport {
            protocol: crate::PROTOCOL_VERSION,
            protocol_minor: crate::PROTOCOL_MINOR,
            agent: AgentInfo { version: "0.1.0".into(), commit: "abc".into(), origin: AgentOrigin::Prebuilt },
            generated_at_ns: 1_700_000_000_000_000_000,
            distro: DistroInfo {
                id: "debian".into(),
                version_id: "12".into(),
                pretty_name: "Debian GNU/Linux 12 (bookworm)".into(),
                package_manager: Some(PackageManager::Apt),
            },
            kernel: "6.1.0-28-cloud-amd64".into(),
            clocksource: ClocksourceInfo { current: Some("tsc".into()), available: vec!["tsc".into(), "hpet".into()] },
            clock_path: ClockPathInfo {
                path: ClockPath::None,
                reason: "no paravirtual clock offered (QEMU without KVM)".into(),
            },
            module: ModuleState { kernel: "6.1.0-28-cloud-amd64".into(), ..Default::default() },
            clock_events: vec![ClockEvent {
                at_ns: 1,
                kind: ClockEventKind::SteppedFromRtc,
                offset_ns: Some(30_000_000_000),
                detail: "x".into(),
            }],
            network: NetworkInfo::default(),
            setup: None,
            uptime_secs: 12.5,
            memory: MemoryInfo {
                total_kib: 1000,
                available_kib: 500,
                swap: Some(SwapInfo { total_kib: 2048, used_kib: 12 }),
                oom_kills: Some(0),
            },
            load: Some(LoadInfo { one: 0.5, five: 0.25, fifteen: 0.125, cpus: 2 }),
            filesystems: Some(vec![FilesystemInfo {
                mount_point: "/".into(),
                device: "/dev/vda1".into(),
                fs_type: "ext4".into(),
                size_bytes: 10 << 30,
                available_bytes: 4 << 30,
                used_bytes: Some(6 << 30),
                inodes: Some(655_360),
                inodes_free: Some(600_000),
            }]),
            units: Some(UnitsInfo { failed: vec!["almavmm-e2e-fails.service".into()], error: None }),
        }
    }

    /// The report as a host of revision 0 (commit 3e1e81f) declared it, frozen here: what
    /// an old host deserializes a new agent's report into. Types it shared with today's
    /// report and that did not change are reused.
    mod revision0 {
        use super::super::{AgentInfo, ClockEvent, ClockPathInfo, ClocksourceInfo, DistroInfo, ModuleState};
        use super::super::{NetworkInfo, SetupReport};
        use serde::Deserialize;

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        pub struct HealthReport {
            pub protocol: u32,
            pub agent: AgentInfo,
            pub generated_at_ns: i64,
            pub distro: DistroInfo,
            pub kernel: String,
            pub clocksource: ClocksourceInfo,
            pub clock_path: ClockPathInfo,
            pub module: ModuleState,
            #[serde(default)]
            pub clock_events: Vec<ClockEvent>,
            pub network: NetworkInfo,
            pub setup: Option<SetupReport>,
            pub uptime_secs: f64,
            pub memory: MemoryInfo,
        }

        #[derive(Debug, Deserialize)]
        pub struct MemoryInfo {
            pub total_kib: u64,
            pub available_kib: u64,
        }

        /// Revision 0's `parse_report` accepted exactly protocol 1.
        pub fn parse_report(json: &str) -> Result<HealthReport, String> {
            let r: HealthReport = serde_json::from_str(json).map_err(|e| e.to_string())?;
            if r.protocol == 1 { Ok(r) } else { Err(format!("protocol {}", r.protocol)) }
        }
    }

    #[test]
    fn an_old_host_reads_a_new_agents_report() {
        let json = serde_json::to_string(&sample()).unwrap();
        let old = revision0::parse_report(&json).unwrap();
        assert_eq!(old.protocol, 1);
        assert_eq!(old.memory.total_kib, 1000);
        assert_eq!(old.memory.available_kib, 500);
        assert_eq!(old.kernel, "6.1.0-28-cloud-amd64");
    }

    #[test]
    fn a_new_host_reads_an_old_agents_report_with_the_new_facts_absent() {
        let r = parse_report(include_str!("../tests/fixtures/health-report-1.0.json")).unwrap();
        assert_eq!(r.protocol, 1);
        assert_eq!(r.protocol_minor, 0);
        assert_eq!(r.distro.id, "debian");
        assert!(r.memory.total_kib > 0);
        assert_eq!((r.memory.swap, r.memory.oom_kills), (None, None));
        assert_eq!(r.load, None);
        assert_eq!(r.filesystems, None);
        assert_eq!(r.units, None);
    }

    #[test]
    fn filesystem_use_is_counted_as_df_does() {
        let fs = |size: u64, avail: u64, used: Option<u64>| FilesystemInfo {
            size_bytes: size,
            available_bytes: avail,
            used_bytes: used,
            ..Default::default()
        };
        // df: 6 used, 4 available (the reserve is neither) → 60%.
        assert_eq!(fs(11, 4, Some(6)).block_use_percent(), Some(60));
        // Without statvfs's used count, the reserve counts as used.
        assert_eq!(fs(11, 4, None).block_use_percent(), Some(64));
        // Rounded up: 1 byte in use of 1000 is 1%, and 85.01% is 86%.
        assert_eq!(fs(1000, 999, Some(1)).block_use_percent(), Some(1));
        assert_eq!(fs(10_000, 1499, Some(8501)).block_use_percent(), Some(86));
        assert_eq!(fs(100, 0, Some(100)).block_use_percent(), Some(100));
        assert_eq!(fs(0, 0, Some(0)).block_use_percent(), None);
        let inodes = |all, free| FilesystemInfo { inodes: all, inodes_free: free, ..Default::default() };
        assert_eq!(inodes(Some(1000), Some(150)).inode_use_percent(), Some(85));
        assert_eq!(inodes(Some(0), Some(0)).inode_use_percent(), None);
        assert_eq!(inodes(None, None).inode_use_percent(), None);
    }

    #[test]
    fn round_trips_with_stable_names() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert!(json.contains(r#""path":"none""#), "{json}");
        assert!(json.contains(r#""origin":"prebuilt""#), "{json}");
        assert!(json.contains(r#""kind":"stepped-from-rtc""#), "{json}");
        assert_eq!(parse_report(&json).unwrap(), sample());
    }

    #[test]
    fn newer_fields_and_kinds_of_the_same_protocol_are_tolerated() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["brand_new_field"] = serde_json::json!({"x": 1});
        v["clock_events"][0]["kind"] = "something-new".into();
        v["agent"]["origin"] = "from-the-future".into();
        let r = parse_report(&v.to_string()).unwrap();
        assert_eq!(r.clock_events[0].kind, ClockEventKind::Unknown);
        assert_eq!(r.agent.origin, AgentOrigin::Unknown);
    }

    #[test]
    fn another_protocol_is_refused_with_what_to_do() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["protocol"] = (crate::PROTOCOL_VERSION + 1).into();
        let e = parse_report(&v.to_string()).unwrap_err();
        assert!(matches!(e, HealthError::Incompatible { .. }));
        let msg = e.to_string();
        assert!(msg.contains(&format!("reports protocol {}", crate::PROTOCOL_VERSION + 1)), "{msg}");
        assert!(msg.contains("install the agent that comes with this almavmm"), "{msg}");
    }

    #[test]
    fn garbage_is_named_as_such() {
        let e = parse_report("bash: almavmm-agent: command not found").unwrap_err();
        assert!(matches!(e, HealthError::NotJson { .. }));
        assert!(e.to_string().contains("command not found"), "{e}");
        assert!(matches!(parse_report(r#"{"hello": 1}"#), Err(HealthError::NotAReport)));
        let e = parse_report(r#"{"protocol": 1, "agent": 5}"#).unwrap_err();
        assert!(matches!(e, HealthError::Malformed { protocol: 1, .. }), "{e}");
    }

    #[test]
    fn origin_marker() {
        assert_eq!(AgentOrigin::from_marker("prebuilt\n"), AgentOrigin::Prebuilt);
        assert_eq!(AgentOrigin::from_marker("built-in-guest\n"), AgentOrigin::BuiltInGuest);
        assert_eq!(AgentOrigin::from_marker(""), AgentOrigin::Unknown);
    }
}
