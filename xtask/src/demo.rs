//! `cargo xtask demo`: the README's first command on a fresh Linux machine. Checks (and, as
//! root on Debian or Ubuntu, installs) the system packages the demo needs (no more: see
//! `deps`), builds or reuses the Debian test image (this machine cannot reach the AlmaLinux
//! mirrors), serves it like a mirror, runs `almavmm-host up demo` on it and prints `doctor`.
//! The guest is left running.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};

use crate::deps::{self, Purpose};
use crate::e2e::{KEYGEN_LIMIT, build_host, host_limit};
use crate::limited::limited;
use crate::testimage::{self, Suite};
use crate::util::Stage;
use crate::{agent, serve};

const GUEST: &str = "demo";

fn run_host(bin: &Path, args: &[&str]) -> anyhow::Result<std::process::ExitStatus> {
    eprintln!("$ almavmm-host {}", args.join(" "));
    limited(bin, host_limit(args)).args(args).status()
}

pub fn run() -> anyhow::Result<()> {
    {
        let _s = Stage::new("demo: system packages");
        deps::ensure(Purpose::Demo, true)?;
    }
    let image = {
        let _s = Stage::new("demo: test image");
        testimage::ensure_image(Suite::Bookworm)?
    };
    let agent = {
        let _s = Stage::new("demo: agent");
        agent::build()?
    };
    let bin = {
        let _s = Stage::new("demo: almavmm-host");
        build_host(true)?
    };
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let key = home.join(".ssh/id_ed25519");
    if !key.with_extension("pub").is_file() {
        eprintln!("no SSH key at {}: creating one (ed25519, no passphrase)", key.display());
        std::fs::create_dir_all(home.join(".ssh"))?;
        limited("ssh-keygen", KEYGEN_LIMIT).args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).run()?;
    }
    let work = tempfile::tempdir()?;
    let mirror = serve::mirror(work.path(), &image, "debian-12-almavmm-test.qcow2")?;
    let st = run_host(
        &bin,
        &[
            "up",
            GUEST,
            "--image-url",
            &mirror.url,
            "--signing-key",
            &mirror.signing_key.display().to_string(),
            "--signing-key-fingerprint",
            &mirror.fingerprint,
            "--ssh-key",
            &key.with_extension("pub").display().to_string(),
            "--agent",
            &agent.display().to_string(),
            "--memory",
            "1536M",
        ],
    )?;
    ensure!(st.success(), "almavmm-host up failed (see above)");
    drop(mirror);
    run_host(&bin, &["doctor", GUEST])?;
    let b = bin.display();
    println!(
        "\nThe demo guest is running. To log in as a user would:\n\
         \x20 {b} ssh-config          # writes ~/.ssh/config.d/almavmm; add `Include config.d/almavmm` to ~/.ssh/config\n\
         \x20 ssh {GUEST}.almavmm\n\
         Other things to try:\n\
         \x20 {b} status\n\
         \x20 {b} sync {GUEST}\n\
         When you are done:\n\
         \x20 {b} destroy {GUEST} --yes"
    );
    Ok(())
}
