//! Who we run as, who the guests belong to, and how root-only commands are run.
//!
//! almavmm-host runs as the user who owns the guests. Steps that need root are prefixed with
//! doas(1) (OpenBSD base); `doas -n` is used where a password prompt is not wanted (reads for
//! `doctor`), since it fails instead of asking ("Non interactive mode", doas(1)). When run as
//! root (through doas or sudo), the guests' owner is the user who invoked it: doas sets
//! `DOAS_USER`, sudo `SUDO_USER`.

use std::path::PathBuf;

use nix::unistd::{Uid, User};

use crate::state::home::Home;

/// How root-only commands run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// We are root: run them as they are.
    Root,
    /// We are not: prefix them with `doas`.
    Doas,
}

/// May reading root-only state prompt for a password?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No (`doas -n`): what needs a password stays unknown. For doctor and for `up`.
    NoPrompt,
    /// Yes: `host setup` is interactive and must see everything.
    MayPrompt,
}

impl Privilege {
    pub fn current() -> Privilege {
        if nix::unistd::geteuid().is_root() { Privilege::Root } else { Privilege::Doas }
    }

    /// `argv` as a root-only command to run.
    pub fn command<S: AsRef<str>>(self, argv: &[S]) -> Vec<String> {
        let argv = argv.iter().map(|a| a.as_ref().to_string());
        match self {
            Privilege::Root => argv.collect(),
            Privilege::Doas => std::iter::once("doas".to_string()).chain(argv).collect(),
        }
    }

    /// `argv` as a root-only read, prompting only if `access` allows.
    pub fn read_command<S: AsRef<str>>(self, access: Access, argv: &[S]) -> Vec<String> {
        let mut out = self.command(argv);
        if self == Privilege::Doas && access == Access::NoPrompt {
            out.insert(1, "-n".into());
        }
        out
    }

    /// How a fix command is shown to a user: `doas CMD` unless we are root.
    pub fn show(self, cmd: &str) -> String {
        match self {
            Privilege::Root => cmd.to_string(),
            Privilege::Doas => format!("doas {cmd}"),
        }
    }
}

/// The user who owns the guests: the invoking user when we run as root through doas or sudo,
/// else whoever we are.
pub fn guest_owner() -> Result<User, String> {
    let lookup_uid = |uid: Uid| match User::from_uid(uid) {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(format!("uid {uid} has no entry in the password database")),
        Err(e) => Err(format!("cannot look up uid {uid}: {e}")),
    };
    if nix::unistd::geteuid().is_root() {
        for var in ["DOAS_USER", "SUDO_USER"] {
            if let Some(name) = std::env::var(var).ok().filter(|n| !n.is_empty()) {
                return match User::from_name(&name) {
                    Ok(Some(u)) => Ok(u),
                    Ok(None) => Err(format!("${var} names {name:?}, who has no entry in the password database")),
                    Err(e) => Err(format!("cannot look up {name:?} (from ${var}): {e}")),
                };
            }
        }
    }
    lookup_uid(nix::unistd::getuid())
}

/// The owner's state folder. Under doas or sudo, HOME is root's, so unless ALMAVMM_HOME was
/// kept it is found from the owner's home directory.
pub fn owner_home(owner: &User) -> Result<Home, String> {
    let is_root = nix::unistd::geteuid().is_root();
    let explicit = std::env::var_os("ALMAVMM_HOME").filter(|v| !v.is_empty());
    if is_root && owner.uid != nix::unistd::geteuid() && explicit.is_none() {
        return Ok(Home::at(PathBuf::from(&owner.dir).join(".local/share/almavmm")));
    }
    Home::from_env().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_only_commands_get_doas_when_we_are_not_root() {
        assert_eq!(Privilege::Root.command(&["rcctl", "enable", "vmd"]), ["rcctl", "enable", "vmd"]);
        assert_eq!(Privilege::Doas.command(&["rcctl", "enable", "vmd"]), ["doas", "rcctl", "enable", "vmd"]);
        assert_eq!(
            Privilege::Doas.read_command(Access::NoPrompt, &["pfctl", "-s", "info"]),
            ["doas", "-n", "pfctl", "-s", "info"]
        );
        assert_eq!(
            Privilege::Doas.read_command(Access::MayPrompt, &["pfctl", "-s", "info"]),
            ["doas", "pfctl", "-s", "info"]
        );
        assert_eq!(Privilege::Root.read_command(Access::NoPrompt, &["pfctl", "-s", "info"]), ["pfctl", "-s", "info"]);
        assert_eq!(Privilege::Doas.show("fw_update vmm"), "doas fw_update vmm");
        assert_eq!(Privilege::Root.show("fw_update vmm"), "fw_update vmm");
    }

    #[test]
    fn the_owner_is_someone() {
        // Whoever runs the tests has a password entry.
        let u = guest_owner().unwrap();
        assert!(!u.name.is_empty());
    }
}
