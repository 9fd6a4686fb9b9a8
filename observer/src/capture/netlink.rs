//! Just enough rtnetlink for the veth fallback, over a raw socket: list the
//! links (name, kind, the peer's netns id), ask the netns id of a namespace
//! file, and hear when links come and go. Three message types do not
//! justify a netlink stack; the parsers are pure and unit-tested.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const NETLINK_ROUTE: libc::c_int = 0;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
/// Multicast group of link changes.
const RTMGRP_LINK: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
/// `struct rtgenmsg`, padded to 4.
const RTGENMSG_LEN: usize = 4;

/// One network interface of this namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "veth", "bridge", ... (None for physical devices).
    pub kind: Option<String>,
    /// The netns id (in this namespace's table) of the peer's namespace, for
    /// links whose other end lives elsewhere (a container's veth).
    pub peer_netnsid: Option<i32>,
}

fn socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; the fd is owned right after.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_ROUTE);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        let r = libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_nl).cast(), size_of::<libc::sockaddr_nl>() as u32);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    // SAFETY: msg is a valid buffer; the kernel is the destination (pid 0).
    let r = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: buf is valid for its length.
    let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
}

fn finish(buf: &mut [u8]) {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
}

/// The links of the current network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let fd = socket(0)?;
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + IFINFOMSG_LEN);
    header(&mut req, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1);
    req.extend_from_slice(&[0u8; IFINFOMSG_LEN]); // AF_UNSPEC: every link
    finish(&mut req);
    send(fd.as_fd(), &req)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = recv(fd.as_fd(), &mut buf, 0)?;
        match parse_links(&buf[..n], &mut out) {
            Ok(true) => return Ok(out),
            Ok(false) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Append the RTM_NEWLINK messages of one datagram to `out`. True once the
/// dump is done. Malformed messages end the datagram, never panic.
pub fn parse_links(mut data: &[u8], out: &mut Vec<Link>) -> io::Result<bool> {
    while let Some((ty, payload, rest)) = next_message(data) {
        data = rest;
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => return Err(nlmsg_error(payload)),
            RTM_NEWLINK if payload.len() >= IFINFOMSG_LEN => {
                let ifindex = i32::from_ne_bytes(payload[4..8].try_into().unwrap());
                let mut link = Link { ifindex: ifindex as u32, name: String::new(), kind: None, peer_netnsid: None };
                for (t, v) in attrs(&payload[IFINFOMSG_LEN..]) {
                    match t {
                        IFLA_IFNAME => link.name = cstr(v),
                        IFLA_LINK_NETNSID if v.len() >= 4 => {
                            link.peer_netnsid = Some(i32::from_ne_bytes(v[..4].try_into().unwrap()))
                        }
                        IFLA_LINKINFO => {
                            link.kind = attrs(v).find(|(t, _)| *t == IFLA_INFO_KIND).map(|(_, k)| cstr(k));
                        }
                        _ => {}
                    }
                }
                if ifindex > 0 && !link.name.is_empty() {
                    out.push(link);
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// The netns id that this namespace gives the namespace behind `ns` (an
/// open `/proc/<pid>/ns/net`). None when it has none (no link crosses to it).
pub fn nsid_of(ns: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let fd = socket(0)?;
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + RTGENMSG_LEN + 8);
    header(&mut req, RTM_GETNSID, NLM_F_REQUEST, 1);
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    req.extend_from_slice(&8u16.to_ne_bytes());
    req.extend_from_slice(&NETNSA_FD.to_ne_bytes());
    req.extend_from_slice(&(ns.as_raw_fd() as u32).to_ne_bytes());
    finish(&mut req);
    send(fd.as_fd(), &req)?;
    let mut buf = vec![0u8; 4096];
    let n = recv(fd.as_fd(), &mut buf, 0)?;
    parse_nsid(&buf[..n])
}

/// The reply to RTM_GETNSID: the id, or None for NETNSA_NSID_NOT_ASSIGNED.
pub fn parse_nsid(data: &[u8]) -> io::Result<Option<i32>> {
    let Some((ty, payload, _)) = next_message(data) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"));
    };
    match ty {
        NLMSG_ERROR => Err(nlmsg_error(payload)),
        RTM_NEWNSID if payload.len() >= RTGENMSG_LEN => Ok(attrs(&payload[RTGENMSG_LEN..])
            .find(|(t, v)| *t == NETNSA_NSID && v.len() >= 4)
            .map(|(_, v)| i32::from_ne_bytes(v[..4].try_into().unwrap()))
            .filter(|&id| id >= 0)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected netlink message type {ty}"))),
    }
}

/// A socket that hears about links appearing, changing and going, so that a
/// new container's veth is attached before its first packet.
pub struct LinkEvents {
    fd: OwnedFd,
}


impl LinkEvents {
    pub fn subscribe() -> io::Result<Self> {
        Ok(Self { fd: socket(RTMGRP_LINK)? })
    }

    /// Wait up to `timeout` for changes; true if any arrived (they are
    /// consumed).
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        r > 0 && self.drain()
    }

    /// Discard what arrived; true if anything did (or the socket overran,
    /// which also means "look again").
    fn drain(&self) -> bool {
        let mut buf = vec![0u8; 16 << 10];
        let mut any = false;
        loop {
            match recv(self.fd.as_fd(), &mut buf, libc::MSG_DONTWAIT) {
                Ok(0) => return any,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
                Err(_) => return true, // ENOBUFS: events were lost; rescan
            }
        }
    }
}

/// (type, payload, rest) of the first message, if it is whole.
fn next_message(data: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    if data.len() < NLMSG_HDRLEN {
        return None;
    }
    let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
    if len < NLMSG_HDRLEN || len > data.len() {
        return None;
    }
    let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
    let next = align4(len).min(data.len());
    Some((ty, &data[NLMSG_HDRLEN..len], &data[next..]))
}

fn nlmsg_error(payload: &[u8]) -> io::Error {
    let errno = payload.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(0);
    if errno == 0 {
        io::Error::new(io::ErrorKind::InvalidData, "netlink: unexpected acknowledgement")
    } else {
        io::Error::from_raw_os_error(-errno)
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Route attributes (type without its flag bits, value).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, value))
    })
}

fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    fn message(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        header(&mut m, ty, 0, 1);
        m.extend_from_slice(body);
        finish(&mut m);
        m.resize(align4(m.len()), 0);
        m
    }

    fn newlink(ifindex: i32, name: &str, kind: Option<&str>, nsid: Option<i32>) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        body.extend(attr(IFLA_IFNAME, format!("{name}\0").as_bytes()));
        if let Some(k) = kind {
            body.extend(attr(IFLA_LINKINFO, &attr(IFLA_INFO_KIND, k.as_bytes())));
        }
        if let Some(id) = nsid {
            body.extend(attr(IFLA_LINK_NETNSID, &id.to_ne_bytes()));
        }
        message(RTM_NEWLINK, &body)
    }

    #[test]
    fn links_with_kind_and_peer_netns() {
        let mut dgram = newlink(1, "lo", None, None);
        dgram.extend(newlink(7, "veth3a9f", Some("veth"), Some(4)));
        dgram.extend(newlink(8, "docker0", Some("bridge"), None));
        let mut out = Vec::new();
        assert!(!parse_links(&dgram, &mut out).unwrap(), "no DONE yet");
        assert_eq!(
            out,
            vec![
                Link { ifindex: 1, name: "lo".into(), kind: None, peer_netnsid: None },
                Link { ifindex: 7, name: "veth3a9f".into(), kind: Some("veth".into()), peer_netnsid: Some(4) },
                Link { ifindex: 8, name: "docker0".into(), kind: Some("bridge".into()), peer_netnsid: None },
            ]
        );
        assert!(parse_links(&message(NLMSG_DONE, &[0; 4]), &mut out).unwrap());
    }

    #[test]
    fn malformed_datagrams_are_cut_not_fatal() {
        let good = newlink(7, "veth0", Some("veth"), Some(1));
        for cut in 0..good.len() {
            let mut out = Vec::new();
            assert!(parse_links(&good[..cut], &mut out).is_ok());
            assert!(out.is_empty(), "a cut message yields nothing (cut at {cut})");
        }
        // An attribute claiming more bytes than there are.
        let mut bad = good.clone();
        bad[NLMSG_HDRLEN + IFINFOMSG_LEN] = 0xff;
        let mut out = Vec::new();
        parse_links(&bad, &mut out).unwrap();
        assert_eq!(out.len(), 0, "no name, no link");
        let mut out = Vec::new();
        let err = parse_links(&message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes()), &mut out).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn nsid_reply() {
        let mut body = vec![0u8; RTGENMSG_LEN];
        body.extend(attr(NETNSA_NSID, &3i32.to_ne_bytes()));
        assert_eq!(parse_nsid(&message(RTM_NEWNSID, &body)).unwrap(), Some(3));
        let mut body = vec![0u8; RTGENMSG_LEN];
        body.extend(attr(NETNSA_NSID, &(-1i32).to_ne_bytes()));
        assert_eq!(parse_nsid(&message(RTM_NEWNSID, &body)).unwrap(), None, "not assigned");
        assert!(parse_nsid(&[1, 2, 3]).is_err());
        assert_eq!(parse_nsid(&message(NLMSG_ERROR, &(-libc::EBADF).to_ne_bytes())).unwrap_err().raw_os_error(), Some(libc::EBADF));
    }

    /// The real kernel: this namespace's links include `lo`.
    #[test]
    fn lists_this_namespace() {
        let links = links().expect("RTM_GETLINK needs no privilege");
        assert!(links.iter().any(|l| l.name == "lo" && l.ifindex == 1), "{links:?}");
    }
}
