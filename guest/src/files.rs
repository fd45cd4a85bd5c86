//! Writing system files safely: a reader sees the old contents or the new, never half, and
//! a file that already holds the wanted bytes is left alone (so setup can say "unchanged").

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated,
    Unchanged,
}

impl Written {
    pub fn changed(self) -> bool {
        self != Written::Unchanged
    }
}

/// Make `path` hold exactly `contents` with `mode`, creating parent folders. Writes through a
/// temporary file in the same folder, synced, then renamed over the target.
pub fn ensure_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<Written> {
    let existing = match fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(with_path(path, e)),
    };
    if let Some(bytes) = &existing {
        let current_mode = fs::metadata(path).map_err(|e| with_path(path, e))?.permissions().mode() & 0o7777;
        if bytes == contents && current_mode == mode {
            return Ok(Written::Unchanged);
        }
    }
    write_atomic(path, contents, mode)?;
    Ok(if existing.is_some() { Written::Updated } else { Written::Created })
}

/// Replace `path` with `contents` atomically (temp file + fsync + rename).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, contents, mode, None)
}

/// Replace an existing file's contents, keeping its mode and owner (cloud-init's networkd
/// files belong to systemd-network, for instance).
pub fn rewrite_keeping_metadata(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(|e| with_path(path, e))?;
    write_atomic_owned(path, contents, meta.mode() & 0o7777, Some((meta.uid(), meta.gid())))
}

fn write_atomic_owned(path: &Path, contents: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.almavmm-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed the mode at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| with_path(path, e))
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reports_unchanged_then_updates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/x/conf");
        assert_eq!(ensure_file(&p, b"a\n", 0o644).unwrap(), Written::Created);
        assert_eq!(ensure_file(&p, b"a\n", 0o644).unwrap(), Written::Unchanged);
        assert_eq!(ensure_file(&p, b"a\n", 0o755).unwrap(), Written::Updated);
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(ensure_file(&p, b"b\n", 0o755).unwrap(), Written::Updated);
        assert_eq!(fs::read_to_string(&p).unwrap(), "b\n");
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn failure_names_the_file_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "x").unwrap();
        let err = write_atomic(&blocker.join("under-a-file"), b"x", 0o644).unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
    }
}
