//! Byte encodings of the ISO 9660 structures the seed needs: volume descriptors, path
//! tables, directory records, and the SUSP/Rock Ridge entries in their System Use fields.
//!
//! Sources: ECMA-119 4th edition (2019) §8 (volume descriptors), §9.1 (directory records),
//! §9.4 (path tables), §8.4.26 (17-byte dates) and §9.1.5 (7-byte dates); IEEE P1281 SUSP
//! 1.12 (SP, CE, ER) and P1282 RRIP 1.12 (RR, PX, TF, NM); Microsoft's Joliet specification
//! (supplementary descriptor with escape `%/E`, UCS-2 big-endian names). Linux reads Rock
//! Ridge only after it has seen an `ER` entry through the root's `.` record
//! (fs/isofs/rock.c), which is why the root carries one through a continuation area, as
//! mkisofs and xorriso do.

pub const SECTOR: usize = 2048;

/// ECMA-119 "both-byte orders" 32-bit number (§7.3.3).
pub fn both_u32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// ECMA-119 "both-byte orders" 16-bit number (§7.2.3).
pub fn both_u16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

/// One moment in both the 7-byte (directory record, RRIP TF) and the 17-byte (volume
/// descriptor) forms, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub short: [u8; 7],
    pub long: [u8; 17],
}

impl Stamp {
    /// Dates outside the 7-byte form's 1900–2155 are clamped: a seed needs a plausible
    /// date, not an exact one.
    pub fn from_unix(secs: i64) -> Stamp {
        let (y, mo, d) = almavmm_shared::calendar::civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
        let y = y.clamp(1900, 2155);
        let short = [(y - 1900) as u8, mo as u8, d as u8, h as u8, mi as u8, s as u8, 0];
        let text = format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}00");
        let mut long = [0u8; 17];
        long[..16].copy_from_slice(text.as_bytes());
        Stamp { short, long }
    }
}

/// A directory record (§9.1) with `su` as its System Use field. The caller keeps the
/// record under 256 bytes (names are checked before layout).
pub fn dir_record(id: &[u8], extent: u32, size: u32, is_dir: bool, stamp: &Stamp, su: &[u8]) -> Vec<u8> {
    let pad = usize::from(id.len().is_multiple_of(2));
    let mut len = 33 + id.len() + pad + su.len();
    // Records start on even bytes; an odd System Use field gets one trailing zero, which
    // SUSP readers skip (an entry needs at least 4 bytes).
    len += len % 2;
    assert!(len <= 255, "directory record of {len} bytes for {:?}", String::from_utf8_lossy(id));
    let mut r = Vec::with_capacity(len);
    r.push(len as u8);
    r.push(0); // extended attribute record length
    r.extend_from_slice(&both_u32(extent));
    r.extend_from_slice(&both_u32(size));
    r.extend_from_slice(&stamp.short);
    r.push(if is_dir { 0x02 } else { 0x00 });
    r.push(0); // file unit size: not interleaved
    r.push(0); // interleave gap
    r.extend_from_slice(&both_u16(1)); // volume sequence number
    r.push(id.len() as u8);
    r.extend_from_slice(id);
    r.resize(r.len() + pad, 0);
    r.extend_from_slice(su);
    r.resize(len, 0);
    r
}

/// SUSP and Rock Ridge System Use entries.
pub mod susp {
    use super::{Stamp, both_u32};

    /// RRIP `RR` flags: which Rock Ridge entries follow (RRIP 1.09 §4.1.7, kept for
    /// readers that stop at an `RR` entry naming none they know).
    pub const RR_PX: u8 = 0x01;
    pub const RR_NM: u8 = 0x08;
    pub const RR_TF: u8 = 0x80;

    const ER_ID: &[u8] = b"RRIP_1991A";
    const ER_DESCRIPTOR: &[u8] =
        b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
    const ER_SOURCE: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

    fn entry(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
        let mut e = Vec::with_capacity(4 + body.len());
        e.extend_from_slice(sig);
        e.push((4 + body.len()) as u8);
        e.push(1);
        e.extend_from_slice(body);
        e
    }

    /// `SP`: SUSP is in use, no bytes skipped; first entry of the root's `.` record.
    pub fn sp() -> Vec<u8> {
        entry(b"SP", &[0xBE, 0xEF, 0])
    }

    pub fn rr(flags: u8) -> Vec<u8> {
        entry(b"RR", &[flags])
    }

    /// `CE`: more System Use entries at `block`, offset 0, `len` bytes.
    pub fn ce(block: u32, len: u32) -> Vec<u8> {
        let mut body = Vec::with_capacity(24);
        body.extend_from_slice(&both_u32(block));
        body.extend_from_slice(&both_u32(0));
        body.extend_from_slice(&both_u32(len));
        entry(b"CE", &body)
    }

    /// `ER`: the extension in use is Rock Ridge (RRIP 1.09's identifier, which RRIP 1.12
    /// readers accept and the 36-byte `PX` below matches).
    pub fn er() -> Vec<u8> {
        let mut body = vec![ER_ID.len() as u8, ER_DESCRIPTOR.len() as u8, ER_SOURCE.len() as u8, 1];
        body.extend_from_slice(ER_ID);
        body.extend_from_slice(ER_DESCRIPTOR);
        body.extend_from_slice(ER_SOURCE);
        entry(b"ER", &body)
    }

    /// `PX`: POSIX mode (with the file type bits), link count, owner and group.
    pub fn px(mode: u32, nlink: u32) -> Vec<u8> {
        let mut body = Vec::with_capacity(32);
        for v in [mode, nlink, 0, 0] {
            body.extend_from_slice(&both_u32(v));
        }
        entry(b"PX", &body)
    }

    /// `TF`: modification, access and attribute-change times, all `stamp`.
    pub fn tf(stamp: &Stamp) -> Vec<u8> {
        let mut body = vec![0x0E];
        for _ in 0..3 {
            body.extend_from_slice(&stamp.short);
        }
        entry(b"TF", &body)
    }

    /// `NM`: the real (POSIX) name.
    pub fn nm(name: &str) -> Vec<u8> {
        let mut body = vec![0];
        body.extend_from_slice(name.as_bytes());
        entry(b"NM", &body)
    }
}

/// One path table record's inputs (§9.4): directory identifier, extent, parent's number.
pub struct PathEntry<'a> {
    pub id: &'a [u8],
    pub extent: u32,
    pub parent: u16,
}

/// A type L (`big_endian == false`) or type M path table, unpadded.
pub fn path_table(entries: &[PathEntry<'_>], big_endian: bool) -> Vec<u8> {
    let mut t = Vec::new();
    for e in entries {
        t.push(e.id.len() as u8);
        t.push(0);
        t.extend_from_slice(&if big_endian { e.extent.to_be_bytes() } else { e.extent.to_le_bytes() });
        t.extend_from_slice(&if big_endian { e.parent.to_be_bytes() } else { e.parent.to_le_bytes() });
        t.extend_from_slice(e.id);
        if e.id.len() % 2 == 1 {
            t.push(0);
        }
    }
    t
}

/// Which of the two descriptors the seed has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    Primary,
    /// Supplementary, Joliet level 3.
    Joliet,
}

/// Where a descriptor's tree lives.
pub struct TreeLocation {
    pub path_table_size: u32,
    pub l_table: u32,
    pub m_table: u32,
    /// The 34-byte root directory record.
    pub root_record: Vec<u8>,
}

/// A primary (§8.4) or Joliet supplementary (§8.5) volume descriptor.
pub fn volume_descriptor(
    kind: Descriptor,
    volume_id: &str,
    space_sectors: u32,
    tree: &TreeLocation,
    stamp: &Stamp,
) -> [u8; SECTOR] {
    let mut d = [0u8; SECTOR];
    d[0] = match kind {
        Descriptor::Primary => 1,
        Descriptor::Joliet => 2,
    };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    let text = |d: &mut [u8; SECTOR], at: usize, len: usize, s: &str| match kind {
        Descriptor::Primary => {
            d[at..at + len].fill(b' ');
            d[at..at + s.len().min(len)].copy_from_slice(&s.as_bytes()[..s.len().min(len)]);
        }
        Descriptor::Joliet => {
            // UCS-2 big-endian, padded with (UCS-2) spaces; an odd-length field ends in 0.
            for pair in d[at..at + len - len % 2].chunks_mut(2) {
                pair.copy_from_slice(&[0, b' ']);
            }
            for (i, u) in s.encode_utf16().take(len / 2).enumerate() {
                d[at + 2 * i..at + 2 * i + 2].copy_from_slice(&u.to_be_bytes());
            }
        }
    };
    text(&mut d, 8, 32, ""); // system identifier
    text(&mut d, 40, 32, volume_id);
    d[80..88].copy_from_slice(&both_u32(space_sectors));
    if kind == Descriptor::Joliet {
        d[88..91].copy_from_slice(b"%/E"); // Joliet level 3
    }
    d[120..124].copy_from_slice(&both_u16(1)); // volume set size
    d[124..128].copy_from_slice(&both_u16(1)); // volume sequence number
    d[128..132].copy_from_slice(&both_u16(SECTOR as u16));
    d[132..140].copy_from_slice(&both_u32(tree.path_table_size));
    d[140..144].copy_from_slice(&tree.l_table.to_le_bytes());
    d[148..152].copy_from_slice(&tree.m_table.to_be_bytes());
    d[156..190].copy_from_slice(&tree.root_record);
    text(&mut d, 190, 128, ""); // volume set
    text(&mut d, 318, 128, ""); // publisher
    text(&mut d, 446, 128, ""); // data preparer
    text(&mut d, 574, 128, "ALMAVMM"); // application
    text(&mut d, 702, 37, ""); // copyright file
    text(&mut d, 739, 37, ""); // abstract file
    text(&mut d, 776, 37, ""); // bibliographic file
    d[813..830].copy_from_slice(&stamp.long); // creation
    d[830..847].copy_from_slice(&stamp.long); // modification
    for at in [847, 864] {
        // expiration and effective: "not specified"
        d[at..at + 16].fill(b'0');
    }
    d[881] = 1; // file structure version
    d
}

/// The volume descriptor set terminator (§8.3).
pub fn terminator() -> [u8; SECTOR] {
    let mut d = [0u8; SECTOR];
    d[0] = 255;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_both_byte_orders() {
        assert_eq!(both_u32(0x0102_0304), [4, 3, 2, 1, 1, 2, 3, 4]);
        assert_eq!(both_u16(2048), [0x00, 0x08, 0x08, 0x00]);
    }

    #[test]
    fn stamps_use_years_since_1900_and_utc() {
        // 2026-11-26 23:59:58 UTC
        let s = Stamp::from_unix(1_795_737_598);
        assert_eq!(s.short, [126, 11, 26, 23, 59, 58, 0]);
        assert_eq!(&s.long[..16], b"2026112623595800");
        assert_eq!(s.long[16], 0);
    }

    #[test]
    fn records_are_even_and_pad_even_identifiers() {
        let st = Stamp::from_unix(0);
        let r = dir_record(b"AB", 20, 2048, true, &st, &[]);
        assert_eq!(r.len(), 36); // 33 + 2 + 1 pad
        assert_eq!(r[0] as usize, r.len());
        assert_eq!(r[25], 2);
        assert_eq!(&r[33..35], b"AB");
        let r = dir_record(b"ABC", 20, 2048, false, &st, &susp::rr(susp::RR_PX));
        assert_eq!(r.len(), 42); // 33 + 3 + 5, made even
        assert_eq!(&r[36..38], b"RR");
    }

    #[test]
    fn susp_entries_say_their_own_length() {
        for e in [susp::sp(), susp::rr(0x89), susp::ce(32, 237), susp::er(), susp::px(0o100644, 1), susp::nm("x")] {
            assert_eq!(e[2] as usize, e.len(), "{:?}", &e[..2]);
            assert_eq!(e[3], 1);
        }
        // The sizes Linux's rock_check_overflow and mkisofs agree on.
        assert_eq!(susp::er().len(), 237);
        assert_eq!(susp::px(0, 0).len(), 36);
        assert_eq!(susp::tf(&Stamp::from_unix(0)).len(), 26);
    }

    #[test]
    fn path_tables_pad_odd_identifiers_and_pick_byte_order() {
        let e = [PathEntry { id: &[0], extent: 0x1C, parent: 1 }, PathEntry { id: b"AB", extent: 0x1D, parent: 1 }];
        let l = path_table(&e, false);
        assert_eq!(l, [1, 0, 0x1C, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0x1D, 0, 0, 0, 1, 0, b'A', b'B']);
        let m = path_table(&e, true);
        assert_eq!(&m[2..8], &[0, 0, 0, 0x1C, 0, 1]);
    }

    #[test]
    fn joliet_descriptor_holds_ucs2_label_and_escape() {
        let tree = TreeLocation { path_table_size: 10, l_table: 19, m_table: 20, root_record: vec![0; 34] };
        let st = Stamp::from_unix(0);
        let d = volume_descriptor(Descriptor::Joliet, "CIDATA", 100, &tree, &st);
        assert_eq!(d[0], 2);
        assert_eq!(&d[88..91], b"%/E");
        assert_eq!(&d[40..46], &[0, b'C', 0, b'I', 0, b'D']);
        assert_eq!(&d[52..54], &[0, b' ']);
        let p = volume_descriptor(Descriptor::Primary, "CIDATA", 100, &tree, &st);
        assert_eq!(&p[40..48], b"CIDATA  ");
        assert_eq!(&p[80..88], &both_u32(100));
    }
}
