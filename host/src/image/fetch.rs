//! Fetching an image into the cache: the signed checksum list first (small, decides
//! whether anything needs downloading at all), then the image, resumable with HTTP Range,
//! hashed as it arrives and published under its final name only once its SHA-256 matches.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::http::{self, Http};
use super::progress::{Progress, Unit};
use super::signature::{self, TrustedKey};
use super::{
    ALMALINUX_9_FINGERPRINT, ALMALINUX_9_KEY_URL, Cache, Fetched, ImageError, ImageSource, Trust, lock, publish,
};
use almavmm_shared::atomic;

use crate::state::home::Home;

const MAX_LIST: u64 = 1 << 20;
const MAX_KEY: u64 = 1 << 20;
const MAX_SIG: u64 = 64 << 10;
/// Failed attempts in a row before giving up (the partial file stays for the next run).
const ATTEMPTS: u32 = 4;

/// Download `src` into the cache (or find it there) and verify it.
pub fn fetch(home: &Home, src: &ImageSource) -> Result<Fetched, ImageError> {
    let http = Http::new();
    let file_name = http::file_name_of(&src.url)?;
    let checksum_url = src.checksum_url.clone().unwrap_or_else(|| http::sibling_url(&src.url, "CHECKSUM"));
    home.ensure_dir(&home.images_dir())?;
    let cache = Cache::new(home);

    let list = checksum_list(&http, &src.trust, &checksum_url)?;
    let Some(list) = list else {
        return fetch_unchecked(home, &cache, &http, &src.url, &file_name);
    };
    let expected = entry_for(&list.text, &file_name, &checksum_url)?;
    let dir = home.ensure_dir(&cache.download_dir(&expected))?;
    let _lock = lock(&dir.join(".lock"))?;
    let dest = dir.join(&file_name);
    let done = |downloaded| Fetched {
        path: dest.clone(),
        sha256: expected.clone(),
        file_name: file_name.clone(),
        signature_checked: list.signed,
        checksum_checked: true,
        downloaded,
    };
    if dest.is_file() {
        tracing::info!(path = %dest.display(), "already in the cache, verified against {checksum_url}");
        return Ok(done(false));
    }
    let partial = dir.join(format!("{file_name}.partial"));
    let actual = download(&http, &src.url, &partial, &file_name)?;
    if actual != expected {
        let _ = fs::remove_file(&partial);
        return Err(ImageError::ChecksumMismatch { name: file_name, expected, actual });
    }
    publish(&partial, &dest)?;
    list.keep_in(&dir, &checksum_url);
    Ok(done(true))
}

/// A checksum list we may trust, and whether a signature vouched for it.
struct List {
    text: String,
    raw: Vec<u8>,
    asc: Option<Vec<u8>>,
    signed: bool,
}

impl List {
    /// Keep the list (and its signature) beside the image: a record of what vouched for it.
    fn keep_in(&self, dir: &Path, url: &str) {
        let name = http::file_name_of(url).unwrap_or_else(|_| "CHECKSUM".into());
        let _ = atomic::write_file(&dir.join(&name), &self.raw, 0o444);
        if let Some(asc) = &self.asc {
            let _ = atomic::write_file(&dir.join(format!("{name}.asc")), asc, 0o444);
        }
    }
}

fn checksum_list(http: &Http, trust: &Trust, url: &str) -> Result<Option<List>, ImageError> {
    let (key_src, fingerprint) = match trust {
        Trust::AlmaLinux9 => (ALMALINUX_9_KEY_URL, ALMALINUX_9_FINGERPRINT),
        Trust::Key { key, fingerprint } => (key.as_str(), fingerprint.as_str()),
        Trust::InsecureSkipVerify => {
            tracing::warn!(
                "SIGNATURE CHECK SKIPPED: nothing proves this image comes from its publisher; only the SHA-256 in {url} (if it exists) guards against a damaged download"
            );
            return match http.get_small(url, MAX_LIST) {
                Ok(raw) => {
                    let text = utf8(url, &raw)?;
                    let text = if signature::is_cleartext_signed(&text) { cleartext_body(url, &text)? } else { text };
                    Ok(Some(List { text, raw, asc: None, signed: false }))
                }
                Err(ImageError::NotFound { .. }) => {
                    tracing::warn!("no checksum list at {url}: the image is not checked AT ALL");
                    Ok(None)
                }
                Err(e) => Err(e),
            };
        }
    };
    let key = trusted_key(http, key_src, fingerprint)?;
    let raw = http.get_small(url, MAX_LIST)?;
    let text = utf8(url, &raw)?;
    let sig_err = |source| ImageError::Signature { what: format!("signature check of {url}"), source };
    if signature::is_cleartext_signed(&text) {
        let (body, signer) = signature::verify_cleartext(&key, &text).map_err(sig_err)?;
        tracing::info!(signer, "checksum list signature verified");
        return Ok(Some(List { text: body, raw, asc: None, signed: true }));
    }
    let asc_url = format!("{url}.asc");
    let asc = match http.get_small(&asc_url, MAX_SIG) {
        Ok(a) => a,
        Err(ImageError::NotFound { .. }) => return Err(ImageError::Unsigned { url: url.to_string(), asc_url }),
        Err(e) => return Err(e),
    };
    let signer = signature::verify_detached(&key, &raw, &asc).map_err(sig_err)?;
    tracing::info!(signer, "checksum list signature verified");
    Ok(Some(List { text, raw, asc: Some(asc), signed: true }))
}

fn trusted_key(http: &Http, src: &str, fingerprint: &str) -> Result<TrustedKey, ImageError> {
    let bytes = if src.starts_with("https://") || src.starts_with("http://") {
        http.get_small(src, MAX_KEY)?
    } else {
        fs::read(src).map_err(|e| ImageError::io("cannot read the signing key", Path::new(src), e))?
    };
    signature::load_key(&bytes, fingerprint)
        .map_err(|source| ImageError::Signature { what: format!("signing key {src}"), source })
}

fn utf8(url: &str, raw: &[u8]) -> Result<String, ImageError> {
    String::from_utf8(raw.to_vec()).map_err(|_| ImageError::ChecksumList {
        url: url.to_string(),
        source: almavmm_shared::seed::ChecksumListError::Malformed { line: 0, text: "(not UTF-8 text)".into() },
    })
}

/// The text inside a clear-signed list, signature unchecked (InsecureSkipVerify only).
fn cleartext_body(url: &str, text: &str) -> Result<String, ImageError> {
    pgp::composed::CleartextSignedMessage::from_string(text).map(|(m, _)| m.text().to_string()).map_err(|e| {
        ImageError::ChecksumList {
            url: url.to_string(),
            source: almavmm_shared::seed::ChecksumListError::Malformed { line: 0, text: e.to_string() },
        }
    })
}

/// The SHA-256 the list gives for `name`.
pub fn entry_for(text: &str, name: &str, url: &str) -> Result<String, ImageError> {
    let entries = almavmm_shared::seed::parse_checksum_list(text)
        .map_err(|source| ImageError::ChecksumList { url: url.to_string(), source })?;
    if let Some(e) = entries.iter().find(|e| e.name == name) {
        return Ok(e.sha256.clone());
    }
    let mut listed: Vec<String> = entries.into_iter().map(|e| e.name).take(10).collect();
    if listed.is_empty() {
        listed.push("nothing".into());
    }
    Err(ImageError::NoChecksumEntry { url: url.to_string(), name: name.to_string(), listed })
}

/// InsecureSkipVerify with no list: download under a name keyed by the URL, then file it
/// under its own checksum.
fn fetch_unchecked(home: &Home, cache: &Cache, http: &Http, url: &str, file_name: &str) -> Result<Fetched, ImageError> {
    let tmp_dir = home.ensure_dir(&cache.unverified_dir(url))?;
    let _lock = lock(&tmp_dir.join(".lock"))?;
    let partial = tmp_dir.join(format!("{file_name}.partial"));
    let sha = download(http, url, &partial, file_name)?;
    let dir = home.ensure_dir(&cache.download_dir(&sha))?;
    let dest = dir.join(file_name);
    if dest.is_file() {
        let _ = fs::remove_file(&partial);
    } else {
        publish(&partial, &dest)?;
    }
    let _ = fs::remove_file(tmp_dir.join(".lock"));
    let _ = fs::remove_dir(&tmp_dir);
    Ok(Fetched {
        path: dest,
        sha256: sha,
        file_name: file_name.to_string(),
        signature_checked: false,
        checksum_checked: false,
        downloaded: true,
    })
}

/// Why one attempt at the body ended early.
enum Attempt {
    /// Worth another try from where we are (connection dropped, server hiccup).
    Retry(String),
    Fatal(ImageError),
}

/// Download `url` into `partial`, resuming from what it already holds. Returns the SHA-256
/// of the complete file.
fn download(http: &Http, url: &str, partial: &Path, name: &str) -> Result<String, ImageError> {
    let io_err = |what, e| ImageError::io(what, partial, e);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(partial)
        .map_err(|e| io_err("cannot open", e))?;
    let mut hasher = Sha256::new();
    let mut have = super::hash_into(&mut file, &mut hasher).map_err(|e| io_err("cannot read", e))?;
    if have > 0 {
        tracing::info!("resuming {name} from byte {have}");
    }
    let mut failures = 0;
    loop {
        let mut state = Body { file: &mut file, hasher: &mut hasher, have: &mut have, partial };
        match attempt(http, url, &mut state, name) {
            Ok(()) => break,
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(detail)) => {
                failures += 1;
                if failures >= ATTEMPTS {
                    return Err(ImageError::Interrupted {
                        url: url.to_string(),
                        attempts: failures,
                        kept: have,
                        partial: partial.to_path_buf(),
                        detail,
                    });
                }
                tracing::warn!("download of {name} interrupted ({detail}); resuming from byte {have}");
                std::thread::sleep(Duration::from_millis(300 * u64::from(failures)));
            }
        }
    }
    file.sync_all().map_err(|e| io_err("cannot sync", e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// The partial file and the running hash of its contents.
struct Body<'a> {
    file: &'a mut File,
    hasher: &'a mut Sha256,
    have: &'a mut u64,
    partial: &'a Path,
}

impl Body<'_> {
    fn restart(&mut self) -> Result<(), ImageError> {
        self.file.set_len(0).map_err(|e| ImageError::io("cannot truncate", self.partial, e))?;
        *self.hasher = Sha256::new();
        *self.have = 0;
        Ok(())
    }
}

fn attempt(http: &Http, url: &str, b: &mut Body<'_>, name: &str) -> Result<(), Attempt> {
    let fatal = Attempt::Fatal;
    let mut resp = match http.get(url, *b.have) {
        Ok(r) => r,
        Err(ImageError::Http { detail, .. }) => return Err(Attempt::Retry(detail)),
        Err(e) => return Err(fatal(e)),
    };
    let status = resp.status().as_u16();
    let header = |h: &str| resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_range = header("content-range").and_then(|v| parse_content_range(&v));
    let length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let total = match status {
        206 if *b.have > 0 => {
            let Some(ContentRange { start: Some(start), total }) = content_range else {
                b.restart().map_err(fatal)?;
                return Err(Attempt::Retry("the server sent a partial answer without a usable Content-Range".into()));
            };
            if start != *b.have {
                b.restart().map_err(fatal)?;
                return Err(Attempt::Retry(format!("the server resumed at byte {start}, not {}", b.have)));
            }
            total.or(length.map(|l| l + start))
        }
        200 => {
            if *b.have > 0 {
                tracing::info!("the server ignored the Range request: downloading {name} again from the start");
                b.restart().map_err(fatal)?;
            }
            length
        }
        416 if *b.have > 0 => {
            // Our partial file is at least as long as the file: complete, or stale.
            if content_range.and_then(|c| c.total) == Some(*b.have) {
                return Ok(());
            }
            b.restart().map_err(fatal)?;
            return Err(Attempt::Retry("the partial file was longer than the file on the server".into()));
        }
        s => {
            http::check_status(url, s).map_err(fatal)?;
            return Err(fatal(ImageError::HttpStatus { url: url.to_string(), status: s }));
        }
    };
    b.file.seek(SeekFrom::End(0)).map_err(|e| fatal(ImageError::io("cannot seek", b.partial, e)))?;
    let mut progress = Progress::start(&format!("downloading {name}"), Unit::Bytes, total, *b.have);
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 256 << 10];
    let result = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(Attempt::Retry(e.to_string())),
        };
        if let Err(e) = b.file.write_all(&buf[..n]) {
            break Err(fatal(ImageError::io("cannot write", b.partial, e)));
        }
        b.hasher.update(&buf[..n]);
        *b.have += n as u64;
        progress.set(*b.have);
    };
    progress.finish();
    result?;
    match total {
        Some(t) if *b.have < t => Err(Attempt::Retry(format!("the connection closed after {} of {t} bytes", b.have))),
        _ => Ok(()),
    }
}

/// `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL`), RFC 9110 §14.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: Option<u64>,
    pub total: Option<u64>,
}

pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = if total.trim() == "*" { None } else { Some(total.trim().parse().ok()?) };
    let start = if range.trim() == "*" { None } else { Some(range.split_once('-')?.0.trim().parse().ok()?) };
    Some(ContentRange { start, total })
}

/// Where a partial download of `file_name` for `sha256` would be, for tests and tools.
pub fn partial_path(home: &Home, sha256: &str, file_name: &str) -> PathBuf {
    Cache::new(home).download_dir(sha256).join(format!("{file_name}.partial"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some(ContentRange { start: Some(100), total: Some(1000) })
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some(ContentRange { start: Some(5), total: None }));
        assert_eq!(parse_content_range("bytes */1000"), Some(ContentRange { start: None, total: Some(1000) }));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes x-2/3"), None);
    }

    #[test]
    fn entry_for_finds_the_name_or_lists_what_is_there() {
        let a = "a".repeat(64);
        let list = format!("{a}  one.qcow2\nSHA256 (two.qcow2) = {a}\n");
        assert_eq!(entry_for(&list, "two.qcow2", "u").unwrap(), a);
        let err = entry_for(&list, "three.qcow2", "http://x/CHECKSUM").unwrap_err().to_string();
        assert_eq!(
            err,
            "the checksum list http://x/CHECKSUM has no SHA-256 entry for three.qcow2 (it lists: one.qcow2, two.qcow2)"
        );
    }
}
