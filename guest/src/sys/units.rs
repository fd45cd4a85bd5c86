//! systemd's failed units, for the health report.

use std::time::Duration;

use almavmm_shared::health::UnitsInfo;
use almavmm_shared::runner::Cmd;

use crate::sys::sysroot::SysRoot;

/// Unit names of `systemctl list-units --state=failed --plain --no-legend` output: the
/// first word of each line, after the `●` status column older systemd prints regardless.
pub fn parse_failed(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().find(|w| !matches!(*w, "●" | "*" | "×")))
        .map(str::to_string)
        .collect()
}

/// The failed units of the running system. Only asked on the real root: under a fixture
/// tree, systemctl would answer for this machine instead.
pub fn gather(root: &SysRoot) -> UnitsInfo {
    if !root.is_host_root() {
        return UnitsInfo { failed: vec![], error: Some("not asked: the root is not the running system's".into()) };
    }
    let out = Cmd::new("systemctl")
        .args(["list-units", "--state=failed", "--all", "--plain", "--no-legend", "--no-pager"])
        .timeout(Duration::from_secs(10))
        .run();
    match out {
        Ok(o) => UnitsInfo { failed: parse_failed(&o.stdout), error: None },
        // One line: the runner's error carries stderr's tail on lines of its own.
        Err(e) => UnitsInfo {
            failed: vec![],
            error: Some(e.to_string().lines().map(str::trim).collect::<Vec<_>>().join(" ")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/systemctl/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn names_the_failed_units() {
        assert_eq!(
            parse_failed(&fixture("failed-plain.txt")),
            ["almavmm-e2e-fails.service", "dnf-makecache.service", "var-lib-data.mount"]
        );
        assert_eq!(parse_failed(&fixture("failed-bullet.txt")), ["almavmm-e2e-fails.service", "dnf-makecache.service"]);
        assert!(parse_failed("").is_empty());
        assert!(parse_failed("\n  \n").is_empty());
    }

    #[test]
    fn a_fixture_root_is_not_asked() {
        let u = gather(&SysRoot::new("/nonexistent"));
        assert!(u.failed.is_empty() && u.error.is_some());
    }
}
