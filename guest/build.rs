//! Stamps the commit into the binary, for `--version` and the health report.
//!
//! Where it comes from, in order: `ALMAVMM_GIT_COMMIT` when the builder sets it (packages);
//! the source bundle's `.almavmm-commit` (a bundle built in the guest has no .git); git;
//! else "unknown". The git part matches host/build.rs, so both binaries name a commit the
//! same way.
//!
//! Cargo re-runs this script only when a watched file changes. A commit moves the branch
//! HEAD points to (refs/heads/NAME or packed-refs), not HEAD itself, so watching HEAD alone
//! kept whatever the first build saw: "unknown" for an agent built before the repository's
//! first commit, an old commit after later ones.

use std::path::PathBuf;

/// Written at the top of a source bundle by its builder (host/src/agent/bundle.rs).
const BUNDLE_COMMIT_FILE: &str = "../.almavmm-commit";

fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Re-run when HEAD, the branch it names or packed-refs change. Only existing paths are
/// named (cargo re-runs on every build for a missing one); a branch with no commit yet is
/// watched through its folder, where the first commit creates it.
fn watch_git() {
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let mut names = vec!["HEAD", "packed-refs"];
    names.extend(branch.as_deref());
    let mut args = vec!["rev-parse"];
    for n in &names {
        args.extend(["--git-path", n]);
    }
    let Some(paths) = git(&args) else { return };
    for (i, p) in paths.lines().map(|l| manifest_dir().join(l)).enumerate() {
        // The third path is the branch: before its first commit, watch the folder it will
        // be created in (not for packed-refs: its folder is all of .git).
        let watched = if p.exists() { Some(p.as_path()) } else { p.parent().filter(|d| i == 2 && d.is_dir()) };
        if let Some(w) = watched {
            println!("cargo:rerun-if-changed={}", w.display());
        }
    }
}

fn from_bundle() -> Option<String> {
    let file = manifest_dir().join(BUNDLE_COMMIT_FILE);
    let text = std::fs::read_to_string(&file).ok()?;
    println!("cargo:rerun-if-changed={}", file.display());
    Some(text.trim().to_string()).filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=ALMAVMM_GIT_COMMIT");
    let commit = std::env::var("ALMAVMM_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(from_bundle)
        .or_else(|| {
            watch_git();
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ALMAVMM_GIT_COMMIT={commit}");
}
