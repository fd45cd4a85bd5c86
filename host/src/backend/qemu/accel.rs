//! Choosing QEMU's accelerator: KVM when it really runs guests, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: nested or restricted hosts expose a KVM that creates
//! VMs but cannot set up the CPU model a guest gets ("failed to set MSR …", an assertion in
//! QEMU), fails on the first instruction ("KVM internal error", QEMU then sits there
//! paused forever), or runs a small test and then stops a real guest in `internal-error`.
//! So under `--accel auto` we boot, with the accelerator, CPU model, machine type and
//! memory size a guest would get, a boot sector that switches to 64-bit long mode with
//! paging, writes one byte to the serial port and leaves through the isa-debug-exit device
//! (probe.S). If that completes within a few seconds, KVM is used; if a real guest still
//! crashes under KVM before its sshd answered, the backend restarts it under TCG and
//! remembers that for this boot of the host ([`remember_failure`]). Both verdicts are
//! cached per host boot.

use std::path::Path;
use std::time::Duration;

use almavmm_shared::runner::{Cmd, RunError};

/// What the user asked for (`--accel`, `ALMAVMM_ACCEL`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if it runs a test guest on this host, else TCG; a guest that crashes under KVM
    /// before it booted is started again under TCG.
    #[default]
    Auto,
    /// KVM, without probing or falling back.
    Kvm,
    /// TCG, software emulation: always works, several times slower.
    Tcg,
}

impl AccelChoice {
    /// `ALMAVMM_ACCEL` for commands without the flag (the ssh-proxy); unset or unknown
    /// values mean auto.
    pub fn from_env() -> AccelChoice {
        match std::env::var("ALMAVMM_ACCEL").as_deref().map(str::trim) {
            Ok("kvm") => AccelChoice::Kvm,
            Ok("tcg") => AccelChoice::Tcg,
            _ => AccelChoice::Auto,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Software emulation, with the reason KVM was not used.
    Tcg {
        why: String,
    },
}

impl Accel {
    pub fn qemu_name(&self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg { .. } => "tcg",
        }
    }
    /// CPU model: the host's with KVM; under TCG `max`, because `qemu64` lacks the
    /// x86-64-v2 features (SSE4.2, POPCNT) that AlmaLinux 9 requires.
    pub fn cpu(&self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg { .. } => "max",
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Accel::Kvm => "KVM".to_string(),
            Accel::Tcg { why } => format!("TCG, software emulation ({why}); expect boots of a minute or more"),
        }
    }
}

/// The probe guest, assembled from probe.S (see there).
const PROBE_IMAGE: &[u8; 512] = include_bytes!("probe.bin");
/// What it writes to the serial port once in long mode, and QEMU's exit status after it.
const PROBE_OUTPUT: &str = "L";
const PROBE_EXIT: i32 = 33;

/// The probe's command line: the machine type, CPU model and memory size of the guest.
pub fn probe_cmd(qemu: &str, floppy: &Path, memory_mib: u64) -> Cmd {
    Cmd::new(qemu)
        .args(["-machine", &format!("{},accel=kvm", super::cmdline::MACHINE), "-cpu", Accel::Kvm.cpu()])
        .args(["-m", &format!("{memory_mib}M"), "-display", "none"])
        .args(["-nodefaults", "-no-reboot"])
        .args(["-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-drive"])
        .arg(format!("file={},format=raw,if=floppy", floppy.display()))
        .timeout(Duration::from_secs(8))
}

/// Decide from the probe's outcome.
pub fn verdict(result: Result<(Option<i32>, String), RunError>) -> Accel {
    match result {
        Ok((Some(PROBE_EXIT), out)) if out.starts_with(PROBE_OUTPUT) => Accel::Kvm,
        Ok((code, out)) => Accel::Tcg {
            why: format!(
                "KVM did not run a test guest: exit {}{}",
                code.map_or("by signal".into(), |c| c.to_string()),
                out.lines()
                    .find(|l| l.contains("KVM") || l.contains("kvm"))
                    .map(|l| format!(", {l}"))
                    .unwrap_or_default()
            ),
        },
        Err(RunError::TimedOut { .. }) => Accel::Tcg { why: "KVM hung on a test guest".into() },
        Err(e) => Accel::Tcg { why: format!("KVM probe failed: {e}") },
    }
}

/// The accelerator for `choice`: probing (or reusing this boot's verdict) under auto.
pub fn resolve(choice: AccelChoice, qemu: &str, cache_dir: &Path, memory_mib: u64) -> Accel {
    match choice {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg { why: "asked for with --accel tcg".into() },
        AccelChoice::Auto => detect(qemu, cache_dir, memory_mib),
    }
}

const CACHE_FILE: &str = "kvm-probe";

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
}

/// The verdict cached for boot `boot_id`: `None` when there is none for this boot.
pub fn cached_verdict(text: &str, boot_id: &str) -> Option<Accel> {
    let (id, rest) = text.split_once('\n')?;
    if id != boot_id || id.is_empty() {
        return None;
    }
    Some(if rest.trim() == "kvm" { Accel::Kvm } else { Accel::Tcg { why: rest.trim().to_string() } })
}

fn cache(cache_dir: &Path, accel: &Accel) {
    let line = match accel {
        Accel::Kvm => "kvm".to_string(),
        Accel::Tcg { why } => why.clone(),
    };
    let text = format!("{}\n{line}\n", boot_id());
    let _ = almavmm_shared::atomic::write_file(&cache_dir.join(CACHE_FILE), text.as_bytes(), 0o600);
}

/// Probe (or reuse the verdict cached for this boot of the host in `cache_dir`).
pub fn detect(qemu: &str, cache_dir: &Path, memory_mib: u64) -> Accel {
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg { why: "no /dev/kvm".into() };
    }
    let text = std::fs::read_to_string(cache_dir.join(CACHE_FILE)).unwrap_or_default();
    if let Some(accel) = cached_verdict(&text, &boot_id()) {
        return accel;
    }
    let accel = run_probe(qemu, memory_mib);
    cache(cache_dir, &accel);
    accel
}

/// KVM passed the probe but stopped a real guest: use TCG until the host reboots.
pub fn remember_failure(cache_dir: &Path, why: &str) {
    cache(cache_dir, &Accel::Tcg { why: why.to_string() });
}

fn run_probe(qemu: &str, memory_mib: u64) -> Accel {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return Accel::Tcg { why: format!("KVM probe failed: {e}") },
    };
    let floppy = dir.path().join("probe.img");
    if let Err(e) = std::fs::write(&floppy, PROBE_IMAGE) {
        return Accel::Tcg { why: format!("KVM probe failed: {e}") };
    }
    verdict(probe_cmd(qemu, &floppy, memory_mib).output().map(|o| (o.code(), o.stdout + &o.stderr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_image_is_a_boot_sector() {
        assert_eq!(&PROBE_IMAGE[510..], &[0x55, 0xAA]);
        assert_eq!(PROBE_IMAGE[0], 0xFA, "starts with cli");
    }

    /// probe.bin is probe.S assembled, where binutils are here to check it.
    #[cfg(target_os = "linux")]
    #[test]
    fn probe_bin_is_probe_s_assembled() {
        if Cmd::new("as").arg("--version").output().is_err() {
            eprintln!("skipped: no binutils");
            return;
        }
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/qemu");
        let dir = tempfile::tempdir().unwrap();
        let (obj, bin) = (dir.path().join("probe.o"), dir.path().join("probe.bin"));
        Cmd::new("as").arg("--32").arg("-o").arg(&obj).arg(here.join("probe.S")).run().unwrap();
        Cmd::new("ld")
            .args(["-m", "elf_i386", "-Ttext=0x7c00", "--oformat", "binary", "-o"])
            .arg(&bin)
            .arg(&obj)
            .run()
            .unwrap();
        assert_eq!(std::fs::read(&bin).unwrap(), PROBE_IMAGE.to_vec());
    }

    #[test]
    fn a_verdict_counts_for_its_boot_only() {
        assert_eq!(cached_verdict("b1\nkvm\n", "b1"), Some(Accel::Kvm));
        assert_eq!(cached_verdict("b0\nkvm\n", "b1"), None, "a reboot may have fixed or broken KVM");
        let crashed = "b1\nKVM stopped a real guest (internal-error) before it booted\n";
        assert_eq!(
            cached_verdict(crashed, "b1"),
            Some(Accel::Tcg { why: "KVM stopped a real guest (internal-error) before it booted".into() })
        );
        assert_eq!(cached_verdict("", ""), None);
    }

    #[test]
    fn a_remembered_failure_wins_over_an_earlier_pass() {
        let dir = tempfile::tempdir().unwrap();
        cache(dir.path(), &Accel::Kvm);
        remember_failure(dir.path(), "KVM stopped a real guest (internal-error)");
        let text = std::fs::read_to_string(dir.path().join(CACHE_FILE)).unwrap();
        assert!(
            matches!(cached_verdict(&text, &boot_id()), Some(Accel::Tcg { why }) if why.contains("internal-error"))
        );
    }

    #[test]
    fn an_explicit_choice_skips_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve(AccelChoice::Kvm, "/nonexistent/qemu", dir.path(), 512), Accel::Kvm);
        assert!(matches!(resolve(AccelChoice::Tcg, "/nonexistent/qemu", dir.path(), 512), Accel::Tcg { .. }));
        assert!(!dir.path().join(CACHE_FILE).exists());
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Ok((Some(33), "L".into()))), Accel::Kvm);
        assert!(matches!(verdict(Ok((Some(33), "K".into()))), Accel::Tcg { .. }), "not from long mode");
        // What this machine's nested KVM does: an internal error, then QEMU waits forever.
        let hung = Err(RunError::TimedOut { cmdline: "qemu".into(), after: Duration::from_secs(8) });
        assert_eq!(verdict(hung), Accel::Tcg { why: "KVM hung on a test guest".into() });
        let failed = verdict(Ok((Some(1), "qemu-system-x86_64: failed to initialize kvm: Permission denied\n".into())));
        assert!(matches!(&failed, Accel::Tcg { why } if why.contains("Permission denied")), "{failed:?}");
        // Also this machine's: QEMU aborts while loading the host CPU model into KVM.
        let msr = verdict(Ok((
            Some(134),
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0xc000069\nqemu-system-x86_64: target/i386/kvm/kvm.c:3849: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n".into(),
        )));
        assert!(matches!(&msr, Accel::Tcg { why } if why.contains("exit 134")), "{msr:?}");
    }

    /// Under TCG the probe guest runs and exits as designed: this proves the probe itself
    /// (code, exit device, status) is right, so a KVM verdict means KVM ran it.
    #[cfg(target_os = "linux")]
    #[test]
    fn probe_guest_runs_under_tcg() {
        let dir = tempfile::tempdir().unwrap();
        let floppy = dir.path().join("p.img");
        std::fs::write(&floppy, PROBE_IMAGE).unwrap();
        let cmd = probe_cmd("qemu-system-x86_64", &floppy, 1536);
        let args: Vec<String> =
            cmd.get_args().iter().map(|a| a.to_string_lossy().replace("kvm", "tcg").replace("host", "max")).collect();
        let out = Cmd::new("qemu-system-x86_64").args(args).timeout(Duration::from_secs(30)).output().unwrap();
        assert_eq!((out.code(), out.stdout.as_str()), (Some(PROBE_EXIT), PROBE_OUTPUT));
    }
}
