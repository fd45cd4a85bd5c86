//! Shared by the image_* integration tests: a small HTTP server on 127.0.0.1 that can
//! misbehave on purpose, and helpers around gpg and qemu-img.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use almavmm_shared::runner::Cmd;

/// How the server treats one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Send the headers of a full answer but only this many body bytes, then close; for
    /// the next `times` requests, then behave normally.
    DropAfter {
        bytes: usize,
        times: u32,
    },
    /// Answer 200 with the whole file even when asked for a range.
    IgnoreRange,
}

/// One request the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    modes: HashMap<String, Mode>,
    seen: Vec<Seen>,
}

/// An HTTP/1.1 server on 127.0.0.1 serving files from memory; it stops when dropped.
#[derive(Debug)]
pub struct Server {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// Connections the server accepts at most: the tests make a handful each.
const MAX_CONNECTIONS: usize = 500;

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming().take(MAX_CONNECTIONS) {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &st);
                });
            }
        });
        Server { port, state, stop, accept: Some(accept) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.state.lock().unwrap().files.insert(format!("/{}", path.trim_start_matches('/')), body.into());
    }

    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().files.remove(&format!("/{}", path.trim_start_matches('/')));
    }

    pub fn mode(&self, path: &str, mode: Mode) {
        self.state.lock().unwrap().modes.insert(format!("/{}", path.trim_start_matches('/')), mode);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests for one path.
    pub fn seen_for(&self, path: &str) -> Vec<Seen> {
        let p = format!("/{}", path.trim_start_matches('/'));
        self.seen().into_iter().filter(|s| s.path == p).collect()
    }

    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn handle(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let (body, mode) = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen { path: path.clone(), range: range.clone() });
        let body = st.files.get(&path).cloned();
        let mode = st.modes.get(&path).copied().unwrap_or(Mode::Normal);
        if let Mode::DropAfter { bytes, times } = mode {
            let next = if times <= 1 { Mode::Normal } else { Mode::DropAfter { bytes, times: times - 1 } };
            st.modes.insert(path.clone(), next);
        }
        (body, mode)
    };
    let mut out = conn;
    let Some(body) = body else {
        write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found")?;
        return Ok(());
    };
    let start = match (&range, mode) {
        (Some(r), m) if m != Mode::IgnoreRange => {
            r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<usize>().ok())
        }
        _ => None,
    };
    let len = body.len();
    let (status, from) = match start {
        Some(s) if s >= len => {
            write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Some(s) => (format!("206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}", len - 1), s),
        None => ("200 OK".to_string(), 0),
    };
    write!(out, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", len - from)?;
    match mode {
        Mode::DropAfter { bytes, .. } => {
            let end = (from + bytes).min(len);
            out.write_all(&body[from..end])?;
            out.flush()?;
            out.shutdown(Shutdown::Both)?;
        }
        _ => out.write_all(&body[from..])?,
    }
    Ok(())
}

/// Bytes that look random and differ per seed (no rand crate needed: xorshift).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A throwaway gpg home with one signing key, made the way the end-to-end test makes its
/// key (`gpg --quick-gen-key NAME ALGO sign never`).
#[derive(Debug)]
pub struct Gpg {
    pub home: tempfile::TempDir,
    pub fingerprint: String,
}

impl Gpg {
    /// `algo` as gpg names it: `ed25519`, `rsa3072`, …
    pub fn new(algo: &str) -> Gpg {
        Self::build(algo, "sign", |_, _| {})
    }

    /// A certify-only primary key with a separate signing subkey, the shape of the
    /// AlmaLinux 8 key ("sub rsa3072 [S]" on AlmaLinux's wiki).
    pub fn with_signing_subkey() -> Gpg {
        Self::build("ed25519", "cert", |g, fpr| {
            g.clone().args(["--passphrase", "", "--quick-add-key", fpr, "ed25519", "sign", "never"]).run().unwrap();
        })
    }

    /// A key whose user id also carries a certification by another key, as published
    /// keys often do.
    pub fn with_third_party_certification() -> Gpg {
        Self::build("ed25519", "sign", |g, fpr| {
            g.clone()
                .args(["--passphrase", "", "--quick-gen-key", "third party", "ed25519", "sign", "never"])
                .run()
                .unwrap();
            let third = g.clone().args(["--with-colons", "--list-secret-keys", "third party"]).run().unwrap();
            let third = fingerprint_of(&third.stdout);
            g.clone().args(["--local-user", &third, "--quick-sign-key", fpr]).run().unwrap();
        })
    }

    fn build(algo: &str, usage: &str, then: impl FnOnce(&Cmd, &str)) -> Gpg {
        let home = tempfile::tempdir().unwrap();
        let g = Cmd::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args(["--batch", "--no-tty", "--yes"])
            .hint_if_missing("the image tests need gpg: apt-get install gnupg")
            .timeout(Duration::from_secs(120));
        g.clone().args(["--passphrase", "", "--quick-gen-key", "almavmm test", algo, usage, "never"]).run().unwrap();
        let out = g.clone().args(["--with-colons", "--fingerprint", "almavmm test"]).run().unwrap();
        let fingerprint = fingerprint_of(&out.stdout);
        then(&g, &fingerprint);
        Gpg { home, fingerprint }
    }

    fn cmd(&self) -> Cmd {
        Cmd::new("gpg").arg("--homedir").arg(self.home.path()).args(["--batch", "--no-tty", "--yes"])
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.cmd().args(["--armor", "--export", &self.fingerprint]).run().unwrap().stdout.into_bytes()
    }

    /// Write the armoured public key to `dir/key.asc` and return its path.
    pub fn write_public_key(&self, dir: &Path) -> PathBuf {
        let p = dir.join("key.asc");
        std::fs::write(&p, self.public_key()).unwrap();
        p
    }

    /// A detached armoured signature of `data` (`gpg --armor --detach-sign`).
    pub fn detach_sign(&self, data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("CHECKSUM");
        std::fs::write(&f, data).unwrap();
        self.cmd().args(["--local-user", &self.fingerprint, "--armor", "--detach-sign"]).arg(&f).run().unwrap();
        std::fs::read(dir.path().join("CHECKSUM.asc")).unwrap()
    }

    /// `data` clear-signed (`gpg --clearsign`).
    pub fn clear_sign(&self, data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("CHECKSUM");
        std::fs::write(&f, data).unwrap();
        self.cmd().args(["--local-user", &self.fingerprint, "--clearsign"]).arg(&f).run().unwrap();
        std::fs::read(dir.path().join("CHECKSUM.asc")).unwrap()
    }
}

/// The primary key's fingerprint in `gpg --with-colons` output: the first `fpr` record
/// (gnupg doc/DETAILS, field 10).
fn fingerprint_of(colons: &str) -> String {
    colons
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .expect("gpg printed a fingerprint")
        .to_string()
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // gpg started an agent for this home; end it with the home.
        let _ = Cmd::new("gpgconf").arg("--homedir").arg(self.home.path()).args(["--kill", "gpg-agent"]).output();
    }
}

/// Run qemu-img, failing the test with its stderr if it fails.
pub fn qemu_img(args: &[&str]) -> String {
    Cmd::new("qemu-img")
        .args(args)
        .hint_if_missing("the image tests need qemu-img: apt-get install qemu-utils")
        .timeout(Duration::from_secs(300))
        .run()
        .unwrap()
        .stdout
}

/// Whether `qemu-img map --output=json` reports any compressed extent; `None` when
/// qemu-img cannot open the image at all. `args` go before the file (e.g. `--object`).
pub fn map_says_compressed(pre: &[&str], file: &str) -> Option<bool> {
    let out = Cmd::new("qemu-img")
        .args(["map", "--output=json"])
        .args(pre)
        .arg(file)
        .hint_if_missing("the image tests need qemu-img: apt-get install qemu-utils")
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    Some(compressed_in_map(&out.stdout))
}

/// Parse `qemu-img map --output=json` (a JSON array of extents, each with a boolean
/// `compressed`; format of qemu-img.c `dump_map_entry`, sample in
/// fixtures/image/qemu-img-map.json).
pub fn compressed_in_map(json: &str) -> bool {
    let v: serde_json::Value = serde_json::from_str(json).expect("qemu-img map prints JSON");
    v.as_array().expect("an array of extents").iter().any(|e| e["compressed"] == serde_json::Value::Bool(true))
}

/// A raw disk image of `size` bytes with an MBR boot signature, `data` random bytes at
/// 1 MiB and a compressible stretch after it.
pub fn raw_disk(path: &Path, size: u64, data: usize) {
    assert!((2 << 20) + 2 * data as u64 <= size, "the data must fit in the disk");
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    let mut mbr = vec![0u8; 512];
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all_at(&mbr, 0).unwrap();
    f.write_all_at(&pseudo_random(data, 7), 1 << 20).unwrap();
    let text: Vec<u8> = b"almavmm test line, compressible\n".iter().copied().cycle().take(data).collect();
    f.write_all_at(&text, (1 << 20) + data as u64 + (1 << 20)).unwrap();
}

/// The QEMU `--object` that holds the passphrase of images made by [`create_luks`].
pub const LUKS_SECRET: &str = "secret,id=sec0,data=password";

/// A 16 MiB qcow2 image encrypted with LUKS (passphrase in [`LUKS_SECRET`]).
pub fn create_luks(path: &str) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        LUKS_SECRET,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        path,
        "16M",
    ]);
}
