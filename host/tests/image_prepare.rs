//! `image::prepare` and `image::create_overlay` with real qemu-img: the base vmd gets, the
//! guest's view of the overlay, the untouched source, and interruptions.

mod image_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use almavmm_host::image::{self, ImageError, OverlayTool};
use almavmm_host::state::home::Home;
use image_support::{map_says_compressed, qemu_img, raw_disk};

struct Setup {
    tmp: tempfile::TempDir,
    home: Home,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("state"));
        Setup { tmp, home }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A compressed qcow2 of a raw disk of `size` bytes holding `data` bytes of random data
    /// and as much text.
    fn compressed(&self, name: &str, size: u64, data: usize) -> PathBuf {
        let raw = self.p(&format!("{name}.raw"));
        raw_disk(&raw, size, data);
        let out = self.p(name);
        qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", &s(&raw), &s(&out)]);
        out
    }

    fn base_dir(&self) -> PathBuf {
        self.home.images_dir().join("base")
    }

    fn base_dir_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.base_dir())
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_compressed_image_becomes_an_uncompressed_base_and_overlays_show_the_same_bytes() {
    let t = Setup::new();
    let src = t.compressed("src.qcow2", 64 << 20, 2 << 20);
    let sha = image::sha256_file(&src).unwrap();
    let before = std::fs::metadata(&src).unwrap().modified().unwrap();

    let base = image::prepare(&t.home, &src, &sha).unwrap();
    assert!(base.converted);
    assert_eq!(base.path, t.base_dir().join(format!("{sha}.qcow2")));
    assert_eq!(mode(&base.path), 0o444, "bases are read-only");

    // No compressed cluster left, by our reader and by qemu-img's.
    let insp = image::inspect(&base.path).unwrap();
    assert!(!insp.compressed && insp.vmd.can_run, "{:?}", insp.vmd);
    let q = insp.qcow2.as_ref().unwrap();
    assert_eq!((q.version, q.cluster_size, q.virtual_size), (3, 65536, 64 << 20));
    assert_eq!(map_says_compressed(&[], &s(&base.path)), Some(false));
    qemu_img(&["compare", &s(&src), &s(&base.path)]);

    // The source was only read.
    assert_eq!(image::sha256_file(&src).unwrap(), sha);
    assert_eq!(std::fs::metadata(&src).unwrap().modified().unwrap(), before);

    // A guest disk on it: absolute backing path, grown, same bytes as the source.
    let disk = t.p("vm/disk.qcow2");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    image::create_overlay(&base.path, &disk, 128 << 20, OverlayTool::QemuImg).unwrap();
    assert_eq!(mode(&disk), 0o600);
    let d = image::inspect(&disk).unwrap();
    assert_eq!(d.qcow2.as_ref().unwrap().virtual_size, 128 << 20);
    assert_eq!(d.qcow2.as_ref().unwrap().backing_file.as_deref(), Some(s(&base.path).as_str()));
    assert!(d.vmd.can_run, "{:?}", d.vmd);
    assert!(std::fs::metadata(&disk).unwrap().len() < 1 << 20, "an overlay is thin");
    qemu_img(&["compare", &s(&src), &s(&disk)]);
    let leftovers: Vec<_> =
        std::fs::read_dir(disk.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers, ["disk.qcow2"]);

    // Prepared once: the second call finds the base and leaves it alone.
    let modified = std::fs::metadata(&base.path).unwrap().modified().unwrap();
    let again = image::prepare(&t.home, &src, &sha).unwrap();
    assert_eq!(again, base);
    assert_eq!(std::fs::metadata(&base.path).unwrap().modified().unwrap(), modified);
}

#[test]
fn an_image_vmd_can_run_is_its_own_base() {
    let t = Setup::new();
    let raw = t.p("src.raw");
    raw_disk(&raw, 16 << 20, 1 << 20);
    let src = t.p("plain.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &s(&raw), &s(&src)]);
    let sha = image::sha256_file(&src).unwrap();
    let base = image::prepare(&t.home, &src, &sha).unwrap();
    assert_eq!(base, image::PreparedBase { path: src.clone(), converted: false });
    assert!(t.base_dir_names().is_empty());
}

#[test]
fn a_base_with_other_clusters_than_vmctls_overlays_is_converted_to_64k() {
    // vmd's vioqcow2.c: `vmctl create -b` writes 64 KiB clusters and qc2_open refuses a
    // chain whose parts differ, so a 2 MiB- or 32 KiB-cluster image is no usable base.
    let t = Setup::new();
    let raw = t.p("src.raw");
    raw_disk(&raw, 16 << 20, 1 << 20);
    for cluster in ["2M", "32K"] {
        let src = t.p(&format!("c{cluster}.qcow2"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &format!("cluster_size={cluster}"),
            &s(&raw),
            &s(&src),
        ]);
        let insp = image::inspect::inspect(&src).unwrap();
        assert!(!insp.vmd.can_run, "{cluster}: {:?}", insp.vmd);
        assert_eq!(insp.vmd.problems[0].code, image::inspect::ProblemCode::OverlayClusterSize);
        let sha = image::sha256_file(&src).unwrap();
        let base = image::prepare(&t.home, &src, &sha).unwrap();
        assert!(base.converted, "{cluster}");
        let out = image::inspect::inspect(&base.path).unwrap();
        assert_eq!(out.qcow2.as_ref().unwrap().cluster_size, 65536);
        assert!(out.vmd.can_run, "{:?}", out.vmd);
        qemu_img(&["compare", &s(&src), &s(&base.path)]);
    }
}

#[test]
fn raw_disks_are_converted_and_other_files_refused() {
    let t = Setup::new();
    let raw = t.p("disk.img");
    raw_disk(&raw, 16 << 20, 1 << 20);
    let sha = image::sha256_file(&raw).unwrap();
    let base = image::prepare(&t.home, &raw, &sha).unwrap();
    assert!(base.converted);
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2", &s(&raw), &s(&base.path)]);

    let junk = t.p("page.html");
    std::fs::write(&junk, "<!DOCTYPE html><title>404</title>").unwrap();
    let err = image::prepare(&t.home, &junk, &sha).unwrap_err();
    assert!(err.to_string().contains("an HTML or XML page"), "{err}");

    assert!(matches!(image::prepare(&t.home, &raw, "../../etc"), Err(ImageError::BadSha256(_))));
}

#[test]
fn encrypted_images_are_refused_with_the_reason() {
    let t = Setup::new();
    let enc = t.p("enc.qcow2");
    image_support::create_luks(&s(&enc));
    let sha = image::sha256_file(&enc).unwrap();
    let err = image::prepare(&t.home, &enc, &sha).unwrap_err();
    assert!(matches!(err, ImageError::CannotPrepare { .. }), "{err}");
    assert!(err.to_string().contains("encrypted"), "{err}");
}

#[test]
fn overlays_never_overwrite_and_never_shrink() {
    let t = Setup::new();
    let src = t.compressed("src.qcow2", 64 << 20, 1 << 20);
    let sha = image::sha256_file(&src).unwrap();
    let base = image::prepare(&t.home, &src, &sha).unwrap();

    let disk = t.p("disk.qcow2");
    std::fs::write(&disk, "precious guest data").unwrap();
    let err = image::create_overlay(&base.path, &disk, 64 << 20, OverlayTool::QemuImg).unwrap_err();
    assert!(matches!(err, ImageError::DiskExists { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&disk).unwrap(), "precious guest data");

    let small = t.p("small.qcow2");
    let err = image::create_overlay(&base.path, &small, 32 << 20, OverlayTool::QemuImg).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a disk of 32.0 MiB is smaller than its base image (64.0 MiB): a guest disk can only be as large as its base or larger"
    );
    assert!(!small.exists());
    let names: Vec<_> = std::fs::read_dir(t.tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().contains("creating")), "{names:?}");
}

/// `almavmm-host image prepare FILE` as a child process of its own.
fn prepare_cli(t: &Setup, src: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_almavmm-host"))
        .args(["image", "prepare"])
        .arg(src)
        .env("ALMAVMM_HOME", t.home.root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until a conversion's temporary file exists, then signal the child.
fn interrupt_when_converting(t: &Setup, child: &mut Child, sig: nix::sys::signal::Signal) {
    let start = Instant::now();
    loop {
        if t.base_dir_names().iter().any(|n| n.starts_with(".converting-")) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "prepare ended before the conversion was seen");
        assert!(start.elapsed() < Duration::from_secs(120), "no conversion started");
        std::thread::sleep(Duration::from_millis(2));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(sig as i32), "the process ends as the signal asks");
}

#[test]
fn interrupting_a_conversion_leaves_no_half_base() {
    use nix::sys::signal::Signal;
    let t = Setup::new();
    // Large enough that converting takes a while.
    let src = t.compressed("big.qcow2", 128 << 20, 48 << 20);
    let sha = image::sha256_file(&src).unwrap();
    let base = t.base_dir().join(format!("{sha}.qcow2"));

    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut child = prepare_cli(&t, &src);
        interrupt_when_converting(&t, &mut child, sig);
        assert!(!base.exists(), "{sig}: a half base was published");
        let names = t.base_dir_names();
        assert!(!names.iter().any(|n| n.starts_with(".converting-")), "{sig}: temp left behind: {names:?}");
    }

    // SIGKILL cannot be caught: the temp file stays, and the next run clears it.
    let mut child = prepare_cli(&t, &src);
    interrupt_when_converting(&t, &mut child, Signal::SIGKILL);
    assert!(!base.exists());
    let out = prepare_cli(&t, &src).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), s(&base));
    // Give the orphaned qemu-img of the killed run time to notice and end; nothing it
    // does can bring its temp file back.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(t.base_dir_names(), [".lock".to_string(), format!("{sha}.qcow2")]);
    qemu_img(&["compare", &s(&src), &s(&base)]);
}

#[test]
fn missing_qemu_img_says_how_to_install_it() {
    let t = Setup::new();
    let src = t.compressed("src.qcow2", 64 << 20, 1 << 20);
    let out = Command::new(env!("CARGO_BIN_EXE_almavmm-host"))
        .args(["image", "prepare"])
        .arg(&src)
        .env("ALMAVMM_HOME", t.home.root())
        .env("PATH", t.p("no-bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`qemu-img` was not found on PATH"), "{err}");
    assert!(err.contains("pkg_add qemu") && err.contains("apt-get install qemu-utils"), "{err}");
    assert!(t.base_dir_names().iter().all(|n| n == ".lock"), "{:?}", t.base_dir_names());
}
