//! The on-demand SSH proxy: who is using a guest (leases), moving the bytes (relay), and
//! when a guest the proxy started may be stopped again (idle).

pub mod idle;
pub mod lease;
pub mod relay;

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
