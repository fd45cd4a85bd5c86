//! Stamps the commit into the binary, for `--version` and the health report (see
//! shared/build-support/commit.rs, which the host's build script uses too).

#[path = "../shared/build-support/commit.rs"]
mod commit;

fn main() {
    commit::stamp(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
}
