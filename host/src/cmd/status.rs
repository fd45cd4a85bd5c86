//! `almavmm-host status [--json]`: every guest with its state, address, memory, uptime and
//! the disk space it really uses.

use std::os::unix::fs::MetadataExt;

use clap::Args;
use serde::Serialize;

use almavmm_shared::health::{FilesystemInfo, HealthReport};

use crate::agent::remote;
use crate::backend::{self, RunState};
use crate::ssh::client::Target;
use crate::state::home::Home;
use crate::state::vm::Vm;
use crate::ui::human_bytes;

#[derive(Debug, Args)]
#[command(after_help = "\
STATE is one of:
  running     up (its sshd may still be booting)
  paused      halted by the hypervisor on request; resumes where it was
  crashed     halted by the hypervisor after an error (QEMU internal-error or guest panic):
              `almavmm-host stop NAME` ends it at once, `start NAME` boots it again
  stopping    powering off
  waiting     vmd: waiting for a resource before it can start
  stopped     off, ready to `start`
  incomplete  never brought up completely (`up` failed or was interrupted):
              `almavmm-host up NAME` finishes it
  unknown     the hypervisor could not say
  error: …    the hypervisor could not be asked (the message says why)

--json prints an array of objects with name, backend, state (the words above), address
(null when unknown), memory_bytes, uptime_secs (null when not running), disk_used_bytes
(what the overlay takes on the host), disk_size_bytes, started_by (hand or ssh-proxy), and
guest_disk: the disk as the guest sees it, {\"used_bytes\": N (in use over its local
filesystems, as df counts), \"filesystems\": [{\"mount_point\", \"device\", \"fs_type\",
\"size_bytes\", \"available_bytes\", \"used_bytes\", \"inodes\", \"inodes_free\"}]}, asked of its
agent over SSH; null when the guest is not running, its agent does not answer, or is too old.")]
pub struct StatusArgs {
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Row {
    pub name: String,
    pub backend: &'static str,
    pub state: String,
    pub address: Option<String>,
    pub memory_bytes: u64,
    pub uptime_secs: Option<u64>,
    pub disk_used_bytes: u64,
    pub disk_size_bytes: u64,
    pub started_by: &'static str,
    /// Only asked for `--json`: null in the table's rows.
    pub guest_disk: Option<GuestDisk>,
}

/// The guest's disk as the guest sees it, from its agent's report.
#[derive(Debug, Serialize, PartialEq)]
pub struct GuestDisk {
    /// In use over its local filesystems (df's "used"), each device counted once.
    pub used_bytes: u64,
    pub filesystems: Vec<FilesystemInfo>,
}

/// What the report says of the guest's disk; `None` from an agent that does not report
/// filesystems (before protocol revision 1).
pub fn guest_disk(report: &HealthReport) -> Option<GuestDisk> {
    let filesystems = report.filesystems.clone()?;
    let mut devices = std::collections::BTreeSet::new();
    let used_bytes = filesystems
        .iter()
        .filter(|f| devices.insert(f.device.as_str()))
        .map(|f| f.used_bytes.unwrap_or(f.size_bytes.saturating_sub(f.available_bytes)))
        .sum();
    Some(GuestDisk { used_bytes, filesystems })
}

/// Ask a running guest's agent; `None` when it cannot be asked or does not answer.
fn ask_guest_disk(home: &Home, vm: &Vm) -> Option<GuestDisk> {
    let b = backend::for_kind(vm.spec.backend, home).ok()?;
    if b.state(vm).ok()? != RunState::Running {
        return None;
    }
    let endpoint = b.ssh_endpoint(vm).ok().flatten()?;
    match remote::health(&Target::for_vm(vm, endpoint)) {
        Ok(r) => guest_disk(&r),
        Err(e) => {
            tracing::debug!("{}: no disk use from the guest: {e}", vm.name);
            None
        }
    }
}

/// The word `status` shows: the hypervisor's state, except that a guest which is not up
/// and whose first `up` never finished is `incomplete`, whatever else is or is not there.
pub fn state_word(run: RunState, provisioned: bool) -> &'static str {
    match run {
        _ if !provisioned && !run.is_up() => "incomplete",
        RunState::Undefined => "stopped",
        other => other.as_str(),
    }
}

fn row(home: &Home, vm: &Vm) -> Row {
    let provisioned = vm.state().provisioned_instance.as_deref() == Some(vm.spec.instance_id.as_str());
    let (state, address) = match backend::for_kind(vm.spec.backend, home) {
        Ok(b) => {
            let state =
                b.state(vm).map(|s| state_word(s, provisioned).to_string()).unwrap_or_else(|e| format!("error: {e}"));
            let address = b.ssh_endpoint(vm).ok().flatten().map(|e| e.to_string());
            (state, address)
        }
        Err(e) => (format!("error: {e}"), None),
    };
    let st = vm.state();
    let now = almavmm_shared::clock::unix_now();
    let running = state == "running" || state == "paused";
    Row {
        name: vm.name.to_string(),
        backend: vm.spec.backend.as_str(),
        uptime_secs: st.started_at.filter(|_| running).map(|t| now.saturating_sub(t)),
        state,
        address,
        memory_bytes: vm.spec.memory.as_u64(),
        // Allocated blocks, not the apparent size: overlays are sparse and thin.
        disk_used_bytes: std::fs::metadata(vm.disk()).map(|m| m.blocks() * 512).unwrap_or(0),
        disk_size_bytes: vm.spec.disk_size.as_u64(),
        started_by: match st.started_by {
            crate::state::vm::StartedBy::Hand => "hand",
            crate::state::vm::StartedBy::Proxy => "ssh-proxy",
        },
        guest_disk: None,
    }
}

fn uptime(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        Some(s) if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        Some(s) => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The human table.
pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<20} {:<10} {:<22} {:>7} {:>8} {:>18}\n",
        "NAME", "STATE", "ADDRESS", "MEMORY", "UPTIME", "DISK USED/SIZE"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<10} {:<22} {:>7} {:>8} {:>18}\n",
            r.name,
            r.state,
            r.address.as_deref().unwrap_or("-"),
            crate::state::size::ByteSize::bytes(r.memory_bytes).to_string(),
            uptime(r.uptime_secs),
            format!("{}/{}", human_bytes(r.disk_used_bytes), crate::state::size::ByteSize::bytes(r.disk_size_bytes))
        ));
    }
    out
}

pub fn run(args: StatusArgs) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    let mut vms = Vec::new();
    for vm in Vm::load_all(&home) {
        match vm {
            Ok(vm) => vms.push(vm),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    let mut rows: Vec<Row> = vms.iter().map(|vm| row(&home, vm)).collect();
    if args.json {
        // One SSH session per running guest, side by side: each is bounded by the SSH
        // client's own limits, so the slowest guest sets the wait, not their sum.
        let disks: Vec<Option<GuestDisk>> = std::thread::scope(|s| {
            let asks: Vec<_> = vms
                .iter()
                .zip(&rows)
                .map(|(vm, r)| (r.state == "running").then(|| s.spawn(|| ask_guest_disk(&home, vm))))
                .collect();
            asks.into_iter().map(|h| h.and_then(|h| h.join().ok().flatten())).collect()
        });
        for (r, d) in rows.iter_mut().zip(disks) {
            r.guest_disk = d;
        }
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        eprintln!("no guests yet; create one with `almavmm-host up`");
    } else {
        print!("{}", render(&rows));
    }
    Ok(crate::exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_never_brought_up_is_incomplete_until_it_runs() {
        assert_eq!(state_word(RunState::Stopped, false), "incomplete");
        assert_eq!(state_word(RunState::Undefined, false), "incomplete");
        assert_eq!(state_word(RunState::Running, false), "running", "up is still at work on it");
        assert_eq!(state_word(RunState::Stopped, true), "stopped");
        assert_eq!(state_word(RunState::Undefined, true), "stopped");
        assert_eq!(state_word(RunState::Crashed, true), "crashed");
        assert_eq!(state_word(RunState::Crashed, false), "crashed");
        assert_eq!(state_word(RunState::Paused, true), "paused");
    }

    #[test]
    fn the_guests_disk_is_summed_once_per_device() {
        let fs = |mount: &str, dev: &str, used| FilesystemInfo {
            mount_point: mount.into(),
            device: dev.into(),
            size_bytes: 10 << 30,
            available_bytes: 5 << 30,
            used_bytes: used,
            ..Default::default()
        };
        let mut r: HealthReport =
            almavmm_shared::health::parse_report(include_str!("../../../shared/tests/fixtures/health-report-1.0.json"))
                .unwrap();
        assert_eq!(guest_disk(&r), None, "an agent before revision 1 does not say");
        r.filesystems = Some(vec![
            fs("/", "/dev/vda1", Some(3 << 30)),
            fs("/srv", "/dev/vda1", Some(3 << 30)), // a bind mount of the same filesystem
            fs("/boot", "/dev/vda16", None),        // statvfs failed: size minus available
        ]);
        let d = guest_disk(&r).unwrap();
        assert_eq!(d.used_bytes, (3 << 30) + (5 << 30));
        assert_eq!(d.filesystems.len(), 3);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["filesystems"][0]["mount_point"], "/");
    }

    #[test]
    fn table_lines_up_and_shows_dashes_for_unknowns() {
        let rows = vec![
            Row {
                name: "alma".into(),
                backend: "qemu",
                state: "running".into(),
                address: Some("127.0.0.1:40022".into()),
                memory_bytes: 2 << 30,
                uptime_secs: Some(3725),
                disk_used_bytes: 1536 << 20,
                disk_size_bytes: 20 << 30,
                started_by: "hand",
                guest_disk: None,
            },
            Row {
                name: "db".into(),
                backend: "qemu",
                state: "stopped".into(),
                address: None,
                memory_bytes: 1 << 30,
                uptime_secs: None,
                disk_used_bytes: 0,
                disk_size_bytes: 10 << 30,
                started_by: "hand",
                guest_disk: None,
            },
        ];
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].contains("running") && lines[1].contains("127.0.0.1:40022") && lines[1].contains("1h02m"));
        assert!(lines[1].contains("1.5 GiB/20G"), "{}", lines[1]);
        assert!(lines[2].contains("stopped") && lines[2].contains(" - "));
        assert_eq!(lines[1].len(), lines[2].len());
    }
}
