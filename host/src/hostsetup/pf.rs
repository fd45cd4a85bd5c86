//! pf: NAT and a DNS redirect for the guests, in an anchor of ours hooked into /etc/pf.conf.
//!
//! The rules are the OpenBSD FAQ's for vmd's local interfaces (Virtualization):
//! `match out on egress from PREFIX to any nat-to (egress)` and
//! `pass in proto { udp tcp } from PREFIX to any port domain rdr-to DNS port domain`.
//! They live in /etc/almavmm/pf.conf, loaded into anchor "almavmm" by two lines of
//! /etc/pf.conf (pf.conf(5), ANCHORS): `anchor "almavmm"` evaluates the anchor at that point
//! of the main ruleset, `load anchor "almavmm" from "FILE"` fills it whenever the main
//! ruleset is loaded. The lines go at the end, so our `pass` rules are the last match for
//! guest DNS, as the FAQ's rules are when placed after `pass`.
//!
//! pfctl(8) output read here: `pfctl -s info` starts with `Status: Enabled for …` or
//! `Status: Disabled …`; `pfctl -s rules` prints the main ruleset, an anchor call as
//! `anchor "almavmm" all`; `pfctl -a almavmm -s rules` prints the anchor's rules (nothing
//! when empty). `pfctl -nf FILE` parses FILE, including the files its `load anchor` lines
//! name, without loading anything (sbin/pfctl/pfctl.c, `pfctl_rules`).

use std::net::Ipv4Addr;

use super::conftext;
use crate::hostsetup::vmconf::Ipv4Prefix;

pub const PF_CONF: &str = "/etc/pf.conf";
pub const ANCHOR: &str = "almavmm";
pub const ANCHOR_FILE: &str = "/etc/almavmm/pf.conf";

/// The anchor file for the guests' network.
pub fn render_anchor(prefix: Ipv4Prefix, dns: Option<Ipv4Addr>) -> String {
    let mut out = format!(
        "# NAT and DNS for vmd guests on vm.conf's local prefix {prefix}, written by\n\
         # `almavmm-host host setup` and loaded by /etc/pf.conf into anchor \"{ANCHOR}\".\n\
         # Run that command again after changing the prefix or the host's resolver;\n\
         # edits made here are overwritten.\n\
         match out on egress from {prefix} to any nat-to (egress)\n"
    );
    match dns {
        Some(dns) => out.push_str(&format!(
            "pass in proto {{ udp tcp }} from {prefix} to any port domain rdr-to {dns} port domain\n"
        )),
        None => out.push_str("# No IPv4 nameserver in /etc/resolv.conf: guest DNS is not redirected.\n"),
    }
    out
}

fn is_anchor_call(st: &conftext::Statement) -> bool {
    let w = st.texts();
    w.len() >= 2 && w[0] == "anchor" && w[1] == ANCHOR
}

/// `load anchor almavmm from PATH`: the path.
fn load_path(st: &conftext::Statement) -> Option<&str> {
    let w = st.texts();
    match w[..] {
        ["load", "anchor", name, "from", path] if name == ANCHOR => Some(path),
        _ => None,
    }
}

fn anchor_line() -> String {
    format!("anchor \"{ANCHOR}\"\n")
}

fn load_line(path: &str) -> String {
    format!("load anchor \"{ANCHOR}\" from \"{path}\"\n")
}

/// Does the main ruleset call our anchor and load it from our file?
pub fn is_hooked(pf_conf: &str) -> bool {
    let sts = conftext::statements(pf_conf);
    sts.iter().any(is_anchor_call) && sts.iter().any(|s| load_path(s) == Some(ANCHOR_FILE))
}

/// /etc/pf.conf with the hook present once: unchanged when it already is (in whatever form),
/// a missing line added (at the end, or beside the other one), a `load anchor "almavmm"` from
/// another file pointed at ours, repeats removed.
pub fn with_hook(pf_conf: &str) -> String {
    let sts = conftext::statements(pf_conf);
    let calls: Vec<&conftext::Statement> = sts.iter().filter(|s| is_anchor_call(s)).collect();
    let loads: Vec<&conftext::Statement> = sts.iter().filter(|s| load_path(s).is_some()).collect();
    let mut edits: Vec<Edit> = Vec::new();
    for s in calls.iter().skip(1).chain(loads.iter().skip(1)) {
        edits.push(Edit::Replace { first: s.first, last: s.last, with: String::new() });
    }
    match (calls.first(), loads.first()) {
        (None, None) => {
            return conftext::append(
                &apply_edits(pf_conf, edits),
                &format!(
                    "\n# NAT and DNS for vmd guests, managed by almavmm-host (see {ANCHOR_FILE})\n{}{}",
                    anchor_line(),
                    load_line(ANCHOR_FILE)
                ),
            );
        }
        (Some(call), None) => edits.push(Edit::InsertBefore { at: call.last + 1, with: load_line(ANCHOR_FILE) }),
        (None, Some(load)) => edits.push(Edit::InsertBefore { at: load.first, with: anchor_line() }),
        (Some(_), Some(_)) => {}
    }
    if let Some(load) = loads.first()
        && load_path(load) != Some(ANCHOR_FILE)
    {
        edits.push(Edit::Replace { first: load.first, last: load.last, with: load_line(ANCHOR_FILE) });
    }
    apply_edits(pf_conf, edits)
}

enum Edit {
    Replace { first: usize, last: usize, with: String },
    InsertBefore { at: usize, with: String },
}

/// Apply line edits from the bottom up, so that each one's line numbers are still right; at
/// the same line a replacement goes before an insertion above it.
fn apply_edits(text: &str, mut edits: Vec<Edit>) -> String {
    let key = |e: &Edit| match e {
        Edit::Replace { first, .. } => (*first, 1),
        Edit::InsertBefore { at, .. } => (*at, 0),
    };
    edits.sort_by_key(|e| std::cmp::Reverse(key(e)));
    let mut out = text.to_string();
    for e in edits {
        match e {
            Edit::Replace { first, last, with } => out = conftext::replace_lines(&out, first, last, &with),
            Edit::InsertBefore { at, with } => {
                let lines = conftext::physical_lines(&out);
                let offset: usize = lines[..at.min(lines.len())].iter().map(|l| l.len()).sum();
                let mut fixed = out[..offset].to_string();
                if !fixed.is_empty() && !fixed.ends_with('\n') {
                    fixed.push('\n');
                }
                fixed.push_str(&with);
                fixed.push_str(&out[offset..]);
                out = fixed;
            }
        }
    }
    out
}

/// A copy of the main ruleset that loads our anchor from `staged` instead: what
/// `pfctl -nf` checks before anything is replaced.
pub fn repoint_load(pf_conf: &str, staged: &str) -> String {
    let mut out = pf_conf.to_string();
    let loads: Vec<conftext::Statement> =
        conftext::statements(pf_conf).into_iter().filter(|s| load_path(s).is_some()).collect();
    for s in loads.iter().rev() {
        out = conftext::replace_lines(&out, s.first, s.last, &load_line(staged));
    }
    out
}

/// From `pfctl -s info`.
pub fn enabled(info: &str) -> Option<bool> {
    let status = info.lines().find_map(|l| l.trim().strip_prefix("Status:"))?.trim_start();
    if status.starts_with("Enabled") {
        Some(true)
    } else if status.starts_with("Disabled") {
        Some(false)
    } else {
        None
    }
}

/// From `pfctl -s rules`: does the loaded main ruleset call our anchor?
pub fn rules_call_anchor(rules: &str) -> bool {
    let quoted = format!("anchor \"{ANCHOR}\"");
    rules.lines().map(str::trim).any(|l| l == quoted || l.starts_with(&format!("{quoted} ")))
}

/// From `pfctl -a almavmm -s rules`: does the anchor hold rules?
pub fn anchor_has_rules(rules: &str) -> bool {
    rules.lines().any(|l| !l.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenBSD's default /etc/pf.conf (etc/pf.conf rev 1.55, 6.3 and later).
    const DEFAULT_PF_CONF: &str = include_str!("../../tests/fixtures/openbsd/pf.conf.default");
    const HOOK: &str = "\n# NAT and DNS for vmd guests, managed by almavmm-host (see /etc/almavmm/pf.conf)\n\
                        anchor \"almavmm\"\n\
                        load anchor \"almavmm\" from \"/etc/almavmm/pf.conf\"\n";

    #[test]
    fn anchor_file_has_the_faq_rules_for_the_prefix() {
        let p: Ipv4Prefix = "100.64.0.0/10".parse().unwrap();
        let text = render_anchor(p, Some(Ipv4Addr::new(192, 0, 2, 1)));
        let rules: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rules,
            [
                "match out on egress from 100.64.0.0/10 to any nat-to (egress)",
                "pass in proto { udp tcp } from 100.64.0.0/10 to any port domain rdr-to 192.0.2.1 port domain",
            ]
        );
        let local = render_anchor("10.20.0.0/16".parse().unwrap(), Some(Ipv4Addr::LOCALHOST));
        assert!(local.contains("from 10.20.0.0/16 to any port domain rdr-to 127.0.0.1 port domain\n"), "{local}");
        let none = render_anchor(p, None);
        assert!(!none.contains("rdr-to") && none.contains("nat-to"), "{none}");
    }

    #[test]
    fn hook_is_appended_to_the_default_ruleset() {
        assert!(!is_hooked(DEFAULT_PF_CONF));
        let out = with_hook(DEFAULT_PF_CONF);
        assert_eq!(out, format!("{DEFAULT_PF_CONF}{HOOK}"));
        assert!(is_hooked(&out));
        assert_eq!(with_hook(&out), out, "idempotent");
    }

    #[test]
    fn hook_in_another_form_is_left_alone() {
        let conf = "pass\nanchor almavmm all # ours\nload anchor almavmm from \"/etc/almavmm/pf.conf\"\nblock in\n";
        assert!(is_hooked(conf));
        assert_eq!(with_hook(conf), conf);
        let continued = "anchor \\\n  \"almavmm\"\nload anchor 'almavmm' from '/etc/almavmm/pf.conf'\n";
        assert!(is_hooked(continued));
        assert_eq!(with_hook(continued), continued);
    }

    #[test]
    fn commented_hook_does_not_count() {
        let conf = "pass\n#anchor \"almavmm\"\n#load anchor \"almavmm\" from \"/etc/almavmm/pf.conf\"\n";
        assert!(!is_hooked(conf));
        assert_eq!(with_hook(conf), format!("{conf}{HOOK}"));
    }

    #[test]
    fn half_a_hook_is_completed_in_place() {
        let only_call = "pass\nanchor \"almavmm\"\nblock in\n";
        assert_eq!(
            with_hook(only_call),
            "pass\nanchor \"almavmm\"\nload anchor \"almavmm\" from \"/etc/almavmm/pf.conf\"\nblock in\n"
        );
        let only_load = "pass\nload anchor \"almavmm\" from \"/etc/almavmm/pf.conf\"\n";
        assert_eq!(
            with_hook(only_load),
            "pass\nanchor \"almavmm\"\nload anchor \"almavmm\" from \"/etc/almavmm/pf.conf\"\n"
        );
        let other_file = "anchor \"almavmm\"\nload anchor \"almavmm\" from \"/etc/pf.anchors/almavmm\"\n";
        assert_eq!(
            with_hook(other_file),
            "anchor \"almavmm\"\nload anchor \"almavmm\" from \"/etc/almavmm/pf.conf\"\n"
        );
        let twice =
            "anchor \"almavmm\"\npass\nanchor \"almavmm\"\nload anchor \"almavmm\" from \"/etc/almavmm/pf.conf\"\n";
        assert_eq!(
            with_hook(twice),
            "anchor \"almavmm\"\npass\nload anchor \"almavmm\" from \"/etc/almavmm/pf.conf\"\n"
        );
        for t in [only_call, only_load, other_file, twice] {
            let once = with_hook(t);
            assert!(is_hooked(&once), "{once}");
            assert_eq!(with_hook(&once), once);
        }
    }

    #[test]
    fn other_anchors_are_not_ours() {
        let conf = "anchor \"relayd/*\"\nanchor \"almavmm2\"\nload anchor \"almavmm2\" from \"/etc/x\"\n";
        assert!(!is_hooked(conf));
        assert_eq!(with_hook(conf), format!("{conf}{HOOK}"));
    }

    #[test]
    fn the_check_copy_loads_the_staged_anchor() {
        let hooked = with_hook(DEFAULT_PF_CONF);
        let check = repoint_load(&hooked, "/tmp/x/almavmm.pf");
        assert!(check.contains("\nload anchor \"almavmm\" from \"/tmp/x/almavmm.pf\"\n"), "{check}");
        assert!(!check.contains("from \"/etc/almavmm/pf.conf\""));
        assert!(check.contains("\nanchor \"almavmm\"\n"));
    }

    #[test]
    fn pfctl_output() {
        // pfctl -s info, first lines (sbin/pfctl/pfctl_parser.c, print_status).
        assert_eq!(enabled("Status: Enabled for 0 days 01:02:03              Debug: err\n\nState Table\n"), Some(true));
        assert_eq!(enabled("Status: Disabled for 0 days 00:00:10             Debug: err\n"), Some(false));
        assert_eq!(enabled("pfctl: /dev/pf: Permission denied\n"), None);
        // pfctl -s rules on the default ruleset plus our hook.
        let rules = "block return all\npass all flags S/SA\nblock return in on ! lo0 proto tcp from any to any port 6000:6010\n\
                     block return out log proto tcp all user = 55\nblock return out log proto udp all user = 55\nanchor \"almavmm\" all\n";
        assert!(rules_call_anchor(rules));
        assert!(!rules_call_anchor("anchor \"almavmm2\" all\nanchor \"relayd/*\" all\n"));
        // pfctl -a almavmm -s rules after loading, and of an empty anchor.
        assert!(anchor_has_rules(
            "match out on egress inet from 100.64.0.0/10 to any nat-to (egress) round-robin\n\
             pass in inet proto udp from 100.64.0.0/10 to any port = 53 flags S/SA rdr-to 192.0.2.1 port 53\n"
        ));
        assert!(!anchor_has_rules(""));
    }
}
