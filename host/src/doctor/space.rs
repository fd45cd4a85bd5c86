//! `host.space`: whether the filesystem of `$ALMAVMM_HOME` can hold what the guests'
//! overlays may still grow to. Overlays are thin: each may grow up to its virtual size,
//! and a guest whose disk cannot grow gets I/O errors (QEMU pauses it, vmd fails it).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::check::{Check, Group, Status};
use crate::state::home::Home;
use crate::state::vm::Vm;
use crate::ui::human_bytes;

/// Below this much free space `host.space` fails whatever the guests need: images, seeds
/// and logs need room too.
pub const FAIL_BELOW_BYTES: u64 = 1 << 30;

/// One guest's disk as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The size the guest sees (the overlay's virtual size).
    pub size_bytes: u64,
    /// What the overlay file takes on the host now (allocated blocks).
    pub allocated_bytes: u64,
}

/// How much the overlays may still take on the host, at most (qcow2's own metadata aside).
pub fn may_grow(overlays: &[Overlay]) -> u64 {
    overlays.iter().map(|o| o.size_bytes.saturating_sub(o.allocated_bytes)).fold(0, u64::saturating_add)
}

/// Warn when `free` is less than what the overlays may still grow to; fail under 1 GiB.
pub fn space_check(home: &Path, free: u64, overlays: &[Overlay]) -> Check {
    let grow = may_grow(overlays);
    let n = overlays.len();
    let finding = format!(
        "{} free under {}; {}",
        human_bytes(free),
        home.display(),
        if n == 0 {
            "no guest disks".to_string()
        } else {
            format!("the {n} guest disk{} may still grow by {}", if n == 1 { "" } else { "s" }, human_bytes(grow))
        }
    );
    let status = if free < FAIL_BELOW_BYTES {
        Status::Fail
    } else if free < grow {
        Status::Warn
    } else {
        Status::Ok
    };
    Check::new(Group::Host, "host.space", status, finding).fix(format!(
        "free space on the filesystem of {} (or move it: ALMAVMM_HOME), or remove guests no longer needed: almavmm-host destroy NAME",
        home.display()
    ))
}

/// Free space for an unprivileged user on the filesystem holding `path`.
// fsblkcnt_t and c_ulong are u64 here, but not on every platform nix supports.
#[allow(clippy::useless_conversion)]
fn free_bytes(path: &Path) -> nix::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path)?;
    Ok(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
}

/// The check for this host's `$ALMAVMM_HOME` and every guest in it.
pub fn check(home: &Home) -> Check {
    // The home may not exist yet (no guest ever): measure where it will be made.
    let mut at = home.root();
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    let free = match free_bytes(at) {
        Ok(f) => f,
        Err(e) => {
            return Check::new(
                Group::Host,
                "host.space",
                Status::Warn,
                format!("cannot tell the free space under {}: {e}", at.display()),
            );
        }
    };
    let overlays: Vec<Overlay> = Vm::load_all(home)
        .into_iter()
        .flatten()
        .map(|vm| Overlay {
            size_bytes: vm.spec.disk_size.as_u64(),
            allocated_bytes: std::fs::metadata(vm.disk()).map(|m| m.blocks() * 512).unwrap_or(0),
        })
        .collect();
    space_check(home.root(), free, &overlays)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn growth_is_what_each_overlay_has_left() {
        let o = |size, allocated| Overlay { size_bytes: size, allocated_bytes: allocated };
        assert_eq!(may_grow(&[o(10 * GIB, 2 * GIB), o(20 * GIB, 20 * GIB)]), 8 * GIB);
        // An overlay larger than its virtual size (qcow2 metadata, snapshots) adds nothing.
        assert_eq!(may_grow(&[o(GIB, 2 * GIB)]), 0);
        assert_eq!(may_grow(&[]), 0);
    }

    #[test]
    fn thresholds() {
        let home = Path::new("/home/u/.local/share/almavmm");
        let disks = [Overlay { size_bytes: 10 * GIB, allocated_bytes: 2 * GIB }];
        let c = space_check(home, 8 * GIB, &disks);
        assert_eq!(c.status, Status::Ok, "exactly enough");
        assert_eq!(
            c.finding,
            "8.0 GiB free under /home/u/.local/share/almavmm; the 1 guest disk may still grow by 8.0 GiB"
        );
        assert_eq!(c.fix, None);
        let c = space_check(home, 8 * GIB - 1, &disks);
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.as_deref().unwrap().starts_with("free space on the filesystem of /home/u/"), "{c:?}");
        // Under 1 GiB fails even with nothing to grow.
        assert_eq!(space_check(home, GIB - 1, &[]).status, Status::Fail);
        assert_eq!(space_check(home, GIB, &[]).status, Status::Ok);
        assert!(space_check(home, GIB, &[]).finding.ends_with("; no guest disks"));
    }

    #[test]
    fn measures_a_home_that_does_not_exist_yet_where_it_will_be() {
        let dir = tempfile::tempdir().unwrap();
        let c = check(&Home::at(dir.path().join("not/yet")));
        assert_ne!(c.status, Status::Skip);
        assert!(c.finding.contains("not/yet; no guest disks"), "{c:?}");
    }
}
