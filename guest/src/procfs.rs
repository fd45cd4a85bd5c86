//! Memory and uptime from /proc (proc(5)).

use almavmm_shared::health::MemoryInfo;

/// `MemTotal` and `MemAvailable` of /proc/meminfo (`Key:   N kB` lines).
pub fn meminfo(text: &str) -> MemoryInfo {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    MemoryInfo { total_kib: field("MemTotal"), available_kib: field("MemAvailable") }
}

/// The first number of /proc/uptime: seconds since boot.
pub fn uptime_secs(text: &str) -> f64 {
    text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0.0)
}

/// `VmRSS` of /proc/self/status, in KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn reads_memory_and_uptime() {
        let m = meminfo(&fixture("meminfo-here.txt"));
        assert_eq!(m.total_kib, 24_684_084);
        assert_eq!(m.available_kib, 22_782_508);
        assert_eq!(uptime_secs(&fixture("uptime-here.txt")), 1672.12);
        assert_eq!(meminfo(""), MemoryInfo::default());
    }

    #[test]
    fn reads_rss() {
        assert_eq!(vm_rss_kib("Name:\tx\nVmRSS:\t    1234 kB\n"), Some(1234));
        assert!(vm_rss_kib(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap() > 0);
    }
}
