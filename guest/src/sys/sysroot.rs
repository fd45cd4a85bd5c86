//! The root every system path is resolved against: `/` in a guest, a fixture tree in tests.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRoot {
    base: PathBuf,
}

impl Default for SysRoot {
    fn default() -> Self {
        SysRoot { base: PathBuf::from("/") }
    }
}

impl SysRoot {
    pub fn new(base: impl Into<PathBuf>) -> SysRoot {
        SysRoot { base: base.into() }
    }

    /// Whether this is the real system (commands then act on the same system as the files).
    pub fn is_host_root(&self) -> bool {
        self.base == Path::new("/")
    }

    /// `abs` (an absolute guest path such as `/etc/os-release`) under this root.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        self.base.join(abs.strip_prefix("/").unwrap_or(abs))
    }

    /// The file's text, or `None` when it does not exist.
    pub fn read_optional(&self, abs: impl AsRef<Path>) -> io::Result<Option<String>> {
        match std::fs::read_to_string(self.path(abs)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The file's text, with the full path in the error.
    pub fn read(&self, abs: impl AsRef<Path>) -> io::Result<String> {
        let path = self.path(abs);
        std::fs::read_to_string(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    pub fn exists(&self, abs: impl AsRef<Path>) -> bool {
        self.path(abs).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_absolute_guest_paths_under_the_base() {
        let r = SysRoot::new("/tmp/tree");
        assert_eq!(r.path("/etc/os-release"), PathBuf::from("/tmp/tree/etc/os-release"));
        assert_eq!(SysRoot::default().path("/etc/os-release"), PathBuf::from("/etc/os-release"));
        assert!(SysRoot::default().is_host_root());
        assert!(!r.is_host_root());
    }
}
