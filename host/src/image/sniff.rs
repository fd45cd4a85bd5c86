//! What a file is, from its first bytes, so that a file that is not qcow2 is named plainly
//! ("a gzip-compressed file", "a raw disk image with a GPT partition table") instead of
//! being called a broken qcow2.
//!
//! Magic numbers: qcow2.txt (QFI\xfb), the UEFI spec (GPT header "EFI PART" at LBA 1),
//! the MBR boot signature 0x55AA at byte 510, ECMA-119 ("CD001" at byte 32769), and the
//! gzip (RFC 1952), xz, zstd (RFC 8878) and bzip2 headers; VMDK "KDMV", VHDX "vhdxfile",
//! VirtualBox VDI 0xbeda107f at byte 64, LUKS "LUKS\xba\xbe".

use serde::Serialize;

/// Bytes [`sniff`] wants to see (it copes with fewer).
pub const SNIFF_LEN: usize = 32774;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Qcow2,
    /// A raw disk image: bytes as the guest sees them.
    Raw,
    /// Another container or compression format.
    Other,
    Empty,
}

/// The kind of file and a short description for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sniffed {
    pub format: Format,
    pub looks_like: &'static str,
    /// A raw file with a partition table: something that can boot.
    pub partitioned: bool,
}

pub fn sniff(head: &[u8]) -> Sniffed {
    let other = |looks_like| Sniffed { format: Format::Other, looks_like, partitioned: false };
    if head.is_empty() {
        return Sniffed { format: Format::Empty, looks_like: "an empty file", partitioned: false };
    }
    if head.starts_with(super::qcow2::MAGIC) {
        return Sniffed { format: Format::Qcow2, looks_like: "a qcow2 image", partitioned: false };
    }
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"\x1f\x8b") {
        return other("a gzip-compressed file (decompress it first)");
    }
    if at(0, b"\xfd7zXZ\x00") {
        return other("an xz-compressed file (decompress it first)");
    }
    if at(0, b"\x28\xb5\x2f\xfd") {
        return other("a zstd-compressed file (decompress it first)");
    }
    if at(0, b"BZh") {
        return other("a bzip2-compressed file (decompress it first)");
    }
    if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") {
        return other("a VMDK image (convert it with qemu-img convert -O qcow2)");
    }
    if at(0, b"vhdxfile") {
        return other("a VHDX image (convert it with qemu-img convert -O qcow2)");
    }
    if at(64, &0xbeda_107fu32.to_le_bytes()) {
        return other("a VirtualBox VDI image (convert it with qemu-img convert -O qcow2)");
    }
    if at(0, b"LUKS\xba\xbe") {
        return other("a LUKS-encrypted volume");
    }
    if at(0, b"<!DOCTYPE") || at(0, b"<html") || at(0, b"<HTML") || at(0, b"<?xml") {
        return other("an HTML or XML page (a web server's error page, not an image)");
    }
    let raw = |looks_like, partitioned| Sniffed { format: Format::Raw, looks_like, partitioned };
    if at(512, b"EFI PART") {
        return raw("a raw disk image with a GPT partition table", true);
    }
    if at(32769, b"CD001") {
        return raw("an ISO 9660 image (a CD/DVD, not a disk)", false);
    }
    if at(510, b"\x55\xaa") {
        return raw("a raw disk image with an MBR partition table", true);
    }
    raw("unrecognised data (no qcow2 header and no partition table)", false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_it_sees() {
        assert_eq!(sniff(b"").format, Format::Empty);
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03").format, Format::Qcow2);
        assert!(sniff(b"\x1f\x8b\x08\0").looks_like.contains("gzip"));
        assert!(sniff(b"<!DOCTYPE html>").looks_like.contains("error page"));
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let s = sniff(&mbr);
        assert_eq!((s.format, s.partitioned), (Format::Raw, true));
        assert!(s.looks_like.contains("MBR"));
        let mut gpt = mbr.clone();
        gpt.extend_from_slice(b"EFI PART");
        assert!(sniff(&gpt).looks_like.contains("GPT"));
        let s = sniff(&[7u8; 4096]);
        assert_eq!((s.format, s.partitioned), (Format::Raw, false));
    }
}
