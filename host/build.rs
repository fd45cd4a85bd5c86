//! Embeds the kernel module's source (the files at the top of `kmod/`) into the host
//! binary, so a seed can carry it to the guest without the checkout at run time.

use std::fmt::Write as _;
use std::path::Path;

fn shipped(name: &str) -> bool {
    // Build outputs of an in-tree `make`, editor files and hidden files never ship.
    const OUTPUT_SUFFIXES: [&str; 7] = [".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order"];
    !name.starts_with('.') && !name.ends_with('~') && !OUTPUT_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The commit this build comes from, for `--version`: `ALMAVMM_GIT_COMMIT` when the builder
/// sets it (source bundles, packages), else git, else "unknown".
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
    let mut out = String::from("/// (file name, contents) of every shipped file in `kmod/`, sorted by name.\n");
    out.push_str("pub const KMOD_FILES: &[(&str, &[u8])] = &[\n");
    for name in &names {
        let path = kmod.join(name).canonicalize().expect("kmod file");
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(out, "    ({name:?}, include_bytes!({:?})),", path.display().to_string());
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("kmod_files.rs");
    std::fs::write(dest, out).expect("write kmod_files.rs");
}
