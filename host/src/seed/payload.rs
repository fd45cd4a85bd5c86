//! What the seed carries besides cloud-init's two documents: the agent (binary or source
//! bundle), the kernel module's source, the bootstrap script, and a manifest of checksums.

use std::io;

use almavmm_shared::{VERSION, paths, seed};
use sha2::{Digest as _, Sha256};

use super::iso::{Contents, tee};

/// The module source tarball made by build.rs (see `super::kmod_tar`).
pub fn kmod_tarball() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/vmm_clock.tar.gz"))
}

/// The agent as the seed will carry it.
#[derive(Debug)]
pub enum AgentPayload {
    /// A static Linux binary.
    Binary(Checksummed),
    /// `agent-src.tar.gz`, built in the guest by the bootstrap.
    SourceBundle(Checksummed),
    /// Nothing: the seed is still valid, but the bootstrap will stop and say so.
    Missing,
}

/// The bootstrap script with this build's names and paths filled in.
pub fn bootstrap_script() -> String {
    include_str!("bootstrap.sh")
        .replace("@VERSION@", VERSION)
        .replace("@STATE_DIR@", paths::STATE_DIR)
        .replace("@BOOTSTRAP_LOG@", paths::BOOTSTRAP_LOG)
        .replace("@PAYLOAD_DIR@", seed::PAYLOAD_DIR)
        .replace("@AGENT_FILE@", seed::AGENT_FILE)
        .replace("@BUNDLE_FILE@", seed::AGENT_BUNDLE_FILE)
        .replace("@MANIFEST_FILE@", seed::MANIFEST_FILE)
        .replace("@KMOD_TARBALL@", &seed::kmod_tarball_name())
        .replace("@AGENT_BIN@", paths::AGENT_BIN)
}

/// A payload file with its SHA-256: computed at once for bytes in memory; for a file,
/// on its own thread from the very chunks that are copied onto the image (see
/// `iso::tee`), so the manifest lists exactly what the seed holds and the file is read
/// once. Such a checksum is complete only once its file has been written, which is why
/// the manifest comes after every file it lists.
#[derive(Debug)]
pub struct Checksummed {
    contents: Contents,
    digest: Digest,
}

impl Checksummed {
    pub fn bytes(b: Vec<u8>) -> Checksummed {
        let digest = Digest::Ready(hex::encode(Sha256::digest(&b)));
        Checksummed { contents: Contents::Bytes(b), digest }
    }

    /// An open file, copied onto the seed from its start; its size is taken now.
    pub fn file(file: std::fs::File) -> io::Result<Checksummed> {
        let len = file.metadata()?.len();
        let (tee, chunks) = tee();
        let digest = Digest::Pending(std::thread::spawn(move || {
            let mut hasher = Sha256::new();
            let seen = chunks.for_each(|chunk| hasher.update(chunk));
            if seen != len {
                return Err(io::Error::other(format!("only {seen} of its {len} bytes were copied")));
            }
            Ok(hex::encode(hasher.finalize()))
        }));
        Ok(Checksummed { contents: Contents::File { file, len, tee: Some(tee) }, digest })
    }
}

#[derive(Debug)]
enum Digest {
    Ready(String),
    Pending(std::thread::JoinHandle<io::Result<String>>),
}

impl Digest {
    fn finish(self) -> io::Result<String> {
        match self {
            Digest::Ready(h) => Ok(h),
            Digest::Pending(t) => t.join().map_err(|_| io::Error::other("the checksum thread panicked"))?,
        }
    }
}

/// (file name in `almavmm/`, contents, mode) for every payload file, manifest last. The
/// manifest's bytes are made when its turn comes to be written: its length is known now,
/// since every line is 64 hex digits, two spaces and a name.
pub fn payload_files(agent: AgentPayload) -> Vec<(String, Contents, u32)> {
    let mut checksummed: Vec<(String, Checksummed, u32)> = Vec::new();
    match agent {
        AgentPayload::Binary(c) => checksummed.push((seed::AGENT_FILE.into(), c, 0o755)),
        AgentPayload::SourceBundle(c) => checksummed.push((seed::AGENT_BUNDLE_FILE.into(), c, 0o644)),
        AgentPayload::Missing => {}
    }
    checksummed.push((seed::kmod_tarball_name(), Checksummed::bytes(kmod_tarball().to_vec()), 0o644));
    let mut files = Vec::new();
    let mut pending = Vec::new();
    for (name, c, mode) in checksummed {
        files.push((name.clone(), c.contents, mode));
        pending.push((name, c.digest));
    }
    let placeholder: Vec<seed::ChecksumEntry> =
        pending.iter().map(|(name, _)| seed::ChecksumEntry { name: name.clone(), sha256: "0".repeat(64) }).collect();
    let len = seed::render_manifest(&placeholder).len() as u64;
    let make = move || {
        let mut entries = Vec::new();
        for (name, digest) in pending {
            entries.push(seed::ChecksumEntry { name, sha256: digest.finish()? });
        }
        Ok(seed::render_manifest(&entries).into_bytes())
    };
    files.push((seed::MANIFEST_FILE.into(), Contents::Later { len, make: Box::new(make) }, 0o644));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_has_every_placeholder_filled() {
        let s = bootstrap_script();
        let unfilled = s
            .split('@')
            .skip(1)
            .step_by(2)
            .find(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
        assert_eq!(unfilled, None, "unfilled placeholder in:\n{s}");
        assert!(s.contains(&format!("KMOD_TARBALL='vmm_clock-{VERSION}.tar.gz'")));
        assert!(s.starts_with("#!/bin/sh\n"));
    }

    #[test]
    fn bootstrap_is_valid_posix_sh() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bootstrap");
        std::fs::write(&p, bootstrap_script()).unwrap();
        let out = std::process::Command::new("sh").arg("-n").arg(&p).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The bootstrap's `restore_selinux_labels`, run alone under sh with a stand-in
    /// restorecon that records its arguments: (what it printed, restorecon's arguments).
    fn run_restore_labels(selinux_on: bool, have_restorecon: bool) -> (String, String) {
        let s = bootstrap_script();
        let start = s.find("restore_selinux_labels() {").unwrap();
        let end = start + s[start..].find("\n}\n").unwrap() + 3;
        let dir = tempfile::tempdir().unwrap();
        let fs = dir.path().join("selinuxfs");
        std::fs::create_dir_all(&fs).unwrap();
        if selinux_on {
            std::fs::write(fs.join("enforce"), "1\n").unwrap();
        }
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = dir.path().join("restorecon.args");
        if have_restorecon {
            let fake = bin.join("restorecon");
            std::fs::write(&fake, format!("#!/bin/sh\necho \"$*\" >'{}'\n", log.display())).unwrap();
            std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let script = format!(
            "SELINUXFS='{}'\nAGENT_BIN=/usr/local/bin/almavmm-agent\nVERSION=1.2.3\nPATH='{}':/usr/bin:/bin\n{}\nrestore_selinux_labels\n",
            fs.display(),
            bin.display(),
            &s[start..end]
        );
        let out = almavmm_shared::runner::Cmd::new("sh")
            .arg("-c")
            .arg(script)
            .timeout(std::time::Duration::from_secs(30))
            .run()
            .unwrap();
        (out.stdout, std::fs::read_to_string(&log).unwrap_or_default())
    }

    #[test]
    fn bootstrap_restores_selinux_labels_only_where_selinux_is_on() {
        let (said, args) = run_restore_labels(true, true);
        assert_eq!(args.trim(), "-R -v /usr/local/bin/almavmm-agent /usr/src/vmm_clock-1.2.3", "{said}");
        let (said, args) = run_restore_labels(false, true);
        assert!(said.contains("SELinux is off") && args.is_empty(), "{said}");
        let (said, args) = run_restore_labels(true, false);
        assert!(said.contains("restorecon is missing") && args.is_empty(), "{said}");
        let s = bootstrap_script();
        let labels = s.find("step \"selinux labels\"").unwrap();
        assert!(s.find("step \"install module source\"").unwrap() < labels);
        assert!(labels < s.find("step \"agent setup\"").unwrap(), "labels before the watcher starts");
    }

    /// (path, contents) of every entry of the embedded module tarball.
    fn kmod_entries() -> Vec<(String, Vec<u8>)> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(kmod_tarball()));
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            out.push((path, bytes));
        }
        out
    }

    #[test]
    fn kmod_tarball_holds_the_shipped_module_source_under_its_versioned_folder() {
        let entries = kmod_entries();
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        let top = format!("vmm_clock-{VERSION}");
        assert_eq!(names[0], format!("{top}/"));
        for needed in ["Makefile", "Kbuild", "vmm_clock.c"] {
            let path = format!("{top}/{needed}");
            let (_, bytes) = entries.iter().find(|(n, _)| *n == path).unwrap_or_else(|| panic!("{path} missing"));
            let source = std::fs::read(format!("{}/../kmod/{needed}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            assert_eq!(bytes, &source, "{needed} differs from kmod/{needed}");
        }
        assert!(!names.iter().any(|n| n.ends_with(".o") || n.ends_with(".ko")), "build outputs shipped: {names:?}");
    }

    #[test]
    fn kmod_tarball_bytes_depend_only_on_the_sources() {
        let files = vec![("a.c".to_string(), b"int x;".to_vec()), ("Kbuild".to_string(), b"obj-m += a.o".to_vec())];
        let a = super::super::kmod_tar::tarball("1.2.3", &files).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(a, super::super::kmod_tar::tarball("1.2.3", &files).unwrap());
        assert_ne!(a, super::super::kmod_tar::tarball("1.2.4", &files).unwrap());
    }

    fn manifest_of(files: Vec<(String, Contents, u32)>) -> (Vec<seed::ChecksumEntry>, Vec<String>) {
        let mut files = files;
        let (last, manifest, _) = files.pop().unwrap();
        assert_eq!(last, seed::MANIFEST_FILE);
        let Contents::Later { len, make } = manifest else { panic!("the manifest is made last") };
        let bytes = make().unwrap();
        assert_eq!(bytes.len() as u64, len, "the manifest's length is known in advance");
        let listed = seed::parse_checksum_list(std::str::from_utf8(&bytes).unwrap()).unwrap();
        (listed, files.into_iter().map(|(n, _, _)| n).collect())
    }

    #[test]
    fn manifest_covers_every_payload_file() {
        let agent = b"\x7fELF and the rest".to_vec();
        let (listed, names) = manifest_of(payload_files(AgentPayload::Binary(Checksummed::bytes(agent.clone()))));
        assert_eq!(listed.len(), names.len());
        let sum = |name: &str| listed.iter().find(|e| e.name == name).unwrap().sha256.clone();
        assert_eq!(sum(seed::AGENT_FILE), hex::encode(Sha256::digest(&agent)));
        assert_eq!(sum(&seed::kmod_tarball_name()), hex::encode(Sha256::digest(kmod_tarball())));
    }

    /// Write the payload onto an image as the seed does; the image's bytes, or the error.
    fn write_payload(agent: Checksummed, dir: &std::path::Path) -> Result<Vec<u8>, super::super::iso::IsoError> {
        use super::super::iso::{IsoFile, write_iso};
        let files = payload_files(AgentPayload::Binary(agent))
            .into_iter()
            .map(|(name, contents, mode)| IsoFile { path: format!("almavmm/{name}"), contents, mode })
            .collect();
        let out = dir.join("seed.iso");
        write_iso(&out, "CIDATA", files, false, almavmm_shared::atomic::Durability::Unsynced)?;
        Ok(std::fs::read(out).unwrap())
    }

    #[test]
    fn an_agent_read_from_a_file_is_on_the_image_and_in_the_manifest_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent");
        // Several copy chunks long, and not a multiple of one.
        let agent: Vec<u8> = (0..700_001u32).map(|i| (i * 7 % 256) as u8).collect();
        std::fs::write(&p, &agent).unwrap();
        let image = write_payload(Checksummed::file(std::fs::File::open(&p).unwrap()).unwrap(), dir.path()).unwrap();
        let line = format!("{}  {}\n", hex::encode(Sha256::digest(&agent)), seed::AGENT_FILE);
        assert!(image.windows(line.len()).any(|w| w == line.as_bytes()), "manifest line {line:?} missing");
        assert!(image.windows(agent.len()).any(|w| w == agent), "the agent's bytes are not on the image");
    }

    #[test]
    fn an_agent_that_shrinks_before_it_is_copied_fails_the_seed_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent");
        std::fs::write(&p, vec![1u8; 10_000]).unwrap();
        // Its size as `Checksummed::file` took it, then shrunk before the copy.
        let agent = Checksummed::file(std::fs::File::open(&p).unwrap()).unwrap();
        std::fs::write(&p, b"tiny").unwrap();
        let err = write_payload(agent, dir.path()).unwrap_err();
        assert!(err.to_string().contains(seed::AGENT_FILE) && err.to_string().contains("10000"), "{err}");
        assert!(!dir.path().join("seed.iso").exists());
    }

    #[test]
    fn module_version_is_the_workspace_version() {
        let entries = kmod_entries();
        let (_, src) = entries.iter().find(|(n, _)| n.ends_with("/vmm_clock.c")).expect("vmm_clock.c is shipped");
        let src = std::str::from_utf8(src).unwrap();
        let versions: Vec<&str> =
            src.lines().filter_map(|l| l.trim().strip_prefix("MODULE_VERSION(\"")?.strip_suffix("\");")).collect();
        assert_eq!(versions, [VERSION], "kmod/vmm_clock.c must say MODULE_VERSION(\"{VERSION}\") exactly once");
    }
}
