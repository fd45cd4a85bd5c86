//! Stamps the commit a binary was built from into `ALMAVMM_GIT_COMMIT`, for `--version`
//! and the agent's health report. Included by both host/build.rs and guest/build.rs with
//! `#[path]`, so the two binaries name a commit the same way; it lives in shared/ because
//! the agent's source bundle carries guest/ and shared/ only.
//!
//! Where the commit comes from, in order: `ALMAVMM_GIT_COMMIT` when the builder sets it
//! (packages); `.almavmm-commit` at the top of a source bundle (a bundle built in the guest
//! has no .git; see host/src/agent/bundle.rs); git; else "unknown".
//!
//! Cargo re-runs a build script only when a watched file changes. A commit moves the branch
//! HEAD points to (refs/heads/NAME or packed-refs), not HEAD itself, so watching HEAD alone
//! kept whatever the first build saw: "unknown" before the repository's first commit, an
//! old commit after later ones.

use std::path::Path;

/// Print the cargo instructions that set `ALMAVMM_GIT_COMMIT` for the crate at
/// `manifest_dir` and re-run the build script when it may have changed.
pub fn stamp(manifest_dir: &Path) {
    println!("cargo:rerun-if-env-changed=ALMAVMM_GIT_COMMIT");
    let commit = std::env::var("ALMAVMM_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| from_bundle(manifest_dir))
        .or_else(|| {
            watch_git(manifest_dir);
            git(manifest_dir, &["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ALMAVMM_GIT_COMMIT={commit}");
}

fn from_bundle(manifest_dir: &Path) -> Option<String> {
    let file = manifest_dir.join("../.almavmm-commit");
    let text = std::fs::read_to_string(&file).ok()?;
    println!("cargo:rerun-if-changed={}", file.display());
    Some(text.trim().to_string()).filter(|s| !s.is_empty())
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
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
fn watch_git(dir: &Path) {
    let branch = git(dir, &["symbolic-ref", "-q", "HEAD"]);
    let mut names = vec!["HEAD", "packed-refs"];
    names.extend(branch.as_deref());
    let mut args = vec!["rev-parse"];
    for n in &names {
        args.extend(["--git-path", n]);
    }
    let Some(paths) = git(dir, &args) else { return };
    for (i, p) in paths.lines().map(|l| dir.join(l)).enumerate() {
        // The third path is the branch: before its first commit, watch the folder it will
        // be created in (not for packed-refs: its folder is all of .git).
        let watched = if p.exists() { Some(p.as_path()) } else { p.parent().filter(|d| i == 2 && d.is_dir()) };
        if let Some(w) = watched {
            println!("cargo:rerun-if-changed={}", w.display());
        }
    }
}
