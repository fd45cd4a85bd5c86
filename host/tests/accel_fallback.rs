//! `--accel auto` on a host whose KVM passes the probe and then stops real guests in
//! `internal-error` (seen on some machines here), without such a machine: a stand-in QEMU
//! on PATH (tests/fixtures/qemu) behaves that way. The guest must come up under TCG with
//! one line saying so, the verdict must stick for the host's boot, and a guest left halted
//! must stop at once.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_almavmm-host");

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    /// A provisioned QEMU guest `alma` whose disk is never read (the stand-in boots nothing).
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("home/vms/alma");
        std::fs::create_dir_all(&vm).unwrap();
        std::fs::write(
            vm.join("vm.yaml"),
            "name: alma\nbackend: qemu\nmemory: 1G\ndisk_size: 10G\nimage: {url: u, trust: almalinux9}\n\
             user: u\nhostname: alma\nssh_key: /k.pub\ninstance_id: i\n",
        )
        .unwrap();
        std::fs::write(vm.join("disk.qcow2"), "").unwrap();
        std::fs::write(vm.join("state.json"), r#"{"provisioned_instance": "i"}"#).unwrap();
        Host { dir }
    }

    fn vm_dir(&self) -> PathBuf {
        self.dir.path().join("home/vms/alma")
    }

    fn launches(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("launches")).unwrap_or_default()
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.vm_dir().join("state.json")).unwrap()).unwrap()
    }

    /// `almavmm-host ARGS` with the stand-in first on PATH, killed if it outlives 90 s.
    fn run(&self, args: &[&str]) -> Output {
        let stand_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qemu");
        let path = format!("{}:{}", stand_in.display(), std::env::var("PATH").unwrap_or_default());
        let mut child = Command::new(BIN)
            .args(args)
            .env("ALMAVMM_HOME", self.dir.path().join("home"))
            .env("PATH", path)
            .env("FAKE_QEMU_LOG", self.dir.path().join("launches"))
            .env_remove("ALMAVMM_ACCEL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(90) {
                let _ = child.kill();
                panic!("almavmm-host {} did not finish within 90 s", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The stand-in ends itself after 120 s; do not leave it that long.
        if let Ok(pid) = std::fs::read_to_string(self.vm_dir().join("qemu.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn have_kvm_device() -> bool {
    // Without /dev/kvm there is no probe at all (TCG at once), so nothing to fall back from.
    let here = Path::new("/dev/kvm").exists();
    if !here {
        eprintln!("skipped: no /dev/kvm on this machine, so --accel auto never tries KVM");
    }
    here
}

#[test]
fn a_guest_that_crashes_under_kvm_is_started_again_under_tcg_and_kvm_stays_off() {
    if !have_kvm_device() {
        return;
    }
    let h = Host::new();
    let o = h.run(&["start", "alma", "--timeout", "60"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("stopped under KVM (internal-error) before its sshd answered; started it again under TCG"),
        "{err}"
    );
    assert_eq!(h.launches(), "kvm\ntcg\n");
    let accel = &h.state()["accel"];
    assert_eq!(accel["name"], "tcg");
    assert!(accel["why"].as_str().unwrap().contains("internal-error"), "{accel}");

    let st = h.run(&["status", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(rows[0]["state"], "running");

    let o = h.run(&["stop", "alma"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The verdict holds for this boot of the host: the next start goes straight to TCG.
    let o = h.run(&["start", "alma", "--timeout", "60"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("under KVM"), "{}", stderr(&o));
    assert_eq!(h.launches(), "kvm\ntcg\ntcg\n");
}

#[test]
fn a_forced_kvm_guest_that_crashes_is_reported_as_crashed_and_stops_at_once() {
    if !have_kvm_device() {
        return;
    }
    let h = Host::new();
    let o = h.run(&["start", "alma", "--accel", "kvm", "--timeout", "60"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("alma crashed while booting"), "{}", stderr(&o));
    assert_eq!(h.launches(), "kvm\n", "no fallback when KVM was asked for");

    let st = h.run(&["status", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(rows[0]["state"], "crashed");

    let started = Instant::now();
    let o = h.run(&["stop", "alma", "--timeout", "60"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("halted (QMP status internal-error)"), "{}", stderr(&o));
    // Not a speed target: the power button's 60 s would have been waited out before.
    assert!(started.elapsed() < Duration::from_secs(55), "stop waited for a guest that cannot react");
    let st = h.run(&["status", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(rows[0]["state"], "stopped");
}
