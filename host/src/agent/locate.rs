//! Where the agent for the seed comes from, in this order (also in `up --help` and the
//! README): `--agent PATH`; `$ALMAVMM_AGENT`; `almavmm-agent` next to the almavmm-host
//! binary; `../libexec/almavmm/almavmm-agent` relative to it (the release tree); the data
//! directory (`$ALMAVMM_HOME/almavmm-agent`); else the agent's source bundle, built in the
//! guest: an `agent-src.tar.gz` in one of those three folders, or one made on the spot from
//! the source tree this binary was built from.

use std::path::{Path, PathBuf};

use super::elf;

pub const LOOKUP_ORDER: &str = "--agent PATH, $ALMAVMM_AGENT, almavmm-agent next to almavmm-host, \
../libexec/almavmm/almavmm-agent relative to it, $ALMAVMM_HOME/almavmm-agent, else the source bundle \
(agent-src.tar.gz in one of those folders, or built from the source tree)";

/// File name of the source bundle wherever it is looked for.
pub const BUNDLE_FILE: &str = "agent-src.tar.gz";

/// A candidate and where it was found (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub from: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("the agent {path} ({from}) cannot be used: {problem}; build one with `cargo xtask agent`")]
    Unusable { path: PathBuf, from: &'static str, problem: String },
}

/// The candidate paths, in lookup order, for a given environment.
pub fn candidates(
    explicit: Option<&Path>,
    env_agent: Option<PathBuf>,
    exe: Option<&Path>,
    data_dir: &Path,
) -> Vec<Found> {
    let mut c = Vec::new();
    if let Some(p) = explicit {
        c.push(Found { path: p.to_owned(), from: "--agent" });
    }
    if let Some(p) = env_agent.filter(|p| !p.as_os_str().is_empty()) {
        c.push(Found { path: p, from: "$ALMAVMM_AGENT" });
    }
    if let Some(dir) = exe.and_then(Path::parent) {
        c.push(Found { path: dir.join("almavmm-agent"), from: "next to almavmm-host" });
        c.push(Found { path: dir.join("../libexec/almavmm/almavmm-agent"), from: "the release tree's libexec" });
    }
    c.push(Found { path: data_dir.join("almavmm-agent"), from: "the data directory" });
    c
}

/// The first usable candidate. One named explicitly (`--agent`, `$ALMAVMM_AGENT`) must
/// exist and be a static x86-64 ELF file, else it is an error. One found in a default place
/// that cannot be used (a dynamic build next to a development binary, say) is skipped with
/// a warning, so the lookup goes on to the source bundle rather than failing.
pub fn find(candidates: &[Found]) -> Result<Option<(Found, Vec<u8>)>, LocateError> {
    for c in candidates {
        let explicit = c.from == "--agent" || c.from == "$ALMAVMM_AGENT";
        let checked = std::fs::read(&c.path)
            .map_err(|e| (e.kind() == std::io::ErrorKind::NotFound, e.to_string()))
            .and_then(|b| elf::check_static_x86_64(&b).map(|()| b).map_err(|p| (false, p.to_string())));
        match checked {
            Ok(bytes) => return Ok(Some((c.clone(), bytes))),
            Err((_, problem)) if explicit => {
                return Err(LocateError::Unusable { path: c.path.clone(), from: c.from, problem });
            }
            Err((true, _)) => {}
            Err((false, problem)) => {
                tracing::warn!("skipping the agent {} ({}): {problem}", c.path.display(), c.from);
            }
        }
    }
    Ok(None)
}

/// Source bundles ready-made in the default places (next to the binary, the release tree's
/// libexec, the data directory), in that order.
pub fn bundle_candidates(exe: Option<&Path>, data_dir: &Path) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        c.push(dir.join(BUNDLE_FILE));
        c.push(dir.join("../libexec/almavmm").join(BUNDLE_FILE));
    }
    c.push(data_dir.join(BUNDLE_FILE));
    c
}

/// This program's own path, for the lookups relative to it. On OpenBSD `current_exe` is
/// argv[0] (Rust's std, sys/paths/unix.rs: `KERN_PROC_ARGV`), a bare name when the program
/// was run from PATH, which would put `../libexec` below the current folder: such a name
/// is looked up in PATH as the shell did. Symbolic links are resolved, as Linux's
/// /proc/self/exe does, so a link in a bin folder finds the release tree it points into.
pub fn own_exe() -> Option<PathBuf> {
    resolve_exe(std::env::current_exe().ok()?, std::env::var_os("PATH"))
}

fn resolve_exe(exe: PathBuf, path: Option<std::ffi::OsString>) -> Option<PathBuf> {
    let found = if exe.is_absolute() || exe.components().count() > 1 {
        exe
    } else {
        std::env::split_paths(&path?).map(|d| d.join(&exe)).find(|p| p.is_file())?
    };
    Some(found.canonicalize().unwrap_or(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_program_name_is_found_in_path_and_links_are_resolved() {
        let t = tempfile::tempdir().unwrap();
        let (bin, real) = (t.path().join("bin"), t.path().join("opt/bin"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("almavmm-host"), "").unwrap();
        std::os::unix::fs::symlink(real.join("almavmm-host"), bin.join("almavmm-host")).unwrap();
        let path = std::env::join_paths([t.path().join("nowhere"), bin.clone()]).unwrap();
        let want = real.join("almavmm-host").canonicalize().unwrap();
        assert_eq!(resolve_exe("almavmm-host".into(), Some(path.clone())), Some(want.clone()));
        assert_eq!(resolve_exe(bin.join("almavmm-host"), None), Some(want));
        assert_eq!(resolve_exe("almavmm-host".into(), Some(t.path().join("nowhere").into())), None);
        assert_eq!(resolve_exe("/no/such/almavmm-host".into(), None), Some("/no/such/almavmm-host".into()));
    }

    #[test]
    fn order_is_flag_env_beside_libexec_data() {
        let c = candidates(
            Some(Path::new("/a")),
            Some("/e".into()),
            Some(Path::new("/usr/local/bin/almavmm-host")),
            Path::new("/d"),
        );
        let paths: Vec<String> = c.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/a",
                "/e",
                "/usr/local/bin/almavmm-agent",
                "/usr/local/bin/../libexec/almavmm/almavmm-agent",
                "/d/almavmm-agent"
            ]
        );
    }

    #[test]
    fn missing_explicit_agent_is_an_error_but_missing_defaults_are_not() {
        let t = tempfile::tempdir().unwrap();
        let e = find(&candidates(Some(&t.path().join("nope")), None, None, t.path())).unwrap_err();
        assert!(e.to_string().contains("(--agent) cannot be used"), "{e}");
        assert_eq!(find(&candidates(None, None, None, t.path())).unwrap(), None);
    }

    #[test]
    fn a_dynamic_binary_is_refused_when_named_and_skipped_when_found() {
        let t = tempfile::tempdir().unwrap();
        let dynamic = t.path().join("almavmm-agent");
        std::fs::copy(std::env::current_exe().unwrap(), &dynamic).unwrap();
        if cfg!(all(target_os = "linux", not(target_feature = "crt-static"))) {
            let e = find(&candidates(Some(&dynamic), None, None, t.path())).unwrap_err().to_string();
            assert!(e.contains("dynamically linked") && e.contains("cargo xtask agent"), "{e}");
            assert_eq!(find(&candidates(None, None, None, t.path())).unwrap(), None);
        }
    }

    #[test]
    fn bundles_are_looked_for_beside_in_libexec_then_data_dir() {
        let b = bundle_candidates(Some(Path::new("/opt/bin/almavmm-host")), Path::new("/d"));
        assert_eq!(
            b,
            [
                PathBuf::from("/opt/bin/agent-src.tar.gz"),
                PathBuf::from("/opt/bin/../libexec/almavmm/agent-src.tar.gz"),
                PathBuf::from("/d/agent-src.tar.gz")
            ]
        );
    }
}
