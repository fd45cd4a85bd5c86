//! The guest's network, as far as the clock and the host care: what the health report shows
//! of it, whether the gateway (the host) answers, and the link-up triggers for a clock check
//! (`hook` for the network managers' dispatchers, `netlink` for the watcher). Kept apart
//! from the clock code because it changes with the distribution's network stack, not with
//! the hypervisor.
//!
//! This file: the network as the host needs to see it: default route, its interface and
//! address, DNS servers, and whether a name resolves.

pub mod gateway;
pub mod hook;
pub mod netlink;

use std::net::{Ipv4Addr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use almavmm_shared::health::{NetworkInfo, ResolveCheck};
use almavmm_shared::runner::Cmd;

use crate::sys::sysroot::SysRoot;

/// The default route with the lowest metric: (interface, gateway).
///
/// `/proc/net/route` (net/ipv4/fib_trie.c `fib_route_seq_show`): a header line, then one
/// route per line, fields separated by tabs, addresses as the raw network-order u32 printed
/// in hex (so `0202000A` on x86 is 10.0.2.2).
pub fn default_route(proc_net_route: &str) -> Option<(String, Ipv4Addr)> {
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 || f[1] != "00000000" || f[7] != "00000000" {
                return None;
            }
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            Some((metric, f[0].to_string(), Ipv4Addr::from(gw.to_le_bytes())))
        })
        .min_by_key(|(metric, _, _)| *metric)
        .map(|(_, iface, gw)| (iface, gw))
}

/// The first IPv4 address with prefix of `ip -o -4 addr show dev IFACE` (iproute2's
/// one-line form: `2: eth0    inet 10.0.2.15/24 brd … scope global eth0\ …`).
pub fn ipv4_address(ip_o_addr: &str) -> Option<String> {
    ip_o_addr.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        words.find(|w| *w == "inet")?;
        words.next().map(str::to_string)
    })
}

/// `nameserver` lines of resolv.conf(5).
pub fn resolv_conf_servers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The servers of `resolvectl dns` (`Global: A B` and `Link N (eth0): A B`, one scope a line).
pub fn resolvectl_servers(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        // The scope ends at the first ": " (IPv6 addresses contain ':' but not ": ").
        let Some((_, servers)) = line.split_once(": ") else { continue };
        for s in servers.split_whitespace() {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        }
    }
    out
}

/// systemd-resolved's stub: the real servers are behind it.
fn is_stub(servers: &[String]) -> bool {
    !servers.is_empty() && servers.iter().all(|s| s == "127.0.0.53" || s == "127.0.0.54")
}

/// Resolve `name` with the system resolver, giving up after `limit` (a resolver that does
/// not answer must not hold up a health report).
pub fn resolve(name: &str, limit: Duration) -> ResolveCheck {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let owned = name.to_string();
    std::thread::spawn(move || {
        let _ =
            tx.send((owned.as_str(), 0).to_socket_addrs().map(|a| a.map(|s| s.ip().to_string()).collect::<Vec<_>>()));
    });
    let result = rx.recv_timeout(limit);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let name = name.to_string();
    match result {
        Ok(Ok(mut addresses)) => {
            addresses.dedup();
            let ok = !addresses.is_empty();
            let error = (!ok).then(|| "no addresses".to_string());
            ResolveCheck { name, ok, addresses, error, elapsed_ms }
        }
        Ok(Err(e)) => ResolveCheck { name, ok: false, addresses: vec![], error: Some(e.to_string()), elapsed_ms },
        Err(_) => ResolveCheck {
            name,
            ok: false,
            addresses: vec![],
            error: Some(format!("no answer within {}s", limit.as_secs())),
            elapsed_ms,
        },
    }
}

/// Gather the network facts. Nothing here fails the report: what cannot be read is absent.
pub fn gather(root: &SysRoot, resolve_name: &str) -> NetworkInfo {
    let route = root.read_optional("/proc/net/route").ok().flatten().and_then(|t| default_route(&t));
    let interface = route.as_ref().map(|(i, _)| i.clone());
    let address = interface.as_ref().and_then(|iface| {
        Cmd::new("ip")
            .args(["-o", "-4", "addr", "show", "dev", iface])
            .timeout(Duration::from_secs(5))
            .run()
            .ok()
            .and_then(|o| ipv4_address(&o.stdout))
    });
    let mut dns =
        root.read_optional("/etc/resolv.conf").ok().flatten().map(|t| resolv_conf_servers(&t)).unwrap_or_default();
    if is_stub(&dns) {
        if let Ok(out) = Cmd::new("resolvectl").arg("dns").timeout(Duration::from_secs(5)).run() {
            let behind = resolvectl_servers(&out.stdout);
            if !behind.is_empty() {
                dns = behind;
            }
        }
    }
    NetworkInfo {
        interface,
        address,
        gateway: route.as_ref().map(|(_, gw)| crate::net::gateway::probe(*gw, Duration::from_secs(1))),
        default_route: route.map(|(_, gw)| gw.to_string()),
        dns_servers: dns,
        resolve: resolve(resolve_name, Duration::from_secs(5)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/net/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn default_routes() {
        assert_eq!(
            default_route(&fixture("proc-net-route-qemu.txt")),
            Some(("eth0".into(), Ipv4Addr::new(10, 0, 2, 2)))
        );
        assert_eq!(
            default_route(&fixture("proc-net-route-vmd-two-defaults.txt")),
            Some(("eth0".into(), Ipv4Addr::new(100, 64, 1, 2))),
            "lowest metric wins"
        );
        assert_eq!(
            default_route(&fixture("proc-net-route-here.txt")),
            Some(("eth0".into(), Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(default_route("Iface\tDestination\n"), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(ipv4_address(&fixture("ip-o-4-addr-qemu.txt")).as_deref(), Some("127.0.0.1/8"));
        let eth0: String = fixture("ip-o-4-addr-qemu.txt").lines().filter(|l| l.contains("eth0")).collect();
        assert_eq!(ipv4_address(&eth0).as_deref(), Some("10.0.2.15/24"));
        assert_eq!(ipv4_address(""), None);
    }

    #[test]
    fn dns_servers() {
        let stub = resolv_conf_servers(&fixture("resolv.conf-resolved-stub"));
        assert_eq!(stub, ["127.0.0.53"]);
        assert!(is_stub(&stub));
        assert_eq!(resolv_conf_servers(&fixture("resolv.conf-networkmanager")), ["100.64.1.2", "2001:db8::53"]);
        assert_eq!(resolvectl_servers(&fixture("resolvectl-dns.txt")), ["10.0.2.3", "fec0::3"]);
    }

    #[test]
    fn resolution_failure_is_reported_not_fatal() {
        let r = resolve("no-such-host.invalid", Duration::from_secs(5));
        assert!(!r.ok);
        assert!(r.error.is_some());
        let local = resolve("localhost", Duration::from_secs(5));
        assert!(local.ok, "{local:?}");
    }
}
