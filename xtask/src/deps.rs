//! `cargo xtask deps [--for demo|test] [--install]`: the system packages the demo or the test
//! suite needs (test ⊇ demo), checked by what they provide (a program or a file), and with
//! `--install` installed with apt, as root, on Debian or Ubuntu.
//!
//! What to do is decided by pure functions of the facts ([`Facts`]: /etc/os-release, what is
//! missing, whether we are root, the age of apt's package lists, the configured sources):
//! [`needs`] says what a purpose needs on a distribution, [`plan`] what to add, update and
//! install, or which commands to print when this process cannot do it itself. [`ensure`]
//! only gathers the facts and carries the plan out, saying what it installs and why first.
//!
//! Where each distribution's packages come from (looked up with `apt-cache policy` on a
//! Debian 12 machine after `apt-get update`, and on packages.debian.org / packages.ubuntu.com
//! for Debian 13 and Ubuntu 24.04, whose archives this machine cannot reach):
//!
//! | need | Debian 12 bookworm | Debian 13 trixie | Ubuntu 24.04 noble |
//! |---|---|---|---|
//! | QEMU + qemu-img | qemu-system-x86 + qemu-utils 10.0 from bookworm-backports, in one command | 10.0, main | 8.2, main |
//! | image tools, OpenSSH, gpg, python3, gcc | main | main | main/universe (mmdebstrap) |
//! | Debian's archive keyring (the test image is Debian) | main (apt needs it) | main | universe |
//! | kernel headers (test only) | linux-headers-cloud-amd64 (6.1, main) and linux-headers-6.12-cloud-amd64 (6.12, bookworm-security) | linux-headers-cloud-amd64 (6.12, main) | linux-headers-generic (6.8, main) |
//!
//! On Debian 12 the 6.12 headers are *not* taken from bookworm-backports: there the 6.12
//! series is `linux-headers-cloud-amd64` itself (6.12.x~bpo12), the same name as the 6.1
//! metapackage, so the two cannot be installed side by side; bookworm-security carries
//! `linux-headers-6.12-cloud-amd64` (source linux-signed-6.12-amd64), which is in a Debian 12
//! machine's default sources. Ubuntu has no cloud flavour; its generic headers are the
//! ones its cloud images boot.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use crate::limited::{Io, limited};

/// What the packages are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Purpose {
    /// `cargo xtask demo`: build the test image, serve it, boot a guest, talk to it.
    Demo,
    /// `cargo xtask test`: everything the demo needs, and what the tests check with.
    Test,
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Purpose::Demo => "demo",
            Purpose::Test => "test",
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct DepsArgs {
    /// Which command's needs: `demo` (cargo xtask demo) or `test` (cargo xtask test, a superset).
    #[arg(long = "for", value_enum, default_value_t = Purpose::Test)]
    pub purpose: Purpose,
    /// Install what is missing with apt-get (as root on Debian or Ubuntu); otherwise only
    /// check, and print what would be done.
    #[arg(long)]
    pub install: bool,
}

/// Something that must be present, the package that provides it, and why it is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// A program on PATH (or in /usr/sbin, /sbin), or an absolute path, which may hold one `*`.
    pub what: &'static str,
    pub package: &'static str,
    pub why: &'static str,
}

const fn need(what: &'static str, package: &'static str, why: &'static str) -> Need {
    Need { what, package, why }
}

/// Debian 12's QEMU pair: both from bookworm-backports, in one command. The machines this
/// runs on carry qemu-utils 10 from there, and installing bookworm's qemu-system-x86 7.2
/// next to it makes apt remove qemu-img.
pub const QEMU_PAIR: [&str; 2] = ["qemu-system-x86", "qemu-utils"];
const BOOKWORM_BACKPORTS: &str = "bookworm-backports";
/// The file the backports line goes into; .ci/run used the same name, so machines that have
/// it already are left alone.
pub const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/almavmm-backports.list";
const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main";
/// Package lists older than this are refreshed before installing.
pub const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The demo's needs, the same names on Debian 12, 13 and Ubuntu 24.04.
const DEMO: &[Need] = &[
    need("qemu-system-x86_64", "qemu-system-x86", "boots the guest"),
    need("qemu-img", "qemu-utils", "converts and layers guest disks"),
    need("mmdebstrap", "mmdebstrap", "builds the Debian test image"),
    need("mkfs.fat", "dosfstools", "test image: boot partition"),
    need("mcopy", "mtools", "test image: files onto the boot partition"),
    need("syslinux", "syslinux", "test image: boot loader"),
    need("/usr/lib/syslinux/mbr/mbr.bin", "syslinux-common", "test image: boot sector"),
    need("sfdisk", "fdisk", "test image: partition table"),
    need("mkfs.ext4", "e2fsprogs", "test image: root file system"),
    // Present wherever apt is Debian's (apt depends on it); on Ubuntu it is a package of its
    // own (universe). The name of the combined keyring changed in Debian 13; these did not.
    need(
        "/usr/share/keyrings/debian-archive-*-stable.gpg",
        "debian-archive-keyring",
        "test image: verifies Debian's packages",
    ),
    need("ssh", "openssh-client", "talks to the guest"),
    need("ssh-keygen", "openssh-client", "makes SSH keys"),
    need("gpg", "gnupg", "signs the local mirror's checksum list"),
    need("gpg-agent", "gnupg", "holds the mirror's signing key"),
    need("python3", "python3", "serves the image over HTTP like a mirror"),
    // rustup installs no linker; the agent is linked statically against glibc's libc.a.
    need("cc", "gcc", "links the Rust binaries"),
    need("/usr/lib/x86_64-linux-gnu/libc.a", "libc6-dev", "links the static agent"),
];

/// What the test suite needs beyond the demo (kernel headers come from [`headers`]).
const TEST: &[Need] = &[
    need("xorriso", "xorriso", "reads seed ISOs back"),
    need("isoinfo", "genisoimage", "reads seed ISOs back"),
    need("isovfy", "genisoimage", "verifies seed ISOs"),
    need("genisoimage", "genisoimage", "the seed benchmark's reference"),
    need("cloud-init", "cloud-init", "`cloud-init schema` checks user-data"),
    need("blkid", "util-linux", "reads the seed's volume label"),
    need("mandoc", "mandoc", "lints the man pages"),
    // The ksh completion file is checked under mksh (OpenBSD's ksh is a pdksh like it).
    need("mksh", "mksh", "checks the ksh completion"),
    need("file", "file", "checks the agent is static"),
    // The vmd rig (xtask/src/vmdrig.rs): namespaces, taps, DHCP on them.
    need("unshare", "util-linux", "vmd rig: private namespaces"),
    need("ip", "iproute2", "vmd rig: tap devices"),
    need("dnsmasq", "dnsmasq-base", "vmd rig: vmd's DHCP on the taps"),
    need("make", "make", "builds the kernel module"),
    need("depmod", "kmod", "installs the kernel module into a scratch root"),
    need("modinfo", "kmod", "reads the kernel module's version"),
    need("git", "git", "stamps the release tree and the source bundle"),
];

/// Which distribution, from /etc/os-release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distro {
    /// Debian or a derivative that names a Debian codename (VERSION_CODENAME).
    Debian { codename: String },
    /// Ubuntu or a derivative (UBUNTU_CODENAME, else VERSION_CODENAME).
    Ubuntu { codename: String },
    /// Anything else: apt is not assumed.
    Other { name: String },
}

impl Distro {
    fn is_bookworm(&self) -> bool {
        matches!(self, Distro::Debian { codename } if codename == "bookworm")
    }
}

/// Parse os-release(5): `KEY=value` lines, values optionally in single or double quotes.
pub fn parse_os_release(text: &str) -> Distro {
    let mut fields = std::collections::HashMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else { continue };
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        let v = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v);
        fields.insert(k.trim().to_string(), v.to_string());
    }
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let id = get("ID");
    let like: Vec<String> = get("ID_LIKE").split_whitespace().map(str::to_string).collect();
    let is = |name: &str| id == name || like.iter().any(|l| l == name);
    if is("ubuntu") {
        let codename = fields.get("UBUNTU_CODENAME").cloned().unwrap_or_else(|| get("VERSION_CODENAME"));
        Distro::Ubuntu { codename }
    } else if is("debian") {
        Distro::Debian { codename: get("VERSION_CODENAME") }
    } else {
        let name = fields.get("PRETTY_NAME").cloned().unwrap_or(if id.is_empty() { "unknown".into() } else { id });
        Distro::Other { name }
    }
}

/// The kernel header trees the test suite compiles kmod/ against, per distribution.
fn headers(distro: &Distro) -> Vec<Need> {
    const WHY: &str = "the kernel module is compiled against it";
    match distro {
        Distro::Debian { codename } if codename == "bookworm" => vec![
            need("/usr/src/linux-headers-6.1.*-cloud-amd64", "linux-headers-cloud-amd64", WHY),
            need("/usr/src/linux-headers-6.12.*-cloud-amd64", "linux-headers-6.12-cloud-amd64", WHY),
        ],
        // Debian 13 and later: the release's own cloud kernel (6.12 on trixie).
        Distro::Debian { .. } | Distro::Other { .. } => {
            vec![need("/usr/src/linux-headers-*-cloud-amd64", "linux-headers-cloud-amd64", WHY)]
        }
        Distro::Ubuntu { .. } => vec![need("/usr/src/linux-headers-*-generic", "linux-headers-generic", WHY)],
    }
}

/// Everything `purpose` needs on `distro`.
pub fn needs(distro: &Distro, purpose: Purpose) -> Vec<Need> {
    let mut all = DEMO.to_vec();
    if purpose == Purpose::Test {
        all.extend_from_slice(TEST);
        all.extend(headers(distro));
    }
    all
}

/// The packages of `missing` needs, each once, in the order first needed.
pub fn packages_of(missing: &[Need]) -> Vec<&'static str> {
    let mut seen = HashSet::new();
    missing.iter().map(|n| n.package).filter(|p| seen.insert(*p)).collect()
}

/// What the plan is made from: read by [`Facts::gather`], or written down in tests.
#[derive(Debug, Clone)]
pub struct Facts {
    pub distro: Distro,
    /// Packages providing something missing (see [`packages_of`]).
    pub missing: Vec<&'static str>,
    pub root: bool,
    /// Time since apt last fetched its lists; `None` when there are none.
    pub lists_age: Option<Duration>,
    /// Suites whose lists are present (`bookworm`, `bookworm-backports`, …).
    pub fetched_suites: Vec<String>,
    /// Suites named by an enabled line in the apt sources.
    pub configured_suites: Vec<String>,
}

/// One `apt-get install` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// `-t RELEASE`: take these packages (and what they need) from that release.
    pub release: Option<&'static str>,
    pub packages: Vec<&'static str>,
}

impl Install {
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = ["apt-get", "install", "-y", "-q", "--no-install-recommends"].map(String::from).into();
        if let Some(r) = self.release {
            a.extend(["-t".to_string(), r.to_string()]);
        }
        a.extend(self.packages.iter().map(|p| p.to_string()));
        a
    }
}

/// The steps that bring the machine to what the purpose needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Steps {
    /// A sources file to write: (path, line).
    pub add_source: Option<(&'static str, &'static str)>,
    /// Why `apt-get update` must run first, if it must.
    pub update: Option<String>,
    pub installs: Vec<Install>,
}

impl Steps {
    /// The same steps as shell commands for root, e.g. to paste after `sudo -i`.
    pub fn commands(&self) -> Vec<String> {
        let mut c = Vec::new();
        if let Some((path, line)) = self.add_source {
            c.push(format!("echo '{line}' >{path}"));
        }
        if self.update.is_some() {
            c.push("apt-get update".to_string());
        }
        for i in &self.installs {
            c.push(format!("DEBIAN_FRONTEND=noninteractive {}", i.argv().join(" ")));
        }
        c
    }
}

/// What to do about the missing packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing is missing.
    Nothing,
    /// Root on Debian or Ubuntu: do these steps.
    Apply(Steps),
    /// This process cannot do it (not root, or not Debian/Ubuntu): say why and what to run.
    Print { why: String, commands: Vec<String> },
}

/// Decide what to do. Pure: everything it looks at is in `facts`.
pub fn plan(facts: &Facts) -> Plan {
    if facts.missing.is_empty() {
        return Plan::Nothing;
    }
    let mut steps = Steps::default();
    let (qemu, rest): (Vec<&str>, Vec<&str>) = facts.missing.iter().partition(|p| QEMU_PAIR.contains(p));
    let mut rest = rest;
    if facts.distro.is_bookworm() && !qemu.is_empty() {
        // Both of the pair, even if only one is missing: never one from each source.
        if !facts.configured_suites.iter().any(|s| s == BOOKWORM_BACKPORTS) {
            steps.add_source = Some((BACKPORTS_LIST, BACKPORTS_LINE));
        }
        steps.installs.push(Install { release: Some(BOOKWORM_BACKPORTS), packages: QEMU_PAIR.to_vec() });
    } else {
        // Elsewhere the release's own QEMU pair is one source already.
        rest = facts.missing.clone();
    }
    if !rest.is_empty() {
        steps.installs.push(Install { release: None, packages: rest });
    }
    steps.update = match facts.lists_age {
        None => Some("apt has no package lists yet".to_string()),
        Some(_) if steps.add_source.is_some() => Some(format!("{BOOKWORM_BACKPORTS} was just added")),
        Some(_)
            if steps.installs.iter().any(|i| i.release == Some(BOOKWORM_BACKPORTS))
                && !facts.fetched_suites.iter().any(|s| s == BOOKWORM_BACKPORTS) =>
        {
            Some(format!("{BOOKWORM_BACKPORTS} is configured but its lists were never fetched"))
        }
        Some(age) if age > LISTS_MAX_AGE => Some(format!("the package lists are {} hours old", age.as_secs() / 3600)),
        Some(_) => None,
    };
    match &facts.distro {
        Distro::Other { name } => Plan::Print {
            why: format!(
                "this is {name}, not Debian or Ubuntu: install the equivalents of these Debian packages \
                 with your package manager (for reference, the Debian commands)"
            ),
            commands: steps.commands(),
        },
        _ if !facts.root => Plan::Print {
            why: "installing packages needs root: run these commands as root (e.g. in `sudo -i`)".to_string(),
            commands: steps.commands(),
        },
        _ => Plan::Apply(steps),
    }
}

/// Suites named by enabled entries of apt sources, one-line (`deb URI SUITE COMPONENTS`)
/// or deb822 (`Suites: a b`), in the order found.
pub fn configured_suites(sources: &[String]) -> Vec<String> {
    let mut suites = Vec::new();
    for text in sources {
        // deb822 paragraphs: skip those with `Enabled: no`.
        for para in text.split("\n\n") {
            let enabled = !para.lines().any(|l| {
                l.split_once(':').is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("enabled") && v.trim() == "no")
            });
            for line in para.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
                if let Some((k, v)) = line.split_once(':')
                    && k.trim().eq_ignore_ascii_case("suites")
                    && enabled
                {
                    suites.extend(v.split_whitespace().map(str::to_string));
                } else if line.starts_with("deb ") || line.starts_with("deb\t") {
                    // `deb [options] URI SUITE COMPONENT…`
                    let mut words = line.split_whitespace().skip(1).peekable();
                    if words.peek().is_some_and(|w| w.starts_with('[')) {
                        for w in words.by_ref() {
                            if w.ends_with(']') {
                                break;
                            }
                        }
                    }
                    if let Some(suite) = words.nth(1) {
                        suites.push(suite.to_string());
                    }
                }
            }
        }
    }
    suites
}

/// The suite in a lists file name (`deb.debian.org_debian_dists_bookworm-backports_InRelease`).
pub fn suite_of_lists_file(name: &str) -> Option<&str> {
    let rest = name.strip_suffix("_InRelease").or_else(|| name.strip_suffix("_Release"))?;
    Some(rest.rsplit_once("_dists_")?.1.split('_').next().unwrap_or_default())
}

/// Packages `apt-cache policy` found no version to install of (`Candidate: (none)`), or
/// did not list at all.
pub fn without_candidate<'a>(policy: &str, asked: &[&'a str]) -> Vec<&'a str> {
    let mut current: Option<&str> = None;
    let mut with = HashSet::new();
    for line in policy.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':'));
        } else if let (Some(pkg), Some(c)) = (current, line.trim().strip_prefix("Candidate:"))
            && c.trim() != "(none)"
        {
            with.insert(pkg.to_string());
        }
    }
    asked.iter().copied().filter(|p| !with.contains(*p)).collect()
}

fn present(what: &str) -> bool {
    if let Some((dir_and_prefix, suffix)) = what.split_once('*') {
        // A path pattern with one `*`: some entry of that folder matches prefix*suffix.
        let p = Path::new(dir_and_prefix);
        let (dir, prefix) = (
            p.parent().unwrap_or(Path::new("/")),
            p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        );
        return std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok).any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(&prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len()
                })
            })
            .unwrap_or(false);
    }
    if what.starts_with('/') {
        return Path::new(what).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).chain(["/usr/sbin".into(), "/sbin".into()]).any(|d| d.join(what).is_file())
        })
        .unwrap_or(false)
}

/// The needs of `purpose` on this machine that are not met.
pub fn missing(purpose: Purpose) -> Vec<Need> {
    needs(&this_distro(), purpose).into_iter().filter(|n| !present(n.what)).collect()
}

fn this_distro() -> Distro {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    parse_os_release(&text)
}

const APT_LISTS: &str = "/var/lib/apt/lists";

impl Facts {
    /// Read the facts of this machine.
    pub fn gather(missing: &[Need]) -> Facts {
        let (lists_age, fetched_suites) = lists_state(Path::new(APT_LISTS));
        Facts {
            distro: this_distro(),
            missing: packages_of(missing),
            root: is_root(),
            lists_age,
            fetched_suites,
            configured_suites: configured_suites(&read_sources()),
        }
    }
}

/// How long ago apt last fetched its lists, and for which suites. The lists' own mtimes
/// come from the server's Last-Modified (a stable release's InRelease can be months old
/// right after an update), so the time of the last update is the newest of those and of
/// the folders apt writes into on every update (lists/ and lists/partial/).
pub(crate) fn lists_state(dir: &Path) -> (Option<Duration>, Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (None, Vec::new()) };
    let mut suites = Vec::new();
    let mut newest: Option<SystemTime> = None;
    let mut consider = |t: Option<SystemTime>| {
        if let Some(t) = t {
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(s) = suite_of_lists_file(&name) {
            suites.push(s.to_string());
            consider(e.metadata().and_then(|m| m.modified()).ok());
        }
    }
    if suites.is_empty() {
        return (None, suites);
    }
    for d in [dir.to_path_buf(), dir.join("partial")] {
        consider(std::fs::metadata(d).and_then(|m| m.modified()).ok());
    }
    let age = newest.map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
    (age, suites)
}

fn read_sources() -> Vec<String> {
    let mut texts: Vec<String> = std::fs::read_to_string("/etc/apt/sources.list").into_iter().collect();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|x| x == "list" || x == "sources") {
                texts.extend(std::fs::read_to_string(&p));
            }
        }
    }
    texts
}

pub fn is_root() -> bool {
    // The effective uid from /proc/self/status: no libc binding needed for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

pub fn run(args: DepsArgs) -> anyhow::Result<()> {
    ensure(args.purpose, args.install)
}

const UPDATE_LIMIT: Duration = Duration::from_secs(10 * 60);
const INSTALL_LIMIT: Duration = Duration::from_secs(40 * 60);
/// How long to wait for another apt (unattended upgrades, a parallel run) to let go.
const LOCK_WAIT: Duration = Duration::from_secs(5 * 60);

/// Check that everything `purpose` needs is there; with `install`, install what is not.
pub fn ensure(purpose: Purpose, install: bool) -> anyhow::Result<()> {
    let missing = missing(purpose);
    if missing.is_empty() {
        eprintln!("all system packages the {purpose} needs are present");
        return Ok(());
    }
    eprintln!("missing for the {purpose}:");
    for n in &missing {
        eprintln!("  {:<40} package {:<32} {}", n.what, n.package, n.why);
    }
    let facts = Facts::gather(&missing);
    let steps = match plan(&facts) {
        Plan::Nothing => return Ok(()),
        Plan::Print { why, commands } => bail!("{why}:\n  {}", commands.join("\n  ")),
        Plan::Apply(steps) if !install => bail!(
            "missing system packages; `cargo xtask deps --for {purpose} --install` (as root) would run:\n  {}",
            steps.commands().join("\n  ")
        ),
        Plan::Apply(steps) => steps,
    };
    apply(&steps, &missing)?;
    let still = self::missing(purpose);
    if !still.is_empty() {
        let what: Vec<String> = still.iter().map(|n| format!("{} ({})", n.what, n.package)).collect();
        bail!("still missing after apt-get install: {}", what.join(", "));
    }
    eprintln!("all system packages the {purpose} needs are present now");
    Ok(())
}

fn apply(steps: &Steps, missing: &[Need]) -> anyhow::Result<()> {
    if let Some((path, line)) = steps.add_source {
        eprintln!("adding `{line}` to {path} (Debian 12's QEMU pair comes from there)");
        std::fs::write(path, format!("{line}\n")).with_context(|| format!("cannot write {path}"))?;
    }
    if let Some(why) = &steps.update {
        eprintln!("running apt-get update: {why}");
        apt(&["update", "-q"], UPDATE_LIMIT)?;
    }
    let wanted: Vec<&str> = steps.installs.iter().flat_map(|i| i.packages.iter().copied()).collect();
    let policy = limited("apt-cache", Duration::from_secs(60)).arg("policy").args(&wanted).run()?;
    let none = without_candidate(&policy.stdout, &wanted);
    if !none.is_empty() {
        bail!(
            "apt has no version to install of {} with the configured sources (on Ubuntu, enable the \
             universe component; on Debian 12, the 6.12 headers come from bookworm-security)",
            none.join(", ")
        );
    }
    for i in &steps.installs {
        let from = i.release.map(|r| format!(" from {r}")).unwrap_or_default();
        eprintln!("installing{from}:");
        for p in &i.packages {
            let whys: Vec<&str> = missing.iter().filter(|n| n.package == *p).map(|n| n.why).collect();
            let whys = if whys.is_empty() { "with the rest of its pair".to_string() } else { whys.join("; ") };
            eprintln!("  {p:<32} {whys}");
        }
        let argv = i.argv();
        apt(&argv[1..].iter().map(String::as_str).collect::<Vec<_>>(), INSTALL_LIMIT)?;
    }
    Ok(())
}

/// `apt-get ARGS`, output shown as it comes; waits (bounded) while another apt holds a lock.
fn apt(args: &[&str], limit: Duration) -> anyhow::Result<()> {
    let deadline = almavmm_shared::wait::Deadline::after(LOCK_WAIT);
    loop {
        let out = limited("apt-get", limit)
            .args(["-o", &format!("DPkg::Lock::Timeout={}", LOCK_WAIT.as_secs())])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Io::Inherit)
            .output()?;
        eprint!("{}", out.stderr);
        if out.status.success() {
            return Ok(());
        }
        if out.stderr.contains("Could not get lock") && !deadline.passed() {
            eprintln!("another apt holds its lock; trying again in 5 s (for up to {} s)", LOCK_WAIT.as_secs());
            std::thread::sleep(Duration::from_secs(5));
            continue;
        }
        bail!("`apt-get {}` failed ({})", args.join(" "), out.status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"#;
    const TRIXIE: &str = r#"PRETTY_NAME="Debian GNU/Linux 13 (trixie)"
NAME="Debian GNU/Linux"
VERSION_ID="13"
VERSION="13 (trixie)"
VERSION_CODENAME=trixie
DEBIAN_VERSION_FULL=13.1
ID=debian
"#;
    const NOBLE: &str = r#"PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=noble
"#;
    const FEDORA: &str =
        "NAME=\"Fedora Linux\"\nVERSION_ID=41\nID=fedora\nPRETTY_NAME=\"Fedora Linux 41 (Workstation Edition)\"\n";

    fn facts(os: &str, missing: &[&'static str]) -> Facts {
        Facts {
            distro: parse_os_release(os),
            missing: missing.to_vec(),
            root: true,
            lists_age: Some(Duration::from_secs(600)),
            fetched_suites: vec!["bookworm".into()],
            configured_suites: vec!["bookworm".into(), "bookworm-updates".into(), "bookworm-security".into()],
        }
    }

    fn steps(p: Plan) -> Steps {
        match p {
            Plan::Apply(s) => s,
            other => panic!("expected steps, got {other:?}"),
        }
    }

    #[test]
    fn os_release_names_the_distribution() {
        assert_eq!(parse_os_release(BOOKWORM), Distro::Debian { codename: "bookworm".into() });
        assert_eq!(parse_os_release(TRIXIE), Distro::Debian { codename: "trixie".into() });
        assert_eq!(parse_os_release(NOBLE), Distro::Ubuntu { codename: "noble".into() });
        assert_eq!(parse_os_release(FEDORA), Distro::Other { name: "Fedora Linux 41 (Workstation Edition)".into() });
        // A derivative: Linux Mint says which Ubuntu it is built on.
        let mint = "ID=linuxmint\nID_LIKE='ubuntu debian'\nVERSION_CODENAME=wilma\nUBUNTU_CODENAME=noble\n";
        assert_eq!(parse_os_release(mint), Distro::Ubuntu { codename: "noble".into() });
        assert_eq!(parse_os_release(""), Distro::Other { name: "unknown".into() });
    }

    #[test]
    fn the_demo_needs_no_kernel_headers_and_test_needs_all_the_demo_does() {
        for os in [BOOKWORM, TRIXIE, NOBLE] {
            let d = parse_os_release(os);
            let demo = needs(&d, Purpose::Demo);
            let test = needs(&d, Purpose::Test);
            assert!(demo.iter().all(|n| !n.package.contains("headers")), "{demo:?}");
            assert!(demo.iter().all(|n| test.contains(n)));
            assert!(test.iter().any(|n| n.package.starts_with("linux-headers-")));
        }
    }

    #[test]
    fn kernel_headers_per_distribution() {
        let pkgs = |os| {
            needs(&parse_os_release(os), Purpose::Test)
                .into_iter()
                .filter(|n| n.package.starts_with("linux-headers"))
                .map(|n| (n.what, n.package))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pkgs(BOOKWORM),
            [
                ("/usr/src/linux-headers-6.1.*-cloud-amd64", "linux-headers-cloud-amd64"),
                ("/usr/src/linux-headers-6.12.*-cloud-amd64", "linux-headers-6.12-cloud-amd64"),
            ]
        );
        assert_eq!(pkgs(TRIXIE), [("/usr/src/linux-headers-*-cloud-amd64", "linux-headers-cloud-amd64")]);
        assert_eq!(pkgs(NOBLE), [("/usr/src/linux-headers-*-generic", "linux-headers-generic")]);
    }

    #[test]
    fn bookworm_takes_both_qemu_packages_from_backports_in_one_command() {
        // The issue's machine: qemu-utils 10 from backports already there, the rest missing.
        let s = steps(plan(&facts(BOOKWORM, &["qemu-system-x86", "mmdebstrap", "gnupg"])));
        assert_eq!(s.add_source, Some((BACKPORTS_LIST, BACKPORTS_LINE)));
        assert_eq!(s.update.as_deref(), Some("bookworm-backports was just added"));
        assert_eq!(
            s.installs,
            [
                Install { release: Some("bookworm-backports"), packages: vec!["qemu-system-x86", "qemu-utils"] },
                Install { release: None, packages: vec!["mmdebstrap", "gnupg"] },
            ]
        );
        assert_eq!(
            s.installs[0].argv().join(" "),
            "apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils"
        );
    }

    #[test]
    fn bookworm_with_backports_configured_adds_no_line() {
        let mut f = facts(BOOKWORM, &["qemu-utils"]);
        f.configured_suites.push("bookworm-backports".into());
        f.fetched_suites.push("bookworm-backports".into());
        let s = steps(plan(&f));
        assert_eq!(s.add_source, None);
        assert_eq!(s.update, None, "fresh lists that include backports");
        assert_eq!(s.installs, [Install { release: Some("bookworm-backports"), packages: QEMU_PAIR.to_vec() }]);
        // Configured by hand but never fetched: update first.
        f.fetched_suites.pop();
        assert!(steps(plan(&f)).update.unwrap().contains("never fetched"));
    }

    #[test]
    fn bookworm_without_qemu_missing_touches_no_sources() {
        let s = steps(plan(&facts(BOOKWORM, &["mmdebstrap"])));
        assert_eq!(s.add_source, None);
        assert_eq!(s.installs, [Install { release: None, packages: vec!["mmdebstrap"] }]);
    }

    #[test]
    fn trixie_and_noble_install_everything_from_their_own_release_at_once() {
        for os in [TRIXIE, NOBLE] {
            let s = steps(plan(&facts(os, &["qemu-system-x86", "mmdebstrap", "qemu-utils"])));
            assert_eq!(s.add_source, None);
            assert_eq!(
                s.installs,
                [Install { release: None, packages: vec!["qemu-system-x86", "mmdebstrap", "qemu-utils"] }]
            );
        }
    }

    #[test]
    fn apt_get_update_when_lists_are_missing_or_a_day_old() {
        let mut f = facts(TRIXIE, &["mtools"]);
        f.lists_age = None;
        assert_eq!(steps(plan(&f)).update.as_deref(), Some("apt has no package lists yet"));
        f.lists_age = Some(Duration::from_secs(30 * 3600));
        assert_eq!(steps(plan(&f)).update.as_deref(), Some("the package lists are 30 hours old"));
        f.lists_age = Some(Duration::from_secs(23 * 3600));
        assert_eq!(steps(plan(&f)).update, None);
    }

    #[test]
    fn nothing_missing_means_nothing_to_do_even_with_stale_lists() {
        let mut f = facts(BOOKWORM, &[]);
        f.lists_age = None;
        f.root = false;
        assert_eq!(plan(&f), Plan::Nothing);
    }

    #[test]
    fn without_root_the_exact_commands_are_printed() {
        let mut f = facts(BOOKWORM, &["qemu-utils", "mmdebstrap"]);
        f.root = false;
        f.lists_age = None;
        let Plan::Print { why, commands } = plan(&f) else { panic!("expected commands to print") };
        assert!(why.contains("root"), "{why}");
        assert_eq!(commands, [
            format!("echo '{BACKPORTS_LINE}' >{BACKPORTS_LIST}"),
            "apt-get update".to_string(),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils".to_string(),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap".to_string(),
        ]);
    }

    #[test]
    fn off_debian_the_debian_commands_are_printed_as_a_reference_even_as_root() {
        let Plan::Print { why, commands } = plan(&facts(FEDORA, &["qemu-utils"])) else { panic!() };
        assert!(why.contains("Fedora Linux 41") && why.contains("not Debian or Ubuntu"), "{why}");
        assert_eq!(
            commands.last().unwrap(),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-utils"
        );
    }

    #[test]
    fn packages_are_named_once_in_first_needed_order() {
        let m = [DEMO[10], DEMO[0], DEMO[11]]; // ssh, qemu-system-x86_64, ssh-keygen
        assert_eq!(packages_of(&m), ["openssh-client", "qemu-system-x86"]);
    }

    #[test]
    fn suites_from_one_line_and_deb822_sources() {
        let one_line = "# deb http://x/debian bookworm-proposed main\n\
                        deb http://deb.debian.org/debian bookworm main\n\
                        deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] http://deb.debian.org/debian bookworm-backports main\n";
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nEnabled: no\nComponents: main\n";
        assert_eq!(
            configured_suites(&[one_line.into(), deb822.into()]),
            ["bookworm", "bookworm-backports", "bookworm", "bookworm-updates"]
        );
    }

    #[test]
    fn lists_file_names_give_their_suite() {
        assert_eq!(
            suite_of_lists_file("deb.debian.org_debian_dists_bookworm-backports_InRelease"),
            Some("bookworm-backports")
        );
        assert_eq!(
            suite_of_lists_file("deb.debian.org_debian-security_dists_bookworm-security_InRelease"),
            Some("bookworm-security")
        );
        assert_eq!(suite_of_lists_file("archive.ubuntu.com_ubuntu_dists_noble-updates_Release"), Some("noble-updates"));
        assert_eq!(suite_of_lists_file("deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"), None);
        assert_eq!(suite_of_lists_file("lock"), None);
    }

    #[test]
    fn lists_state_of_an_empty_folder_is_missing() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(lists_state(d.path()), (None, vec![]));
        std::fs::write(d.path().join("deb.debian.org_debian_dists_bookworm_InRelease"), "x").unwrap();
        let (age, suites) = lists_state(d.path());
        assert!(age.unwrap() < Duration::from_secs(60));
        assert_eq!(suites, ["bookworm"]);
    }

    #[test]
    fn candidates_from_apt_cache_policy() {
        // `apt-cache policy` on Debian 12 after apt-get update (trimmed).
        let policy = "linux-headers-6.12-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.12.118-1~deb12u1\n  Version table:\n     6.12.118-1~deb12u1 500\n        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n\
                      qemu-utils:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n";
        assert_eq!(
            without_candidate(policy, &["linux-headers-6.12-cloud-amd64", "qemu-utils", "not-listed"]),
            ["qemu-utils", "not-listed"]
        );
    }

    #[test]
    fn a_pattern_needs_something_between_prefix_and_suffix() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("linux-headers-6.12.118+deb12-cloud-amd64")).unwrap();
        let pat = |p: &str| format!("{}/{p}", d.path().display());
        assert!(present(&pat("linux-headers-6.12.*-cloud-amd64")));
        assert!(!present(&pat("linux-headers-6.1.*-cloud-amd64")));
        assert!(present(&pat("linux-headers-*-cloud-amd64")));
        assert!(!present(&pat("linux-headers-*-generic")));
    }
}
