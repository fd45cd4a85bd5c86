//! The watcher's unit is no less confined than chrony's: `systemd-analyze security` rates
//! both offline (`--offline=true` reads the unit file and judges it without loading it,
//! systemd ≥ 250), and ours must not score higher. The e2e measures the same pair inside
//! the booted guest, where the numbers are the ones a user sees.
//!
//! chrony's unit is Debian 12's (`tests/fixtures/systemd/chrony.service`, from the package
//! chrony 4.3-2+deb12u3, /lib/systemd/system/chrony.service, unchanged), the time daemon
//! that runs beside the agent in the test guest.

use std::path::Path;
use std::time::Duration;

use almavmm_agent::sys::service::{parse_exposure, unit_text};
use almavmm_shared::runner::Cmd;

fn exposure(unit: &Path) -> f64 {
    let out = Cmd::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .timeout(Duration::from_secs(60))
        .output()
        .expect("systemd-analyze runs");
    // It exits non-zero when the exposure is above --threshold (default 100: never), so
    // any failure is a real one.
    assert!(out.status.success(), "systemd-analyze security {}: {}", unit.display(), out.stderr);
    parse_exposure(&out.stdout).unwrap_or_else(|| panic!("no overall exposure in:\n{}", out.stdout))
}

fn have_systemd_analyze() -> bool {
    Cmd::new("systemd-analyze")
        .arg("--version")
        .timeout(Duration::from_secs(10))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The agent's unit written to a file, with the folder that holds it; `None` (and a
/// SKIPPED line) when this machine has no systemd-analyze to judge it.
fn our_unit_file() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !have_systemd_analyze() {
        eprintln!("SKIPPED: systemd-analyze is not installed (package systemd)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("almavmm-agent.service");
    std::fs::write(&ours, unit_text()).unwrap();
    Some((dir, ours))
}

#[test]
fn the_watcher_is_no_less_confined_than_chrony() {
    let Some((_dir, ours)) = our_unit_file() else { return };
    let chrony = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/systemd/chrony.service");
    let (a, c) = (exposure(&ours), exposure(&chrony));
    eprintln!("exposure: almavmm-agent.service {a}, chrony.service {c}");
    assert!(a <= c, "almavmm-agent.service rates {a}, above chrony.service's {c}");
    // Well below the 9.6 "UNSAFE" of the unconfined unit, not merely under the line.
    assert!(a < 4.0, "almavmm-agent.service rates {a}");
}

#[test]
fn the_unit_has_no_directive_systemd_does_not_know() {
    let Some((_dir, ours)) = our_unit_file() else { return };
    // `verify` warns "Unknown key 'X' in section [Service], ignoring." (systemd 252; older
    // ones said "Unknown key name") for a directive this systemd does not have: such a line
    // would silently confine nothing.
    let out = Cmd::new("systemd-analyze")
        .args(["verify", "--man=false"])
        .arg(&ours)
        .timeout(Duration::from_secs(60))
        .output()
        .expect("systemd-analyze runs");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!all.contains("Unknown key"), "{all}");
    assert!(!all.contains("Unknown lvalue"), "{all}");
    assert!(!all.contains("Failed to parse"), "{all}");
}
