//! SSH keys the host handles: the user's public key (checked before it goes into a seed)
//! and the guest's host key pair, generated here so the host can pin it before the guest
//! ever answers (no trust on first use).

use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read SSH public key {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds a private key; pass the public half instead (usually the same path with `.pub` appended)")]
    PrivateGiven { path: PathBuf },
    #[error("{path} is not an OpenSSH public key (expected one line like `ssh-ed25519 AAAA… comment`): {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("could not generate the guest host key: {0}")]
    Generate(String),
}

/// A user's public key, as one validated `authorized_keys` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey(String);

impl AuthorizedKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Read and check the user's public key file. The first non-blank, non-comment line must
/// parse as an OpenSSH public key; private keys are recognised and refused by name, since
/// putting one in a seed would hand it to the guest.
pub fn read_authorized_key(path: &Path) -> Result<AuthorizedKey, KeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| KeyError::Unreadable { path: path.to_owned(), source })?;
    parse_authorized_key(&text).map_err(|e| match e {
        ParseKeyError::Private => KeyError::PrivateGiven { path: path.to_owned() },
        ParseKeyError::Malformed(reason) => KeyError::Malformed { path: path.to_owned(), reason },
    })
}

#[derive(Debug, PartialEq, Eq)]
enum ParseKeyError {
    Private,
    Malformed(String),
}

fn parse_authorized_key(text: &str) -> Result<AuthorizedKey, ParseKeyError> {
    if text.contains("PRIVATE KEY-----") {
        return Err(ParseKeyError::Private);
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| ParseKeyError::Malformed("the file is empty".into()))?;
    let key = PublicKey::from_openssh(line).map_err(|e| ParseKeyError::Malformed(e.to_string()))?;
    let canonical = key.to_openssh().map_err(|e| ParseKeyError::Malformed(e.to_string()))?;
    Ok(AuthorizedKey(canonical))
}

/// A guest host key pair in OpenSSH formats, as cloud-init's `ssh_keys` wants it.
#[derive(Clone)]
pub struct HostKeyPair {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` … ; never written outside the seed.
    pub private_openssh: String,
    /// `ssh-ed25519 AAAA… comment`
    pub public_openssh: String,
}

impl std::fmt::Debug for HostKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeyPair").field("public_openssh", &self.public_openssh).finish_non_exhaustive()
    }
}

/// Generate a fresh ed25519 host key for a guest.
pub fn generate_host_key(comment: &str) -> Result<HostKeyPair, KeyError> {
    let mut key =
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).map_err(|e| KeyError::Generate(e.to_string()))?;
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF).map_err(|e| KeyError::Generate(e.to_string()))?;
    let public = key.public_key().to_openssh().map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(HostKeyPair { private_openssh: private.to_string(), public_openssh: public })
}

/// The `known_hosts` line that pins `public_openssh` under `alias`. ssh is always called
/// with `HostKeyAlias=alias`, so the guest's address (which may change) plays no part.
pub fn known_hosts_line(alias: &str, public_openssh: &str) -> String {
    let mut parts = public_openssh.split_whitespace();
    let algo = parts.next().unwrap_or_default();
    let blob = parts.next().unwrap_or_default();
    format!("{alias} {algo} {blob}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Format of ssh-keygen(1) output (OpenSSH 9.x `ssh-keygen -t ed25519`).
    const ED25519_PUB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICVDaKDhPfPeNNCYAL3zS4q7M3dDVe/n/Ucb1/Y5ZdLM user@host\n";

    #[test]
    fn accepts_a_public_key_and_keeps_its_comment() {
        let k = parse_authorized_key(ED25519_PUB).unwrap();
        assert_eq!(k.as_str(), ED25519_PUB.trim());
    }

    #[test]
    fn skips_comments_and_blank_lines() {
        let k = parse_authorized_key(&format!("# mine\n\n{ED25519_PUB}")).unwrap();
        assert!(k.as_str().starts_with("ssh-ed25519 "));
    }

    #[test]
    fn refuses_private_keys_by_name() {
        let pair = generate_host_key("x").unwrap();
        assert_eq!(parse_authorized_key(&pair.private_openssh), Err(ParseKeyError::Private));
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(parse_authorized_key(pem), Err(ParseKeyError::Private));
    }

    #[test]
    fn refuses_garbage_and_empty_files() {
        assert!(matches!(parse_authorized_key("hello world\n"), Err(ParseKeyError::Malformed(_))));
        assert!(matches!(parse_authorized_key("ssh-ed25519 notbase64!!\n"), Err(ParseKeyError::Malformed(_))));
        assert_eq!(parse_authorized_key("\n"), Err(ParseKeyError::Malformed("the file is empty".into())));
    }

    #[test]
    fn generated_host_keys_are_distinct_ed25519_pairs() {
        let a = generate_host_key("guest").unwrap();
        let b = generate_host_key("guest").unwrap();
        assert!(a.private_openssh.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(a.public_openssh.starts_with("ssh-ed25519 ") && a.public_openssh.ends_with(" guest"));
        assert_ne!(a.public_openssh, b.public_openssh);
        // The public half is the one derived from the private half.
        let priv_key = PrivateKey::from_openssh(&a.private_openssh).unwrap();
        assert_eq!(priv_key.public_key().to_openssh().unwrap(), a.public_openssh);
    }

    #[test]
    fn known_hosts_line_pins_under_the_alias_without_comment() {
        let line = known_hosts_line("alma", ED25519_PUB.trim());
        assert_eq!(line, "alma ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICVDaKDhPfPeNNCYAL3zS4q7M3dDVe/n/Ucb1/Y5ZdLM\n");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = read_authorized_key(Path::new("/nonexistent/id.pub")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read SSH public key /nonexistent/id.pub"), "{err}");
    }
}
