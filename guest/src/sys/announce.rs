//! Lines people and the end-to-end test follow: each goes to the journal and to the console
//! (`/dev/console`, the serial port on cloud images), prefixed `almavmm-agent:`.
//!
//! Under systemd the agent's stderr already is the journal (systemd sets `JOURNAL_STREAM`
//! for such services, systemd.exec(5)). Run from cloud-init's bootstrap, stderr goes to the
//! bootstrap's log file, so the line is also sent to journald's native socket, whose
//! datagram format is `KEY=value` lines (systemd's "Native Journal Protocol").

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;

pub const PREFIX: &str = "almavmm-agent:";
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// O_NOCTTY from asm-generic/fcntl.h: opening the console must not make it our terminal.
const O_NOCTTY: i32 = 0o400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn syslog_priority(self) -> u8 {
        match self {
            Level::Info => 6,
            Level::Warn => 4,
            Level::Error => 3,
        }
    }
}

/// Say `message` on stderr (tracing), the journal and the console.
pub fn say(level: Level, message: &str) {
    match level {
        Level::Info => tracing::info!("{message}"),
        Level::Warn => tracing::warn!("{message}"),
        Level::Error => tracing::error!("{message}"),
    }
    // Unit tests exercise callers of this; they must not write on the test machine's console.
    if cfg!(test) {
        return;
    }
    if std::env::var_os("JOURNAL_STREAM").is_none() {
        to_journal(level, message);
    }
    to_console(message);
}

/// A native-protocol datagram; a message with a newline would need the binary form, so
/// newlines are flattened.
pub fn journal_datagram(level: Level, message: &str) -> String {
    format!(
        "MESSAGE={}\nPRIORITY={}\nSYSLOG_IDENTIFIER=almavmm-agent\n",
        message.replace('\n', " "),
        level.syslog_priority()
    )
}

fn to_journal(level: Level, message: &str) {
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.send_to(journal_datagram(level, message).as_bytes(), JOURNAL_SOCKET);
    }
}

fn to_console(message: &str) {
    let console = std::fs::OpenOptions::new().write(true).custom_flags(O_NOCTTY).open("/dev/console");
    if let Ok(mut c) = console {
        let _ = c.write_all(console_line(message).as_bytes());
    }
}

/// The serial console needs CR LF.
pub fn console_line(message: &str) -> String {
    format!("{PREFIX} {}\r\n", message.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(console_line("setup: service: ok"), "almavmm-agent: setup: service: ok\r\n");
        assert_eq!(journal_datagram(Level::Warn, "a\nb"), "MESSAGE=a b\nPRIORITY=4\nSYSLOG_IDENTIFIER=almavmm-agent\n");
    }
}
