//! `cargo xtask e2e`: a real guest booted through `almavmm-host`, driven only through the
//! public CLI, exactly as a user would: image served over HTTP from 127.0.0.1 with a signed
//! checksum list, `up`, the bootstrap and agent setup, the kernel module in the guest, the
//! pinned host key, stop and up again, destroy.
//!
//! The guest is the Debian test image from `cargo xtask image` (compressed qcow2, so `up`
//! takes the conversion path the AlmaLinux image needs), booted by the QEMU backend. Each
//! step prints its name and duration; on failure the console tail, the agent's journal,
//! setup.json and bootstrap.log are printed (within [`DIAGNOSE_LIMIT`]); the guest is cleaned
//! up whatever happens.
//!
//! Every program the scenario runs (almavmm-host, ssh, ssh-keygen, cargo) goes through
//! [`limited`] and is killed when it overruns its limit, so a dead guest makes the scenario
//! fail, never hang; every ssh also has a connect timeout and keepalives.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use almavmm_shared::wait::{Deadline, wait_until};
use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::limited::{Io, Limited, limited};
use crate::serve;
use crate::testimage::{self, Flavor, Suite};
use crate::util::{Stage, project_root};

pub(crate) const GUEST: &str = "e2e";

/// Building almavmm-host (a cold build on two cores takes a few minutes).
pub(crate) const CARGO_BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Any ssh-keygen.
pub(crate) const KEYGEN_LIMIT: Duration = Duration::from_secs(30);
/// A command in the running guest, unless the caller says otherwise (building the kernel
/// module in the guest under TCG is the slowest).
const GUEST_LIMIT: Duration = Duration::from_secs(300);
/// All the diagnostics printed after a failure, together.
pub(crate) const DIAGNOSE_LIMIT: Duration = Duration::from_secs(25);
/// What is fetched from the guest after a failure, besides the console.
const DIAGNOSTICS: [(&str, &str); 3] = [
    ("agent journal", "sudo journalctl -b --no-pager -u almavmm-agent -u cloud-final -n 80"),
    ("setup.json", "sudo cat /var/lib/almavmm/setup.json"),
    ("bootstrap.log", "sudo tail -n 40 /var/lib/almavmm/bootstrap.log"),
];
/// ssh for a diagnostic: a dead guest's forwarder (see [`SSH_OPTIONS`]) costs 5 s, not 10.
const DIAGNOSTIC_SSH_OPTIONS: [&str; 6] =
    ["-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=2"];

/// One diagnostic's limit: a third of [`DIAGNOSE_LIMIT`], and never past `deadline`.
fn diagnostic_limit(deadline: Deadline) -> anyhow::Result<Duration> {
    let limit = deadline.left().min(DIAGNOSE_LIMIT / 3);
    ensure!(!limit.is_zero(), "skipped: the diagnostics' {} s are used up", DIAGNOSE_LIMIT.as_secs());
    Ok(limit)
}

/// ssh to `127.0.0.1:port` as `almalinux` with `key`, the host key pinned in `known_hosts`
/// under the guest's name. `options` (`-o X=Y` pairs) come first, so they win over the
/// defaults here (ssh takes the first value it is given).
fn ssh_to(
    host: &str,
    port: u16,
    known_hosts: &Path,
    key: &Path,
    options: &[&str],
    remote: &str,
    limit: Duration,
) -> Limited {
    limited("ssh", limit)
        .args(options)
        .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-o")
        .arg(format!("HostKeyAlias={GUEST}"))
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(SSH_OPTIONS)
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string(), &format!("almalinux@{host}"), "--", remote])
}

/// ssh to the guest's forwarded port: QEMU's forwarder accepts the connection even when the
/// guest is dead, so the banner wait needs a bound of its own, and a session whose guest
/// stops answering ends after ServerAliveInterval × ServerAliveCountMax (30 s).
pub(crate) const SSH_OPTIONS: [&str; 6] =
    ["-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6"];

/// How long `almavmm-host ARGS` may run in the harness: its own `--timeout` (or that
/// option's default) where it has one, plus time for what it does around the wait.
pub(crate) fn host_limit(args: &[&str]) -> Duration {
    let own = |default: u64| {
        args.windows(2).find(|w| w[0] == "--timeout").and_then(|w| w[1].parse::<u64>().ok()).unwrap_or(default)
    };
    Duration::from_secs(match args.first().copied() {
        // The timeout covers the wait for sshd and then the one for the agent's setup;
        // downloading, converting and seeding come on top.
        Some("up") => 2 * own(900) + 600,
        Some("start") => own(600) + 300,
        Some("stop" | "destroy") => own(120) + 300,
        _ => 120,
    })
}

#[derive(Debug, Default, clap::Args)]
pub struct E2eArgs {
    /// Leave the guest and the state directory in place at the end (for debugging).
    #[arg(long)]
    pub keep: bool,
    /// Instead of the main scenario, provision a Debian 13 guest from the agent's source
    /// bundle (no prebuilt agent anywhere) and check it with doctor.
    #[arg(long)]
    pub bundle: bool,
    /// Network manager of the guest image. NetworkManager by default: it is what AlmaLinux
    /// runs. The bundle scenario always boots the networkd flavour (Debian 13), so each
    /// flavour is booted by one scenario.
    #[arg(long, value_enum, default_value_t = Flavor::Nm)]
    pub flavor: Flavor,
    /// `vmd`: the same scenario through the vmd backend, against an OpenBSD host emulated
    /// in private namespaces (crate::vmdrig).
    #[arg(long, value_parser = ["qemu", "vmd"])]
    pub backend: Option<String>,
    /// (Internal) running inside the vmd rig's namespaces, with this rig folder.
    #[arg(long, hide = true)]
    pub inside_rig: Option<PathBuf>,
}

/// Everything the scenario set up, torn down on drop.
pub(crate) struct World {
    dir: tempfile::TempDir,
    host_bin: PathBuf,
    /// The static agent to pass with --agent; none in the bundle scenario.
    agent: Option<PathBuf>,
    mirror: serve::Mirror,
    keep: bool,
    /// Through the vmd backend, inside the vmd rig.
    vmd: bool,
}

impl Drop for World {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept: ALMAVMM_HOME={}", self.home().display());
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            return;
        }
        // Power off whatever is left (the scenario may have failed half way).
        let _ = self.host_quiet(&["destroy", GUEST, "--yes"]);
    }
}

impl World {
    pub(crate) fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub(crate) fn key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }
    pub(crate) fn vm_dir(&self) -> PathBuf {
        self.home().join("vms").join(GUEST)
    }

    /// `almavmm-host ARGS` against this world's state directory, limited by [`host_limit`].
    pub(crate) fn host_command(&self, args: &[&str]) -> Limited {
        limited(&self.host_bin, host_limit(args))
            .args(args)
            .env("ALMAVMM_HOME", self.home())
            .env("NO_COLOR", "1")
            .env_remove("ALMAVMM_AGENT")
    }

    /// Run `almavmm-host ARGS`, progress on our stderr, stdout returned; fail on non-zero.
    pub(crate) fn host(&self, args: &[&str]) -> anyhow::Result<String> {
        eprintln!("$ almavmm-host {}", args.join(" "));
        let out = self.host_command(args).stderr(Io::Inherit).output()?;
        ensure!(out.status.success(), "almavmm-host {} failed ({}):\n{}", args.join(" "), out.status, out.stdout);
        Ok(out.stdout)
    }

    /// Run and return (exit code, stdout, stderr) without judging.
    pub(crate) fn host_quiet(&self, args: &[&str]) -> anyhow::Result<(Option<i32>, String, String)> {
        let out = self.host_command(args).output()?;
        Ok((out.code(), out.stdout, out.stderr))
    }

    pub(crate) fn host_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.host(args)?;
        serde_json::from_str(&out).with_context(|| format!("almavmm-host {} printed no JSON:\n{out}", args.join(" ")))
    }

    pub(crate) fn ssh_port(&self) -> anyhow::Result<u16> {
        let st: Value = serde_json::from_slice(&std::fs::read(self.vm_dir().join("state.json"))?)?;
        st["ssh_port"].as_u64().map(|p| p as u16).context("state.json has no ssh_port")
    }

    /// A command in the guest over SSH with the pinned key, as the user `almalinux`.
    pub(crate) fn guest(&self, remote: &str) -> anyhow::Result<String> {
        let (code, out, err) = self.guest_unchecked(remote)?;
        ensure!(code == Some(0), "in the guest, `{remote}` failed ({code:?}):\n{out}{err}");
        Ok(out)
    }

    pub(crate) fn guest_unchecked(&self, remote: &str) -> anyhow::Result<(Option<i32>, String, String)> {
        let out = self.ssh_direct(&[], remote, GUEST_LIMIT)?.output()?;
        Ok((out.code(), out.stdout, out.stderr))
    }

    /// ssh straight to the guest's forwarded port with the pinned key, as `almalinux`.
    pub(crate) fn ssh_direct(&self, options: &[&str], remote: &str, limit: Duration) -> anyhow::Result<Limited> {
        let (host, port) = if self.vmd {
            (crate::vmdrig::guest_address(GUEST)?, 22)
        } else {
            ("127.0.0.1".to_string(), self.ssh_port()?)
        };
        Ok(ssh_to(&host, port, &self.vm_dir().join("known_hosts"), &self.key(), options, remote, limit))
    }

    fn console(&self) -> String {
        let log =
            if self.vmd { crate::vmdrig::guest_file(GUEST, "console.log") } else { self.vm_dir().join("console.log") };
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// What to print when a step fails: console tail, agent journal, setup.json,
    /// bootstrap.log; all of it within [`DIAGNOSE_LIMIT`], even when the guest is dead.
    fn diagnose(&self) {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        eprintln!("---- console.log (last 60 lines) ----");
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("| {l}");
        }
        let deadline = Deadline::after(DIAGNOSE_LIMIT);
        for (what, remote) in DIAGNOSTICS {
            eprintln!("---- {what} ----");
            match self.diagnostic(remote, deadline) {
                Ok(out) => eprintln!("{}{}", out.stdout, out.stderr),
                Err(e) => eprintln!("(unavailable: {e:#})"),
            }
        }
    }

    fn diagnostic(&self, remote: &str, deadline: Deadline) -> anyhow::Result<crate::limited::Output> {
        let limit = diagnostic_limit(deadline)?;
        self.ssh_direct(&DIAGNOSTIC_SSH_OPTIONS, remote, limit)?.output()
    }
}

pub fn run(args: E2eArgs) -> anyhow::Result<()> {
    if args.backend.as_deref() == Some("vmd") && args.inside_rig.is_none() {
        return crate::vmdrig::run(&args);
    }
    if let Some(rig) = &args.inside_rig {
        crate::vmdrig::enter(rig)?;
    }
    let started = Instant::now();
    let suite = if args.bundle { Suite::Trixie } else { Suite::Bookworm };
    let flavor = if args.bundle { Flavor::Networkd } else { args.flavor };
    let image = {
        let _s = Stage::new(format!("e2e: test image ({} flavour)", flavor.name()));
        testimage::ensure_image_flavor(suite, flavor)?
    };
    let agent = if args.bundle {
        None
    } else {
        let _s = Stage::new("e2e: static agent");
        Some(crate::agent::build()?)
    };
    let host_bin = {
        let _s = Stage::new("e2e: host binary");
        build_host(false)?
    };
    let world = {
        let _s = Stage::new("e2e: signed image served on 127.0.0.1");
        let mut w = setup_world(host_bin, agent, &image, args.keep)?;
        w.vmd = args.inside_rig.is_some();
        w
    };
    // The inputs as they were when the bundle was made: only those count as verified.
    let inputs = if args.bundle { Some(crate::bundle::inputs_hash()?) } else { None };
    let result = if args.bundle { bundle_scenario(&world) } else { scenario(&world, flavor) };
    if let (Some(hash), true) = (inputs, result.is_ok()) {
        crate::bundle::mark_verified(&hash)?;
        eprintln!("recorded in {}: commit it so CI need not repeat this scenario", crate::bundle::VERIFIED_STAMP);
    }
    if let Err(e) = &result {
        eprintln!("e2e FAILED: {e:#}");
        world.diagnose();
    }
    drop(world);
    eprintln!("e2e took {:.0}s", started.elapsed().as_secs_f64());
    result
}

/// A provisioned guest from the Debian test image, for benchmarks; cleaned up on drop.
pub(crate) fn provisioned() -> anyhow::Result<World> {
    let image = testimage::ensure_image(Suite::Bookworm)?;
    let agent = crate::agent::build()?;
    let host_bin = build_host(true)?;
    let w = setup_world(host_bin, Some(agent), &image, false)?;
    up_fresh(&w, &[])?;
    std::fs::write(w.dir.path().join("ssh_config"), w.host(&["ssh-config", "--print"])?)?;
    Ok(w)
}

/// `cargo build -p almavmm-host` (debug or release); the binary's path.
pub(crate) fn build_host(release: bool) -> anyhow::Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    let mut c = limited("cargo", CARGO_BUILD_LIMIT).args(["build", "-q", "-p", "almavmm-host"]);
    if release {
        c = c.arg("--release");
    }
    c.run_inherited()?;
    Ok(project_root().join("target").join(profile).join("almavmm-host"))
}

/// A new ed25519 key pair without passphrase at `path` (and `path`.pub).
pub(crate) fn keygen(path: &Path) -> anyhow::Result<()> {
    limited("ssh-keygen", KEYGEN_LIMIT)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "almavmm-test", "-f"])
        .arg(path)
        .run()?;
    Ok(())
}

fn setup_world(host_bin: PathBuf, agent: Option<PathBuf>, image: &Path, keep: bool) -> anyhow::Result<World> {
    let dir = tempfile::Builder::new().prefix("almavmm-e2e.").tempdir_in("/tmp")?;
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image.qcow2".into());
    let mirror = serve::mirror(dir.path(), image, &name)?;
    keygen(&dir.path().join("id_ed25519"))?;
    Ok(World { dir, host_bin, agent, mirror, keep, vmd: false })
}

fn step(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let _s = Stage::new(format!("e2e: {name}"));
    f().with_context(|| format!("step `{name}`"))
}

fn scenario(w: &World, flavor: Flavor) -> anyhow::Result<()> {
    // Through vmd, only the steps in which the host's backend takes part. The others
    // exercise code that is the same whichever hypervisor runs the guest: the agent inside
    // the guest (2's module build, 3b, 5b to 5d), and the proxy's leases and lock (8b,
    // whose stops and starts go through the same lifecycle calls as 6 to 8). Under TCG they
    // would cost the vmd run about 6 of its 10 minutes.
    let guest_only_steps = !w.vmd;
    step("1. up from an empty ALMAVMM_HOME", || first_up(w))?;
    step("2. bootstrap, setup and the module in the guest", || setup_checks(w))?;
    step("3. doctor: every check present, none fails", || doctor_all(w))?;
    if guest_only_steps {
        step("3b. health: a full root fails guest.disk, a failed unit is named; both clear", || health_pressure(w))?;
    }
    step("4. security: scrubbed seed, pinned host key", || security(w))?;
    step("5. clock: a 30 s pause, doctor, sync", || clock(w))?;
    if guest_only_steps {
        step("5b. clock: the watcher alone lands within 100 ms after 15 s and 45 s pauses", || watcher_rtc_phase(w))?;
        step("5c. confinement: the watcher's unit rates no worse than chrony's, and still works", || confinement(w))?;
    }
    if guest_only_steps && flavor == Flavor::Nm {
        step("5d. NetworkManager: link down/up fires the dispatcher hook, the watcher sees it", || network_manager(w))?;
    }
    // Ordered so that each boot serves as many checks as it can: under TCG a boot and a
    // clean power-off cost about a minute, and CI runs this scenario twice.
    step("6. ssh-proxy with OpenSSH: cold start, sessions, idle stop", || proxy(w))?;
    step("7. after a clean stop, up again without re-provisioning; the proxy leaves it up", || up_again(w))?;
    step("8. ssh-proxy: an unknown name, `stop` under a live shared connection", || proxy_stop(w))?;
    if guest_only_steps {
        step("8b. ssh-proxy: a killed proxy, back-to-back sessions across idle stops", || proxy_races(w))?;
    }
    step("9. destroy", || destroy(w))?;
    Ok(())
}

fn stage<'a>(up: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    up["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["name"] == name))
        .with_context(|| format!("no stage {name} in {up}"))
}

/// `up` from an empty state directory, against the signed local mirror.
fn up_fresh(w: &World, extra: &[&str]) -> anyhow::Result<Value> {
    let key_pub = format!("{}.pub", w.key().display());
    let signing_key = w.mirror.signing_key.display().to_string();
    let mut args = vec![
        "up",
        GUEST,
        "--image-url",
        &w.mirror.url,
        "--signing-key",
        &signing_key,
        "--signing-key-fingerprint",
        &w.mirror.fingerprint,
        "--ssh-key",
        &key_pub,
        "--memory",
        "1536M",
        "--disk",
        "8G",
        "--json",
    ];
    let agent = w.agent.as_ref().map(|a| a.display().to_string());
    if let Some(a) = &agent {
        args.extend(["--agent", a]);
    }
    if w.vmd {
        args.extend(["--backend", "vmd"]);
    }
    args.extend(extra);
    w.host_json(&args)
}

fn first_up(w: &World) -> anyhow::Result<()> {
    // The served image is what the product must convert: inspect says so first.
    let insp = w.host_json(&["image", "inspect", "--json", &w.mirror.served_image.display().to_string()])?;
    ensure!(insp.to_string().contains("compressed"), "inspect does not mention compression: {insp}");
    let up = up_fresh(w, &[])?;
    let image = stage(&up, "image")?;
    let detail = image["detail"].as_str().unwrap_or("");
    ensure!(image["outcome"] == "done", "image stage: {image}");
    for needed in ["downloaded", "signature and SHA-256 verified", "converted"] {
        ensure!(detail.contains(needed), "image stage detail lacks {needed:?}: {detail}");
    }
    for name in ["disk", "seed", "start", "ssh", "agent", "seed scrub", "health"] {
        let s = stage(&up, name)?;
        ensure!(s["outcome"] == "done", "stage {name} did not run: {s}");
    }
    ensure!(up["already_up"] == false && up["state"] == "running", "{up}");
    Ok(())
}

fn setup_checks(w: &World) -> anyhow::Result<()> {
    let console = w.console();
    for step in [
        "mount seed: ok",
        "verify payload: ok",
        "install agent: ok",
        "install module source: ok",
        "agent setup: ok",
        "done",
    ] {
        ensure!(
            console.lines().any(|l| l.contains("almavmm-bootstrap:") && l.contains(step)),
            "console.log lacks the bootstrap step {step:?}"
        );
    }
    let setup: Value = serde_json::from_str(&w.guest("sudo cat /var/lib/almavmm/setup.json")?)?;
    let steps = setup["steps"].as_array().context("setup.json has no steps")?;
    ensure!(steps.len() >= 5, "setup.json has too few steps: {setup}");
    for s in steps {
        ensure!(s["outcome"] != "failed", "setup step failed: {s}");
    }
    let clock = steps.iter().find(|s| s["step"] == "clock path").context("no clock path step")?;
    ensure!(clock["detail"].as_str().unwrap_or("").contains("no paravirtual clock offered"), "clock path: {clock}");
    let health: Value = serde_json::from_str(&w.guest("sudo almavmm-agent health --json")?)?;
    ensure!(health["clock_path"]["path"] == "none", "health clock path: {}", health["clock_path"]);
    ensure!(health["clock_path"]["reason"].as_str().unwrap_or("").contains("no paravirtual clock offered"));

    // The module builds in the guest against its own headers, and refuses to load off vmm.
    // The build is the guest's alone (half a minute under TCG): the QEMU run proves it.
    if !w.vmd {
        w.guest("sudo almavmm-agent kmod build")?;
    }
    let (code, out, err) = w.guest_unchecked("sudo almavmm-agent kmod load")?;
    ensure!(code != Some(0), "kmod load succeeded outside vmm:\n{out}{err}");
    ensure!(format!("{out}{err}").contains("not under OpenBSD vmm"), "kmod load said:\n{out}{err}");
    let status = w.guest("sudo almavmm-agent kmod status")?;
    ensure!(status.contains("not under OpenBSD vmm"), "kmod status does not report the reason:\n{status}");
    let dmesg = w.guest("sudo dmesg")?;
    ensure!(dmesg.contains("not under OpenBSD vmm"), "the kernel log lacks the module's line");
    Ok(())
}

fn security(w: &World) -> anyhow::Result<()> {
    let seed = std::fs::read(w.vm_dir().join("seed.iso"))?;
    ensure!(!contains(&seed, b"PRIVATE KEY"), "seed.iso still holds a private key after first boot");
    // A different key pinned for the guest: every connection must be refused, loudly.
    let kh = w.vm_dir().join("known_hosts");
    let real = std::fs::read_to_string(&kh)?;
    let other = w.dir.path().join("other");
    keygen(&other)?;
    let other_pub = std::fs::read_to_string(other.with_extension("pub"))?;
    let fake: Vec<&str> = other_pub.split_whitespace().collect();
    std::fs::write(&kh, format!("{GUEST} {} {}\n", fake[0], fake[1]))?;
    let (code, _, err) = w.guest_unchecked("true")?;
    let (hcode, _, herr) = w.host_quiet(&["sync", GUEST])?;
    let (dcode, dout, _) = w.host_quiet(&["doctor", GUEST, "--json"])?;
    std::fs::write(&kh, &real)?;
    ensure!(code == Some(255) && err.contains("Host key verification failed"), "ssh with a wrong pin: {code:?} {err}");
    ensure!(
        hcode == Some(1) && herr.contains("differs from the one pinned"),
        "almavmm-host sync with a wrong pin exited {hcode:?}: {herr}"
    );
    let doctor: Value = serde_json::from_str(&dout)?;
    let ssh = doctor["checks"].as_array().and_then(|c| c.iter().find(|c| c["id"] == "guest.ssh")).cloned();
    ensure!(
        dcode == Some(1) && ssh.as_ref().is_some_and(|c| c["status"] == "fail"),
        "doctor with a wrong pin: exit {dcode:?}, guest.ssh {ssh:?}"
    );
    w.guest("true").context("the real pin no longer works")?;
    Ok(())
}

fn check<'a>(report: &'a Value, id: &str) -> anyhow::Result<&'a Value> {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == id))
        .with_context(|| format!("doctor has no check {id}: {report}"))
}

fn doctor_all(w: &World) -> anyhow::Result<()> {
    let started = Instant::now();
    let report = if w.vmd { crate::vmdrig::doctor_report(w)? } else { w.host_json(&["doctor", GUEST, "--json"])? };
    eprintln!("doctor took {:.2}s", started.elapsed().as_secs_f64());
    for id in [
        "host.backend",
        "guest.running",
        "guest.address",
        "guest.ssh",
        "guest.agent",
        "clock.path",
        "clock.source",
        "clock.offset",
        "network.address",
        "network.route",
        "network.dns",
        "network.resolve",
        "network.gateway",
    ] {
        let c = check(&report, id)?;
        if w.vmd && id == "clock.path" {
            continue; // judged by vmdrig::doctor_report
        }
        ensure!(c["status"] != "fail" && c["status"] != "skip", "{id}: {c}");
    }
    ensure!(report["fail"] == 0 || w.vmd, "{report}");
    ensure!(report["clock"]["rounds"].as_u64() >= Some(8), "{report}");
    Ok(())
}

/// A file filling the guest's root, and a transient unit that fails: doctor must fail
/// `guest.disk` naming `/` and name the unit in `guest.units`; once both are cleared, the
/// disk check passes again and the unit is gone. `status --json` shows the guest's disk.
fn health_pressure(w: &World) -> anyhow::Result<()> {
    const FILL: &str = "/var/tmp/almavmm-e2e-fill";
    const UNIT: &str = "almavmm-e2e-fails.service";
    // doctor exits 1 when a check fails: read its JSON whatever the exit status.
    let doctor = || -> anyhow::Result<Value> {
        let (code, out, err) = w.host_quiet(&["doctor", GUEST, "--json"])?;
        ensure!(matches!(code, Some(0 | 1)), "doctor exited {code:?}:\n{out}{err}");
        serde_json::from_str(&out).with_context(|| format!("doctor printed no JSON:\n{out}{err}"))
    };
    let before = doctor()?;
    ensure!(check(&before, "guest.disk")?["status"] == "ok", "the guest's root should start healthy: {before}");
    ensure!(check(&before, "host.space")?["status"] != "skip", "{before}");

    // Leave 2% of the root's size available: at least 97% used as df counts it, whatever
    // the reserved blocks. fallocate allocates without writing, so this is quick under TCG.
    w.guest(&format!(
        "df -B1 --output=size,avail / | tail -n 1 | {{ read size avail; sudo fallocate -l $((avail - size / 50)) {FILL}; }}"
    ))?;
    w.guest(&format!("sudo systemd-run --unit={UNIT} --description='almavmm e2e: a unit that fails' /bin/false"))?;
    let failed = wait_until(Deadline::after(Duration::from_secs(30)), Duration::from_millis(500), || {
        w.guest_unchecked(&format!("systemctl is-failed {UNIT}")).map(|(code, _, _)| (code == Some(0)).then_some(()))
    })?;
    ensure!(failed.is_some(), "{UNIT} did not fail within 30 s");
    let full = doctor()?;
    let disk = check(&full, "guest.disk")?;
    ensure!(disk["status"] == "fail", "a root at 97% must fail guest.disk: {disk}");
    ensure!(disk["finding"].as_str().is_some_and(|f| f.starts_with("/ 9")), "the finding names /: {disk}");
    ensure!(disk["fix"].as_str().is_some_and(|f| f.contains("du -xh")), "{disk}");
    let units = check(&full, "guest.units")?;
    ensure!(units["status"] == "warn", "{units}");
    ensure!(units["finding"].as_str().is_some_and(|f| f.contains(UNIT)), "the finding names {UNIT}: {units}");

    w.guest(&format!("sudo rm -f {FILL} && sudo systemctl reset-failed {UNIT}"))?;
    let after = doctor()?;
    let disk = check(&after, "guest.disk")?;
    ensure!(disk["status"] == "ok", "with the file gone, guest.disk passes again: {disk}");
    let units = check(&after, "guest.units")?;
    ensure!(!units["finding"].as_str().unwrap_or_default().contains(UNIT), "{units}");

    let status = w.host_json(&["status", "--json"])?;
    let row = status.as_array().and_then(|a| a.iter().find(|r| r["name"] == GUEST)).context("no row")?;
    ensure!(row["guest_disk"]["used_bytes"].as_u64().is_some_and(|n| n > 0), "{row}");
    ensure!(
        row["guest_disk"]["filesystems"].as_array().is_some_and(|f| f.iter().any(|f| f["mount_point"] == "/")),
        "{row}"
    );
    Ok(())
}

/// The guest's offset from the host as doctor measures it, in seconds.
fn offset_secs(w: &World) -> anyhow::Result<f64> {
    let (_, out, err) = w.host_quiet(&["doctor", GUEST, "--json"])?;
    let report: Value = serde_json::from_str(&out).with_context(|| format!("doctor: {out}{err}"))?;
    report["clock"]["offset_ns"].as_i64().map(|ns| ns as f64 / 1e9).with_context(|| format!("no offset: {report}"))
}

/// Simulate a host suspend: the guest's vCPU stops for `secs` while the host's time runs on.
fn pause(w: &World, secs: u64) -> anyhow::Result<()> {
    let qmp = if w.vmd { crate::vmdrig::guest_file(GUEST, "qmp.sock") } else { w.vm_dir().join("qmp.sock") };
    let mut q = almavmm_host::backend::qemu::qmp::Qmp::connect(&qmp)?;
    q.execute("stop", None)?;
    std::thread::sleep(Duration::from_secs(secs));
    q.execute("cont", None)?;
    Ok(())
}

fn clock(w: &World) -> anyhow::Result<()> {
    // Without the watcher, as after a host suspend with no working clocksource: the guest
    // comes back behind by the pause, doctor says so, sync puts it right.
    w.guest("sudo systemctl stop almavmm-agent.service")?;
    pause(w, 30)?;
    let behind = offset_secs(w)?;
    eprintln!("after a 30 s pause: offset {behind:+.3} s");
    ensure!((-33.0..=-27.0).contains(&behind), "expected about -30 s, doctor measured {behind:+.3} s");
    w.host(&["sync", GUEST])?;
    let after = offset_secs(w)?;
    eprintln!("after sync: offset {after:+.4} s");
    ensure!(after.abs() < 0.050, "after sync the offset is {after:+.4} s");

    // The watcher again, for what follows; step 5b shows what it does on its own.
    w.guest("sudo systemctl start almavmm-agent.service")?;
    Ok(())
}

/// The watcher's step from the RTC must land within this of the host's time. The RTC has
/// whole seconds; the watcher corrects with the RTC's second phase, which it measures while
/// the clock is known good (right after a host sync) and which must survive the pause.
const WATCHER_BOUND_SECS: f64 = 0.100;

/// Self-contained: expects the watcher running and the guest in sync (as step 5 leaves it),
/// and leaves it so. For each pause: sync (the host's set also rewrites the RTC, so the
/// phase changes), wait until the watcher has measured the new phase, pause, let the watcher
/// alone correct, and compare with the host's time.
fn watcher_rtc_phase(w: &World) -> anyhow::Result<()> {
    const PHASE_FILE: &str = "/var/lib/almavmm/rtc-phase.json";
    for secs in [15u64, 45] {
        w.host(&["sync", GUEST])?;
        let synced_at_ns = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos()) as i64;
        // The watcher measures the phase at its next tick (every 10 s) after the host set.
        let mut seen = String::new();
        let measured = || {
            let (_, out, _) = w.guest_unchecked(&format!("sudo cat {PHASE_FILE}"))?;
            seen = out.clone();
            let v: Option<Value> = serde_json::from_str(&out).ok();
            anyhow::Ok(v.filter(|v| v["measured_at_ns"].as_i64().is_some_and(|t| t > synced_at_ns - 2_000_000_000)))
        };
        let Some(phase) = wait_until(Deadline::after(Duration::from_secs(40)), Duration::from_secs(2), measured)?
        else {
            bail!("the watcher measured no RTC phase within 40 s of a host sync ({PHASE_FILE}: {seen:?})");
        };
        let phase_s = phase["phase_ns"].as_i64().unwrap_or(0) as f64 / 1e9;
        eprintln!("RTC phase after the sync: {phase_s:+.4} s");
        pause(w, secs)?;
        let mut last = f64::NAN;
        let corrected = || {
            last = offset_secs(w)?;
            anyhow::Ok((last.abs() < 2.0).then_some(last))
        };
        let Some(_) = wait_until(Deadline::after(Duration::from_secs(45)), Duration::from_secs(2), corrected)? else {
            bail!("the watcher did not correct a {secs} s pause (offset {last:+.3} s)");
        };
        // The best of three measurements: doctor's own error is half its round trip.
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let o = offset_secs(w)?;
            if o.abs() < best.abs() {
                best = o;
            }
        }
        eprintln!("the watcher alone corrected a {secs} s pause to {best:+.4} s (phase {phase_s:+.4} s)");
        let checks = w.guest("sudo grep -F '\"rtc-check\"' /var/lib/almavmm/clock-events.jsonl | tail -n 1")?;
        ensure!(
            checks.contains("RTC phase") && checks.contains("applied"),
            "the watcher's step used no RTC phase: {checks}"
        );
        // The step is recorded, in the report and in the events file, at its real size.
        let health: Value = serde_json::from_str(&w.guest("sudo almavmm-agent health --json")?)?;
        let events = health["clock_events"].as_array().context("no clock events")?;
        let stepped = events
            .iter()
            .rev()
            .find(|e| e["kind"] == "stepped-from-rtc")
            .with_context(|| format!("no stepped-from-rtc event in {events:?}"))?;
        let size = stepped["offset_ns"].as_i64().unwrap_or(0) as f64 / 1e9;
        let expected = secs as f64;
        ensure!(
            (size.abs() - expected).abs() <= 2.0,
            "the watcher's step was {size:+.3} s, expected about {expected} s"
        );
        let jsonl = w.guest("sudo tail -n 5 /var/lib/almavmm/clock-events.jsonl")?;
        ensure!(jsonl.contains("stepped-from-rtc"), "clock-events.jsonl lacks the step:\n{jsonl}");
        ensure!(
            best.abs() < WATCHER_BOUND_SECS,
            "after a {secs} s pause the watcher's step left the clock {best:+.4} s from the host's (bound ±{WATCHER_BOUND_SECS} s): \
             the RTC phase measured before the pause did not hold after it"
        );
    }
    Ok(())
}

/// `systemd-analyze security` of a unit in the guest: the overall exposure (0–10).
fn guest_exposure(w: &World, unit: &str) -> anyhow::Result<f64> {
    // It exits 0 unless the exposure is above --threshold (default 100), so read the text.
    let (_, out, err) = w.guest_unchecked(&format!("sudo systemd-analyze security --no-pager {unit}"))?;
    almavmm_agent::sys::service::parse_exposure(&out)
        .with_context(|| format!("no exposure from systemd-analyze security {unit}:\n{out}{err}"))
}

/// The watcher's unit is no less confined than chrony's beside it, and under that
/// confinement it did in step 5 what it exists for: it stepped the clock from the RTC,
/// wrote its events, and had chronyc step chronyd. (Link events on rtnetlink are step 5d's;
/// loading the module is setup's, outside the unit, step 2.)
fn confinement(w: &World) -> anyhow::Result<()> {
    confinement_rating(w)?;
    let show = w.guest("systemctl show -p ActiveState -p NRestarts -p ProtectSystem almavmm-agent.service")?;
    for want in ["ActiveState=active", "NRestarts=0", "ProtectSystem=strict"] {
        ensure!(show.lines().any(|l| l.trim() == want), "the watcher's unit: {want} expected in\n{show}");
    }
    let events = w.guest("sudo tail -n 100 /var/lib/almavmm/clock-events.jsonl")?;
    ensure!(events.contains("\"stepped-from-rtc\""), "the confined watcher recorded no step:\n{events}");
    ensure!(
        events.contains("chronyc makestep: 200 OK"),
        "chronyc did not step chronyd from inside the unit:\n{events}"
    );
    // What a denied operation would have logged (EPERM from the syscall filter or the
    // bounding set, EROFS from ProtectSystem, EACCES on a device).
    let journal = w.guest("sudo journalctl -b --no-pager -o cat -u almavmm-agent.service")?;
    for denied in ["Operation not permitted", "Read-only file system", "Permission denied"] {
        ensure!(!journal.contains(denied), "the watcher hit its confinement ({denied}):\n{journal}");
    }
    Ok(())
}

/// Our unit's exposure against chrony's, as the guest's own systemd rates them (252 on
/// Debian 12, 257 on Debian 13 in the bundle scenario).
fn confinement_rating(w: &World) -> anyhow::Result<()> {
    let ours = guest_exposure(w, "almavmm-agent.service")?;
    let chrony = guest_exposure(w, "chrony.service")?;
    eprintln!("systemd-analyze security in the guest: almavmm-agent.service {ours}, chrony.service {chrony}");
    ensure!(ours <= chrony, "almavmm-agent.service rates {ours}, above chrony.service's {chrony}");
    Ok(())
}

/// QMP `set_link` on the guest's NIC: QEMU propagates a netdev's link state to the NIC
/// peered with it (net/net.c, qmp_set_link), so the guest sees its carrier go and come.
fn set_link(w: &World, up: bool) -> anyhow::Result<()> {
    let mut q = almavmm_host::backend::qemu::qmp::Qmp::connect(&w.vm_dir().join("qmp.sock"))?;
    q.execute("set_link", Some(serde_json::json!({ "name": "net0", "up": up })))?;
    Ok(())
}

/// Take the link down for longer than NetworkManager's carrier grace (a few seconds)
/// so it deactivates the connection, then bring it back.
fn flap_link(w: &World) -> anyhow::Result<()> {
    set_link(w, false)?;
    std::thread::sleep(Duration::from_secs(10));
    set_link(w, true)
}

/// Lines of the events file, for "what was recorded after this point".
fn event_lines(w: &World) -> anyhow::Result<usize> {
    let n = w.guest("sudo cat /var/lib/almavmm/clock-events.jsonl | wc -l")?;
    n.trim().parse().with_context(|| format!("wc -l said {n:?}"))
}

/// Wait (bounded) for an event of `kind` recorded after line `after`; its JSON line.
/// SSH may fail while the guest's link is coming back: such attempts are retried.
fn wait_event(w: &World, after: usize, kind: &str, limit: Duration) -> anyhow::Result<String> {
    let needle = format!("\"kind\":\"{kind}\"");
    let mut last = String::new();
    let found = wait_until(Deadline::after(limit), Duration::from_secs(3), || {
        let Ok((Some(0), out, _)) =
            w.guest_unchecked(&format!("sudo tail -n +{} /var/lib/almavmm/clock-events.jsonl", after + 1))
        else {
            return anyhow::Ok(None);
        };
        last = out.clone();
        Ok(out.lines().find(|l| l.replace(": ", ":").contains(&needle)).map(str::to_string))
    })?;
    found.with_context(|| format!("no {kind} event within {}s; recorded since:\n{last}", limit.as_secs()))
}

fn network_manager(w: &World) -> anyhow::Result<()> {
    // NetworkManager is the only network manager, configured by cloud-init's keyfile.
    let (_, states, _) = w.guest_unchecked("systemctl is-active NetworkManager.service systemd-networkd.service")?;
    let states: Vec<&str> = states.lines().map(str::trim).collect();
    ensure!(states == ["active", "inactive"], "NetworkManager / networkd: {states:?}");
    let conns = w.guest("sudo ls /etc/NetworkManager/system-connections/")?;
    ensure!(conns.contains("cloud-init"), "no cloud-init keyfile in system-connections: {conns}");
    let setup: Value = serde_json::from_str(&w.guest("sudo cat /var/lib/almavmm/setup.json")?)?;
    let hook_step = setup["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == "network hook"))
        .with_context(|| format!("no network hook step: {setup}"))?;
    ensure!(
        hook_step["detail"].as_str().unwrap_or("").contains("NetworkManager manages the network"),
        "network hook: {hook_step}"
    );
    let mode = w.guest("sudo stat -c %a /etc/NetworkManager/dispatcher.d/90-almavmm-clock-check")?;
    ensure!(mode.trim() == "755", "the dispatcher hook's mode is {mode}");

    // The hook alone: the watcher stopped, the guest paused so its clock lags the RTC, then
    // the link goes down and up. Only the dispatcher hook can step the clock now.
    w.guest("sudo systemctl stop almavmm-agent.service")?;
    let mark = event_lines(w)?;
    pause(w, 12)?;
    let lag = offset_secs(w)?;
    ensure!(lag < -8.0, "after a 12 s pause the guest is at {lag:+.3} s");
    flap_link(w)?;
    let stepped = wait_event(w, mark, "stepped-from-rtc", Duration::from_secs(120))?;
    eprintln!("the dispatcher hook stepped the clock: {stepped}");
    let fixed = offset_secs(w)?;
    ensure!(fixed.abs() < 2.0, "after the hook the offset is {fixed:+.3} s");
    let dispatcher = w.guest("sudo journalctl -b --no-pager -o cat -u NetworkManager-dispatcher.service")?;
    eprintln!("NetworkManager-dispatcher's journal (tail):\n{}", tail_lines(&dispatcher, 10));

    // The watcher, running again, sees the same on rtnetlink and records it.
    w.guest("sudo systemctl start almavmm-agent.service")?;
    std::thread::sleep(Duration::from_secs(3));
    let mark = event_lines(w)?;
    flap_link(w)?;
    let link = wait_event(w, mark, "link-up", Duration::from_secs(120))?;
    eprintln!("the watcher recorded: {link}");

    // doctor's network checks, with NetworkManager's resolv.conf and routes.
    let report = w.host_json(&["doctor", GUEST, "--json"])?;
    for id in ["network.address", "network.route", "network.dns", "network.resolve", "network.gateway"] {
        let c = check(&report, id)?;
        ensure!(c["status"] != "fail" && c["status"] != "skip", "{id}: {c}");
    }

    // The stray-`vmm_clock`-line repair is networkd's: NetworkManager's files, even one with
    // such a line, are left byte for byte.
    let stray = "/etc/NetworkManager/conf.d/99-almavmm-e2e-stray.conf";
    w.guest(&format!("printf '[main]\\nvmm_clock\\n' | sudo tee {stray} >/dev/null"))?;
    // In a root shell: system-connections is 0700, so the user's shell could not expand it.
    let sums = "sudo sh -c 'sha256sum /etc/NetworkManager/NetworkManager.conf /etc/NetworkManager/conf.d/* /etc/NetworkManager/system-connections/*'";
    let before = w.guest(sums)?;
    let (code, out, err) = w.guest_unchecked("sudo almavmm-agent setup")?;
    let after = w.guest(sums)?;
    w.guest(&format!("sudo rm -f {stray}"))?;
    ensure!(code == Some(0), "setup again exited {code:?}:\n{out}{err}");
    ensure!(before == after, "setup changed NetworkManager's files:\nbefore:\n{before}\nafter:\n{after}");
    let setup: Value = serde_json::from_str(&w.guest("sudo cat /var/lib/almavmm/setup.json")?)?;
    let repair = setup["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == "networkd repair"))
        .with_context(|| format!("no networkd repair step: {setup}"))?;
    ensure!(repair["changed"] == false, "networkd repair changed something: {repair}");
    // Leave the guest in sync for what follows.
    w.host(&["sync", GUEST])?;
    Ok(())
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn state_of(w: &World) -> anyhow::Result<String> {
    let st = w.host_json(&["status", "--json"])?;
    Ok(st[0]["state"].as_str().unwrap_or("?").to_string())
}

pub(crate) fn wait_state(w: &World, want: &str, limit: Duration) -> anyhow::Result<()> {
    let mut now = String::new();
    let reached = || {
        now = state_of(w)?;
        anyhow::Ok((now == want).then_some(()))
    };
    if wait_until(Deadline::after(limit), Duration::from_millis(500), reached)?.is_none() {
        bail!("guest is {now}, expected {want} within {}s", limit.as_secs());
    }
    Ok(())
}

/// How long one ssh through the proxy may take in all, a cold start included (booting the
/// guest under TCG takes a minute or two; the sessions themselves last under a minute).
pub(crate) const PROXY_SSH_LIMIT: Duration = Duration::from_secs(420);
/// Through the proxy the banner comes only once the guest has booted, and ssh's
/// ConnectTimeout also bounds the wait for it: long enough for a cold start.
const PROXY_SSH_OPTIONS: [&str; 6] =
    ["-o", "ConnectTimeout=360", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6"];

/// `ssh NAME.almavmm` exactly as a user runs it after `ssh-config`, with the proxy's idle
/// time and the connection sharing set by the test.
pub(crate) fn ssh_via_proxy(w: &World, idle: &str, persist: Option<&str>, remote: &str) -> Limited {
    ssh_via_proxy_to(w, &format!("{GUEST}.almavmm"), idle, persist, remote)
}

/// [`ssh_via_proxy`] to any `NAME.almavmm`.
fn ssh_via_proxy_to(w: &World, host: &str, idle: &str, persist: Option<&str>, remote: &str) -> Limited {
    let cfg = w.dir.path().join("ssh_config");
    let proxy =
        format!("env ALMAVMM_HOME={} {} ssh-proxy --idle {idle} %h %p", w.home().display(), w.host_bin.display());
    let c = limited("ssh", PROXY_SSH_LIMIT)
        .arg("-F")
        .arg(&cfg)
        .args(["-o", "BatchMode=yes"])
        .args(PROXY_SSH_OPTIONS)
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg("-o")
        .arg(format!("ControlPath={}/cm-%C", w.dir.path().display()));
    let c = match persist {
        // Connection sharing as ssh-config sets it up, with a shorter persistence.
        Some(p) => c.args(["-o", "ControlMaster=auto", "-o", &format!("ControlPersist={p}")]),
        // Independent connections: one proxy per session.
        None => c.args(["-o", "ControlMaster=no"]),
    };
    c.args([host, remote])
}

/// How long a test waits for an idle stop: the proxy ends after its session's clock check,
/// then the reaper powers the guest off cleanly; under TCG on a busy machine that can take
/// well over a minute.
const IDLE_STOP_WAIT: u64 = 240;

fn proxy(w: &World) -> anyhow::Result<()> {
    let cfg = w.host(&["ssh-config", "--print"])?;
    ensure!(cfg.contains(&format!("Host {GUEST}.almavmm")) && cfg.contains("ssh-proxy"), "{cfg}");
    std::fs::write(w.dir.path().join("ssh_config"), &cfg)?;

    // Cold start: the guest is down; the first session starts it and stays open a while.
    w.host(&["stop", GUEST])?;
    let t0 = Instant::now();
    let first = ssh_via_proxy(w, "5", None, "echo first-in; sleep 12; echo first-out").spawn()?;
    wait_state(w, "running", Duration::from_secs(300))?;
    let got_in = || anyhow::Ok((w.guest_unchecked("pgrep -f 'sleep 12' >/dev/null")?.0 == Some(0)).then_some(()));
    ensure!(
        wait_until(Deadline::after(Duration::from_secs(300)), Duration::from_millis(500), got_in)?.is_some(),
        "the first session never got in"
    );
    eprintln!("cold start through the proxy: {:.0}s", t0.elapsed().as_secs_f64());
    // A second, longer session through its own proxy.
    // It outlives the first by about 15 s, so it is still open 10 s after the first ended.
    let second = ssh_via_proxy(w, "5", None, "sleep 27; echo second-survived").spawn()?;
    let out = first.wait()?;
    ensure!(out.status.success() && out.stdout.contains("first-out"), "first: {out:?}");
    // The proxy that started the guest is gone; the second session lives on.
    std::thread::sleep(Duration::from_secs(10));
    ensure!(state_of(w)? == "running", "the guest was stopped under a live session");
    let out = second.wait()?;
    ensure!(out.status.success() && out.stdout.contains("second-survived"), "second session: {out:?}");
    // Now idle: stopped after 5 s (plus the clean power-off).
    wait_state(w, "stopped", Duration::from_secs(IDLE_STOP_WAIT))?;
    let events = std::fs::read_to_string(w.vm_dir().join("events.log"))?;
    ensure!(events.contains("stopping: idle after the last ssh-proxy session"), "{events}");

    // With connection sharing (ssh-config's `--idle 0` and ControlPersist): the master's
    // lifetime is the idle timer. A second command rides the master; when the master has
    // been idle for its ControlPersist time it exits, and the guest is stopped.
    let out = ssh_via_proxy(w, "0", Some("8"), "true").output()?;
    ensure!(out.status.success(), "cold start with ControlMaster: {out:?}");
    let t = Instant::now();
    let out = ssh_via_proxy(w, "0", Some("8"), "echo shared").output()?;
    ensure!(out.stdout.contains("shared"), "{out:?}");
    eprintln!("a command over the shared connection: {:.2}s", t.elapsed().as_secs_f64());
    ensure!(state_of(w)? == "running");
    wait_state(w, "stopped", Duration::from_secs(IDLE_STOP_WAIT))?;

    Ok(())
}

/// The pids of the proxies that hold a lease on the guest.
fn proxy_pids(w: &World) -> Vec<i32> {
    let dir = w.vm_dir().join("leases");
    let mut pids: Vec<i32> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    // A lease of a dead proxy is stale (the next proxy or reaper removes it).
    pids.retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
    pids
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let attempt = || cond().map(|ok| ok.then_some(()));
    ensure!(
        wait_until(Deadline::after(limit), Duration::from_millis(250), attempt)?.is_some(),
        "{what} within {limit:?}"
    );
    Ok(())
}

/// How many processes in the guest have exactly the command line `pattern` (an anchored
/// regex such as `^sleep 300$`): neither the shell running a session's `sleep 25; echo …`
/// nor the shell that runs pgrep has a command line that starts with `sleep`.
fn sessions_in_guest(w: &World, pattern: &str) -> anyhow::Result<usize> {
    let (_, out, _) = w.guest_unchecked(&format!("pgrep -c -f '{pattern}' || true"))?;
    Ok(out.trim().parse().unwrap_or(0))
}

/// Issue 17's checks, through the fragment `ssh-config` wrote (step 6 left it there; step 7
/// left the guest running, started by `up`).
fn proxy_stop(w: &World) -> anyhow::Result<()> {
    // An unknown name reaches the proxy, which lists the guests.
    let out = ssh_via_proxy_to(w, "nosuch.almavmm", "0", None, "true").output()?;
    ensure!(out.code() != Some(0), "ssh to an unknown guest succeeded");
    ensure!(out.stderr.contains("no guest named \"nosuch\"") && out.stderr.contains(GUEST), "{}", out.stderr);

    // `stop` under a live ControlMaster: the proxy goes within seconds, the session ends,
    // and the next `ssh NAME.almavmm` works with no user action (a fresh connection, a cold
    // start: step 8b's first two sessions).
    let live = ssh_via_proxy(w, "0", Some("10m"), "sleep 300").spawn()?;
    wait_for("the shared session got in", Duration::from_secs(60), || Ok(sessions_in_guest(w, "^sleep 300$")? == 1))?;
    ensure!(!proxy_pids(w).is_empty(), "no proxy holds a lease during the session");
    w.host(&["stop", GUEST])?;
    let t = Instant::now();
    wait_for("every proxy of the stopped guest ended", Duration::from_secs(10), || Ok(proxy_pids(w).is_empty()))?;
    eprintln!("after stop, the proxies were gone in {:.1}s", t.elapsed().as_secs_f64());
    let ended = live.wait()?;
    ensure!(ended.code() != Some(0), "the session on the stopped guest claims success: {ended:?}");
    Ok(())
}

/// Issue 17's races, on the guest step 8 stopped.
fn proxy_races(w: &World) -> anyhow::Result<()> {
    // The next two sessions after the stop: both get in (one of their proxies starts the
    // guest, the other waits for it under the guest's lock). Then one proxy is killed: the
    // other session lives, and the guest still stops once the last one has ended.
    let a = ssh_via_proxy(w, "5", None, "sleep 25; echo a-done").spawn()?;
    let b = ssh_via_proxy(w, "5", None, "sleep 26; echo b-done").spawn()?;
    wait_for("both sessions got in", Duration::from_secs(300), || Ok(sessions_in_guest(w, "^sleep 2[56]$")? == 2))?;
    // The proxies themselves, by their command line (ssh passes `%h %p` as NAME.almavmm 22).
    let found = limited("pgrep", Duration::from_secs(10)).args(["-f", "ssh-proxy --idle 5 e2e.almavmm"]).output()?;
    let pids: Vec<&str> = found.stdout.split_whitespace().collect();
    ensure!(pids.len() == 2, "expected two proxies, found {pids:?} (leases: {:?})", proxy_pids(w));
    limited("kill", Duration::from_secs(10)).args(["-9", pids[0]]).run()?;
    let (a, b) = (a.wait()?, b.wait()?);
    let survived = [&a, &b].iter().filter(|o| o.code() == Some(0) && o.stdout.contains("-done")).count();
    ensure!(survived == 1, "one session should survive its sibling's killed proxy: {a:?} {b:?}");
    wait_state(w, "stopped", Duration::from_secs(IDLE_STOP_WAIT))?;

    // Back-to-back sessions with --idle 0: each may arrive while the previous one's idle
    // stop is under way; every one must get in.
    let events_before = std::fs::read_to_string(w.vm_dir().join("events.log"))?.len();
    for i in 1..=3 {
        let out = ssh_via_proxy(w, "0", None, &format!("echo session-{i}")).output()?;
        ensure!(out.code() == Some(0) && out.stdout.contains(&format!("session-{i}")), "session {i}: {out:?}");
    }
    wait_state(w, "stopped", Duration::from_secs(IDLE_STOP_WAIT))?;
    let events = std::fs::read_to_string(w.vm_dir().join("events.log"))?;
    let since = &events[events_before..];
    let (stops, starts) = (since.matches("stopping: idle").count(), since.matches("started by ssh-proxy").count());
    ensure!(stops >= 1 && starts >= 1, "events.log shows no idle stop and start:\n{since}");
    ensure!(starts >= stops, "a session met a stopped guest that nobody started again:\n{since}");
    eprintln!("3 back-to-back sessions: {starts} cold start(s), {stops} idle stop(s)");
    Ok(())
}

/// Issue 9's check: a Debian 13 guest with no agent anywhere gets the source bundle, builds
/// the agent with its own cargo (installed by the bootstrap), and passes doctor.
fn bundle_scenario(w: &World) -> anyhow::Result<()> {
    step("bundle: up with no prebuilt agent", || {
        // Two vCPUs: the agent's Rust build is the slow part under emulation.
        let up = up_fresh(w, &["--timeout", "3000", "--cpus", "2"])?;
        let seed = stage(&up, "seed")?;
        ensure!(seed["detail"].as_str().unwrap_or("").contains("source bundle"), "seed stage: {seed}");
        ensure!(stage(&up, "agent")?["outcome"] == "done");
        Ok(())
    })?;
    step("bundle: bootstrap built the agent in the guest", || {
        let console = w.console();
        for line in ["install rust toolchain: ok", "build agent from source bundle: ok", "agent setup: ok"] {
            ensure!(
                console.lines().any(|l| l.contains("almavmm-bootstrap:") && l.contains(line)),
                "console.log lacks {line:?}"
            );
        }
        let health: Value = serde_json::from_str(&w.guest("sudo almavmm-agent health --json")?)?;
        ensure!(health["agent"]["origin"] == "built-in-guest", "agent: {}", health["agent"]);
        ensure!(health["agent"]["version"] == env!("CARGO_PKG_VERSION"), "agent: {}", health["agent"]);
        Ok(())
    })?;
    step("bundle: confinement under systemd 257", || confinement_rating(w))?;
    step("bundle: doctor", || {
        let report = w.host_json(&["doctor", GUEST, "--json"])?;
        ensure!(report["fail"] == 0, "{report}");
        let agent = check(&report, "guest.agent")?;
        ensure!(
            agent["status"] == "ok" && agent["finding"].as_str().unwrap_or("").contains("built in the guest"),
            "{agent}"
        );
        Ok(())
    })?;
    w.host(&["destroy", GUEST, "--yes"])?;
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Step 6 ended with an idle stop, the reaper's clean power-off through the backend.
fn up_again(w: &World) -> anyhow::Result<()> {
    let key_before = std::fs::read_to_string(w.vm_dir().join("known_hosts"))?;
    let boots_before = w.console().matches("Linux version").count();
    let st = w.host_json(&["status", "--json"])?;
    ensure!(st[0]["state"] == "stopped", "after the idle stop: {st}");
    let up = w.host_json(&["up", GUEST, "--json"])?;
    for name in ["image", "disk", "seed", "agent", "seed scrub"] {
        let s = stage(&up, name)?;
        ensure!(s["outcome"] == "skipped", "stage {name} ran again: {s}");
    }
    ensure!(stage(&up, "start")?["outcome"] == "done");
    ensure!(std::fs::read_to_string(w.vm_dir().join("known_hosts"))? == key_before, "host key changed");
    let console = w.console();
    ensure!(console.matches("Linux version").count() == boots_before + 1, "expected exactly one more boot");
    let (before_last, last_boot) = console.rsplit_once("Linux version").unwrap_or(("", ""));
    // The kernel's last words before the stop: a clean ACPI power-off, not a pulled plug.
    ensure!(before_last.contains("reboot: Power down"), "the guest did not power itself off cleanly");
    for bad in ["recovering journal", "was not cleanly unmounted", "errors, check forced", "UNEXPECTED INCONSISTENCY"] {
        ensure!(!last_boot.contains(bad), "the boot after `stop` shows an unclean file system ({bad:?})");
    }
    // Running a second time on a healthy guest does nothing and says so.
    let again = w.host_json(&["up", GUEST, "--json"])?;
    ensure!(again["already_up"] == true, "second up: {again}");
    // Brought up by `up`: a proxy session with --idle 0 must not stop it afterwards.
    let out = ssh_via_proxy(w, "0", None, "true").output()?;
    ensure!(out.code() == Some(0), "ssh to a guest that up started: {out:?}");
    std::thread::sleep(Duration::from_secs(8));
    ensure!(state_of(w)? == "running", "the proxy stopped a guest that `up` started");
    Ok(())
}

fn destroy(w: &World) -> anyhow::Result<()> {
    w.host(&["destroy", GUEST, "--yes"])?;
    ensure!(!w.vm_dir().exists(), "destroy left the guest's folder");
    let images: Vec<_> = std::fs::read_dir(w.home().join("images"))?.collect();
    ensure!(!images.is_empty(), "destroy removed the shared image cache");
    let (code, _, err) = w.host_quiet(&["stop", GUEST])?;
    ensure!(code == Some(3) && err.contains("no guest named"), "stop of a destroyed guest: {code:?} {err}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn host_commands_are_limited_by_their_own_timeout_plus_a_margin() {
        assert_eq!(host_limit(&["up", GUEST, "--json"]), Duration::from_secs(2 * 900 + 600));
        assert_eq!(host_limit(&["up", GUEST, "--timeout", "3000", "--cpus", "2"]), Duration::from_secs(6600));
        assert_eq!(host_limit(&["stop", GUEST]), Duration::from_secs(420));
        assert_eq!(host_limit(&["start", GUEST, "--timeout", "60"]), Duration::from_secs(360));
        assert_eq!(host_limit(&["doctor", GUEST, "--json"]), Duration::from_secs(120));
    }

    #[test]
    fn the_diagnostics_fit_in_their_budget() {
        // Each diagnostic against a dead guest ends at its ConnectTimeout (below), so all of
        // them end within the budget, and the budget within the 30 s.
        let connect: u64 = DIAGNOSTIC_SSH_OPTIONS[1].strip_prefix("ConnectTimeout=").unwrap().parse().unwrap();
        assert!(DIAGNOSTICS.len() as u64 * connect <= DIAGNOSE_LIMIT.as_secs());
        assert!(DIAGNOSE_LIMIT <= Duration::from_secs(30));
        assert_eq!(diagnostic_limit(Deadline::after(DIAGNOSE_LIMIT)).unwrap(), DIAGNOSE_LIMIT / 3);
        let spent = diagnostic_limit(Deadline::after(Duration::ZERO)).unwrap_err().to_string();
        assert!(spent.contains("used up"), "{spent}");
    }

    /// The hang: QEMU's forwarder accepts the connection of a dead guest and never
    /// sends a banner. A diagnostic must end at its ConnectTimeout, before its own limit.
    #[test]
    fn a_diagnostic_against_a_silent_forwarder_ends_at_the_connect_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accept and hold every connection, saying nothing (the listener lives as long as the test).
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in listener.incoming() {
                held.push(c);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let (kh, key) = (dir.path().join("known_hosts"), dir.path().join("id"));
        std::fs::write(&kh, "").unwrap();
        let remote = DIAGNOSTICS[0].1;
        let out =
            ssh_to("127.0.0.1", port, &kh, &key, &DIAGNOSTIC_SSH_OPTIONS, remote, DIAGNOSE_LIMIT / 3).output().unwrap();
        assert_eq!(out.code(), Some(255), "{out:?}");
        assert!(out.stderr.contains("banner exchange"), "ssh did not give up on the banner: {out:?}");
    }
}
