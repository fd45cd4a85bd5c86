//! Writing files so that a reader sees the old contents or the new, never half of either,
//! and a failure leaves nothing behind: host state (VM records, pins, seeds) and guest
//! system files alike.
//!
//! Every write goes to a temporary file in the target's folder (same filesystem, so the
//! final rename is atomic), created with its final mode before any byte is written (secrets
//! are never readable by others, even briefly), and is renamed over the target last.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether the new contents must be on disk before the rename makes them visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// State we depend on later (VM records, pins, disks, system files): synced, so a
    /// power cut leaves the old file or the new one, never an empty one.
    Synced,
    /// An artifact handed to the user, like any compiler's or mkisofs's output: still
    /// all-or-nothing for readers and on failure, but the kernel writes it back in its own
    /// time; a power cut right after may leave it empty (or zero-filled, where its blocks
    /// were reserved first), and the command is simply re-run.
    Unsynced,
}

/// Write `contents` to `path`, synced, replacing what was there.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_with(path, mode, Durability::Synced, |f| f.write_all(contents))
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

/// Like [`write_file`], but fails with `AlreadyExists` instead of replacing an existing file.
/// Used wherever losing the old file would lose user data (guest disks, seeds).
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let staged = stage_with(path, mode, Durability::Synced, |f| f.write_all(contents))?;
    // link(2) refuses an existing target, where rename(2) would replace it; the staged
    // name is removed when `staged` drops.
    fs::hard_link(&staged.tmp, &staged.path)
}

/// A file written in full beside its target, not yet in its place: for a caller that puts
/// something else in place first (a seed's pin before the seed). Dropped uncommitted, it
/// is removed and the target stays as it was.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    /// Rename it over the target.
    pub fn commit(self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        // Renamed: nothing left for Drop to remove.
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// The first half of [`write_with`]: the temporary file, filled (and synced if asked).
pub fn stage_with(
    path: &Path,
    mode: u32,
    durability: Durability,
    fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<Staged> {
    stage(path, mode, None, durability, fill)
}

fn stage(
    path: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
    durability: Durability,
    fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<Staged> {
    let (mut file, tmp) = create_temp_beside(path, mode)?;
    let staged = Staged { tmp, path: path.to_path_buf() };
    // The umask may have narrowed the mode at creation.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    fill(&mut file)?;
    if durability == Durability::Synced {
        file.sync_all()?;
    }
    Ok(staged)
}

/// A new file `.NAME.PID-N.tmp` in the target's folder, created exclusively.
fn create_temp_beside(path: &Path, mode: u32) -> io::Result<(fs::File, PathBuf)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tries = 0;
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            // Left behind by an earlier process with our pid: take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 64 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// What [`ensure_file`] did.
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

/// Make `path` hold exactly `contents` with `mode`, creating parent folders; a file that
/// already holds them is left alone (so setup can say "unchanged"). Errors name the file.
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

/// Replace `path` with `contents`, synced, creating parent folders. Errors name the file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_owned(path, contents, mode, None)
}

/// Replace an existing file's contents, keeping its mode and owner (cloud-init's networkd
/// files belong to systemd-network, for instance). Errors name the file.
pub fn rewrite_keeping_metadata(path: &Path, contents: &[u8]) -> io::Result<()> {
    let meta = fs::metadata(path).map_err(|e| with_path(path, e))?;
    write_owned(path, contents, meta.mode() & 0o7777, Some((meta.uid(), meta.gid())))
}

fn write_owned(path: &Path, contents: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
    stage(path, mode, owner, Durability::Synced, |f| f.write_all(contents))
        .and_then(Staged::commit)
        .map_err(|e| with_path(path, e))
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn replaces_contents_with_the_requested_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("known_hosts");
        fs::write(&p, "old").unwrap();
        write_file(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(entries(dir.path()), 1);
    }

    #[test]
    fn failed_fill_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.yaml");
        fs::write(&p, "old").unwrap();
        let err = write_with(&p, 0o644, Durability::Synced, |_| Err(io::Error::other("boom"))).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(entries(dir.path()), 1);
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
        assert_eq!(entries(dir.path()), 1);
        stage_with(&p, 0o600, Durability::Unsynced, |f| f.write_all(b"new")).unwrap().commit().unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(entries(dir.path()), 1);
    }

    #[test]
    fn write_new_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.qcow2");
        fs::write(&p, "precious").unwrap();
        let err = write_new(&p, b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&p).unwrap(), "precious");
        assert_eq!(entries(dir.path()), 1);
        let fresh = dir.path().join("new.qcow2");
        write_new(&fresh, b"x", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&fresh).unwrap(), "x");
        assert_eq!(entries(dir.path()), 2);
    }

    #[test]
    fn ensure_file_creates_then_reports_unchanged_then_updates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/x/conf");
        assert_eq!(ensure_file(&p, b"a\n", 0o644).unwrap(), Written::Created);
        assert_eq!(ensure_file(&p, b"a\n", 0o644).unwrap(), Written::Unchanged);
        assert_eq!(ensure_file(&p, b"a\n", 0o755).unwrap(), Written::Updated);
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(ensure_file(&p, b"b\n", 0o755).unwrap(), Written::Updated);
        assert_eq!(fs::read_to_string(&p).unwrap(), "b\n");
        assert_eq!(entries(p.parent().unwrap()), 1, "no temp file left");
    }

    #[test]
    fn a_failed_system_write_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "x").unwrap();
        let err = write_atomic(&blocker.join("under-a-file"), b"x", 0o644).unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
    }

    #[test]
    fn rewrite_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("10-eth0.network");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        rewrite_keeping_metadata(&p, b"new").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(entries(dir.path()), 1);
    }
}
