//! The OpenBSD overlay path (`vmctl create -b BASE DISK`, then `qemu-img resize`), with a
//! stand-in for vmctl that accepts exactly the arguments vmctl(8) documents and makes the
//! overlay vmctl would: as large as its base. Kept alone in its own test binary because
//! it changes PATH for the process.

mod image_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use almavmm_host::image::{self, OverlayTool};
use image_support::{qemu_img, raw_disk};

const FAKE_VMCTL: &str = r#"#!/bin/sh
# vmctl(8): create [-b base | -i disk] [-s size] disk; with -b the new disk has the base's
# size, and an existing disk is refused ("File exists").
[ "$1" = create ] && [ "$2" = -b ] && [ $# -eq 4 ] || { echo "vmctl: unexpected arguments: $*" >&2; exit 1; }
[ -e "$4" ] && { echo "vmctl: $4: File exists" >&2; exit 1; }
echo "$*" >> "$(dirname "$0")/calls"
exec qemu-img create -q -f qcow2 -b "$3" -F qcow2 "$4"
"#;

#[test]
fn vmctl_overlays_are_grown_with_qemu_img() {
    let t = tempfile::tempdir().unwrap();
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let vmctl = bin.join("vmctl");
    std::fs::write(&vmctl, FAKE_VMCTL).unwrap();
    std::fs::set_permissions(&vmctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    // SAFETY: the only test of this binary; no other thread reads the environment.
    unsafe { std::env::set_var("PATH", path) };

    let raw = t.path().join("base.raw");
    raw_disk(&raw, 16 << 20, 1 << 20);
    let base = t.path().join("base.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &raw.display().to_string(), &base.display().to_string()]);

    let disk = t.path().join("disk.qcow2");
    image::create_overlay(&base, &disk, 64 << 20, OverlayTool::Vmctl).unwrap();
    let i = image::inspect(&disk).unwrap();
    let q = i.qcow2.as_ref().unwrap();
    assert_eq!(q.virtual_size, 64 << 20, "grown past the base's 16 MiB");
    assert_eq!(q.backing_file.as_deref(), Some(base.display().to_string().as_str()));
    assert!(i.vmd.can_run, "{:?}", i.vmd);
    assert_eq!(std::fs::metadata(&disk).unwrap().permissions().mode() & 0o777, 0o600);
    qemu_img(&["compare", &raw.display().to_string(), &disk.display().to_string()]);

    let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
    let tmp = calls.split_whitespace().nth(3).unwrap();
    assert_eq!(calls.split_whitespace().take(3).collect::<Vec<_>>(), ["create", "-b", base.to_str().unwrap()]);
    assert!(Path::new(tmp).file_name().unwrap().to_string_lossy().starts_with(".disk.qcow2.creating-"), "{calls}");

    // Same size as the base: no resize needed, still a valid disk.
    let same = t.path().join("same.qcow2");
    image::create_overlay(&base, &same, 16 << 20, OverlayTool::Vmctl).unwrap();
    assert_eq!(image::inspect(&same).unwrap().qcow2.unwrap().virtual_size, 16 << 20);
}
