//! sysctl(8) output and /etc/sysctl.conf.
//!
//! `sysctl NAME` prints `NAME=VALUE`; `sysctl NAME=VALUE` prints `NAME: OLD -> NEW`
//! (sbin/sysctl/sysctl.c, `parse`; revision not pinned). /etc/sysctl.conf holds `NAME=VALUE` lines that /etc/rc hands to
//! sysctl one by one after stripping `#` comments (sysctl.conf(5)); a later line for the same
//! name wins at boot, so there must be only one.

pub const FORWARDING: &str = "net.inet.ip.forwarding";

/// The value `sysctl NAME` printed for `name`.
pub fn value(output: &str, name: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

/// `(old, new)` from what `sysctl NAME=VALUE` printed.
pub fn change(output: &str, name: &str) -> Option<(String, String)> {
    output.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(name)?.strip_prefix(':')?;
        let (old, new) = rest.split_once("->")?;
        Some((old.trim().to_string(), new.trim().to_string()))
    })
}

/// A line of sysctl.conf split into its setting and its comment (with the `#`).
fn split_comment(line: &str) -> (&str, &str) {
    match line.find('#') {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, ""),
    }
}

/// The values active lines give `name`, in file order.
pub fn settings(conf: &str, name: &str) -> Vec<String> {
    conf.lines()
        .filter_map(|l| {
            let (setting, _) = split_comment(l);
            let (k, v) = setting.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
        .collect()
}

/// Does the file set `name` to `value` at boot (one active line, that value)?
pub fn sets(conf: &str, name: &str, value: &str) -> bool {
    settings(conf, name) == [value]
}

/// The file setting `name=value` exactly once: the first active line for `name` rewritten
/// (its comment kept), later ones removed, or the line appended when there is none.
/// Commented-out lines are left alone. `None` stands for a missing file.
pub fn with_setting(conf: Option<&str>, name: &str, value: &str) -> String {
    let conf = conf.unwrap_or("");
    if sets(conf, name, value) {
        return conf.to_string();
    }
    let wanted = format!("{name}={value}");
    let mut out = String::with_capacity(conf.len() + wanted.len() + 1);
    let mut done = false;
    for raw in conf.split_inclusive('\n') {
        let (line, eol) = match raw.strip_suffix('\n') {
            Some(l) => (l, "\n"),
            None => (raw, ""),
        };
        let (setting, comment) = split_comment(line);
        let ours = setting.split_once('=').is_some_and(|(k, _)| k.trim() == name);
        if !ours {
            out.push_str(raw);
        } else if !done {
            done = true;
            let gap = if comment.is_empty() { "" } else { " " };
            out.push_str(&format!("{wanted}{gap}{comment}{eol}"));
        }
    }
    if !done {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&wanted);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sysctl_output() {
        assert_eq!(value("net.inet.ip.forwarding=0\n", FORWARDING).as_deref(), Some("0"));
        assert_eq!(value("net.inet.ip.forwarding=1\n", FORWARDING).as_deref(), Some("1"));
        assert_eq!(value("net.inet6.ip6.forwarding=1\n", FORWARDING), None);
        assert_eq!(change("net.inet.ip.forwarding: 0 -> 1\n", FORWARDING), Some(("0".into(), "1".into())));
        assert_eq!(change("net.inet.ip.forwarding: 1 -> 1\n", FORWARDING), Some(("1".into(), "1".into())));
        assert_eq!(
            change("sysctl: top level name net.inet.ip.forwardin in net.inet.ip.forwardin is invalid\n", FORWARDING),
            None
        );
    }

    #[test]
    fn absent_file_or_line_gets_one_line() {
        assert_eq!(with_setting(None, FORWARDING, "1"), "net.inet.ip.forwarding=1\n");
        assert_eq!(with_setting(Some("ddb.panic=0"), FORWARDING, "1"), "ddb.panic=0\nnet.inet.ip.forwarding=1\n");
    }

    #[test]
    fn already_set_is_left_byte_for_byte() {
        let conf = "# mine\nnet.inet.ip.forwarding=1\t# gateway\nkern.maxfiles=4096";
        assert!(sets(conf, FORWARDING, "1"));
        assert_eq!(with_setting(Some(conf), FORWARDING, "1"), conf);
    }

    #[test]
    fn a_zero_line_is_replaced_not_duplicated() {
        let conf = "kern.maxfiles=4096\nnet.inet.ip.forwarding=0 # off for now\nddb.panic=0\n";
        let out = with_setting(Some(conf), FORWARDING, "1");
        assert_eq!(out, "kern.maxfiles=4096\nnet.inet.ip.forwarding=1 # off for now\nddb.panic=0\n");
        assert_eq!(settings(&out, FORWARDING), ["1"]);
        assert_eq!(with_setting(Some(&out), FORWARDING, "1"), out, "idempotent");
    }

    #[test]
    fn commented_lines_stay_and_do_not_count() {
        // /etc/examples/sysctl.conf ships the setting commented out.
        let conf = "#net.inet.ip.forwarding=1\t# 1=Permit forwarding (routing) of IPv4 packets\n";
        assert!(!sets(conf, FORWARDING, "1"));
        let out = with_setting(Some(conf), FORWARDING, "1");
        assert_eq!(out, format!("{conf}net.inet.ip.forwarding=1\n"));
    }

    #[test]
    fn duplicates_collapse_to_the_first_line() {
        let conf = "net.inet.ip.forwarding=1\nx=1\nnet.inet.ip.forwarding = 0\n";
        assert!(!sets(conf, FORWARDING, "1"));
        assert_eq!(with_setting(Some(conf), FORWARDING, "1"), "net.inet.ip.forwarding=1\nx=1\n");
    }
}
