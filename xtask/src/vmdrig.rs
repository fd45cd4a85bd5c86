//! `cargo xtask e2e --backend vmd`: the end-to-end scenario through the vmd backend, on
//! this Linux machine, against an OpenBSD host emulated from OpenBSD's source.
//!
//! Outside, this builds what the scenario needs (test image, agent, host binary, the
//! `openbsd-standin` program), makes a rig folder with a `bin/` of stand-ins (symlinks
//! named vmctl, vmd, rcctl, ifconfig, sysctl, pfctl, fw_update, doas) and runs the
//! scenario again inside private namespaces:
//!
//! `unshare --mount --net --pid --fork --kill-child --mount-proc --propagation private`.
//!
//! Inside ([`enter`]), /etc becomes an overlay whose writable layer is a tmpfs of the
//! namespace, so `host setup` really writes /etc/vm.conf, /etc/pf.conf, /etc/sysctl.conf
//! and /etc/apm/resume, and nothing outside changes. The network namespace starts with
//! only `lo` (brought up for the image mirror on 127.0.0.1); guests get real tap devices
//! with vmd's addresses and DHCP. The scenario's process is PID 1 of its PID namespace:
//! when it ends, pass or fail, the kernel kills everything left in there (QEMU, dnsmasq),
//! the taps and the network namespace go with them, the mounts vanish, and the rig folder
//! is removed here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::limited::limited;

/// Building the host, xtask and the stand-in (incremental after the e2e's own builds).
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

use crate::e2e::E2eArgs;
use crate::util::{Stage, project_root};

/// The programs the stand-in answers as.
pub const TOOLS: &[&str] = &["vmctl", "vmd", "rcctl", "ifconfig", "sysctl", "pfctl", "fw_update", "doas"];

/// The longest the scenario may take inside the namespaces (the QEMU one takes ~15 min
/// under TCG); then it is killed, and the namespaces with it.
const LIMIT: Duration = Duration::from_secs(75 * 60);

/// Outside: prepare, then run the scenario in the namespaces and wait for it, bounded.
pub fn run(args: &E2eArgs) -> anyhow::Result<()> {
    ensure!(nix_is_root(), "the vmd rig needs root (unshare of mount and network namespaces, tap devices)");
    for (prog, pkg) in [("unshare", "util-linux"), ("ip", "iproute2"), ("dnsmasq", "dnsmasq-base")] {
        ensure!(which(prog), "{prog} is missing: apt-get install {pkg} (or `cargo xtask deps --install`)");
    }
    {
        let _s = Stage::new("e2e vmd: test image, agent, binaries");
        // The flavour the scenario inside will boot (it is passed on below).
        crate::testimage::ensure_image_flavor(crate::testimage::Suite::Bookworm, args.flavor)?;
        crate::agent::build()?;
        limited("cargo", BUILD_LIMIT)
            .args(["build", "-q", "-p", "almavmm-host", "-p", "xtask", "--bins"])
            .run_inherited()?;
    }
    let rig = tempfile::Builder::new().prefix("almavmm-vmd-rig.").tempdir_in("/tmp")?;
    let bin = rig.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    let standin = project_root().join("target/debug/openbsd-standin");
    ensure!(standin.is_file(), "{} was not built", standin.display());
    for t in TOOLS {
        std::os::unix::fs::symlink(&standin, bin.join(t))?;
    }
    std::fs::create_dir_all(rig.path().join("state"))?;
    std::fs::create_dir_all(rig.path().join("ovl"))?;
    // The xtask just built (this process's own file may have been replaced by that build).
    let xtask = project_root().join("target/debug/xtask");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut inner = limited("unshare", LIMIT)
        .args(["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "--"])
        .arg(&xtask)
        .args(["e2e", "--backend", "vmd", "--flavor", args.flavor.name(), "--inside-rig"])
        .arg(rig.path())
        .env("PATH", path)
        .env("OPENBSD_STANDIN_STATE", rig.path().join("state"))
        .current_dir(project_root());
    if args.keep {
        inner = inner.arg("--keep");
    }
    let started = Instant::now();
    // At the limit the whole group goes, unshare with it, and (--kill-child) the namespaces.
    let result = inner.run_inherited();
    eprintln!("e2e vmd: the namespaces ran {:.0}s", started.elapsed().as_secs_f64());
    if args.keep {
        eprintln!("kept: the rig folder {}", rig.keep().display());
    }
    result.context("the vmd scenario failed")
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|r| r.split_whitespace().nth(1) == Some("0"))))
        .unwrap_or(false)
}

fn which(prog: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(prog).is_file())
}

/// Inside the namespaces, before the scenario: the /etc overlay, `lo`, a `wheel` group
/// (host setup installs files `-o root -g wheel`, as on OpenBSD).
pub fn enter(rig: &Path) -> anyhow::Result<()> {
    ensure!(std::process::id() == 1, "--inside-rig is for the process unshare starts (PID 1 of its namespace)");
    let _s = Stage::new("e2e vmd: private /etc and network");
    let ovl = rig.join("ovl");
    let sh_run = |prog: &str, args: &[&str]| -> anyhow::Result<()> {
        almavmm_shared::runner::Cmd::new(prog).args(args).timeout(Duration::from_secs(30)).run()?;
        Ok(())
    };
    sh_run("mount", &["-t", "tmpfs", "-o", "mode=0755", "rig-etc", &ovl.display().to_string()])?;
    std::fs::create_dir_all(ovl.join("upper"))?;
    std::fs::create_dir_all(ovl.join("work"))?;
    let opts = format!("lowerdir=/etc,upperdir={},workdir={}", ovl.join("upper").display(), ovl.join("work").display());
    sh_run("mount", &["-t", "overlay", "rig-etc-overlay", "-o", &opts, "/etc"])?;
    // sysfs shows the network namespace of whoever mounted it: a fresh one for ours, so
    // that /sys/class/net lists the rig's taps (ifconfig's stand-in reads it).
    sh_run("mount", &["-t", "sysfs", "rig-sysfs", "/sys"])?;
    sh_run("ip", &["link", "set", "lo", "up"])?;
    let group = std::fs::read_to_string("/etc/group")?;
    if !group.lines().any(|l| l.starts_with("wheel:")) {
        std::fs::write("/etc/group", format!("{group}wheel:x:0:root\n"))?;
    }
    // A fresh OpenBSD host has none of these (Debian's /etc/sysctl.conf is hidden by the
    // overlay): the first `up` must create them all.
    for f in ["/etc/vm.conf", "/etc/sysctl.conf", "/etc/apm/resume", "/etc/firmware/vmm-bios"] {
        if Path::new(f).exists() {
            std::fs::remove_file(f).with_context(|| format!("hiding {f} in the overlay"))?;
        }
    }
    // OpenBSD's default pf.conf (etc/pf.conf 1.55), which host setup edits.
    std::fs::write("/etc/pf.conf", include_str!("../../host/tests/fixtures/openbsd/pf.conf.default"))?;
    Ok(())
}

/// The guest's address as the vmd backend finds it: its row in `vmctl status`, then the
/// tap vmd described for that id in `ifconfig tap`.
pub fn guest_address(name: &str) -> anyhow::Result<String> {
    use almavmm_host::backend::vmd::{ifconfig, status};
    let out = |prog: &str, arg: &str| -> anyhow::Result<String> {
        Ok(limited(prog, Duration::from_secs(30)).arg(arg).output()?.stdout)
    };
    let rows = status::parse(&out("vmctl", "status")?).map_err(|e| anyhow::anyhow!("{e}"))?;
    let row = status::find(&rows, name).with_context(|| format!("vmd does not list {name}"))?;
    let ifaces = ifconfig::parse(&out("ifconfig", "tap")?);
    let addr = ifconfig::guest_address(&ifaces, row.id, name)
        .with_context(|| format!("no tap described vm{}-if0-{name}", row.id))?;
    Ok(addr.to_string())
}

/// A file the stand-in keeps for the guest (console.log, qmp.sock).
pub fn guest_file(name: &str, file: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("OPENBSD_STANDIN_STATE").unwrap_or_default()).join("vms").join(name).join(file)
}

/// `doctor --json` in the rig. Everything must pass but `clock.path`: the rig's VM is QEMU
/// under TCG, whose guest finds the TCG signature and no paravirtual clock, and doctor,
/// knowing the backend is vmd (which always offers vmm's pvclock), rightly fails that
/// check. It must fail for exactly that reason, and be the only failure.
pub fn doctor_report(w: &crate::e2e::World) -> anyhow::Result<serde_json::Value> {
    let (code, out, err) = w.host_quiet(&["doctor", crate::e2e::GUEST, "--json"])?;
    let report: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("doctor printed no JSON ({code:?}):\n{out}{err}"))?;
    let failed: Vec<&serde_json::Value> =
        report["checks"].as_array().map(|c| c.iter().filter(|c| c["status"] == "fail").collect()).unwrap_or_default();
    let path_only = failed.len() == 1
        && failed[0]["id"] == "clock.path"
        && failed[0]["finding"].as_str().unwrap_or("").contains("TCGTCGTCGTCG");
    ensure!(code == Some(1) && path_only, "doctor in the vmd rig: exit {code:?}, failures {failed:?}");
    Ok(report)
}
