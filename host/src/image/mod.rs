//! The guest image pipeline: fetch (HTTPS, resumable), verify (signed CHECKSUM, SHA-256),
//! inspect (our own qcow2 reader and a verdict for vmd), prepare (a cached uncompressed
//! base) and per-VM overlays on that base.
//!
//! # Cache layout
//!
//! Everything lives under [`Home::images_dir`] (`$ALMAVMM_HOME/images`), folders mode 0700:
//!
//! ```text
//! images/
//!   download/<sha256>/<file name>           a verified download, read-only (0444)
//!   download/<sha256>/<file name>.partial   a download in progress, resumed by the next fetch
//!   download/<sha256>/CHECKSUM[.asc]        the signed list that vouched for it, for the record
//!   download/<sha256>/.lock                 held while that image is being fetched
//!   download/unverified-<url hash>/…        a download with no checksum list to check it
//!                                           (--insecure-skip-verify only), moved to
//!                                           download/<its sha256>/ once complete
//!   base/<sha256 of the source>.qcow2       a prepared base, read-only (0444), never rewritten
//!   base/.converting-<sha256>-<pid>.qcow2   a conversion in progress (stale ones are removed)
//!   base/.lock                              held while a base is being prepared
//! ```
//!
//! A download is keyed by the checksum the signed list gives *before* it starts, so a
//! second fetch of the same image is decided from the small list alone. Bases are keyed by
//! the checksum of their source, so they are converted once; overlays point at them by
//! absolute path, which is why a base is never deleted or replaced once it exists.

pub mod fetch;
pub mod http;
pub mod inspect;
pub mod overlay;
pub mod prepare;
pub mod progress;
pub mod qcow2;
pub mod signature;
pub mod sniff;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use fetch::fetch;
pub use inspect::{Inspection, ProblemCode, Verdict, inspect};
pub use overlay::{OverlayTool, create_overlay};
pub use prepare::{PreparedBase, prepare};

use crate::state::home::{Home, HomeError};

pub const DEFAULT_IMAGE_URL: &str =
    "https://repo.almalinux.org/almalinux/9/cloud/x86_64/images/AlmaLinux-9-GenericCloud-latest.x86_64.qcow2";
pub const ALMALINUX_9_KEY_URL: &str = "https://repo.almalinux.org/almalinux/RPM-GPG-KEY-AlmaLinux-9";
/// The AlmaLinux 9 release key (FACTS.md; `rpm -qi gpg-pubkey` on AlmaLinux 9 prints it).
pub const ALMALINUX_9_FINGERPRINT: &str = "BF18AC2876178908D6E71267D36CB86CB86B3716";

/// Where an image comes from and what vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    pub url: String,
    /// The checksum list; `None` means `CHECKSUM` beside the image.
    pub checksum_url: Option<String>,
    pub trust: Trust,
}

impl Default for ImageSource {
    fn default() -> Self {
        ImageSource { url: DEFAULT_IMAGE_URL.to_string(), checksum_url: None, trust: Trust::AlmaLinux9 }
    }
}

/// Who must have signed the checksum list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The AlmaLinux 9 release key, fetched from [`ALMALINUX_9_KEY_URL`] and pinned to
    /// [`ALMALINUX_9_FINGERPRINT`].
    AlmaLinux9,
    /// Another key (a mirror's own): a file path or an http(s) URL, pinned to a fingerprint.
    Key { key: String, fingerprint: String },
    /// No signature check. The SHA-256 is still compared with the checksum list when the
    /// server has one: that catches a damaged download, though not a forged one.
    InsecureSkipVerify,
}

/// A downloaded, verified image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    pub file_name: String,
    /// The checksum list's signature was verified (false only with InsecureSkipVerify).
    pub signature_checked: bool,
    /// The file's SHA-256 was compared with a checksum list (false only with
    /// InsecureSkipVerify against a server that has no list).
    pub checksum_checked: bool,
    /// False when the cache already had it and nothing was downloaded.
    pub downloaded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("bad image URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot download {url}: {detail}")]
    Http { url: String, detail: String },
    #[error("{url} does not exist on the server (HTTP 404): check the URL")]
    NotFound { url: String },
    #[error("{url}: the server answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url} is larger than {limit} bytes, far more than a checksum list, key or signature: refusing it")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "the download of {url} failed {attempts} times in a row (last: {detail}); {kept} bytes are kept in {}: run the same command again to resume",
        partial.display()
    )]
    Interrupted { url: String, attempts: u32, kept: u64, partial: PathBuf, detail: String },
    #[error("the checksum list {url} is malformed: {source}")]
    ChecksumList {
        url: String,
        #[source]
        source: almavmm_shared::seed::ChecksumListError,
    },
    #[error("the checksum list {url} has no SHA-256 entry for {name} (it lists: {})", listed.join(", "))]
    NoChecksumEntry { url: String, name: String, listed: Vec<String> },
    #[error(
        "SHA-256 mismatch for {name}: the checksum list says {expected} but the download is {actual}; the partial download was removed: run again to download it afresh (if it happens again, the server holds a damaged or tampered file)"
    )]
    ChecksumMismatch { name: String, expected: String, actual: String },
    #[error(
        "the checksum list {url} is not signed ({asc_url} does not exist): refusing to trust it; to accept it anyway, skip the signature check explicitly with --insecure-skip-verify (the SHA-256 is still compared)"
    )]
    Unsigned { url: String, asc_url: String },
    #[error("{what}: {source}")]
    Signature {
        what: String,
        #[source]
        source: signature::SignatureError,
    },
    #[error("{} is not a usable qcow2 image: {source}", path.display())]
    Qcow2 {
        path: PathBuf,
        #[source]
        source: qcow2::Qcow2Error,
    },
    #[error("cannot prepare {}: {reason}", path.display())]
    CannotPrepare { path: PathBuf, reason: String },
    #[error("{0:?} is not a SHA-256 checksum (64 hex digits)")]
    BadSha256(String),
    #[error(transparent)]
    Run(#[from] almavmm_shared::runner::RunError),
    #[error("{} already exists: almavmm never overwrites a guest disk", path.display())]
    DiskExists { path: PathBuf },
    #[error(
        "a disk of {} is smaller than its base image ({}): a guest disk can only be as large as its base or larger",
        crate::ui::human_bytes(*requested),
        crate::ui::human_bytes(*base)
    )]
    SizeTooSmall { requested: u64, base: u64 },
}

impl ImageError {
    pub(crate) fn io(what: &'static str, path: &Path, source: io::Error) -> ImageError {
        ImageError::Io { what, path: path.to_path_buf(), source }
    }
}

/// How to install qemu-img on the systems we run on.
pub const QEMU_IMG_HINT: &str = "install it with `pkg_add qemu` (OpenBSD) or `apt-get install qemu-utils` (Debian)";

/// Lower-case hex SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = File::open(path).map_err(|e| ImageError::io("cannot open", path, e))?;
    let mut h = Sha256::new();
    hash_into(&mut f, &mut h).map_err(|e| ImageError::io("cannot read", path, e))?;
    Ok(hex::encode(h.finalize()))
}

pub(crate) fn hash_into(r: &mut impl Read, h: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf)?;
        if got == 0 {
            return Ok(n);
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
}

pub(crate) fn check_sha256(s: &str) -> Result<(), ImageError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(ImageError::BadSha256(s.to_string()))
    }
}

/// Paths inside the image cache (see the module comment for the layout).
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    root: PathBuf,
}

impl Cache {
    pub(crate) fn new(home: &Home) -> Cache {
        Cache { root: home.images_dir() }
    }

    pub(crate) fn download_dir(&self, sha256: &str) -> PathBuf {
        self.root.join("download").join(sha256)
    }

    pub(crate) fn unverified_dir(&self, url: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(url.as_bytes()));
        self.root.join("download").join(format!("unverified-{}", &h[..16]))
    }

    pub(crate) fn base_dir(&self) -> PathBuf {
        self.root.join("base")
    }
}

/// An exclusive lock on a lock file, held until dropped (flock(2): released by the kernel
/// when the process dies, so a killed run never leaves the cache locked).
#[derive(Debug)]
pub(crate) struct Lock {
    _held: nix::fcntl::Flock<File>,
}

pub(crate) fn lock(path: &Path) -> Result<Lock, ImageError> {
    use nix::fcntl::{Flock, FlockArg};
    let open = || {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| ImageError::io("cannot open the lock file", path, e))
    };
    match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(Lock { _held: held }),
        Err((file, _)) => {
            tracing::warn!(
                "waiting for another almavmm process working in {}",
                path.parent().unwrap_or(path).display()
            );
            Flock::lock(file, FlockArg::LockExclusive)
                .map(|held| Lock { _held: held })
                .map_err(|(_, e)| ImageError::io("cannot lock", path, e.into()))
        }
    }
}

/// Make a finished file read-only and give it its final name, refusing to replace anything
/// already there (link + unlink: no rename flag for that exists on OpenBSD).
pub(crate) fn publish(tmp: &Path, dest: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let f = File::open(tmp).map_err(|e| ImageError::io("cannot open", tmp, e))?;
    f.sync_all().map_err(|e| ImageError::io("cannot sync", tmp, e))?;
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o444))
        .map_err(|e| ImageError::io("cannot make read-only", tmp, e))?;
    fs::hard_link(tmp, dest).map_err(|e| ImageError::io("cannot create", dest, e))?;
    fs::remove_file(tmp).map_err(|e| ImageError::io("cannot remove", tmp, e))?;
    if let Some(dir) = dest.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
