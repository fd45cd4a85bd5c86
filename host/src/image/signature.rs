//! OpenPGP checks of a signed checksum list, in pure Rust (rPGP).
//!
//! Trust comes from one fingerprint given by the caller (a constant for AlmaLinux, a flag
//! for mirrors): the key file is only accepted if its primary key has exactly that
//! fingerprint, and a signature only counts if that primary key, or one of its subkeys
//! bound to it for signing, made it. This is what `gpg --verify` with the key imported and
//! its fingerprint compared by hand amounts to (AlmaLinux's wiki, "Generic Cloud"
//! verification steps), without a keyring. Both key kinds in use are covered: AlmaLinux's
//! RSA keys (the AlmaLinux 8 key signs with a subkey) and the ed25519 keys `gpg
//! --quick-gen-key` makes.
//!
//! Not checked: key or signature expiry times. The fingerprint is pinned in the source
//! or on the command line, which already says which key is current.

use pgp::composed::{CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::{KeyDetails, Tag};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error(
        "{0:?} is not a full OpenPGP fingerprint: give the 40 hex digits (v4 keys) or 64 (v6) that `gpg --fingerprint` prints (spaces allowed)"
    )]
    BadFingerprint(String),
    #[error("cannot read the signing key: {0}")]
    KeyUnreadable(String),
    #[error("the signing key file holds no key with fingerprint {expected} (it holds: {})", found.join(", "))]
    WrongFingerprint { expected: String, found: Vec<String> },
    #[error("the key with fingerprint {0} has self-signatures that do not verify: the key file is damaged or forged")]
    BadKey(String),
    #[error("the key with fingerprint {0} has been revoked by its owner")]
    Revoked(String),
    #[error("cannot read the signature: {0}")]
    SignatureUnreadable(String),
    #[error("BAD SIGNATURE: the checksum list was not signed by the key {fingerprint} ({detail})")]
    BadSignature { fingerprint: String, detail: String },
}

/// A key whose primary fingerprint matched the one we trust.
#[derive(Debug)]
pub struct TrustedKey {
    key: SignedPublicKey,
    fingerprint: String,
}

impl TrustedKey {
    /// Upper-case hex fingerprint of the primary key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Upper-case hex without spaces or a `0x` prefix; only full fingerprints (40 or 64 hex
/// digits) are accepted, since short key ids can be forged.
pub fn normalize_fingerprint(s: &str) -> Result<String, SignatureError> {
    let t: String = s.trim().trim_start_matches("0x").chars().filter(|c| !c.is_whitespace()).collect();
    if (t.len() == 40 || t.len() == 64) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_uppercase())
    } else {
        Err(SignatureError::BadFingerprint(s.to_string()))
    }
}

fn fpr_hex(key: &impl KeyDetails) -> String {
    hex::encode_upper(key.fingerprint().as_bytes())
}

/// Read a key file (ASCII-armoured or binary, one key or several) and keep the key whose
/// primary fingerprint is `expected`, after checking its self-signatures.
pub fn load_key(bytes: &[u8], expected: &str) -> Result<TrustedKey, SignatureError> {
    let expected = normalize_fingerprint(expected)?;
    let unreadable = |e: pgp::errors::Error| SignatureError::KeyUnreadable(e.to_string());
    let keys: Vec<SignedPublicKey> = if looks_armored(bytes) {
        let (iter, _) = SignedPublicKey::from_armor_many(bytes).map_err(unreadable)?;
        iter.collect::<Result<_, _>>().map_err(unreadable)?
    } else {
        SignedPublicKey::from_bytes_many(bytes).map_err(unreadable)?.collect::<Result<_, _>>().map_err(unreadable)?
    };
    if keys.is_empty() {
        return Err(SignatureError::KeyUnreadable("no public key in the file".into()));
    }
    let found: Vec<String> = keys.iter().map(|k| fpr_hex(&k.primary_key)).collect();
    let Some(key) = keys.into_iter().find(|k| fpr_hex(&k.primary_key) == expected) else {
        return Err(SignatureError::WrongFingerprint { expected, found });
    };
    // At least one user id must carry a valid self-certification. Other signatures on user
    // ids (third-party certifications, superseded SHA-1 self-signatures) are not ours to
    // judge, which is why rPGP's all-or-nothing `verify_bindings` is not used.
    let self_signed = key
        .details
        .users
        .iter()
        .any(|u| u.signatures.iter().any(|s| s.verify_certification(&key.primary_key, Tag::UserId, &u.id).is_ok()));
    if !self_signed {
        return Err(SignatureError::BadKey(expected));
    }
    if key.details.revocation_signatures.iter().any(|s| s.verify_key(&key.primary_key).is_ok()) {
        return Err(SignatureError::Revoked(expected));
    }
    Ok(TrustedKey { key, fingerprint: expected })
}

fn looks_armored(bytes: &[u8]) -> bool {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    bytes[start..].starts_with(b"-----BEGIN PGP")
}

/// Whether `text` is a clear-signed message (`-----BEGIN PGP SIGNED MESSAGE-----`), which
/// carries its signature inside instead of in a detached `.asc` file.
pub fn is_cleartext_signed(text: &str) -> bool {
    text.trim_start().starts_with("-----BEGIN PGP SIGNED MESSAGE-----")
}

/// Check a detached signature (armoured or binary) over `data`. Returns the fingerprint of
/// the (sub)key that made it.
pub fn verify_detached(key: &TrustedKey, data: &[u8], signature: &[u8]) -> Result<String, SignatureError> {
    let unreadable = |e: pgp::errors::Error| SignatureError::SignatureUnreadable(e.to_string());
    let sigs: Vec<DetachedSignature> = if looks_armored(signature) {
        let (iter, _) = DetachedSignature::from_armor_many(signature).map_err(unreadable)?;
        iter.collect::<Result<_, _>>().map_err(unreadable)?
    } else {
        DetachedSignature::from_bytes_many(signature)
            .map_err(unreadable)?
            .collect::<Result<_, _>>()
            .map_err(unreadable)?
    };
    let sigs: Vec<Signature> = sigs.into_iter().map(|s| s.signature).collect();
    verify_any(key, &sigs, data)
}

/// Check a clear-signed message and return the text that was signed.
pub fn verify_cleartext(key: &TrustedKey, text: &str) -> Result<(String, String), SignatureError> {
    let (msg, _) =
        CleartextSignedMessage::from_string(text).map_err(|e| SignatureError::SignatureUnreadable(e.to_string()))?;
    let signer = verify_any(key, msg.signatures(), msg.signed_text().as_bytes())?;
    Ok((msg.text().to_string(), signer))
}

fn verify_any(key: &TrustedKey, sigs: &[Signature], data: &[u8]) -> Result<String, SignatureError> {
    if sigs.is_empty() {
        return Err(SignatureError::SignatureUnreadable("no signature in the file".into()));
    }
    let mut last_err = String::from("no signature matched the key or its signing subkeys");
    for sig in sigs {
        match sig.verify(&key.key.primary_key, data) {
            Ok(()) => return Ok(key.fingerprint.clone()),
            Err(e) => last_err = e.to_string(),
        }
        for sub in signing_subkeys(&key.key) {
            if sig.verify(&sub.key, data).is_ok() {
                return Ok(fpr_hex(&sub.key));
            }
        }
    }
    Err(SignatureError::BadSignature { fingerprint: key.fingerprint.clone(), detail: last_err })
}

/// Subkeys bound to the primary key for signing (a valid binding signature with the sign
/// flag, and the subkey's own back-signature, RFC 9580 §5.2.1) and not revoked.
fn signing_subkeys(key: &SignedPublicKey) -> impl Iterator<Item = &SignedPublicSubKey> {
    let primary = &key.primary_key;
    key.public_subkeys.iter().filter(move |sub| {
        let bound_for_signing = sub.signatures.iter().any(|s| {
            s.typ() == Some(SignatureType::SubkeyBinding)
                && s.key_flags().sign()
                && s.verify_subkey_binding(primary, &sub.key).is_ok()
                && s.embedded_signature().is_some_and(|back| back.verify_primary_key_binding(&sub.key, primary).is_ok())
        });
        let revoked = sub.signatures.iter().any(|s| {
            s.typ() == Some(SignatureType::SubkeyRevocation) && s.verify_subkey_binding(primary, &sub.key).is_ok()
        });
        bound_for_signing && !revoked
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalised_and_short_ids_refused() {
        assert_eq!(
            normalize_fingerprint("bf18 ac28 7617 8908 d6e7  1267 d36c b86c b86b 3716").unwrap(),
            "BF18AC2876178908D6E71267D36CB86CB86B3716"
        );
        assert_eq!(normalize_fingerprint("0xBF18AC2876178908D6E71267D36CB86CB86B3716").unwrap().len(), 40);
        assert!(normalize_fingerprint("B86B3716").is_err());
        assert!(normalize_fingerprint("Z".repeat(40).as_str()).is_err());
    }

    #[test]
    fn garbage_key_is_a_clear_error() {
        let err = load_key(b"hello", "BF18AC2876178908D6E71267D36CB86CB86B3716").unwrap_err();
        assert!(matches!(err, SignatureError::KeyUnreadable(_)), "{err}");
    }

    #[test]
    fn cleartext_detection() {
        assert!(is_cleartext_signed("\n-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n"));
        assert!(!is_cleartext_signed("abc  file\n"));
    }
}
