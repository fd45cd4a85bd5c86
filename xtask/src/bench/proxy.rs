//! `cargo xtask bench proxy`: with a provisioned guest (Debian test image, under whatever
//! accelerator this machine offers):
//! - warm: `ssh NAME.almavmm true` through the ProxyCommand against the same ssh straight to
//!   the forwarded port, as a ratio (goal: under 5% overhead);
//! - cold: from the guest's sshd first answering (seen by our own 5 ms poller) to the proxy
//!   relaying the first byte (goal: under 200 ms; the clock check runs alongside);
//! - a guest-side close (the session's sshd killed) to ssh's exit (goal: under 1 s);
//! - doctor on the healthy running guest (goal: under 2 s).
//!
//! Figures from one run each, after a warm-up; medians of 5 for the fast ones.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use almavmm_shared::wait::Deadline;
use anyhow::{Context, bail, ensure};

use crate::e2e::{self, GUEST, World};
use crate::limited::{Io, Limited};

/// One warm `ssh … true`, either way: well under a second normally.
const WARM_SSH_LIMIT: Duration = Duration::from_secs(60);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn timed(c: Limited) -> anyhow::Result<f64> {
    let t = Instant::now();
    c.stdout(Io::Null).run()?;
    Ok(t.elapsed().as_secs_f64())
}

fn direct(w: &World) -> anyhow::Result<Limited> {
    w.ssh_direct(&[], "true", WARM_SSH_LIMIT)
}

fn now_secs() -> f64 {
    almavmm_shared::clock::unix_now_ns() as f64 / 1e9
}

/// The Unix time (with ms) of the last events.log line containing `what`.
fn event_time(w: &World, what: &str) -> anyhow::Result<f64> {
    let log = std::fs::read_to_string(w.vm_dir().join("events.log"))?;
    log.lines()
        .rev()
        .find(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {what:?} in events.log"))
}

/// Seconds from the guest's sshd dropping a live session (the session kills its own sshd,
/// noting the guest's time first; the clock was just synced) to the ssh client's exit.
fn guest_side_close(w: &World) -> anyhow::Result<f64> {
    w.host(&["sync", GUEST])?;
    let remote = "sleep 1; date +%s.%N >/tmp/almavmm-bench-close; kill -9 $PPID";
    let ssh = e2e::ssh_via_proxy(w, "600", None, remote).stdout(Io::Null).stderr(Io::Null).spawn()?;
    let _ = ssh.wait()?;
    let exited = now_secs();
    let closed: f64 = w.guest("cat /tmp/almavmm-bench-close")?.trim().parse().context("the guest's close time")?;
    Ok(exited - closed)
}

pub fn run() -> anyhow::Result<()> {
    eprintln!("provisioning a guest (a minute or two)…");
    let w = e2e::provisioned()?;

    // Warm: the guest runs (started by `up`); sync once so the proxy's clock check is recent.
    w.host(&["sync", GUEST])?;
    timed(e2e::ssh_via_proxy(&w, "0", None, "true"))?;
    timed(direct(&w)?)?;
    let mut via = Vec::new();
    let mut straight = Vec::new();
    for _ in 0..5 {
        via.push(timed(e2e::ssh_via_proxy(&w, "0", None, "true"))?);
        straight.push(timed(direct(&w)?)?);
    }
    let (v, d) = (median(via), median(straight));

    let mut doctor = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        w.host(&["doctor", GUEST, "--json"])?;
        doctor.push(t.elapsed().as_secs_f64());
    }
    let doc = median(doctor);

    // Cold: stop, then start through the proxy while our own poller watches the port.
    w.host(&["stop", GUEST])?;
    let ssh = e2e::ssh_via_proxy(&w, "600", None, "true").stdout(Io::Null).stderr(Io::Null).spawn()?;
    e2e::wait_state(&w, "running", Duration::from_secs(120))?;
    let port = w.ssh_port()?;
    // Our own 5 ms poller (not wait_until: the point is the finest grain), bounded all the same.
    let banner_deadline = Deadline::after(Duration::from_secs(300));
    let first_banner = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut line = String::new();
            if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("SSH-") {
                break now_secs();
            }
        }
        if banner_deadline.passed() {
            bail!("the guest's sshd did not answer within 300 s of the guest running");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = ssh.wait()?;
    ensure!(out.status.success(), "cold ssh through the proxy failed");
    let noticed = event_time(&w, "ssh-proxy: sshd answers")?;
    let relaying = event_time(&w, "ssh-proxy: relaying")?;

    println!("ssh-proxy and doctor, guest under this machine's accelerator:");
    println!("  warm `ssh NAME.almavmm true` via ProxyCommand: {:>7.3} s (median of 5)", v);
    println!("  same ssh straight to the forwarded port:       {:>7.3} s (median of 5)", d);
    let overhead = (v / d - 1.0) * 100.0;
    println!("  proxy overhead: {overhead:+.1}% (goal: under 5%) {}", if overhead < 5.0 { "MET" } else { "NOT MET" });
    let detect = (noticed - first_banner) * 1000.0;
    println!(
        "  cold start: sshd answered, proxy noticed {detect:.0} ms later (goal: under 200 ms) {}",
        if detect < 200.0 { "MET" } else { "NOT MET" }
    );
    let relay_ms = (relaying - first_banner) * 1000.0;
    println!(
        "  cold start: first byte relayed {relay_ms:.0} ms after sshd answered (goal: under 200 ms, the clock \
         check alongside) {}",
        if relay_ms < 200.0 { "MET" } else { "NOT MET" }
    );
    let close = guest_side_close(&w)?;
    println!(
        "  guest-side close to ssh's exit: {:.0} ms (goal: under 1 s) {}",
        close * 1000.0,
        if close < 1.0 { "MET" } else { "NOT MET" }
    );
    println!(
        "  doctor of a healthy running guest: {doc:.2} s (median of 5; goal: under 2 s) {}",
        if doc < 2.0 { "MET" } else { "NOT MET" }
    );
    Ok(())
}
