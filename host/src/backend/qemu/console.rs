//! Attaching the terminal to a guest's serial console (a unix socket QEMU serves), the
//! way cu(1) does for `vmctl console`: raw terminal, `~.` at the start of a line leaves.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::backend::{BackendError, Result};

/// Tracks the escape sequence across reads: `~` right after a newline (or at the start),
/// then `.`.
#[derive(Debug, Default)]
pub struct Escape {
    at_line_start: bool,
    tilde: bool,
}

impl Escape {
    pub fn new() -> Escape {
        Escape { at_line_start: true, tilde: false }
    }

    /// Feed user input; returns the bytes to forward and whether the user asked to leave.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.tilde {
                self.tilde = false;
                if b == b'.' {
                    return (out, true);
                }
                out.push(b'~');
            } else if self.at_line_start && b == b'~' {
                self.tilde = true;
                continue;
            }
            out.push(b);
            self.at_line_start = b == b'\r' || b == b'\n';
        }
        (out, false)
    }
}

pub fn attach(socket: &Path, name: &str) -> Result<()> {
    let stream =
        UnixStream::connect(socket).map_err(BackendError::io(format!("cannot connect to {}", socket.display())))?;
    let mut from_guest = stream.try_clone().map_err(BackendError::io("console socket"))?;
    let mut to_guest = stream;
    eprintln!("Connected to {name}'s serial console. Type ~. at the start of a line to leave.\r");
    let _raw = RawTerminal::enable();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = from_guest.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut esc = Escape::new();
    let mut buf = [0u8; 1024];
    let mut stdin = std::io::stdin();
    loop {
        let n = stdin.read(&mut buf).map_err(BackendError::io("reading the terminal"))?;
        if n == 0 {
            break;
        }
        let (fwd, leave) = esc.feed(&buf[..n]);
        if !fwd.is_empty() && to_guest.write_all(&fwd).is_err() {
            break;
        }
        if leave {
            break;
        }
    }
    eprintln!("\r\n[left the console of {name}]\r");
    Ok(())
}

/// Puts the terminal in raw mode for as long as it lives (if stdin is a terminal).
struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn enable() -> RawTerminal {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawTerminal { saved: None };
        }
        let Ok(saved) = tcgetattr(&stdin) else { return RawTerminal { saved: None } };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_at_line_start_leaves() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"~."), (vec![], true));
        let mut e = Escape::new();
        assert_eq!(e.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(e.feed(b"~"), (vec![], false));
        assert_eq!(e.feed(b"."), (vec![], true));
    }

    #[test]
    fn tilde_elsewhere_is_typed() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"cd ~.\r"), (b"cd ~.\r".to_vec(), false));
        let mut e = Escape::new();
        assert_eq!(e.feed(b"~x"), (b"~x".to_vec(), false));
    }
}
