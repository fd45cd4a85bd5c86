//! `vmctl status`: which guests vmd knows, their ids and states.
//!
//! Format (usr.sbin/vmctl/vmctl.c 1.94, `print_vm_info`): a header
//! `%5s %5s %5s %7s %7s %7s %12s %8s %s` of ID PID VCPUS MAXMEM CURMEM TTY OWNER STATE NAME,
//! then one row per VM with the same widths. Columns are right-justified, so a field wider
//! than its column (an OWNER `user:group`, cut by vmctl at 15 characters) pushes the rest to
//! the right: rows are split on whitespace, never by position. NAME is the last field and
//! holds no spaces (vmd's name rules). A stopped VM shows `-` for PID, CURMEM and TTY. Sizes
//! are fmt_scaled(3) strings (`512M`, `1.0G`, `88.1M`). vmctl releases before STATE existed
//! print eight columns; their state is read from PID.
//!
//! A VM vmd does not know has no row, and `vmctl status NAME` filters on the client side
//! (`check_info_id`), so we always list everything and look for the exact name.
//!
//! When vmd knows no VM at all, vmctl 1.94 prints the header only and exits 1
//! ([`crate::hostsetup::vmctl::empty_listing`], which cites the source).

use crate::backend::RunState;

/// One row of `vmctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub id: u32,
    /// The VM's process; `None` while it is not running.
    pub pid: Option<u32>,
    pub vcpus: u32,
    /// Configured memory in bytes (from fmt_scaled, so rounded to its three digits).
    pub max_mem: Option<u64>,
    /// Memory in use, while running.
    pub cur_mem: Option<u64>,
    /// Console tty name without `/dev/`.
    pub tty: Option<String>,
    pub owner: String,
    pub state: RunState,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("`vmctl status` printed no header line (expected one starting with ID and ending with NAME):\n{0}")]
    NoHeader(String),
    #[error(
        "`vmctl status` row {row:?} does not have the {expected} columns of its header; report this with your OpenBSD version"
    )]
    BadRow { row: String, expected: usize },
    #[error("`vmctl status` row {row:?}: {field} {value:?} is not a number")]
    BadNumber { row: String, field: &'static str, value: String },
}

/// Parse the whole output.
pub fn parse(text: &str) -> Result<Vec<VmRow>, StatusError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().map(|l| l.split_whitespace().collect()).unwrap_or_default();
    if header.first() != Some(&"ID") || header.last() != Some(&"NAME") {
        return Err(StatusError::NoHeader(text.to_string()));
    }
    let has_state = header.contains(&"STATE");
    let columns = header.len();
    let mut rows = Vec::new();
    for line in lines {
        // vmctl releases before 6.4 print per-vCPU lines under a VM selected by name.
        if line.trim_start().starts_with("VCPU:") {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != columns {
            return Err(StatusError::BadRow { row: line.to_string(), expected: columns });
        }
        let number = |field: &'static str, v: &str| {
            v.parse::<u32>().map_err(|_| StatusError::BadNumber { row: line.to_string(), field, value: v.to_string() })
        };
        let dash = |v: &str| (v != "-").then(|| v.to_string());
        let pid = match f[1] {
            "-" => None,
            v => Some(number("PID", v)?),
        };
        let state = if has_state {
            state_from_str(f[7])
        } else if pid.is_some() {
            RunState::Running
        } else {
            RunState::Stopped
        };
        rows.push(VmRow {
            id: number("ID", f[0])?,
            pid,
            vcpus: number("VCPUS", f[2])?,
            max_mem: dash(f[3]).as_deref().and_then(parse_scaled),
            cur_mem: dash(f[4]).as_deref().and_then(parse_scaled),
            tty: dash(f[5]),
            owner: f[6].to_string(),
            state,
            name: f[columns - 1].to_string(),
        });
    }
    Ok(rows)
}

/// The row of the VM named exactly `name` (never a prefix or suffix match).
pub fn find<'a>(rows: &'a [VmRow], name: &str) -> Option<&'a VmRow> {
    rows.iter().find(|r| r.name == name)
}

/// vmctl.c 1.94 `vm_state`: the words it prints. An unknown word is treated as "cannot say".
fn state_from_str(s: &str) -> RunState {
    match s {
        "running" => RunState::Running,
        "stopped" => RunState::Stopped,
        "paused" => RunState::Paused,
        "waiting" => RunState::Waiting,
        "stopping" => RunState::Stopping,
        _ => RunState::Unknown,
    }
}

/// A fmt_scaled(3) size (`512M`, `1.0G`, `88.1M`, `0B`) in bytes; units are powers of 1024.
pub fn parse_scaled(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let shift = match unit.to_ascii_uppercase() {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        'P' => 50,
        'E' => 60,
        _ => return None,
    };
    let number: f64 = s[..s.len() - 1].parse().ok()?;
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    Some((number * (1u64 << shift) as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built with vmctl.c's printf formats: running, stopped, paused, waiting and stopping
    /// rows, an OWNER `longusername:st` (vmctl cuts user:group at 15 characters) wider than
    /// its 12-column field, and `db` next to `mydb`.
    const SAMPLE: &str = include_str!("../../../tests/fixtures/openbsd/vmctl-status.txt");
    const EMPTY: &str = include_str!("../../../tests/fixtures/openbsd/vmctl-status-empty.txt");

    #[test]
    fn parses_every_state_and_column() {
        let rows = parse(SAMPLE).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(
            rows[0],
            VmRow {
                id: 1,
                pid: Some(85075),
                vcpus: 1,
                max_mem: Some(2 << 30),
                cur_mem: Some(1006 << 20),
                tty: Some("ttyp8".into()),
                owner: "alice".into(),
                state: RunState::Running,
                name: "alma".into(),
            }
        );
        let states: Vec<_> = rows.iter().map(|r| (r.name.as_str(), r.state)).collect();
        assert_eq!(
            states,
            [
                ("alma", RunState::Running),
                ("db", RunState::Stopped),
                ("mydb", RunState::Paused),
                ("web.example.org", RunState::Running),
                ("build-1", RunState::Waiting),
                ("old_vm", RunState::Stopping),
            ]
        );
        let db = find(&rows, "db").unwrap();
        assert_eq!((db.id, db.pid, db.cur_mem, db.tty.as_deref()), (2, None, None, None));
    }

    #[test]
    fn a_long_owner_shifts_columns_without_breaking_the_row() {
        let rows = parse(SAMPLE).unwrap();
        let web = find(&rows, "web.example.org").unwrap();
        assert_eq!(web.owner, "longusername:st");
        assert_eq!((web.id, web.pid, web.state), (4, Some(9981), RunState::Running));
        assert_eq!(web.cur_mem, Some((2.1f64 * (1u64 << 30) as f64).round() as u64));
    }

    #[test]
    fn names_match_exactly_never_as_prefix_or_suffix() {
        let rows = parse(SAMPLE).unwrap();
        assert_eq!(find(&rows, "db").unwrap().id, 2);
        assert_eq!(find(&rows, "mydb").unwrap().id, 3);
        assert!(find(&rows, "b").is_none());
        assert!(find(&rows, "web").is_none());
        assert!(find(&rows, "alma2").is_none());
    }

    #[test]
    fn a_missing_row_means_vmd_does_not_know_the_vm() {
        let rows = parse(EMPTY).unwrap();
        assert!(rows.is_empty());
        assert!(find(&rows, "alma").is_none());
    }

    #[test]
    fn three_digit_ids_big_sizes_zero_and_numeric_owners() {
        // vmctl-status-wide.txt: rows printed through vmctl.c 1.94's formats; fmt_scaled
        // (libutil fmt_scaled.c) drops the decimal from 100 units up (`100G`, `128G`) and
        // writes a zero as `0B`; an owner without a passwd/group entry is `%d` then `:%lld`.
        let rows = parse(include_str!("../../../tests/fixtures/openbsd/vmctl-status-wide.txt")).unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.id, r.pid, r.max_mem, r.cur_mem, r.owner.as_str(), r.state, r.name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    100,
                    Some(12345),
                    Some(100 << 30),
                    Some((99.5f64 * (1u64 << 30) as f64) as u64),
                    "longusername:st",
                    RunState::Running,
                    "big"
                ),
                (101, None, Some(128 << 30), None, "root:wheel", RunState::Stopped, "huge"),
                (999, Some(54321), Some(1 << 40), Some(0), "1001:1001", RunState::Running, "zero"),
                (7, None, Some(512 << 20), None, "alice", RunState::Waiting, "seven"),
            ]
        );
    }

    #[test]
    fn releases_without_a_state_column_read_the_state_from_the_pid() {
        // vmctl before OpenBSD 6.4: `%5s %5s %5s %7s %7s %7s %12s %s` and per-vCPU lines
        // when a VM is selected by name.
        let old = "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER NAME\n\
                       1 12345     1    1.0G    500M   ttyp0         root vm1\n \
                   VCPU:  0 STATE: RUNNING\n\
                       2     -     1    512M       -       -         root vm2\n";
        let rows = parse(old).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].name.as_str(), rows[0].state), ("vm1", RunState::Running));
        assert_eq!((rows[1].name.as_str(), rows[1].state), ("vm2", RunState::Stopped));
    }

    #[test]
    fn unexpected_output_is_an_error_that_shows_it() {
        let e = parse("vmctl: connect: /var/run/vmd.sock: No such file or directory\n").unwrap_err();
        assert!(matches!(e, StatusError::NoHeader(_)));
        assert!(e.to_string().contains("vmd.sock"), "{e}");
        let header = EMPTY.lines().next().unwrap();
        let e = parse(&format!("{header}\n    1 100 1 1.0G 1.0G ttyp0 root running\n")).unwrap_err();
        assert!(matches!(e, StatusError::BadRow { expected: 9, .. }), "{e}");
        let e = parse(&format!("{header}\n    x 100 1 1.0G 1.0G ttyp0 root running vm\n")).unwrap_err();
        assert_eq!(
            e,
            StatusError::BadNumber {
                row: "    x 100 1 1.0G 1.0G ttyp0 root running vm".into(),
                field: "ID",
                value: "x".into()
            }
        );
    }

    #[test]
    fn scaled_sizes() {
        assert_eq!(parse_scaled("512M"), Some(512 << 20));
        assert_eq!(parse_scaled("1.0G"), Some(1 << 30));
        assert_eq!(parse_scaled("88.1M"), Some((88.1f64 * (1 << 20) as f64).round() as u64));
        assert_eq!(parse_scaled("0B"), Some(0));
        assert_eq!(parse_scaled("-"), None);
        assert_eq!(parse_scaled("12"), None);
        assert_eq!(parse_scaled("G"), None);
    }
}
