//! The host's DNS resolver, which guests reach through pf's redirect.
//!
//! resolv.conf(5): `nameserver ADDRESS` lines, `#` and `;` comments. resolvd(8) writes lines
//! such as `nameserver 192.0.2.1 # resolvd: em0`, and puts `nameserver 127.0.0.1 # resolvd:
//! unwind` first (commenting the learned ones out) while unwind(8) runs (sbin/resolvd/resolvd.c).

use std::net::Ipv4Addr;

/// Where guest DNS queries are redirected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// A resolver elsewhere on the network.
    Remote(Ipv4Addr),
    /// A resolver on the host itself (unwind or unbound on 127.0.0.1). pf can redirect to
    /// loopback (pf.conf(5)'s spamd example does `rdr-to 127.0.0.1`); unwind answers such
    /// queries, unbound only for networks its `access-control` allows.
    Local(Ipv4Addr),
    /// No IPv4 nameserver: guests get no DNS.
    None,
}

impl Resolver {
    pub fn address(self) -> Option<Ipv4Addr> {
        match self {
            Resolver::Remote(a) | Resolver::Local(a) => Some(a),
            Resolver::None => None,
        }
    }
}

/// The first IPv4 nameserver of resolv.conf, as the C library would try it first.
pub fn resolver(text: &str) -> Resolver {
    let first = text.lines().find_map(|l| {
        let l = l.trim_start();
        if l.starts_with(['#', ';']) {
            return None;
        }
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver")).then(|| w.next()?.parse::<Ipv4Addr>().ok())?
    });
    match first {
        Some(a) if a.is_loopback() => Resolver::Local(a),
        Some(a) => Resolver::Remote(a),
        None => Resolver::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ipv4_nameserver_as_resolvd_writes_them() {
        let t = "nameserver 192.0.2.1 # resolvd: em0\nnameserver 192.0.2.2 # resolvd: em0\nlookup file bind\n";
        assert_eq!(resolver(t), Resolver::Remote(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn unwind_on_loopback_is_local() {
        let t = "nameserver 127.0.0.1 # resolvd: unwind\n#nameserver 192.0.2.1 # resolvd: em0\nlookup file bind\n";
        assert_eq!(resolver(t), Resolver::Local(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn ipv6_and_comments_are_skipped() {
        let t = "; old\n# nameserver 198.51.100.9\nnameserver 2001:db8::53\nnameserver 198.51.100.53\n";
        assert_eq!(resolver(t), Resolver::Remote(Ipv4Addr::new(198, 51, 100, 53)));
        assert_eq!(resolver("nameserver ::1\n"), Resolver::None);
        assert_eq!(resolver(""), Resolver::None);
    }
}
