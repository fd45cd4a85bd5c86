//! Writing the seed as an ISO 9660 image with Rock Ridge and Joliet, in pure Rust.
//!
//! Our own small writer: cloud-init needs the real names (`user-data`, not the 8.3 name
//! `USER_DAT`), which Rock Ridge and Joliet both give, and a seed is a handful of files at
//! most one folder deep, so the whole format fits in three small modules: `names` (the
//! three names of a file), `records` (byte encodings) and `layout` (where things go). It
//! replaced hadris-iso 2.5 because that crate wants every file's bytes in memory before it
//! starts, while a seed's bulk is the agent, which is better copied file to file by the
//! kernel (`copy_file_range` on Linux, through `std::io::copy`) while its checksum is
//! computed beside it. The output is checked against xorriso, isoinfo, isovfy, blkid and the
//! guest's kernel and cloud-init (this crate's tests and the end-to-end test).

mod layout;
mod names;
mod records;

use std::fs::File;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::Path;

pub use names::check_name;

use crate::state::atomic::{self, Durability};
use layout::FileSpec;
use records::{SECTOR, Stamp};

/// A file's bytes, from wherever they are.
pub enum Contents {
    Bytes(Vec<u8>),
    /// An open file, copied from its start at write time; `len` is its size when opened.
    File {
        file: File,
        len: u64,
    },
    /// Bytes known only once the files before it are written (a manifest whose checksums
    /// are computed meanwhile): their length now, the bytes when their turn comes.
    Later {
        len: u64,
        make: Box<dyn FnOnce() -> io::Result<Vec<u8>>>,
    },
}

impl Contents {
    /// Open `path` to be copied onto the image.
    pub fn open(path: &Path) -> io::Result<Contents> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Contents::File { file, len })
    }

    pub fn len(&self) -> u64 {
        match self {
            Contents::Bytes(b) => b.len() as u64,
            Contents::File { len, .. } | Contents::Later { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write the bytes to `out`; an error if they are not `len()` bytes (a file that
    /// changed size since it was opened).
    /// `flush_early`: the image must reach the disk before we are done anyway, so start
    /// that before waiting on late bytes (see [`start_writeback`]).
    fn write_to(self, out: &mut File, flush_early: bool) -> io::Result<()> {
        let expected = self.len();
        let written = match self {
            Contents::Bytes(b) => {
                out.write_all(&b)?;
                b.len() as u64
            }
            Contents::File { file, len } => {
                (&file).seek(io::SeekFrom::Start(0))?;
                // File to file: the kernel copies (copy_file_range) where it can.
                io::copy(&mut (&file).take(len), out)?
            }
            Contents::Later { make, .. } => {
                if flush_early {
                    start_writeback(out);
                }
                let b = make()?;
                out.write_all(&b)?;
                b.len() as u64
            }
        };
        if written != expected {
            return Err(io::Error::other(format!(
                "expected {expected} bytes but got {written}: did it change meanwhile?"
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Contents::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Contents::File { len, .. } => write!(f, "File({len} bytes)"),
            Contents::Later { len, .. } => write!(f, "Later({len} bytes)"),
        }
    }
}

/// One file to put on the image, at a `/`-separated path (at most one folder deep).
#[derive(Debug)]
pub struct IsoFile {
    pub path: String,
    pub contents: Contents,
    /// POSIX permission bits recorded in Rock Ridge.
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
        source: io::Error,
    },
    #[error("could not write {name} onto the seed: {source}")]
    Contents {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Write the image to `out` through a temporary file beside it (mode 0600: user-data may
/// hold the guest's private host key), then move it into place. Nothing is left behind on
/// failure; an existing `out` is refused unless `replace` is set. Returns the image size.
pub fn write_iso(
    out: &Path,
    volume_id: &str,
    files: Vec<IsoFile>,
    replace: bool,
    durability: Durability,
) -> Result<u64, IsoError> {
    let specs: Vec<FileSpec<'_>> =
        files.iter().map(|f| FileSpec { path: &f.path, len: f.contents.len(), mode: f.mode }).collect();
    let plan = layout::plan(&specs, volume_id, &Stamp::from_unix(unix_now()))?;
    if !replace && out.exists() {
        return Err(IsoError::Exists(out.display().to_string()));
    }
    let size = u64::from(plan.sectors) * SECTOR as u64;
    let mut failed = None;
    // Synced, or renamed over an old image: ext4 (auto_da_alloc, on by default) writes a
    // file back when it replaces another, and we would wait for it at the rename. Into a
    // new name, unsynced, writing back is the kernel's business, in its own time.
    let flush_early = durability == Durability::Synced || out.exists();
    let result = atomic::write_with(out, 0o600, durability, |image| {
        image.write_all(&plan.header)?;
        let mut at = plan.header.len() as u64;
        for (f, &extent) in files.into_iter().zip(&plan.extents) {
            let start = u64::from(extent) * SECTOR as u64;
            zeros(image, start - at)?;
            at = start + f.contents.len();
            f.contents.write_to(image, flush_early).map_err(|e| {
                failed = Some(IsoError::Contents { name: f.path, source: e });
                io::Error::other("contents")
            })?;
        }
        zeros(image, size - at)
    });
    match (result, failed) {
        (Ok(()), _) => Ok(size),
        (Err(_), Some(e)) => Err(e),
        (Err(source), None) => Err(IsoError::Write { path: out.display().to_string(), source }),
    }
}

/// Ask the kernel to start writing `file` back now, without waiting: the late bytes wait
/// on checksums running beside us, and meanwhile the disk can take what is written.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a plain syscall on a descriptor we own, with no pointers; its result is only
    // advice taken or not, so an error is ignored.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) {}

fn zeros(out: &mut File, n: u64) -> io::Result<()> {
    const PAD: [u8; SECTOR] = [0; SECTOR];
    let mut left = n;
    while left > 0 {
        let k = left.min(SECTOR as u64) as usize;
        out.write_all(&PAD[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(path: &str, b: &[u8]) -> IsoFile {
        IsoFile { path: path.into(), contents: Contents::Bytes(b.to_vec()), mode: 0o644 }
    }

    fn write(out: &Path, files: Vec<IsoFile>, replace: bool) -> Result<u64, IsoError> {
        write_iso(out, "CIDATA", files, replace, Durability::Unsynced)
    }

    #[test]
    fn bad_name_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seed.iso");
        assert!(write(&out, vec![bytes("almavmm/bad:name", b"x")], false).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn existing_output_is_kept_without_replace() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seed.iso");
        std::fs::write(&out, "mine").unwrap();
        let err = write(&out, vec![bytes("meta-data", b"x")], false).unwrap_err();
        assert!(err.to_string().contains("pass --force"), "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "mine");
    }

    #[test]
    fn too_deep_and_duplicate_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("s.iso");
        let err = write(&out, vec![bytes("a/b/c", b"")], false).unwrap_err();
        assert!(err.to_string().contains("one folder deep"), "{err}");
        let err = write(&out, vec![bytes("a/b", b"1"), bytes("a/b", b"2")], false).unwrap_err();
        assert!(err.to_string().contains("two files"), "{err}");
        let err = write(&out, vec![bytes("a", b"1"), bytes("a/b", b"2")], false).unwrap_err();
        assert!(err.to_string().contains("two files"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_source_that_shrank_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("agent");
        std::fs::write(&src, vec![7u8; 5000]).unwrap();
        let contents = Contents::open(&src).unwrap();
        std::fs::write(&src, b"short").unwrap();
        let out = dir.path().join("s.iso");
        let err = write(&out, vec![IsoFile { path: "agent".into(), contents, mode: 0o755 }], false).unwrap_err();
        assert!(err.to_string().contains("agent") && err.to_string().contains("5000"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn files_land_sector_aligned_with_their_bytes_and_the_size_is_whole_sectors() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("big");
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &big).unwrap();
        let out = dir.path().join("s.iso");
        let later = Contents::Later { len: 3, make: Box::new(|| Ok(b"end".to_vec())) };
        let files = vec![
            bytes("meta-data", b"instance-id: x\n"),
            IsoFile { path: "p/big".into(), contents: Contents::open(&src).unwrap(), mode: 0o755 },
            IsoFile { path: "p/last".into(), contents: later, mode: 0o644 },
        ];
        let size = write(&out, files, false).unwrap();
        let image = std::fs::read(&out).unwrap();
        assert_eq!(image.len() as u64, size);
        assert_eq!(size % SECTOR as u64, 0);
        let find = |needle: &[u8]| image.windows(needle.len()).position(|w| w == needle).unwrap();
        assert_eq!(find(b"instance-id: x\n") % SECTOR, 0);
        let at = find(&big[..64]);
        assert_eq!(at % SECTOR, 0);
        assert_eq!(&image[at..at + big.len()], &big[..]);
        assert_eq!(find(b"end") % SECTOR, 0);
        assert_eq!(&image[16 * SECTOR + 1..16 * SECTOR + 6], b"CD001");
    }

    #[test]
    fn a_later_file_of_the_wrong_length_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("s.iso");
        let later = Contents::Later { len: 10, make: Box::new(|| Ok(b"short".to_vec())) };
        let err = write(&out, vec![IsoFile { path: "m".into(), contents: later, mode: 0o644 }], false).unwrap_err();
        assert!(err.to_string().contains("expected 10 bytes"), "{err}");
        assert!(!out.exists());
    }
}
