//! Our qcow2 reader on files qemu-img makes, checked against what qemu-img itself says.

mod image_support;

use std::path::{Path, PathBuf};

use almavmm_host::image::qcow2::{Encryption, Qcow2Error};
use almavmm_host::image::sniff::Format;
use almavmm_host::image::{self, ImageError, ProblemCode};
use image_support::{compressed_in_map, map_says_compressed, pseudo_random, qemu_img, raw_disk};

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir { tmp: tempfile::tempdir().unwrap() }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }

    /// A 64 MiB raw disk with 2 MiB of random data and 2 MiB of text.
    fn raw(&self) -> String {
        let name = "source.raw";
        if !self.p(name).exists() {
            raw_disk(&self.p(name), 64 << 20, 2 << 20);
        }
        self.s(name)
    }

    /// qemu-img convert of the raw disk with extra arguments.
    fn convert(&self, name: &str, extra: &[&str]) -> String {
        let raw = self.raw();
        let out = self.s(name);
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(extra);
        args.push(&raw);
        args.push(&out);
        qemu_img(&args);
        out
    }
}

fn codes(i: &image::Inspection) -> Vec<ProblemCode> {
    i.vmd.problems.iter().map(|p| p.code).collect()
}

/// Our compressed verdict must match qemu-img map's on every image.
fn agrees(file: &str, pre: &[&str]) -> image::Inspection {
    let ours = image::inspect(Path::new(file)).unwrap();
    assert_eq!(Some(ours.compressed), map_says_compressed(pre, file), "{file}");
    ours
}

#[test]
fn map_fixture_parses() {
    // Sample captured from qemu-img 10.0.2 (see fixtures/image/README.md).
    let json = include_str!("fixtures/image/qemu-img-map.json");
    assert!(compressed_in_map(json));
    assert!(!compressed_in_map(&json.replace("\"compressed\": true", "\"compressed\": false")));
}

#[test]
fn plain_v3_image_is_runnable() {
    let d = Dir::new();
    let f = d.convert("plain.qcow2", &["-o", "compat=1.1"]);
    let i = agrees(&f, &[]);
    let q = i.qcow2.as_ref().unwrap();
    assert_eq!((q.version, q.cluster_size, q.virtual_size, q.refcount_order), (3, 65536, 64 << 20, 4));
    assert_eq!(q.encryption, Encryption::None);
    assert_eq!(q.clusters.compressed, 0);
    assert!(q.clusters.data >= 64, "4 MiB of data is at least 64 clusters: {:?}", q.clusters);
    assert!(i.vmd.can_run, "{:?}", i.vmd);
    assert!(!i.compressed);
}

#[test]
fn compressed_image_is_not_runnable() {
    let d = Dir::new();
    let f = d.convert("c.qcow2", &["-c"]);
    let i = agrees(&f, &[]);
    let q = i.qcow2.as_ref().unwrap();
    // The text compresses, the random bytes do not (qemu stores those clusters as they are).
    assert!(q.clusters.compressed >= 30 && q.clusters.data >= 30, "{:?}", q.clusters);
    assert_eq!(codes(&i), [ProblemCode::CompressedClusters]);
    let text = almavmm_host::cmd::image::render(&i);
    assert!(text.contains("vmd: CANNOT run it as it is"), "{text}");
    assert!(text.contains("image prepare"), "{text}");
}

#[test]
fn version_2_image() {
    let d = Dir::new();
    let f = d.convert("v2.qcow2", &["-o", "compat=0.10"]);
    let i = agrees(&f, &[]);
    assert_eq!(i.qcow2.as_ref().unwrap().version, 2);
    assert!(i.vmd.can_run, "{:?}", i.vmd);
    let fc = d.convert("v2c.qcow2", &["-c", "-o", "compat=0.10"]);
    assert!(agrees(&fc, &[]).compressed);
}

#[test]
fn backing_chains_absolute_and_relative() {
    let d = Dir::new();
    let base = d.convert("base.qcow2", &["-c"]);
    let plain = d.convert("plain.qcow2", &[]);
    let over = d.s("over.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &over]);
    let i = agrees(&over, &[]);
    assert!(i.compressed, "the base's compressed clusters count");
    assert_eq!(i.chain.len(), 1);
    assert_eq!(i.chain[0].path.as_deref(), Some(Path::new(&base)));
    assert!(!i.chain[0].relative);
    assert_eq!(i.qcow2.as_ref().unwrap().backing_format.as_deref(), Some("qcow2"));
    assert_eq!(codes(&i), [ProblemCode::CompressedClusters]);
    assert_eq!(i.vmd.problems[0].file, Path::new(&base));

    // A relative name, resolved against the overlay's folder.
    let rel = d.s("rel.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "plain.qcow2", "-F", "qcow2", &rel]);
    let i = agrees(&rel, &[]);
    assert!(i.chain[0].relative && i.chain[0].exists);
    assert_eq!(i.chain[0].path.as_deref(), Some(Path::new(&plain)));
    assert_eq!(codes(&i), [ProblemCode::RelativeBacking]);

    // Five files deep: one more than vmd opens.
    let mut below = plain.clone();
    for n in 1..=4 {
        let top = d.s(&format!("l{n}.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", &below, "-F", "qcow2", &top]);
        below = top;
    }
    let i = agrees(&below, &[]);
    assert_eq!(i.chain.len(), 4);
    assert_eq!(codes(&i), [ProblemCode::ChainTooDeep]);

    // A missing base is reported, not an error.
    std::fs::remove_file(&plain).unwrap();
    let i = image::inspect(Path::new(&rel)).unwrap();
    assert!(!i.chain[0].exists);
    assert!(codes(&i).contains(&ProblemCode::BackingMissing));
}

#[test]
fn luks_encrypted_image() {
    let d = Dir::new();
    let f = d.s("enc.qcow2");
    image_support::create_luks(&f);
    let ours = image::inspect(Path::new(&f)).unwrap();
    assert_eq!(ours.qcow2.as_ref().unwrap().encryption, Encryption::Luks);
    assert_eq!(codes(&ours), [ProblemCode::Encrypted]);
    let opts = format!("driver=qcow2,file.filename={f},encrypt.key-secret=sec0");
    let map = image_support::map_says_compressed(&["--object", image_support::LUKS_SECRET, "--image-opts"], &opts);
    assert_eq!(map, Some(ours.compressed));
}

#[test]
fn raw_files_are_named_for_what_they_are() {
    let d = Dir::new();
    let raw = d.raw();
    let i = agrees(&raw, &[]);
    assert_eq!(i.format, Format::Raw);
    assert!(i.partitioned);
    assert_eq!(i.looks_like, "a raw disk image with an MBR partition table");
    assert_eq!(codes(&i), [ProblemCode::NotQcow2]);

    let noise = d.p("random.bin");
    std::fs::write(&noise, pseudo_random(1 << 20, 3)).unwrap();
    let i = agrees(&noise.display().to_string(), &[]);
    assert_eq!(i.format, Format::Raw);
    assert!(!i.partitioned);
    assert!(i.looks_like.starts_with("unrecognised data"), "{}", i.looks_like);
}

#[test]
fn truncated_files_are_errors_for_both_readers() {
    let d = Dir::new();
    let f = d.convert("c.qcow2", &["-c"]);
    let bytes = std::fs::read(&f).unwrap();

    let head = d.s("head.qcow2");
    std::fs::write(&head, &bytes[..50]).unwrap();
    let err = image::inspect(Path::new(&head)).unwrap_err();
    assert!(
        matches!(err, ImageError::Qcow2 { source: Qcow2Error::TruncatedHeader { needed: 72, got: 50 }, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(map_says_compressed(&[], &head), None, "qemu-img cannot open it either");

    // Cut inside the tables: an interrupted copy.
    let cut = d.s("cut.qcow2");
    std::fs::write(&cut, &bytes[..3 * 65536 + 100]).unwrap();
    let err = image::inspect(Path::new(&cut)).unwrap_err();
    assert!(matches!(err, ImageError::Qcow2 { source: Qcow2Error::PastEnd { .. }, .. }), "{err}");
}

#[test]
fn other_vmd_limits_from_real_images() {
    let d = Dir::new();
    let r64 = d.convert("r64.qcow2", &["-o", "refcount_bits=64"]);
    let i = agrees(&r64, &[]);
    assert_eq!(i.qcow2.as_ref().unwrap().refcount_order, 6);
    assert_eq!(codes(&i), [ProblemCode::RefcountOrder]);

    let ext = d.convert("ext.qcow2", &["-c", "-o", "extended_l2=on"]);
    let i = agrees(&ext, &[]);
    let q = i.qcow2.as_ref().unwrap();
    assert!(q.extended_l2 && q.clusters.compressed > 0);
    assert_eq!(q.incompatible_feature_names, ["extended_l2"]);
    assert_eq!(codes(&i), [ProblemCode::CompressedClusters, ProblemCode::IncompatibleFeatures]);

    let zstd = d.convert("zstd.qcow2", &["-c", "-o", "compression_type=zstd"]);
    let i = agrees(&zstd, &[]);
    assert_eq!(i.qcow2.as_ref().unwrap().incompatible_feature_names, ["compression_type"]);

    let big = d.convert("big.qcow2", &["-o", "cluster_size=2M"]);
    let i = agrees(&big, &[]);
    assert_eq!(i.qcow2.as_ref().unwrap().cluster_size, 2 << 20);
    // vmctl's overlays have 64 KiB clusters and vmd refuses a chain that mixes sizes
    // (usr.sbin/vmd/vioqcow2.c), so this base cannot run as it is.
    assert_eq!(codes(&i), [ProblemCode::OverlayClusterSize]);
}

#[test]
fn cli_inspect_json_is_the_documented_shape() {
    let d = Dir::new();
    let f = d.convert("c.qcow2", &["-c"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_almavmm-host"))
        .args(["image", "inspect", "--json", &f])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["compressed"], true);
    assert_eq!(v["qcow2"]["version"], 3);
    assert_eq!(v["qcow2"]["encryption"], "none");
    assert!(v["qcow2"]["clusters"]["compressed"].as_u64().unwrap() > 0);
    assert_eq!(v["vmd"]["can_run"], false);
    assert_eq!(v["vmd"]["problems"][0]["code"], "compressed_clusters");
    assert_eq!(v["vmd"]["problems"][0]["file"], f);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_almavmm-host"))
        .args(["image", "inspect", &d.s("missing.qcow2")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.qcow2"));
}

#[test]
fn zero_flagged_clusters_are_counted_like_qemu_img_does() {
    let d = Dir::new();
    let f = d.s("z.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &f, "16M"]);
    almavmm_shared::runner::Cmd::new("qemu-io")
        .args(["-c", "write -P 0xaa 0 4M", "-c", "write -z 1M 2M"])
        .arg(&f)
        .hint_if_missing("the image tests need qemu-io: apt-get install qemu-utils")
        .run()
        .unwrap();
    let i = agrees(&f, &[]);
    // qemu-img map: the 2 MiB written as zeros is a present, zero extent = 32 clusters.
    let map = qemu_img(&["map", "--output=json", &f]);
    let v: serde_json::Value = serde_json::from_str(&map).unwrap();
    let zero_bytes: u64 = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["present"] == true && e["zero"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(i.qcow2.as_ref().unwrap().clusters.zero * 65536, zero_bytes);
    assert_eq!(codes(&i), [ProblemCode::ZeroClusters]);
}
