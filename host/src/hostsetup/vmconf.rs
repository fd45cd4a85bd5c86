//! vm.conf(5): the file of guest definitions we own, and the two things we read from or add
//! to `/etc/vm.conf` (its `local prefix`, and the `include` line for our file).
//!
//! Our file is `/etc/almavmm/vm-USER.conf`, one per user whose guests it defines, so that two
//! people on one host never rewrite each other's definitions. It is owned by root (vmd opens
//! the disks it names as root, so a user-writable file would let anyone read any file) and
//! regenerated from the user's `vm.yaml` files, never edited in place.
//!
//! Grammar facts used here (usr.sbin/vmd/parse.y, vm.conf(5)): options in a `vm` block go one
//! per line; `disk` paths go through realpath(3) when the file is parsed, so a block may only
//! name a disk that exists; disk and cdrom paths are limited to what the running release
//! takes (`PATH_MAX` from OpenBSD 7.8, 128 with the NUL before: see [`super::release`]);
//! `include "file"` is a
//! top-level statement and a missing included file is a parse error; `local prefix A/N` sets
//! the network for local interfaces (default 100.64.0.0/10).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::hostsetup::conftext;
use crate::hostsetup::release::{self, PathLimit};
use crate::state::home::Home;
use crate::state::name::VmName;
use crate::state::size::ByteSize;
use crate::state::spec::BackendKind;
use crate::state::vm::Vm;

/// The folder of files almavmm-host writes under /etc.
pub const OUR_DIR: &str = "/etc/almavmm";
/// vmd's configuration file.
pub const MAIN: &str = "/etc/vm.conf";
/// vmd's default for `local prefix`.
pub const DEFAULT_PREFIX: Ipv4Prefix = Ipv4Prefix { addr: Ipv4Addr::new(100, 64, 0, 0), len: 10 };

/// The file defining `owner`'s guests.
pub fn our_file(owner: &str) -> PathBuf {
    Path::new(OUR_DIR).join(format!("vm-{owner}.conf"))
}

/// What a guest's vm.conf block says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestEntry {
    pub name: VmName,
    pub memory: ByteSize,
    pub disk: PathBuf,
    pub cdrom: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmConfError {
    #[error("{what} path {path:?} cannot go into vm.conf: {why}")]
    BadPath { what: &'static str, path: PathBuf, why: String },
    #[error("user name {0:?} cannot go into vm.conf")]
    BadOwner(String),
    #[error(
        "/etc/vm.conf line {line}: `local prefix` is given as {value:?}, which almavmm cannot read ({why}); write the prefix literally, as in `local prefix 100.64.0.0/10`"
    )]
    BadPrefix { line: usize, value: String, why: String },
}

/// An IPv4 network `A.B.C.D/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, n) = s.split_once('/').ok_or("no /length")?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let len: u8 =
            n.parse().ok().filter(|l| *l <= 32).ok_or(format!("{n:?} is not a prefix length from 0 to 32"))?;
        Ok(Ipv4Prefix { addr, len })
    }
}

/// Our file for `owner`'s guests, blocks in name order.
/// Paths longer than `limit` (the running release's) are refused.
pub fn render(owner: &str, guests: &[GuestEntry], limit: PathLimit) -> Result<String, VmConfError> {
    let owner_word = if !owner.is_empty()
        && owner.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && owner.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        owner.to_string()
    } else {
        conftext::quote(owner).ok_or_else(|| VmConfError::BadOwner(owner.to_string()))?
    };
    let mut sorted: Vec<&GuestEntry> = guests.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = format!(
        "# vmd guests of {owner}, written by almavmm-host from their vm.yaml files (see\n\
         # `almavmm-host status`). It is rewritten whenever a guest is defined or destroyed:\n\
         # change a guest with almavmm-host or its vm.yaml, not here.\n"
    );
    for g in sorted {
        let disk = path_word("disk", &g.disk, limit)?;
        out.push_str(&format!("\nvm \"{}\" {{\n\tdisable\n\towner {owner_word}\n\tmemory {}\n", g.name, g.memory));
        out.push_str(&format!("\tdisk {disk} format qcow2\n"));
        if let Some(cdrom) = &g.cdrom {
            out.push_str(&format!("\tcdrom {}\n", path_word("cdrom", cdrom, limit)?));
        }
        out.push_str("\tlocal interface\n}\n");
    }
    Ok(out)
}

fn path_word(what: &'static str, p: &Path, limit: PathLimit) -> Result<String, VmConfError> {
    let bad = |why: &str| VmConfError::BadPath { what, path: p.to_owned(), why: why.to_string() };
    let s = p.to_str().ok_or_else(|| bad("it is not UTF-8"))?;
    if !p.is_absolute() {
        return Err(bad("it is not absolute"));
    }
    if s.len() > limit.max {
        return Err(bad(&format!(
            "vmd takes at most {} bytes ({}) and it has {}; set ALMAVMM_HOME to a shorter folder",
            limit.max,
            limit.source,
            s.len()
        )));
    }
    conftext::quote(s).ok_or_else(|| bad("it contains a quote, backslash or line break"))
}

/// The `local prefix` of /etc/vm.conf (the last one wins, as in vmd), or vmd's default.
/// Prefixes set in files it includes are not followed.
pub fn local_prefix(main: &str) -> Result<Ipv4Prefix, VmConfError> {
    let mut prefix = DEFAULT_PREFIX;
    for st in conftext::statements(main) {
        let w = st.texts();
        if w.len() >= 3 && w[0] == "local" && w[1] == "prefix" {
            let bad = |why: String| VmConfError::BadPrefix { line: st.first + 1, value: w[2].to_string(), why };
            if w[2].starts_with('$') && !st.words[2].quoted {
                return Err(bad("it is a macro".into()));
            }
            prefix = w[2].parse().map_err(bad)?;
        }
    }
    Ok(prefix)
}

/// Statements `include "PATH"` for exactly this path.
fn includes_of(main: &str, path: &Path) -> Vec<conftext::Statement> {
    let want = path.to_string_lossy();
    conftext::statements(main)
        .into_iter()
        .filter(|st| {
            let w = st.texts();
            w.len() == 2 && w[0] == "include" && w[1] == want
        })
        .collect()
}

/// How many times /etc/vm.conf includes `path`.
pub fn include_count(main: &str, path: &Path) -> usize {
    includes_of(main, path).len()
}

/// /etc/vm.conf including `path` exactly once: unchanged when it already does, the line
/// appended when it does not (a new file when there is none), later repeats removed.
pub fn with_include(main: Option<&str>, path: &Path, owner: &str) -> String {
    let line = format!("include \"{}\"\n", path.display());
    let Some(main) = main else {
        return format!(
            "# vmd(8) configuration, see vm.conf(5).\n\n# Guests of {owner}, managed by almavmm-host.\n{line}"
        );
    };
    let found = includes_of(main, path);
    if found.is_empty() {
        return conftext::append(main, &format!("\n# Guests of {owner}, managed by almavmm-host.\n{line}"));
    }
    let mut out = main.to_string();
    for st in found.iter().skip(1).rev() {
        out = conftext::replace_lines(&out, st.first, st.last, "");
    }
    out
}

/// A copy of /etc/vm.conf that includes `to` where it included `path`: what `vmd -n` checks
/// before the staged file replaces ours.
pub fn repoint_include(main: &str, path: &Path, to: &Path) -> String {
    let mut out = main.to_string();
    for st in includes_of(main, path).iter().rev() {
        out = conftext::replace_lines(&out, st.first, st.last, &format!("include \"{}\"\n", to.display()));
    }
    out
}

/// Our vm.conf file for `owner`: every vmd guest in `home` whose disk exists (vmd resolves
/// disk paths when it parses the file, so a missing disk would break the whole config),
/// except `except`.
pub fn wanted_vm_conf(home: &Home, owner: &str, except: Option<&VmName>) -> std::result::Result<String, String> {
    let mut entries = Vec::new();
    for vm in Vm::load_all(home) {
        let vm = vm.map_err(|e| format!("{e:#}; fix or destroy that guest (vm.conf was left as it is)"))?;
        if vm.spec.backend != BackendKind::Vmd || Some(&vm.name) == except || !vm.disk().is_file() {
            continue;
        }
        entries.push(GuestEntry {
            name: vm.name.clone(),
            memory: vm.spec.memory,
            disk: vm.disk(),
            cdrom: Some(vm.seed()).filter(|s| s.is_file()),
        });
    }
    render(owner, &entries, release::vmd_path_limit(release::running())).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: PathLimit = PathLimit { max: 127, source: "VMM_MAX_PATH_DISK, OpenBSD before 7.8" };
    const NEW: PathLimit = PathLimit { max: 1023, source: "PATH_MAX, vmd.h of OpenBSD 7.8 and later" };

    fn entry(name: &str, cdrom: bool) -> GuestEntry {
        let dir = PathBuf::from(format!("/home/alice/.local/share/almavmm/vms/{name}"));
        GuestEntry {
            name: name.parse().unwrap(),
            memory: ByteSize::gib(2),
            disk: dir.join("disk.qcow2"),
            cdrom: cdrom.then(|| dir.join("seed.iso")),
        }
    }

    #[test]
    fn renders_one_disabled_owned_block_per_guest_in_name_order() {
        let text = render("alice", &[entry("web", true), entry("db", false)], OLD).unwrap();
        assert_eq!(
            text,
            "# vmd guests of alice, written by almavmm-host from their vm.yaml files (see\n\
             # `almavmm-host status`). It is rewritten whenever a guest is defined or destroyed:\n\
             # change a guest with almavmm-host or its vm.yaml, not here.\n\
             \n\
             vm \"db\" {\n\
             \tdisable\n\
             \towner alice\n\
             \tmemory 2G\n\
             \tdisk \"/home/alice/.local/share/almavmm/vms/db/disk.qcow2\" format qcow2\n\
             \tlocal interface\n\
             }\n\
             \n\
             vm \"web\" {\n\
             \tdisable\n\
             \towner alice\n\
             \tmemory 2G\n\
             \tdisk \"/home/alice/.local/share/almavmm/vms/web/disk.qcow2\" format qcow2\n\
             \tcdrom \"/home/alice/.local/share/almavmm/vms/web/seed.iso\"\n\
             \tlocal interface\n\
             }\n"
        );
        // What we write reads back as the statements we meant (the lexer vmd uses).
        let words: Vec<Vec<String>> =
            conftext::statements(&text).iter().map(|s| s.words.iter().map(|w| w.text.clone()).collect()).collect();
        assert_eq!(words[0], ["vm", "db", "{"]);
        assert_eq!(words[4], ["disk", "/home/alice/.local/share/almavmm/vms/db/disk.qcow2", "format", "qcow2"]);
    }

    #[test]
    fn no_guests_still_gives_a_valid_file() {
        let text = render("bob", &[], OLD).unwrap();
        assert!(conftext::statements(&text).is_empty(), "{text}");
    }

    #[test]
    fn paths_vmd_cannot_take_are_refused_with_a_reason() {
        let mut g = entry("x", false);
        g.disk = PathBuf::from(format!("/{}", "d".repeat(127)));
        let e = render("alice", &[g.clone()], OLD).unwrap_err().to_string();
        assert!(
            e.contains("at most 127 bytes (VMM_MAX_PATH_DISK, OpenBSD before 7.8) and it has 128")
                && e.contains("ALMAVMM_HOME"),
            "{e}"
        );
        // OpenBSD 7.8's vmd (vmd.h 1.140: PATH_MAX) takes it, and refuses 1024 bytes.
        assert!(render("alice", &[g], NEW).is_ok());
        let mut g = entry("x", true);
        g.cdrom = Some(PathBuf::from(format!("/{}", "c".repeat(1023))));
        let e = render("alice", &[g], NEW).unwrap_err().to_string();
        assert!(e.starts_with("cdrom path") && e.contains("at most 1023 bytes (PATH_MAX"), "{e}");
        let mut g = entry("x", false);
        g.disk = PathBuf::from("/home/a\"b/disk.qcow2");
        assert!(matches!(render("alice", &[g], OLD), Err(VmConfError::BadPath { what: "disk", .. })));
        let mut g = entry("x", false);
        g.disk = PathBuf::from("disk.qcow2");
        assert!(render("alice", &[g], OLD).unwrap_err().to_string().contains("not absolute"));
        assert!(
            render("al ice", &[entry("x", false)], OLD).unwrap().contains("\towner \"al ice\"\n"),
            "odd names are quoted"
        );
        assert!(render("al\"ice", &[], OLD).is_err());
    }

    #[test]
    fn local_prefix_default_literal_quoted_and_last_wins() {
        assert_eq!(local_prefix("").unwrap(), DEFAULT_PREFIX);
        assert_eq!(DEFAULT_PREFIX.to_string(), "100.64.0.0/10");
        // From /etc/examples/vm.conf style files: comments and a vm block around it.
        let conf = "# local prefix 10.9.0.0/16\nsets=\"/var/www/\"\nlocal prefix 10.20.0.0/16\n\
                    vm \"openbsd.vm\" {\n\tmemory 512M\n}\nlocal inet6 prefix fd00:1::/48\n";
        assert_eq!(local_prefix(conf).unwrap().to_string(), "10.20.0.0/16");
        assert_eq!(local_prefix("local prefix \"192.168.77.0/24\"\n").unwrap().to_string(), "192.168.77.0/24");
        assert_eq!(
            local_prefix("local prefix 10.1.0.0/16\nlocal prefix 10.2.0.0/16\n").unwrap().to_string(),
            "10.2.0.0/16"
        );
        let e = local_prefix("p=\"10.0.0.0/8\"\nlocal prefix $p\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("macro") && e.contains("literally"), "{e}");
        assert!(local_prefix("local prefix 10.0.0.0/33\n").is_err());
    }

    #[test]
    fn include_is_added_once_and_only_once() {
        let ours = our_file("alice");
        assert_eq!(ours, Path::new("/etc/almavmm/vm-alice.conf"));
        // No /etc/vm.conf yet.
        let fresh = with_include(None, &ours, "alice");
        assert_eq!(
            fresh,
            "# vmd(8) configuration, see vm.conf(5).\n\n# Guests of alice, managed by almavmm-host.\ninclude \"/etc/almavmm/vm-alice.conf\"\n"
        );
        assert_eq!(include_count(&fresh, &ours), 1);
        assert_eq!(with_include(Some(&fresh), &ours, "alice"), fresh, "idempotent");
        // An existing file without a final newline keeps every byte and gains the line.
        let existing = "local prefix 10.20.0.0/16\nvm \"mine\" {\n\tmemory 1G\n}";
        let added = with_include(Some(existing), &ours, "alice");
        assert!(added.starts_with(&format!("{existing}\n")), "{added}");
        assert!(added.ends_with("include \"/etc/almavmm/vm-alice.conf\"\n"), "{added}");
        assert_eq!(include_count(&added, &ours), 1);
        // Written by hand in another form (single quotes, comment) it is still there.
        let by_hand = "include '/etc/almavmm/vm-alice.conf' # mine\n";
        assert_eq!(with_include(Some(by_hand), &ours, "alice"), by_hand);
        // Someone else's include is not ours.
        assert_eq!(include_count("include \"/etc/almavmm/vm-bob.conf\"\n", &ours), 0);
        // A commented-out include does not count.
        assert_eq!(include_count("#include \"/etc/almavmm/vm-alice.conf\"\n", &ours), 0);
        // Repeats are removed, the first kept.
        let twice = "include \"/etc/almavmm/vm-alice.conf\"\nx=1\ninclude \"/etc/almavmm/vm-alice.conf\"\n";
        assert_eq!(with_include(Some(twice), &ours, "alice"), "include \"/etc/almavmm/vm-alice.conf\"\nx=1\n");
    }

    #[test]
    fn the_check_copy_includes_the_staged_file() {
        let ours = our_file("alice");
        let main = with_include(Some("local prefix 10.20.0.0/16\n"), &ours, "alice");
        let check = repoint_include(&main, &ours, Path::new("/tmp/stage/vm-alice.conf"));
        assert_eq!(check, main.replace("/etc/almavmm/vm-alice.conf", "/tmp/stage/vm-alice.conf"));
        assert_eq!(include_count(&check, &ours), 0);
    }

    #[test]
    fn wanted_vm_conf_lists_vmd_guests_with_disks_only() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let spec = |name: &str, backend: &str| {
            format!(
                "name: {name}\nbackend: {backend}\nmemory: 1G\ndisk_size: 10G\nimage: {{url: u, trust: almalinux9}}\n\
                 user: u\nhostname: {name}\nssh_key: /k.pub\ninstance_id: i\n"
            )
        };
        for (name, backend, disk, seed) in [
            ("web", "vmd", true, true),
            ("db", "vmd", true, false),
            ("new", "vmd", false, false),
            ("q", "qemu", true, true),
        ] {
            let d = dir.path().join("vms").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vm.yaml"), spec(name, backend)).unwrap();
            if disk {
                std::fs::write(d.join("disk.qcow2"), "").unwrap();
            }
            if seed {
                std::fs::write(d.join("seed.iso"), "").unwrap();
            }
        }
        let text = wanted_vm_conf(&home, "alice", None).unwrap();
        let names: Vec<String> = conftext::statements(&text)
            .iter()
            .filter(|s| s.texts().first() == Some(&"vm"))
            .map(|s| s.texts()[1].to_string())
            .collect();
        assert_eq!(names, ["db", "web"]);
        assert!(text.contains(&format!("\tcdrom \"{}\"\n", dir.path().join("vms/web/seed.iso").display())));
        assert_eq!(text.matches("cdrom").count(), 1, "db has no seed, so no cdrom line");
        let without_web = wanted_vm_conf(&home, "alice", Some(&"web".parse().unwrap())).unwrap();
        assert!(!without_web.contains("\"web\""));
        // A broken guest spec stops the rewrite instead of dropping that guest.
        std::fs::write(dir.path().join("vms/db/vm.yaml"), "memory: lots\n").unwrap();
        let e = wanted_vm_conf(&home, "alice", None).unwrap_err();
        assert!(e.contains("vm.conf was left as it is"), "{e}");
    }
}
