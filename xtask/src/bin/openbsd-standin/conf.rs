//! The vm.conf(5) subset almavmm writes, read the way usr.sbin/vmd/parse.y (revision not pinned) reads
//! it: its lexer (`#` comments to the end of the line, `"…"` strings, `{`/`}`, newlines end
//! a statement, a backslash-newline joins lines) and these rules:
//!
//! ```text
//! grammar : include | "local" "prefix" STRING | vm | (empty line)
//! include : "include" STRING              (a missing file: "failed to include file")
//! vm      : "vm" STRING "{" (vm_opt NL)* "}"
//! vm_opt  : "disable" | "enable" | "owner" owner | "memory" SIZE
//!         | "disk" STRING ["format" ("qcow2"|"raw")] | "cdrom" STRING | "local" "interface"
//! ```
//!
//! Errors are vmd's `yyerror`: `FILE:LINE: MESSAGE`. A keyword vmd knows that this subset
//! does not model is not guessed at: it is reported as not modelled, so the stand-in fails
//! loudly instead of accepting or refusing what it cannot judge.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::scaled::scan_scaled;

/// Longest disk or cdrom path (vmd.h 1.140: `PATH_MAX` buffers, so 1023 bytes).
pub const PATH_MAX: usize = 1024;

/// Keywords of parse.y's `lookup` table that the subset does not model.
const UNMODELLED: &[&str] = &[
    "agentx",
    "allow",
    "boot",
    "bootdevice",
    "context",
    "delay",
    "device",
    "down",
    "group",
    "inet6",
    "instance",
    "interfaces",
    "lladdr",
    "locked",
    "net",
    "parallel",
    "path",
    "rdomain",
    "sev",
    "seves",
    "size",
    "socket",
    "staggered",
    "start",
    "switch",
    "up",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `local prefix` (the last one wins), if any.
    pub prefix: Option<(Ipv4Addr, u8)>,
    pub vms: Vec<ConfVm>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfVm {
    pub name: String,
    pub disabled: bool,
    /// `owner user[:group]` as written; resolved when registered.
    pub owner: Option<String>,
    /// Bytes (vm.conf's default is 512M: vmd.h `VM_DEFAULT_MEMORY`).
    pub memory: u64,
    pub disks: Vec<PathBuf>,
    pub cdrom: Option<PathBuf>,
    pub local_interfaces: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfError {
    /// A `yyerror` of parse.y: `FILE:LINE: MESSAGE`.
    Parse(String),
    /// Valid for vmd, perhaps, but outside the modelled subset.
    NotModelled(String),
}

impl std::fmt::Display for ConfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfError::Parse(m) => f.write_str(m),
            ConfError::NotModelled(m) => write!(f, "openbsd-standin: not modelled, refusing to guess: {m}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Nl,
}

/// parse.y `yylex`, the part our files use.
fn lex(text: &str) -> Vec<(usize, Tok)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\n' => {
                out.push((line, Tok::Nl));
                line += 1;
            }
            '\\' if it.peek() == Some(&'\n') => {
                it.next();
                line += 1;
            }
            c if c.is_whitespace() => {}
            '#' => {
                while it.peek().is_some_and(|&c| c != '\n') {
                    it.next();
                }
            }
            '{' => out.push((line, Tok::Open)),
            '}' => out.push((line, Tok::Close)),
            '"' => {
                let mut s = String::new();
                for c in it.by_ref() {
                    if c == '"' {
                        break;
                    }
                    if c == '\n' {
                        line += 1;
                    }
                    s.push(c);
                }
                out.push((line, Tok::Str(s)));
            }
            c => {
                let mut s = String::from(c);
                while let Some(&n) = it.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | '#' | '"') {
                        break;
                    }
                    s.push(n);
                    it.next();
                }
                out.push((line, Tok::Word(s)));
            }
        }
    }
    out.push((line, Tok::Nl));
    out
}

/// Read `path` and what it includes. A missing top file is no VMs: parse.y
/// `parse_config` returns 0 when `pushfile` fails with ENOENT.
pub fn parse_file(path: &Path) -> Result<Config, ConfError> {
    let mut cfg = Config { prefix: None, vms: Vec::new() };
    match std::fs::read_to_string(path) {
        Ok(text) => parse_into(&mut cfg, &path.display().to_string(), &text, 0)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ConfError::Parse(format!("{}: {e}", path.display()))),
    }
    Ok(cfg)
}

#[cfg(test)]
pub fn parse_str(file: &str, text: &str) -> Result<Config, ConfError> {
    let mut cfg = Config { prefix: None, vms: Vec::new() };
    parse_into(&mut cfg, file, text, 0)?;
    Ok(cfg)
}

fn parse_into(cfg: &mut Config, file: &str, text: &str, depth: usize) -> Result<(), ConfError> {
    let toks = lex(text);
    let err = |line: usize, msg: &str| ConfError::Parse(format!("{file}:{line}: {msg}"));
    let word = |t: &Tok| match t {
        Tok::Word(w) | Tok::Str(w) => Some(w.clone()),
        _ => None,
    };
    let mut i = 0;
    // The words of one statement, up to its newline.
    let statement = |i: &mut usize| -> (usize, Vec<Tok>) {
        let line = toks[*i].0;
        let mut v = Vec::new();
        while toks[*i].1 != Tok::Nl {
            v.push(toks[*i].1.clone());
            *i += 1;
        }
        *i += 1;
        (line, v)
    };
    while i < toks.len() {
        let (line, st) = statement(&mut i);
        let Some(first) = st.first() else { continue };
        let first_word = match first {
            Tok::Word(w) => w.as_str(),
            _ => return Err(err(line, "syntax error")),
        };
        match first_word {
            "include" => {
                let [_, Tok::Str(f)] = st.as_slice() else { return Err(err(line, "syntax error")) };
                if depth > 8 {
                    return Err(ConfError::NotModelled(format!("{file}:{line}: includes nested deeper than 8")));
                }
                match std::fs::read_to_string(f) {
                    Ok(t) => parse_into(cfg, f, &t, depth + 1)?,
                    Err(_) => return Err(err(line, &format!("failed to include file {f}"))),
                }
            }
            "local" => {
                let w: Vec<Option<String>> = st.iter().map(word).collect();
                match w.as_slice() {
                    [_, Some(p), Some(v)] if p == "prefix" => {
                        cfg.prefix =
                            Some(parse_prefix(v).ok_or_else(|| err(line, &format!("invalid local prefix: {v}")))?);
                    }
                    _ => return Err(err(line, "syntax error")),
                }
            }
            "vm" => {
                let name = match st.as_slice() {
                    [_, Tok::Str(n) | Tok::Word(n), Tok::Open] => n.clone(),
                    _ => return Err(err(line, "syntax error")),
                };
                if let Some(bad) = name_error(&name) {
                    return Err(err(line, bad));
                }
                if cfg.vms.iter().any(|v| v.name == name) {
                    return Err(ConfError::NotModelled(format!("{file}:{line}: a second vm \"{name}\"")));
                }
                let mut vm = ConfVm {
                    name,
                    disabled: false,
                    owner: None,
                    memory: 512 << 20,
                    disks: Vec::new(),
                    cdrom: None,
                    local_interfaces: 0,
                };
                loop {
                    if i >= toks.len() {
                        return Err(err(line, "syntax error"));
                    }
                    let (line, st) = statement(&mut i);
                    let w: Vec<Option<String>> = st.iter().map(word).collect();
                    let kw = match st.first() {
                        None => continue,
                        Some(Tok::Close) if st.len() == 1 => break,
                        Some(Tok::Word(k)) => k.as_str(),
                        _ => return Err(err(line, "syntax error")),
                    };
                    match (kw, w.as_slice()) {
                        ("disable", [_]) => vm.disabled = true,
                        ("enable", [_]) => vm.disabled = false,
                        ("owner", [_, Some(o)]) => vm.owner = Some(o.clone()),
                        ("memory", [_, Some(m)]) => {
                            let bytes = scan_scaled(m).ok_or_else(|| {
                                ConfError::NotModelled(format!("{file}:{line}: memory {m:?} (only sizes with a unit)"))
                            })?;
                            vm.memory = bytes / (1 << 20) * (1 << 20);
                        }
                        ("disk", [_, Some(p)]) => vm.disks.push(disk_path(file, line, p)?),
                        ("disk", [_, Some(p), Some(f), Some(fmt)]) if f == "format" => {
                            if fmt != "qcow2" && fmt != "raw" {
                                return Err(err(line, "syntax error"));
                            }
                            vm.disks.push(disk_path(file, line, p)?);
                        }
                        ("cdrom", [_, Some(p)]) => {
                            if p.len() >= PATH_MAX {
                                return Err(err(line, "cdrom name too long"));
                            }
                            vm.cdrom = Some(PathBuf::from(p));
                        }
                        ("local", [_, Some(x)]) if x == "interface" => vm.local_interfaces += 1,
                        (k, _) if UNMODELLED.contains(&k) || k == "interface" => {
                            return Err(ConfError::NotModelled(format!("{file}:{line}: `{k}` in a vm block")));
                        }
                        _ => return Err(err(line, "syntax error")),
                    }
                }
                if vm.disks.len() > 4 {
                    return Err(err(line, "too many disks"));
                }
                cfg.vms.push(vm);
            }
            k if UNMODELLED.contains(&k) => {
                return Err(ConfError::NotModelled(format!("{file}:{line}: top-level `{k}`")));
            }
            _ => return Err(err(line, "syntax error")),
        }
    }
    Ok(())
}

/// vmctl.c/parse.y name rules: letters, digits, `.`, `-`, `_`, not starting with the
/// punctuation, under `VMM_MAX_NAME_LEN` (64).
fn name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() >= 64 {
        return Some("vm name too long");
    }
    if name.starts_with(['.', '-', '_']) || !name.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)) {
        return Some("invalid VM name");
    }
    None
}

/// parse.y `disk` rule: the path goes through realpath(3), so it must exist.
fn disk_path(file: &str, line: usize, p: &str) -> Result<PathBuf, ConfError> {
    if p.len() >= PATH_MAX {
        return Err(ConfError::Parse(format!("{file}:{line}: disk path too long")));
    }
    std::fs::canonicalize(p).map_err(|_| ConfError::Parse(format!("{file}:{line}: failed to parse disks: {p}")))
}

fn parse_prefix(v: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = v.split_once('/')?;
    let len: u8 = l.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((a.parse().ok()?, len))
}

/// vmd's address for a local interface (usr.sbin/vmd/priv.c 1.29 `vm_priv_addr`): the
/// prefix, `vmid << 8`, and `(idx + 1) * 2`; the guest gets the next address (dhcp.c).
pub fn host_address(prefix: (Ipv4Addr, u8), vmid: u32, idx: u32) -> Ipv4Addr {
    let mask = if prefix.1 == 0 { 0 } else { u32::MAX << (32 - prefix.1) };
    Ipv4Addr::from((u32::from(prefix.0) & mask) | (vmid << 8) | ((idx + 1) * 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    #[test]
    fn reads_the_file_almavmm_writes() {
        let d = disk();
        let p = d.path().display();
        let text = format!(
            "# vmd guests of root\n\nvm \"e2e\" {{\n\tdisable\n\towner root\n\tmemory 1536M\n\
             \tdisk \"{p}\" format qcow2\n\tcdrom \"/s/seed.iso\"\n\tlocal interface\n}}\n"
        );
        let cfg = parse_str("/etc/almavmm/vm-root.conf", &text).unwrap();
        assert_eq!(
            cfg.vms,
            [ConfVm {
                name: "e2e".into(),
                disabled: true,
                owner: Some("root".into()),
                memory: 1536 << 20,
                disks: vec![std::fs::canonicalize(d.path()).unwrap()],
                cdrom: Some("/s/seed.iso".into()),
                local_interfaces: 1,
            }]
        );
        assert_eq!(cfg.prefix, None);
    }

    #[test]
    fn includes_and_prefix_at_top_level() {
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("vm-root.conf");
        std::fs::write(&inc, "vm \"a\" {\n\tdisable\n}\n").unwrap();
        let main = format!("local prefix 10.99.0.0/16\ninclude \"{}\"\n", inc.display());
        let cfg = parse_str("/etc/vm.conf", &main).unwrap();
        assert_eq!(cfg.prefix, Some(("10.99.0.0".parse().unwrap(), 16)));
        assert_eq!(cfg.vms[0].name, "a");
        let missing = parse_str("/etc/vm.conf", "include \"/nonexistent/x.conf\"\n").unwrap_err();
        assert_eq!(missing, ConfError::Parse("/etc/vm.conf:1: failed to include file /nonexistent/x.conf".into()));
        assert_eq!(parse_file(&dir.path().join("absent.conf")).unwrap().vms, []);
    }

    #[test]
    fn errors_name_file_and_line_as_yyerror_does() {
        let e = parse_str("/etc/vm.conf", "\nvm \"a\" {\n\tmemroy 1G\n}\n").unwrap_err();
        assert_eq!(e, ConfError::Parse("/etc/vm.conf:3: syntax error".into()));
        let e = parse_str("/etc/vm.conf", "vm \"a\" {\n\tdisk \"/nonexistent/disk.qcow2\"\n}\n").unwrap_err();
        assert_eq!(e, ConfError::Parse("/etc/vm.conf:2: failed to parse disks: /nonexistent/disk.qcow2".into()));
        let long = format!("/{}", "d".repeat(1023));
        let e = parse_str("/etc/vm.conf", &format!("vm \"a\" {{\n\tdisk \"{long}\"\n}}\n")).unwrap_err();
        assert_eq!(e, ConfError::Parse("/etc/vm.conf:2: disk path too long".into()));
        let e = parse_str("/etc/vm.conf", "vm \"-a\" {\n}\n").unwrap_err();
        assert_eq!(e, ConfError::Parse("/etc/vm.conf:1: invalid VM name".into()));
        let e = parse_str("/etc/vm.conf", "vm \"a\" {\n\tdisable\n").unwrap_err();
        assert!(matches!(e, ConfError::Parse(ref m) if m.ends_with("syntax error")), "{e}");
    }

    #[test]
    fn what_is_not_modelled_fails_loudly() {
        let e = parse_str("/etc/vm.conf", "vm \"a\" {\n\tboot device cdrom\n}\n").unwrap_err();
        assert!(matches!(e, ConfError::NotModelled(_)), "{e:?}");
        assert!(e.to_string().contains("refusing to guess"));
        let e = parse_str("/etc/vm.conf", "switch \"uplink\" {\n}\n").unwrap_err();
        assert!(matches!(e, ConfError::NotModelled(_)), "{e:?}");
        let e = parse_str("/etc/vm.conf", "vm \"a\" {\n\tmemory 512\n}\n").unwrap_err();
        assert!(matches!(e, ConfError::NotModelled(_)), "{e:?}");
    }

    #[test]
    fn local_interface_addresses_follow_vm_priv_addr() {
        let p = ("100.64.0.0".parse().unwrap(), 10);
        assert_eq!(host_address(p, 1, 0), "100.64.1.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(host_address(p, 1, 1), "100.64.1.4".parse::<Ipv4Addr>().unwrap());
        assert_eq!(host_address(p, 300, 0), "100.65.44.2".parse::<Ipv4Addr>().unwrap());
    }
}
