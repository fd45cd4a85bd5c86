//! `almavmm-agent setup`: first boot, and safe to run again at any time. Every step checks
//! before it acts, is recorded in `/var/lib/almavmm/setup.json` as it finishes, and is
//! announced on the journal and the console.

use std::path::PathBuf;
use std::time::Instant;

use almavmm_shared::health::{ClockPath, PackageManager};
use almavmm_shared::paths;
use almavmm_shared::setup::{SetupReport, SetupStep, StepOutcome, step};

use crate::kmod::Module;
use crate::kmod::pkg::{self, DepsError};
use crate::sys::announce::{Level, say};
use crate::sys::distro::OsRelease;
use crate::sys::sysroot::SysRoot;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// When the running kernel's headers are gone from the repositories, install the newest
    /// kernel with its headers, build for it and ask for a reboot.
    pub update_kernel: bool,
}

/// How one step ended, before timing.
#[derive(Debug)]
pub struct StepResult {
    pub outcome: StepOutcome,
    pub detail: String,
    pub changed: bool,
}

impl StepResult {
    pub fn ok(detail: impl Into<String>, changed: bool) -> StepResult {
        StepResult { outcome: StepOutcome::Ok, detail: detail.into(), changed }
    }
    pub fn skipped(detail: impl Into<String>) -> StepResult {
        StepResult { outcome: StepOutcome::Skipped, detail: detail.into(), changed: false }
    }
    pub fn failed(detail: impl Into<String>) -> StepResult {
        StepResult { outcome: StepOutcome::Failed, detail: detail.into(), changed: false }
    }
    pub fn repaired(detail: impl Into<String>) -> StepResult {
        StepResult { outcome: StepOutcome::Repaired, detail: detail.into(), changed: true }
    }
}

/// Runs steps, times them, and keeps `setup.json` current after each.
#[derive(Debug)]
pub struct Recorder {
    report: SetupReport,
    path: PathBuf,
}

impl Recorder {
    pub fn new(root: &SysRoot, instance_id: Option<String>) -> Recorder {
        let started_at = almavmm_shared::clock::unix_now() as i64;
        Recorder {
            report: SetupReport {
                protocol: almavmm_shared::PROTOCOL_VERSION,
                agent_version: almavmm_shared::VERSION.to_string(),
                instance_id,
                started_at,
                finished: false,
                steps: Vec::new(),
            },
            path: root.path(paths::SETUP_JSON),
        }
    }

    /// Run one step. An `Err` is recorded as a failure with its whole cause chain.
    pub fn step(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<StepResult>) -> StepOutcome {
        let started = Instant::now();
        let result = f().unwrap_or_else(|e| StepResult::failed(format!("{e:#}")));
        let duration = started.elapsed();
        let level = match result.outcome {
            StepOutcome::Failed => Level::Error,
            _ => Level::Info,
        };
        say(level, &format!("setup: {name}: {} ({:.1}s): {}", result.outcome, duration.as_secs_f64(), result.detail));
        self.report.steps.push(SetupStep {
            step: name.to_string(),
            outcome: result.outcome,
            detail: result.detail,
            duration_ms: duration.as_millis() as u64,
            changed: result.changed,
        });
        self.save();
        result.outcome
    }

    /// Announce a long step before it runs (a module build under emulation takes minutes).
    pub fn starting(&self, name: &str) {
        say(Level::Info, &format!("setup: {name}: started"));
    }

    fn save(&self) {
        let mut json = serde_json::to_vec_pretty(&self.report).expect("setup report serialises");
        json.push(b'\n');
        if let Err(e) = almavmm_shared::atomic::write_atomic(&self.path, &json, 0o644) {
            say(Level::Warn, &format!("setup: could not write {}: {e}", self.path.display()));
        }
    }

    pub fn finish(mut self) -> SetupReport {
        self.report.finished = true;
        self.save();
        self.report
    }
}

/// The last line: what failed, what changed, or that nothing had to.
pub fn summary(report: &SetupReport) -> String {
    let failed: Vec<&str> = report.failed_steps().map(|s| s.step.as_str()).collect();
    let changed = report.steps.iter().filter(|s| s.changed).count();
    if !failed.is_empty() {
        format!("setup finished with failures: {} (details in {})", failed.join(", "), paths::SETUP_JSON)
    } else if changed == 0 {
        format!("setup done: nothing to change, all {} steps already in place", report.steps.len())
    } else {
        format!("setup done: {changed} of {} steps changed something", report.steps.len())
    }
}

pub fn run(root: &SysRoot, opts: &Options) -> SetupReport {
    let instance_id = read_instance_id(root);
    say(Level::Info, &format!("setup: almavmm-agent {} starting", almavmm_shared::VERSION));
    let mut rec = Recorder::new(root, instance_id.clone());

    let os = detect_distro(&mut rec, root);
    let pm = os.as_ref().and_then(OsRelease::package_manager);
    let path = decide_clock_path(&mut rec, root);
    remove_stray_module_lines(&mut rec, root);

    match path {
        Some(ClockPath::VmmClock) => module_steps(&mut rec, root, os.as_ref(), pm, opts),
        Some(_) => {
            let reason = rec.report.step(step::CLOCK_PATH).map(|s| s.detail.clone()).unwrap_or_default();
            rec.step(step::MODULE, || Ok(StepResult::skipped(reason)));
        }
        None => {
            rec.step(step::MODULE, || Ok(StepResult::skipped("the clock path could not be decided (see above)")));
        }
    }

    install_network_hook(&mut rec, root);
    ensure_service(&mut rec, root);
    restore_selinux_labels(&mut rec, root);
    mark_boot_done(&mut rec, root, instance_id.as_deref());

    let report = rec.finish();
    let line = summary(&report);
    say(if report.succeeded() { Level::Info } else { Level::Error }, &line);
    report
}

/// cloud-init's id for this instance, which the boot-done marker holds.
fn read_instance_id(root: &SysRoot) -> Option<String> {
    root.read_optional(paths::CLOUD_INSTANCE_ID).ok().flatten().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The distribution, which picks the package manager; `None` when os-release is unreadable.
fn detect_distro(rec: &mut Recorder, root: &SysRoot) -> Option<OsRelease> {
    let mut os = None;
    rec.step(step::DISTRO, || {
        let r = OsRelease::read(root)?;
        let detail = r.describe();
        os = Some(r);
        Ok(StepResult::ok(detail, false))
    });
    os
}

/// How this guest should follow the host's clock; `None` when the evidence is unreadable.
fn decide_clock_path(rec: &mut Recorder, root: &SysRoot) -> Option<ClockPath> {
    let mut path = None;
    rec.step(step::CLOCK_PATH, || {
        let decided = crate::clock::path::decide(&crate::clock::path::Evidence::gather(root)?);
        let detail = decided.reason.clone();
        path = Some(decided.path);
        Ok(StepResult::ok(detail, false))
    });
    path
}

fn remove_stray_module_lines(rec: &mut Recorder, root: &SysRoot) {
    rec.step(step::NETWORKD_REPAIR, || {
        let repairs = crate::kmod::stray_line::repair(root)?;
        if repairs.is_empty() {
            Ok(StepResult::ok("no stray vmm_clock line in /etc/systemd/network", false))
        } else {
            let what: Vec<String> = repairs.iter().map(|r| r.describe()).collect();
            Ok(StepResult::repaired(format!(
                "{}: those files configure network interfaces; the module is loaded through {} instead",
                what.join("; "),
                paths::MODULES_LOAD_CONF
            )))
        }
    });
}

fn install_network_hook(rec: &mut Recorder, root: &SysRoot) {
    rec.step(step::NETWORK_HOOK, || {
        let out = crate::net::hook::is_active_cmd().output()?;
        let (detail, changed) = crate::net::hook::install(root, crate::net::hook::parse_is_active(&out.stdout))?;
        Ok(StepResult::ok(detail, changed))
    });
}

fn ensure_service(rec: &mut Recorder, root: &SysRoot) {
    rec.step(step::SERVICE, || {
        let (detail, changed) = crate::sys::service::ensure(root)?;
        Ok(StepResult::ok(detail, changed))
    });
}

/// The marker the host waits for (`up`): setup has finished for this instance.
/// After everything is installed. The binary's label, which decides the watcher's domain,
/// was already reset by the bootstrap before it ran `setup` (host/src/seed/bootstrap.sh).
fn restore_selinux_labels(rec: &mut Recorder, root: &SysRoot) {
    rec.step(step::SELINUX_LABELS, || {
        let kernel = crate::kmod::running_kernel(root)?;
        let (detail, changed) = crate::sys::selinux::ensure(root, kernel.trim())?;
        Ok(StepResult::ok(detail, changed))
    });
}

fn mark_boot_done(rec: &mut Recorder, root: &SysRoot, instance_id: Option<&str>) {
    rec.step(step::BOOT_DONE, || match instance_id {
        Some(id) => {
            let w =
                almavmm_shared::atomic::ensure_file(&root.path(paths::BOOT_DONE), format!("{id}\n").as_bytes(), 0o644)?;
            let detail = if w.changed() {
                format!("wrote {} for instance {id}", paths::BOOT_DONE)
            } else {
                format!("{} already holds instance {id}", paths::BOOT_DONE)
            };
            Ok(StepResult::ok(detail, w.changed()))
        }
        None => Ok(StepResult::skipped(format!(
            "no cloud-init instance id ({} is missing): no marker written",
            paths::CLOUD_INSTANCE_ID
        ))),
    });
}

/// Build dependencies, build, install, hook, load: for the vmm path.
fn module_steps(
    rec: &mut Recorder,
    root: &SysRoot,
    os: Option<&OsRelease>,
    pm: Option<PackageManager>,
    opts: &Options,
) {
    let running = match crate::kmod::running_kernel(root) {
        Ok(k) => k,
        Err(e) => {
            rec.step(step::BUILD_DEPS, || Ok(StepResult::failed(format!("cannot tell the running kernel: {e}"))));
            return;
        }
    };
    let target = match check_build_deps(rec, root, pm, &running, opts) {
        BuildDeps::Ready => running.clone(),
        BuildDeps::Missing => {
            let why = "skipped: the build dependencies are missing (see \"build dependencies\")";
            rec.step(step::MODULE_BUILD, || Ok(StepResult::skipped(why)));
            return;
        }
        BuildDeps::HeadersGone => {
            let pm = pm.expect("headers_gone implies a package manager");
            let os = os.expect("a package manager implies os-release");
            match update_to_newest_kernel(rec, root, pm, os, &running) {
                Some(k) => k,
                None => return,
            }
        }
    };
    let module = Module::new(root.clone(), target);
    if build_module(rec, &module) == StepOutcome::Failed || install_module(rec, &module) == StepOutcome::Failed {
        return;
    }
    install_kernel_hook(rec, root, pm);
    load_module(rec, root, &module, &running);
}

/// Where the build dependencies step leaves the module build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BuildDeps {
    Ready,
    Missing,
    /// The running kernel's headers are gone from the repositories and `--update-kernel`
    /// was given: build for the newest kernel instead.
    HeadersGone,
}

fn check_build_deps(
    rec: &mut Recorder,
    root: &SysRoot,
    pm: Option<PackageManager>,
    running: &str,
    opts: &Options,
) -> BuildDeps {
    let mut headers_gone = false;
    rec.starting(step::BUILD_DEPS);
    let deps = rec.step(step::BUILD_DEPS, || match pm {
        Some(pm) => match pkg::ensure_build_deps(root, pm, running) {
            Ok(done) => Ok(StepResult::ok(done.detail, !done.installed_now.is_empty())),
            Err(e @ DepsError::HeadersUnavailable { .. }) if opts.update_kernel => {
                headers_gone = true;
                Ok(StepResult::skipped(format!("{e}; --update-kernel given: installing the newest kernel instead")))
            }
            Err(e) => Ok(StepResult::failed(e.to_string())),
        },
        None => {
            let missing = pkg::missing_without_package_manager(root, running);
            if missing.is_empty() {
                Ok(StepResult::ok("headers, gcc and make are present", false))
            } else {
                Ok(StepResult::failed(format!(
                    "missing {}, and this distribution has no package manager the agent knows: install them by hand",
                    missing.join(", ")
                )))
            }
        }
    });
    if deps == StepOutcome::Failed {
        BuildDeps::Missing
    } else if headers_gone {
        BuildDeps::HeadersGone
    } else {
        BuildDeps::Ready
    }
}

/// The newest kernel with its headers; the kernel to build for, `None` when that failed.
fn update_to_newest_kernel(
    rec: &mut Recorder,
    root: &SysRoot,
    pm: PackageManager,
    os: &OsRelease,
    running: &str,
) -> Option<String> {
    let mut target = None;
    rec.starting(step::KERNEL_UPDATE);
    rec.step(step::KERNEL_UPDATE, || {
        let (k, pkgs) = pkg::update_kernel(root, pm, os, running)?;
        target = Some(k.clone());
        Ok(StepResult::ok(format!("installed kernel {k} with its headers ({})", pkgs.join(" ")), true))
    });
    target
}

fn build_module(rec: &mut Recorder, module: &Module) -> StepOutcome {
    rec.starting(step::MODULE_BUILD);
    rec.step(step::MODULE_BUILD, || {
        let d = module.build()?;
        Ok(StepResult::ok(d.detail, d.changed))
    })
}

fn install_module(rec: &mut Recorder, module: &Module) -> StepOutcome {
    rec.step(step::MODULE_INSTALL, || {
        let d = module.install()?;
        Ok(StepResult::ok(d.detail, d.changed))
    })
}

fn install_kernel_hook(rec: &mut Recorder, root: &SysRoot, pm: Option<PackageManager>) {
    rec.step(step::KERNEL_HOOK, || match pm {
        Some(pm) => {
            let changed = crate::kmod::kernel_hook::install(root, pm)?;
            if changed.is_empty() {
                Ok(StepResult::ok("kernel hook already in place", false))
            } else {
                Ok(StepResult::ok(format!("installed {}: vmm_clock is rebuilt for every new kernel", changed.join(", ")), true))
            }
        }
        None => Ok(StepResult::skipped("no package manager the agent knows: no kernel hook; rebuild with `almavmm-agent kmod install --kernel KVER` after a kernel update")),
    });
}

/// Load the module now, or, built for a kernel not running yet, have it load at that
/// kernel's boot.
fn load_module(rec: &mut Recorder, root: &SysRoot, module: &Module, running: &str) {
    rec.step(step::MODULE_LOAD, || {
        let target = &module.kernel;
        if target != running {
            let w = almavmm_shared::atomic::ensure_file(
                &root.path(paths::MODULES_LOAD_CONF),
                b"# Installed by almavmm-agent: load the vmm_clock clocksource at boot (modules-load.d(5)).\nvmm_clock\n",
                0o644,
            )?;
            return Ok(StepResult {
                outcome: StepOutcome::Skipped,
                detail: format!(
                    "vmm_clock is built for kernel {target}, which is not running yet: reboot (`systemctl reboot`) and it loads at boot ({})",
                    paths::MODULES_LOAD_CONF
                ),
                changed: w.changed(),
            });
        }
        let d = module.load()?;
        Ok(StepResult::ok(d.detail, d.changed))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_setup_json_current_and_turns_errors_into_failures() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        let mut rec = Recorder::new(&root, Some("iid-1".into()));
        assert_eq!(rec.step("one", || Ok(StepResult::ok("fine", true))), StepOutcome::Ok);
        let on_disk: SetupReport =
            serde_json::from_slice(&std::fs::read(dir.path().join("var/lib/almavmm/setup.json")).unwrap()).unwrap();
        assert!(!on_disk.finished, "written after each step, unfinished until the end");
        assert_eq!(on_disk.steps.len(), 1);
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        assert_eq!(rec.step("two", || Err(anyhow::Error::new(io).context("writing /etc/x"))), StepOutcome::Failed);
        let report = rec.finish();
        assert!(report.finished && !report.succeeded());
        assert_eq!(report.steps[1].detail, "writing /etc/x: denied");
        assert_eq!(summary(&report), "setup finished with failures: two (details in /var/lib/almavmm/setup.json)");
    }

    #[test]
    fn summary_says_when_nothing_changed() {
        let mut r = SetupReport {
            protocol: 1,
            agent_version: "0.1.0".into(),
            instance_id: None,
            started_at: 0,
            finished: true,
            steps: vec![SetupStep {
                step: "a".into(),
                outcome: StepOutcome::Ok,
                detail: String::new(),
                duration_ms: 1,
                changed: false,
            }],
        };
        assert_eq!(summary(&r), "setup done: nothing to change, all 1 steps already in place");
        r.steps[0].changed = true;
        assert_eq!(summary(&r), "setup done: 1 of 1 steps changed something");
    }
}
