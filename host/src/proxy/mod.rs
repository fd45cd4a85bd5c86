//! The on-demand SSH proxy: who is using a guest (leases), what a new session does with it
//! (start), moving the bytes (relay), and when a guest the proxy started may be stopped
//! again (idle).
//!
//! ## Protocol
//! Three things coordinate proxies with each other, with the idle reaper and with
//! `start`/`stop`/`destroy`: a **lease** per live proxy (`leases/PID`, taken first and
//! held for the whole session), the guest's **lock** (held by `up`, `start`, `stop`,
//! `destroy`, the reaper's stop, and a proxy while it decides), and the hypervisor's
//! **state**, read only while holding the lock.
//!
//! | who | holds | sees | does |
//! |---|---|---|---|
//! | new proxy | lease, then lock | running | relays (lock released first) |
//! | new proxy | lease, then lock | stopped, provisioned | starts it, marks it started by the proxy, relays |
//! | new proxy | lease, waits for lock | a stop under way | waits for it to end, then starts it again |
//! | new proxy | lease, then lock | paused, crashed, never provisioned | refuses, saying what to do |
//! | reaper | lock | a live lease, or started by hand | keeps it running |
//! | reaper | lock | no lease, idle long enough | stops it (holding the lock throughout) |
//! | `stop`/`destroy` | lock | relaying proxies' leases | stops the guest, then ends those proxies |
//!
//! So a proxy never relays to a guest a stop has begun on: the stopper holds the lock until
//! the guest is down, and the proxy reads the state only once it has the lock. A relay whose
//! guest goes away closes ssh's side at once ([`relay`]), so ssh and its ControlMaster end
//! and the next `ssh NAME.almavmm` starts afresh.

pub mod idle;
pub mod lease;
pub mod relay;
pub mod start;

/// The guest name in a host name as ssh passes it to the ProxyCommand (`%h`):
/// `alma.almavmm` → `alma`; a bare name is accepted too.
pub fn guest_of_host(host: &str) -> &str {
    host.strip_suffix(".almavmm").unwrap_or(host)
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_names() {
        assert_eq!(super::guest_of_host("alma.almavmm"), "alma");
        assert_eq!(super::guest_of_host("web.1.almavmm"), "web.1");
        assert_eq!(super::guest_of_host("alma"), "alma");
    }
}
