//! Moving bytes between ssh (our stdin/stdout) and the guest's sshd, both directions at
//! once. When ssh closes its side we half-close ours (shutdown write) and keep reading
//! until the server closes too, so nothing in flight is lost.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

/// Relay until the server closes. Returns (bytes to server, bytes from server).
pub fn relay(mut client_in: impl Read + Send, mut client_out: impl Write, server: TcpStream) -> io::Result<(u64, u64)> {
    server.set_nodelay(true)?;
    let mut to_server = server.try_clone()?;
    let mut from_server = server;
    std::thread::scope(|s| {
        let up = s.spawn(move || -> io::Result<u64> {
            let n = io::copy(&mut client_in, &mut to_server);
            // Client done (or broken): tell the server there is no more input.
            let _ = to_server.shutdown(Shutdown::Write);
            n
        });
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
        // The server is gone: unblock the upload thread if it still waits on the client.
        let _ = from_server.shutdown(Shutdown::Both);
        let sent = if result.is_ok() { up.join().unwrap_or(Ok(0)).unwrap_or(0) } else { 0 };
        result.map(|()| (sent, down))
    })
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
        let input: &[u8] = b"hello guest";
        let mut output = Vec::new();
        let (up, down) = relay(input, &mut output, TcpStream::connect(addr).unwrap()).unwrap();
        server.join().unwrap();
        assert_eq!((up, down), (11, 11));
        assert_eq!(output, b"tseug olleh");
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
        relay(&payload[..], &mut output, TcpStream::connect(addr).unwrap()).unwrap();
        server.join().unwrap();
        assert_eq!(output.len(), expect.len());
        assert!(output == expect);
    }
}
