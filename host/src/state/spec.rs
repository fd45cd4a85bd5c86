//! `vm.yaml`: what the user asked for when the guest was created. Written once by `up`,
//! read by every other command; changing it by hand is allowed and takes effect at the next
//! start where it can (memory) and is refused where it cannot (disk, image).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::name::VmName;
use super::size::ByteSize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// OpenBSD's vmd(8), driven with vmctl(8).
    Vmd,
    /// QEMU on Linux (KVM when it works, else TCG).
    Qemu,
}

impl BackendKind {
    /// The backend of the platform we run on.
    pub fn native() -> BackendKind {
        if cfg!(target_os = "openbsd") { BackendKind::Vmd } else { BackendKind::Qemu }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Vmd => "vmd",
            BackendKind::Qemu => "qemu",
        }
    }
}

/// How the image's authenticity was established, recorded so that a guest built from an
/// unverified image stays marked as such.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageTrust {
    /// CHECKSUM signed by the AlmaLinux 9 release key (fingerprint pinned in the source).
    Almalinux9,
    /// CHECKSUM signed by a key the user named, pinned by fingerprint.
    Key { key: String, fingerprint: String },
    /// `--insecure-skip-verify`: the signature was not checked.
    InsecureSkipVerify,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_url: Option<String>,
    pub trust: ImageTrust,
    /// SHA-256 of the image the disk was made from, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: VmName,
    pub backend: BackendKind,
    pub memory: ByteSize,
    /// Virtual CPUs. vmd runs guests with one; QEMU can give more.
    #[serde(default = "one_cpu")]
    pub cpus: u32,
    pub disk_size: ByteSize,
    pub image: ImageSpec,
    pub user: String,
    pub hostname: String,
    /// The user's public key; the private half (same path without `.pub`) or the agent
    /// holding it is what ssh authenticates with.
    pub ssh_key: PathBuf,
    /// cloud-init instance id, fixed for the life of the VM.
    pub instance_id: String,
}

fn one_cpu() -> u32 {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid guest spec: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl VmSpec {
    pub fn load(path: &Path) -> Result<VmSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.to_owned(), source })?;
        serde_norway::from_str(&text).map_err(|e| SpecError::Parse { path: path.to_owned(), message: e.to_string() })
    }

    pub fn save(&self, path: &Path) -> Result<(), SpecError> {
        let text = format!(
            "# almavmm guest spec, written by `almavmm-host up`.\n{}",
            serde_norway::to_string(self).expect("spec serialises")
        );
        almavmm_shared::atomic::write_file(path, text.as_bytes(), 0o600)
            .map_err(|source| SpecError::Write { path: path.to_owned(), source })
    }

    /// The identity file to offer ssh: the private key next to the public one if present,
    /// else the public key itself (ssh then asks the agent for its private half).
    pub fn identity_file(&self) -> PathBuf {
        let private = self.ssh_key.with_extension("");
        if self.ssh_key.extension().is_some_and(|e| e == "pub") && private.is_file() {
            private
        } else {
            self.ssh_key.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmSpec {
        VmSpec {
            name: "alma".parse().unwrap(),
            backend: BackendKind::Qemu,
            memory: ByteSize::gib(2),
            cpus: 1,
            disk_size: ByteSize::gib(20),
            image: ImageSpec {
                url: "https://example.org/a.qcow2".into(),
                checksum_url: None,
                trust: ImageTrust::InsecureSkipVerify,
                sha256: None,
            },
            user: "almalinux".into(),
            hostname: "alma".into(),
            ssh_key: "/home/me/.ssh/id_ed25519.pub".into(),
            instance_id: "iid-almavmm-alma-0a".into(),
        }
    }

    #[test]
    fn round_trips_through_yaml_readably() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.yaml");
        sample().save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("memory: 2G\n") && text.contains("trust: insecure-skip-verify\n"), "{text}");
        assert_eq!(VmSpec::load(&p).unwrap(), sample());
    }

    #[test]
    fn hand_edits_with_mistakes_are_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.yaml");
        sample().save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap().replace("memory: 2G", "memory: lots");
        std::fs::write(&p, text).unwrap();
        let e = VmSpec::load(&p).unwrap_err().to_string();
        assert!(e.contains("vm.yaml is not a valid guest spec") && e.contains("\"lots\" is not a size"), "{e}");
    }

    #[test]
    fn identity_prefers_the_private_half_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sample();
        s.ssh_key = dir.path().join("id.pub");
        assert_eq!(s.identity_file(), s.ssh_key);
        std::fs::write(dir.path().join("id"), "k").unwrap();
        assert_eq!(s.identity_file(), dir.path().join("id"));
    }
}
