//! `almavmm-host image …`: fetch, verify, inspect and prepare guest images by hand (what
//! `up` does on its own).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::args::VerifyArgs;
use crate::image::{self, ImageSource, Inspection};
use crate::state::home::Home;
use crate::ui::human_bytes;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Download and verify an image into the cache (nothing to do when it is already there).
    Fetch(FetchArgs),
    /// Show what an image file is and whether vmd can run it as it is.
    Inspect(InspectArgs),
    /// Make a base vmd can run from an image, converting it once if it must.
    Prepare(PrepareArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "\
The checksum list (CHECKSUM beside the image unless --checksum-url says otherwise) must be
signed: its detached signature CHECKSUM.asc (or a clear-signed CHECKSUM) is checked with the
AlmaLinux 9 release key, fetched from repo.almalinux.org and accepted only with the
fingerprint BF18AC2876178908D6E71267D36CB86CB86B3716, built into almavmm. Then the image's
SHA-256 must match the list's entry for its file name. For a mirror of your own, give its
key and fingerprint with --signing-key and --signing-key-fingerprint.

--insecure-skip-verify skips the signature check only: the SHA-256 is still compared with
the checksum list when the server has one, because that costs nothing and still catches a
damaged or truncated download (it cannot catch a forged one: anyone who can change the
image can change an unsigned list). Without a list the image is not checked at all.

The download is resumed with an HTTP Range request after an interruption (the partial file
stays in the cache) and only gets its final name once verified. A second fetch of the same
image reads the small checksum list, sees the image is already there and downloads nothing.

The path of the verified image is printed on stdout; progress and messages go to stderr.")]
pub struct FetchArgs {
    /// Image to download (http or https).
    #[arg(long, value_name = "URL", default_value = image::DEFAULT_IMAGE_URL)]
    pub url: String,

    #[command(flatten)]
    pub verify: VerifyArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "\
vmd (OpenBSD) reads qcow2 versions 2 and 3 but cannot run an image with compressed clusters
(the official AlmaLinux image has them), refcount order other than 4, incompatible features
other than dirty/corrupt, encryption, or zero-flagged clusters; it opens at most 4 files per
disk and wants one cluster size throughout. almavmm also wants absolute backing paths.
`image prepare` turns such an image into one vmd can run.

The exit status is 0 whenever the file could be read, whatever the verdict; the verdict is
in the output (`vmd.can_run` with --json).

--json prints one object (schema 1; fields are only ever added):
  schema        1
  path          absolute path of FILE
  format        \"qcow2\", \"raw\", \"other\" or \"empty\"
  looks_like    what the file is, in words
  partitioned   raw file with an MBR/GPT partition table (a disk image)
  qcow2         null, or {version, cluster_size, virtual_size, file_size, backing_file,
                backing_format, refcount_order, incompatible_features (bits),
                incompatible_feature_names, compatible_features, autoclear_features,
                encryption (\"none\", \"aes\", \"luks\" or {\"unknown\": N}),
                compression_type (\"zlib\", \"zstd\" or {\"unknown\": N}), extended_l2,
                external_data_file, snapshots,
                clusters: {total, data, compressed, zero, unallocated}}
  chain         backing files, nearest first: [{name (as stored), relative, path,
                exists, format, qcow2 (as above or null), error}]
  compressed    true if any layer holds a compressed cluster
  vmd           {can_run, problems: [{code, file, message}]}; codes: not_qcow2,
                compressed_clusters, zero_clusters, refcount_order, incompatible_features,
                corrupt, encrypted, cluster_size_mismatch, overlay_cluster_size, chain_too_deep,
                relative_backing, backing_missing, backing_not_qcow2, backing_unreadable

A file that starts like qcow2 but cannot be read as one (truncated, damaged) is an error
(exit status 1).")]
pub struct InspectArgs {
    /// The image file.
    pub file: PathBuf,

    /// Print JSON (described below) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
When `image inspect` says vmd can run FILE as it is (and it has no backing file), FILE is
the base. Otherwise it is converted once with `qemu-img convert -O qcow2 -o compat=1.1`
(uncompressed, 64 KiB clusters, self-contained) into the image cache under FILE's SHA-256;
later runs find the converted base and return at once. FILE is only ever read. A base is
never rewritten or deleted, since guest disks depend on it; it is made read-only.

Raw disk images (with a partition table) are converted to qcow2 the same way. Encrypted,
corrupt or incomplete images are refused with the reason.

The path of the base is printed on stdout. Needs qemu-img (`pkg_add qemu` on OpenBSD,
`apt-get install qemu-utils` on Debian) when a conversion is needed.")]
pub struct PrepareArgs {
    /// The image file.
    pub file: PathBuf,
}

pub fn run(args: ImageArgs) -> anyhow::Result<u8> {
    match args.command {
        ImageCommand::Fetch(a) => fetch(a),
        ImageCommand::Inspect(a) => inspect(a),
        ImageCommand::Prepare(a) => prepare(a),
    }
}

fn fetch(a: FetchArgs) -> anyhow::Result<u8> {
    let src = ImageSource { url: a.url, checksum_url: a.verify.checksum_url.clone(), trust: a.verify.trust() };
    let home = Home::from_env()?;
    let got = image::fetch(&home, &src)?;
    let how = match (got.signature_checked, got.checksum_checked) {
        (true, _) => "signature and SHA-256 verified",
        (false, true) => "SHA-256 verified, signature NOT checked",
        (false, false) => "NOT verified at all",
    };
    let what = if got.downloaded { "downloaded" } else { "already in the cache" };
    eprintln!("{} {what} ({how}, sha256 {})", got.file_name, got.sha256);
    println!("{}", got.path.display());
    Ok(crate::exit::OK)
}

fn inspect(a: InspectArgs) -> anyhow::Result<u8> {
    let insp = image::inspect(&a.file)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&insp).context("cannot encode the inspection as JSON")?);
    } else {
        print!("{}", render(&insp));
    }
    Ok(crate::exit::OK)
}

fn prepare(a: PrepareArgs) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    tracing::info!("computing the SHA-256 of {}", a.file.display());
    let sha = image::sha256_file(&a.file)?;
    let base = image::prepare(&home, &a.file, &sha)?;
    if base.converted {
        eprintln!("{}: converted into a base vmd can run", a.file.display());
    } else {
        eprintln!("{}: vmd can run it as it is; it is the base", a.file.display());
    }
    println!("{}", base.path.display());
    Ok(crate::exit::OK)
}

/// The text form of an inspection.
pub fn render(i: &Inspection) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let Some(q) = &i.qcow2 else {
        let _ = writeln!(s, "{}: not qcow2: {}", i.path.display(), i.looks_like);
        verdict(&mut s, i);
        return s;
    };
    let _ = writeln!(
        s,
        "{}: qcow2 version {}, {} virtual, {} on disk",
        i.path.display(),
        q.version,
        human_bytes(q.virtual_size),
        human_bytes(q.file_size)
    );
    let _ = writeln!(s, "  cluster size     {}", human_bytes(q.cluster_size));
    let _ = writeln!(s, "  refcount order   {} ({}-bit refcounts)", q.refcount_order, 1u32 << q.refcount_order);
    let _ = writeln!(s, "  encryption       {}", format!("{:?}", q.encryption).to_lowercase());
    let _ = writeln!(s, "  compression      {}", format!("{:?}", q.compression_type).to_lowercase());
    let names = if q.incompatible_feature_names.is_empty() {
        "none".to_string()
    } else {
        q.incompatible_feature_names.join(", ")
    };
    let _ = writeln!(s, "  incompatible     {names}");
    let c = &q.clusters;
    let _ = writeln!(
        s,
        "  clusters         {} in all: {} data, {} compressed, {} zero, {} unallocated",
        c.total, c.data, c.compressed, c.zero, c.unallocated
    );
    if i.chain.is_empty() {
        let _ = writeln!(s, "  backing file     none");
    }
    for (n, b) in i.chain.iter().enumerate() {
        let label = if n == 0 { "backing file" } else { "  then" };
        let target = b.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "?".into());
        let mut notes = Vec::new();
        if b.relative {
            notes.push("relative".to_string());
        }
        if !b.exists {
            notes.push("MISSING".to_string());
        }
        if let Some(bq) = &b.qcow2 {
            notes.push(format!("{} compressed clusters", bq.clusters.compressed));
        } else if let Some(f) = b.format {
            notes.push(format!("{f:?}").to_lowercase());
        }
        if let Some(e) = &b.error {
            notes.push(e.clone());
        }
        let _ = writeln!(s, "  {label:<16} {:?} -> {target} ({})", b.name, notes.join(", "));
    }
    verdict(&mut s, i);
    s
}

fn verdict(s: &mut String, i: &Inspection) {
    use std::fmt::Write as _;
    if i.vmd.can_run {
        let _ = writeln!(s, "vmd: can run it as it is");
        return;
    }
    let _ = writeln!(s, "vmd: CANNOT run it as it is:");
    for p in &i.vmd.problems {
        if p.file == i.path {
            let _ = writeln!(s, "  - {}", p.message);
        } else {
            let _ = writeln!(s, "  - {}: {}", p.file.display(), p.message);
        }
    }
    match image::prepare::plan(i) {
        image::prepare::Plan::Refuse(reason) => {
            let _ = writeln!(s, "`image prepare` cannot fix this: {reason}");
        }
        _ => {
            let _ = writeln!(s, "`almavmm-host image prepare {}` makes a base vmd can run.", i.path.display());
        }
    }
}
