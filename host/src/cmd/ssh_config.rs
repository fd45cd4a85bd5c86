//! `almavmm-host ssh-config`: an ssh_config(5) fragment so that `ssh NAME.almavmm` works
//! with the pinned host key, through the on-demand `ssh-proxy`, with connection sharing.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use almavmm_shared::runner::shell_quote;

use crate::state::home::Home;
use crate::state::vm::Vm;

/// How long an idle shared connection stays open; when it closes, the proxy behind it ends
/// and a guest the proxy started is stopped. This is the idle timer of `ssh NAME.almavmm`.
pub const CONTROL_PERSIST: &str = "10m";

#[derive(Debug, Args)]
#[command(after_help = "\
Writes ~/.ssh/config.d/almavmm (or prints it with --print) with one `Host NAME.almavmm` block
per guest. ssh reads it once ~/.ssh/config has, before its first Host line:

    Include config.d/almavmm

Then `ssh NAME.almavmm` starts the guest if it is down (and stops it again once the shared
connection has been idle for 10 minutes), and checks the guest's pinned host key.
Run it again after creating guests.")]
pub struct SshConfigArgs {
    /// Print the fragment on stdout instead of writing it.
    #[arg(long)]
    pub print: bool,
}

/// What goes into one guest's block.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub user: String,
    pub known_hosts: PathBuf,
    pub identity: PathBuf,
}

fn cfg_path(p: &Path) -> String {
    let s = p.display().to_string();
    if s.contains(char::is_whitespace) { format!("\"{s}\"") } else { s }
}

/// The fragment, as a pure function of the guests and of how to call ourselves.
pub fn render(entries: &[Entry], proxy_command: &str) -> String {
    let mut out = String::from(
        "# Written by `almavmm-host ssh-config`; run it again after adding guests.\n\
         # Use it from ~/.ssh/config with, before the first Host line:  Include config.d/almavmm\n",
    );
    for e in entries {
        out.push_str(&format!(
            "\nHost {name}.almavmm\n\
             \x20   User {user}\n\
             \x20   HostKeyAlias {name}\n\
             \x20   UserKnownHostsFile {kh}\n\
             \x20   StrictHostKeyChecking yes\n\
             \x20   IdentityFile {id}\n\
             \x20   ProxyCommand {proxy} %h %p\n\
             \x20   ControlMaster auto\n\
             \x20   ControlPath ~/.ssh/almavmm-%C\n\
             \x20   ControlPersist {CONTROL_PERSIST}\n",
            name = e.name,
            user = e.user,
            kh = cfg_path(&e.known_hosts),
            id = cfg_path(&e.identity),
            proxy = proxy_command,
        ));
    }
    out
}

/// How ssh should call the proxy: this binary by absolute path, with the state directory
/// passed along when it is not the default (ssh's environment may not carry it).
pub fn proxy_command(exe: &Path, home_override: Option<&Path>) -> String {
    let mut cmd = String::new();
    if let Some(h) = home_override {
        cmd.push_str(&format!("env ALMAVMM_HOME={} ", shell_quote(&h.display().to_string())));
    }
    // --idle 0: ControlPersist already waited for the idle period before the proxy ends.
    cmd.push_str(&format!("{} ssh-proxy --idle 0", shell_quote(&exe.display().to_string())));
    cmd
}

/// Does this ssh_config text include our fragment (directly or through a glob)?
pub fn includes_fragment(ssh_config: &str) -> bool {
    ssh_config.lines().map(str::trim).any(|l| {
        let mut words = l.split_whitespace();
        words.next().is_some_and(|w| w.eq_ignore_ascii_case("include"))
            && words.any(|w| {
                let w = w.trim_start_matches("~/.ssh/");
                w == "config.d/almavmm" || w == "config.d/*"
            })
    })
}

pub fn run(args: SshConfigArgs) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    let entries: Vec<Entry> = Vm::load_all(&home)
        .into_iter()
        .filter_map(Result::ok)
        .map(|vm| Entry {
            name: vm.name.to_string(),
            user: vm.spec.user.clone(),
            known_hosts: vm.known_hosts(),
            identity: vm.spec.identity_file(),
        })
        .collect();
    let exe = crate::agent::locate::own_exe().context("cannot tell where almavmm-host is installed")?;
    let home_override = std::env::var_os("ALMAVMM_HOME").map(|_| home.root().to_owned());
    let text = render(&entries, &proxy_command(&exe, home_override.as_deref()));
    if args.print {
        print!("{text}");
        return Ok(crate::exit::OK);
    }
    let ssh_dir = PathBuf::from(std::env::var_os("HOME").context("HOME is not set; use --print")?).join(".ssh");
    let dir = ssh_dir.join("config.d");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("almavmm");
    crate::state::atomic::write_file(&path, text.as_bytes(), 0o600)?;
    eprintln!("wrote {} ({} guest{})", path.display(), entries.len(), if entries.len() == 1 { "" } else { "s" });
    let main = std::fs::read_to_string(ssh_dir.join("config")).unwrap_or_default();
    if !includes_fragment(&main) {
        eprintln!(
            "add this line to {} before its first Host line:\n\n    Include config.d/almavmm\n",
            ssh_dir.join("config").display()
        );
    }
    Ok(crate::exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_per_guest_with_pin_proxy_and_sharing() {
        let e = Entry {
            name: "alma".into(),
            user: "almalinux".into(),
            known_hosts: "/s/vms/alma/known_hosts".into(),
            identity: "/home/me/.ssh/id_ed25519".into(),
        };
        let t = render(&[e], "/usr/local/bin/almavmm-host ssh-proxy --idle 0");
        assert!(t.contains("\nHost alma.almavmm\n    User almalinux\n    HostKeyAlias alma\n"), "{t}");
        assert!(t.contains("    UserKnownHostsFile /s/vms/alma/known_hosts\n    StrictHostKeyChecking yes\n"));
        assert!(t.contains("    ProxyCommand /usr/local/bin/almavmm-host ssh-proxy --idle 0 %h %p\n"));
        assert!(t.contains("    ControlPersist 10m\n"));
    }

    #[test]
    fn paths_with_spaces_are_quoted() {
        assert_eq!(cfg_path(Path::new("/My Files/kh")), "\"/My Files/kh\"");
        assert_eq!(
            proxy_command(Path::new("/opt/my tools/almavmm-host"), Some(Path::new("/tmp/s"))),
            "env ALMAVMM_HOME=/tmp/s '/opt/my tools/almavmm-host' ssh-proxy --idle 0"
        );
    }

    #[test]
    fn recognises_the_include_line() {
        assert!(includes_fragment("Include config.d/almavmm\nHost *\n"));
        assert!(includes_fragment("  include ~/.ssh/config.d/*\n"));
        assert!(!includes_fragment("Host x\n  HostName y\n"));
        assert!(!includes_fragment("# Include config.d/almavmm\n"));
    }
}
