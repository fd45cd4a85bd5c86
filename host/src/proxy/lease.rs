//! Leases: one file per live proxy session in the guest's `leases/` folder, named by the
//! proxy's pid. A lease counts while its process is alive; files left by crashed proxies
//! (dead pid, or a pid reused by something else) are removed when counted.

use std::fs;
use std::path::{Path, PathBuf};

/// A held lease, released (file removed) on drop.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn dir(vm_dir: &Path) -> PathBuf {
    vm_dir.join("leases")
}

/// What a lease file says while its proxy waits for (or starts) the guest.
const WAITING: &str = "almavmm-host ssh-proxy\n";
/// … and once it relays a session.
const RELAYING: &str = "almavmm-host ssh-proxy relaying\n";

/// Take a lease for process `pid` (normally our own).
pub fn take(vm_dir: &Path, pid: u32) -> std::io::Result<Lease> {
    let d = dir(vm_dir);
    fs::create_dir_all(&d)?;
    let path = d.join(pid.to_string());
    fs::write(&path, WAITING)?;
    Ok(Lease { path })
}

impl Lease {
    /// The session is relayed now: a `stop` of the guest ends this proxy (a proxy still
    /// waiting to start the guest for a new session is left to do so).
    pub fn relaying(&self) -> std::io::Result<()> {
        fs::write(&self.path, RELAYING)
    }
}

/// The pids of live proxies that relay a session.
pub fn relaying(vm_dir: &Path, is_proxy: impl Fn(u32) -> bool) -> Vec<u32> {
    live(vm_dir, is_proxy)
        .into_iter()
        .filter(|pid| fs::read_to_string(dir(vm_dir).join(pid.to_string())).is_ok_and(|s| s == RELAYING))
        .collect()
}

/// The pids whose leases are live, removing stale lease files on the way.
pub fn live(vm_dir: &Path, is_proxy: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir(dir(vm_dir)) else { return pids };
    for e in rd.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if is_proxy(pid) {
            pids.push(pid);
        } else {
            let _ = fs::remove_file(e.path());
        }
    }
    pids.sort_unstable();
    pids
}

/// Is `pid` a running almavmm-host (the one that took the lease, or a recycled pid that
/// happens to be another almavmm-host: harmless, it only delays a stop)?
pub fn is_almavmm_process(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None).is_err() {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|b| *b == 0).next().is_some_and(|argv0| String::from_utf8_lossy(argv0).contains("almavmm-host"))
            })
            .unwrap_or(false)
    }
    #[cfg(not(target_os = "linux"))]
    {
        true
    }
}

/// Remember when the last proxy session ended (Unix seconds).
pub fn record_end(vm_dir: &Path, now: u64) {
    let _ = almavmm_shared::atomic::write_file(&vm_dir.join("leases-last-end"), now.to_string().as_bytes(), 0o600);
}

pub fn last_end(vm_dir: &Path) -> Option<u64> {
    fs::read_to_string(vm_dir.join("leases-last-end")).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_while_held_and_vanish_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let a = take(t.path(), 100).unwrap();
        let _b = take(t.path(), 200).unwrap();
        assert_eq!(live(t.path(), |_| true), vec![100, 200]);
        drop(a);
        assert_eq!(live(t.path(), |_| true), vec![200]);
    }

    #[test]
    fn leases_of_crashed_proxies_are_removed_when_counted() {
        let t = tempfile::tempdir().unwrap();
        let held = take(t.path(), 300).unwrap();
        // Simulate a crash: the process died without dropping its lease.
        std::mem::forget(held);
        assert_eq!(live(t.path(), |pid| pid != 300), Vec::<u32>::new());
        assert_eq!(fs::read_dir(dir(t.path())).unwrap().count(), 0);
    }

    #[test]
    fn our_own_process_is_live_and_a_dead_pid_is_not() {
        assert!(is_almavmm_process(std::process::id()) || cfg!(target_os = "linux"));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_almavmm_process(pid));
    }

    #[test]
    fn only_relaying_leases_count_as_sessions_to_end() {
        let t = tempfile::tempdir().unwrap();
        let waiting = take(t.path(), 100).unwrap();
        let relaying_one = take(t.path(), 200).unwrap();
        relaying_one.relaying().unwrap();
        assert_eq!(relaying(t.path(), |_| true), vec![200]);
        drop(waiting);
        drop(relaying_one);
        assert_eq!(relaying(t.path(), |_| true), Vec::<u32>::new());
    }

    #[test]
    fn last_end_round_trips() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(last_end(t.path()), None);
        record_end(t.path(), 1_764_000_000);
        assert_eq!(last_end(t.path()), Some(1_764_000_000));
    }
}
