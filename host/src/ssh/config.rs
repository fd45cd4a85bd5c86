//! The ssh_config(5) fragment that makes `ssh NAME.almavmm` work: the pinned host key,
//! the on-demand `ssh-proxy`, connection sharing. Written by `ssh-config`, and kept current
//! by `up` and `destroy` once it exists, so a user never runs `ssh-config` twice.

use std::path::{Path, PathBuf};

use anyhow::Context;

use almavmm_shared::runner::shell_quote;

use crate::state::home::Home;
use crate::state::vm::Vm;

/// How long an idle shared connection stays open; when it closes, the proxy behind it ends
/// and a guest the proxy started is stopped. This is the idle timer of `ssh NAME.almavmm`.
pub const CONTROL_PERSIST: &str = "10m";

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
///
/// Each guest gets a block of its own for what differs per guest: its user, its key, and
/// its pinned host key (`HostKeyAlias` does not expand ssh_config's %-tokens, and the
/// known_hosts file lives in the guest's folder, whose name is not the host name ssh sees).
/// One `Host *.almavmm` block after them carries what every guest shares (ssh takes the
/// first value it finds for each keyword), so that any other `NAME.almavmm`, such as a
/// typo, still reaches the proxy, which lists the guests that exist. Connection sharing
/// stays in the guests' blocks: with `ControlPersist` set, ssh sends its ProxyCommand's
/// stderr to /dev/null (sshconnect.c, `ssh_proxy_connect`), and that list would be lost.
pub fn render(entries: &[Entry], proxy_command: &str) -> String {
    let mut out = String::from(
        "# Written by almavmm-host, which keeps it current as guests are created and destroyed.\n\
         # Use it from ~/.ssh/config with, before the first Host line:  Include config.d/almavmm\n",
    );
    for e in entries {
        out.push_str(&format!(
            "\nHost {name}.almavmm\n\
             \x20   User {user}\n\
             \x20   HostKeyAlias {name}\n\
             \x20   UserKnownHostsFile {kh}\n\
             \x20   IdentityFile {id}\n\
             \x20   ControlMaster auto\n\
             \x20   ControlPath ~/.ssh/almavmm-%C\n\
             \x20   ControlPersist {CONTROL_PERSIST}\n",
            name = e.name,
            user = e.user,
            kh = cfg_path(&e.known_hosts),
            id = cfg_path(&e.identity),
        ));
    }
    out.push_str(&format!(
        "\nHost *.almavmm\n\
         \x20   StrictHostKeyChecking yes\n\
         \x20   ProxyCommand {proxy_command} %h %p\n",
    ));
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

/// Where the fragment goes: `~/.ssh/config.d/almavmm`.
pub fn fragment_path() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".ssh/config.d/almavmm"))
}

/// The fragment for every guest in `home`, calling the proxy as `exe`, with the number of
/// guests.
pub fn fragment(home: &Home, exe: &Path) -> anyhow::Result<(String, usize)> {
    let entries: Vec<Entry> = Vm::load_all(home)
        .into_iter()
        .filter_map(Result::ok)
        .map(|vm| Entry {
            name: vm.name.to_string(),
            user: vm.spec.user.clone(),
            known_hosts: vm.known_hosts(),
            identity: vm.spec.identity_file(),
        })
        .collect();
    let home_override = std::env::var_os("ALMAVMM_HOME").map(|_| home.root().to_owned());
    Ok((render(&entries, &proxy_command(exe, home_override.as_deref())), entries.len()))
}

/// Write the fragment to `path` (atomically, 0600), creating its folder.
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    almavmm_shared::atomic::write_file(path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// After a guest was created or destroyed: rewrite the fragment if the user has one, so
/// it lists exactly the guests there are. Problems are reported, never fatal.
pub fn refresh(home: &Home, exe: &Path) {
    let Ok(path) = fragment_path() else { return };
    if !path.is_file() {
        return;
    }
    let written = fragment(home, exe).and_then(|(text, _)| {
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        write(&path, &text).map(|()| true)
    });
    match written {
        Ok(true) => tracing::info!("updated {}", path.display()),
        Ok(false) => {}
        Err(e) => eprintln!("warning: could not update {}: {e:#}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_per_guest_and_one_for_every_name_with_proxy_and_sharing() {
        let e = Entry {
            name: "alma".into(),
            user: "almalinux".into(),
            known_hosts: "/s/vms/alma/known_hosts".into(),
            identity: "/home/me/.ssh/id_ed25519".into(),
        };
        let t = render(&[e], "/usr/local/bin/almavmm-host ssh-proxy --idle 0");
        assert!(t.contains("\nHost alma.almavmm\n    User almalinux\n    HostKeyAlias alma\n"), "{t}");
        assert!(t.contains("    UserKnownHostsFile /s/vms/alma/known_hosts\n"), "{t}");
        // The shared block comes last: ssh takes the first value for each keyword.
        let shared = t.find("\nHost *.almavmm\n").expect("a block for every name");
        assert!(shared > t.find("\nHost alma.almavmm\n").unwrap());
        let (own, shared) = t.split_at(shared);
        assert!(shared.contains("    StrictHostKeyChecking yes\n"), "{t}");
        assert!(shared.contains("    ProxyCommand /usr/local/bin/almavmm-host ssh-proxy --idle 0 %h %p\n"));
        // Sharing only for known guests: ControlPersist would silence the proxy's guest list.
        assert!(own.contains("    ControlMaster auto\n") && own.contains("    ControlPersist 10m\n"), "{t}");
        assert!(!shared.contains("Control"), "{t}");
        // With no guest at all, every name still reaches the proxy (which lists none).
        assert!(
            render(&[], "p").contains("\nHost *.almavmm\n    StrictHostKeyChecking yes\n    ProxyCommand p %h %p\n")
        );
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
