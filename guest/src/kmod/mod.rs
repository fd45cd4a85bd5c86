//! The `vmm_clock` kernel module and what it needs around it: the packages its build needs
//! (`pkg`), the hook that rebuilds it for each new kernel (`kernel_hook`), and the repair of
//! a wrong recipe for loading it at boot (`stray_line`). One place for the module's life
//! from packages to boot, which setup and `kmod …` walk through in order.
//!
//! This file: the module for one kernel: build (in a folder of our own, so `/usr/src`
//! stays as the seed left it), install (`make install`: `/lib/modules/KVER/extra` and
//! depmod), load (`modprobe`), persist (`/etc/modules-load.d`), select the clocksource, and
//! say where it stands.

pub mod kernel_hook;
pub mod pkg;
pub mod stray_line;

use std::path::PathBuf;
use std::time::Duration;

use almavmm_shared::health::ModuleState;
use almavmm_shared::paths;
use almavmm_shared::runner::{Cmd, RunError};

use crate::sys::sysroot::SysRoot;
use almavmm_shared::atomic::{Written, ensure_file};

/// The clocksource the module registers.
pub const CLOCKSOURCE_NAME: &str = "vmm-clock";
/// Compressed forms `modules_install` may produce (CONFIG_MODULE_COMPRESS_*).
const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];
/// A kernel module build under TCG emulation takes minutes; this is a hang, not a build.
const MAKE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The last load attempt's errno, for `status` after a failed load.
const LAST_LOAD: &str = "/var/lib/almavmm/kmod-last-load";

/// The module as it concerns one kernel release.
#[derive(Debug, Clone)]
pub struct Module {
    pub root: SysRoot,
    pub kernel: String,
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub changed: bool,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error(
        "the module source is not at {0} (the seed's bootstrap unpacks it there): re-run the bootstrap or unpack vmm_clock-{ver}.tar.gz into /usr/src",
        ver = almavmm_shared::VERSION
    )]
    SourceMissing(String),
    #[error("no build headers for kernel {kernel} (/lib/modules/{kernel}/build is missing): {hint}")]
    NoHeaders { kernel: String, hint: String },
    #[error("`make` finished but {0} is not there")]
    NoModuleFile(String),
    #[error("`make install` finished but no vmm_clock module is in /lib/modules/{0}/extra")]
    NotInstalled(String),
    #[error(
        "vmm_clock can only be loaded into the running kernel ({running}), not {kernel}: reboot into {kernel} first"
    )]
    NotRunningKernel { kernel: String, running: String },
    #[error("{0}")]
    Load(LoadFailure),
    #[error("vmm_clock is loaded but the kernel did not switch to the vmm-clock clocksource (current: {current})")]
    NotSelected { current: String },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why `modprobe vmm_clock` failed, from its stderr and the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// `ENODEV`, `EBUSY`… when modprobe said which.
    pub errno: Option<&'static str>,
    /// The module's last line in the kernel log, without the timestamp.
    pub kernel_line: Option<String>,
    pub modprobe_said: String,
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vmm_clock did not load: {}", self.summary())?;
        match &self.kernel_line {
            Some(line) => write!(f, "; kernel log: {line}"),
            None => write!(f, "; modprobe: {}", self.modprobe_said),
        }
    }
}

impl LoadFailure {
    /// "not under OpenBSD vmm (ENODEV)", "kvm-clock already serves this guest (EBUSY)", or
    /// the errno with its meaning.
    pub fn summary(&self) -> String {
        let line = self.kernel_line.as_deref().unwrap_or("");
        let errno = self.errno.unwrap_or("unknown error");
        if line.contains("not under OpenBSD vmm") {
            format!("not under OpenBSD vmm ({errno})")
        } else if line.contains("kvm-clock already serves this guest") {
            format!("kvm-clock already serves this guest ({errno})")
        } else {
            match self.errno {
                Some(e) => format!("{e} ({})", strerror_text(e)),
                None => "modprobe failed".to_string(),
            }
        }
    }
}

/// glibc's strerror texts, which modprobe prints (kmod tools/modprobe.c), and the errno
/// names behind them.
const ERRNO_TEXTS: [(&str, &str); 9] = [
    ("ENODEV", "No such device"),
    ("EBUSY", "Device or resource busy"),
    ("EEXIST", "File exists"),
    ("EINVAL", "Invalid argument"),
    ("ENOEXEC", "Exec format error"),
    ("EPERM", "Operation not permitted"),
    ("EKEYREJECTED", "Key was rejected by service"),
    ("ENOMEM", "Cannot allocate memory"),
    ("EIO", "Input/output error"),
];

fn strerror_text(errno: &str) -> &'static str {
    ERRNO_TEXTS.iter().find(|(e, _)| *e == errno).map_or("", |(_, t)| t)
}

/// The errno named by modprobe's `could not insert 'vmm_clock': TEXT`.
pub fn parse_modprobe_errno(stderr: &str) -> Option<&'static str> {
    let text = stderr.lines().find_map(|l| l.split_once("could not insert").map(|(_, r)| r))?;
    let reason = text.rsplit_once(": ").map_or(text, |(_, r)| r).trim();
    ERRNO_TEXTS.iter().find(|(_, t)| *t == reason).map(|(e, _)| *e)
}

/// The path of vmm_clock in a modules.dep (depmod(8): `path: dependencies`, the path
/// relative to the kernel's module folder), in any compression.
pub fn module_in_dep(modules_dep: &str) -> Option<&str> {
    modules_dep.lines().filter_map(|l| l.split_once(':').map(|(p, _)| p.trim())).find(|p| {
        let name = p.rsplit('/').next().unwrap_or(p);
        MODULE_SUFFIXES.iter().any(|s| name == format!("vmm_clock{s}"))
    })
}

/// The module's last line in a kernel log printed by `dmesg` (`[  12.3] vmm_clock: …`) or
/// `journalctl -k` (`Nov 26 19:46:12 host kernel: vmm_clock: …`), from `vmm_clock:` on.
pub fn last_module_line(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| l.find("vmm_clock: ").map(|i| l[i..].trim_end().to_string()))
}

impl Module {
    pub fn new(root: SysRoot, kernel: impl Into<String>) -> Module {
        Module { root, kernel: kernel.into() }
    }

    /// The module for the running kernel.
    pub fn running(root: SysRoot) -> std::io::Result<Module> {
        let kernel = running_kernel(&root)?;
        Ok(Module { root, kernel })
    }

    fn src_dir(&self) -> PathBuf {
        self.root.path(paths::kmod_src_dir())
    }

    pub fn build_dir(&self) -> PathBuf {
        self.root.path(paths::kmod_build_dir(&self.kernel))
    }

    fn kerneldir(&self) -> PathBuf {
        self.root.path(format!("/lib/modules/{}/build", self.kernel))
    }

    fn built_file(&self) -> PathBuf {
        self.build_dir().join("vmm_clock.ko")
    }

    /// The installed module file, in whichever compression `modules_install` chose, once
    /// depmod lists it (before that, modprobe cannot find it).
    pub fn installed_file(&self) -> Option<PathBuf> {
        let dep = self.root.read_optional(format!("/lib/modules/{}/modules.dep", self.kernel)).ok().flatten()?;
        let rel = module_in_dep(&dep)?;
        let path = if rel.starts_with('/') {
            self.root.path(rel)
        } else {
            self.root.path(format!("/lib/modules/{}/{rel}", self.kernel))
        };
        path.is_file().then_some(path)
    }

    /// `make -C BUILD KERNELDIR=/lib/modules/KVER/build [target]`.
    pub fn make(&self, target: Option<&str>) -> Cmd {
        let mut cmd =
            Cmd::new("make").arg("-C").arg(self.build_dir()).arg(format!("KERNELDIR={}", self.kerneldir().display()));
        if let Some(t) = target {
            cmd = cmd.arg(t);
        }
        cmd.hint_if_missing("install make and gcc (dnf install make gcc / apt-get install make gcc)")
            .timeout(MAKE_TIMEOUT)
    }

    /// Copy the source into the build folder and build there. Nothing to do when the
    /// source is unchanged and the module is built.
    pub fn build(&self) -> Result<Done, KmodError> {
        let src = self.src_dir();
        if !src.join("Makefile").is_file() {
            return Err(KmodError::SourceMissing(paths::kmod_src_dir()));
        }
        if !pkg::headers_present(&self.root, &self.kernel) {
            return Err(KmodError::NoHeaders {
                kernel: self.kernel.clone(),
                hint: "install them (`almavmm-agent kmod build` installs them on dnf and apt systems)".into(),
            });
        }
        let copied = self.sync_source(&src)?;
        if copied == 0 && self.built_file().is_file() {
            return Ok(Done {
                changed: false,
                detail: format!("already built for {} in {}", self.kernel, self.build_dir().display()),
            });
        }
        let started = std::time::Instant::now();
        self.make(None).run()?;
        if !self.built_file().is_file() {
            return Err(KmodError::NoModuleFile(self.built_file().display().to_string()));
        }
        Ok(Done {
            changed: true,
            detail: format!(
                "built {} for {} in {:.0}s",
                paths::kmod_build_dir(&self.kernel) + "/vmm_clock.ko",
                self.kernel,
                started.elapsed().as_secs_f64()
            ),
        })
    }

    /// Make the build folder's copies of the source files equal to `src`'s; returns how
    /// many changed.
    fn sync_source(&self, src: &std::path::Path) -> Result<usize, KmodError> {
        let mut changed = 0;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let bytes = std::fs::read(entry.path())?;
            if ensure_file(&self.build_dir().join(entry.file_name()), &bytes, 0o644)? != Written::Unchanged {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Build if needed, then `make install` (into `/lib/modules/KVER/extra`, then depmod).
    pub fn install(&self) -> Result<Done, KmodError> {
        let built = self.build()?;
        let fresh = match (self.installed_file(), std::fs::metadata(self.built_file())) {
            (Some(inst), Ok(b)) => std::fs::metadata(inst)?.modified()? >= b.modified()?,
            _ => false,
        };
        if fresh && !built.changed {
            let at = self.installed_file().map(|p| p.display().to_string()).unwrap_or_default();
            return Ok(Done { changed: false, detail: format!("already installed at {at}") });
        }
        self.make(Some("install")).run()?;
        let Some(at) = self.installed_file() else {
            return Err(KmodError::NotInstalled(self.kernel.clone()));
        };
        Ok(Done { changed: true, detail: format!("{}; installed at {} (depmod done)", built.detail, at.display()) })
    }

    pub fn is_loaded(&self) -> bool {
        self.root.path("/sys/module/vmm_clock").is_dir()
    }

    /// Install if needed, load, persist for the next boots, and select the clocksource.
    pub fn load(&self) -> Result<Done, KmodError> {
        let running = running_kernel(&self.root)?;
        if running != self.kernel {
            return Err(KmodError::NotRunningKernel { kernel: self.kernel.clone(), running });
        }
        let mut changed = false;
        let mut details = Vec::new();
        if !self.is_loaded() {
            let inst = self.install()?;
            if inst.changed {
                details.push(inst.detail);
            }
            let out = Cmd::new("modprobe").arg(paths::KMOD_NAME).output()?;
            let failure = (!out.status.success()).then(|| LoadFailure {
                errno: parse_modprobe_errno(&out.stderr),
                kernel_line: read_kernel_log().as_deref().and_then(last_module_line),
                modprobe_said: out.stderr.trim().to_string(),
            });
            self.record_attempt(failure.as_ref())?;
            if let Some(f) = failure {
                return Err(KmodError::Load(f));
            }
            changed = true;
            details.push("loaded with modprobe".into());
        } else {
            details.push("already loaded".into());
        }
        if ensure_file(&self.root.path(paths::MODULES_LOAD_CONF), MODULES_LOAD_CONTENT.as_bytes(), 0o644)?.changed() {
            changed = true;
            details.push(format!("persisted in {}", paths::MODULES_LOAD_CONF));
        }
        let cs = crate::clock::source::read(&self.root)?;
        if cs.current.as_deref() != Some(CLOCKSOURCE_NAME) {
            crate::clock::source::select(&self.root, CLOCKSOURCE_NAME)?;
            let now = crate::clock::source::read(&self.root)?;
            if now.current.as_deref() != Some(CLOCKSOURCE_NAME) {
                return Err(KmodError::NotSelected { current: now.current.unwrap_or_else(|| "unknown".into()) });
            }
            changed = true;
            details.push("selected the vmm-clock clocksource".into());
        }
        Ok(Done { changed, detail: details.join("; ") })
    }

    fn record_attempt(&self, failure: Option<&LoadFailure>) -> std::io::Result<()> {
        let text = match failure {
            Some(f) => format!("{} {}\n", self.kernel, f.errno.unwrap_or("unknown-error")),
            None => format!("{} ok\n", self.kernel),
        };
        almavmm_shared::atomic::write_atomic(&self.root.path(LAST_LOAD), text.as_bytes(), 0o644)
    }

    /// Built, installed, loaded, persisted, hook installed, and the kernel's reason after a
    /// failed load.
    pub fn status(&self) -> ModuleState {
        let loaded = self.is_loaded();
        let persisted = self
            .root
            .read_optional(paths::MODULES_LOAD_CONF)
            .ok()
            .flatten()
            .is_some_and(|t| t.lines().any(|l| l.trim() == paths::KMOD_NAME));
        let attempted = self.root.read_optional(LAST_LOAD).ok().flatten();
        let load_error = if loaded || !self.root.is_host_root() {
            None
        } else {
            let errno = attempted
                .as_deref()
                .and_then(|t| t.split_once(' '))
                .filter(|(k, e)| *k == self.kernel && e.trim() != "ok")
                .map(|(_, e)| e.trim().to_string());
            let line = read_kernel_log().as_deref().and_then(last_module_line);
            match (errno.as_deref(), line) {
                (Some("unknown-error"), Some(l)) => Some(l),
                (Some("unknown-error"), None) => {
                    Some("the last `modprobe vmm_clock` failed and the kernel log has no vmm_clock line".into())
                }
                (Some(e), Some(l)) => Some(format!("{l} ({e})")),
                (Some(e), None) => {
                    Some(format!("`modprobe vmm_clock` failed with {e}; the kernel log has no vmm_clock line"))
                }
                (None, Some(l)) => Some(l),
                (None, None) => None,
            }
        };
        ModuleState {
            kernel: self.kernel.clone(),
            built: self.built_file().is_file(),
            installed: self.installed_file().is_some(),
            loaded,
            persisted,
            hook_installed: kernel_hook::installed(&self.root),
            load_error,
        }
    }
}

const MODULES_LOAD_CONTENT: &str =
    "# Installed by almavmm-agent: load the vmm_clock clocksource at boot (modules-load.d(5)).\nvmm_clock\n";

/// `uname -r` of the running kernel.
pub fn running_kernel(root: &SysRoot) -> std::io::Result<String> {
    Ok(root.read("/proc/sys/kernel/osrelease")?.trim().to_string())
}

/// The kernel log of this boot: `dmesg` (fast, the ring buffer), else `journalctl -k`.
pub fn read_kernel_log() -> Option<String> {
    let dmesg = Cmd::new("dmesg").timeout(Duration::from_secs(10)).run();
    if let Ok(out) = dmesg {
        return Some(out.stdout);
    }
    Cmd::new("journalctl")
        .args(["-k", "-b", "--no-pager", "-o", "short", "-q"])
        .timeout(Duration::from_secs(20))
        .run()
        .ok()
        .map(|o| o.stdout)
}

/// One line per field for `kmod status`.
pub fn render_status(s: &ModuleState) -> String {
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut out = format!(
        "vmm_clock for kernel {}\n  built:          {}\n  installed:      {}\n  loaded:         {}\n  persisted:      {}\n  hook installed: {}\n",
        s.kernel,
        yn(s.built),
        yn(s.installed),
        yn(s.loaded),
        yn(s.persisted),
        yn(s.hook_installed)
    );
    if let Some(e) = &s.load_error {
        out.push_str(&format!("  load error:     {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn modprobe_errors_name_the_errno() {
        assert_eq!(parse_modprobe_errno(&fixture("modprobe/enodev.txt")), Some("ENODEV"));
        assert_eq!(parse_modprobe_errno(&fixture("modprobe/ebusy.txt")), Some("EBUSY"));
        assert_eq!(parse_modprobe_errno(&fixture("modprobe/not-found.txt")), None);
    }

    #[test]
    fn kernel_log_gives_the_modules_last_word() {
        assert_eq!(
            last_module_line(&fixture("kernel-log/dmesg-enodev.txt")).as_deref(),
            Some("vmm_clock: not under OpenBSD vmm (no OpenBSDVMM58 CPUID signature); not loading")
        );
        let j = last_module_line(&fixture("kernel-log/journalctl-k-ebusy.txt")).unwrap();
        assert!(j.starts_with("vmm_clock: kvm-clock already serves this guest"), "{j}");
        assert_eq!(last_module_line("[ 1.0] clocksource: Switched to clocksource tsc\n"), None);
    }

    #[test]
    fn load_failure_says_not_under_vmm_with_enodev() {
        let f = LoadFailure {
            errno: parse_modprobe_errno(&fixture("modprobe/enodev.txt")),
            kernel_line: last_module_line(&fixture("kernel-log/dmesg-enodev.txt")),
            modprobe_said: fixture("modprobe/enodev.txt").trim().into(),
        };
        let msg = KmodError::Load(f).to_string();
        assert_eq!(
            msg,
            "vmm_clock did not load: not under OpenBSD vmm (ENODEV); kernel log: vmm_clock: not under OpenBSD vmm (no OpenBSDVMM58 CPUID signature); not loading"
        );
        let busy = LoadFailure {
            errno: Some("EBUSY"),
            kernel_line: last_module_line(&fixture("kernel-log/journalctl-k-ebusy.txt")),
            modprobe_said: String::new(),
        };
        assert_eq!(busy.summary(), "kvm-clock already serves this guest (EBUSY)");
        let other =
            LoadFailure { errno: Some("ENOEXEC"), kernel_line: None, modprobe_said: "modprobe: ERROR: …".into() };
        assert_eq!(
            other.to_string(),
            "vmm_clock did not load: ENOEXEC (Exec format error); modprobe: modprobe: ERROR: …"
        );
    }

    #[test]
    fn modules_dep_lists_the_module() {
        assert_eq!(module_in_dep(&fixture("modules-dep/with-vmm-clock.dep")), Some("extra/vmm_clock.ko.xz"));
        assert_eq!(module_in_dep(&fixture("modules-dep/without.dep")), None);
        assert_eq!(module_in_dep("extra/not_vmm_clock.ko:\n"), None);
    }

    #[test]
    fn make_commands_build_outside_usr_src() {
        let m = Module::new(SysRoot::default(), "6.1.0-28-cloud-amd64");
        assert_eq!(
            m.make(None).display(),
            "make -C /var/lib/almavmm/kmod-build/6.1.0-28-cloud-amd64 KERNELDIR=/lib/modules/6.1.0-28-cloud-amd64/build"
        );
        assert_eq!(
            m.make(Some("install")).display(),
            "make -C /var/lib/almavmm/kmod-build/6.1.0-28-cloud-amd64 KERNELDIR=/lib/modules/6.1.0-28-cloud-amd64/build install"
        );
    }

    #[test]
    fn build_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let m = Module::new(SysRoot::new(dir.path()), "6.1.0-28-cloud-amd64");
        let e = m.build().unwrap_err().to_string();
        assert!(e.contains(&format!("/usr/src/vmm_clock-{}", almavmm_shared::VERSION)), "{e}");
        let src = dir.path().join(paths::kmod_src_dir().trim_start_matches('/'));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("Makefile"), "all:\n").unwrap();
        let e = m.build().unwrap_err().to_string();
        assert!(e.starts_with("no build headers for kernel 6.1.0-28-cloud-amd64"), "{e}");
    }

    // A fake kernel tree and a Makefile that "builds" by copying: exercises the copy into
    // the build folder, the second-run no-op and the rebuild after a source change.
    #[test]
    fn build_copies_source_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let kver = "6.1.0-28-cloud-amd64";
        std::fs::create_dir_all(dir.path().join(format!("lib/modules/{kver}/build"))).unwrap();
        std::fs::write(dir.path().join(format!("lib/modules/{kver}/build/Makefile")), "").unwrap();
        let src = dir.path().join(paths::kmod_src_dir().trim_start_matches('/'));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("Makefile"), "all:\n\tcp vmm_clock.c vmm_clock.ko\n").unwrap();
        std::fs::write(src.join("vmm_clock.c"), "v1").unwrap();
        let m = Module::new(SysRoot::new(dir.path()), kver);
        let first = m.build().unwrap();
        assert!(first.changed, "{first:?}");
        assert!(
            first.detail.starts_with(&format!("built /var/lib/almavmm/kmod-build/{kver}/vmm_clock.ko")),
            "{first:?}"
        );
        assert_eq!(std::fs::read_to_string(m.build_dir().join("vmm_clock.ko")).unwrap(), "v1");
        let again = m.build().unwrap();
        assert!(!again.changed && again.detail.starts_with("already built"), "{again:?}");
        std::fs::write(src.join("vmm_clock.c"), "v2").unwrap();
        assert!(m.build().unwrap().changed);
        assert_eq!(std::fs::read_to_string(m.build_dir().join("vmm_clock.ko")).unwrap(), "v2");
        assert!(!src.join("vmm_clock.ko").exists(), "the source folder stays clean");
    }

    #[test]
    fn status_of_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        let kver = "6.1.0-28-cloud-amd64";
        let m = Module::new(root.clone(), kver);
        let s = m.status();
        assert!(!s.built && !s.installed && !s.loaded && !s.persisted && !s.hook_installed);
        std::fs::create_dir_all(dir.path().join(format!("lib/modules/{kver}/extra"))).unwrap();
        std::fs::write(dir.path().join(format!("lib/modules/{kver}/extra/vmm_clock.ko.xz")), "").unwrap();
        assert!(!m.status().installed, "a file depmod has not listed is not installed yet");
        std::fs::write(
            dir.path().join(format!("lib/modules/{kver}/modules.dep")),
            std::fs::read(format!("{}/tests/fixtures/modules-dep/with-vmm-clock.dep", env!("CARGO_MANIFEST_DIR")))
                .unwrap(),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("etc/modules-load.d")).unwrap();
        std::fs::write(dir.path().join("etc/modules-load.d/vmm_clock.conf"), MODULES_LOAD_CONTENT).unwrap();
        std::fs::create_dir_all(dir.path().join("sys/module/vmm_clock")).unwrap();
        let s = m.status();
        assert!(s.installed && s.loaded && s.persisted && !s.built);
        assert_eq!(s.load_error, None);
        let text = render_status(&s);
        assert!(text.contains("  installed:      yes\n") && text.contains("  built:          no\n"), "{text}");
    }
}
