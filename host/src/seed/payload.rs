//! What the seed carries besides cloud-init's two documents: the agent (binary or source
//! bundle), the kernel module's source, the bootstrap script, and a manifest of checksums.

use std::io::Write as _;

use almavmm_shared::{VERSION, paths, seed};
use sha2::{Digest, Sha256};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kmod_files.rs"));
}

/// Every shipped file of `kmod/`, as (name, contents), sorted by name.
pub fn kmod_files() -> &'static [(&'static str, &'static [u8])] {
    embedded::KMOD_FILES
}

/// A gzip'd tar of the module source, unpacking to `vmm_clock-VERSION/`. Built the same way
/// every time (fixed order, owner, mode and time), so equal sources give equal bytes.
pub fn kmod_tarball() -> Vec<u8> {
    let top = format!("vmm_clock-{VERSION}");
    let gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    dir.set_cksum();
    tar.append_data(&mut dir, format!("{top}/"), std::io::empty()).expect("in-memory tar");
    for (name, bytes) in kmod_files() {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, format!("{top}/{name}"), *bytes).expect("in-memory tar");
    }
    let gz = tar.into_inner().expect("in-memory tar");
    let mut out = gz.finish().expect("in-memory gzip");
    out.flush().expect("vec flush");
    out
}

/// The agent as the seed will carry it.
#[derive(Debug, Clone)]
pub enum AgentPayload {
    /// A static Linux binary.
    Binary(Vec<u8>),
    /// `agent-src.tar.gz`, built in the guest by the bootstrap.
    SourceBundle(Vec<u8>),
    /// Nothing: the seed is still valid, but the bootstrap will stop and say so.
    Missing,
}

/// The bootstrap script with this build's names and paths filled in.
pub fn bootstrap_script() -> String {
    include_str!("bootstrap.sh")
        .replace("@VERSION@", VERSION)
        .replace("@STATE_DIR@", paths::STATE_DIR)
        .replace("@BOOTSTRAP_LOG@", paths::BOOTSTRAP_LOG)
        .replace("@PAYLOAD_DIR@", seed::PAYLOAD_DIR)
        .replace("@AGENT_FILE@", seed::AGENT_FILE)
        .replace("@BUNDLE_FILE@", seed::AGENT_BUNDLE_FILE)
        .replace("@MANIFEST_FILE@", seed::MANIFEST_FILE)
        .replace("@KMOD_TARBALL@", &seed::kmod_tarball_name())
        .replace("@AGENT_BIN@", paths::AGENT_BIN)
}

/// (file name in `almavmm/`, contents, mode) for every payload file, manifest last.
pub fn payload_files(agent: AgentPayload) -> Vec<(String, Vec<u8>, u32)> {
    let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
    match agent {
        AgentPayload::Binary(b) => files.push((seed::AGENT_FILE.into(), b, 0o755)),
        AgentPayload::SourceBundle(b) => files.push((seed::AGENT_BUNDLE_FILE.into(), b, 0o644)),
        AgentPayload::Missing => {}
    }
    files.push((seed::kmod_tarball_name(), kmod_tarball(), 0o644));
    let entries: Vec<seed::ChecksumEntry> = files
        .iter()
        .map(|(name, bytes, _)| seed::ChecksumEntry { name: name.clone(), sha256: hex::encode(Sha256::digest(bytes)) })
        .collect();
    files.push((seed::MANIFEST_FILE.into(), seed::render_manifest(&entries).into_bytes(), 0o644));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_has_every_placeholder_filled() {
        let s = bootstrap_script();
        let unfilled = s
            .split('@')
            .skip(1)
            .step_by(2)
            .find(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
        assert_eq!(unfilled, None, "unfilled placeholder in:\n{s}");
        assert!(s.contains(&format!("KMOD_TARBALL='vmm_clock-{VERSION}.tar.gz'")));
        assert!(s.starts_with("#!/bin/sh\n"));
    }

    #[test]
    fn bootstrap_is_valid_posix_sh() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bootstrap");
        std::fs::write(&p, bootstrap_script()).unwrap();
        let out = std::process::Command::new("sh").arg("-n").arg(&p).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn kmod_tarball_is_reproducible_and_holds_the_module_source() {
        let a = kmod_tarball();
        assert_eq!(a, kmod_tarball());
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&a[..]));
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        let top = format!("vmm_clock-{VERSION}");
        assert_eq!(names[0], format!("{top}/"));
        for needed in ["Makefile", "Kbuild", "vmm_clock.c"] {
            assert!(names.contains(&format!("{top}/{needed}")), "{needed} missing from {names:?}");
        }
    }

    #[test]
    fn manifest_covers_every_payload_file() {
        let files = payload_files(AgentPayload::Binary(b"\x7fELF".to_vec()));
        let (last, manifest, _) = files.last().unwrap();
        assert_eq!(last, seed::MANIFEST_FILE);
        let listed = seed::parse_checksum_list(std::str::from_utf8(manifest).unwrap()).unwrap();
        assert_eq!(listed.len(), files.len() - 1);
        for (name, bytes, _) in &files[..files.len() - 1] {
            let e = listed.iter().find(|e| &e.name == name).unwrap();
            assert_eq!(e.sha256, hex::encode(Sha256::digest(bytes)));
        }
    }

    #[test]
    fn module_version_is_the_workspace_version() {
        let (_, src) = kmod_files().iter().find(|(n, _)| *n == "vmm_clock.c").expect("vmm_clock.c is shipped");
        let src = std::str::from_utf8(src).unwrap();
        let versions: Vec<&str> =
            src.lines().filter_map(|l| l.trim().strip_prefix("MODULE_VERSION(\"")?.strip_suffix("\");")).collect();
        assert_eq!(versions, [VERSION], "kmod/vmm_clock.c must say MODULE_VERSION(\"{VERSION}\") exactly once");
    }
}
