//! What vmd, pf and the sysctls would hold in the kernel and in vmd's memory, kept in a
//! JSON file in the rig's private state folder (`$OPENBSD_STANDIN_STATE`), read and
//! written under an flock so concurrent stand-in calls see one history.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use almavmm_shared::wait::{Deadline, wait_until};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// `rcctl enable vmd` was run (rc.conf.local's `vmd_flags`).
    pub vmd_enabled: bool,
    /// vmd is running (its control socket would exist).
    pub vmd_running: bool,
    /// `local prefix` of the last configuration read.
    pub prefix: Option<(std::net::Ipv4Addr, u8)>,
    /// vmd.c `vmd_known`: ids handed out per (name, uid) while vmd runs.
    pub known: Vec<Known>,
    /// VMs in vmd's list, in registration order.
    pub vms: Vec<VmEntry>,
    /// net.inet.ip.forwarding.
    pub forwarding: String,
    pub pf_enabled: bool,
    /// Rule lines of the loaded main ruleset.
    pub pf_main: Vec<String>,
    /// Anchor name → its rule lines.
    pub pf_anchors: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Known {
    pub name: String,
    pub uid: u32,
    pub id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmEntry {
    pub name: String,
    pub id: u32,
    pub uid: u32,
    pub gid: Option<u32>,
    pub memory: u64,
    pub disks: Vec<PathBuf>,
    pub cdrom: Option<PathBuf>,
    pub local_interfaces: u32,
    pub disabled: bool,
    /// VM_STATE_SHUTDOWN: `vmctl stop` without -f was asked.
    pub shutdown: bool,
    pub run: Option<Run>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// The QEMU process standing in for the VM's vmd child.
    pub pid: u32,
    pub tty: String,
    pub taps: Vec<String>,
    pub dnsmasq: Vec<u32>,
}

/// The rig's state folder; the stand-ins refuse to run outside the rig.
pub fn dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("OPENBSD_STANDIN_STATE") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => bail!(
            "OPENBSD_STANDIN_STATE is not set: the OpenBSD stand-ins only run inside `cargo xtask e2e --backend vmd`"
        ),
    }
}

/// The state, locked until the guard is dropped (then saved if changed through it).
pub struct Locked {
    pub state: State,
    path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl Locked {
    pub fn open(dir: &Path) -> anyhow::Result<Locked> {
        std::fs::create_dir_all(dir)?;
        let lock_path = dir.join("lock");
        let mut file = Some(File::options().create(true).truncate(false).write(true).open(&lock_path)?);
        let attempt = || -> anyhow::Result<Option<nix::fcntl::Flock<File>>> {
            match nix::fcntl::Flock::lock(file.take().expect("file"), nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => Ok(Some(l)),
                Err((f, _)) => {
                    file = Some(f);
                    Ok(None)
                }
            }
        };
        let Some(lock) = wait_until(Deadline::after(Duration::from_secs(60)), Duration::from_millis(20), attempt)?
        else {
            bail!("openbsd-standin: {} stayed locked for 60 s", lock_path.display());
        };
        let path = dir.join("state.json");
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State { forwarding: "0".into(), ..State::default() },
            Err(e) => return Err(e.into()),
        };
        Ok(Locked { state, path, _lock: lock })
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

/// Is the process alive (not gone, not a zombie waiting for the rig's init to reap it)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `PID (COMM) STATE ...`; COMM may hold spaces and parentheses, STATE follows the last `)`.
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}
