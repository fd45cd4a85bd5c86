//! `cargo xtask bench proxy`: with a provisioned guest (Debian test image, under whatever
//! accelerator this machine offers):
//! - warm: `ssh NAME.almavmm true` through the ProxyCommand against the same ssh straight to
//!   the forwarded port, as a ratio (goal: under 10% overhead);
//! - cold: the delay between the guest's sshd first answering (seen by our own 5 ms poller)
//!   and the proxy noticing it (goal: under 200 ms), and until it relays (after its clock
//!   check);
//! - doctor on the healthy running guest (goal: under 2 s).
//!
//! Figures from one run each, after a warm-up; medians of 5 for the fast ones.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use xshell::Shell;

use crate::e2e::{self, GUEST, World};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn timed(mut c: Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = c.stdout(Stdio::null()).output()?;
    ensure!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(t.elapsed().as_secs_f64())
}

fn direct(w: &World) -> anyhow::Result<Command> {
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", w.vm_dir().join("known_hosts").display()))
        .args(["-o", &format!("HostKeyAlias={GUEST}"), "-i"])
        .arg(w.key())
        .args(["-p", &w.ssh_port()?.to_string(), "almalinux@127.0.0.1", "true"])
        .stdin(Stdio::null());
    Ok(c)
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
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

pub fn run(sh: &Shell) -> anyhow::Result<()> {
    eprintln!("provisioning a guest (a minute or two)…");
    let w = e2e::provisioned(sh)?;

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
    let ssh = e2e::ssh_via_proxy(&w, "600", None, "true").stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    e2e::wait_state(&w, "running", Duration::from_secs(120))?;
    let port = w.ssh_port()?;
    let first_banner = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut line = String::new();
            if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("SSH-") {
                break now_secs();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = ssh.wait_with_output()?;
    ensure!(out.status.success(), "cold ssh through the proxy failed");
    let noticed = event_time(&w, "ssh-proxy: sshd answers")?;
    let relaying = event_time(&w, "ssh-proxy: relaying")?;

    println!("ssh-proxy and doctor, guest under this machine's accelerator:");
    println!("  warm `ssh NAME.almavmm true` via ProxyCommand: {:>7.3} s (median of 5)", v);
    println!("  same ssh straight to the forwarded port:       {:>7.3} s (median of 5)", d);
    let overhead = (v / d - 1.0) * 100.0;
    println!("  proxy overhead: {overhead:+.1}% (goal: under 10%) {}", if overhead < 10.0 { "MET" } else { "NOT MET" });
    let detect = (noticed - first_banner) * 1000.0;
    println!(
        "  cold start: sshd answered, proxy noticed {detect:.0} ms later (goal: under 200 ms) {}",
        if detect < 200.0 { "MET" } else { "NOT MET" }
    );
    println!(
        "  cold start: relaying {:.0} ms after sshd answered (includes the clock check)",
        (relaying - first_banner) * 1000.0
    );
    println!(
        "  doctor of a healthy running guest: {doc:.2} s (median of 5; goal: under 2 s) {}",
        if doc < 2.0 { "MET" } else { "NOT MET" }
    );
    Ok(())
}
