//! Where the agent for the seed comes from, in this order (also in `up --help` and the
//! README): `--agent PATH`; `$ALMAVMM_AGENT`; `almavmm-agent` next to the almavmm-host
//! binary; `../libexec/almavmm/almavmm-agent` relative to it (the release tree); the data
//! directory (`$ALMAVMM_HOME/almavmm-agent`); else the agent's source bundle, built in the
//! guest.

use std::path::{Path, PathBuf};

use super::elf;

pub const LOOKUP_ORDER: &str = "--agent PATH, $ALMAVMM_AGENT, almavmm-agent next to almavmm-host, \
../libexec/almavmm/almavmm-agent relative to it, $ALMAVMM_HOME/almavmm-agent, else the source bundle";

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

/// The first candidate that exists. An explicitly named one must exist; a found one must
/// be a static x86-64 ELF file, else it is an error rather than silently skipped (a stale
/// dynamic build next to the host would otherwise be ignored without a word).
pub fn find(candidates: &[Found]) -> Result<Option<(Found, Vec<u8>)>, LocateError> {
    for (i, c) in candidates.iter().enumerate() {
        let explicit = i == 0 && (c.from == "--agent" || c.from == "$ALMAVMM_AGENT");
        let bytes = match std::fs::read(&c.path) {
            Ok(b) => b,
            Err(e) if explicit || e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LocateError::Unusable { path: c.path.clone(), from: c.from, problem: e.to_string() });
            }
            Err(_) => continue,
        };
        elf::check_static_x86_64(&bytes).map_err(|p| LocateError::Unusable {
            path: c.path.clone(),
            from: c.from,
            problem: p.to_string(),
        })?;
        return Ok(Some((c.clone(), bytes)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_dynamic_binary_in_a_default_place_is_reported() {
        let t = tempfile::tempdir().unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), t.path().join("almavmm-agent")).unwrap();
        if cfg!(all(target_os = "linux", not(target_feature = "crt-static"))) {
            let e = find(&candidates(None, None, None, t.path())).unwrap_err().to_string();
            assert!(e.contains("dynamically linked") && e.contains("cargo xtask agent"), "{e}");
        }
    }
}
