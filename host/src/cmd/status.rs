//! `almavmm-host status [--json]`: every guest with its state, address, memory, uptime and
//! the disk space it really uses.

use std::os::unix::fs::MetadataExt;

use clap::Args;
use serde::Serialize;

use crate::backend;
use crate::state::home::Home;
use crate::state::vm::Vm;
use crate::ui::human_bytes;

#[derive(Debug, Args)]
#[command(after_help = "JSON: an array of objects with name, backend, state, address (null when unknown), \
memory_bytes, uptime_secs (null when not running), disk_used_bytes, disk_size_bytes, started_by.")]
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
}

fn row(home: &Home, vm: &Vm) -> Row {
    let (state, address) = match backend::for_kind(vm.spec.backend, home) {
        Ok(b) => {
            let state = b.state(vm).map(|s| s.as_str().to_string()).unwrap_or_else(|e| format!("error: {e}"));
            let address = b.ssh_endpoint(vm).ok().flatten().map(|e| e.to_string());
            (state, address)
        }
        Err(e) => (format!("error: {e}"), None),
    };
    let st = vm.state();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
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
        "{:<20} {:<9} {:<22} {:>7} {:>8} {:>18}\n",
        "NAME", "STATE", "ADDRESS", "MEMORY", "UPTIME", "DISK USED/SIZE"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<9} {:<22} {:>7} {:>8} {:>18}\n",
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
    let mut rows = Vec::new();
    for vm in Vm::load_all(&home) {
        match vm {
            Ok(vm) => rows.push(row(&home, &vm)),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    if args.json {
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
