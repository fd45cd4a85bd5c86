//! The cloud-init NoCloud seed: what goes on it (pure) and writing it (thin).

pub mod cloud_config;
pub mod iso;
// Compiled into build.rs, which makes the tarball; here only for its tests.
#[cfg(test)]
mod kmod_tar;
pub mod payload;

use std::path::Path;

use almavmm_shared::seed as layout;

use crate::ssh::keys::{AuthorizedKey, HostKeyPair};
use almavmm_shared::atomic::Durability;
use cloud_config::{CloudConfig, GuestConfig, MetaData};
use iso::{Contents, IsoFile};
pub use payload::{AgentPayload, Checksummed};

/// Everything that decides a seed's contents.
#[derive(Debug)]
pub struct SeedInputs<'a> {
    pub hostname: &'a str,
    pub user: &'a str,
    pub authorized_key: &'a AuthorizedKey,
    /// Fixed for the life of the VM.
    pub instance_id: &'a str,
    /// The guest's host key pair; `None` for the seed rewritten after first boot.
    pub host_key: Option<&'a HostKeyPair>,
    /// Owned: a multi-megabyte agent is moved into the image, never copied.
    pub agent: AgentPayload,
}

/// The files of the seed, in the order they are written.
pub fn seed_files(inputs: SeedInputs<'_>) -> Vec<IsoFile> {
    let payload = payload::payload_files(inputs.agent);
    let script = payload::bootstrap_script();
    let user_data = CloudConfig::new(&GuestConfig {
        user: inputs.user,
        authorized_key: inputs.authorized_key,
        host_key: inputs.host_key,
        bootstrap_script: &script,
    })
    .render();
    let meta_data =
        MetaData { instance_id: inputs.instance_id.to_string(), local_hostname: inputs.hostname.to_string() }.render();
    // user-data may hold the private host key: readable by root only inside the guest too.
    let mut files = vec![
        IsoFile { path: "meta-data".into(), contents: Contents::Bytes(meta_data.into_bytes()), mode: 0o644 },
        IsoFile { path: "user-data".into(), contents: Contents::Bytes(user_data.into_bytes()), mode: 0o600 },
    ];
    for (name, contents, mode) in payload {
        files.push(IsoFile { path: format!("{}/{name}", layout::PAYLOAD_DIR), contents, mode });
    }
    files
}

/// Write the seed ISO to `out` atomically (mode 0600); returns its size.
pub fn write_seed(
    out: &Path,
    inputs: SeedInputs<'_>,
    replace: bool,
    durability: Durability,
) -> Result<u64, iso::IsoError> {
    iso::write_iso(out, layout::VOLUME_ID, seed_files(inputs), replace, durability)
}

/// [`write_seed`] up to the rename, for a caller that puts the seed's pin in place first.
pub fn stage_seed(
    out: &Path,
    inputs: SeedInputs<'_>,
    replace: bool,
    durability: Durability,
) -> Result<iso::StagedIso, iso::IsoError> {
    iso::stage_iso(out, layout::VOLUME_ID, seed_files(inputs), replace, durability)
}

/// A new instance id for a new VM: the name plus randomness, so that a VM destroyed and
/// created again under the same name is a new instance to cloud-init.
pub fn new_instance_id(name: &str) -> String {
    let mut bytes = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    format!("iid-almavmm-{name}-{}", hex::encode(bytes))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestIdError {
    #[error("hostname {0:?} is not valid: use labels of letters, digits and '-', each 1 to 63 long, separated by '.'")]
    Hostname(String),
    #[error(
        "user name {0:?} is not valid: start with a lower-case letter or '_', then lower-case letters, digits, '_' or '-', at most 32"
    )]
    User(String),
}

/// Check a hostname (RFC 1123).
pub fn check_hostname(h: &str) -> Result<(), GuestIdError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok { Ok(()) } else { Err(GuestIdError::Hostname(h.to_string())) }
}

/// The hostname a guest gets when none is given: its name, made hostname-safe.
pub fn default_hostname(vm_name: &str) -> String {
    vm_name.to_ascii_lowercase().replace('_', "-").trim_matches(['-', '.']).to_string()
}

/// Check a login name the way useradd's default `NAME_REGEX` does.
pub fn check_user(u: &str) -> Result<(), GuestIdError> {
    let mut chars = u.chars();
    let ok = u.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok { Ok(()) } else { Err(GuestIdError::User(u.to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(check_hostname("alma").is_ok());
        assert!(check_hostname("alma-9.lab").is_ok());
        for bad in ["", "-a", "a-", "a_b", "a..b", &"x".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
        assert_eq!(default_hostname("My_VM.1"), "my-vm.1");
        assert!(check_hostname(&default_hostname("web_01")).is_ok());
    }

    #[test]
    fn users() {
        assert!(check_user("almalinux").is_ok());
        assert!(check_user("_svc-1").is_ok());
        for bad in ["", "Root", "1abc", "a b", &"a".repeat(33)] {
            assert!(check_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_ids_are_unique_per_creation() {
        let a = new_instance_id("alma");
        assert!(a.starts_with("iid-almavmm-alma-"));
        assert_ne!(a, new_instance_id("alma"));
    }

    #[test]
    fn seed_lays_out_cloud_init_files_at_root_and_payload_below() {
        let key = cloud_config::tests::sample_key();
        let files = seed_files(SeedInputs {
            hostname: "alma",
            user: "almalinux",
            authorized_key: &key,
            instance_id: "iid-1",
            host_key: None,
            agent: AgentPayload::Missing,
        });
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths[..2], ["meta-data", "user-data"]);
        assert!(paths.contains(&"almavmm/SHA256SUMS"));
        assert!(!paths.contains(&"almavmm/almavmm-agent"));
        let Contents::Bytes(ud) = &files[1].contents else { panic!("user-data is made in memory") };
        let ud = String::from_utf8(ud.clone()).unwrap();
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(ud.contains("almavmm-bootstrap"));
    }
}
