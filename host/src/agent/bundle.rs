//! The agent's source bundle, `agent-src.tar.gz`: what a guest needs to build the agent
//! itself, offline, when the host cannot produce a Linux binary (an OpenBSD host building
//! almavmm with OpenBSD's own Rust).
//!
//! It holds the `guest/` and `shared/` crates, a minimal workspace manifest derived from the
//! project's, the project's `Cargo.lock` (pruned to what the two crates use, versions
//! unchanged), every dependency vendored with `cargo vendor`, and a `.cargo/config.toml`
//! pointing cargo at the vendored copies. In the guest, `cargo build --release --offline
//! --locked -p almavmm-agent` then needs nothing from the network.
//!
//! The archive is reproducible: entries in sorted order, owner root, fixed modes and
//! times, gzip without a timestamp, so equal inputs give equal bytes.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use almavmm_shared::runner::Cmd;

/// The crates that make up the agent.
pub const MEMBERS: [&str; 2] = ["guest", "shared"];
/// File in the bundle holding the commit it was made from (the agent's `--version`).
pub const COMMIT_FILE: &str = ".almavmm-commit";

/// What cargo needs to use the vendored sources (the stanza `cargo vendor` prints).
const CARGO_CONFIG: &str = "\
# Written by almavmm's bundle builder: build from the vendored sources only.
[source.crates-io]
replace-with = \"vendored-sources\"

[source.vendored-sources]
directory = \"vendor\"
";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid Cargo manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{0} is not an almavmm source tree (no guest/ and shared/ crates)")]
    NotASourceTree(PathBuf),
    #[error(transparent)]
    Run(#[from] almavmm_shared::runner::RunError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_owned(), source }
}

/// Names of the workspace dependencies a member manifest takes with `workspace = true`.
fn workspace_deps_used(member: &toml::Table) -> BTreeSet<String> {
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|k| member.get(*k).and_then(toml::Value::as_table))
        .flat_map(|t| t.iter())
        .filter(|(_, v)| v.get("workspace").and_then(toml::Value::as_bool) == Some(true))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The bundle's workspace manifest: the project's package metadata, lints and only the
/// shared dependency versions the agent's crates use, with a release profile that builds
/// quickly on one slow CPU (a guest's) rather than squeezing the last percent.
pub fn workspace_manifest(root: &str, members: &[&str]) -> Result<String, String> {
    let root: toml::Table = root.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let ws = root.get("workspace").and_then(toml::Value::as_table).ok_or("no [workspace] table")?;
    let mut used = BTreeSet::new();
    for m in members {
        let t: toml::Table = m.parse().map_err(|e: toml::de::Error| e.to_string())?;
        used.extend(workspace_deps_used(&t));
    }
    let mut deps = toml::Table::new();
    if let Some(all) = ws.get("dependencies").and_then(toml::Value::as_table) {
        for name in &used {
            let dep = all.get(name).ok_or_else(|| format!("workspace dependency {name} is not defined"))?;
            deps.insert(name.clone(), dep.clone());
        }
    }
    let mut out_ws = toml::Table::new();
    out_ws.insert("resolver".into(), "3".into());
    out_ws.insert("members".into(), toml::Value::Array(MEMBERS.iter().map(|m| (*m).into()).collect()));
    for key in ["package", "lints"] {
        if let Some(v) = ws.get(key) {
            out_ws.insert(key.into(), v.clone());
        }
    }
    out_ws.insert("dependencies".into(), toml::Value::Table(deps));
    let mut release = toml::Table::new();
    // opt-level 1: the agent idles in a watcher loop; compile time on a guest's single
    // (possibly emulated) CPU matters more than the last bit of speed.
    release.insert("opt-level".into(), 1.into());
    release.insert("lto".into(), false.into());
    release.insert("debug".into(), false.into());
    release.insert("strip".into(), "debuginfo".into());
    release.insert("panic".into(), "abort".into());
    let mut profile = toml::Table::new();
    profile.insert("release".into(), toml::Value::Table(release));
    let mut out = toml::Table::new();
    out.insert("workspace".into(), toml::Value::Table(out_ws));
    out.insert("profile".into(), toml::Value::Table(profile));
    Ok(format!(
        "# The almavmm agent's source bundle: builds offline from vendor/ with\n\
         #   cargo build --release --offline --locked -p almavmm-agent\n{}",
        toml::to_string(&out).map_err(|e| e.to_string())?
    ))
}

/// Copy a crate folder, leaving out build output, tests and hidden files.
fn copy_crate(from: &Path, to: &Path) -> Result<(), BundleError> {
    fs::create_dir_all(to).map_err(io(to))?;
    for e in fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(io(from))?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n.starts_with('.') || n == "target" || n == "tests" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if src.is_dir() {
            copy_crate(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// Every file below `dir`, as sorted relative paths (folders first by path order).
fn walk(dir: &Path) -> Result<Vec<PathBuf>, BundleError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io(&d))? {
            let p = e.map_err(io(&d))?.path();
            let meta = fs::symlink_metadata(&p).map_err(io(&p))?;
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).expect("below dir").to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Pack a folder as a reproducible gzip'd tar.
pub fn pack(dir: &Path, out: &mut impl Write) -> Result<(), BundleError> {
    use std::os::unix::fs::PermissionsExt;
    let gz = flate2::GzBuilder::new().mtime(0).write(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for rel in walk(dir)? {
        let p = dir.join(&rel);
        let meta = fs::symlink_metadata(&p).map_err(io(&p))?;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        if meta.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, &rel, std::io::empty()).map_err(io(&p))?;
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if exec { 0o755 } else { 0o644 });
            h.set_size(meta.len());
            let f = fs::File::open(&p).map_err(io(&p))?;
            tar.append_data(&mut h, &rel, f).map_err(io(&p))?;
        }
    }
    let gz = tar.into_inner().map_err(io(dir))?;
    gz.finish().map_err(io(dir))?;
    Ok(())
}

/// The targets a guest builds the agent for.
const LINUX_TARGETS: [&str; 2] = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

/// `(name, version)` of every package in the dependency graph of `cargo metadata` output
/// (with `--filter-platform`, the graph for that platform only).
pub fn packages_in_graph(metadata_json: &str) -> Result<BTreeSet<(String, String)>, String> {
    let m: serde_json::Value = serde_json::from_str(metadata_json).map_err(|e| e.to_string())?;
    let ids: BTreeSet<&str> =
        m["resolve"]["nodes"].as_array().ok_or("no resolve.nodes")?.iter().filter_map(|n| n["id"].as_str()).collect();
    Ok(m["packages"]
        .as_array()
        .ok_or("no packages")?
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| ids.contains(id)))
        .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["version"].as_str()?.to_string())))
        .collect())
}

/// Reduce a vendored crate to what cargo reads of a crate it never compiles: its manifest
/// (the lock's graph is resolved for every platform), an empty library, and a checksum file
/// that keeps the package checksum the lock pins but lists no files to verify.
pub fn stub_crate(dir: &Path) -> Result<(), BundleError> {
    let checksum_path = dir.join(".cargo-checksum.json");
    let checksum: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&checksum_path).map_err(io(&checksum_path))?)
            .map_err(|e| BundleError::Manifest { path: checksum_path.clone(), message: e.to_string() })?;
    let manifest_path = dir.join("Cargo.toml");
    let manifest = fs::read(&manifest_path).map_err(io(&manifest_path))?;
    fs::remove_dir_all(dir).map_err(io(dir))?;
    fs::create_dir_all(dir.join("src")).map_err(io(dir))?;
    fs::write(&manifest_path, manifest).map_err(io(&manifest_path))?;
    fs::write(dir.join("src/lib.rs"), "").map_err(io(dir))?;
    let stub = serde_json::json!({ "files": {}, "package": checksum["package"] });
    fs::write(&checksum_path, stub.to_string()).map_err(io(&checksum_path))?;
    Ok(())
}

/// Stub the vendored crates no Linux build uses. The lock is the same for every platform,
/// so `cargo vendor` copies the Windows and macOS back ends of sysinfo (the `windows`
/// crate alone is over 100 MiB unpacked) that a guest never compiles: without this the
/// bundle grows from 10 to 28 MB.
fn stub_other_platforms(stage: &Path) -> Result<(), BundleError> {
    let mut linux = BTreeSet::new();
    for target in LINUX_TARGETS {
        let out = Cmd::new("cargo")
            .args(["metadata", "--format-version", "1", "--offline", "--locked", "--filter-platform", target])
            .dir(stage)
            .run()?;
        linux.extend(
            packages_in_graph(&out.stdout)
                .map_err(|message| BundleError::Manifest { path: stage.join("Cargo.lock"), message })?,
        );
    }
    let vendor = stage.join("vendor");
    for e in fs::read_dir(&vendor).map_err(io(&vendor))? {
        let dir = e.map_err(io(&vendor))?.path();
        let manifest_path = dir.join("Cargo.toml");
        let manifest: toml::Table =
            fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?.parse().map_err(|e: toml::de::Error| {
                BundleError::Manifest { path: manifest_path.clone(), message: e.to_string() }
            })?;
        let field = |k: &str| manifest.get("package").and_then(|p| p.get(k)).and_then(toml::Value::as_str);
        match (field("name"), field("version")) {
            (Some(name), Some(version)) if !linux.contains(&(name.to_string(), version.to_string())) => {
                tracing::debug!("bundle: {name} {version} is not built on Linux: stubbed");
                stub_crate(&dir)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Is `root` a checkout with the agent's crates?
pub fn is_source_tree(root: &Path) -> bool {
    MEMBERS.iter().all(|m| root.join(m).join("Cargo.toml").is_file()) && root.join("Cargo.lock").is_file()
}

/// The source tree this binary was built from, if it is still there.
pub fn own_source_tree() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_owned();
    is_source_tree(&root).then_some(root)
}

/// Build `agent-src.tar.gz` from the checkout at `root` into `out` (atomically). Needs
/// `cargo` and, unless its registry cache already holds every crate, the network.
pub fn build(root: &Path, out: &Path, commit: &str) -> Result<u64, BundleError> {
    if !is_source_tree(root) {
        return Err(BundleError::NotASourceTree(root.to_owned()));
    }
    let stage = tempfile::Builder::new().prefix("almavmm-bundle.").tempdir().map_err(io(Path::new("/tmp")))?;
    let s = stage.path();
    let read = |p: PathBuf| fs::read_to_string(&p).map_err(io(&p));
    let members: Vec<String> =
        MEMBERS.iter().map(|m| read(root.join(m).join("Cargo.toml"))).collect::<Result<_, _>>()?;
    let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let manifest = workspace_manifest(&read(root.join("Cargo.toml"))?, &member_refs)
        .map_err(|message| BundleError::Manifest { path: root.join("Cargo.toml"), message })?;
    for m in MEMBERS {
        copy_crate(&root.join(m), &s.join(m))?;
    }
    fs::write(s.join("Cargo.toml"), manifest).map_err(io(s))?;
    fs::copy(root.join("Cargo.lock"), s.join("Cargo.lock")).map_err(io(&root.join("Cargo.lock")))?;
    fs::write(s.join(COMMIT_FILE), format!("{commit}\n")).map_err(io(s))?;
    // Vendoring resolves the small workspace against the copied lock: unused entries are
    // dropped, every version kept.
    Cmd::new("cargo")
        .args(["vendor", "--quiet", "vendor"])
        .dir(s)
        .env("CARGO_TERM_COLOR", "never")
        .hint_if_missing("install Rust's cargo (rustup, or `pkg_add rust` on OpenBSD)")
        .run()?;
    fs::create_dir_all(s.join(".cargo")).map_err(io(s))?;
    fs::write(s.join(".cargo/config.toml"), CARGO_CONFIG).map_err(io(s))?;
    stub_other_platforms(s)?;
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    almavmm_shared::atomic::write_with(out, 0o644, almavmm_shared::atomic::Durability::Synced, |f| {
        pack(s, f).map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(io(out))?;
    Ok(fs::metadata(out).map(|m| m.len()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_for_one_platform_names_its_packages() {
        // The shape of `cargo metadata --format-version 1` (cargo's doc of the command).
        let json = r#"{"packages": [
            {"name": "libc", "version": "0.2.185", "id": "registry+https://github.com/rust-lang/crates.io-index#libc@0.2.185"},
            {"name": "windows", "version": "0.61.3", "id": "registry+https://github.com/rust-lang/crates.io-index#windows@0.61.3"}],
          "resolve": {"nodes": [{"id": "registry+https://github.com/rust-lang/crates.io-index#libc@0.2.185", "deps": []}]}}"#;
        let set = packages_in_graph(json).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), [("libc".to_string(), "0.2.185".to_string())]);
        assert!(packages_in_graph("{}").is_err());
    }

    #[test]
    fn a_stub_keeps_the_manifest_and_the_package_checksum_only() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("windows");
        fs::create_dir_all(c.join("src/Windows")).unwrap();
        fs::write(c.join("Cargo.toml"), "[package]\nname = \"windows\"\nversion = \"0.61.3\"\n").unwrap();
        fs::write(c.join("src/Windows/mod.rs"), "// a lot").unwrap();
        fs::write(c.join(".cargo-checksum.json"), r#"{"files":{"src/Windows/mod.rs":"ab"},"package":"9babd3a"}"#)
            .unwrap();
        stub_crate(&c).unwrap();
        assert_eq!(walk(&c).unwrap(), [".cargo-checksum.json", "Cargo.toml", "src", "src/lib.rs"].map(PathBuf::from));
        assert!(fs::read_to_string(c.join("Cargo.toml")).unwrap().contains("name = \"windows\""));
        assert_eq!(fs::read_to_string(c.join(".cargo-checksum.json")).unwrap(), r#"{"files":{},"package":"9babd3a"}"#);
    }

    const ROOT: &str = r#"
[workspace]
resolver = "3"
members = ["host", "guest", "shared", "xtask"]

[workspace.package]
version = "0.1.0"
edition = "2024"
rust-version = "1.85"

[workspace.dependencies]
almavmm-shared = { path = "shared", version = "0.1.0" }
almavmm-host = { path = "host", version = "0.1.0" }
anyhow = "1"
clap = { version = "4.5", features = ["derive"] }
xshell = "0.2"

[workspace.lints.clippy]
dbg_macro = "warn"

[profile.release]
lto = "thin"
"#;
    const GUEST: &str = "[package]\nname = \"almavmm-agent\"\n[dependencies]\nalmavmm-shared.workspace = true\nanyhow.workspace = true\nclap.workspace = true\nraw-cpuid = \"11\"\n";
    const SHARED: &str = "[package]\nname = \"almavmm-shared\"\n[dependencies]\nanyhow = { workspace = true }\n";

    #[test]
    fn manifest_keeps_only_what_the_agent_uses() {
        let m = workspace_manifest(ROOT, &[GUEST, SHARED]).unwrap();
        let t: toml::Table = m.parse().unwrap();
        let ws = t["workspace"].as_table().unwrap();
        let deps: Vec<&String> = ws["dependencies"].as_table().unwrap().keys().collect();
        assert_eq!(deps, ["almavmm-shared", "anyhow", "clap"]);
        assert_eq!(ws["members"].as_array().unwrap().len(), 2);
        assert_eq!(ws["package"]["rust-version"].as_str(), Some("1.85"));
        assert!(ws.contains_key("lints"));
        assert_eq!(t["profile"]["release"]["lto"].as_bool(), Some(false));
        assert!(!m.contains("xshell") && !m.contains("almavmm-host"));
    }

    #[test]
    fn an_undefined_workspace_dependency_is_an_error() {
        let guest = "[dependencies]\nnope.workspace = true\n";
        assert_eq!(workspace_manifest(ROOT, &[guest]).unwrap_err(), "workspace dependency nope is not defined");
    }

    #[test]
    fn packing_is_reproducible_and_normalises_metadata() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tree");
        fs::create_dir_all(d.join("b/c")).unwrap();
        fs::write(d.join("a.txt"), "a").unwrap();
        fs::write(d.join("b/c/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(d.join("b/c/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        let mut one = Vec::new();
        pack(&d, &mut one).unwrap();
        // Touch everything: new times, other modes. The bytes must not change.
        fs::write(d.join("a.txt"), "a").unwrap();
        fs::set_permissions(d.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        let mut two = Vec::new();
        pack(&d, &mut two).unwrap();
        assert_eq!(one, two);
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&one[..]));
        let entries: Vec<(String, u32)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().mode().unwrap())
            })
            .collect();
        assert_eq!(
            entries,
            [("a.txt".into(), 0o644), ("b".into(), 0o755), ("b/c".into(), 0o755), ("b/c/run.sh".into(), 0o755)]
        );
    }
}
