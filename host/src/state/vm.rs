//! One guest on the host: its folder, the files in it, its mutable state, and the lock
//! that serialises commands working on it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use almavmm_shared::wait::{Deadline, wait_until};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::home::Home;
use super::name::VmName;
use super::spec::{SpecError, VmSpec};
use crate::exit::Classified;

/// A guest: name, folder and spec.
#[derive(Debug, Clone)]
pub struct Vm {
    pub name: VmName,
    pub dir: PathBuf,
    pub spec: VmSpec,
}

/// Who started the running guest; the ssh-proxy only ever stops guests it started itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StartedBy {
    /// `up` or `start`: a person wants it running.
    #[default]
    Hand,
    /// `ssh-proxy`: started on demand, stopped when idle.
    Proxy,
}

/// Facts that change while a guest lives, kept in `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// The instance whose first boot completed (agent setup done, seed scrubbed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_instance: Option<String>,
    /// QEMU: the 127.0.0.1 port forwarded to the guest's sshd in the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    #[serde(default)]
    pub started_by: StartedBy,
    /// Unix time of the last start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// Unix time the clock was last measured by the ssh-proxy or synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_clock_check: Option<u64>,
    /// QEMU: the accelerator of the current run, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<AccelUsed>,
}

/// The accelerator a QEMU guest runs under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelUsed {
    /// `kvm` or `tcg`.
    pub name: String,
    /// Why not KVM, for TCG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Chosen by `--accel auto`, so a crash under KVM may fall back to TCG.
    #[serde(default)]
    pub auto: bool,
}

impl Vm {
    /// Load an existing guest, or fail with the classified "no such guest" error.
    pub fn load(home: &Home, name: &VmName) -> anyhow::Result<Vm> {
        let dir = home.vm_dir(name);
        let spec_path = dir.join("vm.yaml");
        if !spec_path.is_file() {
            return Err(Classified::NoSuchGuest { name: name.to_string(), known: home.guest_names() }.into());
        }
        let spec = VmSpec::load(&spec_path)?;
        Ok(Vm { name: name.clone(), dir, spec })
    }

    /// Load every guest that exists, in name order; broken specs, and folders whose name is
    /// no guest name (an all-digit one from an older almavmm, say), are reported, not
    /// skipped.
    pub fn load_all(home: &Home) -> Vec<anyhow::Result<Vm>> {
        home.guest_names()
            .into_iter()
            .map(|n| match n.parse::<VmName>() {
                Ok(name) => Vm::load(home, &name),
                Err(e) => Err(anyhow::anyhow!(
                    "{}: {e}; rename the folder and the name in its vm.yaml",
                    home.vms_dir().join(&n).display()
                )),
            })
            .collect()
    }

    pub fn spec_path(&self) -> PathBuf {
        self.dir.join("vm.yaml")
    }
    pub fn save_spec(&self) -> Result<(), SpecError> {
        self.spec.save(&self.spec_path())
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn seed(&self) -> PathBuf {
        self.dir.join("seed.iso")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn events_log(&self) -> PathBuf {
        self.dir.join("events.log")
    }
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    pub fn state(&self) -> VmState {
        fs::read(self.state_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn save_state(&self, st: &VmState) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(st).expect("state serialises");
        almavmm_shared::atomic::write_file(&self.state_path(), &json, 0o600)
    }

    /// Change the state file under the guest's lock-free read-modify-write; callers that
    /// race (two proxies) hold the guest lock.
    pub fn update_state(&self, f: impl FnOnce(&mut VmState)) -> std::io::Result<VmState> {
        let mut st = self.state();
        f(&mut st);
        self.save_state(&st)?;
        Ok(st)
    }

    /// The last `n` lines of the serial console's log, indented, for error messages.
    pub fn console_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.console_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(n)..];
        format!(
            "last lines of {}:\n{}",
            self.console_log().display(),
            tail.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
        )
    }

    /// Append one line to `events.log`: Unix time with milliseconds, then what happened.
    pub fn log_event(&self, what: &str) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(self.events_log()) {
            let _ = writeln!(f, "{}.{:03} {what}", now.as_secs(), now.subsec_millis());
        }
    }

    /// Take the guest's lock, or fail at once naming the process that holds it.
    pub fn lock(&self) -> Result<VmLock, LockError> {
        VmLock::acquire(&self.lock_path(), self.name.as_str())
    }

    /// Take the guest's lock for a command a person runs: if another command holds it (an
    /// ssh-proxy stopping the guest after its last session, say), say so once and wait up
    /// to `limit` for it to finish, then fail naming it.
    pub fn lock_waiting(&self, limit: std::time::Duration) -> Result<VmLock, LockError> {
        VmLock::acquire_waiting(&self.lock_path(), self.name.as_str(), limit)
    }
}

/// Held while a command changes a guest; released on drop.
#[derive(Debug)]
pub struct VmLock {
    _flock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another almavmm-host command is working on {name}{}; wait for it to finish, or stop it",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy { name: String, holder: Option<u32> },
    #[error("cannot open the lock file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl VmLock {
    /// [`Vm::lock_waiting`] by path, for `up`, which takes the lock before the guest loads.
    pub fn acquire_waiting(path: &Path, name: &str, limit: std::time::Duration) -> Result<VmLock, LockError> {
        match Self::acquire(path, name) {
            Err(LockError::Busy { holder, .. }) => {
                let pid = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
                eprintln!(
                    "another almavmm-host command{pid} is working on {name}; waiting up to {} s for it to finish",
                    limit.as_secs()
                );
                Self::acquire_wait(path, name, limit)
            }
            other => other,
        }
    }

    /// Like [`VmLock::acquire`], but wait up to `limit` for another command to finish.
    pub fn acquire_wait(path: &Path, name: &str, limit: std::time::Duration) -> Result<VmLock, LockError> {
        let mut busy = None;
        let attempt = || match Self::acquire(path, name) {
            Ok(lock) => Ok(Some(lock)),
            Err(e @ LockError::Busy { .. }) => {
                busy = Some(e);
                Ok(None)
            }
            Err(e) => Err(e),
        };
        match wait_until(Deadline::after(limit), std::time::Duration::from_millis(50), attempt)? {
            Some(lock) => Ok(lock),
            None => Err(busy.expect("a wait that timed out saw the lock busy")),
        }
    }

    pub fn acquire(path: &Path, name: &str) -> Result<VmLock, LockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| LockError::Open { path: path.to_owned(), source })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut flock) => {
                // Record who holds it, for the message another command will print.
                let _ = flock.set_len(0);
                let _ = flock.rewind();
                let _ = write!(flock, "{}", std::process::id());
                Ok(VmLock { _flock: flock })
            }
            Err((mut file, _)) => {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                Err(LockError::Busy { name: name.to_string(), holder: s.trim().parse().ok() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_digit_names_read_back_from_disk_are_refused_with_the_reason() {
        // vmctl's main.c parse_vmid would take "3" for vm id 3 (state::name).
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let spec = |name: &str| {
            format!(
                "name: {name}\nbackend: vmd\nmemory: 1G\ndisk_size: 10G\nimage: {{url: u, trust: almalinux9}}\n\
                 user: u\nhostname: h\nssh_key: /k.pub\ninstance_id: i\n"
            )
        };
        for (folder, name) in [("3", "3"), ("alma", "42"), ("web", "web")] {
            std::fs::create_dir_all(home.vms_dir().join(folder)).unwrap();
            std::fs::write(home.vms_dir().join(folder).join("vm.yaml"), spec(name)).unwrap();
        }
        let all = Vm::load_all(&home);
        let errors: Vec<String> = all.iter().filter_map(|r| r.as_ref().err()).map(|e| format!("{e:#}")).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| e.contains("made only of digits")), "{errors:?}");
        assert!(errors[0].contains("vms/3: ") && errors[0].contains("rename the folder"), "{}", errors[0]);
        assert_eq!(all.iter().filter_map(|r| r.as_ref().ok()).map(|v| v.name.as_str()).collect::<Vec<_>>(), ["web"]);
    }

    #[test]
    fn second_lock_is_refused_with_the_holder_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = VmLock::acquire(&p, "alma").unwrap();
        let err = VmLock::acquire(&p, "alma").unwrap_err();
        assert!(matches!(err, LockError::Busy { holder: Some(pid), .. } if pid == std::process::id()));
        assert!(err.to_string().starts_with("another almavmm-host command is working on alma (pid "), "{err}");
        drop(held);
        VmLock::acquire(&p, "alma").unwrap();
    }

    #[test]
    fn a_waiting_lock_gets_the_guest_once_the_holder_lets_go_and_gives_up_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = VmLock::acquire(&p, "alma").unwrap();
        let err = VmLock::acquire_wait(&p, "alma", std::time::Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, LockError::Busy { .. }), "{err}");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        VmLock::acquire_wait(&p, "alma", std::time::Duration::from_secs(30)).unwrap();
        release.join().unwrap();
    }

    #[test]
    fn unknown_guest_names_the_ones_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        fs::create_dir_all(dir.path().join("vms/web")).unwrap();
        fs::write(dir.path().join("vms/web/vm.yaml"), "x").unwrap();
        let err = Vm::load(&home, &"db".parse().unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "no guest named \"db\"; guests: web");
        assert_eq!(crate::exit::code_for(&err), crate::exit::NO_SUCH_GUEST);
    }

    #[test]
    fn state_defaults_when_absent_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let vm = Vm {
            name: "a".parse().unwrap(),
            dir: dir.path().to_owned(),
            spec: serde_norway::from_str(
                "name: a\nbackend: qemu\nmemory: 1G\ndisk_size: 10G\nimage: {url: u, trust: almalinux9}\nuser: u\nhostname: a\nssh_key: /k.pub\ninstance_id: i\n",
            )
            .unwrap(),
        };
        assert_eq!(vm.state(), VmState::default());
        let st = vm.update_state(|s| s.ssh_port = Some(2222)).unwrap();
        assert_eq!(vm.state(), st);
    }
}
