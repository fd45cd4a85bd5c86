//! Per-VM disks: thin qcow2 overlays on a prepared base, with the base's absolute path.
//!
//! `qemu-img create` replaces an existing file without asking, so the overlay is made under
//! a temporary name beside the disk and then linked to the disk's name, which fails if
//! anything is there: an existing guest disk is never overwritten.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use almavmm_shared::runner::Cmd;

use super::{ImageError, QEMU_IMG_HINT, inspect};

/// The program that makes overlays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayTool {
    /// `qemu-img create -f qcow2 -b BASE -F qcow2 DISK SIZE` (Linux, QEMU).
    QemuImg,
    /// `vmctl create -b BASE DISK` (OpenBSD), then `qemu-img resize` to grow it: vmctl(8)
    /// says "-s … If the -b option is specified, the size must match the size of the base
    /// image", so vmctl alone cannot make a larger disk.
    Vmctl,
}

impl OverlayTool {
    /// vmctl on OpenBSD, qemu-img elsewhere.
    pub fn native() -> OverlayTool {
        if cfg!(target_os = "openbsd") { OverlayTool::Vmctl } else { OverlayTool::QemuImg }
    }
}

/// Create `disk` (mode 0600) as an overlay of `base`, `size_bytes` large as the guest sees
/// it. Refuses an existing `disk` and a size below the base's virtual size.
pub fn create_overlay(base: &Path, disk: &Path, size_bytes: u64, tool: OverlayTool) -> Result<(), ImageError> {
    let base = fs::canonicalize(base).map_err(|e| ImageError::io("cannot find the base image", base, e))?;
    if disk.symlink_metadata().is_ok() {
        return Err(ImageError::DiskExists { path: disk.to_path_buf() });
    }
    let insp = inspect(&base)?;
    let Some(q) = &insp.qcow2 else {
        return Err(ImageError::CannotPrepare {
            path: base,
            reason: format!("an overlay needs a qcow2 base, and this is {}", insp.looks_like),
        });
    };
    if size_bytes < q.virtual_size {
        return Err(ImageError::SizeTooSmall { requested: size_bytes, base: q.virtual_size });
    }
    let dir = disk.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = disk.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.creating-{}.qcow2", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let made = run_tool(tool, &base, &tmp, size_bytes, q.virtual_size, q.cluster_size)
        .and_then(|()| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
                .map_err(|e| ImageError::io("cannot set the mode of", &tmp, e))
        })
        .and_then(|()| match fs::hard_link(&tmp, disk) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(ImageError::DiskExists { path: disk.to_path_buf() })
            }
            Err(e) => Err(ImageError::io("cannot create", disk, e)),
        });
    let _ = fs::remove_file(&tmp);
    made
}

fn run_tool(
    tool: OverlayTool,
    base: &Path,
    tmp: &Path,
    size: u64,
    base_size: u64,
    cluster_size: u64,
) -> Result<(), ImageError> {
    match tool {
        OverlayTool::QemuImg => {
            Cmd::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-o"])
                .arg(format!("compat=1.1,cluster_size={cluster_size}"))
                .arg("-b")
                .arg(base)
                .args(["-F", "qcow2"])
                .arg(tmp)
                .arg(size.to_string())
                .hint_if_missing(QEMU_IMG_HINT)
                .run()?;
        }
        OverlayTool::Vmctl => {
            Cmd::new("vmctl")
                .args(["create", "-b"])
                .arg(base)
                .arg(tmp)
                .hint_if_missing("vmctl is part of OpenBSD's base system; overlays for QEMU use qemu-img")
                .run()?;
            if size > base_size {
                Cmd::new("qemu-img")
                    .args(["resize", "-q", "-f", "qcow2"])
                    .arg(tmp)
                    .arg(size.to_string())
                    .hint_if_missing(QEMU_IMG_HINT)
                    .run()?;
            }
        }
    }
    Ok(())
}
