//! Helpers every task shares.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// The workspace root (xtask lives one level below it).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// Print a stage header now and its duration when the returned guard drops.
pub struct Stage {
    name: String,
    started: Instant,
}

impl Stage {
    pub fn new(name: impl Into<String>) -> Stage {
        let name = name.into();
        eprintln!("==> {name}");
        Stage { name, started: Instant::now() }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        eprintln!("<== {} ({:.1}s)", self.name, self.started.elapsed().as_secs_f64());
    }
}
