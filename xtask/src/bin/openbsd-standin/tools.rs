//! The other programs host setup and the backend run: rcctl, ifconfig, sysctl, pfctl,
//! fw_update, doas and vmd itself.

use std::path::Path;
use std::time::Duration;

use almavmm_shared::runner::Cmd;

use crate::Out;
use crate::state::State;
use crate::vmd;

/// rcctl(8), for vmd only: rcctl.8's EXIT STATUS and rc.subr(8)'s `DAEMON(ok)`, as
/// shared/FACTS.md records them (host/src/hostsetup/rcctl.rs reads the same).
pub fn rcctl(args: &[&str], st: &mut State) -> Out {
    match args {
        // `get DAEMON status`: nothing printed; exit 0 enabled, 1 not.
        ["get", "vmd", "status"] => Out::code(if st.vmd_enabled { 0 } else { 1 }),
        ["enable", "vmd"] => {
            st.vmd_enabled = true;
            Out::ok()
        }
        ["check", "vmd"] => {
            if st.vmd_running {
                Out::stdout("vmd(ok)\n", 0)
            } else {
                Out::stdout("vmd(failed)\n", 1)
            }
        }
        // Already running: nothing, exit 0 (rc.subr's rc_start after rc_check).
        ["start", "vmd"] if st.vmd_running => Out::ok(),
        ["start", "vmd"] => match vmd::start_daemon(st) {
            Ok(()) => Out::stdout("vmd(ok)\n", 0),
            Err(e) => Out::stdout("vmd(failed)\n", 1).log(&format!("{e:#}")),
        },
        _ => Out::not_modelled(&format!("rcctl {}", args.join(" "))),
    }
}

/// vmd(8) (usr.sbin/vmd/vmd.c `main` and `vmd_configure`, revision not pinned): `-n`
/// parses the configuration (`-f FILE`, default /etc/vm.conf), prints `configuration OK` on stderr and exits 0, or prints
/// parse.y's errors and exits 1. Without `-n` it starts the daemon.
pub fn vmd_main(args: &[&str], st: &mut State) -> Out {
    let mut noaction = false;
    let mut file = vmd::VM_CONF.to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "-n" => noaction = true,
            "-f" => match it.next() {
                Some(f) => file = f.to_string(),
                None => return Out::err("usage: vmd [-dnv] [-D macro=value] [-f file]\n", 1),
            },
            other => return Out::not_modelled(&format!("vmd {other}")),
        }
    }
    if noaction {
        return match crate::conf::parse_file(Path::new(&file)) {
            Ok(_) => Out::err("configuration OK\n", 0),
            Err(e @ crate::conf::ConfError::NotModelled(_)) => Out::err(&format!("{e}\n"), crate::NOT_MODELLED),
            Err(e) => Out::err(&format!("{e}\n"), 1),
        };
    }
    if file != vmd::VM_CONF {
        return Out::not_modelled("the vmd daemon with -f");
    }
    rcctl(&["start", "vmd"], st)
}

/// sysctl(8) (sbin/sysctl/sysctl.c, revision not pinned; formats as in shared/FACTS.md):
/// `NAME` prints `NAME=VALUE`, `NAME=VALUE` prints `NAME: OLD -> NEW`, `-n NAME` the value alone.
pub fn sysctl(args: &[&str], st: &mut State) -> Out {
    const FORWARDING: &str = "net.inet.ip.forwarding";
    // The release vmd.h 1.140 (PATH_MAX disk paths) belongs to.
    const OSRELEASE: &str = "7.8";
    match args {
        ["-n", "kern.osrelease"] => Out::stdout(&format!("{OSRELEASE}\n"), 0),
        ["kern.osrelease"] => Out::stdout(&format!("kern.osrelease={OSRELEASE}\n"), 0),
        [n] if *n == FORWARDING => Out::stdout(&format!("{FORWARDING}={}\n", st.forwarding), 0),
        ["-n", n] if *n == FORWARDING => Out::stdout(&format!("{}\n", st.forwarding), 0),
        [set] if set.split_once('=').is_some_and(|(k, v)| k == FORWARDING && (v == "0" || v == "1")) => {
            let new = set.split_once('=').expect("checked").1.to_string();
            let old = std::mem::replace(&mut st.forwarding, new.clone());
            Out::stdout(&format!("{FORWARDING}: {old} -> {new}\n"), 0)
        }
        _ => Out::not_modelled(&format!("sysctl {}", args.join(" "))),
    }
}

/// pfctl(8) (sbin/pfctl/pfctl.c, revision not pinned), the calls host setup makes. pf's
/// grammar is not modelled: `-n -f` only checks that the file can be read, and a loaded ruleset is kept as
/// its rule lines (comments, blank lines, macros and `set`/`load` lines left out), which is
/// what `-s rules` shows; almavmm only looks for `anchor "NAME"` and for rules in its anchor.
pub fn pfctl(args: &[&str], st: &mut State) -> Out {
    let rule_lines = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty() && !l.contains('=') && !l.starts_with("set ") && !l.starts_with("load "))
            .collect()
    };
    match args {
        ["-nf", f] | ["-n", "-f", f] => match std::fs::read_to_string(f) {
            Ok(_) => Out::ok(),
            Err(e) => Out::err(&format!("pfctl: {f}: {e}\n"), 1),
        },
        ["-f", f] => {
            let Ok(text) = std::fs::read_to_string(f) else {
                return Out::err(&format!("pfctl: {f}: No such file or directory\n"), 1);
            };
            st.pf_main = rule_lines(&text);
            // `load anchor "NAME" from "FILE"` loads the anchor with the main ruleset.
            for l in text.lines().map(str::trim) {
                let w: Vec<&str> = l.split_whitespace().collect();
                if let ["load", "anchor", name, "from", file] = w.as_slice() {
                    let (name, file) = (name.trim_matches('"'), file.trim_matches('"'));
                    match std::fs::read_to_string(file) {
                        Ok(t) => {
                            st.pf_anchors.insert(name.to_string(), rule_lines(&t));
                        }
                        Err(e) => return Out::err(&format!("pfctl: {file}: {e}\n"), 1),
                    }
                }
            }
            Out::ok()
        }
        ["-a", a, "-f", f] => match std::fs::read_to_string(f) {
            Ok(t) => {
                st.pf_anchors.insert(a.to_string(), rule_lines(&t));
                Out::ok()
            }
            Err(e) => Out::err(&format!("pfctl: {f}: {e}\n"), 1),
        },
        ["-e"] if st.pf_enabled => Out::err("pfctl: pf already enabled\n", 1),
        ["-e"] => {
            st.pf_enabled = true;
            Out::err("pf enabled\n", 0)
        }
        // pfctl_parser.c `print_status`: the first line starts `Status: Enabled` or `Disabled`.
        ["-s", "info"] => Out::stdout(
            &format!(
                "Status: {} for 0 days 00:00:00              Debug: err\n",
                if st.pf_enabled { "Enabled" } else { "Disabled" }
            ),
            0,
        ),
        ["-s", "rules"] => Out::stdout(&st.pf_main.iter().map(|l| format!("{l}\n")).collect::<String>(), 0),
        ["-a", a, "-s", "rules"] => match st.pf_anchors.get(*a) {
            Some(r) => Out::stdout(&r.iter().map(|l| format!("{l}\n")).collect::<String>(), 0),
            None => Out::err(&format!("pfctl: DIOCGETRULES: Invalid argument (anchor {a})\n"), 1),
        },
        _ => Out::not_modelled(&format!("pfctl {}", args.join(" "))),
    }
}

/// fw_update(8) `vmm`: installs vmd's BIOS, /etc/firmware/vmm-bios (here SeaBIOS from
/// Debian's seabios package, which is what vmm-bios is built from).
pub fn fw_update(args: &[&str]) -> Out {
    if args != ["vmm"] {
        return Out::not_modelled(&format!("fw_update {}", args.join(" ")));
    }
    let src = ["/usr/share/seabios/bios-256k.bin", "/usr/share/seabios/bios.bin", "/usr/share/qemu/bios-256k.bin"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    let Some(src) = src else { return Out::err("fw_update: no SeaBIOS image on this machine to stand in\n", 1) };
    let dest = Path::new(vmd::FIRMWARE);
    let done = std::fs::create_dir_all(dest.parent().expect("has a parent")).and_then(|()| std::fs::copy(src, dest));
    match done {
        Ok(_) => Out::ok(),
        Err(e) => Out::err(&format!("fw_update: {e}\n"), 1),
    }
}

/// ifconfig(8) for taps (sbin/ifconfig/ifconfig.c `status`, revision not pinned; layout as
/// in shared/FACTS.md), from the kernel's own view of the rig's taps: flags, lladdr, the description vmd set (kept as the link's
/// alias), index, groups, status and the IPv4 address with a hex netmask.
pub fn ifconfig(args: &[&str]) -> Out {
    let names: Vec<String> = match args {
        ["tap"] => {
            let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
                .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            v.retain(|n| n.starts_with("tap") && n[3..].chars().all(|c| c.is_ascii_digit()) && n.len() > 3);
            v.sort_by_key(|n| n[3..].parse::<u32>().unwrap_or(u32::MAX));
            v
        }
        [one] if one.starts_with("tap") => vec![one.to_string()],
        _ => return Out::not_modelled(&format!("ifconfig {}", args.join(" "))),
    };
    if names.is_empty() || names.iter().any(|n| !Path::new("/sys/class/net").join(n).exists()) {
        return Out::err(&format!("ifconfig: {}: no such interface\n", args[0]), 1);
    }
    let mut out = String::new();
    for n in &names {
        let sys =
            |f: &str| std::fs::read_to_string(format!("/sys/class/net/{n}/{f}")).unwrap_or_default().trim().to_string();
        let flags = u32::from_str_radix(sys("flags").trim_start_matches("0x"), 16).unwrap_or(0);
        let up = flags & 1 != 0;
        let running = sys("operstate") == "up" || (up && sys("carrier") == "1");
        let inet = Cmd::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", n])
            .timeout(Duration::from_secs(5))
            .output()
            .map(|o| parse_ip_addr(&o.stdout))
            .unwrap_or_default();
        out += &iface_block(n, up, running, &sys("address"), &sys("ifalias"), &sys("ifindex"), &inet);
    }
    Out::stdout(&out, 0)
}

/// Addresses and prefix lengths from `ip -4 -o addr show`.
pub fn parse_ip_addr(text: &str) -> Vec<(String, u8)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet")?;
            let (a, len) = w.next()?.split_once('/')?;
            Some((a.to_string(), len.parse().ok()?))
        })
        .collect()
}

/// One interface as ifconfig.c prints it.
pub fn iface_block(
    name: &str,
    up: bool,
    running: bool,
    lladdr: &str,
    description: &str,
    index: &str,
    inet: &[(String, u8)],
) -> String {
    // IFF_UP 0x1, IFF_BROADCAST 0x2, IFF_RUNNING 0x40, IFF_SIMPLEX 0x800, IFF_MULTICAST 0x8000.
    let mut bits = 0x2 | 0x800 | 0x8000;
    let mut words = vec![];
    if up {
        bits |= 0x1;
        words.push("UP");
    }
    words.push("BROADCAST");
    if running {
        bits |= 0x40;
        words.push("RUNNING");
    }
    words.extend(["SIMPLEX", "MULTICAST"]);
    let mut s = format!("{name}: flags={bits:x}<{}> mtu 1500\n\tlladdr {lladdr}\n", words.join(","));
    if !description.is_empty() {
        s += &format!("\tdescription: {description}\n");
    }
    s += &format!("\tindex {index} priority 0 llprio 3\n\tgroups: tap\n");
    s += &format!("\tstatus: {}\n", if running { "active" } else { "no carrier" });
    for (a, len) in inet {
        let mask = if *len == 0 { 0 } else { u32::MAX << (32 - u32::from(*len)) };
        s += &format!("\tinet {a} netmask 0x{mask:08x}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcctl_exit_codes_and_words() {
        let mut st = State::default();
        assert_eq!(rcctl(&["get", "vmd", "status"], &mut st).code, 1);
        assert_eq!(rcctl(&["enable", "vmd"], &mut st).code, 0);
        assert_eq!(rcctl(&["get", "vmd", "status"], &mut st).code, 0);
        let o = rcctl(&["check", "vmd"], &mut st);
        assert_eq!((o.stdout.as_str(), o.code), ("vmd(failed)\n", 1));
        st.vmd_running = true;
        let o = rcctl(&["check", "vmd"], &mut st);
        assert_eq!((o.stdout.as_str(), o.code), ("vmd(ok)\n", 0));
        let o = rcctl(&["start", "vmd"], &mut st);
        assert_eq!((o.stdout.as_str(), o.code), ("", 0));
        assert_eq!(rcctl(&["start", "httpd"], &mut st).code, crate::NOT_MODELLED);
    }

    #[test]
    fn sysctl_prints_like_sysctl_c_and_the_products_parsers_agree() {
        use almavmm_host::hostsetup::sysctl as p;
        let mut st = State { forwarding: "0".into(), ..State::default() };
        let o = sysctl(&[p::FORWARDING], &mut st);
        assert_eq!(p::value(&o.stdout, p::FORWARDING).as_deref(), Some("0"));
        let o = sysctl(&["net.inet.ip.forwarding=1"], &mut st);
        assert_eq!(o.stdout, "net.inet.ip.forwarding: 0 -> 1\n");
        assert_eq!(p::change(&o.stdout, p::FORWARDING), Some(("0".into(), "1".into())));
        let o = sysctl(&["-n", "kern.osrelease"], &mut st);
        assert_eq!(almavmm_host::hostsetup::release::parse(&o.stdout).map(|r| r.to_string()), Some("7.8".into()));
        assert_eq!(sysctl(&["kern.securelevel"], &mut st).code, crate::NOT_MODELLED);
    }

    #[test]
    fn pf_status_rules_and_anchors() {
        use almavmm_host::hostsetup::pf as p;
        let dir = tempfile::tempdir().unwrap();
        let anchor = dir.path().join("anchor");
        std::fs::write(&anchor, "match out on egress from 100.64.0.0/10 to any nat-to (egress)\n").unwrap();
        let main = dir.path().join("pf.conf");
        std::fs::write(
            &main,
            format!(
                "# comment\nset skip on lo\nblock return\npass\nanchor \"almavmm\"\nload anchor \"almavmm\" from \"{}\"\n",
                anchor.display()
            ),
        )
        .unwrap();
        let mut st = State::default();
        assert_eq!(p::enabled(&pfctl(&["-s", "info"], &mut st).stdout), Some(false));
        assert_eq!(pfctl(&["-e"], &mut st).code, 0);
        assert_eq!(pfctl(&["-e"], &mut st).stderr, "pfctl: pf already enabled\n");
        assert_eq!(p::enabled(&pfctl(&["-s", "info"], &mut st).stdout), Some(true));
        assert_eq!(pfctl(&["-a", "almavmm", "-s", "rules"], &mut st).code, 1);
        assert_eq!(pfctl(&["-f", &main.display().to_string()], &mut st).code, 0);
        assert!(p::rules_call_anchor(&pfctl(&["-s", "rules"], &mut st).stdout));
        assert!(p::anchor_has_rules(&pfctl(&["-a", "almavmm", "-s", "rules"], &mut st).stdout));
        assert_eq!(pfctl(&["-nf", "/nonexistent"], &mut st).code, 1);
    }

    #[test]
    fn vmd_n_checks_the_file_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vm.conf");
        std::fs::write(&f, "vm \"a\" {\n\tfrob\n}\n").unwrap();
        let mut st = State::default();
        let o = vmd_main(&["-n", "-f", &f.display().to_string()], &mut st);
        assert_eq!((o.stderr, o.code), (format!("{}:2: syntax error\n", f.display()), 1));
        std::fs::write(&f, "vm \"a\" {\n\tdisable\n}\n").unwrap();
        let o = vmd_main(&["-n", "-f", &f.display().to_string()], &mut st);
        assert_eq!((o.stderr.as_str(), o.code), ("configuration OK\n", 0));
    }

    #[test]
    fn ifconfig_blocks_read_back_through_the_products_parser() {
        let block = iface_block(
            "tap0",
            true,
            true,
            "fe:e1:ba:d8:bc:ac",
            "vm1-if0-alma",
            "37",
            &parse_ip_addr("5: tap0    inet 100.64.1.2/31 scope global tap0\\       valid_lft forever\n"),
        );
        assert_eq!(
            block,
            "tap0: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> mtu 1500\n\tlladdr fe:e1:ba:d8:bc:ac\n\
             \tdescription: vm1-if0-alma\n\tindex 37 priority 0 llprio 3\n\tgroups: tap\n\tstatus: active\n\
             \tinet 100.64.1.2 netmask 0xfffffffe\n"
        );
        let ifaces = almavmm_host::backend::vmd::ifconfig::parse(&block);
        assert_eq!(
            almavmm_host::backend::vmd::ifconfig::guest_address(&ifaces, 1, "alma"),
            Some("100.64.1.3".parse().unwrap())
        );
        let down = iface_block("tap1", false, false, "fe:e1:ba:d8:00:01", "", "38", &[]);
        assert!(down.starts_with("tap1: flags=8802<BROADCAST,SIMPLEX,MULTICAST> mtu 1500\n"), "{down}");
    }
}
