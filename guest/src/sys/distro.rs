//! Which distribution this is, from `/etc/os-release`, and so which package manager setup
//! uses.

use almavmm_shared::health::{DistroInfo, PackageManager};

use crate::sys::sysroot::SysRoot;

/// The os-release fields setup needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
    pub version_id: String,
    pub pretty_name: String,
}

const DNF_IDS: [&str; 5] = ["almalinux", "rhel", "rocky", "fedora", "centos"];
const APT_IDS: [&str; 2] = ["debian", "ubuntu"];

impl OsRelease {
    /// Parse os-release(5): `KEY=value` lines, values optionally in single or double quotes
    /// (double quotes allow `\"`, `\\`, `\$` and `` \` `` escapes), `#` comments.
    pub fn parse(text: &str) -> OsRelease {
        let mut id = String::new();
        let mut id_like = Vec::new();
        let mut version_id = String::new();
        let mut pretty_name = String::new();
        let mut name = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, raw)) = line.split_once('=') else { continue };
            let value = unquote(raw.trim());
            match key.trim() {
                "ID" => id = value.to_ascii_lowercase(),
                "ID_LIKE" => id_like = value.split_whitespace().map(|w| w.to_ascii_lowercase()).collect(),
                "VERSION_ID" => version_id = value,
                "PRETTY_NAME" => pretty_name = value,
                "NAME" => name = value,
                _ => {}
            }
        }
        if id.is_empty() {
            // os-release(5): "If not set, a default of ID=linux may be used."
            id = "linux".into();
        }
        if pretty_name.is_empty() {
            pretty_name = if name.is_empty() { "Linux".into() } else { name };
        }
        OsRelease { id, id_like, version_id, pretty_name }
    }

    /// Read `/etc/os-release`, falling back to `/usr/lib/os-release` as os-release(5) says.
    pub fn read(root: &SysRoot) -> std::io::Result<OsRelease> {
        match root.read_optional("/etc/os-release")? {
            Some(text) => Ok(OsRelease::parse(&text)),
            None => root.read("/usr/lib/os-release").map(|t| OsRelease::parse(&t)),
        }
    }

    /// dnf for AlmaLinux, RHEL, Rocky, Fedora (and CentOS); apt for Debian and Ubuntu; a
    /// derivative that names one of those in `ID_LIKE` gets its parent's.
    pub fn package_manager(&self) -> Option<PackageManager> {
        let family = |id: &str| {
            if DNF_IDS.contains(&id) {
                Some(PackageManager::Dnf)
            } else if APT_IDS.contains(&id) {
                Some(PackageManager::Apt)
            } else {
                None
            }
        };
        family(&self.id).or_else(|| self.id_like.iter().find_map(|like| family(like)))
    }

    pub fn is_ubuntu(&self) -> bool {
        self.id == "ubuntu" || self.id_like.iter().any(|l| l == "ubuntu")
    }

    pub fn info(&self) -> DistroInfo {
        DistroInfo {
            id: self.id.clone(),
            version_id: self.version_id.clone(),
            pretty_name: self.pretty_name.clone(),
            package_manager: self.package_manager(),
        }
    }

    /// One line for setup's record.
    pub fn describe(&self) -> String {
        match self.package_manager() {
            Some(pm) => {
                let pm = match pm {
                    PackageManager::Dnf => "dnf",
                    PackageManager::Apt => "apt",
                };
                let via = if DNF_IDS.contains(&self.id.as_str()) || APT_IDS.contains(&self.id.as_str()) {
                    String::new()
                } else {
                    format!(" (ID_LIKE={})", self.id_like.join(" "))
                };
                format!("{} (ID={}): packages with {pm}{via}", self.pretty_name, self.id)
            }
            None => format!(
                "{} (ID={}) is not a supported distribution (AlmaLinux, RHEL, Rocky, Fedora, Debian, Ubuntu): \
                 steps that install packages are skipped",
                self.pretty_name, self.id
            ),
        }
    }
}

fn unquote(raw: &str) -> String {
    let bytes = raw.as_bytes();
    if bytes.len() >= 2 && bytes[0] == b'\'' && bytes[bytes.len() - 1] == b'\'' {
        return raw[1..raw.len() - 1].to_string();
    }
    if bytes.len() >= 2 && bytes[0] == b'"' && bytes[bytes.len() - 1] == b'"' {
        let inner = &raw[1..raw.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                    Some(other) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    raw.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> OsRelease {
        let path = format!("{}/tests/fixtures/os-release/{name}", env!("CARGO_MANIFEST_DIR"));
        OsRelease::parse(&std::fs::read_to_string(path).unwrap())
    }

    #[test]
    fn almalinux_9_and_10_use_dnf() {
        let a9 = fixture("almalinux-9.6");
        assert_eq!(a9.id, "almalinux");
        assert_eq!(a9.version_id, "9.6");
        assert_eq!(a9.pretty_name, "AlmaLinux 9.6 (Sage Margay)");
        assert_eq!(a9.package_manager(), Some(PackageManager::Dnf));
        let a10 = fixture("almalinux-10.0");
        assert_eq!(a10.version_id, "10.0");
        assert_eq!(a10.id_like, ["rhel", "centos", "fedora"]);
        assert_eq!(a10.package_manager(), Some(PackageManager::Dnf));
        assert_eq!(a10.describe(), "AlmaLinux 10.0 (Purple Lion) (ID=almalinux): packages with dnf");
    }

    #[test]
    fn rocky_uses_dnf() {
        let r = fixture("rocky-9.6");
        assert_eq!(r.id, "rocky");
        assert_eq!(r.package_manager(), Some(PackageManager::Dnf));
    }

    #[test]
    fn debian_and_ubuntu_use_apt() {
        let d = fixture("debian-12");
        assert_eq!((d.id.as_str(), d.version_id.as_str()), ("debian", "12"));
        assert_eq!(d.package_manager(), Some(PackageManager::Apt));
        assert!(!d.is_ubuntu());
        let u = fixture("ubuntu-24.04");
        assert_eq!(u.id, "ubuntu");
        assert_eq!(u.pretty_name, "Ubuntu 24.04.1 LTS");
        assert_eq!(u.package_manager(), Some(PackageManager::Apt));
        assert!(u.is_ubuntu());
    }

    #[test]
    fn others_are_named_and_get_no_package_manager() {
        let a = fixture("arch");
        assert_eq!(a.package_manager(), None);
        let d = a.describe();
        assert!(d.starts_with("Arch Linux (ID=arch) is not a supported distribution"), "{d}");
    }

    #[test]
    fn derivatives_follow_id_like() {
        let mint = OsRelease::parse("NAME=\"Linux Mint\"\nID=linuxmint\nID_LIKE=\"ubuntu debian\"\n");
        assert_eq!(mint.package_manager(), Some(PackageManager::Apt));
        assert!(mint.describe().contains("(ID_LIKE=ubuntu debian)"));
    }

    #[test]
    fn quoting_rules() {
        let r = OsRelease::parse("# c\nPRETTY_NAME='single $x'\nID=\"a\\\"b\\\\c\"\nVERSION_ID=7\n");
        assert_eq!(r.pretty_name, "single $x");
        assert_eq!(r.id, "a\"b\\c");
        assert_eq!(r.version_id, "7");
        assert_eq!(OsRelease::parse("").id, "linux");
    }

    #[test]
    fn reads_etc_then_usr_lib() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        std::fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        std::fs::write(dir.path().join("usr/lib/os-release"), "ID=fedora\n").unwrap();
        assert_eq!(OsRelease::read(&root).unwrap().id, "fedora");
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/os-release"), "ID=debian\n").unwrap();
        assert_eq!(OsRelease::read(&root).unwrap().id, "debian");
    }
}
