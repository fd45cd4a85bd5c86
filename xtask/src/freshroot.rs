//! `cargo xtask fresh-root`: the README promises that `cargo xtask demo` installs what it
//! needs on a fresh Debian 12 machine. This checks it on one, every CI run; `--suite trixie`
//! checks the same on Debian 13 (QEMU from trixie itself, no backports), by hand.
//!
//! 1. A minimal Debian 12 root is built with mmdebstrap, once, and cached in
//!    `$ALMAVMM_E2E_CACHE` (default /var/cache/almavmm-e2e) as `fresh-root-bookworm-HASH/`,
//!    HASH covering the mmdebstrap arguments. No mirror is named, so mmdebstrap sets up
//!    what a fresh install has: bookworm, bookworm-updates and bookworm-security from
//!    deb.debian.org, and no backports. It removes apt's package lists at the end, so apt
//!    starts cold, as on a machine where `apt-get update` never ran.
//! 2. Each run lays a writable overlay on that cached root (the upper layer in a scratch
//!    folder beside it), and in a private mount and PID namespace (`unshare --mount --pid
//!    --fork --kill-child`) mounts /proc, /sys, /dev and /etc/resolv.conf, and overlays this
//!    checkout, `$CARGO_HOME`, `$RUSTUP_HOME` (and the target folder, if outside the
//!    checkout) at the same paths inside; then it chroots and runs this very xtask binary
//!    as `xtask deps --for demo --install`, and in a second session `xtask deps --for demo`
//!    (the check alone, which must pass).
//!
//!    Not `cargo xtask` inside: a root without a C compiler can only run it if cargo finds
//!    every unit of xtask fresh, and cargo decides that from build-script inputs this
//!    harness does not control (ring's build script re-runs whenever any of the ~30
//!    variables cc-rs watches, CC, CFLAGS, SOURCE_DATE_EPOCH among them, differs from the
//!    build outside). A CI run failed exactly so: ring's build script ran in the chroot and
//!    found no `cc`. Building xtask needs a C linker on any machine anyway (rustup says so
//!    when it installs Rust); what this check is about is what `deps` installs, and that is
//!    the same code in the binary. The binary runs at the same path inside (the checkout,
//!    or the target folder, is overlaid there), against the root's glibc, which is Debian
//!    12's, as on the machines this runs on.
//! 3. From outside, the dpkg status in the overlay's upper layer against the cached root's
//!    says what was installed; the QEMU pair must be there in one version from
//!    bookworm-backports, every package the demo needs installed, and no kernel headers
//!    (those are the tests' alone).
//!
//! Every write of a run lands in the overlays' upper layers in the scratch folder, which is
//! removed afterwards; the mounts exist only in the namespace, which the kernel tears down
//! when its last process ends, pass, fail or kill. Each step has a time limit.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};

use crate::deps::{self, Distro, Purpose};
use crate::limited::limited;
use crate::util::{Stage, project_root};

/// The same cache as the test image's (testimage.rs keeps its own copy of these two: that
/// file's text is part of the image's recipe hash, so it is not touched for this).
const CACHE_ENV: &str = "ALMAVMM_E2E_CACHE";
const DEFAULT_CACHE: &str = "/var/cache/almavmm-e2e";

/// The Debian release of the fresh root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FreshSuite {
    /// Debian 12: QEMU must come from bookworm-backports, with qemu-img from the same source.
    #[default]
    Bookworm,
    /// Debian 13: QEMU from trixie itself.
    Trixie,
}

impl FreshSuite {
    fn codename(self) -> &'static str {
        match self {
            FreshSuite::Bookworm => "bookworm",
            FreshSuite::Trixie => "trixie",
        }
    }

    fn label(self) -> &'static str {
        match self {
            FreshSuite::Bookworm => "Debian 12",
            FreshSuite::Trixie => "Debian 13",
        }
    }

    fn distro(self) -> Distro {
        Distro::Debian { codename: self.codename().to_string() }
    }

    /// mmdebstrap's arguments before the target folder: the whole recipe, hashed into the
    /// cache name. No mirror: mmdebstrap then adds the updates and security suites, as a
    /// Debian installer does. minbase: Priority required, plus apt.
    fn recipe(self) -> [&'static str; 4] {
        ["--mode=root", "--variant=minbase", r#"--aptopt=Acquire::Retries "3""#, self.codename()]
    }
}

const BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);
const INSTALL_LIMIT: Duration = Duration::from_secs(30 * 60);
const CHECK_LIMIT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Default, clap::Args)]
pub struct FreshRootArgs {
    /// The Debian release to check on.
    #[arg(long, value_enum, default_value_t)]
    pub suite: FreshSuite,
    /// Build the root again even if the cache holds one of this recipe.
    #[arg(long)]
    pub rebuild: bool,
    /// Keep the scratch folder (what the install wrote, in the overlay's upper layer).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: FreshRootArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure!(deps::is_root(), "the fresh-root check needs root (mmdebstrap --mode=root, mounts, chroot)");
    ensure!(
        deps::missing(Purpose::Demo).iter().all(|n| n.package != "mmdebstrap"),
        "the fresh-root check builds its root with mmdebstrap: install it first with \
         `cargo xtask deps --for demo --install`"
    );
    let cache = cache_dir();
    fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}; set {CACHE_ENV} to a writable folder", cache.display()))?;
    remove_stale(&cache)?;
    let base = {
        let _s = Stage::new(format!("fresh root: minimal {} (cached)", args.suite.label()));
        ensure_root(&cache, args.suite, args.rebuild)?
    };
    let shares = shares()?;
    let scratch = Scratch::create(&cache, args.keep)?;
    let xtask = std::env::current_exe()?;
    {
        let _s = Stage::new("fresh root: xtask deps --for demo --install");
        session(&base, &scratch.path, &shares, &xtask_command(&xtask, "deps --for demo --install"), INSTALL_LIMIT)?;
    }
    {
        let _s = Stage::new("fresh root: xtask deps --for demo (check only)");
        session(&base, &scratch.path, &shares, &xtask_command(&xtask, "deps --for demo"), CHECK_LIMIT)?;
    }
    let before = read_dpkg_status(&base.join("var/lib/dpkg/status"))?;
    let after = read_dpkg_status(&scratch.path.join("root.upper/var/lib/dpkg/status"))
        .context("the install wrote no dpkg status: nothing was installed")?;
    let added = verify(args.suite, &before, &after)?;
    let kib: u64 = added.iter().map(|p| p.installed_kib).sum();
    println!(
        "fresh {} root: `xtask deps --for demo --install` installed {} packages ({} MiB), among them:",
        args.suite.label(),
        added.len(),
        kib.div_ceil(1024)
    );
    let wanted = deps::packages_of(&deps::needs(&args.suite.distro(), Purpose::Demo));
    for p in added.iter().filter(|p| wanted.contains(&p.name.as_str())) {
        println!("  {:<24} {}", p.name, p.version);
    }
    drop(scratch);
    println!("fresh-root check passed in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| DEFAULT_CACHE.into())
}

fn recipe_hash(suite: FreshSuite) -> String {
    let mut h = Sha256::new();
    for part in suite.recipe() {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn root_name(suite: FreshSuite) -> String {
    format!("fresh-root-{}-{}", suite.codename(), recipe_hash(suite))
}

/// The cached root of this recipe, built first if there is none.
fn ensure_root(cache: &Path, suite: FreshSuite, rebuild: bool) -> anyhow::Result<PathBuf> {
    let root = cache.join(root_name(suite));
    if root.join("var/lib/dpkg/status").is_file() && !rebuild {
        eprintln!("reusing {}", root.display());
        return Ok(root);
    }
    let build = cache.join(format!(".fresh-root-build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&build);
    let t = Instant::now();
    let result = limited("mmdebstrap", BUILD_LIMIT).args(suite.recipe()).arg(&build).run_inherited();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&build);
        return Err(e);
    }
    let fetched = deps::lists_state(&build.join("var/lib/apt/lists")).1;
    ensure!(fetched.is_empty(), "mmdebstrap left package lists behind ({fetched:?}): apt would not start cold");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::rename(&build, &root)?;
    // Roots of older recipes are of no use any more.
    for e in fs::read_dir(cache)?.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("fresh-root-{}-", suite.codename())) && n != root_name(suite) {
            eprintln!("removing the superseded {n}");
            fs::remove_dir_all(e.path())?;
        }
    }
    eprintln!("built {} in {:.0}s", root.display(), t.elapsed().as_secs_f64());
    Ok(root)
}

/// Build and run folders of runs that were killed (their process is gone).
fn remove_stale(cache: &Path) -> anyhow::Result<()> {
    for e in fs::read_dir(cache)?.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        let pid = n.strip_prefix(".fresh-root-run-").or_else(|| n.strip_prefix(".fresh-root-build-"));
        if let Some(pid) = pid
            && !Path::new("/proc").join(pid).exists()
        {
            eprintln!("removing {n}, left by a run that was killed");
            fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// Folders overlaid at the same path inside the root: the checkout (with the target folder
/// cargo uses, unless that is elsewhere), its git folders if they are elsewhere (a git
/// worktree's are: the build scripts watch HEAD and the branch for the commit stamp, and a
/// missing watched file makes cargo rebuild), `$CARGO_HOME` and `$RUSTUP_HOME`.
fn shares() -> anyhow::Result<Vec<PathBuf>> {
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let env_or = |k: &str, d: PathBuf| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or(d);
    // This binary is TARGET/debug/xtask: that is the target folder cargo used.
    let exe = std::env::current_exe()?;
    let target = exe.parent().and_then(Path::parent).context("xtask is not in a cargo target folder")?;
    let mut candidates = vec![
        project_root(),
        target.to_path_buf(),
        env_or("CARGO_HOME", home.join(".cargo")),
        env_or("RUSTUP_HOME", home.join(".rustup")),
    ];
    candidates.extend(git_dirs(&project_root()));
    let mut out = Vec::new();
    for c in candidates {
        let c = c.canonicalize().with_context(|| format!("{} does not exist", c.display()))?;
        // overlayfs takes paths in a comma- and colon-separated option string.
        ensure!(
            !c.to_string_lossy().contains([',', ':', '\n']),
            "{} cannot be overlaid (its path has a comma or colon)",
            c.display()
        );
        out.push(c);
    }
    Ok(nested_removed(out))
}

/// Where a checkout's git data lives when `.git` is a file (`gitdir: DIR`, as in a git
/// worktree): DIR, and the common folder DIR/commondir names (the main .git). Nothing when
/// `.git` is a folder inside the checkout.
fn git_dirs(repo: &Path) -> Vec<PathBuf> {
    let Ok(pointer) = fs::read_to_string(repo.join(".git")) else { return Vec::new() };
    let Some(dir) = pointer.lines().find_map(|l| l.strip_prefix("gitdir:")).map(|d| repo.join(d.trim())) else {
        return Vec::new();
    };
    let mut dirs = vec![dir.clone()];
    if let Ok(common) = fs::read_to_string(dir.join("commondir")) {
        dirs.push(dir.join(common.trim()));
    }
    dirs
}

/// The folders, sorted, without those inside another one (the outer overlay has them).
fn nested_removed(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.sort();
    dirs.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !kept.iter().any(|k| d.starts_with(k)) {
            kept.push(d);
        }
    }
    kept
}

/// The scratch folder of one run: the overlays' upper and work layers and the mount point.
#[derive(Debug)]
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn create(cache: &Path, keep: bool) -> anyhow::Result<Scratch> {
        let path = cache.join(format!(".fresh-root-run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("root"))?;
        Ok(Scratch { path, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let left = mounts_under(&mountinfo, &self.path);
        if !left.is_empty() {
            // Cannot happen (the mounts live in the namespace only); if it does, removing
            // the folder would reach through them into the real files.
            eprintln!("NOT removing {}: still mounted there: {}", self.path.display(), left.join(", "));
            return;
        }
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Mount points (field 5 of mountinfo(5)) at or below `dir`.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// The shell command that runs this xtask binary (at the same path inside) with `args`.
fn xtask_command(xtask: &Path, args: &str) -> String {
    format!("{} {args}", q(xtask))
}

/// One `sh -c` in the chroot: the private namespaces last exactly as long as it.
fn session(base: &Path, scratch: &Path, shares: &[PathBuf], inner: &str, limit: Duration) -> anyhow::Result<()> {
    let script = session_script(base, scratch, shares, &chroot_env(), inner);
    eprintln!("$ {inner}   (in the fresh root, at most {} min)", limit.as_secs() / 60);
    limited("unshare", limit)
        .args(["--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "--", "sh", "-euc"])
        .arg(script)
        .run_inherited()
        .with_context(|| format!("`{inner}` in the fresh root"))
}

/// The environment inside: nothing of ours but the toolchain's whereabouts.
fn chroot_env() -> Vec<(String, String)> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let var = |k: &str, d: String| std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or(d);
    let cargo_home = var("CARGO_HOME", format!("{home}/.cargo"));
    let mut env = vec![
        ("HOME".to_string(), home.clone()),
        ("PATH".to_string(), format!("{cargo_home}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")),
        ("RUSTUP_HOME".to_string(), var("RUSTUP_HOME", format!("{home}/.rustup"))),
        ("CARGO_HOME".to_string(), cargo_home),
    ];
    // What else decides how cargo builds, when set: unchanged, so the build stays fresh.
    for k in ["RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"]
    {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    env
}

fn q(p: impl AsRef<std::ffi::OsStr>) -> String {
    almavmm_shared::runner::shell_quote(&p.as_ref().to_string_lossy())
}

/// The shell script run in the new namespaces: mount everything, then chroot and run `inner`
/// in the checkout. Pure, so what it mounts is tested.
fn session_script(base: &Path, scratch: &Path, shares: &[PathBuf], env: &[(String, String)], inner: &str) -> String {
    let root = scratch.join("root");
    let overlay = |lower: &Path, layer: &str, at: &Path| {
        let (upper, work) = (scratch.join(format!("{layer}.upper")), scratch.join(format!("{layer}.work")));
        format!(
            "mkdir -p {} {} {}\nmount -t overlay almavmm-fresh-root -o lowerdir={},upperdir={},workdir={} {}\n",
            q(&upper),
            q(&work),
            q(at),
            q(lower),
            q(&upper),
            q(&work),
            q(at)
        )
    };
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let mut s = overlay(base, "root", &root);
    s += &format!("mount -t proc proc {}\n", q(root.join("proc")));
    s += &format!("mount --rbind /sys {}\n", q(root.join("sys")));
    s += &format!("mount --rbind /dev {}\n", q(root.join("dev")));
    // Replace whatever the root has there (a symlink would point out of it) by a file to mount on.
    let resolv = root.join("etc/resolv.conf");
    s += &format!("rm -f {r}\n: >{r}\nmount --bind /etc/resolv.conf {r}\n", r = q(&resolv));
    for (i, share) in shares.iter().enumerate() {
        s += &overlay(share, &format!("share{i}"), &inside(share));
    }
    // A chroot must not start daemons of the packages it installs (policy-rc.d(8)).
    let policy = q(root.join("usr/sbin/policy-rc.d"));
    s += &format!("printf '#!/bin/sh\\nexit 101\\n' >{policy}\nchmod 755 {policy}\n");
    let vars: Vec<String> = env.iter().map(|(k, v)| q(format!("{k}={v}"))).collect();
    let cd_and_run = format!("cd {} && exec {inner}", q(project_root()));
    s += &format!("exec chroot {} /usr/bin/env -i {} /bin/sh -c {}\n", q(&root), vars.join(" "), q(cd_and_run));
    s
}

/// One installed package, from dpkg's status file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pkg {
    name: String,
    version: String,
    installed_kib: u64,
}

fn read_dpkg_status(path: &Path) -> anyhow::Result<BTreeMap<String, Pkg>> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse_dpkg_status(&text))
}

/// The installed packages (Status: install ok installed) in a dpkg status file.
fn parse_dpkg_status(text: &str) -> BTreeMap<String, Pkg> {
    let mut out = BTreeMap::new();
    for para in text.split("\n\n") {
        let field = |k: &str| {
            para.lines().find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
        };
        if let (Some(name), Some(version), Some(status)) = (field("Package"), field("Version"), field("Status"))
            && status.ends_with(" installed")
        {
            let installed_kib = field("Installed-Size").and_then(|s| s.parse().ok()).unwrap_or(0);
            out.insert(name.clone(), Pkg { name, version, installed_kib });
        }
    }
    out
}

/// Judge the install: what was added or changed, if it is right.
fn verify(
    suite: FreshSuite,
    before: &BTreeMap<String, Pkg>,
    after: &BTreeMap<String, Pkg>,
) -> anyhow::Result<Vec<Pkg>> {
    let added: Vec<Pkg> = after.values().filter(|p| before.get(&p.name) != Some(*p)).cloned().collect();
    let wanted = deps::packages_of(&deps::needs(&suite.distro(), Purpose::Demo));
    let absent: Vec<&str> = wanted.iter().copied().filter(|p| !after.contains_key(*p)).collect();
    ensure!(absent.is_empty(), "not installed in the fresh root: {}", absent.join(", "));
    let [sys, utils] = deps::QEMU_PAIR.map(|n| &after[n].version);
    ensure!(sys == utils, "qemu-system-x86 {sys} and qemu-utils {utils} are not from one source");
    // Backports versions carry `~bpoN`: bookworm's own QEMU 7.2 would remove the machine's
    // qemu-img, trixie's own QEMU is the one to use.
    match suite {
        FreshSuite::Bookworm => {
            ensure!(sys.contains("~bpo12"), "QEMU {sys} is not bookworm-backports' (a ~bpo12 version)")
        }
        FreshSuite::Trixie => ensure!(!sys.contains("~bpo"), "QEMU {sys} is from backports, not from trixie itself"),
    }
    let kernel: Vec<&str> = added
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| n.starts_with("linux-headers-") || n.starts_with("linux-image-"))
        .collect();
    if !kernel.is_empty() {
        bail!("the demo's install pulled in kernel packages, which only the tests need: {}", kernel.join(", "));
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str) -> (String, Pkg) {
        (name.to_string(), Pkg { name: name.into(), version: version.into(), installed_kib: 100 })
    }

    fn demo_installed(qemu: &str, utils: &str) -> BTreeMap<String, Pkg> {
        let mut m: BTreeMap<String, Pkg> =
            deps::packages_of(&deps::needs(&FreshSuite::Bookworm.distro(), Purpose::Demo))
                .into_iter()
                .map(|n| pkg(n, "1.0"))
                .collect();
        m.extend([pkg("qemu-system-x86", qemu), pkg("qemu-utils", utils)]);
        m
    }

    const BPO: &str = "1:10.0.2+ds-2+deb13u1~bpo12+1";

    #[test]
    fn a_right_install_passes_and_lists_what_it_added() {
        let before: BTreeMap<_, _> = [pkg("apt", "2.6.1")].into();
        let mut after = demo_installed(BPO, BPO);
        after.extend([pkg("apt", "2.6.1")]);
        let added = verify(FreshSuite::Bookworm, &before, &after).unwrap();
        assert!(added.iter().any(|p| p.name == "qemu-utils"));
        assert!(!added.iter().any(|p| p.name == "apt"), "unchanged packages are not listed");
    }

    #[test]
    fn qemu_from_two_sources_fails() {
        let err = verify(FreshSuite::Bookworm, &BTreeMap::new(), &demo_installed(BPO, "1:7.2+dfsg-7+deb12u18+b3"))
            .unwrap_err();
        assert!(err.to_string().contains("not from one source"), "{err}");
        let main = "1:7.2+dfsg-7+deb12u18+b3";
        let err = verify(FreshSuite::Bookworm, &BTreeMap::new(), &demo_installed(main, main)).unwrap_err();
        assert!(err.to_string().contains("bookworm-backports"), "{err}");
    }

    #[test]
    fn kernel_headers_in_the_demo_install_fail() {
        let mut after = demo_installed(BPO, BPO);
        after.extend([pkg("linux-headers-6.1.0-50-cloud-amd64", "6.1.176-1")]);
        let err = verify(FreshSuite::Bookworm, &BTreeMap::new(), &after).unwrap_err().to_string();
        assert!(err.contains("linux-headers-6.1.0-50-cloud-amd64"), "{err}");
    }

    #[test]
    fn a_missing_demo_package_fails() {
        let mut after = demo_installed(BPO, BPO);
        after.remove("mmdebstrap");
        let err = verify(FreshSuite::Bookworm, &BTreeMap::new(), &after).unwrap_err().to_string();
        assert!(err.contains("mmdebstrap"), "{err}");
    }

    #[test]
    fn dpkg_status_keeps_only_installed_packages() {
        let status = "Package: qemu-utils\nStatus: install ok installed\nPriority: optional\nInstalled-Size: 7000\n\
                      Version: 1:10.0.2+ds-2+deb13u1~bpo12+1\nDescription: QEMU utilities\n with a continuation line\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                      Package: half\nStatus: install ok unpacked\nVersion: 2\n";
        let m = parse_dpkg_status(status);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["qemu-utils"]);
        assert_eq!(m["qemu-utils"].version, BPO);
        assert_eq!(m["qemu-utils"].installed_kib, 7000);
    }

    #[test]
    fn a_worktrees_git_folders_are_shared_too() {
        let d = tempfile::tempdir().unwrap();
        let (repo, wt) = (d.path().join("wt"), d.path().join("main/.git/worktrees/wt"));
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(&wt).unwrap();
        std::fs::write(repo.join(".git"), format!("gitdir: {}\n", wt.display())).unwrap();
        std::fs::write(wt.join("commondir"), "../..\n").unwrap();
        let dirs: Vec<PathBuf> = git_dirs(&repo).iter().map(|p| p.canonicalize().unwrap()).collect();
        let main_git = d.path().join("main/.git").canonicalize().unwrap();
        assert_eq!(dirs, [wt.canonicalize().unwrap(), main_git.clone()]);
        assert_eq!(nested_removed(dirs), [main_git]);
        // A plain clone: .git is a folder in the checkout, nothing more to share.
        std::fs::remove_file(repo.join(".git")).unwrap();
        std::fs::create_dir(repo.join(".git")).unwrap();
        assert!(git_dirs(&repo).is_empty());
    }

    #[test]
    fn nested_shares_are_covered_by_the_outer_overlay() {
        let got = nested_removed(
            ["/work/wt/target", "/root/.cargo", "/work/wt", "/root/.rustup", "/work/wt"].map(PathBuf::from).to_vec(),
        );
        assert_eq!(got, ["/root/.cargo", "/root/.rustup", "/work/wt"].map(PathBuf::from));
    }

    #[test]
    fn the_session_mounts_everything_inside_the_scratch_folder_and_chroots() {
        let env =
            [("HOME".to_string(), "/root".to_string()), ("PATH".to_string(), "/root/.cargo/bin:/usr/bin".to_string())];
        let shares = [PathBuf::from("/root/.cargo"), PathBuf::from("/work/my repo")];
        let s = session_script(
            Path::new("/c/fresh-root-x"),
            Path::new("/c/run"),
            &shares,
            &env,
            &xtask_command(Path::new("/work/my repo/target/debug/xtask"), "deps --for demo"),
        );
        let mounts: Vec<&str> = s.lines().filter(|l| l.starts_with("mount ")).collect();
        assert_eq!(
            mounts,
            [
                "mount -t overlay almavmm-fresh-root -o lowerdir=/c/fresh-root-x,upperdir=/c/run/root.upper,workdir=/c/run/root.work /c/run/root",
                "mount -t proc proc /c/run/root/proc",
                "mount --rbind /sys /c/run/root/sys",
                "mount --rbind /dev /c/run/root/dev",
                "mount --bind /etc/resolv.conf /c/run/root/etc/resolv.conf",
                "mount -t overlay almavmm-fresh-root -o lowerdir=/root/.cargo,upperdir=/c/run/share0.upper,workdir=/c/run/share0.work /c/run/root/root/.cargo",
                "mount -t overlay almavmm-fresh-root -o lowerdir='/work/my repo',upperdir=/c/run/share1.upper,workdir=/c/run/share1.work '/c/run/root/work/my repo'",
            ]
        );
        // Every path written to is inside the scratch folder.
        for l in s.lines().filter(|l| l.starts_with("mkdir ") || l.starts_with("rm ") || l.contains(" >")) {
            assert!(
                l.split_whitespace()
                    .skip(1)
                    .filter(|w| w.starts_with('/') || w.starts_with(">/"))
                    .all(|w| w.trim_start_matches('>').starts_with("/c/run/")),
                "{l}"
            );
        }
        let last = s.lines().last().unwrap();
        assert!(
            last.starts_with(
                "exec chroot /c/run/root /usr/bin/env -i HOME=/root PATH=/root/.cargo/bin:/usr/bin /bin/sh -c "
            ),
            "{last}"
        );
        assert!(last.ends_with(r#"&& exec '\''/work/my repo/target/debug/xtask'\'' deps --for demo'"#), "{last}");
    }

    #[test]
    fn mount_points_below_a_folder() {
        let info = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /c/run/root rw - overlay x rw\n\
                    38 37 0:6 / /c/run/root/proc rw - proc proc rw\n\
                    39 35 0:7 / /c/running rw - tmpfs t rw\n";
        assert_eq!(mounts_under(info, Path::new("/c/run")), ["/c/run/root", "/c/run/root/proc"]);
    }

    #[test]
    fn the_recipe_names_no_mirror_and_no_backports() {
        for suite in [FreshSuite::Bookworm, FreshSuite::Trixie] {
            let recipe = suite.recipe();
            assert!(recipe.iter().all(|a| !a.contains("http") && !a.contains("backports")), "{recipe:?}");
            assert_eq!(recipe.last(), Some(&suite.codename()));
            let prefix = format!("fresh-root-{}-", suite.codename());
            let name = root_name(suite);
            assert!(name.starts_with(&prefix) && name.len() == prefix.len() + 16, "{name}");
        }
        assert_ne!(recipe_hash(FreshSuite::Bookworm), recipe_hash(FreshSuite::Trixie));
    }

    #[test]
    fn on_trixie_qemu_comes_from_trixie_itself() {
        let trixie = "1:10.0.7+ds-0+deb13u1";
        let mut after: BTreeMap<String, Pkg> =
            deps::packages_of(&deps::needs(&FreshSuite::Trixie.distro(), Purpose::Demo))
                .into_iter()
                .map(|n| pkg(n, "1.0"))
                .collect();
        after.extend([pkg("qemu-system-x86", trixie), pkg("qemu-utils", trixie)]);
        verify(FreshSuite::Trixie, &BTreeMap::new(), &after).unwrap();
        after.extend([pkg("qemu-system-x86", BPO), pkg("qemu-utils", BPO)]);
        let err = verify(FreshSuite::Trixie, &BTreeMap::new(), &after).unwrap_err();
        assert!(err.to_string().contains("from backports"), "{err}");
    }
}
