//! Writing files so that a reader sees the old contents or the new, never half of either,
//! and a failure leaves nothing behind.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Write `contents` to `path` through a temporary file in the same folder, synced and then
/// renamed over the target. `mode` is applied before any byte is written, so secrets are
/// never readable by others even briefly.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_with(path, mode, Durability::Synced, |f| f.write_all(contents))
}

/// Whether the new contents must be on disk before the rename makes them visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// State we depend on later (VM records, pins, disks): synced, so a power cut leaves
    /// the old file or the new one, never an empty one.
    Synced,
    /// An artifact handed to the user, like any compiler's or mkisofs's output: still
    /// all-or-nothing for readers and on failure, but the kernel writes it back in its own
    /// time; a power cut right after may leave it empty (or zero-filled, where its blocks
    /// were reserved first), and the command is simply re-run.
    Unsynced,
}

/// Like [`write_file`], for contents produced by a writer function. If `fill` fails, the
/// temporary file is removed and the target is untouched.
pub fn write_with(
    path: &Path,
    mode: u32,
    durability: Durability,
    fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<()> {
    stage_with(path, mode, durability, fill)?.commit()
}

/// A file written in full beside its target, not yet in its place: for a caller that puts
/// something else in place first (a seed's pin before the seed). Dropped uncommitted, it
/// is removed and the target stays as it was.
#[derive(Debug)]
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl Staged {
    /// Rename it over the target.
    pub fn commit(self) -> io::Result<()> {
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The first half of [`write_with`]: the temporary file, filled (and synced if asked).
pub fn stage_with(
    path: &Path,
    mode: u32,
    durability: Durability,
    fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<Staged> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    if durability == Durability::Synced {
        tmp.as_file().sync_all()?;
    }
    Ok(Staged { tmp, path: path.to_path_buf() })
}

/// Like [`write_file`], but fails with `AlreadyExists` instead of replacing an existing file.
/// Used wherever losing the old file would lose user data (guest disks, seeds).
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".almavmm.")
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_contents_with_the_requested_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("known_hosts");
        fs::write(&p, "old").unwrap();
        write_file(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_fill_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.yaml");
        fs::write(&p, "old").unwrap();
        let err = write_with(&p, 0o644, Durability::Synced, |_| Err(io::Error::other("boom"))).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_staged_file_shows_only_once_committed_and_leaves_nothing_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed.iso");
        fs::write(&p, "old").unwrap();
        let staged = stage_with(&p, 0o600, Durability::Unsynced, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        drop(staged);
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        stage_with(&p, 0o600, Durability::Unsynced, |f| f.write_all(b"new")).unwrap().commit().unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_new_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.qcow2");
        fs::write(&p, "precious").unwrap();
        let err = write_new(&p, b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&p).unwrap(), "precious");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
