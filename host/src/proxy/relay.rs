//! Moving bytes between ssh (our stdin/stdout) and the guest's sshd, both directions at
//! once. When ssh closes its side we half-close ours (shutdown write) and keep reading
//! until the server closes too, so nothing in flight is lost. When the server goes first
//! (the guest stopped, crashed or closed the session), what it sent is flushed, our output
//! is closed at once and the relay returns without waiting for ssh's input: ssh then sees
//! end of file and ends the session (or its ControlMaster) instead of waiting for us while
//! we wait for it.

use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::Endpoint;
use almavmm_shared::wait::{Deadline, wait_until};

/// A connection to sshd whose first bytes (up to and including its `SSH-` version line)
/// have been read already and must reach the client first.
#[derive(Debug)]
pub struct Answered {
    pub stream: TcpStream,
    pub already_read: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("no SSH server answered at {endpoint} within {secs}s")]
pub struct NoAnswer {
    pub endpoint: String,
    pub secs: u64,
}

/// Connect until an SSH server answers with its version line (RFC 4253 4.2: other lines
/// may come first), polling every `poll`. QEMU's forwarder accepts and then drops
/// connections while the guest's sshd is not up yet, so only the banner counts.
pub fn connect_answered(endpoint: &Endpoint, poll: Duration, limit: Duration) -> Result<Answered, NoAnswer> {
    let attempt = || Ok::<_, Infallible>(try_answered(endpoint));
    match wait_until(Deadline::after(limit), poll, attempt) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(NoAnswer { endpoint: endpoint.to_string(), secs: limit.as_secs() }),
    }
}

fn try_answered(endpoint: &Endpoint) -> Option<Answered> {
    let addr = (endpoint.host.as_str(), endpoint.port).to_socket_addrs().ok()?.next()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    // Read until a line starts with "SSH-"; an SSH server sends at most a few lines first.
    while got.len() < 8192 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        if got.split(|b| *b == b'\n').any(|line| line.starts_with(b"SSH-")) && got.ends_with(b"\n") {
            stream.set_read_timeout(None).ok()?;
            return Some(Answered { stream, already_read: got });
        }
    }
    None
}

/// Relay a connection from [`connect_answered`]: what was already read goes out first.
pub fn relay_answered(
    client_in: impl Read + Send + 'static,
    mut client_out: impl Write,
    a: Answered,
) -> io::Result<(u64, u64)> {
    client_out.write_all(&a.already_read)?;
    client_out.flush()?;
    let (up, down) = relay(client_in, client_out, a.stream)?;
    Ok((up, down + a.already_read.len() as u64))
}

/// Relay until the server closes. Returns (bytes to server, bytes from server); `client_out`
/// is dropped (closed, for an owned writer) before it returns.
///
/// The upload runs on its own thread, which is left behind, still blocked reading
/// `client_in`, when the server closes first: no read of a pipe can be interrupted
/// portably, and the caller is about to exit anyway.
pub fn relay(
    client_in: impl Read + Send + 'static,
    mut client_out: impl Write,
    server: TcpStream,
) -> io::Result<(u64, u64)> {
    server.set_nodelay(true)?;
    let to_server = server.try_clone()?;
    let mut from_server = server;
    let sent = Arc::new(AtomicU64::new(0));
    let up = {
        let sent = sent.clone();
        std::thread::spawn(move || upload(client_in, to_server, &sent))
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut down = 0u64;
    let result = loop {
        match from_server.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = client_out.write_all(&buf[..n]).and_then(|_| client_out.flush()) {
                    break Err(e);
                }
                down += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    // Whatever ended the download, the client gets end of file now.
    let _ = client_out.flush();
    drop(client_out);
    let _ = from_server.shutdown(Shutdown::Both);
    // The client finished first (the normal end): its thread is done or about to be.
    if up.is_finished() {
        let _ = up.join();
    }
    match result {
        Ok(()) => Ok((sent.load(Ordering::Relaxed), down)),
        // The guest went away under the session (reset): for the client that is an end of
        // the connection like any other, already passed on as end of file.
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => {
            Ok((sent.load(Ordering::Relaxed), down))
        }
        Err(e) => Err(e),
    }
}

/// Client to server until the client's end of file, then half-close towards the server.
fn upload(mut client_in: impl Read, mut to_server: TcpStream, sent: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let result = loop {
        match client_in.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = to_server.write_all(&buf[..n]) {
                    break Err(e);
                }
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    // Client done (or broken): tell the server there is no more input.
    let _ = to_server.shutdown(Shutdown::Write);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that reads everything until EOF, then answers with what it got, reversed:
    /// it only works if our half-close reaches it and we keep reading afterwards.
    #[test]
    fn half_close_is_passed_on_and_the_late_answer_still_arrives() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got.reverse();
            s.write_all(&got).unwrap();
        });
        let input: &'static [u8] = b"hello guest";
        let mut output = Vec::new();
        let (up, down) = relay(input, &mut output, TcpStream::connect(addr).unwrap()).unwrap();
        server.join().unwrap();
        assert_eq!((up, down), (11, 11));
        assert_eq!(output, b"tseug olleh");
    }

    /// A forwarder that drops the first connections (no sshd behind it yet), then a server
    /// that sends a pre-banner line and its banner and echoes: the client sees every byte,
    /// in order, over the very connection that answered.
    #[test]
    fn the_connection_that_answered_is_relayed_with_its_banner() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            drop(l.accept().unwrap());
            drop(l.accept().unwrap());
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"welcome\r\nSSH-2.0-OpenSSH_9.2p1\r\n").unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(&got).unwrap();
        });
        let ep = Endpoint { host: "127.0.0.1".into(), port };
        let a = connect_answered(&ep, Duration::from_millis(20), Duration::from_secs(10)).unwrap();
        let mut out = Vec::new();
        relay_answered(&b"SSH-2.0-client\r\n"[..], &mut out, a).unwrap();
        server.join().unwrap();
        assert_eq!(out, b"welcome\r\nSSH-2.0-OpenSSH_9.2p1\r\nSSH-2.0-client\r\n");
    }

    /// Runs `relay` on a thread and hands back its result, or `None` if it is still
    /// running after `limit`: a hang detector, not a speed target.
    fn relay_within(
        client_in: impl Read + Send + 'static,
        client_out: impl Write + Send + 'static,
        server: TcpStream,
        limit: Duration,
    ) -> Option<io::Result<(u64, u64)>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(relay(client_in, client_out, server)));
        rx.recv_timeout(limit).ok()
    }

    /// The guest's sshd closes (guest stopped) while ssh is silent: the relay returns and
    /// ssh's side of our output sees end of file, though ssh never closed its input.
    #[test]
    fn a_server_that_closes_while_the_client_is_silent_ends_the_relay_and_closes_output() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"bye\n").unwrap();
        });
        let (client_in, _keep_client_open) = std::io::pipe().unwrap();
        let (mut ssh_reads, client_out) = std::io::pipe().unwrap();
        let got = relay_within(client_in, client_out, TcpStream::connect(addr).unwrap(), Duration::from_secs(20));
        server.join().unwrap();
        assert_eq!(got.expect("the relay still waits for the client").unwrap(), (0, 4));
        let mut seen = Vec::new();
        ssh_reads.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, b"bye\n", "what the server sent, then end of file");
    }

    /// The guest dies under the session: its kernel resets the connection (here: closing a
    /// socket with unread data sends RST). That ends the relay like a close does.
    #[test]
    fn a_reset_from_the_server_ends_the_relay_and_closes_output() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut b = [0u8; 1];
            // Wait until the client's bytes are here, then close without reading them.
            s.peek(&mut b).unwrap();
            drop(s);
        });
        let (client_in, mut keep_client_open) = std::io::pipe().unwrap();
        keep_client_open.write_all(b"SSH-2.0-client\r\n").unwrap();
        let (mut ssh_reads, client_out) = std::io::pipe().unwrap();
        let got = relay_within(client_in, client_out, TcpStream::connect(addr).unwrap(), Duration::from_secs(20));
        server.join().unwrap();
        // (What reached the server before the reset is counted by the upload thread, which
        // may still be finishing: not asserted.)
        let (_, down) = got.expect("the relay still waits for the client").unwrap();
        assert_eq!(down, 0);
        let mut seen = Vec::new();
        ssh_reads.read_to_end(&mut seen).unwrap();
        assert!(seen.is_empty());
    }

    #[test]
    fn no_server_means_a_timeout_naming_the_endpoint() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let ep = Endpoint { host: "127.0.0.1".into(), port };
        let e = connect_answered(&ep, Duration::from_millis(20), Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.to_string(), format!("no SSH server answered at 127.0.0.1:{port} within 0s"));
    }

    #[test]
    fn large_transfers_in_both_directions_arrive_intact() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expect = payload.clone();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = s.try_clone().unwrap();
            let mut w = s;
            // Echo while the client is still sending: both directions busy at once.
            std::io::copy(&mut r, &mut w).unwrap();
        });
        let mut output = Vec::new();
        relay(std::io::Cursor::new(payload), &mut output, TcpStream::connect(addr).unwrap()).unwrap();
        server.join().unwrap();
        assert_eq!(output.len(), expect.len());
        assert!(output == expect);
    }
}
