//! Layout of the cloud-init seed medium, and the checksum-list format used both for its
//! payload manifest and for image `CHECKSUM` files.
//!
//! The seed is an ISO 9660 volume labelled `CIDATA` with `user-data` and `meta-data` at its
//! root (cloud-init's NoCloud data source) and our payload under `almavmm/`. The bootstrap
//! in the guest checks every payload file against `almavmm/SHA256SUMS` with `sha256sum -c`,
//! so the manifest is written in exactly that tool's format.

use std::fmt::Write as _;

/// Volume label cloud-init's NoCloud source looks for (it accepts `CIDATA` or `cidata`).
pub const VOLUME_ID: &str = "CIDATA";
/// Folder on the seed holding what the bootstrap installs.
pub const PAYLOAD_DIR: &str = "almavmm";
/// The agent binary, when the host has one.
pub const AGENT_FILE: &str = "almavmm-agent";
/// The agent's source bundle, used when the host has no Linux binary to give.
pub const AGENT_BUNDLE_FILE: &str = "agent-src.tar.gz";
/// sha256sum-format manifest of every other payload file.
pub const MANIFEST_FILE: &str = "SHA256SUMS";

/// File name of the kernel module's source tarball; it unpacks to `vmm_clock-VERSION/`.
pub fn kmod_tarball_name() -> String {
    format!("vmm_clock-{}.tar.gz", crate::VERSION)
}

/// One `name → sha256` entry of a checksum list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumEntry {
    pub name: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// Write a manifest in GNU `sha256sum` format (`HEX  NAME`, two spaces: text mode), sorted
/// by name so the same payload always gives the same bytes.
pub fn render_manifest(entries: &[ChecksumEntry]) -> String {
    let mut sorted: Vec<&ChecksumEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    for e in sorted {
        let _ = writeln!(out, "{}  {}", e.sha256, e.name);
    }
    out
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChecksumListError {
    #[error("line {line}: not a checksum line (expected `HEX  NAME` or `SHA256 (NAME) = HEX`): {text:?}")]
    Malformed { line: usize, text: String },
    #[error("line {line}: `{digest}` is not a SHA-256 digest (64 hex digits)")]
    BadDigest { line: usize, digest: String },
}

/// Parse a SHA-256 checksum list. Two forms are accepted, as published by distributions:
/// GNU coreutils `sha256sum` output (`HEX  NAME` or `HEX *NAME`) and the BSD/`--tag` form
/// (`SHA256 (NAME) = HEX`). Blank lines and `#` comments are skipped; lines for other
/// algorithms in BSD form (`MD5 (…) = …`) are ignored rather than rejected, since mixed
/// lists exist. A PGP clear-signed wrapper is not handled here: verify, then parse.
pub fn parse_checksum_list(text: &str) -> Result<Vec<ChecksumEntry>, ChecksumListError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some((algo, rest)) = trimmed.split_once(" (") {
            // BSD form: ALGO (NAME) = HEX
            let Some((name, digest)) = rest.rsplit_once(") = ") else {
                return Err(ChecksumListError::Malformed { line: line_no, text: line.to_string() });
            };
            if !algo.eq_ignore_ascii_case("SHA256") {
                continue;
            }
            entries.push(ChecksumEntry { name: name.to_string(), sha256: digest_of(line_no, digest)? });
            continue;
        }
        // GNU form: HEX, two characters (space + space or '*'), then the name verbatim.
        let Some((digest, rest)) = trimmed.split_once(' ') else {
            return Err(ChecksumListError::Malformed { line: line_no, text: line.to_string() });
        };
        let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*')).unwrap_or(rest);
        if name.is_empty() {
            return Err(ChecksumListError::Malformed { line: line_no, text: line.to_string() });
        }
        entries.push(ChecksumEntry { name: name.to_string(), sha256: digest_of(line_no, digest)? });
    }
    Ok(entries)
}

fn digest_of(line: usize, digest: &str) -> Result<String, ChecksumListError> {
    let d = digest.trim();
    if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(d.to_ascii_lowercase())
    } else {
        Err(ChecksumListError::BadDigest { line, digest: d.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3f5c1a09c45fe3f8c2c4b7c3c6a2e7e5d6a0f2e1d3c4b5a69788796a5b4c3d2e";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn manifest_round_trips_and_is_sorted() {
        let entries = vec![
            ChecksumEntry { name: "vmm_clock-0.1.0.tar.gz".into(), sha256: B.into() },
            ChecksumEntry { name: "almavmm-agent".into(), sha256: A.into() },
        ];
        let text = render_manifest(&entries);
        assert_eq!(text, format!("{A}  almavmm-agent\n{B}  vmm_clock-0.1.0.tar.gz\n"));
        let back = parse_checksum_list(&text).unwrap();
        assert_eq!(back[0].name, "almavmm-agent");
        assert_eq!(back[1].sha256, B);
    }

    // Format of AlmaLinux's published CHECKSUM file (repo.almalinux.org/almalinux/9/cloud/
    // x86_64/images/CHECKSUM): GNU sha256sum lines, one per image, with a comment header.
    #[test]
    fn parses_almalinux_style_checksum_file() {
        let text = format!(
            "# AlmaLinux-9-GenericCloud-9.6-20250522.x86_64.qcow2: 562822656 bytes\n\
             {A}  AlmaLinux-9-GenericCloud-9.6-20250522.x86_64.qcow2\n\
             {B}  AlmaLinux-9-GenericCloud-latest.x86_64.qcow2\n"
        );
        let list = parse_checksum_list(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].name, "AlmaLinux-9-GenericCloud-latest.x86_64.qcow2");
    }

    // BSD `sha256 -r`/`sha256sum --tag` form, as on Fedora and Rocky mirrors.
    #[test]
    fn parses_bsd_tag_form_and_skips_other_algorithms() {
        let text = format!("MD5 (x.qcow2) = 0123\nSHA256 (x.qcow2) = {}\n", A.to_uppercase());
        let list = parse_checksum_list(&text).unwrap();
        assert_eq!(list, vec![ChecksumEntry { name: "x.qcow2".into(), sha256: A.into() }]);
    }

    #[test]
    fn binary_marker_and_crlf_are_accepted() {
        let list = parse_checksum_list(&format!("{A} *disk.img\r\n")).unwrap();
        assert_eq!(list[0].name, "disk.img");
    }

    #[test]
    fn garbage_is_rejected_with_its_line() {
        assert_eq!(
            parse_checksum_list("hello\n").unwrap_err(),
            ChecksumListError::Malformed { line: 1, text: "hello".into() }
        );
        assert!(matches!(
            parse_checksum_list("\nabc  file\n").unwrap_err(),
            ChecksumListError::BadDigest { line: 2, .. }
        ));
    }
}
