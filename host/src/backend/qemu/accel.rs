//! Choosing QEMU's accelerator: KVM when it really runs guest code, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: nested or restricted hosts expose a KVM that creates
//! VMs but cannot set up the CPU model a guest gets ("failed to set MSR …", an assertion in
//! QEMU) or fails on the first instruction ("KVM internal error", QEMU then sits there
//! paused forever). So we boot, with the very accelerator and CPU model a guest would get,
//! a 512-byte floppy that writes one byte to the serial port and leaves through the
//! isa-debug-exit device; if that completes within a few seconds, KVM works. The verdict is
//! cached per host boot.

use std::path::Path;
use std::time::Duration;

use almavmm_shared::runner::{Cmd, RunError};

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

/// Real-mode boot sector: `mov dx,0x3f8; mov al,'K'; out dx,al; mov dx,0xf4; mov al,0x10;
/// out dx,al; cli; hlt; jmp $-1`. Port 0xf4 is isa-debug-exit: QEMU exits with status
/// (0x10 << 1) | 1 = 33.
const PROBE_CODE: [u8; 15] = [0xBA, 0xF8, 0x03, 0xB0, 0x4B, 0xEE, 0xBA, 0xF4, 0x00, 0xB0, 0x10, 0xEE, 0xFA, 0xF4, 0xEB];
const PROBE_EXIT: i32 = 33;

fn probe_image() -> Vec<u8> {
    let mut img = PROBE_CODE.to_vec();
    img.push(0xFD);
    img.resize(510, 0);
    img.extend_from_slice(&[0x55, 0xAA]);
    img
}

/// The probe's command line.
pub fn probe_cmd(qemu: &str, floppy: &Path) -> Cmd {
    Cmd::new(qemu)
        .args(["-accel", "kvm", "-cpu", Accel::Kvm.cpu(), "-machine", "pc", "-m", "16", "-display", "none"])
        .args(["-nodefaults", "-no-reboot"])
        .args(["-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-drive"])
        .arg(format!("file={},format=raw,if=floppy", floppy.display()))
        .timeout(Duration::from_secs(8))
}

/// Decide from the probe's outcome.
pub fn verdict(result: Result<(Option<i32>, String), RunError>) -> Accel {
    match result {
        Ok((Some(PROBE_EXIT), out)) if out.starts_with('K') => Accel::Kvm,
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

/// Probe (or reuse the verdict cached for this boot of the host in `cache_dir`).
pub fn detect(qemu: &str, cache_dir: &Path) -> Accel {
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg { why: "no /dev/kvm".into() };
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = cache_dir.join("kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&cache)
        && let Some((id, rest)) = text.split_once('\n')
        && id == boot_id.trim()
        && !id.is_empty()
    {
        return if rest.trim() == "kvm" { Accel::Kvm } else { Accel::Tcg { why: rest.trim().to_string() } };
    }
    let accel = run_probe(qemu);
    let line = match &accel {
        Accel::Kvm => "kvm".to_string(),
        Accel::Tcg { why } => why.clone(),
    };
    let _ = crate::state::atomic::write_file(&cache, format!("{}\n{line}\n", boot_id.trim()).as_bytes(), 0o600);
    accel
}

fn run_probe(qemu: &str) -> Accel {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return Accel::Tcg { why: format!("KVM probe failed: {e}") },
    };
    let floppy = dir.path().join("probe.img");
    if let Err(e) = std::fs::write(&floppy, probe_image()) {
        return Accel::Tcg { why: format!("KVM probe failed: {e}") };
    }
    verdict(probe_cmd(qemu, &floppy).output().map(|o| (o.code(), o.stdout + &o.stderr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_image_is_a_boot_sector() {
        let img = probe_image();
        assert_eq!(img.len(), 512);
        assert_eq!(&img[510..], &[0x55, 0xAA]);
        assert_eq!(&img[..3], &[0xBA, 0xF8, 0x03]);
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Ok((Some(33), "K".into()))), Accel::Kvm);
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
        std::fs::write(&floppy, probe_image()).unwrap();
        let cmd = probe_cmd("qemu-system-x86_64", &floppy);
        let args: Vec<String> =
            cmd.get_args().iter().map(|a| a.to_string_lossy().replace("kvm", "tcg").replace("host", "max")).collect();
        let out = Cmd::new("qemu-system-x86_64").args(args).timeout(Duration::from_secs(30)).output().unwrap();
        assert_eq!((out.code(), out.stdout.as_str()), (Some(PROBE_EXIT), "K"));
    }
}
