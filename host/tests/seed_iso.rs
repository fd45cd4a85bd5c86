//! `almavmm-host seed` end to end on the command line, checked with the tools a guest's
//! world uses: xorriso and isoinfo read the ISO back (Rock Ridge and Joliet views), blkid
//! sees the label cloud-init looks for, and Debian's cloud-init validates the user-data.
//!
//! These tools are installed by `.ci/run` (`cargo xtask deps --install`); a missing tool is
//! a failure here, not a skip, so CI can never pass without having checked.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_almavmm-host");

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f"]).arg(&key));
        // A stand-in agent: any ELF file will do for the seed; 5 KiB of it.
        let mut agent = b"\x7fELF".to_vec();
        agent.resize(5 * 1024, 0xAB);
        fs::write(dir.path().join("almavmm-agent"), agent).unwrap();
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn seed(&self, extra: &[&str]) -> Output {
        Command::new(BIN)
            .arg("seed")
            .args(extra)
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .output()
            .expect("run almavmm-host")
    }

    /// Temporary files (`.NAME.XXXXXX.tmp`) in the folder: a failed write must leave none.
    fn temp_files(&self) -> Vec<String> {
        self.files().into_iter().filter(|n| n.ends_with(".tmp")).collect()
    }

    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?} (install it: see .ci/run): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap()
}

fn good_seed(f: &Fixture) -> PathBuf {
    let out = f.seed(&["alma", "--ssh-key", "id_ed25519.pub", "--agent", "almavmm-agent", "-o", "seed.iso"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    f.path("seed.iso")
}

fn payload_names() -> Vec<String> {
    vec![
        "almavmm/SHA256SUMS".into(),
        "almavmm/almavmm-agent".into(),
        format!("almavmm/vmm_clock-{}.tar.gz", env!("CARGO_PKG_VERSION")),
        "meta-data".into(),
        "user-data".into(),
    ]
}

#[test]
fn xorriso_reads_back_every_file_byte_for_byte() {
    let f = Fixture::new();
    let iso = good_seed(&f);
    let out = f.path("extracted");
    run_ok(Command::new("xorriso").args(["-osirrox", "on", "-indev"]).arg(&iso).args(["-extract", "/"]).arg(&out));
    let mut found = Vec::new();
    collect(&out, &out, &mut found);
    found.sort();
    assert_eq!(found, payload_names());
    // The agent arrives intact, and the manifest vouches for every payload file.
    assert_eq!(fs::read(out.join("almavmm/almavmm-agent")).unwrap(), fs::read(f.path("almavmm-agent")).unwrap());
    assert_manifest_holds(&out);
    let ud = fs::read_to_string(out.join("user-data")).unwrap();
    assert!(ud.starts_with("#cloud-config\n"));
    let md = fs::read_to_string(out.join("meta-data")).unwrap();
    assert!(md.contains("instance-id: iid-almavmm-alma-") && md.contains("local-hostname: alma"), "{md}");
}

/// An agent of several megabytes, copied in many chunks while it is checksummed, onto a
/// seed that replaces an older one (the path that starts writeback early): every byte
/// arrives, and the manifest vouches for exactly those bytes.
#[test]
fn a_large_agent_replacing_an_old_seed_arrives_intact_and_vouched_for() {
    let f = Fixture::new();
    good_seed(&f);
    let mut agent = b"\x7fELF".to_vec();
    let mut x: u32 = 0x1234_5678;
    while agent.len() < 3 * 1024 * 1024 + 123 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        agent.push(x as u8);
    }
    fs::write(f.path("big-agent"), &agent).unwrap();
    let out = f.seed(&["alma", "--ssh-key", "id_ed25519.pub", "--agent", "big-agent", "-o", "seed.iso", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = f.path("extracted");
    run_ok(
        Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(f.path("seed.iso"))
            .args(["-extract", "/"])
            .arg(&root),
    );
    assert!(fs::read(root.join("almavmm/almavmm-agent")).unwrap() == agent, "the agent on the seed differs");
    assert_manifest_holds(&root);
}

/// `sha256sum -c` in the extracted payload folder: the manifest vouches for every file.
fn assert_manifest_holds(extracted: &Path) {
    let check = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(extracted.join("almavmm"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

#[test]
fn isoinfo_sees_real_names_through_rock_ridge_and_joliet() {
    let f = Fixture::new();
    let iso = good_seed(&f);
    let agent = fs::read(f.path("almavmm-agent")).unwrap();
    for view in ["-R", "-J"] {
        let listing = stdout(Command::new("isoinfo").arg(view).arg("-f").arg("-i").arg(&iso));
        for name in payload_names() {
            assert!(listing.lines().any(|l| l == format!("/{name}")), "{view}: /{name} missing in\n{listing}");
        }
        let got = run_ok(Command::new("isoinfo").arg(view).args(["-x", "/almavmm/almavmm-agent", "-i"]).arg(&iso));
        assert_eq!(got.stdout, agent, "{view} view of the agent differs");
    }
    // Without either extension Linux would see 8.3 names: proof the extensions carry the names.
    let plain = stdout(Command::new("isoinfo").arg("-f").arg("-i").arg(&iso));
    assert!(!plain.contains("user-data"), "{plain}");
}

#[test]
fn blkid_reports_the_label_cloud_init_looks_for() {
    let f = Fixture::new();
    let iso = good_seed(&f);
    let out = stdout(Command::new("blkid").args(["-o", "export", "-p"]).arg(&iso));
    assert!(out.lines().any(|l| l == "LABEL=CIDATA"), "{out}");
    assert!(out.lines().any(|l| l == "TYPE=iso9660"), "{out}");
}

#[test]
fn debian_cloud_init_accepts_the_user_data() {
    let f = Fixture::new();
    let iso = good_seed(&f);
    let ud = f.path("user-data");
    let got = run_ok(Command::new("isoinfo").args(["-R", "-x", "/user-data", "-i"]).arg(&iso));
    fs::write(&ud, &got.stdout).unwrap();
    let out = run_ok(Command::new("cloud-init").args(["schema", "--config-file"]).arg(&ud));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Valid"), "{:?}", out);
    // …and the same validator rejects a broken document, so the check above means something.
    fs::write(&ud, "#cloud-config\nusers: 5\nruncmd: {not: a list}\n").unwrap();
    let bad = Command::new("cloud-init").args(["schema", "--config-file"]).arg(&ud).output().unwrap();
    assert!(!bad.status.success(), "cloud-init accepted a broken user-data");
}

#[test]
fn key_material_is_private_and_pinned_under_the_name() {
    let f = Fixture::new();
    let iso = good_seed(&f);
    assert_eq!(fs::metadata(&iso).unwrap().permissions().mode() & 0o777, 0o600);
    let kh = f.path("seed.known_hosts");
    assert_eq!(fs::metadata(&kh).unwrap().permissions().mode() & 0o777, 0o600);
    let line = fs::read_to_string(&kh).unwrap();
    assert!(line.starts_with("alma ssh-ed25519 AAAA"), "{line}");
    // The pinned public key is the one whose private half the guest gets.
    let ud = String::from_utf8(run_ok(Command::new("isoinfo").args(["-R", "-x", "/user-data", "-i"]).arg(&iso)).stdout)
        .unwrap();
    let blob = line.split_whitespace().nth(2).unwrap();
    assert!(ud.contains(blob));
    assert!(ud.contains("BEGIN OPENSSH PRIVATE KEY"));
    // No private key anywhere outside the ISO.
    for name in f.files() {
        if name != "seed.iso" && name != "id_ed25519" {
            assert!(!fs::read_to_string(f.path(&name)).unwrap_or_default().contains("PRIVATE KEY"), "{name}");
        }
    }
}

fn assert_refused(f: &Fixture, args: &[&str], expect: &str) {
    let before = f.files();
    let out = f.seed(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted {args:?}");
    assert!(err.contains(expect), "{args:?}: expected {expect:?} in:\n{err}");
    assert_eq!(f.files(), before, "{args:?} left files behind");
}

#[test]
fn bad_input_is_refused_clearly_and_leaves_nothing() {
    let f = Fixture::new();
    fs::write(f.path("garbage.pub"), "this is not a key\n").unwrap();
    assert_refused(&f, &["alma", "--ssh-key", "nope.pub", "-o", "s.iso"], "cannot read SSH public key nope.pub");
    assert_refused(&f, &["alma", "--ssh-key", "garbage.pub", "-o", "s.iso"], "is not an OpenSSH public key");
    assert_refused(
        &f,
        &["alma", "--ssh-key", "id_ed25519", "-o", "s.iso"],
        "holds a private key; pass the public half",
    );
    assert_refused(&f, &["-alma", "--ssh-key", "id_ed25519.pub", "-o", "s.iso"], "");
    assert_refused(&f, &["my/vm", "--ssh-key", "id_ed25519.pub", "-o", "s.iso"], "contains '/'");
    let long = "a".repeat(64);
    assert_refused(&f, &[&long, "--ssh-key", "id_ed25519.pub", "-o", "s.iso"], "at most 63 characters");
    assert_refused(&f, &["alma", "--ssh-key", "id_ed25519.pub", "--user", "Root", "-o", "s.iso"], "user name");
    assert_refused(&f, &["alma", "--ssh-key", "id_ed25519.pub", "--hostname", "a_b", "-o", "s.iso"], "hostname");
    assert_refused(
        &f,
        &["alma", "--ssh-key", "id_ed25519.pub", "--agent", "id_ed25519.pub", "-o", "s.iso"],
        "not an ELF",
    );
}

#[test]
fn existing_output_needs_force() {
    let f = Fixture::new();
    fs::write(f.path("seed.iso"), "my precious").unwrap();
    assert_refused(&f, &["alma", "--ssh-key", "id_ed25519.pub", "-o", "seed.iso"], "already exists; pass --force");
    assert_eq!(fs::read_to_string(f.path("seed.iso")).unwrap(), "my precious");
    let out = f.seed(&["alma", "--ssh-key", "id_ed25519.pub", "-o", "seed.iso", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent given"));
}

/// A seed that cannot be written (here: its path is a folder) leaves the pin as it was:
/// the old one back in place, or none at all.
#[test]
fn a_failed_seed_leaves_the_pin_as_it_was() {
    let f = Fixture::new();
    fs::create_dir(f.path("seed.iso")).unwrap();
    let args = ["alma", "--ssh-key", "id_ed25519.pub", "-o", "seed.iso", "--force"];
    let out = f.seed(&args);
    assert!(!out.status.success());
    assert!(!f.path("seed.known_hosts").exists(), "{:?}", f.files());
    fs::write(f.path("seed.known_hosts"), "old pin\n").unwrap();
    assert!(!f.seed(&args).status.success());
    assert_eq!(fs::read_to_string(f.path("seed.known_hosts")).unwrap(), "old pin\n");
    assert_eq!(f.temp_files(), Vec::<String>::new(), "temporary files left behind");
}

/// The pin is written while the image is; if the pin cannot be written (here: its path
/// is a folder), the old seed stays as it was and no temporary image is left.
#[test]
fn a_pin_that_cannot_be_written_leaves_the_old_seed() {
    let f = Fixture::new();
    fs::write(f.path("seed.iso"), "old seed").unwrap();
    fs::create_dir(f.path("seed.known_hosts")).unwrap();
    let out = f.seed(&["alma", "--ssh-key", "id_ed25519.pub", "--agent", "almavmm-agent", "-o", "seed.iso", "--force"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write") && err.contains("seed.known_hosts"), "{err}");
    assert_eq!(fs::read_to_string(f.path("seed.iso")).unwrap(), "old seed");
    assert_eq!(f.temp_files(), Vec::<String>::new(), "temporary files left behind");
}

#[test]
fn isovfy_finds_no_structural_errors() {
    let f = Fixture::new();
    let iso = good_seed(&f);
    let out = stdout(Command::new("isovfy").arg(&iso));
    assert!(out.contains("No errors found"), "{out}");
}

/// The seed is small, but the writer must not depend on that: directories that span
/// several sectors, clashing 8.3 names and files in both folders read back in every view.
#[test]
fn many_long_names_read_back_in_every_view() {
    use almavmm_host::seed::iso::{Contents, IsoFile, write_iso};
    use almavmm_shared::atomic::Durability;

    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    let mut files = Vec::new();
    for i in 0..70 {
        let path = if i % 3 == 0 {
            format!("same-long-prefix-at-the-root-{i:02}.txt")
        } else {
            format!("payload/same-long-prefix-in-a-folder-{i:02}.data")
        };
        let body = format!("file {i}\n").repeat(i * 37);
        expected.push((path.clone(), body.clone().into_bytes()));
        files.push(IsoFile { path, contents: Contents::Bytes(body.into_bytes()), mode: 0o640 });
    }
    let iso = dir.path().join("big.iso");
    write_iso(&iso, "CIDATA", files, false, Durability::Unsynced).unwrap();

    let out = stdout(Command::new("isovfy").arg(&iso));
    assert!(out.contains("No errors found"), "{out}");
    let root = dir.path().join("x");
    run_ok(Command::new("xorriso").args(["-osirrox", "on", "-indev"]).arg(&iso).args(["-extract", "/"]).arg(&root));
    for (path, body) in &expected {
        assert_eq!(&fs::read(root.join(path)).unwrap(), body, "{path}");
        let mode = fs::metadata(root.join(path)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{path}: Rock Ridge mode");
    }
    for view in ["-R", "-J"] {
        let listing = stdout(Command::new("isoinfo").arg(view).arg("-f").arg("-i").arg(&iso));
        for (path, _) in &expected {
            assert!(listing.lines().any(|l| l == format!("/{path}")), "{view}: /{path} missing in\n{listing}");
        }
    }
    // Without the extensions: unique 8.3 names for all 70.
    let plain = stdout(Command::new("isoinfo").arg("-f").arg("-i").arg(&iso));
    let mut names: Vec<&str> = plain.lines().filter(|l| l.contains(';')).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), expected.len(), "{plain}");
}
