//! `cargo xtask dist`: a release tree in `target/dist/`, laid out like a /usr/local install
//! (hier(7)), so it can be copied or unpacked into any prefix:
//!
//! ```text
//! bin/almavmm-host
//! libexec/almavmm/almavmm-agent                 static Linux binary (or agent-src.tar.gz,
//!                                               the source bundle, where none can be built)
//! man/man1/almavmm-host.1, man/man8/almavmm-agent.8
//! share/bash-completion/completions/almavmm-host
//! share/zsh/site-functions/_almavmm-host
//! share/fish/vendor_completions.d/almavmm-host.fish
//! share/almavmm/almavmm-host.ksh                OpenBSD ksh(1) completion word lists
//! share/examples/almavmm/ssh_config, apm-resume, pf.conf
//! ```
//!
//! Then it checks what it built: `mandoc -Tlint` on both pages (nothing at warning level or
//! above), and the tree copied into an empty prefix runs `bin/almavmm-host --version` and,
//! through `up`'s own lookup (the hidden `which-agent` command), finds its agent in
//! `../libexec/almavmm/`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Command;
use clap_complete::Shell as CompletionShell;

use crate::limited::limited;
use crate::man;
use crate::util::{Stage, project_root};

/// A cold release build of the host on two cores: a few minutes (or a wait for another
/// cargo's lock).
const CARGO_LIMIT: Duration = Duration::from_secs(30 * 60);
/// git, mandoc, and the installed binaries' quick answers.
const QUICK_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct DistArgs {}

/// Which cargo profile the tree's host binary comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostProfile {
    /// `cargo xtask dist`: what a user installs.
    Release,
    /// `cargo xtask test`: the test stage has just built this one, and what the check proves
    /// (layout, pages, lookup from the prefix) does not depend on the optimiser, while a cold
    /// release build of the host costs about 165 s of a CI run on two cores.
    Dev,
}

/// The agent the tree carries.
#[derive(Debug, Clone)]
pub enum Agent {
    Binary(PathBuf),
    /// The source bundle, for hosts that cannot build a Linux binary.
    Bundle(PathBuf),
}

impl Agent {
    fn file_name(&self) -> &'static str {
        match self {
            Agent::Binary(_) => "almavmm-agent",
            Agent::Bundle(_) => almavmm_host::agent::locate::BUNDLE_FILE,
        }
    }
}

/// What goes into the tree.
#[derive(Debug)]
pub struct Inputs {
    pub host: PathBuf,
    pub agent: Agent,
    /// For the pages' `.Dd`.
    pub date: String,
}

/// Example guest for the files in share/examples (a user called alice, as in the tests).
const EXAMPLE_USER: &str = "alice";
const EXAMPLE_HOME: &str = "/home/alice";
const INSTALLED_HOST: &str = "/usr/local/bin/almavmm-host";

/// Every file of the tree, relative to its top, for an agent of this kind.
pub fn layout(agent: &Agent) -> Vec<String> {
    let mut files = vec![
        "bin/almavmm-host".to_string(),
        format!("libexec/almavmm/{}", agent.file_name()),
        "man/man1/almavmm-host.1".into(),
        "man/man8/almavmm-agent.8".into(),
        "share/bash-completion/completions/almavmm-host".into(),
        "share/zsh/site-functions/_almavmm-host".into(),
        "share/fish/vendor_completions.d/almavmm-host.fish".into(),
        "share/almavmm/almavmm-host.ksh".into(),
    ];
    files.extend(["ssh_config", "apm-resume", "pf.conf"].map(|f| format!("share/examples/almavmm/{f}")));
    files
}

pub fn run(_args: DistArgs) -> anyhow::Result<()> {
    build_and_check(HostProfile::Release)
}

/// Build the tree into `target/dist/` and check it, with the host binary from `profile`.
pub fn build_and_check(profile: HostProfile) -> anyhow::Result<()> {
    let _all = Stage::new("dist");
    let host = build_host(profile)?;
    let agent = build_agent()?;
    let out = project_root().join("target/dist");
    let inputs = Inputs { host, agent, date: man::date() };
    {
        let _s = Stage::new(format!("dist: writing {}", out.display()));
        write_tree(&out, &inputs)?;
    }
    {
        let _s = Stage::new("dist: every file there, every command and option on the pages");
        let mut want = layout(&inputs.agent);
        want.sort();
        let have: Vec<String> = walk(&out)?.iter().map(|p| p.display().to_string()).collect();
        ensure!(have == want, "the tree holds {have:?}, not {want:?}");
        for (cmd, page) in
            [(man::host_command(), "man/man1/almavmm-host.1"), (man::agent_command(), "man/man8/almavmm-agent.8")]
        {
            let missing = man::missing_from(cmd, &fs::read_to_string(out.join(page))?);
            ensure!(missing.is_empty(), "{page} lacks {}", missing.join(", "));
        }
    }
    {
        let _s = Stage::new("dist: mandoc -Tlint on both pages");
        ensure!(have("mandoc"), "mandoc is not installed: `cargo xtask deps --install` (Debian package mandoc)");
        for page in ["man/man1/almavmm-host.1", "man/man8/almavmm-agent.8"] {
            let findings = lint(&out.join(page))?;
            ensure!(findings.is_empty(), "mandoc -Tlint on {page}:\n{}", findings.join("\n"));
        }
    }
    {
        let _s = Stage::new("dist: the tree in an empty prefix");
        check_unpacked(&out, &inputs.agent)?;
    }
    print_listing(&out)?;
    Ok(())
}

fn build_host(profile: HostProfile) -> anyhow::Result<PathBuf> {
    // Cargo names the dev profile's folder `debug`.
    let (name, dir) = match profile {
        HostProfile::Release => ("release", "release"),
        HostProfile::Dev => ("dev", "debug"),
    };
    let _s = Stage::new(format!("dist: cargo build --profile {name} -p almavmm-host"));
    limited("cargo", CARGO_LIMIT)
        .args(["build", "--profile", name, "--locked", "-p", "almavmm-host"])
        .run_inherited()
        .context("building almavmm-host")?;
    let bin = crate::agent::target_dir().join(dir).join("almavmm-host");
    ensure!(bin.is_file(), "cargo finished but {} is not there", bin.display());
    Ok(bin)
}

/// A static x86-64 Linux agent where this machine can build one; elsewhere (an OpenBSD
/// host, say) the source bundle, which the guest builds itself.
fn build_agent() -> anyhow::Result<Agent> {
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        Ok(Agent::Binary(crate::agent::build()?))
    } else {
        let _s = Stage::new("dist: no Linux build here, so the agent's source bundle");
        Ok(Agent::Bundle(crate::bundle::build()?))
    }
}

/// Write the tree to `out`: built in a sibling folder, then put in place, so a failure
/// leaves the previous tree (or none) rather than half of one.
pub fn write_tree(out: &Path, inputs: &Inputs) -> anyhow::Result<()> {
    let parent = out.parent().context("the output folder has no parent")?;
    fs::create_dir_all(parent)?;
    let stage = tempfile::Builder::new().prefix(".dist.").tempdir_in(parent)?;
    let top = stage.path();
    let put = |rel: &str, bytes: &[u8], mode: u32| -> anyhow::Result<()> {
        let p = top.join(rel);
        fs::create_dir_all(p.parent().expect("relative paths have a parent"))?;
        fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    put("bin/almavmm-host", &read(&inputs.host)?, 0o755)?;
    match &inputs.agent {
        Agent::Binary(p) => put("libexec/almavmm/almavmm-agent", &read(p)?, 0o755)?,
        Agent::Bundle(p) => put(&format!("libexec/almavmm/{}", inputs.agent.file_name()), &read(p)?, 0o644)?,
    }
    for page in man::pages(&inputs.date) {
        put(&format!("man/man{}/{}", page.section, page.file_name()), page.text.as_bytes(), 0o644)?;
    }
    for (shell, rel) in [
        (CompletionShell::Bash, "share/bash-completion/completions/almavmm-host"),
        (CompletionShell::Zsh, "share/zsh/site-functions/_almavmm-host"),
        (CompletionShell::Fish, "share/fish/vendor_completions.d/almavmm-host.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut without_hidden(&man::host_command()), "almavmm-host", &mut buf);
        put(rel, &buf, 0o644)?;
    }
    put("share/almavmm/almavmm-host.ksh", ksh_completion(man::host_command()).as_bytes(), 0o644)?;
    put("share/examples/almavmm/ssh_config", example_ssh_config().as_bytes(), 0o644)?;
    put("share/examples/almavmm/apm-resume", example_apm_resume().as_bytes(), 0o755)?;
    put("share/examples/almavmm/pf.conf", example_pf_anchor().as_bytes(), 0o644)?;
    // Folders readable by all, like the files (the staging folder starts private).
    for file in walk(top)? {
        for dir in file.ancestors().skip(1) {
            fs::set_permissions(top.join(dir), fs::Permissions::from_mode(0o755))?;
        }
    }
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("removing the old {}", out.display()))?;
    }
    fs::rename(stage.keep(), out).with_context(|| format!("moving the new tree to {}", out.display()))?;
    Ok(())
}

/// Files below `dir`, relative to it, sorted.
pub fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).expect("below dir").to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `cmd` without its hidden subcommands, which clap_complete would offer (it skips hidden
/// arguments, not hidden commands). Names, help, arguments and versions are all the
/// completion scripts use.
fn without_hidden(cmd: &Command) -> Command {
    // clap takes names as `&'static str` (its `string` feature is off); this runs once.
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let mut c = Command::new(leak(cmd.get_name())).args(cmd.get_arguments().cloned());
    if let Some(about) = cmd.get_about() {
        c = c.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        c = c.version(leak(version));
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        c = c.subcommand(without_hidden(sub));
    }
    c
}

/// OpenBSD ksh(1) completes a command's arguments from arrays named `complete_CMD_N` (the
/// N-th argument) or `complete_CMD` (any), filled when the file is sourced. It only does so
/// for command names of letters, digits and `_` (bin/ksh/edit.c, x_try_array), so the file
/// names an alias, `almavmm_host`, for `almavmm-host`.
pub fn ksh_completion(mut cmd: Command) -> String {
    cmd.build();
    let visible = |c: &Command| {
        c.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| s.get_name().to_string()).collect::<Vec<_>>()
    };
    let mut flags = std::collections::BTreeSet::new();
    fn collect(c: &Command, flags: &mut std::collections::BTreeSet<String>) {
        for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(l) = a.get_long() {
                flags.insert(format!("--{l}"));
            }
        }
        for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            collect(s, flags);
        }
    }
    collect(&cmd, &mut flags);
    let mut second: Vec<String> = Vec::new();
    for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        for n in visible(s) {
            if !second.contains(&n) {
                second.push(n);
            }
        }
    }
    let flags: Vec<String> = flags.into_iter().collect();
    let guests = "$(ls \"${ALMAVMM_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/almavmm}/vms\" 2>/dev/null)";
    format!(
        "# almavmm-host completion for OpenBSD ksh(1), generated by `cargo xtask dist`.\n\
         # Source it from ~/.kshrc:\n\
         #     . /usr/local/share/almavmm/almavmm-host.ksh\n\
         # ksh completes from complete_* arrays only for command names made of letters,\n\
         # digits and '_', so completion works when you type `almavmm_host`, an alias.\n\
         # Guest names are read when this file is sourced.\n\
         alias almavmm_host=almavmm-host\n\
         set -A complete_almavmm_host_1 -- {first}\n\
         set -A complete_almavmm_host_2 -- {second} {flags} {guests}\n\
         set -A complete_almavmm_host -- {flags} {guests}\n",
        first = visible(&cmd).join(" "),
        second = second.join(" "),
        flags = flags.join(" "),
    )
}

fn example_header(what: &str) -> String {
    what.lines().map(|l| if l.is_empty() { "#\n".to_string() } else { format!("# {l}\n") }).collect()
}

/// What `almavmm-host ssh-config` writes for one guest, `alma`, of the example user.
pub fn example_ssh_config() -> String {
    use almavmm_host::ssh::config::{Entry, proxy_command, render};
    let guest = Path::new(EXAMPLE_HOME).join(".local/share/almavmm/vms/alma");
    let entry = Entry {
        name: "alma".into(),
        user: "almalinux".into(),
        known_hosts: guest.join("known_hosts"),
        identity: Path::new(EXAMPLE_HOME).join(".ssh/id_ed25519"),
    };
    let header = example_header(&format!(
        "Example: what `almavmm-host ssh-config` writes to ~/.ssh/config.d/almavmm for\n\
         the user {EXAMPLE_USER} with one guest, alma. Run that command rather than copying this.\n"
    ));
    format!("{header}{}", render(&[entry], &proxy_command(Path::new(INSTALLED_HOST), None)))
}

/// /etc/apm/resume as `almavmm-host host install-resume-hook` writes it when there is none.
pub fn example_apm_resume() -> String {
    use almavmm_host::hostsetup::resume::{hook_line, with_hook};
    let line = hook_line(EXAMPLE_USER, INSTALLED_HOST, &format!("{EXAMPLE_HOME}/.local/share/almavmm"));
    let script = with_hook(None, &line);
    let (shebang, rest) = script.split_once('\n').unwrap_or((&script, ""));
    let header = example_header(&format!(
        "Example /etc/apm/resume: apmd(8) runs it after the host resumes, and this line\n\
         steps the clocks of {EXAMPLE_USER}'s running guests to the host's time.\n\
         `almavmm-host host install-resume-hook` adds it for you.\n"
    ));
    format!("{shebang}\n{header}{rest}")
}

/// The pf anchor `almavmm-host host setup` writes to /etc/almavmm/pf.conf, for vm.conf's
/// default local prefix, and the lines it adds to /etc/pf.conf.
pub fn example_pf_anchor() -> String {
    use almavmm_host::hostsetup::pf::{ANCHOR_FILE, render_anchor, with_hook};
    use almavmm_host::hostsetup::vmconf::DEFAULT_PREFIX;
    // A documentation address (RFC 5737) where the host's own name server goes.
    let dns = std::net::Ipv4Addr::new(192, 0, 2, 53);
    let hook: String = with_hook("").lines().filter(|l| !l.trim().is_empty()).map(|l| format!("    {l}\n")).collect();
    let header = example_header(&format!(
        "Example {ANCHOR_FILE}, as `almavmm-host host setup` writes it for vm.conf's\n\
         default local prefix, {DEFAULT_PREFIX}, with {dns} standing for the first name server\n\
         in /etc/resolv.conf. The same command adds these lines to /etc/pf.conf:\n\n{hook}\n"
    ));
    format!("{header}{}", render_anchor(DEFAULT_PREFIX, Some(dns)))
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// `mandoc -Tlint` findings at warning level or above (mandoc(1): -W warning), one per line.
pub fn lint(page: &Path) -> anyhow::Result<Vec<String>> {
    let out = limited("mandoc", QUICK_LIMIT)
        .args(["-Tlint", "-W", "warning"])
        .arg(page)
        .output()
        .context("running mandoc (install it with `cargo xtask deps --install`)")?;
    let text = format!("{}{}", out.stdout, out.stderr);
    let findings: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    // mandoc exits 0 when it had nothing to say at that level, 2 for warnings and worse
    // (mandoc(1), EXIT STATUS); anything else is a failure to run at all.
    if !matches!(out.status.code(), Some(0..=4)) {
        bail!("mandoc -Tlint {} failed ({}): {text}", page.display(), out.status);
    }
    Ok(findings)
}

/// Copy the tree into an empty prefix and run it from there: `--version`, and the agent
/// lookup `up` does, by absolute path and by name through PATH.
fn check_unpacked(tree: &Path, agent: &Agent) -> anyhow::Result<()> {
    let prefix = tempfile::Builder::new().prefix("almavmm-prefix.").tempdir()?;
    let state = tempfile::Builder::new().prefix("almavmm-home.").tempdir()?;
    copy_tree(tree, prefix.path())?;
    let host = prefix.path().join("bin/almavmm-host");
    let commit = limited("git", QUICK_LIMIT)
        .args(["rev-parse", "--short=12", "HEAD"])
        .run()
        .ok()
        .map(|o| o.stdout.trim().to_string());
    // From a folder with nothing in it, with no agent named in the environment.
    let elsewhere = tempfile::tempdir()?;
    let run = |program: &Path, args: &[&str], path_var: Option<&Path>| -> anyhow::Result<String> {
        let mut c = limited(program, QUICK_LIMIT)
            .args(args)
            .current_dir(elsewhere.path())
            .env("ALMAVMM_HOME", state.path())
            .env("NO_COLOR", "1")
            .env_remove("ALMAVMM_AGENT");
        if let Some(p) = path_var {
            c = c.env("PATH", p);
        }
        Ok(c.run()?.stdout.trim().to_string())
    };
    let version = run(&host, &["--version"], None)?;
    check_version(&version, "almavmm-host", commit.as_deref())?;
    eprintln!("dist: {version}");
    let expected = prefix.path().join("libexec/almavmm").join(agent.file_name()).canonicalize()?;
    let bin_dir = prefix.path().join("bin");
    for (program, path_var) in [(host.clone(), None), (PathBuf::from("almavmm-host"), Some(bin_dir.as_path()))] {
        let said = run(&program, &["which-agent"], path_var)?;
        ensure!(
            names_path(&said, &expected),
            "run as {}, almavmm-host does not find the agent in its tree ({}): it says {said:?}",
            program.display(),
            expected.display()
        );
        eprintln!("dist: {} which-agent: {said}", program.display());
    }
    if let Agent::Binary(_) = agent
        && cfg!(all(target_os = "linux", target_arch = "x86_64"))
    {
        let agent_version = run(&expected, &["--version"], None)?;
        check_version(&agent_version, "almavmm-agent", commit.as_deref())?;
        eprintln!("dist: {agent_version}");
    }
    Ok(())
}

/// Whether a message (`agent from … (PATH)`, `agent source bundle PATH (…)`) names `path`.
fn names_path(message: &str, path: &Path) -> bool {
    message
        .split_whitespace()
        .map(|w| w.trim_matches(|c| matches!(c, '(' | ')' | ',')))
        .filter(|w| w.starts_with('/'))
        .any(|w| Path::new(w).canonicalize().is_ok_and(|p| p == path))
}

/// `NAME VERSION (COMMIT)`, with this workspace's version and, when known, this commit.
fn check_version(line: &str, name: &str, commit: Option<&str>) -> anyhow::Result<()> {
    let want = format!("{name} {} (", almavmm_shared::VERSION);
    let got = line.strip_prefix(&want).and_then(|r| r.strip_suffix(')'));
    let Some(got) = got.filter(|c| *c == "unknown" || c.len() >= 7 && c.chars().all(|c| c.is_ascii_hexdigit())) else {
        bail!("{name} --version printed {line:?}, not `{want}COMMIT)`")
    };
    if let Some(c) = commit {
        ensure!(got == c, "{name} --version names commit {got}, but this is {c}");
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    for rel in walk(from)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        fs::create_dir_all(dst.parent().expect("relative paths have a parent"))?;
        fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(())
}

fn print_listing(tree: &Path) -> anyhow::Result<()> {
    println!("{}:", tree.display());
    for rel in walk(tree)? {
        let meta = fs::metadata(tree.join(&rel))?;
        println!("  {:o} {:>10}  {}", meta.permissions().mode() & 0o777, meta.len(), rel.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree from stub binaries (a full release build is too slow for a unit test;
    /// `cargo xtask dist` builds and checks the real one).
    fn tree(agent: Agent) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host-stub");
        fs::write(&host, "#!/bin/sh\n").unwrap();
        let agent = match agent {
            Agent::Binary(_) => {
                fs::write(t.path().join("agent-stub"), "agent").unwrap();
                Agent::Binary(t.path().join("agent-stub"))
            }
            Agent::Bundle(_) => {
                fs::write(t.path().join("bundle-stub"), "tgz").unwrap();
                Agent::Bundle(t.path().join("bundle-stub"))
            }
        };
        let out = t.path().join("dist");
        write_tree(&out, &Inputs { host, agent, date: "November 26, 2026".into() }).unwrap();
        (t, out)
    }

    #[test]
    fn the_tree_has_every_file_and_nothing_else() {
        for agent in [Agent::Binary(PathBuf::new()), Agent::Bundle(PathBuf::new())] {
            let (_t, out) = tree(agent.clone());
            let files: Vec<String> = walk(&out).unwrap().iter().map(|p| p.display().to_string()).collect();
            let mut want = layout(&agent);
            want.sort();
            assert_eq!(files, want);
            let mode = |rel: &str| fs::metadata(out.join(rel)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("bin/almavmm-host"), 0o755);
            assert_eq!(
                mode(&format!("libexec/almavmm/{}", agent.file_name())),
                if matches!(agent, Agent::Binary(_)) { 0o755 } else { 0o644 }
            );
            assert_eq!(mode("man/man1/almavmm-host.1"), 0o644);
            assert!(
                fs::read_to_string(out.join("man/man8/almavmm-agent.8"))
                    .unwrap()
                    .starts_with(".Dd November 26, 2026\n.Dt ALMAVMM-AGENT 8\n")
            );
        }
    }

    #[test]
    fn a_second_run_replaces_the_tree_whole() {
        let (t, out) = tree(Agent::Bundle(PathBuf::new()));
        fs::write(out.join("stale"), "x").unwrap();
        fs::write(t.path().join("a"), "agent").unwrap();
        write_tree(
            &out,
            &Inputs { host: t.path().join("host-stub"), agent: Agent::Binary(t.path().join("a")), date: "x".into() },
        )
        .unwrap();
        assert!(!out.join("stale").exists() && !out.join("libexec/almavmm/agent-src.tar.gz").exists());
        assert_eq!(fs::read(out.join("libexec/almavmm/almavmm-agent")).unwrap(), b"agent");
        let leftovers: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".dist."))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn completions_name_the_commands_and_flags() {
        let (_t, out) = tree(Agent::Bundle(PathBuf::new()));
        let read = |rel: &str| fs::read_to_string(out.join(rel)).unwrap();
        for rel in [
            "share/bash-completion/completions/almavmm-host",
            "share/zsh/site-functions/_almavmm-host",
            "share/fish/vendor_completions.d/almavmm-host.fish",
        ] {
            let text = read(rel);
            assert!(
                text.contains("ssh-config")
                    && text.contains("install-resume-hook")
                    && text.contains("insecure-skip-verify"),
                "{rel}"
            );
            assert!(!text.contains("proxy-reaper") && !text.contains("which-agent"), "{rel} lists a hidden command");
        }
        let ksh = read("share/almavmm/almavmm-host.ksh");
        let first = ksh.lines().find(|l| l.starts_with("set -A complete_almavmm_host_1 -- ")).unwrap();
        assert_eq!(
            first,
            "set -A complete_almavmm_host_1 -- up start stop status destroy console doctor sync host ssh-config ssh-proxy seed image help"
        );
        let second = ksh.lines().find(|l| l.starts_with("set -A complete_almavmm_host_2 -- ")).unwrap();
        for w in ["setup", "install-resume-hook", "fetch", "inspect", "prepare", "--memory", "--all"] {
            assert!(second.split_whitespace().any(|x| x == w), "{w} not in {second}");
        }
        assert!(ksh.contains("alias almavmm_host=almavmm-host\n"));
    }

    #[test]
    fn ksh_reads_the_completion_file() {
        // ksh93 or mksh where installed; OpenBSD's ksh is a pdksh too, with the same
        // `set -A` and alias syntax.
        let Some(ksh) = ["ksh", "mksh", "ksh93"].into_iter().find(|s| have(s)) else {
            eprintln!("no ksh here; skipping the syntax check");
            return;
        };
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("vms/alma")).unwrap();
        let file = t.path().join("c.ksh");
        fs::write(&file, ksh_completion(man::host_command())).unwrap();
        let out = limited(ksh, QUICK_LIMIT)
            .arg("-c")
            .arg(format!(". {}; echo ${{complete_almavmm_host_1[0]}} ${{#complete_almavmm_host_2[*]}}; for w in ${{complete_almavmm_host[*]}}; do [ $w = alma ] && echo guest; done", file.display()))
            .env("ALMAVMM_HOME", t.path())
            .output()
            .unwrap();
        let said = &out.stdout;
        assert!(
            out.status.success() && said.starts_with("up ") && said.trim_end().ends_with("guest"),
            "{said}{}",
            out.stderr
        );
    }

    #[test]
    fn examples_are_what_the_host_would_write() {
        let ssh = example_ssh_config();
        assert!(
            ssh.contains("Host alma.almavmm\n")
                && ssh.contains("ProxyCommand /usr/local/bin/almavmm-host ssh-proxy --idle 0 %h %p\n"),
            "{ssh}"
        );
        assert!(ssh.contains("UserKnownHostsFile /home/alice/.local/share/almavmm/vms/alma/known_hosts\n"));
        let resume = example_apm_resume();
        assert!(resume.starts_with("#!/bin/sh\n# Example /etc/apm/resume"), "{resume}");
        assert!(almavmm_host::hostsetup::resume::installed(&resume), "{resume}");
        let pf = example_pf_anchor();
        assert!(pf.contains("match out on egress from 100.64.0.0/10 to any nat-to (egress)\n"), "{pf}");
        assert!(pf.contains("#     load anchor \"almavmm\" from \"/etc/almavmm/pf.conf\"\n"), "{pf}");
    }

    #[test]
    fn the_agent_path_is_read_from_either_message() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("bin")).unwrap();
        fs::create_dir_all(t.path().join("libexec/almavmm")).unwrap();
        let agent = t.path().join("libexec/almavmm/almavmm-agent");
        fs::write(&agent, "").unwrap();
        let agent = agent.canonicalize().unwrap();
        let via = t.path().join("bin/../libexec/almavmm/almavmm-agent").display().to_string();
        assert!(names_path(&format!("agent from the release tree's libexec ({via})"), &agent));
        assert!(names_path(&format!("agent source bundle {via} (built in the guest)"), &agent));
        assert!(!names_path("agent from the data directory (/elsewhere/almavmm-agent)", &agent));
    }

    #[test]
    fn version_lines_are_checked_for_name_version_and_commit() {
        let v = almavmm_shared::VERSION;
        assert!(
            check_version(&format!("almavmm-host {v} (2b844e585fa6)"), "almavmm-host", Some("2b844e585fa6")).is_ok()
        );
        assert!(check_version(&format!("almavmm-agent {v} (commit 2b844e585fa6)"), "almavmm-agent", None).is_err());
        let e =
            check_version(&format!("almavmm-host {v} (unknown)"), "almavmm-host", Some("2b844e585fa6")).unwrap_err();
        assert!(e.to_string().contains("names commit unknown"), "{e}");
    }
}
