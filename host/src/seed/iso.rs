//! Writing the seed as an ISO 9660 image with Rock Ridge and Joliet, in pure Rust.
//!
//! We use hadris-iso 2.5 (pinned exactly in Cargo.toml): it writes both extensions, which
//! cloud-init needs to see `user-data` rather than the 8.3 name `USER_DAT`, and its output
//! reads back correctly in xorriso, isoinfo, blkid and the Linux kernel (checked by this
//! crate's integration tests). Writing our own would mean re-implementing SUSP/RRIP and
//! Joliet's supplementary descriptor for no gain.

use std::path::Path;

use hadris_iso::joliet::JolietLevel;
use hadris_iso::read::PathSeparator;
use hadris_iso::rrip::RripOptions;
use hadris_iso::write::options::{BaseIsoLevel, CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{InputEntry, InputMetadata, InputTree, IsoImageWriter};

use crate::state::atomic;

/// Joliet stores names as at most 64 UCS-2 characters.
const JOLIET_MAX_NAME: usize = 64;

/// One file to put on the image, at a `/`-separated path (at most one folder deep).
#[derive(Debug, Clone)]
pub struct IsoFile {
    pub path: String,
    pub contents: Vec<u8>,
    /// POSIX mode recorded in Rock Ridge.
    pub mode: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("cannot put {name:?} on the seed: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("{0} already exists; pass --force to replace it")]
    Exists(String),
    #[error("could not write the ISO image {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the ISO writer failed: {0}")]
    Format(String),
}

/// Check that one path component can be held by ISO 9660 with Joliet and Rock Ridge. Rock
/// Ridge would hold almost anything; Joliet is the narrower of the two, and some readers
/// (Windows, older blkid) see only Joliet, so its rules apply.
pub fn check_name(name: &str) -> Result<(), IsoError> {
    let bad = |reason| Err(IsoError::BadName { name: name.to_string(), reason });
    if name.is_empty() || name == "." || name == ".." {
        return bad("empty, `.` and `..` are not file names");
    }
    if name.encode_utf16().count() > JOLIET_MAX_NAME {
        return bad("Joliet allows at most 64 characters in a name");
    }
    if name.chars().any(|c| c.is_control() || matches!(c, '*' | '/' | ':' | ';' | '?' | '\\')) {
        return bad("Joliet forbids control characters and * / : ; ? \\ in names");
    }
    if name.chars().any(|c| c as u32 > 0xFFFF) {
        return bad("Joliet (UCS-2) cannot hold characters outside the Basic Multilingual Plane");
    }
    Ok(())
}

/// Build the image in memory-light fashion into a temporary file beside `out`, then move
/// it into place. Nothing is left behind on failure; an existing `out` is refused unless
/// `replace` is set.
pub fn write_iso(out: &Path, volume_id: &str, files: Vec<IsoFile>, replace: bool) -> Result<(), IsoError> {
    let tree = build_tree(files)?;
    if !replace && out.exists() {
        return Err(IsoError::Exists(out.display().to_string()));
    }
    let options = IsoFormatOptions {
        volume_name: volume_id.to_string(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("ALMAVMM".to_string()),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        strict_charset: false,
        features: CreationFeatures {
            filenames: BaseIsoLevel::Level1 { supports_lowercase: false, supports_rrip: true },
            long_filenames: false,
            joliet: Some(JolietLevel::Level3),
            rock_ridge: Some(RripOptions::default()),
            el_torito: None,
            hybrid_boot: None,
        },
    };
    let mut format_error = None;
    // 0600: user-data may hold the guest's private host key.
    let result = atomic::write_with(out, 0o600, |file| {
        IsoImageWriter::create(&mut *file, tree, options).map(|_| ()).map_err(|e| {
            format_error = Some(e.to_string());
            std::io::Error::other("iso writer failed")
        })
    });
    match (result, format_error) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(msg)) => Err(IsoError::Format(msg)),
        (Err(source), None) => Err(IsoError::Write { path: out.display().to_string(), source }),
    }
}

fn build_tree(files: Vec<IsoFile>) -> Result<InputTree, IsoError> {
    let mut root: Vec<InputEntry> = Vec::new();
    let mut dirs: Vec<(String, Vec<InputEntry>)> = Vec::new();
    for f in files {
        let path = f.path.clone();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts {
            check_name(p)?;
        }
        let meta = InputMetadata { mode: Some(f.mode), uid: Some(0), gid: Some(0), ..InputMetadata::default() };
        match parts.as_slice() {
            [name] => root.push(InputEntry::file(*name, f.contents).with_metadata(meta)),
            [dir, name] => {
                let entry = InputEntry::file(*name, f.contents).with_metadata(meta);
                match dirs.iter_mut().find(|(d, _)| d == dir) {
                    Some((_, children)) => children.push(entry),
                    None => dirs.push((dir.to_string(), vec![entry])),
                }
            }
            _ => {
                return Err(IsoError::BadName {
                    name: f.path.clone(),
                    reason: "the seed holds files at most one folder deep",
                });
            }
        }
    }
    for (name, children) in dirs {
        let meta = InputMetadata { mode: Some(0o755), uid: Some(0), gid: Some(0), ..InputMetadata::default() };
        root.push(InputEntry::directory(name, children).with_metadata(meta));
    }
    Ok(InputTree::new(PathSeparator::ForwardSlash, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_joliet_cannot_hold_are_refused_with_the_reason() {
        assert!(check_name("user-data").is_ok());
        assert!(check_name("vmm_clock-0.1.0.tar.gz").is_ok());
        for bad in ["", "..", "a:b", "a;1", "what?", "back\\slash", "tab\there", "emoji😀"] {
            assert!(matches!(check_name(bad), Err(IsoError::BadName { .. })), "{bad:?}");
        }
        let long = "x".repeat(65);
        let msg = check_name(&long).unwrap_err().to_string();
        assert!(msg.contains("at most 64 characters"), "{msg}");
        assert!(check_name(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn bad_name_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seed.iso");
        let files = vec![IsoFile { path: "almavmm/bad:name".into(), contents: b"x".to_vec(), mode: 0o644 }];
        assert!(write_iso(&out, "CIDATA", files, false).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn existing_output_is_kept_without_replace() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seed.iso");
        std::fs::write(&out, "mine").unwrap();
        let files = vec![IsoFile { path: "meta-data".into(), contents: b"x".to_vec(), mode: 0o644 }];
        let err = write_iso(&out, "CIDATA", files, false).unwrap_err();
        assert!(err.to_string().contains("pass --force"), "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "mine");
    }

    #[test]
    fn too_deep_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![IsoFile { path: "a/b/c".into(), contents: vec![], mode: 0o644 }];
        assert!(write_iso(&dir.path().join("s.iso"), "CIDATA", files, false).is_err());
    }
}
