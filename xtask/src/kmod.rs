//! `cargo xtask kmod`: check the kernel module in `kmod/`. Runs the user-space tests of its
//! time arithmetic, then builds it out of tree against every installed Debian kernel header
//! tree (or the ones given), with W=1 and no warning allowed, installs each build into a
//! scratch root the way the guest does, and prints one line per kernel.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use xshell::{Shell, cmd};

use crate::util::{Stage, project_root};

/// Where Debian installs kernel header trees, and the apt packages of the two we build against.
const HEADERS_DIR: &str = "/usr/src";
const HEADERS_APT: &str = "apt-get install -y linux-headers-cloud-amd64 linux-headers-6.12-cloud-amd64";

#[derive(Debug, Default, clap::Args)]
pub struct KmodArgs {
    /// Kernel build tree to compile against, e.g. /lib/modules/$(uname -r)/build (repeatable).
    /// Default: every /usr/src/linux-headers-*-cloud-amd64.
    #[arg(long = "kernel-dir", value_name = "DIR")]
    pub kernel_dirs: Vec<PathBuf>,
}

pub fn run(sh: &Shell, args: KmodArgs) -> anyhow::Result<()> {
    let kmod = project_root().join("kmod");
    let trees = trees_to_build(args.kernel_dirs, Path::new(HEADERS_DIR))?;
    // Everything is built in here, so the checkout stays clean; removed on drop.
    let scratch = sh.create_temp_dir()?;
    {
        let _s = Stage::new("kmod: time arithmetic tests (user space)");
        run_arithmetic_tests(sh, &kmod, scratch.path())?;
    }

    let mut rows = Vec::new();
    for tree in &trees {
        let _s = Stage::new(format!("kmod: build against {}", tree.display()));
        let outcome = build_against(sh, &kmod, tree, scratch.path());
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
    Ok(())
}

/// Compile kmod/test with every warning an error (and UBSan, which catches shift overflows in
/// the arithmetic), then run it; it exits non-zero on any mismatch.
fn run_arithmetic_tests(sh: &Shell, kmod: &Path, scratch: &Path) -> anyhow::Result<()> {
    let src = kmod.join("test/vmm_clock_time_test.c");
    let bin = scratch.join("vmm_clock_time_test");
    cmd!(
        sh,
        "gcc -std=gnu11 -O2 -g -Wall -Wextra -Werror -fsanitize=undefined -fno-sanitize-recover=all -pthread -I {kmod} {src} -o {bin}"
    )
    .run()
    .context("compiling the arithmetic tests (needs gcc: apt-get install -y gcc)")?;
    cmd!(sh, "{bin}").run().context("the arithmetic tests failed")?;
    Ok(())
}

#[derive(Debug)]
struct Built {
    release: String,
    ko_bytes: u64,
}

fn build_against(sh: &Shell, kmod: &Path, tree: &Path, scratch: &Path) -> anyhow::Result<Built> {
    let release = release_of(tree)?;
    let src = scratch.join(format!("src-{release}"));
    copy_shipped(kmod, &src)?;

    // The Makefile the guest runs, not a kbuild call of our own, so it is checked too.
    let out = cmd!(sh, "make -C {src} KERNELDIR={tree} W=1").ignore_status().output()?;
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "{release}: make failed ({}):\n{log}", out.status);
    let warns = warnings(&log);
    ensure!(
        warns.is_empty(),
        "{release}: the build printed {} warning(s):\n{}\n\nfull output:\n{log}",
        warns.len(),
        warns.join("\n")
    );

    let ko = src.join("vmm_clock.ko");
    let ko_bytes = std::fs::metadata(&ko)
        .with_context(|| format!("{release}: make succeeded but {} is missing", ko.display()))?
        .len();
    let vermagic = cmd!(sh, "modinfo -F vermagic {ko}")
        .quiet()
        .read()
        .context("reading the module's vermagic (modinfo: apt-get install -y kmod)")?;
    ensure!(
        vermagic.split_whitespace().next() == Some(release.as_str()),
        "{release}: built module has vermagic {vermagic:?}"
    );
    let version = cmd!(sh, "modinfo -F version {ko}").quiet().read()?;
    ensure!(
        version == env!("CARGO_PKG_VERSION"),
        "{release}: MODULE_VERSION is {version:?}, the workspace version is {}",
        env!("CARGO_PKG_VERSION")
    );

    // `make install` as the guest runs it, into a scratch root instead of /.
    let root = scratch.join(format!("root-{release}"));
    std::fs::create_dir_all(&root)?;
    let out = cmd!(sh, "make -C {src} KERNELDIR={tree} INSTALL_MOD_PATH={root} install").ignore_status().output()?;
    ensure!(out.status.success(), "{release}: make install failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let dep = std::fs::read_to_string(root.join(format!("lib/modules/{release}/modules.dep")))
        .with_context(|| format!("{release}: make install ran no depmod for {release}"))?;
    ensure!(
        dep.lines().any(|l| l.starts_with("extra/vmm_clock.ko")),
        "{release}: modules.dep does not list extra/vmm_clock.ko:\n{dep}"
    );
    Ok(Built { release, ko_bytes })
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
        "no kernel header tree found: expected {}/linux-headers-*-cloud-amd64; install them with `{HEADERS_APT}`, \
         or name a tree with --kernel-dir DIR",
        headers_dir.display()
    );
    Ok(trees)
}

/// Every `linux-headers-*-cloud-amd64` folder under `dir`, sorted.
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
    let mut trees: Vec<String> =
        names.into_iter().filter(|n| n.starts_with("linux-headers-") && n.ends_with("-cloud-amd64")).collect();
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
    fn no_installed_tree_is_an_error_naming_the_apt_packages() {
        let empty = std::env::temp_dir().join(format!("xtask-kmod-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err = trees_to_build(Vec::new(), &empty).unwrap_err().to_string();
        std::fs::remove_dir(&empty).unwrap();
        assert!(err.contains("linux-headers-cloud-amd64 linux-headers-6.12-cloud-amd64"), "{err}");
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
        ];
        assert_eq!(
            header_tree_names(names.map(String::from)),
            ["linux-headers-6.1.0-56-cloud-amd64", "linux-headers-6.12.117+deb12-cloud-amd64"]
        );
    }
}
