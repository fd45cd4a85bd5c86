//! The agent's command line, run as a user would, on fixture trees (`--root`) so nothing
//! touches this machine's system files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use almavmm_shared::clock::{Reply, Request};
use almavmm_shared::health::{ClockPath, parse_report};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_almavmm-agent"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A guest root: os-release, a kernel release, clocksources, /proc files.
fn guest_root(os_release: &str, sysfs: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let put = |rel: &str, contents: &[u8]| {
        let p = r.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    };
    put("etc/os-release", &std::fs::read(fixtures().join("os-release").join(os_release)).unwrap());
    put("proc/sys/kernel/osrelease", b"6.1.0-28-cloud-amd64\n");
    put("proc/vmstat", &std::fs::read(fixtures().join("proc/vmstat-oom.txt")).unwrap());
    put("proc/net/route", &std::fs::read(fixtures().join("net/proc-net-route-qemu.txt")).unwrap());
    put("etc/resolv.conf", b"nameserver 10.0.2.3\n");
    put("var/lib/almavmm/agent-origin", b"prebuilt\n");
    let cs = "sys/devices/system/clocksource/clocksource0";
    for f in ["current_clocksource", "available_clocksource"] {
        put(&format!("{cs}/{f}"), &std::fs::read(fixtures().join("sysfs").join(sysfs).join(cs).join(f)).unwrap());
    }
    dir
}

#[test]
fn version_names_the_commit() {
    let out = agent().arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    // The same form as `almavmm-host --version`: NAME VERSION (COMMIT).
    let rest =
        text.strip_prefix(&format!("almavmm-agent {} (", almavmm_shared::VERSION)).unwrap_or_else(|| panic!("{text}"));
    let commit = rest.trim_end().strip_suffix(')').unwrap_or_else(|| panic!("{text}"));
    assert!(commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()) && commit.len() >= 7, "{text}");
}

#[test]
fn health_json_is_a_report_the_host_accepts() {
    let root = guest_root("debian-12", "tsc-only");
    let out =
        agent().arg("--root").arg(root.path()).args(["health", "--json", "--resolve", "localhost"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = parse_report(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(report.distro.id, "debian");
    assert_eq!(report.kernel, "6.1.0-28-cloud-amd64");
    assert_eq!(report.clocksource.current.as_deref(), Some("tsc"));
    assert_eq!(report.network.interface.as_deref(), Some("eth0"));
    assert_eq!(report.network.default_route.as_deref(), Some("10.0.2.2"));
    assert_eq!(report.network.dns_servers, ["10.0.2.3"]);
    assert!(report.network.resolve.ok, "{:?}", report.network.resolve);
    // Memory, load and filesystems are sysinfo's, of the running system whatever --root
    // says; the OOM count is read under the root.
    assert!(report.memory.total_kib > 0);
    assert_eq!(report.memory.oom_kills, Some(3));
    assert_eq!(report.protocol_minor, almavmm_shared::PROTOCOL_MINOR);
    assert!(report.load.is_some_and(|l| l.cpus >= 1));
    assert!(report.filesystems.is_some());
    // systemctl is not asked about another tree.
    assert!(report.units.as_ref().is_some_and(|u| u.failed.is_empty() && u.error.is_some()));
    assert_eq!(report.agent.origin, almavmm_shared::health::AgentOrigin::Prebuilt);
    assert!(report.setup.is_none());
    // The path depends on this machine's CPU; the reason always says what was seen.
    if report.clock_path.path == ClockPath::None {
        assert!(report.clock_path.reason.starts_with("no paravirtual clock offered"), "{}", report.clock_path.reason);
    }
    assert!(report.clock_path.reason.contains("clocksource tsc"), "{}", report.clock_path.reason);
}

#[test]
fn human_health_is_readable() {
    let root = guest_root("almalinux-9.6", "kvm-clock");
    let out = agent().arg("--root").arg(root.path()).args(["health", "--resolve", "localhost"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("distro      AlmaLinux 9.6 (Sage Margay) (kernel 6.1.0-28-cloud-amd64)"), "{text}");
    assert!(text.contains("clock path  kvm-clock:"), "{text}");
    assert!(text.contains("setup       never ran"), "{text}");
    assert!(text.contains("swap ") && text.contains("3 OOM kills since boot"), "{text}");
    assert!(text.contains("\nload        ") && text.contains(" CPUs\n"), "{text}");
    assert!(text.contains("units       unknown (not asked"), "{text}");
}

#[test]
fn probe_session_through_a_pipe() {
    let mut child = agent().args(["clock", "probe"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    {
        let stdin = child.stdin.as_mut().unwrap();
        for seq in 0..8 {
            stdin.write_all(Request::Probe { seq }.encode().as_bytes()).unwrap();
        }
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let replies: Vec<Reply> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| Reply::parse(l).unwrap()).collect();
    assert!(replies[0].check_hello().is_ok());
    let times: Vec<i64> = replies[1..]
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Reply::Time { seq, guest_ns } if *seq == i as u64 => *guest_ns,
            other => panic!("round {i}: {other:?}"),
        })
        .collect();
    assert_eq!(times.len(), 8);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[test]
fn clock_check_without_rtc_exits_2_and_says_why() {
    let root = guest_root("debian-12", "tsc-only");
    let out = agent().arg("--root").arg(root.path()).args(["clock", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "clock: cannot check: no RTC at /dev/rtc0\n");
}

#[test]
fn kmod_status_on_a_fresh_guest_and_build_without_source() {
    let root = guest_root("debian-12", "tsc-only");
    let out = agent().arg("--root").arg(root.path()).args(["kmod", "status", "--json"]).output().unwrap();
    assert!(out.status.success());
    let state: almavmm_shared::health::ModuleState = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state.kernel, "6.1.0-28-cloud-amd64");
    assert!(!state.built && !state.installed && !state.loaded && !state.persisted && !state.hook_installed);
    let out = agent().arg("--root").arg(root.path()).args(["kmod", "build", "--no-deps"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("the module source is not at /usr/src/vmm_clock-"), "{err}");
}
