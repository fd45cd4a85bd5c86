//! Running commands in a guest with the OpenSSH client, always against the pinned host key.
//!
//! Every connection uses the guest's own known_hosts file and `HostKeyAlias=NAME`, with
//! `StrictHostKeyChecking yes`: a guest that presents any other key is refused, never
//! learnt. The user's ssh_config is ignored (`-F /dev/null`) so that a `Host *` block there
//! cannot redirect or weaken these connections.

use std::io::{BufRead, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use almavmm_shared::runner::{Cmd, Output, RunError};
use almavmm_shared::wait::{Deadline, wait_until};

use crate::backend::Endpoint;
use crate::state::vm::Vm;

/// The longest any one ssh to a guest may take, connection included: every remote command
/// we run (health report, boot marker, power-off, a clock session) is done in seconds, and
/// ConnectTimeout and ServerAlive* only cover a silent network, not a hung peer.
pub const SSH_LIMIT: Duration = Duration::from_secs(120);

const SSH_HINT: &str = "install the OpenSSH client (`apt-get install openssh-client`; it is in OpenBSD's base system)";

/// Everything needed to reach one guest.
#[derive(Debug, Clone)]
pub struct Target {
    pub alias: String,
    pub user: String,
    pub endpoint: Endpoint,
    pub known_hosts: PathBuf,
    pub identity: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "{alias} presented a host key that differs from the one pinned in {known_hosts}.\n\
         Either something else answers at {endpoint} (another VM got that address or port), or the guest's \
         keys were changed from inside. almavmm never re-learns a key: if you rebuilt the guest on purpose, \
         destroy it with `almavmm-host destroy {alias}` and create it again."
    )]
    HostKeyChanged { alias: String, endpoint: String, known_hosts: String },
    #[error("{alias} refused our SSH key (user {user}, identity {identity}): {detail}")]
    AuthRefused { alias: String, user: String, identity: String, detail: String },
    #[error("{what} did not happen within {secs}s")]
    Timeout { what: String, secs: u64 },
    #[error(transparent)]
    Run(#[from] RunError),
}

impl Target {
    pub fn for_vm(vm: &Vm, endpoint: Endpoint) -> Target {
        Target {
            alias: vm.name.to_string(),
            user: vm.spec.user.clone(),
            endpoint,
            known_hosts: vm.known_hosts(),
            identity: vm.spec.identity_file(),
        }
    }

    /// The ssh options that pin the host key and make ssh non-interactive.
    pub fn options(&self) -> Vec<String> {
        let o = |k: &str, v: &str| ["-o".to_string(), format!("{k}={v}")];
        let mut a = vec!["-F".to_string(), "/dev/null".to_string()];
        for (k, v) in [
            ("StrictHostKeyChecking", "yes"),
            ("UserKnownHostsFile", &self.known_hosts.display().to_string()),
            ("GlobalKnownHostsFile", "/dev/null"),
            ("HostKeyAlias", &self.alias),
            ("HostKeyAlgorithms", "ssh-ed25519"),
            ("IdentityFile", &self.identity.display().to_string()),
            ("IdentitiesOnly", "yes"),
            ("BatchMode", "yes"),
            ("ConnectTimeout", "10"),
            ("ServerAliveInterval", "5"),
            ("ServerAliveCountMax", "3"),
            ("LogLevel", "ERROR"),
        ] {
            a.extend(o(k, v));
        }
        a.extend(["-p".to_string(), self.endpoint.port.to_string()]);
        a.push(format!("{}@{}", self.user, self.endpoint.host));
        a
    }

    /// `ssh … -- COMMAND` as a runner command (not yet run).
    pub fn command(&self, remote: &str) -> Cmd {
        Cmd::new("ssh").args(self.options()).arg("--").arg(remote).hint_if_missing(SSH_HINT).timeout(SSH_LIMIT)
    }

    /// Run a command in the guest; classify host-key and authentication failures.
    pub fn run(&self, remote: &str) -> Result<Output, SshError> {
        self.run_cmd(self.command(remote))
    }

    /// Run with bytes on the remote command's stdin.
    pub fn run_with_input(&self, remote: &str, input: &[u8]) -> Result<Output, SshError> {
        self.run_cmd(self.command(remote).stdin_bytes(input.to_vec()))
    }

    fn run_cmd(&self, cmd: Cmd) -> Result<Output, SshError> {
        let out = cmd.output()?;
        if out.status.success() {
            return Ok(out);
        }
        if let Some(e) = self.classify(&out.stderr) {
            return Err(e);
        }
        Err(cmd.failure(&out).into())
    }

    /// Map OpenSSH's messages (ssh/sshconnect.c) to what they mean for the user.
    pub fn classify(&self, stderr: &str) -> Option<SshError> {
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") || stderr.contains("Host key verification failed")
        {
            return Some(SshError::HostKeyChanged {
                alias: self.alias.clone(),
                endpoint: self.endpoint.to_string(),
                known_hosts: self.known_hosts.display().to_string(),
            });
        }
        if stderr.contains("Permission denied (publickey") {
            return Some(SshError::AuthRefused {
                alias: self.alias.clone(),
                user: self.user.clone(),
                identity: self.identity.display().to_string(),
                detail: stderr.trim().to_string(),
            });
        }
        None
    }
}

/// Wait until something at `endpoint` speaks SSH (sends an `SSH-2.0-` banner), polling
/// every `poll` up to `timeout`. Returns the banner.
pub fn wait_for_banner(endpoint: &Endpoint, poll: Duration, timeout: Duration) -> Result<String, SshError> {
    let attempt = || Ok::<_, SshError>(read_banner(endpoint, poll.max(Duration::from_millis(200))));
    wait_until(Deadline::after(timeout), poll, attempt)?.ok_or_else(|| SshError::Timeout {
        what: format!("an SSH server answering at {endpoint}"),
        secs: timeout.as_secs(),
    })
}

/// One attempt: connect and read the first line. QEMU's forwarder accepts connections before
/// the guest's sshd exists and then closes them, so a banner is the only proof of life.
pub fn read_banner(endpoint: &Endpoint, limit: Duration) -> Option<String> {
    let addr = (endpoint.host.as_str(), endpoint.port).to_socket_addrs().ok()?.next()?;
    let stream = TcpStream::connect_timeout(&addr, limit).ok()?;
    stream.set_read_timeout(Some(limit.max(Duration::from_secs(2)))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.starts_with("SSH-").then(|| line.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            alias: "alma".into(),
            user: "almalinux".into(),
            endpoint: Endpoint { host: "127.0.0.1".into(), port: 40022 },
            known_hosts: "/s/vms/alma/known_hosts".into(),
            identity: "/home/me/.ssh/id_ed25519".into(),
        }
    }

    #[test]
    fn options_pin_the_key_and_ignore_user_config() {
        let o = target().options().join(" ");
        for needed in [
            "-F /dev/null",
            "-o StrictHostKeyChecking=yes",
            "-o UserKnownHostsFile=/s/vms/alma/known_hosts",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o HostKeyAlias=alma",
            "-o BatchMode=yes",
            "-p 40022 almalinux@127.0.0.1",
        ] {
            assert!(o.contains(needed), "{needed} missing in {o}");
        }
    }

    // Messages as OpenSSH 9.2 prints them (sshconnect.c, warn_changed_key / authentication).
    #[test]
    fn classifies_openssh_failures() {
        let changed = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
Host key for alma has changed and you have requested strict checking.\nHost key verification failed.\n";
        let e = target().classify(changed).unwrap();
        assert!(matches!(e, SshError::HostKeyChanged { .. }));
        assert!(e.to_string().contains("differs from the one pinned in /s/vms/alma/known_hosts"), "{e}");
        let unknown = "No ED25519 host key is known for alma and you have requested strict checking.\nHost key verification failed.\n";
        assert!(matches!(target().classify(unknown), Some(SshError::HostKeyChanged { .. })));
        let denied = "almalinux@127.0.0.1: Permission denied (publickey,gssapi-keyex,gssapi-with-mic).\n";
        assert!(matches!(target().classify(denied), Some(SshError::AuthRefused { .. })));
        assert!(target().classify("ssh: connect to host 127.0.0.1 port 40022: Connection refused\n").is_none());
    }

    #[test]
    fn banner_is_read_from_a_speaking_server_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::Write;
            // First connection: accepted and closed (QEMU's forwarder with no sshd behind it).
            drop(l.accept().unwrap());
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n").unwrap();
        });
        let ep = Endpoint { host: "127.0.0.1".into(), port };
        let banner = wait_for_banner(&ep, Duration::from_millis(50), Duration::from_secs(10)).unwrap();
        assert_eq!(banner, "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3");
    }

    #[test]
    fn banner_wait_times_out_with_a_clear_message() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let ep = Endpoint { host: "127.0.0.1".into(), port };
        let e = wait_for_banner(&ep, Duration::from_millis(50), Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.to_string(), format!("an SSH server answering at 127.0.0.1:{port} did not happen within 1s"));
    }
}
