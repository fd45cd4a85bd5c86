//! Inspecting an image file and its backing chain, and judging whether vmd can use it.
//!
//! The judgement follows vmd's own qcow2 reader (OpenBSD usr.sbin/vmd/vioqcow2.c:
//! `qc2_open` refuses incompatible features other than dirty/corrupt and refcount orders
//! other than 4 and wants one cluster size for every layer; `xlate` dies on the first
//! compressed cluster and ignores the zero flag; no decryption exists) and its disk
//! opening code (config.c/vmd.h: at most `VM_MAX_BASE_PER_DISK` = 4 files per disk, the
//! disk itself included), plus our own rule that base paths be absolute, so that moving a
//! folder of overlays never points them at another file.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ImageError;
use super::qcow2::{self, Encryption, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, Qcow2Info};
use super::sniff::{self, Format};

/// Version of the `inspect --json` document; bumped when a field changes meaning or goes.
pub const JSON_SCHEMA: u32 = 1;
/// vmd.h `VM_MAX_BASE_PER_DISK`: files per disk, the disk itself included.
pub const VMD_MAX_CHAIN: usize = 4;
/// How far we follow a chain before calling it hostile.
const MAX_FOLLOW: usize = 16;

/// Everything `inspect` found, plus the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub schema: u32,
    pub path: PathBuf,
    pub format: Format,
    pub looks_like: &'static str,
    /// A raw file with a partition table: a disk image `prepare` can convert.
    pub partitioned: bool,
    /// The file's own qcow2 details (`None` when it is not qcow2).
    pub qcow2: Option<Qcow2Info>,
    /// Backing files, nearest first.
    pub chain: Vec<Backing>,
    /// Whether any layer holds a compressed cluster.
    pub compressed: bool,
    pub vmd: Verdict,
}

/// One backing file as referenced by the layer above it.
#[derive(Debug, Clone, Serialize)]
pub struct Backing {
    /// The name exactly as the layer above stores it.
    pub name: String,
    pub relative: bool,
    /// Where it resolves (a relative name against the folder of the layer above, as QEMU
    /// and vmd do); `None` for names that are not file names (`json:…`, `proto://…`).
    pub path: Option<PathBuf>,
    pub exists: bool,
    pub format: Option<Format>,
    pub qcow2: Option<Qcow2Info>,
    /// Why this layer could not be read, if so.
    pub error: Option<String>,
}

/// Can vmd use the file, as it is, as the disk (or base) of a guest; if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub can_run: bool,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub code: ProblemCode,
    /// The file of the chain the problem is in.
    pub file: PathBuf,
    pub message: String,
}

/// Stable machine-readable problem names (the `code` field of `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    NotQcow2,
    CompressedClusters,
    ZeroClusters,
    RefcountOrder,
    IncompatibleFeatures,
    Corrupt,
    Encrypted,
    ClusterSizeMismatch,
    OverlayClusterSize,
    ChainTooDeep,
    RelativeBacking,
    BackingMissing,
    BackingNotQcow2,
    BackingUnreadable,
}

impl Inspection {
    /// Virtual size seen by the guest (`None` for files that are not qcow2).
    pub fn virtual_size(&self) -> Option<u64> {
        self.qcow2.as_ref().map(|q| q.virtual_size)
    }
}

/// Read `path` (and its backing files) and judge it.
pub fn inspect(path: &Path) -> Result<Inspection, ImageError> {
    let path = std::path::absolute(path).map_err(|e| ImageError::io("cannot resolve", path, e))?;
    let (sniffed, qcow2) = read_one(&path).map_err(|e| match e {
        ReadOne::Io(e) => ImageError::io("cannot read", &path, e),
        ReadOne::Qcow2(source) => ImageError::Qcow2 { path: path.clone(), source },
    })?;
    let chain = match &qcow2 {
        Some(q) => follow_chain(&path, q),
        None => Vec::new(),
    };
    let compressed =
        qcow2.iter().chain(chain.iter().filter_map(|b| b.qcow2.as_ref())).any(|q| q.clusters.compressed > 0);
    let mut insp = Inspection {
        schema: JSON_SCHEMA,
        path,
        format: sniffed.format,
        looks_like: sniffed.looks_like,
        partitioned: sniffed.partitioned,
        qcow2,
        chain,
        compressed,
        vmd: Verdict { can_run: false, problems: Vec::new() },
    };
    insp.vmd = judge(&insp);
    Ok(insp)
}

enum ReadOne {
    Io(std::io::Error),
    Qcow2(qcow2::Qcow2Error),
}

fn read_one(path: &Path) -> Result<(sniff::Sniffed, Option<Qcow2Info>), ReadOne> {
    let mut f = File::open(path).map_err(ReadOne::Io)?;
    let mut head = Vec::with_capacity(sniff::SNIFF_LEN);
    f.by_ref().take(sniff::SNIFF_LEN as u64).read_to_end(&mut head).map_err(ReadOne::Io)?;
    let sniffed = sniff::sniff(&head);
    if sniffed.format != Format::Qcow2 {
        return Ok((sniffed, None));
    }
    let info = qcow2::read(&mut std::io::BufReader::new(f)).map_err(ReadOne::Qcow2)?;
    Ok((sniffed, Some(info)))
}

fn follow_chain(top: &Path, top_info: &Qcow2Info) -> Vec<Backing> {
    let mut chain = Vec::new();
    let mut seen = vec![std::fs::canonicalize(top).unwrap_or_else(|_| top.to_path_buf())];
    let mut above = top.to_path_buf();
    let mut name = top_info.backing_file.clone();
    while let Some(n) = name.take() {
        let mut b = Backing {
            relative: !n.starts_with('/'),
            name: n.clone(),
            path: None,
            exists: false,
            format: None,
            qcow2: None,
            error: None,
        };
        if n.starts_with("json:") || n.contains("://") {
            b.error = Some("not a file name (a QEMU protocol or json: name)".into());
            chain.push(b);
            break;
        }
        let resolved = if b.relative { above.parent().unwrap_or(Path::new("/")).join(&n) } else { PathBuf::from(&n) };
        b.path = Some(resolved.clone());
        b.exists = resolved.exists();
        if !b.exists {
            chain.push(b);
            break;
        }
        let canonical = std::fs::canonicalize(&resolved).unwrap_or_else(|_| resolved.clone());
        if seen.contains(&canonical) {
            b.error = Some("the chain loops back to a file already in it".into());
            chain.push(b);
            break;
        }
        if chain.len() + 1 >= MAX_FOLLOW {
            b.error = Some(format!("stopped following the chain after {MAX_FOLLOW} files"));
            chain.push(b);
            break;
        }
        seen.push(canonical);
        match read_one(&resolved) {
            Ok((sniffed, q)) => {
                b.format = Some(sniffed.format);
                name = q.as_ref().and_then(|q| q.backing_file.clone());
                b.qcow2 = q;
            }
            Err(ReadOne::Io(e)) => b.error = Some(e.to_string()),
            Err(ReadOne::Qcow2(e)) => {
                b.format = Some(Format::Qcow2);
                b.error = Some(e.to_string());
            }
        }
        above = resolved;
        chain.push(b);
    }
    chain
}

/// The verdict for vmd, from what was read (pure).
pub fn judge(insp: &Inspection) -> Verdict {
    let Some(top) = &insp.qcow2 else {
        let message = format!(
            "not a qcow2 image: {}; vmd needs a qcow2 base for per-VM overlays (`image prepare` converts raw disk images)",
            insp.looks_like
        );
        return Verdict { can_run: false, problems: vec![problem(ProblemCode::NotQcow2, &insp.path, message)] };
    };
    let mut problems = Vec::new();
    let layers = qcow2_layers(insp, top, &mut problems);
    problems.extend(chain_depth_problem(insp));
    for (file, q) in layers {
        problems.extend(cluster_problems(file, q));
        problems.extend(header_problems(file, q, top.cluster_size));
    }
    problems.extend(overlay_cluster_size(&insp.path, top));
    Verdict { can_run: problems.is_empty(), problems }
}

fn problem(code: ProblemCode, file: &Path, message: String) -> Problem {
    Problem { code, file: file.to_path_buf(), message }
}

/// The qcow2 layers vmd would stack, top first; what is wrong with the backing
/// references on the way goes to `problems`.
fn qcow2_layers<'a>(
    insp: &'a Inspection,
    top: &'a Qcow2Info,
    problems: &mut Vec<Problem>,
) -> Vec<(&'a Path, &'a Qcow2Info)> {
    let mut layers: Vec<(&Path, &Qcow2Info)> = vec![(&insp.path, top)];
    let mut above: &Path = &insp.path;
    for b in &insp.chain {
        let file = b.path.as_deref().unwrap_or(above);
        if b.relative {
            problems.push(problem(
                ProblemCode::RelativeBacking,
                above,
                format!(
                    "backing file {:?} is a relative path: it would resolve differently if the overlay moved; rebase onto an absolute path with `qemu-img rebase -u -F qcow2 -b /absolute/path {}`",
                    b.name,
                    above.display()
                ),
            ));
        }
        if let Some(err) = &b.error {
            problems.push(problem(ProblemCode::BackingUnreadable, file, format!("backing file {:?}: {err}", b.name)));
        } else if !b.exists {
            problems.push(problem(
                ProblemCode::BackingMissing,
                above,
                format!("backing file {} does not exist", file.display()),
            ));
        } else if let Some(q) = &b.qcow2 {
            layers.push((file, q));
        } else {
            problems.push(problem(
                ProblemCode::BackingNotQcow2,
                file,
                "backing file is not qcow2: vmd only stacks qcow2 files on qcow2 files".to_string(),
            ));
        }
        above = file;
    }
    layers
}

fn chain_depth_problem(insp: &Inspection) -> Option<Problem> {
    let files = 1 + insp.chain.len();
    (files > VMD_MAX_CHAIN).then(|| {
        problem(
            ProblemCode::ChainTooDeep,
            &insp.path,
            format!(
                "the backing chain has {files} files; vmd opens at most {VMD_MAX_CHAIN} per disk (flatten it with `qemu-img convert`)"
            ),
        )
    })
}

/// Clusters vmd's reader gets wrong: it dies on compressed ones and ignores the zero flag.
fn cluster_problems(file: &Path, q: &Qcow2Info) -> Vec<Problem> {
    let c = &q.clusters;
    let mut problems = Vec::new();
    if c.compressed > 0 {
        problems.push(problem(
            ProblemCode::CompressedClusters,
            file,
            format!(
                "{} of {} clusters are compressed; vmd cannot read compressed clusters (its disk process dies on the first one: `xlate: compressed clusters unsupported`)",
                c.compressed, c.total
            ),
        ));
    }
    if c.zero > 0 {
        problems.push(problem(
            ProblemCode::ZeroClusters,
            file,
            format!(
                "{} clusters carry the qcow2 v3 zero flag, which vmd ignores: the guest would read the wrong bytes there",
                c.zero
            ),
        ));
    }
    problems
}

/// Header fields `qc2_open` refuses, and a cluster size other than the top layer's.
fn header_problems(file: &Path, q: &Qcow2Info, top_cluster_size: u64) -> Vec<Problem> {
    let mut problems = Vec::new();
    if q.refcount_order != 4 {
        problems.push(problem(
            ProblemCode::RefcountOrder,
            file,
            format!(
                "refcount order is {} ({}-bit refcounts); vmd only supports order 4 (16-bit)",
                q.refcount_order,
                1u32 << q.refcount_order
            ),
        ));
    }
    let unknown = q.incompatible_features & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
    if unknown != 0 {
        problems.push(problem(
            ProblemCode::IncompatibleFeatures,
            file,
            format!("incompatible features vmd does not know: {}", qcow2::feature_names(unknown).join(", ")),
        ));
    }
    if q.incompatible_features & INCOMPAT_CORRUPT != 0 {
        problems.push(problem(
            ProblemCode::Corrupt,
            file,
            "QEMU marked this image corrupt; check it with `qemu-img check -r all`".to_string(),
        ));
    }
    if q.encryption != Encryption::None {
        problems.push(problem(
            ProblemCode::Encrypted,
            file,
            format!("the image is encrypted ({:?}); vmd cannot decrypt disk images", q.encryption).to_lowercase(),
        ));
    }
    if q.cluster_size != top_cluster_size {
        problems.push(problem(
            ProblemCode::ClusterSizeMismatch,
            file,
            format!(
                "cluster size {} differs from the top layer's {}; vmd wants one cluster size for every layer",
                q.cluster_size, top_cluster_size
            ),
        ));
    }
    problems
}

/// The cluster size `vmctl create -b` gives every overlay: usr.sbin/vmd/vioqcow2.c
/// (1.25) `virtio_qcow2_create` writes `clustersz = 1 << 16` whatever the base has.
pub const VMCTL_OVERLAY_CLUSTER_SIZE: u64 = 65536;

/// A base whose cluster size is not the one of the overlays vmctl writes on it cannot run:
/// vioqcow2.c `qc2_open` aborts the VM's disk process when a base and its overlay differ
/// (`fatalx("%s: all disk parts must share clustersize")`). Layers below the top are
/// compared with the top by [`judge`] already.
fn overlay_cluster_size(path: &Path, top: &Qcow2Info) -> Option<Problem> {
    (top.cluster_size != VMCTL_OVERLAY_CLUSTER_SIZE).then(|| Problem {
        code: ProblemCode::OverlayClusterSize,
        file: path.to_path_buf(),
        message: format!(
            "cluster size {} is not the {VMCTL_OVERLAY_CLUSTER_SIZE} of the overlays `vmctl create -b` writes, and vmd stops a guest whose disk layers differ (`all disk parts must share clustersize`); `image prepare` converts it",
            top.cluster_size
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::qcow2::{ClusterCounts, CompressionType};

    fn layer(compressed: u64) -> Qcow2Info {
        Qcow2Info {
            version: 3,
            cluster_size: 65536,
            virtual_size: 1 << 30,
            file_size: 1 << 20,
            backing_file: None,
            backing_format: None,
            refcount_order: 4,
            incompatible_features: 0,
            incompatible_feature_names: vec![],
            compatible_features: 0,
            autoclear_features: 0,
            encryption: Encryption::None,
            compression_type: CompressionType::Zlib,
            extended_l2: false,
            external_data_file: None,
            snapshots: 0,
            clusters: ClusterCounts { total: 16384, data: 10, compressed, zero: 0, unallocated: 16374 - compressed },
        }
    }

    fn insp(top: Qcow2Info, chain: Vec<Backing>) -> Inspection {
        Inspection {
            schema: JSON_SCHEMA,
            path: "/img/top.qcow2".into(),
            format: Format::Qcow2,
            looks_like: "a qcow2 image",
            partitioned: false,
            qcow2: Some(top),
            chain,
            compressed: false,
            vmd: Verdict { can_run: false, problems: vec![] },
        }
    }

    fn codes(v: &Verdict) -> Vec<ProblemCode> {
        v.problems.iter().map(|p| p.code).collect()
    }

    fn base(name: &str, q: Qcow2Info) -> Backing {
        Backing {
            name: name.into(),
            relative: !name.starts_with('/'),
            path: Some(PathBuf::from("/img").join(name)),
            exists: true,
            format: Some(Format::Qcow2),
            qcow2: Some(q),
            error: None,
        }
    }

    #[test]
    fn a_plain_v3_image_runs() {
        let v = judge(&insp(layer(0), vec![]));
        assert!(v.can_run, "{v:?}");
    }

    #[test]
    fn every_vmd_limit_is_reported_with_its_layer() {
        let mut top = layer(0);
        top.refcount_order = 5;
        top.incompatible_features = INCOMPAT_DIRTY | qcow2::INCOMPAT_EXTENDED_L2;
        top.encryption = Encryption::Luks;
        let mut b = layer(7);
        b.cluster_size = 2 << 20;
        let v = judge(&insp(top, vec![base("base.qcow2", b)]));
        assert!(!v.can_run);
        assert_eq!(
            codes(&v),
            [
                ProblemCode::RelativeBacking,
                ProblemCode::RefcountOrder,
                ProblemCode::IncompatibleFeatures,
                ProblemCode::Encrypted,
                ProblemCode::CompressedClusters,
                ProblemCode::ClusterSizeMismatch,
            ]
        );
        let compressed = &v.problems[4];
        assert_eq!(compressed.file, Path::new("/img/base.qcow2"));
        assert!(compressed.message.starts_with("7 of 16384 clusters are compressed"), "{}", compressed.message);
        assert!(v.problems[2].message.contains("extended_l2") && !v.problems[2].message.contains("dirty"));
    }

    #[test]
    fn a_base_without_vmctls_64k_clusters_cannot_run() {
        // vioqcow2.c: overlays from `vmctl create -b` have 64 KiB clusters, and qc2_open
        // refuses a chain whose parts differ.
        for size in [4096, 32768, 2 << 20] {
            let mut top = layer(0);
            top.cluster_size = size;
            let v = judge(&insp(top, vec![]));
            assert_eq!(codes(&v), [ProblemCode::OverlayClusterSize], "{size}");
            assert!(v.problems[0].message.starts_with(&format!("cluster size {size} is not the 65536")));
            assert_eq!(v.problems[0].file, Path::new("/img/top.qcow2"));
        }
        let mut top = layer(0);
        top.cluster_size = 65536;
        assert!(judge(&insp(top, vec![])).can_run);
    }

    #[test]
    fn chains_longer_than_four_files_are_refused() {
        let chain: Vec<Backing> = (1..=4).map(|i| base(&format!("/img/b{i}.qcow2"), layer(0))).collect();
        assert!(judge(&insp(layer(0), chain[..3].to_vec())).can_run);
        assert_eq!(codes(&judge(&insp(layer(0), chain))), [ProblemCode::ChainTooDeep]);
    }

    #[test]
    fn a_raw_file_is_refused_with_the_command_that_converts_it() {
        let mut i = insp(layer(0), vec![]);
        i.qcow2 = None;
        i.looks_like = "a raw disk image with an MBR partition table";
        let v = judge(&i);
        assert!(!v.can_run);
        assert_eq!(codes(&v), [ProblemCode::NotQcow2]);
        assert_eq!(v.problems[0].file, Path::new("/img/top.qcow2"));
        assert!(v.problems[0].message.starts_with("not a qcow2 image: a raw disk image with an MBR partition table;"));
        assert!(v.problems[0].message.contains("`image prepare`"));
    }

    #[test]
    fn zero_flags_corruption_and_unreadable_backing_files_are_reported() {
        let mut top = layer(0);
        top.clusters.zero = 3;
        top.incompatible_features = INCOMPAT_CORRUPT;
        let mut broken = base("b.qcow2", layer(0));
        broken.error = Some("truncated header".into());
        let v = judge(&insp(top, vec![broken]));
        assert_eq!(
            codes(&v),
            [
                ProblemCode::RelativeBacking,
                ProblemCode::BackingUnreadable,
                ProblemCode::ZeroClusters,
                ProblemCode::Corrupt
            ]
        );
        assert_eq!(v.problems[1].message, "backing file \"b.qcow2\": truncated header");
        assert_eq!(v.problems[1].file, Path::new("/img/b.qcow2"));
        assert!(v.problems[2].message.starts_with("3 clusters carry the qcow2 v3 zero flag"));
    }

    #[test]
    fn missing_and_raw_backing_files() {
        let mut missing = base("/img/gone.qcow2", layer(0));
        missing.exists = false;
        missing.qcow2 = None;
        assert_eq!(codes(&judge(&insp(layer(0), vec![missing]))), [ProblemCode::BackingMissing]);
        let mut raw = base("/img/raw.img", layer(0));
        raw.format = Some(Format::Raw);
        raw.qcow2 = None;
        assert_eq!(codes(&judge(&insp(layer(0), vec![raw]))), [ProblemCode::BackingNotQcow2]);
    }
}
