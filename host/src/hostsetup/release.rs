//! The running OpenBSD release, for vmd limits that changed between releases.
//!
//! Disk and cdrom paths in vm.conf: usr.sbin/vmd/vmd.h 1.140 (2025-08-08, OpenBSD 7.8)
//! keeps them in `vmc_disks[VM_MAX_DISKS_PER_VM][PATH_MAX]` and `vmc_cdrom[PATH_MAX]`
//! (1024 with the NUL), and parse.y refuses a longer one ("disk path too long"). Older vmd
//! copied them into vmm(4)'s `vcp_disks[..][VMM_MAX_PATH_DISK]` and `vcp_cdrom[
//! VMM_MAX_PATH_CDROM]` (sys/arch/amd64/include/vmmvar.h; 128 with the NUL; still so in vmd.h
//! 1.101, 2020, OpenBSD 6.8). Which release between 6.8 and 7.8 first took PATH_MAX was not
//! checked: those releases get the old, stricter limit, and the error names it and the
//! release so that a user who knows better can see why.

use almavmm_shared::runner::Cmd;

/// An OpenBSD release as `kern.osrelease` prints it (`7.8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The first release known to take PATH_MAX disk paths (vmd.h 1.140).
pub const PATH_MAX_SINCE: Release = Release { major: 7, minor: 8 };

/// `sysctl -n kern.osrelease` output (`7.8`; anything after the digits, such as a
/// `-current` someone added, is ignored).
pub fn parse(text: &str) -> Option<Release> {
    let t = text.trim();
    let (major, rest) = t.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(Release { major: major.parse().ok()?, minor: minor.parse().ok()? })
}

/// The release this host runs, if `sysctl` says (never on other systems).
pub fn running() -> Option<Release> {
    let out = Cmd::new("sysctl").args(["-n", "kern.osrelease"]).output().ok()?;
    out.status.success().then(|| parse(&out.stdout)).flatten()
}

/// How long a vm.conf disk or cdrom path may be, and where that limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathLimit {
    /// Longest path in bytes, without the NUL.
    pub max: usize,
    /// The limit's name and the release it was taken for, for the error message.
    pub source: &'static str,
}

/// The limit of `release` (the older, stricter one when the release is not known).
pub fn vmd_path_limit(release: Option<Release>) -> PathLimit {
    match release {
        Some(r) if r >= PATH_MAX_SINCE => PathLimit { max: 1023, source: "PATH_MAX, vmd.h of OpenBSD 7.8 and later" },
        Some(_) => PathLimit { max: 127, source: "VMM_MAX_PATH_DISK, OpenBSD before 7.8" },
        None => PathLimit { max: 127, source: "VMM_MAX_PATH_DISK, assumed: the OpenBSD release is not known" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osrelease_is_read_as_printed() {
        assert_eq!(parse("7.8\n"), Some(Release { major: 7, minor: 8 }));
        assert_eq!(parse("6.9"), Some(Release { major: 6, minor: 9 }));
        assert_eq!(parse("7.10-current"), Some(Release { major: 7, minor: 10 }));
        assert_eq!(parse("6.1.0-18-amd64"), Some(Release { major: 6, minor: 1 }));
        assert_eq!(parse("sysctl: unknown oid"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn current_vmd_takes_path_max_and_older_ones_128() {
        assert_eq!(vmd_path_limit(parse("7.8")).max, 1023);
        assert_eq!(vmd_path_limit(parse("8.0")).max, 1023);
        assert_eq!(vmd_path_limit(parse("7.7")).max, 127);
        assert_eq!(vmd_path_limit(parse("6.8")).max, 127);
        let unknown = vmd_path_limit(None);
        assert_eq!(unknown.max, 127);
        assert!(unknown.source.contains("not known"));
    }
}
