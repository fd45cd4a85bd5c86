//! Undo a widespread but wrong recipe: appending `vmm_clock` to a file in
//! `/etc/systemd/network/` to "load the module at boot". Those files configure network
//! interfaces (systemd.network(5)); networkd ignores the stray line with a warning, and the
//! module never loads. Modules to load belong in `/etc/modules-load.d/`.
//!
//! The repair removes exactly the lines whose only content is `vmm_clock` and keeps every
//! other byte (line endings, a missing final newline, comments) as it was.

use std::io;
use std::path::PathBuf;

use crate::sys::sysroot::SysRoot;

pub const NETWORKD_DIR: &str = "/etc/systemd/network";

/// `text` without its `vmm_clock` lines, and the 1-based numbers of the lines removed;
/// `None` when there is nothing to remove.
pub fn strip_vmm_clock_lines(text: &[u8]) -> Option<(Vec<u8>, Vec<usize>)> {
    let mut out = Vec::with_capacity(text.len());
    let mut removed = Vec::new();
    for (i, line) in text.split_inclusive(|&b| b == b'\n').enumerate() {
        if line.trim_ascii() == b"vmm_clock" {
            removed.push(i + 1);
        } else {
            out.extend_from_slice(line);
        }
    }
    if removed.is_empty() { None } else { Some((out, removed)) }
}

/// One file put right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The guest path (`/etc/systemd/network/…`).
    pub file: String,
    pub lines: Vec<usize>,
}

impl Repair {
    pub fn describe(&self) -> String {
        let lines: Vec<String> = self.lines.iter().map(|l| l.to_string()).collect();
        format!("removed the stray `vmm_clock` line (line {}) from {}", lines.join(", "), self.file)
    }
}

/// Repair every regular file directly in `/etc/systemd/network/`. A missing folder is
/// nothing to repair.
pub fn repair(root: &SysRoot) -> io::Result<Vec<Repair>> {
    let dir = root.path(NETWORKD_DIR);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    };
    files.sort();
    let mut repairs = Vec::new();
    for path in files {
        // symlink_metadata: a link (to /dev/null, say, masking a vendor file) is not ours
        // to rewrite.
        if !std::fs::symlink_metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if let Some((fixed, lines)) = strip_vmm_clock_lines(&bytes) {
            almavmm_shared::atomic::rewrite_keeping_metadata(&path, &fixed)?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            repairs.push(Repair { file: format!("{NETWORKD_DIR}/{name}"), lines });
        }
    }
    Ok(repairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fixtures(tree: &str) -> PathBuf {
        PathBuf::from(format!("{}/tests/fixtures/networkd/{tree}", env!("CARGO_MANIFEST_DIR")))
    }

    /// A root whose /etc/systemd/network holds a copy of the fixture folder.
    fn root_with(tree: &str) -> (tempfile::TempDir, SysRoot) {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("etc/systemd/network");
        std::fs::create_dir_all(&net).unwrap();
        for e in std::fs::read_dir(fixtures(tree)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), net.join(e.file_name())).unwrap();
        }
        let root = SysRoot::new(dir.path());
        (dir, root)
    }

    #[test]
    fn removes_the_appended_line_and_keeps_every_other_byte() {
        let (dir, root) = root_with("with-vmm-line");
        let f = dir.path().join("etc/systemd/network/10-cloud-init-eth0.network");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let repairs = repair(&root).unwrap();
        assert_eq!(
            repairs,
            [
                Repair { file: "/etc/systemd/network/10-cloud-init-eth0.network".into(), lines: vec![8] },
                Repair { file: "/etc/systemd/network/20-virtio.network".into(), lines: vec![3] },
            ]
        );
        // Exactly the file cloud-init wrote before `echo vmm_clock >>` touched it.
        let clean = std::fs::read(fixtures("clean").join("10-cloud-init-eth0.network")).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), clean);
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o640, "mode kept");
        // Comments and settings that merely mention the name stay.
        let other = std::fs::read_to_string(dir.path().join("etc/systemd/network/20-virtio.network")).unwrap();
        assert_eq!(
            other,
            "[Match]\nDriver=virtio_net\n\n[Network]\nDHCP=yes\n# vmm_clock is a module name, not a setting\nvmm_clock_extra=1\n"
        );
        assert_eq!(
            repairs[0].describe(),
            "removed the stray `vmm_clock` line (line 8) from /etc/systemd/network/10-cloud-init-eth0.network"
        );
        // A second run finds nothing.
        assert_eq!(repair(&root).unwrap(), []);
    }

    #[test]
    fn keeps_crlf_and_a_missing_final_newline() {
        let (dir, root) = root_with("crlf-no-final-newline");
        assert_eq!(repair(&root).unwrap().len(), 1);
        let got = std::fs::read(dir.path().join("etc/systemd/network/10-cloud-init-eth1.network")).unwrap();
        assert_eq!(got, b"[Match]\r\nName=eth1\r\n\r\n[Network]\r\nDHCP=ipv4\r\n");
    }

    #[test]
    fn clean_files_are_not_touched() {
        let (dir, root) = root_with("clean");
        let f = dir.path().join("etc/systemd/network/10-cloud-init-eth0.network");
        let before = std::fs::metadata(&f).unwrap().modified().unwrap();
        assert_eq!(repair(&root).unwrap(), []);
        assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), before);
        assert_eq!(std::fs::read_dir(f.parent().unwrap()).unwrap().count(), 1);
    }

    /// On an AlmaLinux-shaped guest NetworkManager owns the network: its files are not
    /// networkd's, and stay byte for byte even when one holds such a line.
    #[test]
    fn networkmanager_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        let keyfile = "[connection]\nid=cloud-init eth0\ntype=ethernet\ninterface-name=eth0\nvmm_clock\n";
        let conf = "[main]\nplugins=keyfile\nvmm_clock\n";
        for (rel, text) in [
            ("/etc/NetworkManager/system-connections/cloud-init-eth0.nmconnection", keyfile),
            ("/etc/NetworkManager/conf.d/99-stray.conf", conf),
        ] {
            std::fs::create_dir_all(root.path(rel).parent().unwrap()).unwrap();
            std::fs::write(root.path(rel), text).unwrap();
        }
        assert!(repair(&root).unwrap().is_empty());
        let read = |rel: &str| std::fs::read_to_string(root.path(rel)).unwrap();
        assert_eq!(read("/etc/NetworkManager/system-connections/cloud-init-eth0.nmconnection"), keyfile);
        assert_eq!(read("/etc/NetworkManager/conf.d/99-stray.conf"), conf);
    }

    #[test]
    fn no_networkd_folder_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(repair(&SysRoot::new(dir.path())).unwrap(), []);
    }
}
