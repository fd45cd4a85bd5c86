//! The kernel matrix: vmm_clock built against kernels from 5.10 to the newest Debian ships,
//! each with its own distribution's compiler, so the range the README claims is proven by
//! builds. A header tree alone is not enough: a kernel's headers assume the compiler that
//! built it (its `-W` flags, plugins, `CONFIG_CC_VERSION_TEXT`), so each kernel gets a root
//! of its own distribution holding that gcc, make and the headers.
//!
//! Each root is built once with mmdebstrap (`--variant=apt`, no recommends, docs and locales
//! left out) and cached in `$ALMAVMM_E2E_CACHE` (default /var/cache/almavmm-e2e) as
//! `kmod-root-NAME-HASH/`, HASH covering the whole mmdebstrap argument list, like the test
//! image and the fresh root. A new recipe builds a new root and removes the old one. Each run
//! copies the shipped files of kmod/ into a scratch folder, bind-mounts it on the root's /mnt
//! in a private mount namespace (with /proc and /dev), chroots and runs the module's own
//! Makefile with W=1; any warning fails. Nothing of a run is left in the cached root.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use sha2::{Digest, Sha256};

use crate::limited::limited;

const CACHE_ENV: &str = "ALMAVMM_E2E_CACHE";
const DEFAULT_CACHE: &str = "/var/cache/almavmm-e2e";
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

/// mmdebstrap of one root (a cold one downloads about 100 MiB).
const ROOT_LIMIT: Duration = Duration::from_secs(20 * 60);
/// One out-of-tree build of a 400-line module, on two busy cores.
const MAKE_LIMIT: Duration = Duration::from_secs(5 * 60);
const QUICK_LIMIT: Duration = Duration::from_secs(60);

/// One kernel of the matrix and the distribution that builds it.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Short name, part of the cache folder's name.
    pub name: &'static str,
    /// What it stands for, for the table.
    pub what: &'static str,
    /// The suite mmdebstrap bootstraps.
    pub suite: &'static str,
    /// apt sources, after the main suite (security updates carry the current kernel ABI).
    pub extra_sources: &'static [(&'static str, &'static str)],
    /// The header package, with `/suite` to take it from another suite than the default.
    pub headers: &'static str,
}

/// The matrix. Debian 11's 5.10 is older than AlmaLinux 9's 5.14, so anything that builds
/// against both 5.10 and 6.x covers 9's kernel too; trixie-backports carries the newest
/// kernel Debian ships for trixie.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "bullseye",
        what: "Debian 11 (5.10)",
        suite: "bullseye",
        // bullseye's last point release is final, so its main suite alone is a fixed set;
        // and this mirror answers 404 for bullseye-security's linux-headers-cloud-amd64.
        extra_sources: &[],
        headers: "linux-headers-cloud-amd64",
    },
    Kernel {
        name: "bookworm",
        what: "Debian 12 (6.1)",
        suite: "bookworm",
        extra_sources: &[(SECURITY, "bookworm-security")],
        headers: "linux-headers-cloud-amd64",
    },
    Kernel {
        name: "trixie",
        what: "Debian 13 (6.12)",
        suite: "trixie",
        extra_sources: &[(SECURITY, "trixie-security")],
        headers: "linux-headers-cloud-amd64",
    },
    Kernel {
        name: "trixie-backports",
        what: "Debian 13 backports (newest)",
        suite: "trixie",
        extra_sources: &[(SECURITY, "trixie-security"), (MIRROR, "trixie-backports")],
        headers: "linux-headers-cloud-amd64/trixie-backports",
    },
];

/// Left out of every root: nobody reads them in a build root, and they are a third of its size.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
];

/// mmdebstrap's arguments before the target folder: the whole recipe of a root.
pub fn recipe(k: &Kernel) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--mode=root".into(),
        // apt and what is Essential; the headers pull in their gcc, and make comes by name.
        "--variant=apt".into(),
        r#"--aptopt=APT::Install-Recommends "false""#.into(),
        // The mirror here is reached through a proxy that sometimes drops a connection.
        r#"--aptopt=Acquire::Retries "3""#.into(),
        // perl: W=1 runs scripts/kernel-doc on the source, which needs Pod::Usage, more
        // than the Essential perl-base has (6.12 fails without it).
        format!("--include=make,gcc,perl,{}", k.headers),
    ];
    args.extend(DPKG_EXCLUDES.iter().map(|o| format!("--dpkgopt={o}")));
    args.push(k.suite.into());
    args
}

/// The sources, after the target folder (mmdebstrap takes them as `deb …` lines).
fn sources(k: &Kernel) -> Vec<String> {
    let mut s = vec![format!("deb {MIRROR} {} main", k.suite)];
    s.extend(k.extra_sources.iter().map(|(m, suite)| format!("deb {m} {suite} main")));
    s
}

fn recipe_hash(k: &Kernel) -> String {
    let mut h = Sha256::new();
    for part in recipe(k).iter().chain(sources(k).iter()) {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn root_prefix(k: &Kernel) -> String {
    format!("kmod-root-{}-", k.name)
}

fn root_name(k: &Kernel) -> String {
    format!("{}{}", root_prefix(k), recipe_hash(k))
}

fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| DEFAULT_CACHE.into())
}

/// One kernel's outcome, for the table.
#[derive(Debug)]
pub struct Row {
    pub kernel: Kernel,
    pub release: String,
    pub gcc: String,
    /// Seconds spent building the root (0 when it came from the cache), and building the module.
    pub root_secs: f64,
    pub cached: bool,
    pub build_secs: f64,
    pub result: anyhow::Result<u64>,
}

/// Build the module in every root of the matrix, building roots that are not cached yet.
pub fn run(kmod: &Path, scratch: &Path) -> anyhow::Result<Vec<Row>> {
    ensure!(
        crate::deps::is_root(),
        "the kernel matrix needs root (mmdebstrap --mode=root, mounts, chroot); run as root or pass --no-matrix"
    );
    let cache = cache_dir();
    fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}; set {CACHE_ENV} to a writable folder", cache.display()))?;
    remove_stale(&cache)?;
    let mut rows = Vec::new();
    for k in KERNELS {
        let _s = crate::util::Stage::new(format!("kmod matrix: {} ({})", k.what, k.name));
        let t = Instant::now();
        let root = match ensure_root(&cache, k) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e:#}");
                rows.push(Row {
                    kernel: *k,
                    release: "?".into(),
                    gcc: "?".into(),
                    root_secs: t.elapsed().as_secs_f64(),
                    cached: false,
                    build_secs: 0.0,
                    result: Err(e),
                });
                continue;
            }
        };
        let (root_secs, cached) = (t.elapsed().as_secs_f64(), root.1);
        let root = root.0;
        let t = Instant::now();
        let (release, gcc, result) = build_in(&root, kmod, &scratch.join(k.name));
        if let Err(e) = &result {
            eprintln!("{e:#}");
        }
        rows.push(Row { kernel: *k, release, gcc, root_secs, cached, build_secs: t.elapsed().as_secs_f64(), result });
    }
    Ok(rows)
}

/// The cached root of this kernel's recipe (true), or a freshly built one (false).
fn ensure_root(cache: &Path, k: &Kernel) -> anyhow::Result<(PathBuf, bool)> {
    let root = cache.join(root_name(k));
    if root.join("var/lib/dpkg/status").is_file() {
        eprintln!("reusing {}", root.display());
        return Ok((root, true));
    }
    let build = cache.join(format!(".kmod-root-build-{}-{}", k.name, std::process::id()));
    let _ = fs::remove_dir_all(&build);
    let t = Instant::now();
    let result = limited("mmdebstrap", ROOT_LIMIT).args(recipe(k)).arg(&build).args(sources(k)).run_inherited();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&build);
        return Err(e.context(format!("building the {} root (mmdebstrap: apt-get install -y mmdebstrap)", k.name)));
    }
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::rename(&build, &root)?;
    for e in fs::read_dir(cache)?.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&root_prefix(k)) && n != root_name(k) {
            eprintln!("removing the superseded {n}");
            fs::remove_dir_all(e.path())?;
        }
    }
    eprintln!("built {} in {:.0}s", root.display(), t.elapsed().as_secs_f64());
    Ok((root, false))
}

/// Build folders of runs that were killed (their process is gone). A name is
/// `.kmod-root-build-NAME-PID`; NAME may hold dashes, the PID does not.
fn remove_stale(cache: &Path) -> anyhow::Result<()> {
    for e in fs::read_dir(cache)?.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = n.strip_prefix(".kmod-root-build-").and_then(|r| r.rsplit_once('-')).map(|(_, p)| p)
            && !Path::new("/proc").join(pid).exists()
        {
            eprintln!("removing {n}, left by a run that was killed");
            fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// Quote for sh.
fn q(p: impl AsRef<std::ffi::OsStr>) -> String {
    almavmm_shared::runner::shell_quote(&p.as_ref().to_string_lossy())
}

/// The script run in a private mount namespace: mount what a build needs into the root,
/// the module's copy on /mnt, and run the Makefile there, in the chroot.
pub fn build_script(root: &Path, src: &Path, tree_in_root: &str) -> String {
    let r = q(root);
    format!(
        "set -e\n\
         mount -t proc proc {r}/proc\n\
         mount --rbind /dev {r}/dev\n\
         mount --bind {src} {r}/mnt\n\
         exec chroot {r} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
         make -C /mnt KERNELDIR={tree} W=1\n",
        src = q(src),
        tree = q(tree_in_root),
    )
}

/// Build in one root: (release, gcc version, Ok(.ko bytes) or what went wrong).
fn build_in(root: &Path, kmod: &Path, src: &Path) -> (String, String, anyhow::Result<u64>) {
    let gcc = limited("chroot", QUICK_LIMIT)
        .arg(root)
        .args(["gcc", "-dumpfullversion"])
        .run()
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_else(|e| format!("? ({e:#})"));
    let trees = match super::installed_header_trees(&root.join("usr/src")) {
        Ok(t) => t,
        Err(e) => return ("?".into(), gcc, Err(e)),
    };
    let [tree] = trees.as_slice() else {
        let n = trees.len();
        return (
            "?".into(),
            gcc,
            Err(anyhow::anyhow!("{}: want one header tree in usr/src, found {n}", root.display())),
        );
    };
    let release = super::release_of(tree).unwrap_or_else(|_| "?".into());
    let result = (|| {
        super::copy_shipped(kmod, src)?;
        let tree_in_root = Path::new("/").join(tree.strip_prefix(root)?);
        let script = build_script(root, src, &tree_in_root.to_string_lossy());
        let out = limited("unshare", MAKE_LIMIT)
            .args(["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "sh", "-c", &script])
            .output()?;
        super::check_build(&release, &out, &src.join("vmm_clock.ko"))
    })();
    (release, gcc, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_root_has_its_own_recipe_and_cache_name() {
        let names: Vec<String> = KERNELS.iter().map(root_name).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(
                n.starts_with("kmod-root-") && n.len() == "kmod-root-".len() + KERNELS[i].name.len() + 1 + 16,
                "{n}"
            );
            assert_eq!(names.iter().filter(|m| *m == n).count(), 1, "{n} is not unique");
        }
        // The trixie and trixie-backports roots differ only in a source line and the headers' suite.
        assert_ne!(recipe_hash(&KERNELS[2]), recipe_hash(&KERNELS[3]));
    }

    #[test]
    fn roots_are_minimal_and_the_backports_headers_come_from_backports() {
        for k in KERNELS {
            let r = recipe(k);
            assert!(r.contains(&"--variant=apt".to_string()), "{r:?}");
            assert!(r.iter().any(|a| a.contains("Install-Recommends \"false\"")), "{r:?}");
            assert!(r.iter().any(|a| a == &format!("--include=make,gcc,perl,{}", k.headers)), "{r:?}");
        }
        let bp = KERNELS.iter().find(|k| k.name == "trixie-backports").unwrap();
        assert!(sources(bp).contains(&format!("deb {MIRROR} trixie-backports main")));
        assert!(bp.headers.ends_with("/trixie-backports"));
        let bullseye = KERNELS.iter().find(|k| k.name == "bullseye").unwrap();
        assert_eq!(sources(bullseye)[0], format!("deb {MIRROR} bullseye main"));
    }

    #[test]
    fn the_build_mounts_only_inside_the_root_and_runs_make_with_w1() {
        let s = build_script(
            Path::new("/c/kmod-root-x"),
            Path::new("/tmp/s p/src"),
            "/usr/src/linux-headers-5.10.0-1-cloud-amd64",
        );
        assert!(s.contains("mount -t proc proc /c/kmod-root-x/proc\n"), "{s}");
        assert!(s.contains("mount --bind '/tmp/s p/src' /c/kmod-root-x/mnt\n"), "{s}");
        assert!(s.contains("make -C /mnt KERNELDIR=/usr/src/linux-headers-5.10.0-1-cloud-amd64 W=1"), "{s}");
        for line in s.lines().filter(|l| l.starts_with("mount")) {
            assert!(line.split_whitespace().last().unwrap().starts_with("/c/kmod-root-x/"), "{line}");
        }
    }
}
