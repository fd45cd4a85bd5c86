//! What the agent still reads from /proc by hand (proc(5)): sysinfo gives memory, swap,
//! load and uptime, but not the kernel's OOM kill count.

/// `oom_kill` of /proc/vmstat (`name value` lines): OOM kills since boot. `None` when the
/// kernel does not count them (before 4.13) or the text is not vmstat's.
pub fn oom_kills(vmstat: &str) -> Option<u64> {
    vmstat.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn reads_the_oom_kill_count() {
        assert_eq!(oom_kills(&fixture("vmstat-here.txt")), Some(0));
        assert_eq!(oom_kills(&fixture("vmstat-oom.txt")), Some(3));
        // Not to be confused with oom_kill_allocating_task or other prefixes.
        assert_eq!(oom_kills("oom_killed 5\n"), None);
        assert_eq!(oom_kills("nr_free_pages 1\n"), None);
        assert_eq!(oom_kills(""), None);
    }
}
