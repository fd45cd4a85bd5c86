//! The NoCloud `user-data` and `meta-data` documents, as typed structs rendered with serde.
//!
//! Only the keys we need exist here, so a typo cannot reach a guest: a misspelt field is a
//! compile error, and the rendered document is also checked against cloud-init's published
//! schema in the tests.

use serde::Serialize;

use crate::ssh::keys::{AuthorizedKey, HostKeyPair};

/// Where the bootstrap script is written in the guest, and run from.
pub const BOOTSTRAP_PATH: &str = "/usr/local/libexec/almavmm-bootstrap";

#[derive(Debug, Serialize)]
pub struct CloudConfig {
    pub users: Vec<User>,
    /// No password logins over SSH, ever: keys only.
    pub ssh_pwauth: bool,
    /// Delete any host keys baked into the image, …
    pub ssh_deletekeys: bool,
    /// … and, should cloud-init ever have to generate keys (only when `ssh_keys` is absent
    /// on a new instance), only an ed25519 one. With `ssh_keys` present cloud-init writes
    /// those and generates nothing. (Debian 12's cloud-init schema refuses an empty list.)
    pub ssh_genkeytypes: Vec<String>,
    /// The pair the host generated and pinned: the only host key the guest will have. Absent in the seed
    /// rewritten after first boot, which must not carry the private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_keys: Option<SshKeys>,
    pub write_files: Vec<WriteFile>,
    /// Runs once per instance, in cloud-init's final stage.
    pub runcmd: Vec<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct User {
    pub name: String,
    pub shell: String,
    pub lock_passwd: bool,
    pub sudo: String,
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SshKeys {
    pub ed25519_private: String,
    pub ed25519_public: String,
}

#[derive(Debug, Serialize)]
pub struct WriteFile {
    pub path: String,
    pub permissions: String,
    pub owner: String,
    pub content: String,
}

#[derive(Debug, Serialize)]
pub struct MetaData {
    /// Stays the same for the life of the VM: a new one makes cloud-init run every
    /// per-instance module again (new host keys, re-run bootstrap).
    #[serde(rename = "instance-id")]
    pub instance_id: String,
    #[serde(rename = "local-hostname")]
    pub local_hostname: String,
}

/// What goes into a guest's configuration, chosen by the caller.
#[derive(Debug)]
pub struct GuestConfig<'a> {
    pub user: &'a str,
    pub authorized_key: &'a AuthorizedKey,
    /// `None` when rewriting the seed after first boot.
    pub host_key: Option<&'a HostKeyPair>,
    pub bootstrap_script: &'a str,
}

impl CloudConfig {
    pub fn new(cfg: &GuestConfig<'_>) -> Self {
        CloudConfig {
            users: vec![User {
                name: cfg.user.to_string(),
                shell: "/bin/bash".into(),
                lock_passwd: true,
                sudo: "ALL=(ALL) NOPASSWD:ALL".into(),
                ssh_authorized_keys: vec![cfg.authorized_key.as_str().to_string()],
            }],
            ssh_pwauth: false,
            ssh_deletekeys: true,
            ssh_genkeytypes: vec!["ed25519".into()],
            ssh_keys: cfg.host_key.map(|k| SshKeys {
                ed25519_private: k.private_openssh.clone(),
                ed25519_public: k.public_openssh.clone(),
            }),
            write_files: vec![WriteFile {
                path: BOOTSTRAP_PATH.into(),
                permissions: "0755".into(),
                owner: "root:root".into(),
                content: cfg.bootstrap_script.to_string(),
            }],
            runcmd: vec![vec![BOOTSTRAP_PATH.to_string()]],
        }
    }

    /// The `user-data` file: `#cloud-config` on the first line, then YAML.
    pub fn render(&self) -> String {
        let yaml = serde_norway::to_string(self).expect("cloud-config structs always serialise");
        format!("#cloud-config\n{yaml}")
    }
}

impl MetaData {
    pub fn render(&self) -> String {
        serde_norway::to_string(self).expect("meta-data always serialises")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ssh::keys::generate_host_key;

    pub(crate) fn sample_key() -> AuthorizedKey {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id.pub");
        std::fs::write(
            &p,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICVDaKDhPfPeNNCYAL3zS4q7M3dDVe/n/Ucb1/Y5ZdLM user@host\n",
        )
        .unwrap();
        crate::ssh::keys::read_authorized_key(&p).unwrap()
    }

    fn schema() -> jsonschema::Validator {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cloud-init/schema-cloud-config-v1.json");
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::draft4::new(&schema).unwrap()
    }

    fn as_json(user_data: &str) -> serde_json::Value {
        assert!(user_data.starts_with("#cloud-config\n"));
        serde_norway::from_str(user_data).unwrap()
    }

    #[test]
    fn user_data_passes_the_upstream_schema() {
        let key = sample_key();
        let host = generate_host_key("alma").unwrap();
        let cc = CloudConfig::new(&GuestConfig {
            user: "almalinux",
            authorized_key: &key,
            host_key: Some(&host),
            bootstrap_script: "#!/bin/sh\necho hi\n",
        });
        let doc = as_json(&cc.render());
        let errors: Vec<String> = schema().iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(doc["ssh_keys"]["ed25519_public"], host.public_openssh.as_str());
        assert_eq!(doc["ssh_genkeytypes"], serde_json::json!(["ed25519"]));
        assert_eq!(doc["users"][0]["sudo"], "ALL=(ALL) NOPASSWD:ALL");
        assert_eq!(doc["ssh_pwauth"], false);
    }

    #[test]
    fn a_misspelt_key_is_caught_by_the_schema_check() {
        // The same check as above must be able to fail: a typo'd top-level key is rejected.
        let mut doc = as_json(
            &CloudConfig::new(&GuestConfig {
                user: "almalinux",
                authorized_key: &sample_key(),
                host_key: None,
                bootstrap_script: "",
            })
            .render(),
        );
        let v = doc.as_object_mut().unwrap().remove("ssh_pwauth").unwrap();
        doc.as_object_mut().unwrap().insert("ssh_pwauht".into(), v);
        assert!(!schema().is_valid(&doc));
    }

    #[test]
    fn rewritten_seed_carries_no_private_key() {
        let cc = CloudConfig::new(&GuestConfig {
            user: "almalinux",
            authorized_key: &sample_key(),
            host_key: None,
            bootstrap_script: "",
        });
        let text = cc.render();
        assert!(!text.contains("PRIVATE KEY"));
        assert!(!text.contains("ssh_keys"));
        // The key settings stay: old image keys deleted, nothing but ed25519 ever generated.
        assert!(text.contains("ssh_deletekeys: true"));
        assert!(text.contains("ssh_genkeytypes:\n- ed25519"), "{text}");
    }

    #[test]
    fn meta_data_has_instance_id_and_hostname() {
        let md = MetaData { instance_id: "iid-almavmm-alma-1".into(), local_hostname: "alma".into() };
        assert_eq!(md.render(), "instance-id: iid-almavmm-alma-1\nlocal-hostname: alma\n");
    }
}
