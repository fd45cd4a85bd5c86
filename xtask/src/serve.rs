//! Serving a test image the way a mirror does: over HTTP on 127.0.0.1, with a CHECKSUM
//! file signed by an OpenPGP key (a throwaway one made with gpg, as a mirror operator
//! would). Used by the end-to-end scenario and by the demo.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

/// A running local mirror; the server stops when this is dropped.
#[derive(Debug)]
pub struct Mirror {
    pub url: String,
    pub signing_key: PathBuf,
    pub fingerprint: String,
    pub served_image: PathBuf,
    gnupg: PathBuf,
    http: Child,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.http.kill();
        let _ = self.http.wait();
        let _ = Command::new("gpgconf").arg("--kill").arg("gpg-agent").env("GNUPGHOME", &self.gnupg).status();
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
        let out = Command::new("gpg").args(["--batch", "--quiet"]).args(args).env("GNUPGHOME", &gnupg).output()?;
        ensure!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
    let http = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start python3's http.server")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "the local HTTP server did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Mirror { url: format!("http://127.0.0.1:{port}/{name}"), signing_key, fingerprint, served_image, gnupg, http })
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
