use almavmm_shared::health::{FilesystemInfo, LoadInfo, MemoryInfo, SwapInfo, UnitsInfo};

use super::*;

const GIB: u64 = 1 << 30;

/// `percent` of a 10 GiB filesystem used (no reserve), with 100 000 inodes of which
/// `inodes_used` are in use.
fn fs(mount: &str, percent: u64, inodes_used: u64) -> FilesystemInfo {
    let size = 10 * GIB;
    let used = size / 100 * percent;
    FilesystemInfo {
        mount_point: mount.into(),
        device: "/dev/vda1".into(),
        fs_type: "ext4".into(),
        size_bytes: size,
        available_bytes: size - used,
        used_bytes: Some(used),
        inodes: Some(100_000),
        inodes_free: Some(100_000 - inodes_used),
    }
}

#[test]
fn disk_thresholds_on_blocks() {
    assert_eq!(disk_check("a", &[fs("/", 84, 0)]).status, Status::Ok);
    assert_eq!(disk_check("a", &[fs("/", 85, 0)]).status, Status::Warn);
    assert_eq!(disk_check("a", &[fs("/", 94, 0)]).status, Status::Warn);
    let c = disk_check("alma", &[fs("/boot", 20, 0), fs("/", 96, 0)]);
    assert_eq!(c.status, Status::Fail);
    assert_eq!(c.finding, "/ 96% full (409.6 MiB free of 10.0 GiB)");
    assert!(c.fix.as_deref().unwrap().starts_with("ssh alma.almavmm sudo du -xh -d 2 / | sort -h"), "{c:?}");
}

#[test]
fn a_completely_full_filesystem_fails() {
    let mut full = fs("/var", 100, 0);
    full.available_bytes = 0;
    let c = disk_check("a", &[full]);
    assert_eq!(c.status, Status::Fail);
    assert!(c.finding.starts_with("/var 100% full (0 B free"), "{}", c.finding);
}

#[test]
fn disk_thresholds_on_inodes() {
    assert_eq!(disk_check("a", &[fs("/", 10, 84_000)]).status, Status::Ok);
    let c = disk_check("a", &[fs("/", 10, 85_000)]);
    assert_eq!(c.status, Status::Warn);
    assert_eq!(c.finding, "/ 10% full (9.0 GiB free of 10.0 GiB), inodes 85% used (15000 free)");
    assert_eq!(disk_check("a", &[fs("/", 10, 95_000)]).status, Status::Fail);
    // No inode table (btrfs): judged on blocks alone.
    let mut btrfs = fs("/", 10, 0);
    (btrfs.inodes, btrfs.inodes_free) = (None, None);
    assert_eq!(disk_check("a", &[btrfs]).status, Status::Ok);
}

#[test]
fn the_worst_filesystem_comes_first_and_healthy_ones_are_not_listed() {
    let c = disk_check("a", &[fs("/boot", 90, 0), fs("/", 97, 0), fs("/home", 10, 0)]);
    assert_eq!(c.status, Status::Fail);
    assert!(c.finding.starts_with("/ 97% full") && c.finding.contains("; /boot 90% full"), "{}", c.finding);
    assert!(!c.finding.contains("/home"), "{}", c.finding);
    // All healthy: every mount point with its use, no fix.
    let c = disk_check("a", &[fs("/", 50, 0), fs("/boot", 20, 0)]);
    assert_eq!((c.status, c.fix.as_deref()), (Status::Ok, None));
    assert!(c.finding.contains("/ 50% full") && c.finding.contains("/boot 20% full"), "{}", c.finding);
}

#[test]
fn no_filesystem_at_all_is_a_warning() {
    assert_eq!(disk_check("a", &[]).status, Status::Warn);
}

fn mem(swap_total: u64, swap_used: u64, oom: Option<u64>) -> MemoryInfo {
    MemoryInfo {
        total_kib: 2 << 20,
        available_kib: 1 << 20,
        swap: Some(SwapInfo { total_kib: swap_total, used_kib: swap_used }),
        oom_kills: oom,
    }
}

#[test]
fn memory_warns_on_heavy_swap_or_an_oom_kill() {
    let c = memory_check("a", &mem(0, 0, Some(0)));
    assert_eq!(c.status, Status::Ok);
    assert_eq!(c.finding, "1.0 GiB available of 2.0 GiB, no swap, no OOM kill since boot");
    // 25% exactly is still fine; above it is not.
    assert_eq!(memory_check("a", &mem(1000, 250, Some(0))).status, Status::Ok);
    assert_eq!(memory_check("a", &mem(1000, 251, Some(0))).status, Status::Warn);
    let c = memory_check("alma", &mem(0, 0, Some(1)));
    assert_eq!(c.status, Status::Warn);
    assert!(c.finding.ends_with("the OOM killer fired 1 time since boot"), "{}", c.finding);
    assert!(c.fix.as_deref().unwrap().starts_with("ssh alma.almavmm sudo journalctl -k"), "{c:?}");
    // A kernel that does not count OOM kills: judged on swap alone, and said so.
    let c = memory_check("a", &mem(0, 0, None));
    assert_eq!(c.status, Status::Ok);
    assert!(c.finding.ends_with("OOM kills not counted by this kernel"), "{}", c.finding);
}

#[test]
fn load_warns_when_the_15_minute_average_exceeds_the_cpus() {
    let l = |fifteen, cpus| LoadInfo { one: 9.0, five: 3.0, fifteen, cpus };
    assert_eq!(load_check("a", &l(1.0, 1)).status, Status::Ok, "equal to the CPUs is fully busy, not overloaded");
    let c = load_check("a", &l(1.01, 1));
    assert_eq!(c.status, Status::Warn);
    assert_eq!(c.finding, "load 9.00 3.00 1.01 (1, 5, 15 min) on 1 CPU");
    assert_eq!(load_check("a", &l(3.5, 4)).status, Status::Ok, "the 1-minute spike alone does not count");
    // An agent that could not count CPUs is read as one.
    assert_eq!(load_check("a", &l(1.5, 0)).status, Status::Warn);
}

#[test]
fn failed_units_are_named() {
    let ok = units_check("a", &UnitsInfo { failed: vec![], error: None });
    assert_eq!((ok.status, ok.finding.as_str()), (Status::Ok, "no failed units"));
    let c = units_check(
        "alma",
        &UnitsInfo { failed: vec!["almavmm-e2e-fails.service".into(), "dnf-makecache.service".into()], error: None },
    );
    assert_eq!(c.status, Status::Warn);
    assert_eq!(c.finding, "2 failed units: almavmm-e2e-fails.service, dnf-makecache.service");
    assert_eq!(
        c.fix.as_deref(),
        Some(
            "ssh alma.almavmm systemctl status almavmm-e2e-fails.service dnf-makecache.service  # once fixed: sudo systemctl reset-failed"
        )
    );
    let c = units_check("a", &UnitsInfo { failed: vec![], error: Some("systemctl: not found".into()) });
    assert_eq!(c.status, Status::Skip);
}

#[test]
fn an_agent_before_revision_1_gets_skipped_checks_that_say_why() {
    let old: HealthReport =
        almavmm_shared::health::parse_report(include_str!("../../../../shared/tests/fixtures/health-report-1.0.json"))
            .unwrap();
    let c = checks("alma", &old);
    let ids: Vec<&str> = c.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["guest.disk", "guest.memory", "guest.load", "guest.units"]);
    for x in &c {
        assert_eq!(x.status, Status::Skip, "{x:?}");
        assert!(x.finding.contains("(protocol 1.0) does not report"), "{x:?}");
        assert!(x.fix.as_deref().unwrap().contains("almavmm-host up alma"), "{x:?}");
    }
}
