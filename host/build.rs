//! Embeds the kernel module's source (the files at the top of `kmod/`) into the host
//! binary as the tarball a seed carries, so seeds need neither the checkout nor any
//! compressing at run time.

use std::path::Path;

#[path = "src/seed/kmod_tar.rs"]
mod kmod_tar;

fn shipped(name: &str) -> bool {
    // Build outputs of an in-tree `make`, editor files and hidden files never ship.
    const OUTPUT_SUFFIXES: [&str; 7] = [".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order"];
    !name.starts_with('.') && !name.ends_with('~') && !OUTPUT_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The commit this build comes from, for `--version`: `ALMAVMM_GIT_COMMIT` when the builder
/// sets it (packages), else git, else "unknown". The same as guest/build.rs, whose comment
/// says why HEAD's branch and packed-refs are watched rather than HEAD alone.
fn git_commit() -> String {
    if let Some(c) = std::env::var("ALMAVMM_GIT_COMMIT").ok().filter(|c| !c.is_empty()) {
        return c;
    }
    watch_git();
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Re-run when HEAD, the branch it names or packed-refs change (existing paths only: cargo
/// re-runs on every build for a missing one; an unborn branch is watched through its folder).
fn watch_git() {
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let mut names = vec!["HEAD", "packed-refs"];
    names.extend(branch.as_deref());
    let mut args = vec!["rev-parse"];
    for n in &names {
        args.extend(["--git-path", n]);
    }
    let Some(paths) = git(&args) else { return };
    for (i, p) in paths.lines().map(|l| Path::new(env!("CARGO_MANIFEST_DIR")).join(l)).enumerate() {
        // The third path is the branch: before its first commit, watch the folder it will
        // be created in (not for packed-refs: its folder is all of .git).
        let watched = if p.exists() { Some(p.as_path()) } else { p.parent().filter(|d| i == 2 && d.is_dir()) };
        if let Some(w) = watched {
            println!("cargo:rerun-if-changed={}", w.display());
        }
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=ALMAVMM_GIT_COMMIT");
    println!("cargo:rustc-env=ALMAVMM_GIT_COMMIT={}", git_commit());
    let kmod = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kmod");
    println!("cargo:rerun-if-changed={}", kmod.display());
    let mut names: Vec<String> = std::fs::read_dir(&kmod)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| shipped(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let files: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .map(|name| {
            let path = kmod.join(&name);
            println!("cargo:rerun-if-changed={}", path.display());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    let tarball = kmod_tar::tarball(env!("CARGO_PKG_VERSION"), &files).expect("in-memory tarball");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("vmm_clock.tar.gz");
    std::fs::write(dest, tarball).expect("write vmm_clock.tar.gz");
}
