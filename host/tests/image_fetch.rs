//! `image::fetch` against a real HTTP server on 127.0.0.1 that serves, drops, ignores
//! ranges and 404s on demand, with checksum lists signed by keys gpg makes.

mod image_support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use almavmm_host::image::signature::SignatureError;
use almavmm_host::image::{self, ImageError, ImageSource, Trust};
use almavmm_host::state::home::Home;
use image_support::{Gpg, Mode, Server, pseudo_random, sha256_hex};

const IMAGE: &str = "images/disk.qcow2";
const LEN: usize = 3 << 20;

struct Fixture {
    server: Server,
    gpg: Gpg,
    dir: tempfile::TempDir,
    home: Home,
    image: Vec<u8>,
    key: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with_key(Gpg::new("ed25519"))
    }

    fn with_key(gpg: Gpg) -> Fixture {
        let server = Server::start();
        let image = pseudo_random(LEN, 42);
        let f_dir = tempfile::tempdir().unwrap();
        let key = gpg.write_public_key(f_dir.path());
        let home = Home::at(f_dir.path().join("state"));
        let f = Fixture { server, gpg, dir: f_dir, home, image, key };
        f.server.put(IMAGE, f.image.clone());
        f.publish_list(&format!("# disk.qcow2: {LEN} bytes\n{}  disk.qcow2\n", sha256_hex(&f.image)));
        f
    }

    /// Serve `list` as CHECKSUM with a valid detached signature.
    fn publish_list(&self, list: &str) {
        self.server.put("images/CHECKSUM", list.to_string());
        self.server.put("images/CHECKSUM.asc", self.gpg.detach_sign(list.as_bytes()));
    }

    fn source(&self) -> ImageSource {
        ImageSource {
            url: self.server.url(IMAGE),
            checksum_url: None,
            trust: Trust::Key { key: self.key.display().to_string(), fingerprint: self.gpg.fingerprint.clone() },
        }
    }

    fn sha(&self) -> String {
        sha256_hex(&self.image)
    }

    fn cached(&self) -> PathBuf {
        self.home.images_dir().join("download").join(self.sha()).join("disk.qcow2")
    }

    fn partial(&self) -> PathBuf {
        image::fetch::partial_path(&self.home, &self.sha(), "disk.qcow2")
    }

    fn image_requests(&self) -> Vec<Option<String>> {
        self.server.seen_for(IMAGE).into_iter().map(|s| s.range).collect()
    }
}

#[test]
fn full_fetch_verifies_and_a_second_fetch_downloads_nothing() {
    let f = Fixture::new();
    let got = image::fetch(&f.home, &f.source()).unwrap();
    assert_eq!(got.path, f.cached());
    assert_eq!(got.sha256, f.sha());
    assert_eq!(got.file_name, "disk.qcow2");
    assert!(got.signature_checked && got.checksum_checked && got.downloaded);
    assert_eq!(std::fs::read(&got.path).unwrap(), f.image);
    assert_eq!(std::fs::metadata(&got.path).unwrap().permissions().mode() & 0o777, 0o444);
    assert!(!f.partial().exists());
    // The signed list is kept beside the image as a record.
    assert!(got.path.with_file_name("CHECKSUM.asc").is_file());
    assert_eq!(f.image_requests(), [None]);

    f.server.clear_seen();
    let again = image::fetch(&f.home, &f.source()).unwrap();
    assert_eq!(again.path, got.path);
    assert!(!again.downloaded);
    assert_eq!(f.image_requests(), Vec::<Option<String>>::new(), "the second fetch must not touch the image");
    assert_eq!(f.server.seen_for("images/CHECKSUM").len(), 1);
}

#[test]
fn resumes_with_a_range_request_after_the_server_drops_the_connection() {
    let f = Fixture::new();
    let half = LEN / 2;
    f.server.mode(IMAGE, Mode::DropAfter { bytes: half, times: 1 });
    let got = image::fetch(&f.home, &f.source()).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), f.image);
    assert_eq!(f.image_requests(), [None, Some(format!("bytes={half}-"))]);
}

#[test]
fn a_partial_file_left_by_an_earlier_run_is_resumed() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.partial().parent().unwrap()).unwrap();
    std::fs::write(f.partial(), &f.image[..1 << 20]).unwrap();
    let got = image::fetch(&f.home, &f.source()).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), f.image);
    assert_eq!(f.image_requests(), [Some("bytes=1048576-".to_string())]);
}

#[test]
fn a_server_that_ignores_range_makes_a_clean_restart() {
    let f = Fixture::new();
    // A stale partial file of garbage: keeping any of it would fail the checksum.
    std::fs::create_dir_all(f.partial().parent().unwrap()).unwrap();
    std::fs::write(f.partial(), vec![0xee; 1 << 20]).unwrap();
    f.server.mode(IMAGE, Mode::IgnoreRange);
    let got = image::fetch(&f.home, &f.source()).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), f.image);
    assert_eq!(f.image_requests(), [Some("bytes=1048576-".to_string())], "one request, answered 200 in full");
}

#[test]
fn repeated_drops_give_up_keep_the_partial_and_a_rerun_finishes() {
    let f = Fixture::new();
    f.server.mode(IMAGE, Mode::DropAfter { bytes: 100_000, times: 10 });
    let err = image::fetch(&f.home, &f.source()).unwrap_err();
    let ImageError::Interrupted { kept, ref partial, .. } = err else { panic!("{err}") };
    assert_eq!(kept, 400_000, "four attempts of 100000 bytes each");
    assert_eq!(partial, &f.partial());
    assert!(err.to_string().contains("run the same command again to resume"), "{err}");
    assert_eq!(std::fs::metadata(f.partial()).unwrap().len(), 400_000);
    assert!(!f.cached().exists());

    f.server.mode(IMAGE, Mode::Normal);
    f.server.clear_seen();
    let got = image::fetch(&f.home, &f.source()).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), f.image);
    assert_eq!(f.image_requests(), [Some("bytes=400000-".to_string())]);
}

#[test]
fn checksum_mismatch_removes_the_download_and_says_so() {
    let f = Fixture::new();
    let wrong = "ab".repeat(32);
    f.publish_list(&format!("{wrong}  disk.qcow2\n"));
    let err = image::fetch(&f.home, &f.source()).unwrap_err();
    assert!(
        matches!(err, ImageError::ChecksumMismatch { ref expected, ref actual, .. }
        if *expected == wrong && *actual == f.sha()),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("SHA-256 mismatch for disk.qcow2") && msg.contains("partial download was removed"), "{msg}");
    let dir = f.home.images_dir().join("download").join(&wrong);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, [".lock"], "no image and no partial file may stay behind");
}

#[test]
fn missing_checksum_entry_is_refused_before_downloading() {
    let f = Fixture::new();
    f.publish_list(&format!("{}  other.qcow2\n", f.sha()));
    let err = image::fetch(&f.home, &f.source()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the checksum list {} has no SHA-256 entry for disk.qcow2 (it lists: other.qcow2)",
            f.server.url("images/CHECKSUM")
        )
    );
    assert!(f.image_requests().is_empty());
}

#[test]
fn not_found_is_a_clear_error() {
    let f = Fixture::new();
    f.server.remove(IMAGE);
    let err = image::fetch(&f.home, &f.source()).unwrap_err();
    assert!(matches!(err, ImageError::NotFound { ref url } if *url == f.server.url(IMAGE)), "{err}");
    assert!(err.to_string().contains("(HTTP 404)"));

    f.server.remove("images/CHECKSUM");
    let err = image::fetch(&f.home, &f.source()).unwrap_err();
    assert!(matches!(err, ImageError::NotFound { ref url } if url.ends_with("/images/CHECKSUM")), "{err}");
}

#[test]
fn a_bad_signature_stops_everything() {
    let f = Fixture::new();
    // Signed, then altered: the list now vouches for another file.
    let list = format!("{}  disk.qcow2\n", f.sha());
    f.server.put("images/CHECKSUM.asc", f.gpg.detach_sign(list.as_bytes()));
    f.server.put("images/CHECKSUM", format!("{}  disk.qcow2\n", "cd".repeat(32)));
    let err = image::fetch(&f.home, &f.source()).unwrap_err();
    assert!(matches!(err, ImageError::Signature { source: SignatureError::BadSignature { .. }, .. }), "{err}");
    assert!(err.to_string().contains("BAD SIGNATURE"), "{err}");
    assert!(f.image_requests().is_empty());
}

#[test]
fn a_signature_by_another_key_is_bad() {
    let f = Fixture::new();
    let other = Gpg::new("ed25519");
    let list = format!("{}  disk.qcow2\n", f.sha());
    f.server.put("images/CHECKSUM.asc", other.detach_sign(list.as_bytes()));
    let err = image::fetch(&f.home, &f.source()).unwrap_err();
    assert!(matches!(err, ImageError::Signature { source: SignatureError::BadSignature { .. }, .. }), "{err}");
}

#[test]
fn a_key_with_another_fingerprint_is_refused() {
    let f = Fixture::new();
    let mut src = f.source();
    let wrong = "0123456789ABCDEF0123456789ABCDEF01234567".to_string();
    src.trust = Trust::Key { key: f.key.display().to_string(), fingerprint: wrong.clone() };
    let err = image::fetch(&f.home, &src).unwrap_err();
    match err {
        ImageError::Signature { source: SignatureError::WrongFingerprint { expected, found }, .. } => {
            assert_eq!(expected, wrong);
            assert_eq!(found, vec![f.gpg.fingerprint.clone()]);
        }
        e => panic!("{e}"),
    }
    assert!(f.image_requests().is_empty());
}

#[test]
fn an_unsigned_list_is_refused_unless_told_otherwise() {
    let f = Fixture::new();
    f.server.remove("images/CHECKSUM.asc");
    let err = image::fetch(&f.home, &f.source()).unwrap_err();
    assert!(matches!(err, ImageError::Unsigned { .. }), "{err}");

    let mut src = f.source();
    src.trust = Trust::InsecureSkipVerify;
    let got = image::fetch(&f.home, &src).unwrap();
    assert!(!got.signature_checked && got.checksum_checked);
    assert_eq!(std::fs::read(&got.path).unwrap(), f.image);
}

#[test]
fn skipping_the_signature_still_compares_the_sha256() {
    let f = Fixture::new();
    f.server.put("images/CHECKSUM", format!("{}  disk.qcow2\n", "ef".repeat(32)));
    let mut src = f.source();
    src.trust = Trust::InsecureSkipVerify;
    let err = image::fetch(&f.home, &src).unwrap_err();
    assert!(matches!(err, ImageError::ChecksumMismatch { .. }), "{err}");
}

#[test]
fn skipping_the_signature_without_any_list_files_the_image_by_its_own_sha256() {
    let f = Fixture::new();
    f.server.remove("images/CHECKSUM");
    let mut src = f.source();
    src.trust = Trust::InsecureSkipVerify;
    let got = image::fetch(&f.home, &src).unwrap();
    assert!(!got.signature_checked && !got.checksum_checked);
    assert_eq!(got.path, f.cached());
    let dirs: Vec<String> = std::fs::read_dir(f.home.images_dir().join("download"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, [f.sha()], "the unverified download folder is gone");
}

#[test]
fn rsa_keys_and_clear_signed_lists_are_accepted() {
    let f = Fixture::with_key(Gpg::new("rsa3072"));
    image::fetch(&f.home, &f.source()).unwrap();

    let g = Fixture::new();
    let list = format!("{}  disk.qcow2\n", g.sha());
    g.server.put("images/CHECKSUM", g.gpg.clear_sign(list.as_bytes()));
    g.server.remove("images/CHECKSUM.asc");
    let got = image::fetch(&g.home, &g.source()).unwrap();
    assert!(got.signature_checked);
    assert!(g.server.seen_for("images/CHECKSUM.asc").is_empty());
}

#[test]
fn keys_that_sign_with_a_subkey_or_carry_third_party_certifications_work() {
    for gpg in [Gpg::with_signing_subkey(), Gpg::with_third_party_certification()] {
        let fpr = gpg.fingerprint.clone();
        let f = Fixture::with_key(gpg);
        let got = image::fetch(&f.home, &f.source()).unwrap_or_else(|e| panic!("{fpr}: {e}"));
        assert!(got.signature_checked);
    }
}

#[test]
fn the_key_can_come_from_a_url() {
    let f = Fixture::new();
    f.server.put("keys/key.asc", f.gpg.public_key());
    let mut src = f.source();
    src.trust = Trust::Key { key: f.server.url("keys/key.asc"), fingerprint: f.gpg.fingerprint.to_lowercase() };
    image::fetch(&f.home, &src).unwrap();
}

#[test]
fn cli_prints_the_path_and_plain_progress_lines() {
    let f = Fixture::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_almavmm-host"))
        .args(["image", "fetch", "--url", &f.server.url(IMAGE), "--signing-key"])
        .arg(&f.key)
        .args(["--signing-key-fingerprint", &f.gpg.fingerprint])
        .env("ALMAVMM_HOME", f.dir.path().join("state"))
        .env_remove("ALMAVMM_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), f.cached().display().to_string());
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("downloading disk.qcow2: ")).collect();
    assert!(lines.len() >= 5, "{stderr}");
    assert!(lines.last().unwrap().contains("3.0 MiB of 3.0 MiB (100%)"), "{stderr}");
    assert!(stderr.contains("disk.qcow2 downloaded (signature and SHA-256 verified"), "{stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_almavmm-host"))
        .args(["image", "fetch", "--url", &f.server.url(IMAGE), "--signing-key"])
        .arg(&f.key)
        .env("ALMAVMM_HOME", f.dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--signing-key needs its fingerprint");
}
