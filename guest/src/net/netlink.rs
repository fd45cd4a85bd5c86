//! Link-up events from the kernel on an rtnetlink socket (rtnetlink(7), netlink(7)): the
//! watcher's trigger for a clock check when a link comes back up, on systems without a
//! network dispatcher. No polling: the socket is in the watcher's `poll` set.
//!
//! Layout (include/uapi/linux/netlink.h, rtnetlink.h, if_link.h), native endian, each part
//! aligned to 4 bytes: `nlmsghdr` {u32 len, u16 type, u16 flags, u32 seq, u32 pid}, then for
//! RTM_NEWLINK/RTM_DELLINK an `ifinfomsg` {u8 family, u8 pad, u16 type, i32 index,
//! u32 flags, u32 change}, then `rtattr`s {u16 len, u16 type, data}; IFLA_IFNAME is type 3.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink::SocketAddrNetlink};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTMGRP_LINK: u32 = 1;
const IFLA_IFNAME: u16 = 3;
pub const IFF_UP: u32 = 0x1;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const IFF_RUNNING: u32 = 0x40;

/// One link message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMsg {
    pub deleted: bool,
    pub index: i32,
    pub flags: u32,
    pub name: Option<String>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// The link messages in one datagram; anything else (or truncated) is skipped.
pub fn parse(buf: &[u8]) -> Vec<LinkMsg> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let Some(len) = u32_at(buf, at).map(|l| l as usize) else { break };
        if len < 16 || at + len > buf.len() {
            break;
        }
        let kind = u16_at(buf, at + 4).unwrap_or(0);
        let msg = &buf[at..at + len];
        if (kind == RTM_NEWLINK || kind == RTM_DELLINK) && msg.len() >= 32 {
            let index = u32_at(msg, 20).unwrap_or(0) as i32;
            let flags = u32_at(msg, 24).unwrap_or(0);
            let mut name = None;
            let mut a = 32;
            while a + 4 <= msg.len() {
                let alen = u16_at(msg, a).unwrap_or(0) as usize;
                let atype = u16_at(msg, a + 2).unwrap_or(0);
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                if atype == IFLA_IFNAME {
                    let data = &msg[a + 4..a + alen];
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                }
                a += align4(alen);
            }
            out.push(LinkMsg { deleted: kind == RTM_DELLINK, index, flags, name });
        }
        at += align4(len);
    }
    out
}

/// Remembers each link's state and reports down → up transitions.
#[derive(Debug, Default)]
pub struct LinkTracker {
    up: HashMap<i32, bool>,
}

impl LinkTracker {
    /// Names (or `#index`) of the non-loopback links that just came up. A link seen for the
    /// first time counts as a transition only when it was seen down first, so the watcher's
    /// start and attribute-only updates trigger nothing.
    pub fn update(&mut self, msgs: &[LinkMsg]) -> Vec<String> {
        let mut came_up = Vec::new();
        for m in msgs {
            if m.deleted {
                self.up.remove(&m.index);
                continue;
            }
            if m.flags & IFF_LOOPBACK != 0 {
                continue;
            }
            let up = m.flags & IFF_UP != 0 && m.flags & IFF_RUNNING != 0;
            let before = self.up.insert(m.index, up);
            if up && before == Some(false) {
                came_up.push(m.name.clone().unwrap_or_else(|| format!("#{}", m.index)));
            }
        }
        came_up
    }
}

/// A non-blocking socket subscribed to link changes.
pub fn subscribe() -> std::io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None, // NETLINK_ROUTE is protocol 0
    )?;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, RTMGRP_LINK))?;
    Ok(fd)
}

/// Read every pending datagram (non-blocking).
pub fn drain(fd: &OwnedFd) -> Vec<LinkMsg> {
    let mut msgs = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok((n, _)) = rustix::net::recv(fd, &mut buf[..], rustix::net::RecvFlags::empty()) {
        if n == 0 {
            break;
        }
        msgs.extend(parse(&buf[..n.min(buf.len())]));
    }
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RTM_NEWLINK/DELLINK message as the kernel builds it (rtnl_fill_ifinfo).
    fn link_msg(kind: u16, index: i32, flags: u32, name: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let data_len = name.len() + 1;
        attr.extend_from_slice(&((4 + data_len) as u16).to_ne_bytes());
        attr.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        attr.extend_from_slice(name.as_bytes());
        attr.push(0);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = Vec::new();
        let len = 16 + 16 + attr.len();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[0, 0]); // family, pad
        m.extend_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
        m.extend_from_slice(&index.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&0xffff_ffffu32.to_ne_bytes());
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn parses_several_messages_in_one_datagram() {
        let mut dgram = link_msg(RTM_NEWLINK, 2, IFF_UP, "eth0");
        dgram.extend(link_msg(RTM_DELLINK, 3, 0, "veth1"));
        let msgs = parse(&dgram);
        assert_eq!(
            msgs,
            [
                LinkMsg { deleted: false, index: 2, flags: IFF_UP, name: Some("eth0".into()) },
                LinkMsg { deleted: true, index: 3, flags: 0, name: Some("veth1".into()) },
            ]
        );
        assert!(parse(&dgram[..20]).is_empty(), "truncated input is skipped");
    }

    #[test]
    fn reports_down_to_up_transitions_only() {
        let mut t = LinkTracker::default();
        let up = IFF_UP | IFF_RUNNING;
        assert!(t.update(&parse(&link_msg(RTM_NEWLINK, 2, up, "eth0"))).is_empty(), "first sight");
        assert!(t.update(&parse(&link_msg(RTM_NEWLINK, 2, up, "eth0"))).is_empty(), "no change");
        assert!(t.update(&parse(&link_msg(RTM_NEWLINK, 2, IFF_UP, "eth0"))).is_empty(), "carrier lost");
        assert_eq!(t.update(&parse(&link_msg(RTM_NEWLINK, 2, up, "eth0"))), ["eth0"]);
        assert!(t.update(&parse(&link_msg(RTM_NEWLINK, 1, IFF_LOOPBACK, "lo"))).is_empty());
        assert!(t.update(&parse(&link_msg(RTM_NEWLINK, 1, IFF_LOOPBACK | up, "lo"))).is_empty(), "loopback ignored");
    }

    #[test]
    fn the_socket_opens_and_drains_without_blocking() {
        // Any Linux allows an unprivileged rtnetlink listener; a drain of a quiet socket
        // returns (non-blocking) instead of hanging the test.
        let fd = subscribe().expect("rtnetlink socket");
        let _ = drain(&fd);
    }
}
