//! Flag groups that several commands share (clap `Args`), so that commands never borrow
//! them from one another.

use clap::Args;

use crate::image::Trust;

/// How an image is vouched for: the flags `image fetch` and `up` share.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Checksum list [default: CHECKSUM in the image's folder].
    #[arg(long, value_name = "URL")]
    pub checksum_url: Option<String>,

    /// OpenPGP key that signs the checksum list, instead of AlmaLinux's (file or URL).
    #[arg(long, value_name = "PATH|URL", requires = "signing_key_fingerprint")]
    pub signing_key: Option<String>,

    /// Full fingerprint of --signing-key (40 hex digits, as `gpg --fingerprint` prints).
    #[arg(long, value_name = "HEX", requires = "signing_key")]
    pub signing_key_fingerprint: Option<String>,

    /// Do not check the checksum list's signature; its SHA-256 is still compared. Dangerous:
    /// anyone who can change the download can change an unsigned list.
    #[arg(long, conflicts_with_all = ["signing_key", "signing_key_fingerprint"])]
    pub insecure_skip_verify: bool,
}

impl VerifyArgs {
    /// The trust these flags ask for, warning loudly when it is none.
    pub fn trust(&self) -> Trust {
        match (self.insecure_skip_verify, &self.signing_key, &self.signing_key_fingerprint) {
            (true, _, _) => {
                eprintln!(
                    "WARNING: --insecure-skip-verify: the checksum list's signature is NOT checked; nothing proves this image is genuine"
                );
                Trust::InsecureSkipVerify
            }
            (false, Some(key), Some(fingerprint)) => Trust::Key { key: key.clone(), fingerprint: fingerprint.clone() },
            _ => Trust::AlmaLinux9,
        }
    }
}
