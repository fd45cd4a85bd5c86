//! Embeds the kernel module's source (the files at the top of `kmod/`) into the host
//! binary as the tarball a seed carries, so seeds need neither the checkout nor any
//! compressing at run time; and stamps the commit, as the agent's build script does.

use std::path::Path;

#[path = "../shared/build-support/commit.rs"]
mod commit;
#[path = "src/seed/kmod_tar.rs"]
mod kmod_tar;

fn shipped(name: &str) -> bool {
    // Build outputs of an in-tree `make`, editor files and hidden files never ship.
    const OUTPUT_SUFFIXES: [&str; 7] = [".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order"];
    !name.starts_with('.') && !name.ends_with('~') && !OUTPUT_SUFFIXES.iter().any(|s| name.ends_with(s))
}

fn main() {
    commit::stamp(Path::new(env!("CARGO_MANIFEST_DIR")));
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
