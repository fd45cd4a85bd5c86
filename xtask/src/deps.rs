//! `cargo xtask deps [--install]`: the system packages the tests and the demo need, checked
//! by what they provide (a program or a file), installed with apt when asked and possible.

use std::path::Path;

use anyhow::bail;
use xshell::{Shell, cmd};

/// What must be present, and the Debian package that provides it.
const NEEDS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("xorriso", "xorriso"),
    ("isoinfo", "genisoimage"),
    ("genisoimage", "genisoimage"),
    ("cloud-init", "cloud-init"),
    ("blkid", "util-linux"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("gpg", "gnupg"),
    ("mmdebstrap", "mmdebstrap"),
    ("mcopy", "mtools"),
    ("syslinux", "syslinux"),
    ("/usr/lib/syslinux/mbr/mbr.bin", "syslinux-common"),
    ("mkfs.vfat", "dosfstools"),
    ("mkfs.ext4", "e2fsprogs"),
    ("sfdisk", "fdisk"),
    ("mandoc", "mandoc"),
    // The ksh completion file is checked under mksh (OpenBSD's ksh is a pdksh like it).
    ("mksh", "mksh"),
    ("file", "file"),
    ("gcc", "gcc"),
    ("make", "make"),
    ("depmod", "kmod"),
    // Kernel headers to compile kmod/ against: Debian 12's 6.1 and the 6.12 series.
    ("/usr/src/linux-headers-6.1.*-cloud-amd64", "linux-headers-cloud-amd64"),
    ("/usr/src/linux-headers-6.12.*-cloud-amd64", "linux-headers-6.12-cloud-amd64"),
];

/// Packages that must come from bookworm-backports on Debian 12: the machines this runs on
/// carry qemu-utils 10 from there, and bookworm's qemu-system-x86 7.2 conflicts with it.
const FROM_BACKPORTS: &[&str] = &["qemu-system-x86", "qemu-utils"];

#[derive(Debug, clap::Args)]
pub struct DepsArgs {
    /// Install what is missing with apt-get (needs root on Debian).
    #[arg(long)]
    pub install: bool,
}

fn present(what: &str) -> bool {
    if let Some((dir_and_prefix, suffix)) = what.split_once('*') {
        // A path pattern with one `*`: some entry of that folder matches prefix*suffix.
        let p = Path::new(dir_and_prefix);
        let (dir, prefix) = (
            p.parent().unwrap_or(Path::new("/")),
            p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        );
        return std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok).any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(&prefix) && n.ends_with(suffix)
                })
            })
            .unwrap_or(false);
    }
    if what.starts_with('/') {
        return Path::new(what).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).chain(["/usr/sbin".into(), "/sbin".into()]).any(|d| d.join(what).is_file())
        })
        .unwrap_or(false)
}

/// The Debian packages that are missing, without duplicates, in a stable order.
pub fn missing() -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = NEEDS.iter().filter(|(what, _)| !present(what)).map(|(_, p)| *p).collect();
    pkgs.dedup();
    pkgs
}

fn has_backports(sh: &Shell) -> bool {
    cmd!(sh, "apt-cache policy")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|o| o.contains("bookworm-backports"))
        .unwrap_or(false)
}

pub fn run(sh: &Shell, args: DepsArgs) -> anyhow::Result<()> {
    let missing = missing();
    if missing.is_empty() {
        eprintln!("all system packages present");
        return Ok(());
    }
    let root = is_root();
    let debian = Path::new("/etc/debian_version").exists();
    if !args.install || !root || !debian {
        bail!(
            "missing system packages: {}\ninstall them as root with: apt-get install -y {}{}",
            missing.join(" "),
            missing.join(" "),
            if debian { "" } else { "\n(this is not Debian: find the equivalents for your system)" }
        );
    }
    let (bpo, main): (Vec<&str>, Vec<&str>) = missing.iter().partition(|p| FROM_BACKPORTS.contains(p));
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    if !main.is_empty() {
        cmd!(sh, "apt-get install -y -q --no-install-recommends {main...}").envs(env).run()?;
    }
    if !bpo.is_empty() {
        // Install both qemu packages together: installing only qemu-system-x86 would
        // remove the preinstalled qemu-img.
        let all_qemu = FROM_BACKPORTS;
        if has_backports(sh) {
            cmd!(sh, "apt-get install -y -q --no-install-recommends -t bookworm-backports {all_qemu...}")
                .envs(env)
                .run()?;
        } else {
            cmd!(sh, "apt-get install -y -q --no-install-recommends {all_qemu...}").envs(env).run()?;
        }
    }
    let still = self::missing();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    // The effective uid from /proc/self/status: no libc binding needed for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
