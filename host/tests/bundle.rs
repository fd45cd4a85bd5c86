//! The agent's source bundle builds offline, from its vendored dependencies only, and is
//! the same bytes every time it is made from the same tree.
//!
//! Needs cargo and crates.io (or a registry cache holding every crate) to vendor.

use std::path::Path;
use std::process::Command;

use almavmm_host::agent::bundle;

#[test]
fn bundle_is_reproducible_and_builds_offline_with_cargo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a.tar.gz"), t.path().join("b.tar.gz"));
    bundle::build(root, &a, "abc123def456").unwrap();
    bundle::build(root, &b, "abc123def456").unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "two bundles of the same tree differ");

    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let st = Command::new("tar").arg("-xzf").arg(&a).arg("-C").arg(&src).status().unwrap();
    assert!(st.success());
    for needed in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "guest/Cargo.toml", "shared/src/lib.rs", "vendor"]
    {
        assert!(src.join(needed).exists(), "{needed} missing from the bundle");
    }
    assert!(!src.join("host").exists() && !src.join("xtask").exists());
    // A CARGO_HOME with nothing in it, and --offline --locked: everything must come from
    // vendor/ and the lock must already be right.
    let out = Command::new("cargo")
        .args(["build", "--offline", "--locked", "-p", "almavmm-agent"])
        .current_dir(&src)
        .env("CARGO_HOME", t.path().join("empty-cargo-home"))
        .env("CARGO_TARGET_DIR", t.path().join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(out.status.success(), "offline build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let version = Command::new(t.path().join("target/debug/almavmm-agent")).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.starts_with(&format!("almavmm-agent {}", env!("CARGO_PKG_VERSION"))), "{text}");
}
