//! The guest agent as the host sees it: finding a binary (or source bundle) to put on the
//! seed, and talking to the installed agent over SSH.

pub mod bundle;
pub mod elf;
pub mod locate;
pub mod remote;

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::state::home::Home;

/// The agent found for a new guest's seed.
#[derive(Debug)]
pub struct ForSeed {
    pub form: Form,
    pub bytes: Vec<u8>,
    /// Where it came from, in words (`up` prints it, `which-agent` answers with it).
    pub desc: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A static Linux binary.
    Binary,
    /// `agent-src.tar.gz`, built in the guest by the bootstrap.
    SourceBundle,
}

/// The agent to carry, by the documented lookup order: a binary from the candidates, else
/// a source bundle beside them, else a bundle made now from the source tree this host was
/// built from.
pub fn for_seed(home: &Home, explicit: Option<&Path>) -> anyhow::Result<ForSeed> {
    let exe = locate::own_exe();
    let cands =
        locate::candidates(explicit, std::env::var_os("ALMAVMM_AGENT").map(PathBuf::from), exe.as_deref(), home.root());
    if let Some((found, bytes)) = locate::find(&cands)? {
        let desc = format!("agent from {} ({})", found.from, found.path.display());
        return Ok(ForSeed { form: Form::Binary, bytes, desc });
    }
    for p in locate::bundle_candidates(exe.as_deref(), home.root()) {
        if let Ok(bytes) = std::fs::read(&p) {
            let desc = format!("agent source bundle {} (built in the guest)", p.display());
            return Ok(ForSeed { form: Form::SourceBundle, bytes, desc });
        }
    }
    let Some(tree) = bundle::own_source_tree() else {
        bail!(
            "no agent to put on the seed (looked for: {}); build one with `cargo xtask agent` and pass --agent PATH, \
             or make a source bundle with `cargo xtask bundle` and put it in {}",
            locate::LOOKUP_ORDER,
            home.root().display()
        );
    };
    let commit = env!("ALMAVMM_GIT_COMMIT");
    let out = home.root().join(format!("agent-src-{}-{commit}.tar.gz", almavmm_shared::VERSION));
    if !out.is_file() || commit == "unknown" {
        eprintln!("no prebuilt agent: making its source bundle from {} (the guest will build it)", tree.display());
        bundle::build(&tree, &out, commit)?;
    }
    let bytes = std::fs::read(&out)?;
    let desc = format!("agent source bundle made from {} (built in the guest)", tree.display());
    Ok(ForSeed { form: Form::SourceBundle, bytes, desc })
}
