//! What most often breaks a long-lived guest, judged from the agent's report: a full
//! filesystem, memory pressure, a load that never comes down, failed units. Agents before
//! protocol revision 1 do not report these: their checks are skipped with the reason.

use almavmm_shared::health::{FilesystemInfo, HealthReport, LoadInfo, MemoryInfo, UnitsInfo};

use crate::check::{Check, Group, Status};
use crate::ui::human_bytes;

/// Blocks or inodes in use (as df(1) shows them) from which `guest.disk` warns…
pub const DISK_WARN_PERCENT: u32 = 85;
/// …and fails: dnf, the journal and the module build fail on a full root.
pub const DISK_FAIL_PERCENT: u32 = 95;
/// Share of the swap space in use above which `guest.memory` warns: a little swap is idle
/// pages pushed out, this much is a guest short of memory.
pub const SWAP_WARN_PERCENT: u64 = 25;

pub fn checks(name: &str, h: &HealthReport) -> [Check; 4] {
    let old = |id: &str, what: &str| {
        Check::new(
            Group::Guest,
            id,
            Status::Skip,
            format!(
                "not checked: agent {} (protocol {}.{}) does not report {what}",
                h.agent.version, h.protocol, h.protocol_minor
            ),
        )
        .fix(format!("almavmm-host destroy {name} && almavmm-host up {name}  # an agent of this host reports it"))
    };
    [
        h.filesystems.as_deref().map_or_else(|| old("guest.disk", "filesystems"), |f| disk_check(name, f)),
        match h.memory.swap {
            Some(_) => memory_check(name, &h.memory),
            None => old("guest.memory", "swap or OOM kills"),
        },
        h.load.map_or_else(|| old("guest.load", "the load"), |l| load_check(name, &l)),
        h.units.as_ref().map_or_else(|| old("guest.units", "failed units"), |u| units_check(name, u)),
    ]
}

/// The status of one use percentage against the disk thresholds.
fn disk_status(percent: Option<u32>) -> Status {
    match percent {
        Some(p) if p >= DISK_FAIL_PERCENT => Status::Fail,
        Some(p) if p >= DISK_WARN_PERCENT => Status::Warn,
        _ => Status::Ok,
    }
}

/// What one filesystem looks like, and how it stands.
fn judge_fs(f: &FilesystemInfo) -> (Status, String) {
    let blocks = f.block_use_percent();
    let inodes = f.inode_use_percent();
    let status = disk_status(blocks).max_by_severity(disk_status(inodes));
    let mut text = format!(
        "{} {}% full ({} free of {})",
        f.mount_point,
        blocks.unwrap_or(0),
        human_bytes(f.available_bytes),
        human_bytes(f.size_bytes)
    );
    match (inodes, f.inodes_free) {
        (Some(p), Some(free)) if disk_status(Some(p)) != Status::Ok => {
            text.push_str(&format!(", inodes {p}% used ({free} free)"));
        }
        _ => {}
    }
    (status, text)
}

/// `guest.disk`: warn at 85% of blocks or inodes, fail at 95%, naming the mount points.
pub fn disk_check(name: &str, filesystems: &[FilesystemInfo]) -> Check {
    if filesystems.is_empty() {
        return Check::new(Group::Guest, "guest.disk", Status::Warn, "the agent found no local filesystem")
            .fix(format!("ssh {name}.almavmm df -h"));
    }
    let judged: Vec<(Status, String, &str)> = filesystems
        .iter()
        .map(|f| {
            let (s, t) = judge_fs(f);
            (s, t, f.mount_point.as_str())
        })
        .collect();
    let worst = judged.iter().map(|j| j.0).fold(Status::Ok, Status::max_by_severity);
    if worst == Status::Ok {
        let all: Vec<&str> = judged.iter().map(|j| j.1.as_str()).collect();
        return Check::new(Group::Guest, "guest.disk", Status::Ok, all.join("; "));
    }
    // Only the ones in trouble, worst first; the fix looks into the worst.
    let mut bad: Vec<&(Status, String, &str)> = judged.iter().filter(|j| j.0 != Status::Ok).collect();
    bad.sort_by_key(|j| std::cmp::Reverse(j.0.severity()));
    let finding: Vec<&str> = bad.iter().map(|j| j.1.as_str()).collect();
    Check::new(Group::Guest, "guest.disk", worst, finding.join("; ")).fix(format!(
        "ssh {name}.almavmm sudo du -xh -d 2 {} | sort -h | tail  # then remove what is not needed (journalctl --vacuum-size=100M, dnf clean all)",
        bad[0].2
    ))
}

/// `guest.memory`: warn when more than [`SWAP_WARN_PERCENT`] of the swap is in use, or when
/// the kernel's OOM killer has fired since boot.
pub fn memory_check(name: &str, m: &MemoryInfo) -> Check {
    let swap = m.swap.unwrap_or_default();
    let swap_heavy = swap.total_kib > 0 && swap.used_kib * 100 > swap.total_kib * SWAP_WARN_PERCENT;
    let oom = m.oom_kills.unwrap_or(0);
    let mut finding =
        format!("{} available of {}", human_bytes(m.available_kib * 1024), human_bytes(m.total_kib * 1024));
    if swap.total_kib == 0 {
        finding.push_str(", no swap");
    } else {
        finding.push_str(&format!(
            ", swap {} used of {}",
            human_bytes(swap.used_kib * 1024),
            human_bytes(swap.total_kib * 1024)
        ));
    }
    match m.oom_kills {
        Some(0) => finding.push_str(", no OOM kill since boot"),
        Some(n) => {
            finding.push_str(&format!(", the OOM killer fired {n} time{} since boot", if n == 1 { "" } else { "s" }))
        }
        None => finding.push_str(", OOM kills not counted by this kernel"),
    }
    let status = if swap_heavy || oom > 0 { Status::Warn } else { Status::Ok };
    Check::new(Group::Guest, "guest.memory", status, finding).fix(format!(
        "ssh {name}.almavmm sudo journalctl -k -g 'Out of memory'  # what was killed; more memory: raise memory: in its vm.yaml, then almavmm-host stop {name} && almavmm-host start {name}"
    ))
}

/// `guest.load`: warn when the 15-minute load is above the number of CPUs.
pub fn load_check(name: &str, l: &LoadInfo) -> Check {
    let cpus = l.cpus.max(1);
    let finding = format!(
        "load {:.2} {:.2} {:.2} (1, 5, 15 min) on {cpus} CPU{}",
        l.one,
        l.five,
        l.fifteen,
        if cpus == 1 { "" } else { "s" }
    );
    let status = if l.fifteen > f64::from(cpus) { Status::Warn } else { Status::Ok };
    Check::new(Group::Guest, "guest.load", status, finding)
        .fix(format!("ssh {name}.almavmm top -b -n 1 | head -20  # what keeps it busy"))
}

/// `guest.units`: warn on failed systemd units, naming them.
pub fn units_check(name: &str, u: &UnitsInfo) -> Check {
    if let Some(e) = &u.error {
        return Check::new(Group::Guest, "guest.units", Status::Skip, format!("not checked: {e}"));
    }
    if u.failed.is_empty() {
        return Check::new(Group::Guest, "guest.units", Status::Ok, "no failed units");
    }
    let n = u.failed.len();
    Check::new(
        Group::Guest,
        "guest.units",
        Status::Warn,
        format!("{n} failed unit{}: {}", if n == 1 { "" } else { "s" }, u.failed.join(", ")),
    )
    .fix(format!(
        "ssh {name}.almavmm systemctl status {}  # once fixed: sudo systemctl reset-failed",
        u.failed.join(" ")
    ))
}

#[cfg(test)]
mod tests;
