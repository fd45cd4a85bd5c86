//! The guest's address, found from the host side of its `local interface`.
//!
//! vmd names each tap(4) it gives a VM with the description `vm<ID>-if<N>-<NAME>`
//! (usr.sbin/vmd/priv.c 1.29, `vm_priv_ifconfig`: `snprintf(..., "vm%u-if%u-%s", vm_vmid, i,
//! vcp_name)` into a 64-byte buffer, so the description is cut at 63 characters), where ID is
//! the id `vmctl status` shows. A `local interface` gets a /31 whose lower address is the
//! host's end and whose upper one vmd's DHCP server hands to the guest.
//!
//! `ifconfig tap` prints every tap interface (sbin/ifconfig/ifconfig.c, `status`; revision not pinned): a line
//! `tapN: flags=...` at column 0, then tab-indented lines among which `description: TEXT`
//! and `inet ADDR netmask 0x...`.

use std::net::Ipv4Addr;

/// vmd's description buffer is IFDESCRSIZE (64) bytes, NUL included.
const MAX_DESCRIPTION: usize = 63;

/// One interface of `ifconfig` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    /// UP among its flags (`flags=8843<UP,BROADCAST,...>`).
    pub up: bool,
    pub description: Option<String>,
    pub inet: Vec<Ipv4Addr>,
}

/// Parse `ifconfig` output into interfaces.
pub fn parse(text: &str) -> Vec<Iface> {
    let mut out: Vec<Iface> = Vec::new();
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) {
            if let Some((name, rest)) = line.split_once(':')
                && let Some(flags) = rest.trim_start().strip_prefix("flags=")
            {
                let names = flags.split_once('<').and_then(|(_, f)| f.split_once('>')).map(|(f, _)| f).unwrap_or("");
                let up = names.split(',').any(|f| f == "UP");
                out.push(Iface { name: name.to_string(), up, description: None, inet: Vec::new() });
            }
            continue;
        }
        let Some(current) = out.last_mut() else { continue };
        let line = line.trim();
        if let Some(d) = line.strip_prefix("description: ") {
            current.description = Some(d.to_string());
        } else if let Some(rest) = line.strip_prefix("inet ")
            && let Some(addr) = rest.split_whitespace().next().and_then(|a| a.parse().ok())
        {
            current.inet.push(addr);
        }
    }
    out
}

/// The description vmd gives interface `nic` of VM `id` named `name`.
pub fn tap_description(id: u32, nic: u32, name: &str) -> String {
    let mut d = format!("vm{id}-if{nic}-{name}");
    // Names are ASCII (VmName), so a byte cut is a character cut.
    d.truncate(MAX_DESCRIPTION);
    d
}

/// The host side of the guest's first interface: the tap described exactly as vmd
/// describes it.
pub fn guest_tap<'a>(ifaces: &'a [Iface], id: u32, name: &str) -> Option<&'a Iface> {
    let want = tap_description(id, 0, name);
    ifaces.iter().find(|i| i.description.as_deref() == Some(want.as_str()))
}

/// The guest's address on its first interface: the host end of its tap plus one.
pub fn guest_address(ifaces: &[Iface], id: u32, name: &str) -> Option<Ipv4Addr> {
    let host = *guest_tap(ifaces, id, name)?.inet.first()?;
    Some(Ipv4Addr::from(u32::from(host).checked_add(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five taps in `ifconfig tap` format (ifconfig.c, as in FACTS.md): alma (id 1), mydb
    /// (id 3), a 62-character name whose descriptions vmd cut at 63 characters on two
    /// interfaces, and an unused tap without description or address.
    const SAMPLE: &str = include_str!("../../../tests/fixtures/openbsd/ifconfig-tap.txt");
    const LONG_NAME: &str = "a-very-long-guest-name-that-fills-all-of-the-sixty-three-chars";

    #[test]
    fn parses_every_tap() {
        let ifs = parse(SAMPLE);
        let names: Vec<_> = ifs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["tap0", "tap1", "tap2", "tap3", "tap4"]);
        assert_eq!(ifs[0].description.as_deref(), Some("vm1-if0-alma"));
        assert_eq!(ifs[0].inet, [Ipv4Addr::new(100, 64, 1, 2)]);
        assert_eq!(ifs[3], Iface { name: "tap3".into(), up: false, description: None, inet: vec![] });
        assert!(ifs[0].up);
        // The inet6 line is not an IPv4 address.
        assert_eq!(ifs[4].inet, [Ipv4Addr::new(100, 64, 4, 4)]);
    }

    #[test]
    fn guest_is_the_host_tap_address_plus_one() {
        let ifs = parse(SAMPLE);
        assert_eq!(guest_address(&ifs, 1, "alma"), Some(Ipv4Addr::new(100, 64, 1, 3)));
        assert_eq!(guest_address(&ifs, 3, "mydb"), Some(Ipv4Addr::new(100, 64, 3, 3)));
    }

    #[test]
    fn a_name_never_matches_as_a_suffix() {
        let ifs = parse(SAMPLE);
        // `vm3-if0-mydb` ends with `db`, and even the id is right: still not db's tap.
        assert_eq!(guest_address(&ifs, 3, "db"), None);
        assert_eq!(guest_address(&ifs, 3, "b"), None);
        // The right name with another id is another VM's tap.
        assert_eq!(guest_address(&ifs, 2, "mydb"), None);
    }

    #[test]
    fn long_names_match_the_truncated_description_of_interface_zero_only() {
        assert_eq!(tap_description(4, 0, LONG_NAME), "vm4-if0-a-very-long-guest-name-that-fills-all-of-the-sixty-thre");
        assert_eq!(tap_description(4, 0, LONG_NAME).len(), 63);
        let ifs = parse(SAMPLE);
        assert_eq!(guest_address(&ifs, 4, LONG_NAME), Some(Ipv4Addr::new(100, 64, 4, 3)));
    }

    #[test]
    fn no_tap_yet_means_no_address() {
        assert_eq!(guest_address(&parse(""), 1, "alma"), None);
        let no_inet =
            "tap0: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n\tdescription: vm1-if0-alma\n";
        assert_eq!(guest_address(&parse(no_inet), 1, "alma"), None);
    }
}
