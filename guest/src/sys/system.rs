//! The system facts of the health report: memory, swap, load, CPUs, uptime and the local
//! filesystems come from sysinfo; by hand only what sysinfo does not give: the inode and
//! used-block counts of each filesystem (statvfs `f_files`/`f_ffree`/`f_bfree`; sysinfo's
//! `Disk` has only total and available space) and the OOM kill count (/proc/vmstat).
//!
//! sysinfo reads the running kernel's /proc and /sys whatever `--root` says; only the OOM
//! count is read under the root.

use std::collections::BTreeMap;

use almavmm_shared::health::{FilesystemInfo, LoadInfo, MemoryInfo, SwapInfo};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, System};

use crate::sys::sysroot::SysRoot;

#[derive(Debug, Clone, PartialEq)]
pub struct SystemFacts {
    pub uptime_secs: f64,
    pub memory: MemoryInfo,
    pub load: LoadInfo,
    pub filesystems: Vec<FilesystemInfo>,
}

pub fn gather(root: &SysRoot) -> SystemFacts {
    let mut sys = System::new();
    sys.refresh_memory();
    sys.refresh_cpu_list(CpuRefreshKind::nothing());
    let oom_kills = root.read_optional("/proc/vmstat").ok().flatten().and_then(|t| crate::sys::procfs::oom_kills(&t));
    let memory = MemoryInfo {
        total_kib: sys.total_memory() / 1024,
        available_kib: sys.available_memory() / 1024,
        swap: Some(SwapInfo { total_kib: sys.total_swap() / 1024, used_kib: sys.used_swap() / 1024 }),
        oom_kills,
    };
    let avg = System::load_average();
    let load = LoadInfo {
        one: avg.one,
        five: avg.five,
        fifteen: avg.fifteen,
        cpus: u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX).max(1),
    };
    SystemFacts { uptime_secs: System::uptime() as f64, memory, load, filesystems: filesystems() }
}

/// What statvfs(3) says of a mounted filesystem, beyond sysinfo's two sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Fragment size: the unit of the block counts.
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
}

/// One filesystem of the report from sysinfo's sizes and, when statvfs answered, its counts.
pub fn filesystem(
    mount_point: &str,
    device: &str,
    fs_type: &str,
    size_bytes: u64,
    available_bytes: u64,
    counts: Option<Counts>,
) -> FilesystemInfo {
    let used_bytes = counts.map(|c| c.blocks.saturating_sub(c.bfree).saturating_mul(c.frsize));
    // btrfs, vfat and the like report no inode table (0 files): nothing to run out of.
    let inode_counts = counts.filter(|c| c.files > 0);
    FilesystemInfo {
        mount_point: mount_point.into(),
        device: device.into(),
        fs_type: fs_type.into(),
        size_bytes,
        available_bytes,
        used_bytes,
        inodes: inode_counts.map(|c| c.files),
        inodes_free: inode_counts.map(|c| c.ffree),
    }
}

/// One entry per mount point, the one mounted last (the one a path there reaches), in
/// mount-point order; filesystems of no size left out.
pub fn one_per_mount_point(all: Vec<FilesystemInfo>) -> Vec<FilesystemInfo> {
    let mut by_mount: BTreeMap<String, FilesystemInfo> = BTreeMap::new();
    for fs in all.into_iter().filter(|f| f.size_bytes > 0) {
        by_mount.insert(fs.mount_point.clone(), fs);
    }
    by_mount.into_values().collect()
}

fn statvfs_counts(path: &std::path::Path) -> Option<Counts> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(Counts { frsize: s.f_frsize, blocks: s.f_blocks, bfree: s.f_bfree, files: s.f_files, ffree: s.f_ffree })
}

/// The writable local filesystems sysinfo lists (it leaves out pseudo filesystems, tmpfs,
/// network mounts, squashfs and optical media). Read-only ones cannot fill up: left out.
fn filesystems() -> Vec<FilesystemInfo> {
    let disks = Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage());
    let all = disks
        .list()
        .iter()
        .filter(|d| !d.is_read_only())
        .map(|d| {
            filesystem(
                &d.mount_point().to_string_lossy(),
                &d.name().to_string_lossy(),
                &d.file_system().to_string_lossy(),
                d.total_space(),
                d.available_space(),
                statvfs_counts(d.mount_point()),
            )
        })
        .collect();
    one_per_mount_point(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_give_used_bytes_and_inodes() {
        let c = Counts { frsize: 4096, blocks: 1000, bfree: 300, files: 640, ffree: 600 };
        let f = filesystem("/", "/dev/vda1", "ext4", 4_096_000, 1_024_000, Some(c));
        assert_eq!(f.used_bytes, Some(700 * 4096));
        assert_eq!((f.inodes, f.inodes_free), (Some(640), Some(600)));
        assert_eq!(f.block_use_percent(), Some(74)); // 700 / (700 + 250), rounded up
        // btrfs: no inode table.
        let f = filesystem("/home", "/dev/vdb", "btrfs", 1, 1, Some(Counts { files: 0, ffree: 0, ..c }));
        assert_eq!((f.inodes, f.inodes_free), (None, None));
        assert_eq!(f.used_bytes, Some(700 * 4096));
        // statvfs failed: sizes only.
        let f = filesystem("/x", "d", "xfs", 10, 5, None);
        assert_eq!((f.used_bytes, f.inodes), (None, None));
    }

    #[test]
    fn the_last_mount_on_a_point_wins_and_empty_ones_go() {
        let fs = |m: &str, dev: &str, size| FilesystemInfo {
            mount_point: m.into(),
            device: dev.into(),
            size_bytes: size,
            ..Default::default()
        };
        let kept = one_per_mount_point(vec![
            fs("/", "/dev/vda1", 10),
            fs("/boot", "/dev/vda15", 1),
            fs("/", "overlay", 20),
            fs("/empty", "x", 0),
        ]);
        let names: Vec<(&str, &str)> = kept.iter().map(|f| (f.mount_point.as_str(), f.device.as_str())).collect();
        assert_eq!(names, [("/", "overlay"), ("/boot", "/dev/vda15")]);
    }

    #[test]
    fn gathers_this_machines_facts() {
        let f = gather(&SysRoot::default());
        assert!(f.memory.total_kib > 0 && f.memory.available_kib <= f.memory.total_kib, "{:?}", f.memory);
        assert!(f.load.cpus >= 1);
        assert!(f.uptime_secs > 0.0);
        // This machine's /proc/vmstat has oom_kill (Linux 4.13 and later).
        assert!(f.memory.oom_kills.is_some());
        assert!(f.filesystems.iter().all(|x| x.size_bytes > 0 && !x.mount_point.is_empty()), "{:?}", f.filesystems);
    }
}
