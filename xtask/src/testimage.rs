//! `cargo xtask image`: the Debian guest image that the end-to-end scenario, the demo and the
//! benchmarks boot, built from nothing and cached outside the checkout.
//!
//! The image stands in for the AlmaLinux GenericCloud image, so it is shaped like a cloud
//! image and takes the same path through the product: a compressed qcow2 that boots through
//! the firmware, configured by cloud-init from a NoCloud seed, with the agent's build
//! dependencies (gcc, make, the running kernel's headers) already installed so nothing in
//! the guest needs a package mirror.
//!
//! # How the image is laid out
//!
//! ```text
//! MBR (syslinux mbr.bin, boots the active partition)
//! p1  1 MiB + 128 MiB  FAT32 "BOOT", active: ldlinux.sys/.c32 (syslinux), syslinux.cfg,
//!                      vmlinuz, initrd.img: a copy of the kernel in the root's /boot,
//!                      not mounted in the guest
//! p2  rest             ext4 "debian-root", UUID derived from the recipe hash: the whole
//!                      system, about 1 GiB free; last on the disk so growpart can grow it
//! ```
//!
//! # Flavours (`--flavor`)
//!
//! - `nm` (the default, and the e2e's): NetworkManager is the only network manager, as on
//!   AlmaLinux's cloud image. cloud-init renders its network config as a NetworkManager
//!   keyfile (renderer `network-manager`), systemd-networkd and systemd-resolved are not
//!   used (networkd is masked; NetworkManager writes /etc/resolv.conf itself, as on
//!   AlmaLinux), so the agent installs its NetworkManager dispatcher hook.
//! - `networkd`: cloud-init renders for systemd-networkd and systemd-resolved serves DNS,
//!   as on Debian's own cloud images; the watcher's rtnetlink listener is the link-up
//!   trigger there. The Debian 13 bundle scenario, the demo and the benchmarks boot it.
//!
//! Kernel arguments: `root=UUID=… rw console=ttyS0,115200n8 net.ifnames=0 no_timer_check`
//! (as on AlmaLinux's image: the serial port is `/dev/console`, the NIC is `eth0`). The
//! initramfs checks the root file system before mounting it, so an unclean shutdown shows on
//! the console as `recovering journal`. cloud-init only looks for NoCloud and renders its
//! fallback network config (DHCP on eth0) for the flavour's network manager.
//! `/etc/machine-id` is empty and there are no SSH host keys: each instance gets its own.
//!
//! Nothing is mounted and no loop device is used: mmdebstrap fills a directory, `mkfs.ext4
//! -d` turns it into the root file system, mtools and syslinux's mtools installer make the
//! boot partition, `sfdisk` and `dd` put both into one raw disk, and `qemu-img convert -c`
//! compresses it.
//!
//! The cache (`$ALMAVMM_E2E_CACHE`, default `/var/cache/almavmm-e2e`) holds
//! `debian-VERSION-CODENAME-FLAVOUR-HASH.qcow2`, where HASH covers this file's source, the files it
//! writes into the image and the suite, so any change to the recipe builds a new image and
//! nothing else does. Builds happen in `.build-CODENAME-PID/` beside it and only a complete
//! image is renamed into place.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::limited::limited;
use crate::util::Stage;

/// mmdebstrap: a few hundred MiB from the Debian mirror, then dpkg; ~1 min here, far more
/// on a slow mirror.
const DEBOOTSTRAP_LIMIT: Duration = Duration::from_secs(30 * 60);
/// qemu-img convert -c of the ~2.5 GiB raw disk (a minute or two on two cores).
const COMPRESS_LIMIT: Duration = Duration::from_secs(20 * 60);
/// mkfs, mtools, syslinux, sfdisk, dd: seconds each.
const TOOL_LIMIT: Duration = Duration::from_secs(5 * 60);

const CACHE_ENV: &str = "ALMAVMM_E2E_CACHE";
const DEFAULT_CACHE: &str = "/var/cache/almavmm-e2e";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Installed on top of `--variant=minbase` (Priority: required, plus apt). Recommends are
/// not installed (mmdebstrap's default), so everything the guest relies on is named here.
const PACKAGES: &[&str] = &[
    // boot and init
    "systemd-sysv",
    "udev",
    "dbus", // systemd-logind needs it, and logind turns the ACPI power button into a poweroff
    "initramfs-tools",
    "linux-image-cloud-amd64",
    "kmod",
    // first boot: cloud-init, growing the disk, network, time, remote access
    "cloud-init",
    "cloud-guest-utils",
    "fdisk",
    "e2fsprogs",
    "iproute2",
    "netbase",
    "chrony",
    "openssh-server",
    "sudo",
    "ca-certificates",
    // the agent builds the kernel module in the guest, against the running kernel
    "linux-headers-cloud-amd64",
    "gcc",
    "make",
];

/// Units that only cost boot time or background CPU under TCG and do nothing for a test
/// guest. systemd-logind stays: `system_powerdown` must end in a clean poweroff.
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
];

/// Kept out of the image: documentation the guest never reads (copyright files stay).
/// Pattern syntax from dpkg(1) `--path-exclude`.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];

/// Kernel arguments after `root=`; the same console and NIC naming as AlmaLinux's image.
const KERNEL_ARGS: &str = "rw console=ttyS0,115200n8 net.ifnames=0 no_timer_check";
const ROOT_LABEL: &str = "debian-root";
const BOOT_LABEL: &str = "BOOT";

const CLOUD_CFG: &str = include_str!("testimage/90_almavmm.cfg");
const CLOUD_CFG_NM: &str = include_str!("testimage/90_almavmm_nm.cfg");
const CLOUD_CFG_PATH: &str = "etc/cloud/cloud.cfg.d/90_almavmm.cfg";
/// Part of the recipe hash: any change to how the image is built builds a new one.
const RECIPE_SOURCE: &str = include_str!("testimage.rs");

/// Boot code for the first 440 bytes of the disk (syslinux-common).
const MBR_BIN: &str = "/usr/lib/syslinux/mbr/mbr.bin";

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
const BOOT_START: u64 = MIB;
const BOOT_SIZE: u64 = 128 * MIB;
/// Free space left on the root file system beyond what the system occupies.
const ROOT_FREE: u64 = 1024 * MIB;
/// Journal and metadata of an ext4 file system of a few GiB, on top of the files.
const ROOT_OVERHEAD: u64 = 160 * MIB;

/// The Debian release the image is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// Debian 12, kernel 6.1.
    Bookworm,
    /// Debian 13, kernel 6.12; its cargo is recent enough to build the agent.
    Trixie,
}

impl Suite {
    pub fn codename(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Suite::Bookworm => "12",
            Suite::Trixie => "13",
        }
    }
}

/// Which network manager the image runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Flavor {
    /// NetworkManager only, configured by cloud-init as on AlmaLinux.
    #[default]
    Nm,
    /// systemd-networkd with systemd-resolved, as on Debian's cloud images.
    Networkd,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Nm => "nm",
            Flavor::Networkd => "networkd",
        }
    }

    /// Packages on top of [`PACKAGES`].
    fn packages(self) -> &'static [&'static str] {
        match self {
            // Recommends are not installed, so no wpasupplicant/modemmanager/dnsmasq-base.
            Flavor::Nm => &["network-manager"],
            Flavor::Networkd => &["systemd-resolved"],
        }
    }

    fn cloud_cfg(self) -> &'static str {
        match self {
            Flavor::Nm => CLOUD_CFG_NM,
            Flavor::Networkd => CLOUD_CFG,
        }
    }

    /// `systemctl` verbs run in the image: the one network manager on, the other masked.
    fn unit_hooks(self) -> [&'static str; 2] {
        match self {
            Flavor::Nm => [
                "enable NetworkManager.service",
                "mask systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service",
            ],
            Flavor::Networkd => ["enable systemd-networkd.service", "mask NetworkManager.service"],
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Debian release to build the guest from.
    #[arg(long, value_enum, default_value_t = Suite::Bookworm)]
    pub suite: Suite,
    /// Network manager of the image: NetworkManager (as on AlmaLinux) or systemd-networkd.
    #[arg(long, value_enum, default_value_t = Flavor::Nm)]
    pub flavor: Flavor,
    /// Build the image again even when the cache already holds one of this recipe.
    #[arg(long)]
    pub rebuild: bool,
}

/// `cargo xtask image`: build or reuse the image and print its path.
pub fn run(args: ImageArgs) -> anyhow::Result<PathBuf> {
    let image = if args.rebuild {
        build(&Recipe::new(args.suite, args.flavor), &cache_dir())?
    } else {
        ensure_image_flavor(args.suite, args.flavor)?
    };
    println!("{}", image.display());
    Ok(image)
}

/// The cached networkd image of the current recipe (the demo's and the benchmarks').
pub fn ensure_image(suite: Suite) -> anyhow::Result<PathBuf> {
    ensure_image_flavor(suite, Flavor::Networkd)
}

/// The cached image of the current recipe and flavour, built first when there is none.
pub fn ensure_image_flavor(suite: Suite, flavor: Flavor) -> anyhow::Result<PathBuf> {
    let recipe = Recipe::new(suite, flavor);
    let cache = cache_dir();
    let image = cache.join(recipe.file_name());
    if image.is_file() {
        let size = fs::metadata(&image)?.len();
        eprintln!("reusing {} ({} MiB)", image.display(), size.div_ceil(MIB));
        return Ok(image);
    }
    build(&recipe, &cache)
}

fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| DEFAULT_CACHE.into())
}

/// What is built, and the names derived from it.
#[derive(Debug)]
struct Recipe {
    suite: Suite,
    flavor: Flavor,
    /// Hex SHA-256 of everything that decides the image's content.
    hash: String,
}

impl Recipe {
    fn new(suite: Suite, flavor: Flavor) -> Recipe {
        let hash = recipe_hash(suite, &[("flavor", flavor.name()), (CLOUD_CFG_PATH, flavor.cloud_cfg())]);
        Recipe { suite, flavor, hash }
    }

    fn file_name(&self) -> String {
        format!("{}{}.qcow2", self.file_prefix(), &self.hash[..16])
    }

    /// Every image of this suite starts so; older recipes' images are removed by it.
    fn file_prefix(&self) -> String {
        format!("debian-{}-{}-{}-", self.suite.version(), self.suite.codename(), self.flavor.name())
    }

    fn root_uuid(&self) -> String {
        uuid_from_hex(&self.hash)
    }

    /// FAT volume serial and MBR disk identifier: fixed per recipe, like the root UUID.
    fn fat_volume_id(&self) -> &str {
        &self.hash[32..40]
    }

    fn disk_id(&self) -> &str {
        &self.hash[40..48]
    }
}

fn recipe_hash(suite: Suite, files: &[(&str, &str)]) -> String {
    let mut h = Sha256::new();
    for part in [suite.codename(), MIRROR, RECIPE_SOURCE] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for (path, content) in files {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path);
        h.update((content.len() as u64).to_le_bytes());
        h.update(content);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A random-looking (version 4, RFC 9562 variant) UUID taken from a hex digest, so the same
/// recipe always gives the same file system UUID.
fn uuid_from_hex(hex: &str) -> String {
    let mut d: Vec<u8> = hex.bytes().take(32).collect();
    d[12] = b'4';
    let variant = u8::from_str_radix(std::str::from_utf8(&d[16..17]).expect("ascii"), 16).expect("hex digest");
    d[16] = b"89ab"[usize::from(variant & 3)];
    let s = String::from_utf8(d).expect("ascii");
    format!("{}-{}-{}-{}-{}", &s[0..8], &s[8..12], &s[12..16], &s[16..20], &s[20..32])
}

/// The host programs a build runs, found before anything starts.
#[derive(Debug)]
struct Tools {
    mmdebstrap: PathBuf,
    mkfs_fat: PathBuf,
    mcopy: PathBuf,
    syslinux: PathBuf,
    sfdisk: PathBuf,
    mkfs_ext4: PathBuf,
    qemu_img: PathBuf,
}

impl Tools {
    fn find() -> anyhow::Result<Tools> {
        let mut missing: Vec<(&str, &str)> = Vec::new();
        let mut find = |program: &'static str, package: &'static str| {
            which(program).unwrap_or_else(|| {
                missing.push((program, package));
                PathBuf::from(program)
            })
        };
        let tools = Tools {
            mmdebstrap: find("mmdebstrap", "mmdebstrap"),
            mkfs_fat: find("mkfs.fat", "dosfstools"),
            mcopy: find("mcopy", "mtools"),
            syslinux: find("syslinux", "syslinux"),
            sfdisk: find("sfdisk", "fdisk"),
            mkfs_ext4: find("mkfs.ext4", "e2fsprogs"),
            qemu_img: find("qemu-img", "qemu-utils"),
        };
        if !Path::new(MBR_BIN).is_file() {
            missing.push((MBR_BIN, "syslinux-common"));
        }
        if !missing.is_empty() {
            bail!(missing_tools_message(&missing));
        }
        Ok(tools)
    }
}

/// Search PATH, and the sbin folders a non-root PATH often lacks.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn missing_tools_message(missing: &[(&str, &str)]) -> String {
    let what: Vec<String> = missing.iter().map(|(tool, pkg)| format!("  {tool} (Debian package {pkg})")).collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    packages.dedup();
    format!(
        "building the test image needs tools that are not installed:\n{}\ninstall them with: apt-get install -y {}",
        what.join("\n"),
        packages.join(" ")
    )
}

fn build(recipe: &Recipe, cache: &Path) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    let suite = recipe.suite;
    let tools = Tools::find()?;
    if !crate::deps::is_root() {
        bail!("building the test image needs root (mmdebstrap --mode=root, files owned by other users); run as root");
    }
    fs::create_dir_all(cache).with_context(|| {
        format!("cannot create the image cache {}; set {CACHE_ENV} to a writable folder", cache.display())
    })?;
    remove_stale_build_dirs(cache)?;
    let work = BuildDir::create(cache.join(format!(".build-{}-{}", suite.codename(), std::process::id())))?;
    let rootfs = work.path.join("rootfs");

    {
        let _s = Stage::new(format!("mmdebstrap Debian {} ({})", suite.version(), suite.codename()));
        mmdebstrap(&tools, suite, recipe.flavor, &rootfs)?;
    }
    let kernel = {
        let _s = Stage::new("configure the root file system");
        configure_rootfs(&rootfs, recipe)?;
        Kernel::find(&rootfs.join("boot"))?
    };
    eprintln!("kernel {}", kernel.version);

    let boot_img = work.path.join("boot.img");
    {
        let _s = Stage::new("boot partition (FAT32 + syslinux, through mtools)");
        make_boot_partition(&tools, recipe, &kernel, &work.path, &boot_img)?;
    }
    let root_img = work.path.join("root.img");
    let root_size = {
        let _s = Stage::new("root partition (mkfs.ext4 -d)");
        let content = content_size(&rootfs)?;
        let size = root_fs_size(content);
        eprintln!("files take {} MiB; file system of {} MiB", content.div_ceil(MIB), size / MIB);
        make_root_partition(&tools, recipe, &rootfs, &root_img, size)?;
        remove_build_dir(&rootfs)?;
        size
    };
    let layout = Layout::plan(root_size);
    let raw = work.path.join("disk.raw");
    {
        let _s = Stage::new("assemble the raw disk (sfdisk, dd)");
        assemble_disk(&tools, recipe, &layout, &boot_img, &root_img, &raw)?;
    }
    let image = cache.join(recipe.file_name());
    {
        let _s = Stage::new("compress to qcow2 (qemu-img convert -c)");
        let part = work.path.join("image.qcow2");
        limited(&tools.qemu_img, COMPRESS_LIMIT)
            .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&part)
            .run_inherited()?;
        fs::rename(&part, &image).with_context(|| format!("cannot move the new image to {}", image.display()))?;
    }
    work.finish()?;
    remove_superseded(cache, recipe)?;

    let size = fs::metadata(&image)?.len();
    eprintln!(
        "built {} in {:.0}s: {} MiB compressed, {} MiB virtual",
        image.display(),
        started.elapsed().as_secs_f64(),
        size.div_ceil(MIB),
        layout.total / MIB
    );
    Ok(image)
}

fn mmdebstrap(tools: &Tools, suite: Suite, flavor: Flavor, rootfs: &Path) -> anyhow::Result<()> {
    let include = format!("--include={}", [PACKAGES, flavor.packages()].concat().join(","));
    let dpkg_opts: Vec<String> = DPKG_EXCLUDES.iter().map(|o| format!("--dpkgopt={o}")).collect();
    // Before any package is installed, so the initramfs built when the kernel is installed
    // carries e2fsck: with FSTYPE=auto initramfs-tools reads the type from /etc/fstab, which
    // is still empty then (initramfs.conf(5)).
    let setup_hook = r#"--setup-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" && echo FSTYPE=ext4 >"$1/etc/initramfs-tools/conf.d/almavmm-fsck""#;
    let [on, off] = flavor.unit_hooks();
    let enable = format!(r#"--customize-hook=chroot "$1" systemctl {on}"#);
    let disable = format!(r#"--customize-hook=chroot "$1" systemctl {off}"#);
    let mask = format!(r#"--customize-hook=chroot "$1" systemctl mask {}"#, MASKED_UNITS.join(" "));
    // openssh-server's postinst generated these; every instance must get its own.
    let host_keys = r#"--customize-hook=rm -f "$1"/etc/ssh/ssh_host_*"#;
    // The mirror here is reached through a proxy that sometimes drops a connection.
    let retries = r#"--aptopt=Acquire::Retries "3""#;
    limited(&tools.mmdebstrap, DEBOOTSTRAP_LIMIT)
        .args(["--mode=root", "--variant=minbase", "--components=main", include.as_str(), retries])
        .args(&dpkg_opts)
        .args([setup_hook, enable.as_str(), disable.as_str(), mask.as_str(), host_keys])
        .arg(suite.codename())
        .arg(rootfs)
        .arg(MIRROR)
        .run_inherited()
}

fn configure_rootfs(rootfs: &Path, recipe: &Recipe) -> anyhow::Result<()> {
    write_file(rootfs, "etc/fstab", &fstab(&recipe.root_uuid()))?;
    write_file(rootfs, "etc/hostname", "localhost\n")?;
    // Matches `locale:` in the cloud-init config (see there).
    write_file(rootfs, "etc/default/locale", "LANG=C.UTF-8\n")?;
    // Empty, not absent: systemd then writes a new one on first boot and treats it as such.
    write_file(rootfs, "etc/machine-id", "")?;
    write_file(rootfs, CLOUD_CFG_PATH, recipe.flavor.cloud_cfg())?;
    let _ = fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));

    let (manager, binaries): (&str, [&str; 2]) = match recipe.flavor {
        Flavor::Nm => ("NetworkManager", ["usr/sbin/NetworkManager", "sbin/NetworkManager"]),
        Flavor::Networkd => ("systemd-networkd", ["usr/lib/systemd/systemd-networkd", "lib/systemd/systemd-networkd"]),
    };
    if !binaries.iter().any(|p| rootfs.join(p).exists()) {
        bail!("the root file system has no {manager}, which cloud-init renders the network for");
    }
    let left: Vec<String> = fs::read_dir(rootfs.join("etc/ssh"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("ssh_host_"))
        .collect();
    if !left.is_empty() {
        bail!("SSH host keys were left in the image: {}", left.join(", "));
    }
    Ok(())
}

fn write_file(rootfs: &Path, rel: &str, content: &str) -> anyhow::Result<()> {
    let path = rootfs.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&path, content).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn fstab(root_uuid: &str) -> String {
    // Pass 1: the initramfs checks the root before mounting it (fstab(5)).
    format!("UUID={root_uuid} / ext4 defaults,errors=remount-ro 0 1\n")
}

fn kernel_cmdline(root_uuid: &str) -> String {
    format!("root=UUID={root_uuid} {KERNEL_ARGS}")
}

/// SYSLINUX configuration (syslinux.cfg(5), "SYSLINUX configuration" on the syslinux wiki):
/// boot the one kernel at once, with the boot loader's own output on the serial port too.
fn syslinux_cfg(cmdline: &str) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT debian\nPROMPT 0\nTIMEOUT 0\n\nLABEL debian\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {cmdline}\n"
    )
}

/// The kernel the image boots: the only one installed.
#[derive(Debug)]
struct Kernel {
    version: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

impl Kernel {
    fn find(boot: &Path) -> anyhow::Result<Kernel> {
        let names: Vec<String> = fs::read_dir(boot)
            .with_context(|| format!("cannot list {}", boot.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        let version = pick_kernel(&names)?;
        Ok(Kernel {
            vmlinuz: boot.join(format!("vmlinuz-{version}")),
            initrd: boot.join(format!("initrd.img-{version}")),
            version,
        })
    }
}

/// From the names in /boot, the version of the one kernel that has an initrd.
fn pick_kernel(names: &[String]) -> anyhow::Result<String> {
    let versions: Vec<&str> = names.iter().filter_map(|n| n.strip_prefix("vmlinuz-")).collect();
    match versions.as_slice() {
        [v] if names.iter().any(|n| *n == format!("initrd.img-{v}")) => Ok(v.to_string()),
        [v] => bail!("/boot has vmlinuz-{v} but no initrd.img-{v}: initramfs-tools did not run"),
        [] => bail!("/boot has no kernel: linux-image-cloud-amd64 was not installed"),
        many => bail!("/boot has several kernels ({}); the image boots exactly one", many.join(", ")),
    }
}

fn make_boot_partition(
    tools: &Tools,
    recipe: &Recipe,
    kernel: &Kernel,
    work: &Path,
    boot_img: &Path,
) -> anyhow::Result<()> {
    let blocks_kib = (BOOT_SIZE / 1024).to_string();
    let hidden = (BOOT_START / SECTOR).to_string();
    // -h: the partition's offset, which the FAT boot sector records (mkfs.fat(8)).
    limited(&tools.mkfs_fat, TOOL_LIMIT)
        .args(["-C", "-F", "32", "-n", BOOT_LABEL, "-i", recipe.fat_volume_id(), "-h", hidden.as_str()])
        .arg(boot_img)
        .arg(&blocks_kib)
        .run()?;
    // syslinux(1): the mtools installer writes ldlinux.sys/.c32 and the boot sector into an
    // unmounted FAT image.
    limited(&tools.syslinux, TOOL_LIMIT).arg("--install").arg(boot_img).run()?;
    let cfg = work.join("syslinux.cfg");
    fs::write(&cfg, syslinux_cfg(&kernel_cmdline(&recipe.root_uuid())))?;
    for (file, name) in [(&kernel.vmlinuz, "::vmlinuz"), (&kernel.initrd, "::initrd.img"), (&cfg, "::syslinux.cfg")] {
        limited(&tools.mcopy, TOOL_LIMIT).arg("-i").arg(boot_img).arg(file).arg(name).run()?;
    }
    Ok(())
}

fn make_root_partition(
    tools: &Tools,
    recipe: &Recipe,
    rootfs: &Path,
    root_img: &Path,
    size: u64,
) -> anyhow::Result<()> {
    fs::File::create(root_img)?.set_len(size)?;
    // Inode tables and journal are written now, so the guest's ext4lazyinit thread has
    // nothing to do during a TCG boot; zeroes cost nothing once compressed.
    limited(&tools.mkfs_ext4, TOOL_LIMIT)
        .args(["-q", "-F", "-b", "4096", "-L", ROOT_LABEL, "-U", recipe.root_uuid().as_str()])
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0", "-d"])
        .arg(rootfs)
        .arg(root_img)
        .run()?;
    Ok(())
}

/// Where the partitions sit in the raw disk, in bytes; everything MiB-aligned.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    root_start: u64,
    root_size: u64,
    total: u64,
}

impl Layout {
    fn plan(root_size: u64) -> Layout {
        let root_start = BOOT_START + BOOT_SIZE;
        Layout { root_start, root_size, total: root_start + root_size }
    }

    /// Input for `sfdisk` (sfdisk(8), "Input format"): an MBR with the FAT partition
    /// active, and the root last so growpart can extend it to the end of a larger disk.
    fn sfdisk_script(&self, disk_id: &str) -> String {
        format!(
            "label: dos\nlabel-id: 0x{disk_id}\nunit: sectors\n\n\
             start={}, size={}, type=c, bootable\n\
             start={}, size={}, type=83\n",
            BOOT_START / SECTOR,
            BOOT_SIZE / SECTOR,
            self.root_start / SECTOR,
            self.root_size / SECTOR
        )
    }
}

/// Root file system size for files taking `content` bytes: the files, ext4's own metadata,
/// and the free space the guest works in, rounded up to whole MiB.
fn root_fs_size(content: u64) -> u64 {
    (content + content / 10 + ROOT_OVERHEAD + ROOT_FREE).div_ceil(MIB) * MIB
}

fn assemble_disk(
    tools: &Tools,
    recipe: &Recipe,
    layout: &Layout,
    boot_img: &Path,
    root_img: &Path,
    raw: &Path,
) -> anyhow::Result<()> {
    fs::File::create(raw)?.set_len(layout.total)?;
    // sfdisk reads its script on standard input; a file there, so nothing can block.
    let script = raw.with_extension("sfdisk");
    fs::write(&script, layout.sfdisk_script(recipe.disk_id()))?;
    limited(&tools.sfdisk, TOOL_LIMIT)
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(raw)
        .stdin_file(fs::File::open(&script)?)
        .run()?;
    let dd = |input: &Path, bs: &str, more: &[&str]| {
        limited("dd", TOOL_LIMIT)
            .arg(format!("if={}", input.display()))
            .arg(format!("of={}", raw.display()))
            .arg(format!("bs={bs}"))
            .args(more)
            .arg("status=none")
            .run()
    };
    let seek = |bytes: u64| format!("seek={}", bytes / MIB);
    dd(boot_img, "1M", &[&seek(BOOT_START), "conv=notrunc,sparse"])?;
    dd(root_img, "1M", &[&seek(layout.root_start), "conv=notrunc,sparse"])?;
    // Boot code only: bytes 440.. hold the disk identifier and the partition table.
    dd(Path::new(MBR_BIN), "440", &["count=1", "conv=notrunc"])?;
    Ok(())
}

/// Space the files under `dir` occupy, each hard-linked file counted once.
fn content_size(dir: &Path) -> anyhow::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// A build folder, removed unless the build completes and removes it itself.
#[derive(Debug)]
struct BuildDir {
    path: PathBuf,
    done: bool,
}

impl BuildDir {
    fn create(path: PathBuf) -> anyhow::Result<BuildDir> {
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(BuildDir { path, done: false })
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.done = true;
        remove_build_dir(&self.path)
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = remove_build_dir(&self.path)
        {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Remove a build folder, refusing while anything is mounted inside it: mmdebstrap binds
/// the host's /dev and /proc into the root it fills, and an interrupted run could leave
/// them there, where deleting recursively would reach the host's files.
fn remove_build_dir(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let mounted = mounts_under(&mountinfo, path);
    if !mounted.is_empty() {
        bail!(
            "not removing {}: still mounted inside it: {}; unmount them (umount -R) and remove it by hand",
            path.display(),
            mounted.join(", ")
        );
    }
    fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))
}

/// Mount points at or below `dir`, from /proc/self/mountinfo text (proc(5): the fifth field
/// is the mount point, with spaces and other special characters written as octal escapes).
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code =
            b.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok()).and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Build folders left by runs that were killed (their process is gone).
fn remove_stale_build_dirs(cache: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(cache)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".build-").and_then(|r| r.rsplit_once('-')).map(|(_, pid)| pid) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        eprintln!("removing {name}, left by an interrupted build");
        remove_build_dir(&cache.join(&name))?;
    }
    Ok(())
}

/// Images this suite's earlier recipes built; only the current one is ever used.
fn remove_superseded(cache: &Path, recipe: &Recipe) -> anyhow::Result<()> {
    let (prefix, current) = (recipe.file_prefix(), recipe.file_name());
    for entry in fs::read_dir(cache)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // Images named before flavours (`debian-12-bookworm-HASH.qcow2`) are left alone: the
        // cache may be shared with checkouts that still build them.
        if name.starts_with(&prefix) && name.ends_with(".qcow2") && name != current {
            eprintln!("removing {name}, built by an earlier recipe");
            fs::remove_file(cache.join(&name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_hash_depends_on_suite_and_files() {
        let a = recipe_hash(Suite::Bookworm, &[("etc/x", "1")]);
        assert_eq!(a.len(), 64);
        assert_ne!(a, recipe_hash(Suite::Trixie, &[("etc/x", "1")]));
        assert_ne!(a, recipe_hash(Suite::Bookworm, &[("etc/x", "2")]));
        // Length-prefixed: moving a byte from one field to the next changes the hash.
        assert_ne!(recipe_hash(Suite::Bookworm, &[("etc/x1", "")]), recipe_hash(Suite::Bookworm, &[("etc/x", "1")]));
        assert_eq!(a, recipe_hash(Suite::Bookworm, &[("etc/x", "1")]));
    }

    #[test]
    fn image_names_carry_release_flavour_and_hash() {
        let r = Recipe::new(Suite::Trixie, Flavor::Networkd);
        let name = r.file_name();
        assert!(name.starts_with("debian-13-trixie-networkd-") && name.ends_with(".qcow2"), "{name}");
        assert_eq!(name.len(), "debian-13-trixie-networkd-".len() + 16 + ".qcow2".len());
        let nm = Recipe::new(Suite::Trixie, Flavor::Nm);
        assert!(nm.file_name().starts_with("debian-13-trixie-nm-"));
        assert_ne!(nm.hash, r.hash, "the flavour is part of the recipe");
        // One flavour's clean-up never takes the other's image, only the pre-flavour names.
        assert!(!nm.file_name().starts_with(&r.file_prefix()) && !r.file_name().starts_with(&nm.file_prefix()));
    }

    #[test]
    fn flavours_differ_only_in_their_network_manager() {
        assert_eq!(Flavor::Nm.packages(), ["network-manager"]);
        assert!(!PACKAGES.contains(&"systemd-resolved") && !PACKAGES.contains(&"network-manager"));
        assert!(Flavor::Nm.cloud_cfg().contains("renderers: [ network-manager ]"));
        assert!(Flavor::Networkd.cloud_cfg().contains("renderers: [ networkd ]"));
        assert!(Flavor::Nm.unit_hooks()[1].contains("mask systemd-networkd.service"));
    }

    #[test]
    fn uuid_is_well_formed_version_4() {
        let u = uuid_from_hex(&"f".repeat(64));
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = uuid_from_hex(&"0".repeat(64));
        assert_eq!(u, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn layout_puts_root_last_after_the_boot_partition() {
        let l = Layout::plan(2048 * MIB);
        assert_eq!(l.root_start, 129 * MIB);
        assert_eq!(l.total, (129 + 2048) * MIB);
        assert_eq!(
            l.sfdisk_script("1234abcd"),
            "label: dos\nlabel-id: 0x1234abcd\nunit: sectors\n\n\
             start=2048, size=262144, type=c, bootable\n\
             start=264192, size=4194304, type=83\n"
        );
    }

    #[test]
    fn root_fs_leaves_a_gib_free_and_is_whole_mib() {
        let content = 700 * MIB + 5;
        let size = root_fs_size(content);
        assert_eq!(size % MIB, 0);
        assert!(size >= content + ROOT_FREE + ROOT_OVERHEAD, "{size}");
    }

    #[test]
    fn boot_config_names_root_console_and_nic_naming() {
        let cfg = syslinux_cfg(&kernel_cmdline("u-u-i-d"));
        assert!(cfg.contains("APPEND root=UUID=u-u-i-d rw console=ttyS0,115200n8 net.ifnames=0"), "{cfg}");
        assert!(cfg.contains("DEFAULT debian\n") && cfg.contains("LABEL debian\n"), "{cfg}");
        assert_eq!(fstab("u-u-i-d"), "UUID=u-u-i-d / ext4 defaults,errors=remount-ro 0 1\n");
    }

    #[test]
    fn picks_the_one_kernel_with_an_initrd() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // /boot as Debian's linux-image and initramfs-tools packages fill it (captured here).
        let boot = names(&[
            "System.map-6.1.0-50-cloud-amd64",
            "config-6.1.0-50-cloud-amd64",
            "initrd.img-6.1.0-50-cloud-amd64",
            "vmlinuz-6.1.0-50-cloud-amd64",
        ]);
        assert_eq!(pick_kernel(&boot).unwrap(), "6.1.0-50-cloud-amd64");
        let err = pick_kernel(&names(&["vmlinuz-6.1.0-50-cloud-amd64"])).unwrap_err().to_string();
        assert!(err.contains("no initrd.img-6.1.0-50-cloud-amd64"), "{err}");
        assert!(pick_kernel(&names(&["vmlinuz-a", "vmlinuz-b"])).is_err());
        assert!(pick_kernel(&[]).is_err());
    }

    #[test]
    fn missing_tools_name_their_packages_and_one_install_command() {
        let msg = missing_tools_message(&[("mkfs.fat", "dosfstools"), ("mcopy", "mtools")]);
        assert!(msg.contains("mkfs.fat (Debian package dosfstools)"), "{msg}");
        assert!(msg.ends_with("apt-get install -y dosfstools mtools"), "{msg}");
    }

    #[test]
    fn finds_mounts_inside_a_build_dir() {
        // Format from proc(5), /proc/[pid]/mountinfo; the second line is what mmdebstrap's
        // bind mount of /dev into the root it fills looks like, captured here.
        let info = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    512 29 0:5 / /var/cache/almavmm-e2e/.build-bookworm-42/rootfs/dev rw,nosuid - devtmpfs udev rw\n\
                    513 29 0:6 / /var/cache/almavmm-e2e/.build-bookworm-420 rw - tmpfs tmpfs rw\n\
                    514 29 0:7 / /tmp/with\\040space rw - tmpfs tmpfs rw\n";
        let dir = Path::new("/var/cache/almavmm-e2e/.build-bookworm-42");
        assert_eq!(mounts_under(info, dir), vec!["/var/cache/almavmm-e2e/.build-bookworm-42/rootfs/dev"]);
        assert_eq!(mounts_under(info, Path::new("/tmp/with space")), vec!["/tmp/with space"]);
        assert!(mounts_under(info, Path::new("/srv")).is_empty());
    }
}
