//! Where host state lives: `$ALMAVMM_HOME`, else `$XDG_DATA_HOME/almavmm`, else
//! `~/.local/share/almavmm`; created mode 0700 because it holds keys and guest disks.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::name::VmName;

/// The state directory and the paths below it.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot tell where to keep state: set ALMAVMM_HOME (or HOME)")]
    NoHome,
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Home {
    /// Resolve from the environment (does not create anything).
    pub fn from_env() -> Result<Home, HomeError> {
        Self::resolve(|k| std::env::var_os(k)).ok_or(HomeError::NoHome)
    }

    fn resolve(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<Home> {
        let nonempty = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let root = nonempty("ALMAVMM_HOME")
            .or_else(|| nonempty("XDG_DATA_HOME").map(|d| d.join("almavmm")))
            .or_else(|| nonempty("HOME").map(|h| h.join(".local/share/almavmm")))?;
        Some(Home { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Downloaded images and prepared bases, keyed by checksum.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }

    pub fn vm_dir(&self, name: &VmName) -> PathBuf {
        self.vms_dir().join(name.as_str())
    }

    /// Create a directory below the state root (and the root itself), mode 0700.
    pub fn ensure_dir(&self, dir: &Path) -> Result<PathBuf, HomeError> {
        for d in [self.root.as_path(), dir] {
            if !d.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)
                    .map_err(|source| HomeError::Create { path: d.to_owned(), source })?;
            }
        }
        // The root may pre-exist with a looser mode (e.g. created by hand); tighten it.
        let _ = fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700));
        Ok(dir.to_owned())
    }

    /// Names of the guests that exist (folders under `vms/` holding a `vm.yaml`).
    pub fn guest_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.vms_dir())
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().join("vm.yaml").is_file())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn precedence_is_almavmm_home_then_xdg_then_home() {
        let all = [("ALMAVMM_HOME", "/a"), ("XDG_DATA_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(Home::resolve(env(&all)).unwrap().root(), Path::new("/a"));
        assert_eq!(Home::resolve(env(&all[1..])).unwrap().root(), Path::new("/x/almavmm"));
        assert_eq!(Home::resolve(env(&all[2..])).unwrap().root(), Path::new("/h/.local/share/almavmm"));
        assert!(Home::resolve(env(&[("ALMAVMM_HOME", "")])).is_none());
    }

    #[test]
    fn dirs_are_private() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path().join("state"));
        let d = home.ensure_dir(&home.images_dir()).unwrap();
        for p in [home.root(), d.as_path()] {
            assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o700, "{}", p.display());
        }
    }
}
