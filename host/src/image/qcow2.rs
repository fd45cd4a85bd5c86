//! Our own qcow2 reader: the header, its extensions and a walk of the L1/L2 tables that
//! counts compressed, zero and data clusters. Nothing here writes.
//!
//! Format: QEMU's `docs/interop/qcow2.txt` (header fields, feature bits, header extension
//! types, L1/L2 entry layouts incl. extended L2 and compressed-cluster descriptors), with
//! the limits QEMU's `block/qcow2.c` enforces when it opens an image.
//!
//! Every number read from the file is checked against the file's length or a fixed limit
//! before it sizes an allocation or a loop, so a hostile header costs at most a bounded
//! read of the file itself: the L1 table must lie inside the file and be at most 32 MiB
//! (QEMU's `QCOW_MAX_L1_SIZE`), each distinct L2 table is read once, and L2 tables must lie
//! inside the file too, so the walk is linear in the file's size.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};

use serde::Serialize;

pub const MAGIC: &[u8; 4] = b"QFI\xfb";

/// Length of the version 2 header; version 3 headers are at least 104 bytes.
const V2_HEADER_LEN: usize = 72;
const V3_MIN_HEADER_LEN: u32 = 104;
/// QEMU accepts cluster sizes from 512 B to 2 MiB.
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's QCOW_MAX_L1_SIZE: 32 MiB of L1 table.
const MAX_L1_BYTES: u64 = 32 << 20;
/// The spec caps the backing file name at 1023 bytes.
const MAX_BACKING_NAME: u32 = 1023;

const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1;

/// Incompatible feature bits (qcow2.txt, header bytes 72-79).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

const EXT_END: u32 = 0x0000_0000;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_EXTERNAL_DATA_FILE: u32 = 0x4441_5441;

/// The fixed header fields, as stored (big-endian decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub nb_snapshots: u32,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
}

/// How the image's data is encrypted (header `crypt_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    None,
    /// The legacy AES-CBC method QEMU no longer creates.
    Aes,
    Luks,
    Unknown(u32),
}

/// Algorithm of compressed clusters (header byte 104; zlib when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionType {
    Zlib,
    Zstd,
    Unknown(u8),
}

/// What the L2 tables say about each guest cluster of this one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClusterCounts {
    /// Guest clusters the virtual size spans.
    pub total: u64,
    /// Stored uncompressed in this file.
    pub data: u64,
    /// Stored compressed (L2 entry bit 62).
    pub compressed: u64,
    /// Marked as reading zeros (L2 entry bit 0, or any zero bit of an extended L2 bitmap).
    pub zero: u64,
    /// Not held by this layer: reads fall through to the backing file (or read zeros).
    pub unallocated: u64,
}

impl ClusterCounts {
    fn add(&mut self, o: &ClusterCounts) {
        self.total += o.total;
        self.data += o.data;
        self.compressed += o.compressed;
        self.zero += o.zero;
    }
}

/// One qcow2 file, as read by [`read`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Qcow2Info {
    pub version: u32,
    pub cluster_size: u64,
    pub virtual_size: u64,
    pub file_size: u64,
    /// The backing file name exactly as stored in the header.
    pub backing_file: Option<String>,
    /// From the backing-format header extension (`qcow2`, `raw`, …).
    pub backing_format: Option<String>,
    pub refcount_order: u32,
    pub incompatible_features: u64,
    /// The set bits of `incompatible_features`, named (`bit N` for unknown ones).
    pub incompatible_feature_names: Vec<String>,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub encryption: Encryption,
    pub compression_type: CompressionType,
    pub extended_l2: bool,
    pub external_data_file: Option<String>,
    pub snapshots: u32,
    pub clusters: ClusterCounts,
}

/// Names for incompatible feature bits (qcow2.txt); unknown bits as `bit N`.
pub fn feature_names(bits: u64) -> Vec<String> {
    (0..64)
        .filter(|b| bits & (1u64 << b) != 0)
        .map(|b| match b {
            0 => "dirty".to_string(),
            1 => "corrupt".to_string(),
            2 => "external_data_file".to_string(),
            3 => "compression_type".to_string(),
            4 => "extended_l2".to_string(),
            n => format!("bit {n}"),
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("not a qcow2 file (no QFI\\xfb magic)")]
    BadMagic,
    #[error("the file ends inside the qcow2 header ({got} of {needed} bytes): it is truncated (an interrupted copy?)")]
    TruncatedHeader { needed: u64, got: u64 },
    #[error("qcow2 version {0} is not supported (only 2 and 3 exist)")]
    Version(u32),
    #[error("invalid qcow2 header: {0}")]
    Invalid(String),
    #[error("the {what} at byte {offset} (+{len}) lies past the end of the file ({file_size} bytes): it is truncated")]
    PastEnd { what: &'static str, offset: u64, len: u64, file_size: u64 },
    #[error("cannot read the image: {0}")]
    Io(#[from] io::Error),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn invalid(msg: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Invalid(msg.into())
}

/// Decode and check the fixed header from the first bytes of the file (at least the first
/// 512 bytes when the file has them; fewer means a truncated file).
pub fn parse_header(head: &[u8]) -> Result<Header, Qcow2Error> {
    if head.len() < 4 || &head[..4] != MAGIC {
        return Err(Qcow2Error::BadMagic);
    }
    if head.len() < 8 {
        return Err(Qcow2Error::TruncatedHeader { needed: V2_HEADER_LEN as u64, got: head.len() as u64 });
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::Version(version));
    }
    if head.len() < V2_HEADER_LEN {
        return Err(Qcow2Error::TruncatedHeader { needed: V2_HEADER_LEN as u64, got: head.len() as u64 });
    }
    let mut h = Header {
        version,
        backing_file_offset: be64(head, 8),
        backing_file_size: be32(head, 16),
        cluster_bits: be32(head, 20),
        size: be64(head, 24),
        crypt_method: be32(head, 32),
        l1_size: be32(head, 36),
        l1_table_offset: be64(head, 40),
        nb_snapshots: be32(head, 60),
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: 4,
        header_length: V2_HEADER_LEN as u32,
        compression_type: 0,
    };
    if version == 3 {
        if head.len() < V3_MIN_HEADER_LEN as usize {
            return Err(Qcow2Error::TruncatedHeader { needed: V3_MIN_HEADER_LEN as u64, got: head.len() as u64 });
        }
        h.incompatible_features = be64(head, 72);
        h.compatible_features = be64(head, 80);
        h.autoclear_features = be64(head, 88);
        h.refcount_order = be32(head, 96);
        h.header_length = be32(head, 100);
        if h.header_length < V3_MIN_HEADER_LEN {
            return Err(invalid(format!("header length {} is below the 104 bytes of version 3", h.header_length)));
        }
        if h.header_length as usize > head.len() && head.len() < 512 {
            return Err(Qcow2Error::TruncatedHeader { needed: h.header_length as u64, got: head.len() as u64 });
        }
        if h.header_length > 104 && head.len() > 104 {
            h.compression_type = head[104];
        }
    }
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
        return Err(invalid(format!("cluster bits {} outside 9..=21", h.cluster_bits)));
    }
    if u64::from(h.header_length) > 1u64 << h.cluster_bits {
        return Err(invalid(format!("header length {} exceeds the first cluster", h.header_length)));
    }
    if h.refcount_order > 6 {
        return Err(invalid(format!("refcount order {} above 6", h.refcount_order)));
    }
    if h.backing_file_size > MAX_BACKING_NAME {
        return Err(invalid(format!("backing file name of {} bytes (at most 1023)", h.backing_file_size)));
    }
    if h.l1_table_offset & ((1u64 << h.cluster_bits) - 1) != 0 {
        return Err(invalid(format!("L1 table offset {} is not cluster-aligned", h.l1_table_offset)));
    }
    if u64::from(h.l1_size) * 8 > MAX_L1_BYTES {
        return Err(invalid(format!("L1 table of {} entries exceeds QEMU's 32 MiB limit", h.l1_size)));
    }
    if h.incompatible_features & INCOMPAT_COMPRESSION_TYPE == 0 && h.compression_type != 0 {
        return Err(invalid("compression type set without its incompatible feature bit"));
    }
    Ok(h)
}

/// Header extensions we report; unknown ones are skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub backing_format: Option<String>,
    pub external_data_file: Option<String>,
}

/// Parse the header extensions that follow the header, within the first cluster.
pub fn parse_extensions(first_cluster: &[u8], header_length: u32) -> Result<Extensions, Qcow2Error> {
    let mut ext = Extensions::default();
    let mut at = header_length as usize;
    // Each extension takes at least 8 bytes, so this loop ends within the cluster.
    while at + 8 <= first_cluster.len() {
        let typ = be32(first_cluster, at);
        let len = be32(first_cluster, at + 4) as usize;
        at += 8;
        if typ == EXT_END {
            break;
        }
        let Some(data) = first_cluster.get(at..at.saturating_add(len)) else {
            return Err(invalid(format!("header extension {typ:#010x} of {len} bytes overruns the first cluster")));
        };
        let text = || String::from_utf8_lossy(data).into_owned();
        match typ {
            EXT_BACKING_FORMAT => ext.backing_format = Some(text()),
            EXT_EXTERNAL_DATA_FILE => ext.external_data_file = Some(text()),
            _ => {}
        }
        at += len.div_ceil(8) * 8;
    }
    Ok(ext)
}

/// Read one qcow2 file: header, extensions, backing name and a count of its clusters.
pub fn read<F: Read + Seek>(f: &mut F) -> Result<Qcow2Info, Qcow2Error> {
    let file_size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    let mut head = Vec::new();
    f.by_ref().take(512).read_to_end(&mut head)?;
    let h = parse_header(&head)?;
    let cluster_size = 1u64 << h.cluster_bits;

    let first = read_at(f, file_size, "first cluster", 0, cluster_size.min(file_size))?;
    let ext = parse_extensions(&first, h.header_length)?;
    let backing_file = if h.backing_file_offset != 0 && h.backing_file_size != 0 {
        let raw = read_at(f, file_size, "backing file name", h.backing_file_offset, u64::from(h.backing_file_size))?;
        Some(String::from_utf8_lossy(&raw).into_owned())
    } else {
        None
    };
    let clusters = count_clusters(f, &h, file_size)?;
    Ok(Qcow2Info {
        version: h.version,
        cluster_size,
        virtual_size: h.size,
        file_size,
        backing_file,
        backing_format: ext.backing_format,
        refcount_order: h.refcount_order,
        incompatible_features: h.incompatible_features,
        incompatible_feature_names: feature_names(h.incompatible_features),
        compatible_features: h.compatible_features,
        autoclear_features: h.autoclear_features,
        encryption: match h.crypt_method {
            0 => Encryption::None,
            1 => Encryption::Aes,
            2 => Encryption::Luks,
            n => Encryption::Unknown(n),
        },
        compression_type: match h.compression_type {
            0 => CompressionType::Zlib,
            1 => CompressionType::Zstd,
            n => CompressionType::Unknown(n),
        },
        extended_l2: h.incompatible_features & INCOMPAT_EXTENDED_L2 != 0,
        external_data_file: ext.external_data_file,
        snapshots: h.nb_snapshots,
        clusters,
    })
}

fn read_at<F: Read + Seek>(
    f: &mut F,
    file_size: u64,
    what: &'static str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, Qcow2Error> {
    let past_end = || Qcow2Error::PastEnd { what, offset, len, file_size };
    if offset.checked_add(len).is_none_or(|end| end > file_size) {
        return Err(past_end());
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| if e.kind() == io::ErrorKind::UnexpectedEof { past_end() } else { e.into() })?;
    Ok(buf)
}

/// Walk the active L1 table and every L2 table it points to.
fn count_clusters<F: Read + Seek>(f: &mut F, h: &Header, file_size: u64) -> Result<ClusterCounts, Qcow2Error> {
    let cluster_size = 1u64 << h.cluster_bits;
    let extended = h.incompatible_features & INCOMPAT_EXTENDED_L2 != 0;
    let entry_len: u64 = if extended { 16 } else { 8 };
    let l2_entries = cluster_size / entry_len;
    let guest_clusters = h.size.div_ceil(cluster_size);
    let l1_needed = guest_clusters.div_ceil(l2_entries);
    if l1_needed > u64::from(h.l1_size) {
        return Err(invalid(format!(
            "L1 table has {} entries but the virtual size of {} bytes needs {l1_needed}",
            h.l1_size, h.size
        )));
    }
    let mut counts = ClusterCounts { total: guest_clusters, unallocated: guest_clusters, ..Default::default() };
    if l1_needed == 0 {
        return Ok(counts);
    }
    let l1 = read_at(f, file_size, "L1 table", h.l1_table_offset, l1_needed * 8)?;
    // Stats per (L2 offset, entries used): a table referenced twice is read once.
    let mut seen: HashMap<(u64, u64), ClusterCounts> = HashMap::new();
    let mut table = vec![0u8; cluster_size as usize];
    for i in 0..l1_needed {
        let l2_offset = be64(&l1, (i * 8) as usize) & L1E_OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        if !l2_offset.is_multiple_of(cluster_size) {
            return Err(invalid(format!("L1 entry {i} points to unaligned offset {l2_offset}")));
        }
        let used = (guest_clusters - i * l2_entries).min(l2_entries);
        if let Some(c) = seen.get(&(l2_offset, used)) {
            counts.add(c);
            continue;
        }
        if l2_offset.checked_add(cluster_size).is_none_or(|end| end > file_size) {
            return Err(Qcow2Error::PastEnd { what: "L2 table", offset: l2_offset, len: cluster_size, file_size });
        }
        f.seek(SeekFrom::Start(l2_offset))?;
        f.read_exact(&mut table)?;
        let c = count_l2(&table[..(used * entry_len) as usize], extended, h.version);
        counts.add(&c);
        seen.insert((l2_offset, used), c);
    }
    counts.total = guest_clusters;
    counts.unallocated = guest_clusters.saturating_sub(counts.data + counts.compressed + counts.zero);
    Ok(counts)
}

/// Classify the entries of one L2 table (only the entries the virtual size uses).
fn count_l2(entries: &[u8], extended: bool, version: u32) -> ClusterCounts {
    let entry_len = if extended { 16 } else { 8 };
    let mut c = ClusterCounts::default();
    for e in entries.chunks_exact(entry_len) {
        let word = be64(e, 0);
        if word & OFLAG_COMPRESSED != 0 {
            c.compressed += 1;
        } else if extended {
            // Extended L2: bits 0-31 of the bitmap mark allocated subclusters, 32-63 zero
            // ones; the zero flag of the standard entry is unused.
            let bitmap = be64(e, 8);
            if bitmap >> 32 != 0 {
                c.zero += 1;
            } else if word & L2E_OFFSET_MASK != 0 && bitmap & 0xffff_ffff != 0 {
                c.data += 1;
            }
        } else if version >= 3 && word & OFLAG_ZERO != 0 {
            c.zero += 1;
        } else if word & L2E_OFFSET_MASK != 0 {
            c.data += 1;
        }
    }
    c.total = (entries.len() / entry_len) as u64;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const CS: u64 = 65536;

    /// A minimal v3 image in memory: header in cluster 0, L1 in cluster 1, L2 tables from
    /// cluster 2 on.
    fn image(size: u64, l1: &[u64], l2s: &[Vec<u64>]) -> Vec<u8> {
        let mut img = vec![0u8; (CS * (2 + l2s.len() as u64)) as usize];
        img[..4].copy_from_slice(MAGIC);
        img[4..8].copy_from_slice(&3u32.to_be_bytes());
        img[20..24].copy_from_slice(&16u32.to_be_bytes());
        img[24..32].copy_from_slice(&size.to_be_bytes());
        img[36..40].copy_from_slice(&(l1.len() as u32).to_be_bytes());
        img[40..48].copy_from_slice(&CS.to_be_bytes());
        img[96..100].copy_from_slice(&4u32.to_be_bytes());
        img[100..104].copy_from_slice(&112u32.to_be_bytes());
        for (i, e) in l1.iter().enumerate() {
            let at = CS as usize + i * 8;
            img[at..at + 8].copy_from_slice(&e.to_be_bytes());
        }
        for (t, l2) in l2s.iter().enumerate() {
            for (i, e) in l2.iter().enumerate() {
                let at = (CS * (2 + t as u64)) as usize + i * 8;
                img[at..at + 8].copy_from_slice(&e.to_be_bytes());
            }
        }
        img
    }

    #[test]
    fn counts_data_compressed_and_zero_clusters() {
        let l2 = vec![(3 * CS) | (1 << 63), OFLAG_COMPRESSED | 12345, OFLAG_ZERO, 0];
        let img = image(4 * CS, &[2 * CS], &[l2]);
        let info = read(&mut Cursor::new(img)).unwrap();
        assert_eq!(info.clusters, ClusterCounts { total: 4, data: 1, compressed: 1, zero: 1, unallocated: 1 });
        assert_eq!(info.version, 3);
        assert_eq!(info.cluster_size, CS);
    }

    #[test]
    fn entries_beyond_the_virtual_size_are_ignored() {
        let l2 = vec![0, OFLAG_COMPRESSED | 1, OFLAG_COMPRESSED | 1];
        let img = image(CS, &[2 * CS], &[l2]);
        assert_eq!(read(&mut Cursor::new(img)).unwrap().clusters.compressed, 0);
    }

    #[test]
    fn huge_l1_is_refused_before_allocating() {
        let mut img = image(CS, &[0], &[]);
        img[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = read(&mut Cursor::new(img)).unwrap_err();
        assert!(err.to_string().contains("32 MiB"), "{err}");
    }

    #[test]
    fn l1_past_the_end_of_the_file_is_truncation() {
        // 4M L1 entries allowed by the 32 MiB limit, but the file is only 2 clusters.
        let mut img = image(4_000_000 * 8192 * CS, &[0], &[]);
        img[36..40].copy_from_slice(&4_000_000u32.to_be_bytes());
        let err = read(&mut Cursor::new(img)).unwrap_err();
        assert!(matches!(err, Qcow2Error::PastEnd { what: "L1 table", .. }), "{err}");
    }

    #[test]
    fn l1_smaller_than_the_virtual_size_needs_is_invalid() {
        let img = image(8193 * CS, &[0], &[]);
        assert!(read(&mut Cursor::new(img)).unwrap_err().to_string().contains("needs 2"));
    }

    #[test]
    fn a_shared_l2_table_is_read_once_and_counted_per_reference() {
        // 3 L1 entries all pointing at the same full L2 table of compressed clusters.
        let l2 = vec![OFLAG_COMPRESSED | 1; 8192];
        let img = image(3 * 8192 * CS, &[2 * CS; 3], &[l2]);
        let info = read(&mut Cursor::new(img)).unwrap();
        assert_eq!(info.clusters.compressed, 3 * 8192);
    }

    #[test]
    fn l2_past_the_end_is_truncation() {
        let img = image(CS, &[40 * CS], &[]);
        assert!(matches!(read(&mut Cursor::new(img)).unwrap_err(), Qcow2Error::PastEnd { what: "L2 table", .. }));
    }

    #[test]
    fn header_checks() {
        let good = image(CS, &[0], &[]);
        assert!(matches!(parse_header(b"QFI"), Err(Qcow2Error::BadMagic)));
        assert!(matches!(parse_header(&good[..50]), Err(Qcow2Error::TruncatedHeader { needed: 72, got: 50 })));
        assert!(matches!(parse_header(&good[..90]), Err(Qcow2Error::TruncatedHeader { needed: 104, got: 90 })));
        let mut v1 = good.clone();
        v1[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert!(matches!(parse_header(&v1), Err(Qcow2Error::Version(1))));
        let mut bits = good.clone();
        bits[20..24].copy_from_slice(&63u32.to_be_bytes());
        assert!(parse_header(&bits).unwrap_err().to_string().contains("cluster bits 63"));
        let mut backing = good.clone();
        backing[16..20].copy_from_slice(&4096u32.to_be_bytes());
        assert!(parse_header(&backing).unwrap_err().to_string().contains("1023"));
    }

    #[test]
    fn extensions_are_bounded_by_the_cluster() {
        let mut c = vec![0u8; 512];
        c[112..116].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        c[116..120].copy_from_slice(&5u32.to_be_bytes());
        c[120..125].copy_from_slice(b"qcow2");
        assert_eq!(parse_extensions(&c, 112).unwrap().backing_format.as_deref(), Some("qcow2"));
        c[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_extensions(&c, 112).is_err());
    }

    #[test]
    fn feature_names_name_known_bits() {
        assert_eq!(feature_names(0b10011 | 1 << 40), ["dirty", "corrupt", "extended_l2", "bit 40"]);
    }
}
