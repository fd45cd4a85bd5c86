//! `cargo xtask e2e`: a real guest booted through `almavmm-host`, driven only through the
//! public CLI, exactly as a user would: image served over HTTP from 127.0.0.1 with a signed
//! checksum list, `up`, the bootstrap and agent setup, the kernel module in the guest, the
//! pinned host key, stop and up again, destroy.
//!
//! The guest is the Debian test image from `cargo xtask image` (compressed qcow2, so `up`
//! takes the conversion path the AlmaLinux image needs), booted by the QEMU backend. Each
//! step prints its name and duration; on failure the console tail, the agent's journal and
//! setup.json are printed; the guest is cleaned up whatever happens.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::serve;
use crate::testimage::{self, Suite};
use crate::util::{Stage, project_root};

pub(crate) const GUEST: &str = "e2e";

#[derive(Debug, Default, clap::Args)]
pub struct E2eArgs {
    /// Leave the guest and the state directory in place at the end (for debugging).
    #[arg(long)]
    pub keep: bool,
    /// Instead of the main scenario, provision a Debian 13 guest from the agent's source
    /// bundle (no prebuilt agent anywhere) and check it with doctor.
    #[arg(long)]
    pub bundle: bool,
}

/// Everything the scenario set up, torn down on drop.
pub(crate) struct World {
    dir: tempfile::TempDir,
    host_bin: PathBuf,
    /// The static agent to pass with --agent; none in the bundle scenario.
    agent: Option<PathBuf>,
    mirror: serve::Mirror,
    keep: bool,
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

    fn host_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.host_bin);
        c.args(args).env("ALMAVMM_HOME", self.home()).env("NO_COLOR", "1").env_remove("ALMAVMM_AGENT");
        c
    }

    /// Run `almavmm-host ARGS`, progress on our stderr, stdout returned; fail on non-zero.
    pub(crate) fn host(&self, args: &[&str]) -> anyhow::Result<String> {
        eprintln!("$ almavmm-host {}", args.join(" "));
        let out = self.host_command(args).stderr(Stdio::inherit()).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "almavmm-host {} failed ({}):\n{stdout}", args.join(" "), out.status);
        Ok(stdout)
    }

    /// Run and return (exit code, stdout, stderr) without judging.
    pub(crate) fn host_quiet(&self, args: &[&str]) -> anyhow::Result<(Option<i32>, String, String)> {
        let out = self.host_command(args).output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
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
        let port = self.ssh_port()?.to_string();
        let kh = format!("UserKnownHostsFile={}", self.vm_dir().join("known_hosts").display());
        let out = Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", &kh, "-o"])
            .arg(format!("HostKeyAlias={GUEST}"))
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i"])
            .arg(self.key())
            .args(["-p", &port, "almalinux@127.0.0.1", "--", remote])
            .stdin(Stdio::null())
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.vm_dir().join("console.log")).unwrap_or_default()
    }

    /// What to print when a step fails: console tail, agent journal, setup.json.
    fn diagnose(&self) {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        eprintln!("---- console.log (last 60 lines) ----");
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("| {l}");
        }
        for (what, remote) in [
            ("agent journal", "sudo journalctl -b --no-pager -u almavmm-agent -u cloud-final -n 80"),
            ("setup.json", "sudo cat /var/lib/almavmm/setup.json"),
            ("bootstrap.log", "sudo tail -n 40 /var/lib/almavmm/bootstrap.log"),
        ] {
            eprintln!("---- {what} ----");
            match self.guest_unchecked(remote) {
                Ok((_, out, err)) => eprintln!("{out}{err}"),
                Err(e) => eprintln!("(unavailable: {e})"),
            }
        }
    }
}

pub fn run(sh: &Shell, args: E2eArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let suite = if args.bundle { Suite::Trixie } else { Suite::Bookworm };
    let image = {
        let _s = Stage::new("e2e: test image");
        testimage::ensure_image(sh, suite)?
    };
    let agent = if args.bundle {
        None
    } else {
        let _s = Stage::new("e2e: static agent");
        Some(crate::agent::build(sh)?)
    };
    let host_bin = {
        let _s = Stage::new("e2e: host binary");
        cmd!(sh, "cargo build -q -p almavmm-host").run()?;
        project_root().join("target/debug/almavmm-host")
    };
    let world = {
        let _s = Stage::new("e2e: signed image served on 127.0.0.1");
        setup_world(host_bin, agent, &image, args.keep)?
    };
    // The inputs as they were when the bundle was made: only those count as verified.
    let inputs = if args.bundle { Some(crate::bundle::inputs_hash(sh)?) } else { None };
    let result = if args.bundle { bundle_scenario(&world) } else { scenario(&world) };
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
pub(crate) fn provisioned(sh: &Shell) -> anyhow::Result<World> {
    let image = testimage::ensure_image(sh, Suite::Bookworm)?;
    let agent = crate::agent::build(sh)?;
    cmd!(sh, "cargo build -q --release -p almavmm-host").run()?;
    let host_bin = project_root().join("target/release/almavmm-host");
    let w = setup_world(host_bin, Some(agent), &image, false)?;
    up_fresh(&w, &[])?;
    std::fs::write(w.dir.path().join("ssh_config"), w.host(&["ssh-config", "--print"])?)?;
    Ok(w)
}

fn setup_world(host_bin: PathBuf, agent: Option<PathBuf>, image: &Path, keep: bool) -> anyhow::Result<World> {
    let dir = tempfile::Builder::new().prefix("almavmm-e2e.").tempdir_in("/tmp")?;
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image.qcow2".into());
    let mirror = serve::mirror(dir.path(), image, &name)?;
    let key = dir.path().join("id_ed25519");
    let st =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f"]).arg(&key).status()?;
    ensure!(st.success(), "ssh-keygen failed");
    Ok(World { dir, host_bin, agent, mirror, keep })
}

fn step(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let _s = Stage::new(format!("e2e: {name}"));
    f().with_context(|| format!("step `{name}`"))
}

fn scenario(w: &World) -> anyhow::Result<()> {
    step("1. up from an empty ALMAVMM_HOME", || first_up(w))?;
    step("2. bootstrap, setup and the module in the guest", || setup_checks(w))?;
    step("3. doctor: every check present, none fails", || doctor_all(w))?;
    step("4. security: scrubbed seed, pinned host key", || security(w))?;
    step("5. clock: a 30 s pause, doctor, sync; the watcher on its own", || clock(w))?;
    step("6. ssh-proxy with OpenSSH: cold start, sessions, idle stop, hand-started guest", || proxy(w))?;
    step("7. stop cleanly, up again without re-provisioning, destroy", || stop_up_destroy(w))?;
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
    w.guest("sudo almavmm-agent kmod build")?;
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
    Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other).status()?;
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
    let report = w.host_json(&["doctor", GUEST, "--json"])?;
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
        ensure!(c["status"] != "fail" && c["status"] != "skip", "{id}: {c}");
    }
    ensure!(report["fail"] == 0, "{report}");
    ensure!(report["clock"]["rounds"].as_u64() >= Some(8), "{report}");
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
    let mut q = almavmm_host::backend::qemu::qmp::Qmp::connect(&w.vm_dir().join("qmp.sock"))?;
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

    // With the watcher: it notices the stall against the RTC and steps the clock itself.
    w.guest("sudo systemctl start almavmm-agent.service")?;
    std::thread::sleep(Duration::from_secs(3));
    pause(w, 15)?;
    let deadline = Instant::now() + Duration::from_secs(45);
    let fixed = loop {
        let o = offset_secs(w)?;
        if o.abs() < 2.0 {
            break o;
        }
        ensure!(Instant::now() < deadline, "the watcher did not correct a 15 s pause (offset {o:+.3} s)");
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!("watcher corrected a 15 s pause to {fixed:+.3} s");
    let health: Value = serde_json::from_str(&w.guest("sudo almavmm-agent health --json")?)?;
    let events = health["clock_events"].as_array().context("no clock events")?;
    let step = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "stepped-from-rtc")
        .with_context(|| format!("no stepped-from-rtc event in {events:?}"))?;
    let corr = step["offset_ns"].as_i64().unwrap_or(0) as f64 / 1e9;
    ensure!((13.0..=17.0).contains(&corr.abs()), "the watcher's step was {corr:+.3} s, expected about 15 s");
    let jsonl = w.guest("sudo tail -n 5 /var/lib/almavmm/clock-events.jsonl")?;
    ensure!(jsonl.contains("stepped-from-rtc"), "clock-events.jsonl lacks the step:\n{jsonl}");
    // Leave the guest in sync for what follows.
    w.host(&["sync", GUEST])?;
    Ok(())
}

pub(crate) fn state_of(w: &World) -> anyhow::Result<String> {
    let st = w.host_json(&["status", "--json"])?;
    Ok(st[0]["state"].as_str().unwrap_or("?").to_string())
}

pub(crate) fn wait_state(w: &World, want: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let now = state_of(w)?;
        if now == want {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "guest is {now}, expected {want} within {}s", limit.as_secs());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `ssh NAME.almavmm` exactly as a user runs it after `ssh-config`, with the proxy's idle
/// time and the connection sharing set by the test.
pub(crate) fn ssh_via_proxy(w: &World, idle: &str, persist: Option<&str>, remote: &str) -> Command {
    let cfg = w.dir.path().join("ssh_config");
    let proxy =
        format!("env ALMAVMM_HOME={} {} ssh-proxy --idle {idle} %h %p", w.home().display(), w.host_bin.display());
    let mut c = Command::new("ssh");
    c.arg("-F").arg(&cfg).args(["-o", "BatchMode=yes", "-o"]).arg(format!("ProxyCommand={proxy}"));
    c.arg("-o").arg(format!("ControlPath={}/cm-%C", w.dir.path().display()));
    match persist {
        // Connection sharing as ssh-config sets it up, with a shorter persistence.
        Some(p) => c.args(["-o", "ControlMaster=auto", "-o", &format!("ControlPersist={p}")]),
        // Independent connections: one proxy per session.
        None => c.args(["-o", "ControlMaster=no"]),
    };
    c.args([&format!("{GUEST}.almavmm"), remote]).stdin(Stdio::null());
    c
}

fn proxy(w: &World) -> anyhow::Result<()> {
    let cfg = w.host(&["ssh-config", "--print"])?;
    ensure!(cfg.contains(&format!("Host {GUEST}.almavmm")) && cfg.contains("ssh-proxy"), "{cfg}");
    std::fs::write(w.dir.path().join("ssh_config"), &cfg)?;

    // Cold start: the guest is down; the first session starts it and stays open a while.
    w.host(&["stop", GUEST])?;
    let t0 = Instant::now();
    let first =
        ssh_via_proxy(w, "5", None, "echo first-in; sleep 20; echo first-out").stdout(Stdio::piped()).spawn()?;
    wait_state(w, "running", Duration::from_secs(300))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while w.guest_unchecked("pgrep -f 'sleep 20' >/dev/null")?.0 != Some(0) {
        ensure!(Instant::now() < deadline, "the first session never got in");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("cold start through the proxy: {:.0}s", t0.elapsed().as_secs_f64());
    // A second, longer session through its own proxy.
    let second = ssh_via_proxy(w, "5", None, "sleep 35; echo second-survived").stdout(Stdio::piped()).spawn()?;
    let out = first.wait_with_output()?;
    ensure!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("first-out"), "first: {out:?}");
    // The proxy that started the guest is gone; the second session lives on.
    std::thread::sleep(Duration::from_secs(10));
    ensure!(state_of(w)? == "running", "the guest was stopped under a live session");
    let out = second.wait_with_output()?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("second-survived"),
        "second session: {out:?}"
    );
    // Now idle: stopped after 5 s (plus the clean power-off).
    wait_state(w, "stopped", Duration::from_secs(90))?;
    let events = std::fs::read_to_string(w.vm_dir().join("events.log"))?;
    ensure!(events.contains("stopping: idle after the last ssh-proxy session"), "{events}");

    // With connection sharing (ssh-config's `--idle 0` and ControlPersist): the master's
    // lifetime is the idle timer. A second command rides the master; when the master has
    // been idle for its ControlPersist time it exits, and the guest is stopped.
    let out = ssh_via_proxy(w, "0", Some("8"), "true").output()?;
    ensure!(out.status.success(), "cold start with ControlMaster: {out:?}");
    let t = Instant::now();
    let out = ssh_via_proxy(w, "0", Some("8"), "echo shared").output()?;
    ensure!(String::from_utf8_lossy(&out.stdout).contains("shared"), "{out:?}");
    eprintln!("a command over the shared connection: {:.2}s", t.elapsed().as_secs_f64());
    ensure!(state_of(w)? == "running");
    wait_state(w, "stopped", Duration::from_secs(90))?;

    // Started by hand: the proxy never stops it. The reaper that stopped the guest may
    // still hold its lock for a moment after the state reads `stopped` (it logs and
    // cleans up last); `start` waits for it.
    let (code, _, stderr) = w.host_quiet(&["start", GUEST])?;
    ensure!(code == Some(0), "almavmm-host start {GUEST} failed ({code:?}): {stderr}");
    let out = ssh_via_proxy(w, "0", None, "true").output()?;
    ensure!(out.status.success(), "ssh to a hand-started guest: {out:?}");
    std::thread::sleep(Duration::from_secs(8));
    ensure!(state_of(w)? == "running", "the proxy stopped a guest started by hand");
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

fn stop_up_destroy(w: &World) -> anyhow::Result<()> {
    let key_before = std::fs::read_to_string(w.vm_dir().join("known_hosts"))?;
    let boots_before = w.console().matches("Linux version").count();
    w.host(&["stop", GUEST])?;
    let st = w.host_json(&["status", "--json"])?;
    ensure!(st[0]["state"] == "stopped", "after stop: {st}");
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
    w.host(&["destroy", GUEST, "--yes"])?;
    ensure!(!w.vm_dir().exists(), "destroy left the guest's folder");
    let images: Vec<_> = std::fs::read_dir(w.home().join("images"))?.collect();
    ensure!(!images.is_empty(), "destroy removed the shared image cache");
    let (code, _, err) = w.host_quiet(&["stop", GUEST])?;
    ensure!(code == Some(3) && err.contains("no guest named"), "stop of a destroyed guest: {code:?} {err}");
    Ok(())
}
