//! `cargo xtask kmod`: check the kernel module in `kmod/`. Runs the user-space tests of its
//! time arithmetic, then builds it out of tree against every installed kernel header tree
//! (Debian's cloud flavour, Ubuntu's generic one; or the trees given), with W=1 and no
//! warning allowed, installs each build into a scratch root the way the guest does, and
//! prints one line per kernel. Then the kernel matrix (`matrix.rs`): the module built in a
//! cached root per kernel, from Debian 11's 5.10 to the newest in trixie-backports, each with
//! its own distribution's gcc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::limited::{Output, limited};
use crate::util::{Stage, project_root};

mod matrix;

/// Where Debian and Ubuntu install kernel header trees, and how to get the ones we build against.
const HEADERS_DIR: &str = "/usr/src";
/// The header packages differ per distribution (Debian 12: linux-headers-cloud-amd64 and
/// linux-headers-6.12-cloud-amd64); `deps` knows which.
const HEADERS_APT: &str = "cargo xtask deps --for test --install";
/// The flavours of header tree built against: Debian's cloud kernel, Ubuntu's generic one.
const FLAVOURS: [&str; 2] = ["-cloud-amd64", "-generic"];
/// One build or install of the module (seconds; minutes on a loaded two-core machine).
const MAKE_LIMIT: Duration = Duration::from_secs(5 * 60);
/// gcc on the arithmetic tests, the tests themselves, modinfo.
const QUICK_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default, clap::Args)]
pub struct KmodArgs {
    /// Kernel build tree to compile against, e.g. /lib/modules/$(uname -r)/build (repeatable).
    /// Default: every /usr/src/linux-headers-*-cloud-amd64 (Debian) or -generic (Ubuntu).
    #[arg(long = "kernel-dir", value_name = "DIR")]
    pub kernel_dirs: Vec<PathBuf>,
    /// Skip the kernel matrix (a root per kernel from 5.10 on, built once with mmdebstrap and
    /// cached; needs root and the Debian mirror).
    #[arg(long)]
    pub no_matrix: bool,
}

pub fn run(args: KmodArgs) -> anyhow::Result<()> {
    let kmod = project_root().join("kmod");
    let trees = trees_to_build(args.kernel_dirs, Path::new(HEADERS_DIR))?;
    // Everything is built in here, so the checkout stays clean; removed on drop.
    let scratch = tempfile::Builder::new().prefix("almavmm-kmod.").tempdir()?;
    {
        let _s = Stage::new("kmod: time arithmetic tests (user space)");
        run_arithmetic_tests(&kmod, scratch.path())?;
    }

    let mut rows = Vec::new();
    for tree in &trees {
        let _s = Stage::new(format!("kmod: build against {}", tree.display()));
        let outcome = build_against(&kmod, tree, scratch.path());
        if let Err(e) = &outcome {
            eprintln!("{e:#}");
        }
        rows.push((tree.clone(), outcome));
    }

    println!("{:<32} {:<7} {:>12}  tree", "kernel", "result", ".ko bytes");
    for (tree, outcome) in &rows {
        match outcome {
            Ok(b) => println!("{:<32} {:<7} {:>12}  {}", b.release, "ok", b.ko_bytes, tree.display()),
            Err(_) => println!(
                "{:<32} {:<7} {:>12}  {}",
                release_of(tree).unwrap_or_else(|_| "?".into()),
                "FAILED",
                "-",
                tree.display()
            ),
        }
    }
    let failed = rows.iter().filter(|(_, o)| o.is_err()).count();
    if failed > 0 {
        bail!("vmm_clock failed to build cleanly against {failed} of {} kernel trees (details above)", rows.len());
    }
    if args.no_matrix {
        return Ok(());
    }

    let rows = matrix::run(&kmod, scratch.path())?;
    println!();
    println!(
        "{:<30} {:<32} {:<8} {:<7} {:>9} {:>8}  root",
        "kernel matrix", "release", "gcc", "result", "root s", "build s"
    );
    for r in &rows {
        println!(
            "{:<30} {:<32} {:<8} {:<7} {:>9} {:>8.1}  {}",
            r.kernel.what,
            r.release,
            r.gcc,
            if r.result.is_ok() { "ok" } else { "FAILED" },
            if r.cached { "cached".to_string() } else { format!("{:.0}", r.root_secs) },
            r.build_secs,
            r.kernel.name
        );
    }
    let failed = rows.iter().filter(|r| r.result.is_err()).count();
    if failed > 0 {
        bail!(
            "vmm_clock failed to build cleanly in {failed} of {} roots of the kernel matrix (details above)",
            rows.len()
        );
    }
    Ok(())
}

/// Compile kmod/test with every warning an error (and UBSan, which catches shift overflows in
/// the arithmetic), then run it; it exits non-zero on any mismatch.
fn run_arithmetic_tests(kmod: &Path, scratch: &Path) -> anyhow::Result<()> {
    let src = kmod.join("test/vmm_clock_time_test.c");
    let bin = scratch.join("vmm_clock_time_test");
    limited("gcc", QUICK_LIMIT)
        .args(["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=undefined"])
        .args(["-fno-sanitize-recover=all", "-pthread", "-I"])
        .arg(kmod)
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .run_inherited()
        .context("compiling the arithmetic tests (needs gcc: apt-get install -y gcc)")?;
    limited(&bin, QUICK_LIMIT).run_inherited().context("the arithmetic tests failed")?;
    Ok(())
}

#[derive(Debug)]
struct Built {
    release: String,
    ko_bytes: u64,
}

fn build_against(kmod: &Path, tree: &Path, scratch: &Path) -> anyhow::Result<Built> {
    let release = release_of(tree)?;
    let src = scratch.join(format!("src-{release}"));
    copy_shipped(kmod, &src)?;
    let kerneldir = format!("KERNELDIR={}", tree.display());

    // The Makefile the guest runs, not a kbuild call of our own, so it is checked too.
    let out = limited("make", MAKE_LIMIT).arg("-C").arg(&src).args([kerneldir.as_str(), "W=1"]).output()?;
    let ko = src.join("vmm_clock.ko");
    let ko_bytes = check_build(&release, &out, &ko)?;
    let version = limited("modinfo", QUICK_LIMIT).args(["-F", "version"]).arg(&ko).run()?.stdout;
    ensure!(
        version.trim() == env!("CARGO_PKG_VERSION"),
        "{release}: MODULE_VERSION is {:?}, the workspace version is {}",
        version.trim(),
        env!("CARGO_PKG_VERSION")
    );

    // `make install` as the guest runs it, into a scratch root instead of /.
    let root = scratch.join(format!("root-{release}"));
    std::fs::create_dir_all(&root)?;
    limited("make", MAKE_LIMIT)
        .arg("-C")
        .arg(&src)
        .arg(&kerneldir)
        .arg(format!("INSTALL_MOD_PATH={}", root.display()))
        .arg("install")
        .run()
        .with_context(|| format!("{release}: make install failed"))?;
    let dep = std::fs::read_to_string(root.join(format!("lib/modules/{release}/modules.dep")))
        .with_context(|| format!("{release}: make install ran no depmod for {release}"))?;
    ensure!(
        dep.lines().any(|l| l.starts_with("extra/vmm_clock.ko")),
        "{release}: modules.dep does not list extra/vmm_clock.ko:\n{dep}"
    );
    Ok(Built { release, ko_bytes })
}

/// What every build of the module must show, on this machine or in a matrix root: make
/// exited 0 and printed no warning, and left a vmm_clock.ko whose vermagic names the release
/// built against. Returns the .ko's size.
fn check_build(release: &str, make: &Output, ko: &Path) -> anyhow::Result<u64> {
    let log = format!("{}{}", make.stdout, make.stderr);
    ensure!(make.status.success(), "{release}: `{}` failed ({}):\n{log}", make.cmdline, make.status);
    let warns = warnings(&log);
    ensure!(
        warns.is_empty(),
        "{release}: the build printed {} warning(s):\n{}\n\nfull output:\n{log}",
        warns.len(),
        warns.join("\n")
    );
    let bytes = std::fs::metadata(ko)
        .with_context(|| format!("{release}: make succeeded but {} is missing", ko.display()))?
        .len();
    let vermagic = limited("modinfo", QUICK_LIMIT)
        .args(["-F", "vermagic"])
        .arg(ko)
        .run()
        .context("reading the module's vermagic (modinfo: apt-get install -y kmod)")?
        .stdout;
    ensure!(vermagic.split_whitespace().next() == Some(release), "{release}: built module has vermagic {vermagic:?}");
    Ok(bytes)
}

/// The files the host ships to guests: the regular, non-hidden files at the top of kmod/
/// (host/build.rs embeds the same set; kmod/test/ is a folder and stays behind).
fn copy_shipped(kmod: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    for entry in std::fs::read_dir(kmod).with_context(|| format!("reading {}", kmod.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_file() && !name.to_string_lossy().starts_with('.') {
            std::fs::copy(entry.path(), dest.join(&name))?;
        }
    }
    Ok(())
}

/// The trees given, else every installed one; none at all is an error that says what to install.
fn trees_to_build(given: Vec<PathBuf>, headers_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !given.is_empty() {
        return Ok(given);
    }
    let trees = installed_header_trees(headers_dir)?;
    ensure!(
        !trees.is_empty(),
        "no kernel header tree found: expected {}/linux-headers-*-cloud-amd64 (or -generic); install them with `{HEADERS_APT}`, \
         or name a tree with --kernel-dir DIR",
        headers_dir.display()
    );
    Ok(trees)
}

/// Every `linux-headers-*-cloud-amd64` (or `-generic`) folder under `dir`, sorted.
fn installed_header_trees(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(header_tree_names(names).into_iter().map(|n| dir.join(n)).collect())
}

fn header_tree_names(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut trees: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("linux-headers-") && FLAVOURS.iter().any(|f| n.ends_with(f)))
        .collect();
    trees.sort();
    trees
}

/// The kernel release a build tree is for: what `uname -r` says on that kernel and what names
/// its /lib/modules folder.
fn release_of(tree: &Path) -> anyhow::Result<String> {
    let file = tree.join("include/generated/utsrelease.h");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{} is not a kernel build tree: cannot read {}", tree.display(), file.display()))?;
    uts_release(&text).with_context(|| format!("no UTS_RELEASE in {}", file.display()))
}

/// The value of `#define UTS_RELEASE "…"` (generated by the kernel's top Makefile). It can
/// differ from include/config/kernel.release: Debian's 6.1 trees say 6.1.N there.
fn uts_release(header: &str) -> Option<String> {
    header.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("#define UTS_RELEASE")?.trim();
        Some(rest.strip_prefix('"')?.strip_suffix('"')?.to_string())
    })
}

/// The lines of a kbuild run that report a warning: gcc's `FILE:LINE:COL: warning: …`,
/// modpost's `WARNING: modpost: …` (scripts/mod/modpost.c, warn()) and objtool's
/// `…: warning: objtool: …`.
fn warnings(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.to_ascii_lowercase().contains("warning:")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured here from `make W=1` of kmod/ with a deliberate fault, against Debian's
    // 6.12.117+deb12-cloud-amd64 headers (an unused variable; MODULE_DESCRIPTION removed).
    const GCC_WARNING: &str = "  CC [M]  /tmp/kw/vmm_clock.o
/tmp/kw/vmm_clock.c: In function \u{2018}vmm_clock_init\u{2019}:
/tmp/kw/vmm_clock.c:281:29: warning: unused variable \u{2018}unused_here\u{2019} [-Wunused-variable]
  281 |         u32 base, features, unused_here;
      |                             ^~~~~~~~~~~
  MODPOST /tmp/kw/Module.symvers
";
    const MODPOST_WARNING: &str = "  MODPOST /tmp/kw/Module.symvers
WARNING: modpost: missing MODULE_DESCRIPTION() in /tmp/kw/vmm_clock.o
  CC [M]  /tmp/kw/vmm_clock.mod.o
";
    // Captured here: a clean build against Debian's 6.1.0-56-cloud-amd64 headers.
    const CLEAN: &str = "make -C /usr/src/linux-headers-6.1.0-56-cloud-amd64 M=/tmp/kmodtry modules
make[1]: Entering directory '/usr/src/linux-headers-6.1.0-56-cloud-amd64'
  CC [M]  /tmp/kmodtry/vmm_clock.o
  MODPOST /tmp/kmodtry/Module.symvers
  CC [M]  /tmp/kmodtry/vmm_clock.mod.o
  LD [M]  /tmp/kmodtry/vmm_clock.ko
  BTF [M] /tmp/kmodtry/vmm_clock.ko
Skipping BTF generation for /tmp/kmodtry/vmm_clock.ko due to unavailability of vmlinux
make[1]: Leaving directory '/usr/src/linux-headers-6.1.0-56-cloud-amd64'
";

    #[test]
    fn compiler_and_modpost_warnings_are_found_and_a_clean_build_has_none() {
        assert_eq!(
            warnings(GCC_WARNING),
            ["/tmp/kw/vmm_clock.c:281:29: warning: unused variable \u{2018}unused_here\u{2019} [-Wunused-variable]"]
        );
        assert_eq!(
            warnings(MODPOST_WARNING),
            ["WARNING: modpost: missing MODULE_DESCRIPTION() in /tmp/kw/vmm_clock.o"]
        );
        assert!(warnings(CLEAN).is_empty());
    }

    #[test]
    fn release_comes_from_uts_release_not_kernel_release() {
        // include/generated/utsrelease.h of Debian's 6.1 headers (kernel.release says 6.1.192).
        assert_eq!(
            uts_release("#define UTS_RELEASE \"6.1.0-56-cloud-amd64\"\n").as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            uts_release("#define UTS_RELEASE \"6.12.117+deb12-cloud-amd64\"\n").as_deref(),
            Some("6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(uts_release("#define UTS_VERSION \"#1\"\n"), None);
    }

    #[test]
    fn no_installed_tree_is_an_error_saying_how_to_install_them() {
        let empty = std::env::temp_dir().join(format!("xtask-kmod-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err = trees_to_build(Vec::new(), &empty).unwrap_err().to_string();
        std::fs::remove_dir(&empty).unwrap();
        assert!(err.contains("cargo xtask deps --for test --install"), "{err}");
        assert!(err.contains("--kernel-dir"), "{err}");
        let given = vec![PathBuf::from("/lib/modules/x/build")];
        assert_eq!(trees_to_build(given.clone(), &empty).unwrap(), given);
    }

    #[test]
    fn only_flavoured_header_trees_are_picked_in_order() {
        let names = [
            "linux-headers-6.12.117+deb12-common",
            "linux-headers-6.12.117+deb12-cloud-amd64",
            "linux-kbuild-6.1",
            "linux-headers-6.1.0-56-cloud-amd64",
            "linux-headers-6.1.0-56-common",
            "python3.11",
            // Ubuntu 24.04: the generic flavour and its common tree.
            "linux-headers-6.8.0-51",
            "linux-headers-6.8.0-51-generic",
        ];
        assert_eq!(
            header_tree_names(names.map(String::from)),
            [
                "linux-headers-6.1.0-56-cloud-amd64",
                "linux-headers-6.12.117+deb12-cloud-amd64",
                "linux-headers-6.8.0-51-generic"
            ]
        );
    }
}
