//! `cargo xtask demo`: the README's first command on a fresh Linux machine. Checks (and, as
//! root on Debian, installs) the system packages, builds or reuses the Debian test image
//! (this machine cannot reach the AlmaLinux mirrors), serves it like a mirror, runs
//! `almavmm-host up demo` on it and prints `doctor`. The guest is left running.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, ensure};
use xshell::{Shell, cmd};

use crate::testimage::{self, Suite};
use crate::util::{Stage, project_root};
use crate::{agent, deps, serve};

const GUEST: &str = "demo";

fn run_host(bin: &PathBuf, args: &[&str]) -> anyhow::Result<std::process::ExitStatus> {
    eprintln!("$ almavmm-host {}", args.join(" "));
    Command::new(bin).args(args).status().with_context(|| format!("cannot run {}", bin.display()))
}

pub fn run(sh: &Shell) -> anyhow::Result<()> {
    {
        let _s = Stage::new("demo: system packages");
        deps::run(sh, deps::DepsArgs { install: true })?;
    }
    let image = {
        let _s = Stage::new("demo: test image");
        testimage::ensure_image(sh, Suite::Bookworm)?
    };
    let agent = {
        let _s = Stage::new("demo: agent");
        agent::build(sh)?
    };
    let bin = {
        let _s = Stage::new("demo: almavmm-host");
        cmd!(sh, "cargo build -q --release -p almavmm-host").run()?;
        project_root().join("target/release/almavmm-host")
    };
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let key = home.join(".ssh/id_ed25519");
    if !key.with_extension("pub").is_file() {
        eprintln!("no SSH key at {}: creating one (ed25519, no passphrase)", key.display());
        std::fs::create_dir_all(home.join(".ssh"))?;
        let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status()?;
        ensure!(st.success(), "ssh-keygen failed");
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
