//! The kernel's clocksources, from sysfs (kernel/time/clocksource.c: `current_clocksource`
//! holds one name, `available_clocksource` the names separated by spaces, with a trailing
//! space before the newline).

use std::io;

use almavmm_shared::health::ClocksourceInfo;

use crate::sys::sysroot::SysRoot;

pub const SYSFS_DIR: &str = "/sys/devices/system/clocksource/clocksource0";

pub fn read(root: &SysRoot) -> io::Result<ClocksourceInfo> {
    let current = root.read_optional(format!("{SYSFS_DIR}/current_clocksource"))?;
    let available = root.read_optional(format!("{SYSFS_DIR}/available_clocksource"))?;
    Ok(parse(current.as_deref(), available.as_deref()))
}

pub fn parse(current: Option<&str>, available: Option<&str>) -> ClocksourceInfo {
    ClocksourceInfo {
        current: current.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string),
        available: available.map(|a| a.split_whitespace().map(str::to_string).collect()).unwrap_or_default(),
    }
}

/// Make `name` the current clocksource (the kernel switches at once; root only).
pub fn select(root: &SysRoot, name: &str) -> io::Result<()> {
    let path = root.path(format!("{SYSFS_DIR}/current_clocksource"));
    std::fs::write(&path, format!("{name}\n")).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

pub fn describe(info: &ClocksourceInfo) -> String {
    format!("clocksource {} (available: {})", info.current.as_deref().unwrap_or("unknown"), info.available.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(tree: &str) -> SysRoot {
        SysRoot::new(format!("{}/tests/fixtures/sysfs/{tree}", env!("CARGO_MANIFEST_DIR")))
    }

    #[test]
    fn reads_the_fixture_trees() {
        let kvm = read(&fixture("kvm-clock")).unwrap();
        assert_eq!(kvm.current.as_deref(), Some("kvm-clock"));
        assert_eq!(kvm.available, ["kvm-clock", "tsc", "hpet", "acpi_pm"]);
        let tsc = read(&fixture("tsc-only")).unwrap();
        assert_eq!(tsc.current.as_deref(), Some("tsc"));
        assert!(!tsc.available.iter().any(|c| c == "kvm-clock"));
        let vmm = read(&fixture("vmm-clock")).unwrap();
        assert_eq!(vmm.current.as_deref(), Some("vmm-clock"));
        assert_eq!(describe(&vmm), "clocksource vmm-clock (available: vmm-clock tsc hpet acpi_pm)");
    }

    #[test]
    fn missing_sysfs_reads_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let info = read(&SysRoot::new(dir.path())).unwrap();
        assert_eq!(info, ClocksourceInfo { current: None, available: vec![] });
    }

    #[test]
    fn select_writes_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(SYSFS_DIR.trim_start_matches('/'));
        std::fs::create_dir_all(&d).unwrap();
        select(&SysRoot::new(dir.path()), "vmm-clock").unwrap();
        assert_eq!(std::fs::read_to_string(d.join("current_clocksource")).unwrap(), "vmm-clock\n");
    }
}
