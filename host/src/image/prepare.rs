//! Preparing a base vmd can run: the image itself when it already can, else one
//! uncompressed qcow2 v3 conversion kept in the cache under the source's checksum.
//!
//! The conversion is written under a temporary name that can never be mistaken for a base
//! (`.converting-…`), checked with our own reader, made read-only and only then linked
//! under its final name. SIGINT, SIGTERM and SIGHUP during the conversion remove the
//! temporary file before the process ends as the signal asks; after a SIGKILL the next
//! prepare removes it (under the cache lock, so never one still being written).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

use almavmm_shared::runner::Cmd;

use super::inspect::{Inspection, ProblemCode, inspect};
use super::progress::{Progress, Unit};
use super::sniff::Format;
use super::{Cache, ImageError, QEMU_IMG_HINT, check_sha256, lock, publish};
use crate::state::home::Home;

/// Cluster size of every base we write: vmd wants one cluster size across a chain, and
/// `vmctl create` makes 64 KiB overlays (FACTS.md).
pub const BASE_CLUSTER_SIZE: u64 = super::inspect::VMCTL_OVERLAY_CLUSTER_SIZE;
const TEMP_PREFIX: &str = ".converting-";

/// The file per-VM overlays are built on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedBase {
    pub path: PathBuf,
    /// True when `path` is our converted copy, false when it is the image itself.
    pub converted: bool,
}

/// What to do with an image (pure, from its inspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    UseAsIs,
    /// Convert with qemu-img from this input format.
    Convert {
        from: &'static str,
        why: Vec<String>,
    },
    Refuse(String),
}

pub fn plan(insp: &Inspection) -> Plan {
    match insp.format {
        Format::Qcow2 => {}
        Format::Raw if insp.partitioned => {
            return Plan::Convert { from: "raw", why: vec![format!("it is {}", insp.looks_like)] };
        }
        _ => return Plan::Refuse(format!("it is {}, not a disk image", insp.looks_like)),
    }
    let unfixable =
        [ProblemCode::Encrypted, ProblemCode::Corrupt, ProblemCode::BackingMissing, ProblemCode::BackingUnreadable];
    if let Some(p) = insp.vmd.problems.iter().find(|p| unfixable.contains(&p.code)) {
        return Plan::Refuse(p.message.clone());
    }
    if insp.vmd.can_run && insp.chain.is_empty() {
        return Plan::UseAsIs;
    }
    let mut why: Vec<String> = insp.vmd.problems.iter().map(|p| p.message.clone()).collect();
    if !insp.chain.is_empty() {
        why.push("it has a backing file: the base is made self-contained".into());
    }
    Plan::Convert { from: "qcow2", why }
}

/// A base for `image` (whose SHA-256 is `sha256`) that vmd can run: the image itself, or
/// a converted copy in the cache. The source is only ever read.
pub fn prepare(home: &Home, image: &Path, sha256: &str) -> Result<PreparedBase, ImageError> {
    check_sha256(sha256)?;
    let image = std::path::absolute(image).map_err(|e| ImageError::io("cannot resolve", image, e))?;
    let insp = inspect(&image)?;
    let (from, why) = match plan(&insp) {
        Plan::UseAsIs => return Ok(PreparedBase { path: image, converted: false }),
        Plan::Refuse(reason) => return Err(ImageError::CannotPrepare { path: image, reason }),
        Plan::Convert { from, why } => (from, why),
    };
    let dir = home.ensure_dir(&Cache::new(home).base_dir())?;
    let dest = dir.join(format!("{sha256}.qcow2"));
    if dest.is_file() {
        return Ok(PreparedBase { path: dest, converted: true });
    }
    let _lock = lock(&dir.join(".lock"))?;
    if dest.is_file() {
        return Ok(PreparedBase { path: dest, converted: true });
    }
    remove_stale_temps(&dir);
    tracing::info!("converting {} once for vmd: {}", image.display(), why.join("; "));
    let tmp = dir.join(format!("{TEMP_PREFIX}{sha256}-{}.qcow2", std::process::id()));
    let result = convert(&image, from, &tmp).and_then(|()| check_converted(&insp, &tmp));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = publish(&tmp, &dest) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(PreparedBase { path: dest, converted: true })
}

/// Temporary files of conversions that died (we hold the lock: none is live).
fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_name().as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            tracing::info!("removing {} left by an interrupted conversion", e.path().display());
            let _ = fs::remove_file(e.path());
        }
    }
}

fn convert(src: &Path, from: &str, tmp: &Path) -> Result<(), ImageError> {
    let _guard = RemoveOnSignal::install(tmp);
    let cmd = Cmd::new("qemu-img")
        .args(["convert", "-p", "-f", from, "-O", "qcow2", "-o"])
        .arg(format!("compat=1.1,cluster_size={BASE_CLUSTER_SIZE},refcount_bits=16"))
        .arg(src)
        .arg(tmp)
        .hint_if_missing(QEMU_IMG_HINT);
    let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut progress = Progress::start(&format!("converting {name}"), Unit::Percent, Some(100), 0);
    let mut stream = cmd.stream_stdout()?;
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read_chunk(&mut buf)
            .map_err(|e| ImageError::io("cannot read the output of qemu-img for", src, e))?;
        if n == 0 {
            break;
        }
        if let Some(pct) = last_percent(&String::from_utf8_lossy(&buf[..n])) {
            progress.set(pct as u64);
        }
    }
    progress.finish();
    stream.finish()?;
    Ok(())
}

/// The last `(NN.NN/100%)` in a chunk of `qemu-img convert -p` output (qemu-img's
/// util/qemu-progress.c prints `    (%3.2f/100%)\r` on stdout).
pub fn last_percent(chunk: &str) -> Option<f64> {
    chunk.rsplit('(').find_map(|part| part.split_once("/100%)").and_then(|(n, _)| n.trim().parse::<f64>().ok()))
}

/// Our reader must agree the copy is fit before it becomes a base.
fn check_converted(src: &Inspection, tmp: &Path) -> Result<(), ImageError> {
    let out = inspect(tmp)?;
    let want = match src.format {
        Format::Qcow2 => src.virtual_size(),
        _ => fs::metadata(&src.path).ok().map(|m| m.len().div_ceil(512) * 512),
    };
    let fail = |reason: String| ImageError::CannotPrepare { path: src.path.clone(), reason };
    if !out.vmd.can_run {
        let why: Vec<String> = out.vmd.problems.iter().map(|p| p.message.clone()).collect();
        return Err(fail(format!("qemu-img's copy is still not usable by vmd: {}", why.join("; "))));
    }
    if out.virtual_size() != want {
        return Err(fail(format!("qemu-img's copy has virtual size {:?}, expected {want:?}", out.virtual_size())));
    }
    Ok(())
}

/// Path the signal handler unlinks; a leaked C string, set only while a conversion runs.
static TEMP_PATH: AtomicPtr<nix::libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn remove_temp_and_die(sig: nix::libc::c_int) {
    let p = TEMP_PATH.load(Ordering::SeqCst);
    // SAFETY: unlink, signal and raise are async-signal-safe (POSIX.1-2017 §2.4.3); `p` is
    // null or a NUL-terminated string that is never freed.
    unsafe {
        if !p.is_null() {
            nix::libc::unlink(p);
        }
        nix::libc::signal(sig, nix::libc::SIG_DFL);
        nix::libc::raise(sig);
    }
}

const CLEANUP_SIGNALS: [nix::sys::signal::Signal; 3] =
    [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGHUP];

/// While alive, the signals that end a process remove `path` first. Restores the previous
/// handlers when dropped.
struct RemoveOnSignal {
    previous: Vec<(nix::sys::signal::Signal, nix::sys::signal::SigAction)>,
}

impl RemoveOnSignal {
    fn install(path: &Path) -> RemoveOnSignal {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
        if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
            // Leaked on purpose: a handler may still read it after we are dropped.
            TEMP_PATH.store(c.into_raw(), Ordering::SeqCst);
        }
        let action = SigAction::new(SigHandler::Handler(remove_temp_and_die), SaFlags::empty(), SigSet::empty());
        let mut previous = Vec::new();
        for sig in CLEANUP_SIGNALS {
            // SAFETY: the handler only makes async-signal-safe calls.
            if let Ok(old) = unsafe { sigaction(sig, &action) } {
                previous.push((sig, old));
            }
        }
        RemoveOnSignal { previous }
    }
}

impl Drop for RemoveOnSignal {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restoring the action that was installed before ours.
            let _ = unsafe { nix::sys::signal::sigaction(*sig, old) };
        }
        TEMP_PATH.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::inspect::{Problem, Verdict};

    #[test]
    fn progress_lines_of_qemu_img() {
        assert_eq!(last_percent("    (0.00/100%)\r    (20.00/100%)\r"), Some(20.0));
        assert_eq!(last_percent("    (100.00/100%)\r"), Some(100.0));
        assert_eq!(last_percent("    (12.3"), None);
        assert_eq!(last_percent(""), None);
    }

    fn insp(format: Format, looks_like: &'static str, problems: Vec<ProblemCode>) -> Inspection {
        Inspection {
            schema: 1,
            path: "/x".into(),
            format,
            looks_like,
            partitioned: looks_like.contains("MBR"),
            qcow2: None,
            chain: vec![],
            compressed: false,
            vmd: Verdict {
                can_run: problems.is_empty(),
                problems: problems
                    .into_iter()
                    .map(|code| Problem { code, file: "/x".into(), message: format!("{code:?}") })
                    .collect(),
            },
        }
    }

    #[test]
    fn plans() {
        assert_eq!(plan(&insp(Format::Qcow2, "a qcow2 image", vec![])), Plan::UseAsIs);
        assert!(matches!(
            plan(&insp(Format::Qcow2, "a qcow2 image", vec![ProblemCode::CompressedClusters])),
            Plan::Convert { from: "qcow2", .. }
        ));
        assert_eq!(
            plan(&insp(Format::Qcow2, "", vec![ProblemCode::CompressedClusters, ProblemCode::Encrypted])),
            Plan::Refuse("Encrypted".into())
        );
        assert!(matches!(
            plan(&insp(Format::Raw, "a raw disk image with an MBR partition table", vec![ProblemCode::NotQcow2])),
            Plan::Convert { from: "raw", .. }
        ));
        assert!(matches!(
            plan(&insp(Format::Raw, "unrecognised data (no qcow2 header and no partition table)", vec![])),
            Plan::Refuse(_)
        ));
        assert!(matches!(plan(&insp(Format::Other, "a gzip-compressed file", vec![])), Plan::Refuse(_)));
    }
}
