//! Does the default gateway (the host) answer? One ICMP echo (RFC 792), from a ping socket
//! (`SOCK_DGRAM`/`IPPROTO_ICMP`, icmp(7): the kernel sets the identifier and hands back
//! only replies to this socket) or, where `net.ipv4.ping_group_range` does not allow it, a
//! raw socket (root), whose replies start with the IP header.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use almavmm_shared::health::GatewayCheck;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request with `seq` and a payload, checksum filled in.
pub fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![ECHO_REQUEST, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"almavmm-gateway-check");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Whether `packet` (ICMP, or IP + ICMP when `with_ip_header`) is the echo reply for `seq`.
pub fn is_reply(packet: &[u8], seq: u16, with_ip_header: bool) -> bool {
    let icmp = if with_ip_header {
        let Some(first) = packet.first() else { return false };
        let ihl = usize::from(first & 0x0f) * 4;
        packet.get(ihl..).unwrap_or(&[])
    } else {
        packet
    };
    icmp.len() >= 8 && icmp[0] == ECHO_REPLY && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
}

pub fn probe(gateway: Ipv4Addr, limit: Duration) -> GatewayCheck {
    let address = gateway.to_string();
    match echo(gateway, limit) {
        Ok(rtt) => {
            GatewayCheck { address, ok: true, detail: format!("ICMP echo reply in {:.1} ms", rtt.as_secs_f64() * 1e3) }
        }
        Err(why) => GatewayCheck { address, ok: false, detail: why },
    }
}

fn echo(gateway: Ipv4Addr, limit: Duration) -> Result<Duration, String> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let (fd, raw) = match rustix::net::socket_with(AddressFamily::INET, SocketType::DGRAM, flags, Some(ipproto::ICMP)) {
        Ok(fd) => (fd, false),
        Err(dgram_err) => {
            match rustix::net::socket_with(AddressFamily::INET, SocketType::RAW, flags, Some(ipproto::ICMP)) {
                Ok(fd) => (fd, true),
                Err(raw_err) => {
                    return Err(format!(
                        "cannot send ICMP (ping socket: {dgram_err}; raw socket: {raw_err}): run as root"
                    ));
                }
            }
        }
    };
    let seq = (std::process::id() & 0xffff) as u16;
    let ident = seq ^ 0xa1a1;
    let started = Instant::now();
    rustix::net::sendto(
        &fd,
        &echo_request(ident, seq),
        rustix::net::SendFlags::empty(),
        &SocketAddrV4::new(gateway, 0),
    )
    .map_err(|e| format!("sending the echo request: {e}"))?;
    let mut buf = [0u8; 1500];
    loop {
        let left =
            limit.checked_sub(started.elapsed()).ok_or_else(|| format!("no reply within {} ms", limit.as_millis()))?;
        let ts = crate::clock::timekeeping::timespec(left.as_nanos() as i64);
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return Err(format!("no reply within {} ms", limit.as_millis())),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("waiting for the reply: {e}")),
        }
        while let Ok((n, _)) = rustix::net::recv(&fd, &mut buf[..], rustix::net::RecvFlags::empty()) {
            if is_reply(&buf[..n.min(buf.len())], seq, raw) {
                return Ok(started.elapsed());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request_verifies() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(&p[..2], &[8, 0]);
        // RFC 1071's worked example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, checksum 220d.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
    }

    #[test]
    fn replies_are_matched_with_or_without_ip_header() {
        let mut reply = echo_request(1, 9);
        reply[0] = ECHO_REPLY;
        assert!(is_reply(&reply, 9, false));
        assert!(!is_reply(&reply, 8, false));
        let mut with_ip = vec![0x45u8];
        with_ip.extend([0u8; 19]);
        with_ip.extend(&reply);
        assert!(is_reply(&with_ip, 9, true));
        assert!(!is_reply(&echo_request(1, 9), 9, false), "a request is not a reply");
    }

    // Loopback always answers; this runs as root on CI (raw socket) and as a user where the
    // ping group range allows it.
    #[test]
    fn loopback_answers() {
        let c = probe(Ipv4Addr::LOCALHOST, Duration::from_secs(2));
        if c.detail.contains("cannot send ICMP") {
            return;
        }
        assert!(c.ok, "{c:?}");
    }
}
