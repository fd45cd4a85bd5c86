//! Serving a test image the way a mirror does: over HTTP on 127.0.0.1, with a CHECKSUM
//! file signed by an OpenPGP key (a throwaway one made with gpg, as a mirror operator
//! would). Used by the end-to-end scenario and by the demo.

use std::convert::Infallible;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use almavmm_shared::wait::{Deadline, wait_until};
use anyhow::{Context, ensure};

use crate::limited::{Io, Running, limited};

/// One gpg operation (making an ed25519 key, signing a small file) takes well under a second.
const GPG_LIMIT: Duration = Duration::from_secs(60);
/// How long the HTTP server may live: longer than any scenario that uses the mirror (the
/// bundle scenario's `up` may take 50 min under TCG); it is stopped on drop before that.
const SERVER_LIMIT: Duration = Duration::from_secs(3 * 3600);

/// A running local mirror; the server stops when this is dropped.
#[derive(Debug)]
pub struct Mirror {
    pub url: String,
    pub signing_key: PathBuf,
    pub fingerprint: String,
    pub served_image: PathBuf,
    gnupg: PathBuf,
    /// Killed (with its process group) when dropped.
    _http: Running,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = limited("gpgconf", GPG_LIMIT).args(["--kill", "gpg-agent"]).env("GNUPGHOME", &self.gnupg).output();
    }
}

/// Serve `image` as `name` from `dir` (created), with a signed CHECKSUM.
pub fn mirror(dir: &Path, image: &Path, name: &str) -> anyhow::Result<Mirror> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let served_image = www.join(name);
    let _ = std::fs::remove_file(&served_image);
    std::os::unix::fs::symlink(image, &served_image)?;
    let sha = cached_sha256(image)?;
    let checksum = www.join("CHECKSUM");
    std::fs::write(&checksum, format!("# test image\n{sha}  {name}\n"))?;

    let gnupg = dir.join("gnupg");
    std::fs::create_dir_all(&gnupg)?;
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let gpg = |args: &[&str]| -> anyhow::Result<String> {
        let out = limited("gpg", GPG_LIMIT).args(["--batch", "--quiet"]).args(args).env("GNUPGHOME", &gnupg).run()?;
        Ok(out.stdout)
    };
    gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        "almavmm test mirror <test@almavmm.invalid>",
        "ed25519",
        "sign",
        "never",
    ])?;
    let fingerprint = gpg(&["--with-colons", "--list-keys"])?
        .lines()
        .find_map(|l| l.strip_prefix("fpr:").map(|r| r.trim_matches(':').to_string()))
        .context("no fingerprint from gpg")?;
    let signing_key = dir.join("mirror-signing-key.asc");
    std::fs::write(&signing_key, gpg(&["--armor", "--export"])?)?;
    let asc = format!("{}.asc", checksum.display());
    let _ = std::fs::remove_file(&asc);
    gpg(&["--armor", "--detach-sign", "--output", &asc, &checksum.display().to_string()])?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let http = limited("python3", SERVER_LIMIT)
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(port.to_string())
        .stdout(Io::Null)
        .stderr(Io::Null)
        .spawn()
        .context("cannot start python3's http.server")?;
    let listening = || Ok::<_, Infallible>(std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    ensure!(
        wait_until(Deadline::after(Duration::from_secs(20)), Duration::from_millis(100), listening)?.is_some(),
        "the local HTTP server did not come up"
    );
    Ok(Mirror {
        url: format!("http://127.0.0.1:{port}/{name}"),
        signing_key,
        fingerprint,
        served_image,
        gnupg,
        _http: http,
    })
}

/// SHA-256 of the (large) test image, remembered beside it so reruns do not rehash it.
fn cached_sha256(image: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let cache = image.with_extension("qcow2.sha256");
    if let Ok(s) = std::fs::read_to_string(&cache)
        && std::fs::metadata(&cache)?.modified()? >= std::fs::metadata(image)?.modified()?
    {
        return Ok(s.trim().to_string());
    }
    let mut f = std::fs::File::open(image)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let sha = h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>();
    std::fs::write(&cache, &sha)?;
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get(url: &str) -> String {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut s = std::net::TcpStream::connect(host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    /// The mirror as `up` sees it: a signed CHECKSUM naming the image, over HTTP; and the
    /// server gone once the mirror is dropped.
    #[test]
    fn a_mirror_serves_a_signed_checksum_and_stops_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.qcow2");
        std::fs::write(&image, b"not really a disk").unwrap();
        let m = mirror(&dir.path().join("m"), &image, "served.qcow2").unwrap();
        assert_eq!(m.fingerprint.len(), 40, "{}", m.fingerprint);
        let base = m.url.strip_suffix("served.qcow2").unwrap().to_string();
        let checksum = get(&format!("{base}CHECKSUM"));
        assert!(checksum.starts_with("HTTP/1.0 200"), "{checksum}");
        assert!(checksum.contains("  served.qcow2\n"), "{checksum}");
        assert!(get(&format!("{base}CHECKSUM.asc")).contains("BEGIN PGP SIGNATURE"));
        assert!(get(&m.url).ends_with("not really a disk"));
        let port = base.trim_start_matches("http://127.0.0.1:").trim_end_matches('/').to_string();
        drop(m);
        assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(), "the server outlived the mirror");
    }
}
