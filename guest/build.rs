//! Stamps the git commit into the binary for `--version`.

/// `ALMAVMM_GIT_COMMIT` when the builder sets it (source bundles built in the guest have no
/// .git), else git, else "unknown".
fn git_commit() -> String {
    if let Ok(c) = std::env::var("ALMAVMM_GIT_COMMIT") {
        return c;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo:rerun-if-env-changed=ALMAVMM_GIT_COMMIT");
    for git_file in ["../.git/HEAD", "../.git/index"] {
        println!("cargo:rerun-if-changed={git_file}");
    }
    println!("cargo:rustc-env=ALMAVMM_GIT_COMMIT={}", git_commit());
}
