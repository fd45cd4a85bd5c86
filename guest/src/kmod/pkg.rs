//! Packages the module build needs, and the exact commands that check and install them on
//! dnf and apt systems. The plans are pure; `ensure_build_deps` runs them.

use std::cmp::Ordering;
use std::path::Path;

use almavmm_shared::health::PackageManager;
use almavmm_shared::runner::Cmd;

use crate::sys::distro::OsRelease;
use crate::sys::sysroot::SysRoot;

/// What the module build needs for kernel `kver`.
pub fn build_deps(pm: PackageManager, kver: &str) -> Vec<String> {
    match pm {
        PackageManager::Dnf => {
            vec![format!("kernel-devel-{kver}"), "gcc".into(), "make".into(), "elfutils-libelf-devel".into()]
        }
        PackageManager::Apt => vec![format!("linux-headers-{kver}"), "gcc".into(), "make".into()],
    }
}

/// The package carrying the headers of `kver`.
pub fn headers_package(pm: PackageManager, kver: &str) -> String {
    build_deps(pm, kver).remove(0)
}

/// Asks which of `pkgs` are installed.
pub fn query_installed(pm: PackageManager, pkgs: &[String]) -> Cmd {
    match pm {
        PackageManager::Dnf => Cmd::new("rpm").arg("-q").args(pkgs),
        PackageManager::Apt => Cmd::new("dpkg-query").arg("-W").arg("-f=${Package} ${db:Status-Abbrev}\\n").args(pkgs),
    }
}

/// Which of `pkgs` the output of [`query_installed`] shows as missing.
pub fn missing_from(pm: PackageManager, pkgs: &[String], stdout: &str) -> Vec<String> {
    match pm {
        // rpm -q prints the NEVRA of an installed package and "package NAME is not
        // installed" for a missing one, one line per argument.
        PackageManager::Dnf => stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("package ").and_then(|r| r.strip_suffix(" is not installed")))
            .map(str::to_string)
            .collect(),
        // dpkg-query prints "NAME STATUS" for packages dpkg knows (second status letter
        // `i` = installed) and nothing for the others.
        PackageManager::Apt => {
            let installed: Vec<&str> = stdout
                .lines()
                .filter_map(|l| {
                    let (name, status) = l.trim_end().split_once(' ')?;
                    (status.as_bytes().get(1) == Some(&b'i')).then_some(name)
                })
                .collect();
            pkgs.iter().filter(|p| !installed.contains(&p.as_str())).cloned().collect()
        }
    }
}

/// Asks the repositories whether `pkg` can be installed.
pub fn query_available(pm: PackageManager, pkg: &str) -> Cmd {
    match pm {
        PackageManager::Dnf => Cmd::new("dnf").args(["-q", "repoquery", pkg]),
        PackageManager::Apt => Cmd::new("apt-cache").args(["policy", pkg]),
    }
}

/// Whether the output of [`query_available`] offers `pkg`.
pub fn available_in(pm: PackageManager, pkg: &str, stdout: &str) -> bool {
    match pm {
        PackageManager::Dnf => stdout.lines().any(|l| strip_epoch(l.trim()) == pkg || l.trim() == pkg),
        PackageManager::Apt => stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .is_some_and(|c| !c.trim().is_empty() && c.trim() != "(none)"),
    }
}

/// `kernel-devel-0:5.14.0-1.el9.x86_64` → `kernel-devel-5.14.0-1.el9.x86_64`.
fn strip_epoch(nevra: &str) -> String {
    let Some(colon) = nevra.find(':') else { return nevra.to_string() };
    let head = &nevra[..colon];
    match head.rfind('-') {
        Some(dash) if head[dash + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            format!("{}{}", &nevra[..dash + 1], &nevra[colon + 1..])
        }
        _ => nevra.to_string(),
    }
}

/// Refresh the package index before asking again (apt images ship without one; dnf
/// refreshes its metadata by itself).
pub fn refresh(pm: PackageManager) -> Option<Cmd> {
    match pm {
        PackageManager::Dnf => None,
        PackageManager::Apt => {
            Some(Cmd::new("apt-get").args(["-q", "update"]).env("DEBIAN_FRONTEND", "noninteractive"))
        }
    }
}

pub fn install(pm: PackageManager, pkgs: &[String]) -> Cmd {
    match pm {
        PackageManager::Dnf => Cmd::new("dnf").args(["install", "-y"]).args(pkgs),
        PackageManager::Apt => Cmd::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    }
}

/// Kernel flavour metapackages of Debian and Ubuntu cloud images, each with its headers.
const APT_FLAVOURS: [(&str, &str); 5] = [
    ("linux-image-cloud-amd64", "linux-headers-cloud-amd64"),
    ("linux-image-amd64", "linux-headers-amd64"),
    ("linux-image-virtual", "linux-headers-virtual"),
    ("linux-image-generic", "linux-headers-generic"),
    ("linux-image-kvm", "linux-headers-kvm"),
];

/// Metapackages to ask dpkg about before planning a kernel update.
pub fn apt_flavour_images() -> Vec<String> {
    APT_FLAVOURS.iter().map(|(img, _)| img.to_string()).collect()
}

/// The packages that bring the newest kernel and its headers. On apt systems the flavour
/// follows the installed metapackage (`installed_images` is what [`apt_flavour_images`]
/// found installed); without one, Debian gets the cloud flavour and Ubuntu the virtual one.
pub fn kernel_update_packages(pm: PackageManager, os: &OsRelease, installed_images: &[String]) -> Vec<String> {
    match pm {
        PackageManager::Dnf => {
            vec!["kernel".into(), "kernel-devel".into(), "gcc".into(), "make".into(), "elfutils-libelf-devel".into()]
        }
        PackageManager::Apt => {
            let (img, hdr) = APT_FLAVOURS
                .iter()
                .find(|(img, _)| installed_images.iter().any(|i| i == img))
                .copied()
                .unwrap_or(if os.is_ubuntu() { APT_FLAVOURS[2] } else { APT_FLAVOURS[0] });
            vec![img.into(), hdr.into(), "gcc".into(), "make".into()]
        }
    }
}

/// Kernel releases in `/lib/modules` that have their build headers, newest first.
pub fn kernels_with_headers(root: &SysRoot) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(root.path("/lib/modules"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|k| root.path(format!("/lib/modules/{k}/build/Makefile")).is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by(|a, b| compare_versions(b, a));
    found
}

/// Whether `kver`'s build headers are in place.
pub fn headers_present(root: &SysRoot, kver: &str) -> bool {
    root.path(format!("/lib/modules/{kver}/build/Makefile")).is_file()
}

/// Order kernel releases: runs of digits compare as numbers, everything else as text
/// (`6.1.0-28` > `6.1.0-9`, `5.14.0-503.el9_5` > `5.14.0-427.el9_4`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let digits = x.is_ascii_digit() && y.is_ascii_digit();
                let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit() == digits).count();
                let (ra, rb) = (run(a), run(b));
                let ord = if digits {
                    let na = std::str::from_utf8(&a[..ra]).unwrap_or("0").trim_start_matches('0');
                    let nb = std::str::from_utf8(&b[..rb]).unwrap_or("0").trim_start_matches('0');
                    na.len().cmp(&nb.len()).then_with(|| na.cmp(nb))
                } else {
                    a[..1].cmp(&b[..1])
                };
                if ord != Ordering::Equal {
                    return ord;
                }
                let step = if digits { (ra, rb) } else { (1, 1) };
                a = &a[step.0..];
                b = &b[step.1..];
            }
        }
    }
}

/// The compressor `make modules_install` runs on the module, from the kernel build tree's
/// `.config` (init/Kconfig: CONFIG_MODULE_COMPRESS_{GZIP,XZ,ZSTD}; Debian's 6.12 kernels
/// use xz, its 6.1 kernels none).
pub fn module_compressor(config: &str) -> Option<&'static str> {
    let set = |key: &str| config.lines().any(|l| l.trim() == format!("{key}=y"));
    if set("CONFIG_MODULE_COMPRESS_XZ") {
        Some("xz")
    } else if set("CONFIG_MODULE_COMPRESS_ZSTD") {
        Some("zstd")
    } else if set("CONFIG_MODULE_COMPRESS_GZIP") {
        Some("gzip")
    } else {
        None
    }
}

/// The package that provides a compressor.
pub fn compressor_package(pm: PackageManager, tool: &str) -> String {
    match (pm, tool) {
        (PackageManager::Apt, "xz") => "xz-utils".into(),
        (_, t) => t.to_string(),
    }
}

/// The compressor this kernel's modules_install needs, when it is not on PATH.
pub fn missing_compressor(root: &SysRoot, kver: &str) -> Option<&'static str> {
    let config = root.read_optional(format!("/lib/modules/{kver}/build/.config")).ok().flatten()?;
    module_compressor(&config).filter(|tool| !on_path(tool))
}

/// Install the newest kernel with its headers (for `--update-kernel`, when the running
/// kernel's headers are gone from the repositories) and return the release to build for:
/// the newest one in `/lib/modules` with headers, which must differ from `running`.
pub fn update_kernel(
    root: &SysRoot,
    pm: PackageManager,
    os: &OsRelease,
    running: &str,
) -> Result<(String, Vec<String>), DepsError> {
    let installed_images = match pm {
        PackageManager::Apt => {
            let imgs = apt_flavour_images();
            let out = query_installed(pm, &imgs).output()?;
            let missing = missing_from(pm, &imgs, &out.stdout);
            imgs.into_iter().filter(|i| !missing.contains(i)).collect()
        }
        PackageManager::Dnf => vec![],
    };
    let pkgs = kernel_update_packages(pm, os, &installed_images);
    if let Some(refresh) = refresh(pm) {
        refresh.timeout(std::time::Duration::from_secs(600)).run()?;
    }
    install(pm, &pkgs).timeout(std::time::Duration::from_secs(1800)).run()?;
    match kernels_with_headers(root).into_iter().next() {
        Some(k) if k != running => Ok((k, pkgs)),
        _ => Err(DepsError::NoNewerKernel { running: running.to_string(), installed: pkgs.join(" ") }),
    }
}

/// AlmaLinux's archive of past point releases. Its mirrors carry only the current point
/// release (9.N, 10.N); when 9.N+1 comes out, 9.N's repositories move to
/// `https://vault.almalinux.org/9.N/` with the same layout (repo/arch/os). An image older
/// than the current point release therefore runs a kernel whose `kernel-devel-$(uname -r)`
/// the enabled repositories no longer have, but the vault does. kernel-devel is in
/// AppStream on EL9 and EL10 (as on RHEL 9/10).
pub const ALMALINUX_VAULT: &str = "https://vault.almalinux.org";
/// The repository id the vault is added under, for one command only (`--repofrompath`).
pub const VAULT_REPO_ID: &str = "almavmm-vault";

/// The point release and architecture of an EL kernel release:
/// `5.14.0-503.14.1.el9_5.x86_64` → (`9.5`, `x86_64`); `6.12.0-124.52.2.el10_1.x86_64_v2` →
/// (`10.1`, `x86_64_v2`): AlmaLinux 10 also builds for x86_64_v2 (release notes 10.0 and
/// later list it as an architecture), and `uname -r` then ends in `.x86_64_v2`. The first
/// GA kernel of a major release has no `_N` (`5.14.0-70.13.1.el9_0` has it; `…el10.x86_64`
/// from CentOS Stream has not, and is no point release at all: `None`).
pub fn el_point_release(kver: &str) -> Option<(String, String)> {
    let (_, tail) = kver.rsplit_once(".el")?;
    let (dist, arch) = tail.split_once('.')?;
    let (major, minor) = dist.split_once('_')?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (ok(major) && ok(minor) && !arch.is_empty()).then(|| (format!("{major}.{minor}"), arch.to_string()))
}

/// `https://vault.almalinux.org/9.5/AppStream/x86_64/os/` for an AlmaLinux kernel.
pub fn vault_appstream(kver: &str) -> Option<String> {
    let (release, arch) = el_point_release(kver)?;
    Some(format!("{ALMALINUX_VAULT}/{release}/AppStream/{arch}/os/"))
}

/// The options that add the vault's AppStream for one dnf command, with AlmaLinux's own
/// signing key (the `almalinux-gpg-keys` package installs it; `RPM-GPG-KEY-AlmaLinux-9`,
/// `-10`), so packages from the vault are checked as strictly as from the mirrors.
fn vault_options(kver: &str) -> Option<Vec<String>> {
    let url = vault_appstream(kver)?;
    let (release, _) = el_point_release(kver)?;
    let major = release.split('.').next()?.to_string();
    Some(vec![
        format!("--repofrompath={VAULT_REPO_ID},{url}"),
        format!("--setopt={VAULT_REPO_ID}.gpgcheck=1"),
        format!("--setopt={VAULT_REPO_ID}.gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AlmaLinux-{major}"),
    ])
}

/// `dnf -q repoquery` of the headers in the vault alone (`--repo` limits it to that one).
pub fn vault_query(kver: &str) -> Option<Cmd> {
    let opts = vault_options(kver)?;
    Some(
        Cmd::new("dnf")
            .arg("-q")
            .arg("repoquery")
            .args(opts)
            .args(["--repo", VAULT_REPO_ID])
            .arg(format!("kernel-devel-{kver}")),
    )
}

/// `dnf install` of the headers with the vault added beside the enabled repositories.
pub fn vault_install(kver: &str) -> Option<Cmd> {
    let opts = vault_options(kver)?;
    Some(Cmd::new("dnf").args(["install", "-y"]).args(opts).arg(format!("kernel-devel-{kver}")))
}

/// What [`ensure_build_deps`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepsOutcome {
    pub installed_now: Vec<String>,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    #[error(
        "the headers for the running kernel {kver} ({package}) are not in the enabled repositories{why}: \
         run `almavmm-agent setup --update-kernel` to install the newest kernel with its headers, then reboot"
    )]
    HeadersUnavailable { kver: String, package: String, why: &'static str },
    #[error("missing {missing}, which the repositories do not offer: {detail}")]
    Unavailable { missing: String, detail: String },
    #[error("missing {missing}, and this distribution has no package manager the agent knows: install them by hand")]
    NoPackageManager { missing: String },
    #[error("installed {installed} but no kernel newer than {running} with headers appeared in /lib/modules")]
    NoNewerKernel { running: String, installed: String },
    #[error(transparent)]
    Run(#[from] almavmm_shared::runner::RunError),
}

/// Make sure the build dependencies for `kver` are installed, installing what is missing
/// when the repositories have it. Says exactly which package is missing and whether the
/// repositories offer it. Once the headers are there, the compressor their
/// `modules_install` uses is a dependency too.
pub fn ensure_build_deps(root: &SysRoot, pm: PackageManager, kver: &str) -> Result<DepsOutcome, DepsError> {
    let wanted = build_deps(pm, kver);
    let out = query_installed(pm, &wanted).output()?;
    let mut missing = missing_from(pm, &wanted, &out.stdout);
    let compressor = || missing_compressor(root, kver).map(|tool| compressor_package(pm, tool));
    if !missing.contains(&headers_package(pm, kver)) {
        missing.extend(compressor());
    }
    if missing.is_empty() {
        return Ok(DepsOutcome { installed_now: vec![], detail: format!("already installed: {}", wanted.join(" ")) });
    }
    install_from_repositories(pm, kver, &missing)?;
    let mut installed_now = missing;
    if let Some(pkg) = compressor().filter(|p| !installed_now.contains(p)) {
        install_from_repositories(pm, kver, std::slice::from_ref(&pkg))?;
        installed_now.push(pkg);
    }
    Ok(DepsOutcome { detail: format!("installed {}", installed_now.join(" ")), installed_now })
}

/// Install `pkgs` after checking the repositories offer each (refreshing apt's index once
/// when they seem not to); the headers of `kver` missing from them is its own error.
fn install_from_repositories(pm: PackageManager, kver: &str, pkgs: &[String]) -> Result<(), DepsError> {
    let mut unavailable = unavailable_of(pm, pkgs)?;
    // No let-chains here: the agent must build with Rust 1.85.
    if !unavailable.is_empty() {
        if let Some(refresh) = refresh(pm) {
            refresh.timeout(std::time::Duration::from_secs(600)).run()?;
            unavailable = unavailable_of(pm, pkgs)?;
        }
    }
    let headers = headers_package(pm, kver);
    let mut from_vault = false;
    if unavailable.contains(&headers) {
        // AlmaLinux: an image older than the current point release finds its headers in the
        // vault. Only AlmaLinux's vault is known here; other EL rebuilds get the error.
        if pm == PackageManager::Dnf && is_almalinux() {
            if let Some(q) = vault_query(kver) {
                let out = q.timeout(std::time::Duration::from_secs(600)).output()?;
                from_vault = available_in(pm, &headers, &out.stdout);
            }
        }
        if !from_vault {
            let why = match pm {
                PackageManager::Dnf => {
                    " (the image is older than the current point release, and its kernel-devel was not found on vault.almalinux.org either)"
                }
                PackageManager::Apt => " (the image's kernel has been superseded in the archive)",
            };
            return Err(DepsError::HeadersUnavailable { kver: kver.to_string(), package: headers, why });
        }
        unavailable.retain(|p| *p != headers);
    }
    if !unavailable.is_empty() {
        return Err(DepsError::Unavailable {
            missing: unavailable.join(" "),
            detail: format!("`{}` found no candidate", query_available(pm, &unavailable[0]).display()),
        });
    }
    let from_repos: Vec<String> = pkgs.iter().filter(|p| !from_vault || **p != headers).cloned().collect();
    if !from_repos.is_empty() {
        install(pm, &from_repos).timeout(std::time::Duration::from_secs(1800)).run()?;
    }
    if let Some(cmd) = vault_install(kver).filter(|_| from_vault) {
        cmd.timeout(std::time::Duration::from_secs(1800)).run()?;
    }
    Ok(())
}

fn is_almalinux() -> bool {
    crate::sys::distro::OsRelease::read(&SysRoot::default()).is_ok_and(|os| os.id == "almalinux")
}

fn unavailable_of(pm: PackageManager, pkgs: &[String]) -> Result<Vec<String>, DepsError> {
    let mut out = Vec::new();
    for p in pkgs {
        let q = query_available(pm, p).timeout(std::time::Duration::from_secs(600)).output()?;
        if !available_in(pm, p, &q.stdout) {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// For a system without a package manager the agent knows: are headers, gcc and make there?
pub fn missing_without_package_manager(root: &SysRoot, kver: &str) -> Vec<String> {
    let mut missing = Vec::new();
    if !headers_present(root, kver) {
        missing.push(format!("the headers of kernel {kver} (/lib/modules/{kver}/build)"));
    }
    for tool in ["gcc", "make"] {
        if !on_path(tool) {
            missing.push(tool.to_string());
        }
    }
    missing
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn os(name: &str) -> OsRelease {
        OsRelease::parse(&fixture(&format!("os-release/{name}")))
    }

    fn displays(cmds: &[Cmd]) -> Vec<String> {
        cmds.iter().map(Cmd::display).collect()
    }

    const EL9: &str = "5.14.0-427.13.1.el9_4.x86_64";
    const EL10: &str = "6.12.0-55.9.1.el10_0.x86_64";
    const DEB12: &str = "6.1.0-28-cloud-amd64";
    const UBU: &str = "6.8.0-48-generic";

    // The exact commands setup runs for each distribution's module dependencies.
    #[test]
    fn plan_per_distro() {
        let cases = [
            ("almalinux-9.6", EL9),
            ("almalinux-10.0", EL10),
            ("rocky-9.6", EL9),
            ("debian-12", DEB12),
            ("ubuntu-24.04", UBU),
        ];
        let mut plans = Vec::new();
        for (name, kver) in cases {
            let pm = os(name).package_manager().unwrap();
            let deps = build_deps(pm, kver);
            plans.push(displays(&[
                query_installed(pm, &deps),
                query_available(pm, &headers_package(pm, kver)),
                install(pm, &deps),
            ]));
        }
        assert_eq!(
            plans[0],
            [
                "rpm -q kernel-devel-5.14.0-427.13.1.el9_4.x86_64 gcc make elfutils-libelf-devel",
                "dnf -q repoquery kernel-devel-5.14.0-427.13.1.el9_4.x86_64",
                "dnf install -y kernel-devel-5.14.0-427.13.1.el9_4.x86_64 gcc make elfutils-libelf-devel",
            ]
        );
        assert_eq!(
            plans[1],
            [
                "rpm -q kernel-devel-6.12.0-55.9.1.el10_0.x86_64 gcc make elfutils-libelf-devel",
                "dnf -q repoquery kernel-devel-6.12.0-55.9.1.el10_0.x86_64",
                "dnf install -y kernel-devel-6.12.0-55.9.1.el10_0.x86_64 gcc make elfutils-libelf-devel",
            ]
        );
        assert_eq!(plans[2], plans[0], "Rocky 9 is planned like AlmaLinux 9");
        assert_eq!(
            plans[3],
            [
                r"dpkg-query -W '-f=${Package} ${db:Status-Abbrev}\n' linux-headers-6.1.0-28-cloud-amd64 gcc make",
                "apt-cache policy linux-headers-6.1.0-28-cloud-amd64",
                "apt-get install -y --no-install-recommends linux-headers-6.1.0-28-cloud-amd64 gcc make",
            ]
        );
        assert_eq!(
            plans[4],
            [
                r"dpkg-query -W '-f=${Package} ${db:Status-Abbrev}\n' linux-headers-6.8.0-48-generic gcc make",
                "apt-cache policy linux-headers-6.8.0-48-generic",
                "apt-get install -y --no-install-recommends linux-headers-6.8.0-48-generic gcc make",
            ]
        );
        assert_eq!(refresh(PackageManager::Apt).unwrap().display(), "apt-get -q update");
        assert!(refresh(PackageManager::Dnf).is_none());
    }

    #[test]
    fn kernel_update_plan_per_distro() {
        let dnf = kernel_update_packages(PackageManager::Dnf, &os("almalinux-9.6"), &[]);
        assert_eq!(
            install(PackageManager::Dnf, &dnf).display(),
            "dnf install -y kernel kernel-devel gcc make elfutils-libelf-devel"
        );
        let deb = kernel_update_packages(PackageManager::Apt, &os("debian-12"), &["linux-image-cloud-amd64".into()]);
        assert_eq!(
            install(PackageManager::Apt, &deb).display(),
            "apt-get install -y --no-install-recommends linux-image-cloud-amd64 linux-headers-cloud-amd64 gcc make"
        );
        let deb_generic = kernel_update_packages(PackageManager::Apt, &os("debian-12"), &["linux-image-amd64".into()]);
        assert_eq!(deb_generic[..2], ["linux-image-amd64", "linux-headers-amd64"]);
        let ubuntu = kernel_update_packages(PackageManager::Apt, &os("ubuntu-24.04"), &[]);
        assert_eq!(ubuntu[..2], ["linux-image-virtual", "linux-headers-virtual"]);
    }

    #[test]
    fn rpm_missing_packages() {
        let wanted = build_deps(PackageManager::Dnf, EL9);
        let missing = missing_from(PackageManager::Dnf, &wanted, &fixture("rpm/rpm-q-build-deps.txt"));
        assert_eq!(missing, [format!("kernel-devel-{EL9}"), "elfutils-libelf-devel".to_string()]);
    }

    #[test]
    fn dpkg_missing_packages() {
        let wanted = build_deps(PackageManager::Apt, "6.1.0-18-cloud-amd64");
        let missing = missing_from(PackageManager::Apt, &wanted, &fixture("apt/dpkg-query-build-deps.txt"));
        assert_eq!(missing, ["linux-headers-6.1.0-18-cloud-amd64"]);
        let removed_but_configured = "gcc rc \nmake ii \nlinux-headers-6.1.0-18-cloud-amd64 ii \n";
        assert_eq!(missing_from(PackageManager::Apt, &wanted, removed_but_configured), ["gcc"]);
    }

    #[test]
    fn apt_availability() {
        let pm = PackageManager::Apt;
        assert!(available_in(pm, "x", &fixture("apt/policy-headers-available.txt")));
        assert!(available_in(pm, "x", &fixture("apt/policy-headers-installed.txt")));
        assert!(!available_in(pm, "x", &fixture("apt/policy-headers-unknown.txt")));
        assert!(!available_in(pm, "x", &fixture("apt/policy-headers-no-candidate.txt")));
    }

    #[test]
    fn dnf_availability() {
        let pm = PackageManager::Dnf;
        let spec = "kernel-devel-5.14.0-503.14.1.el9_5.x86_64";
        assert!(available_in(pm, spec, &fixture("dnf/repoquery-kernel-devel-found.txt")));
        assert!(!available_in(pm, spec, &fixture("dnf/repoquery-kernel-devel-absent.txt")));
        assert!(!available_in(
            pm,
            "kernel-devel-5.14.0-427.13.1.el9_4.x86_64",
            &fixture("dnf/repoquery-kernel-devel-found.txt")
        ));
        assert_eq!(strip_epoch("gcc-0:11.4.1-3.el9.x86_64"), "gcc-11.4.1-3.el9.x86_64");
    }

    #[test]
    fn el_kernels_name_their_point_release() {
        // AlmaLinux 9.5's last kernel, 9.6's first, 10.1's (AlmaLinux atomic-workstation
        // 10.1.20260502.0 lists kernel 6.12.0-124.52.2.el10_1), and the x86_64_v2 build.
        assert_eq!(el_point_release("5.14.0-503.14.1.el9_5.x86_64"), Some(("9.5".into(), "x86_64".into())));
        assert_eq!(el_point_release("5.14.0-570.12.1.el9_6.aarch64"), Some(("9.6".into(), "aarch64".into())));
        assert_eq!(el_point_release("6.12.0-124.52.2.el10_1.x86_64"), Some(("10.1".into(), "x86_64".into())));
        assert_eq!(el_point_release("6.12.0-124.52.2.el10_1.x86_64_v2"), Some(("10.1".into(), "x86_64_v2".into())));
        // CentOS Stream (no point release) and Debian kernels have no vault.
        assert_eq!(el_point_release("6.12.0-55.el10.x86_64"), None);
        assert_eq!(el_point_release("6.1.0-28-cloud-amd64"), None);
        assert_eq!(
            vault_appstream("5.14.0-503.14.1.el9_5.x86_64").unwrap(),
            "https://vault.almalinux.org/9.5/AppStream/x86_64/os/"
        );
        assert_eq!(
            vault_appstream("6.12.0-124.52.2.el10_1.x86_64_v2").unwrap(),
            "https://vault.almalinux.org/10.1/AppStream/x86_64_v2/os/"
        );
    }

    #[test]
    fn headers_gone_from_the_mirrors_come_from_the_vault() {
        let k = "5.14.0-503.14.1.el9_5.x86_64";
        let pm = PackageManager::Dnf;
        // The mirrors (current point release 9.6 or later) no longer have 9.5's headers...
        assert!(!available_in(pm, &headers_package(pm, k), &fixture("dnf/repoquery-kernel-devel-absent.txt")));
        // ...the vault has them.
        assert_eq!(
            vault_query(k).unwrap().display(),
            "dnf -q repoquery --repofrompath=almavmm-vault,https://vault.almalinux.org/9.5/AppStream/x86_64/os/ \
             --setopt=almavmm-vault.gpgcheck=1 --setopt=almavmm-vault.gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AlmaLinux-9 \
             --repo almavmm-vault kernel-devel-5.14.0-503.14.1.el9_5.x86_64"
        );
        assert!(available_in(pm, &headers_package(pm, k), &fixture("dnf/repoquery-vault-kernel-devel-el9_5.txt")));
        assert_eq!(
            vault_install("6.12.0-124.52.2.el10_1.x86_64").unwrap().display(),
            "dnf install -y --repofrompath=almavmm-vault,https://vault.almalinux.org/10.1/AppStream/x86_64/os/ \
             --setopt=almavmm-vault.gpgcheck=1 --setopt=almavmm-vault.gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AlmaLinux-10 \
             kernel-devel-6.12.0-124.52.2.el10_1.x86_64"
        );
        assert!(vault_install("6.12.0-55.el10.x86_64").is_none());
        // The x86_64_v2 kernel's headers are named after its release like any other.
        assert_eq!(
            build_deps(pm, "6.12.0-124.52.2.el10_1.x86_64_v2")[0],
            "kernel-devel-6.12.0-124.52.2.el10_1.x86_64_v2"
        );
    }

    #[test]
    fn module_compression_needs_its_tool() {
        assert_eq!(module_compressor(&fixture("kernel-config/debian-6.12-cloud.config")), Some("xz"));
        assert_eq!(module_compressor(&fixture("kernel-config/debian-6.1-cloud.config")), None);
        assert_eq!(compressor_package(PackageManager::Apt, "xz"), "xz-utils");
        assert_eq!(compressor_package(PackageManager::Dnf, "xz"), "xz");
        assert_eq!(compressor_package(PackageManager::Apt, "zstd"), "zstd");
    }

    #[test]
    fn kernel_versions_order() {
        use Ordering::*;
        assert_eq!(compare_versions("6.1.0-28-cloud-amd64", "6.1.0-9-cloud-amd64"), Greater);
        assert_eq!(compare_versions("5.14.0-503.14.1.el9_5.x86_64", "5.14.0-427.13.1.el9_4.x86_64"), Greater);
        assert_eq!(compare_versions("6.12.117+deb12-cloud-amd64", "6.1.0-47-cloud-amd64"), Greater);
        assert_eq!(compare_versions("6.1.0-28-cloud-amd64", "6.1.0-28-cloud-amd64"), Equal);
        assert_eq!(compare_versions("6.1", "6.1.0"), Less);
    }

    #[test]
    fn newest_kernel_with_headers() {
        let dir = tempfile::tempdir().unwrap();
        for (k, headers) in
            [("6.1.0-9-cloud-amd64", true), ("6.1.0-28-cloud-amd64", true), ("6.1.0-30-cloud-amd64", false)]
        {
            let d = dir.path().join("lib/modules").join(k);
            std::fs::create_dir_all(d.join("build")).unwrap();
            if headers {
                std::fs::write(d.join("build/Makefile"), "").unwrap();
            }
        }
        let root = SysRoot::new(dir.path());
        assert_eq!(kernels_with_headers(&root), ["6.1.0-28-cloud-amd64", "6.1.0-9-cloud-amd64"]);
        assert!(!headers_present(&root, "6.1.0-30-cloud-amd64"));
    }
}
