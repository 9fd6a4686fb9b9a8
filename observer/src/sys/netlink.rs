//! rtnetlink for the observer: list the links (name, kind, the peer's netns
//! id), ask the netns id of a namespace file, ask the kernel how it routes an
//! address (`ip route get`), and hear when links come and go.
//!
//! The messages are built and parsed by netlink-packet-route (on
//! netlink-packet-core), the socket is netlink-sys's; what stays here is
//! which requests to send and which attributes to keep. Replies are read
//! leniently: a message cut short ends its datagram, and an attribute the
//! crate cannot parse (a kernel newer than the crate, or a crate bug: link
//! dumps of container veths have tripped it before) is skipped on its own,
//! so that it never costs the whole link. Nothing here panics on what the
//! kernel sends.
//!
//! Every request opens a socket of its own and blocks until the kernel
//! answers. Listing links takes the kernel's RTNL lock, which container
//! churn can hold for tens of milliseconds, so it runs on the veth thread
//! (capture/veths.rs); the netns id (RTM_GETNSID) takes no RTNL lock.
//! [`LinkEvents::wait`] never waits longer than it is told.
use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, BorrowedFd},
    time::Duration,
};

use netlink_packet_core::{
    DecodeError, Emitable, ErrorBuffer, ErrorMessage, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR, NetlinkBuffer, NetlinkMessage, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkHeader, LinkInfo, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    route::{RouteAttribute, RouteFlags, RouteHeader, RouteLwEnCapType, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

// Message types and attributes from linux/rtnetlink.h and linux/if_link.h
// that netlink-packet-route keeps private: the replies are dispatched here,
// attribute by attribute, rather than parsed whole by the crate.
const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWNSID: u16 = 88;
const IFLA_LINKINFO: u16 = 18;
/// Multicast group of link changes.
const RTMGRP_LINK: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink socket: {0}")]
    Socket(#[from] io::Error),
    /// The kernel answered the request with this errno.
    #[error("the kernel answered: {}", io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
    #[error("netlink: unexpected acknowledgement")]
    Ack,
    #[error("netlink: unexpected message type {0}")]
    Unexpected(u16),
    #[error("netlink reply: {0}")]
    Decode(#[from] DecodeError),
}

#[cfg(test)]
impl Error {
    /// The errno behind the error: the kernel's answer, or the socket's.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Socket(e) => e.raw_os_error(),
            Self::Kernel(errno) => Some(*errno),
            _ => None,
        }
    }
}

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

fn socket(groups: u32) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, groups))?;
    Ok(socket)
}

/// Send one request to the kernel on a new socket, which then holds the
/// answer.
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Socket> {
    let mut msg = NetlinkMessage::from(msg);
    msg.header.flags = NLM_F_REQUEST | flags;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    let socket = socket(0)?;
    socket.send(&buf, 0)?;
    Ok(socket)
}

/// The whole messages of one datagram, as (type, payload). A message cut
/// short, or with a length that cannot be, ends the datagram.
fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let msg = NetlinkBuffer::new_checked(data).ok()?;
        let (ty, payload) = (msg.message_type(), msg.payload());
        let next = (msg.length() as usize + 3) & !3;
        data = &data[next.min(data.len())..];
        Some((ty, payload))
    })
}

/// The first message of a reply, which must be whole.
fn first_message(data: &[u8]) -> Result<(u16, &[u8]), Error> {
    let msg = NetlinkBuffer::new_checked(data)?;
    Ok((msg.message_type(), msg.payload()))
}

/// The error an NLMSG_ERROR payload carries.
fn kernel_error(payload: &[u8]) -> Error {
    let parsed = ErrorBuffer::new_checked(&payload).and_then(|b| ErrorMessage::parse(&b));
    match parsed {
        // The kernel sends -errno; i32::MIN has no errno to be (and no
        // negation: it overflowed here, found by fuzzing).
        Ok(ErrorMessage { code: Some(code), .. }) => match code.get().checked_neg() {
            Some(errno) => Error::Kernel(errno),
            None => Error::Decode("netlink error code out of range".into()),
        },
        Ok(_) => Error::Ack,
        Err(e) => Error::Decode(e),
    }
}

/// The attributes of a message body, each as the crate parses it; those it
/// cannot parse are handed over as the raw buffer instead.
fn attributes<'a, A>(
    body: &'a [u8],
    parse: impl Fn(&NlaBuffer<&'a [u8]>) -> Result<A, DecodeError>,
) -> impl Iterator<Item = Result<A, NlaBuffer<&'a [u8]>>> {
    NlasIterator::new(body).map_while(Result::ok).map(move |nla| parse(&nla).map_err(|_| nla))
}

/// The name of interface `ifindex` in the current network namespace, or
/// `ifindex N` when it is gone (said of a budget, after the fact).
pub fn name_of(ifindex: u32) -> String {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    let name = buf.split(|&b| b == 0).next().unwrap_or_default();
    match std::str::from_utf8(name) {
        Ok(n) if !p.is_null() && !n.is_empty() => n.to_string(),
        _ => format!("ifindex {ifindex}"),
    }
}

/// The links of the current network namespace.
pub fn links() -> Result<Vec<Link>, Error> {
    let socket = request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
    let mut out = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        if parse_links(&datagram, &mut out)? {
            return Ok(out);
        }
    }
}

/// Append the RTM_NEWLINK messages of one datagram to `out`. True once the
/// dump is done. Malformed messages end the datagram, never panic.
pub fn parse_links(data: &[u8], out: &mut Vec<Link>) -> Result<bool, Error> {
    for (ty, payload) in messages(data) {
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => return Err(kernel_error(payload)),
            RTM_NEWLINK => out.extend(parse_link(payload)),
            _ => {}
        }
    }
    Ok(false)
}

/// One RTM_NEWLINK body; None without an index or a name.
fn parse_link(payload: &[u8]) -> Option<Link> {
    let header = LinkHeader::parse(payload).ok()?;
    let mut link =
        Link { ifindex: header.index, name: String::new(), kind: None, peer_netnsid: None };
    let body = &payload[header.buffer_len()..];
    let family = header.interface_family;
    let parse = |nla: &NlaBuffer<&[u8]>| LinkAttribute::parse_with_param(nla, family);
    for attr in attributes(body, parse) {
        match attr {
            Ok(LinkAttribute::IfName(name)) => link.name = name,
            Ok(LinkAttribute::LinkNetNsId(id)) => link.peer_netnsid = Some(id),
            Ok(LinkAttribute::LinkInfo(infos)) => {
                link.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                });
            }
            // The crate parses IFLA_LINKINFO whole (the port's data
            // included); when that fails, the kind alone still tells a veth.
            Err(nla) if nla.kind() == IFLA_LINKINFO => {
                link.kind = NlasIterator::new(nla.value())
                    .map_while(Result::ok)
                    .find_map(|n| InfoKind::parse(&n).ok())
                    .map(|k| k.to_string());
            }
            _ => {}
        }
    }
    (link.ifindex > 0 && link.ifindex <= i32::MAX as u32 && !link.name.is_empty()).then_some(link)
}

/// The netns id that this namespace gives the namespace behind `ns` (an
/// open `/proc/<pid>/ns/net`). None when it has none (no link crosses to it).
pub fn nsid_of(ns: BorrowedFd<'_>) -> Result<Option<i32>, Error> {
    let mut msg = NsidMessage::default();
    msg.attributes.push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
    let socket = request(RouteNetlinkMessage::GetNsId(msg), 0)?;
    let (reply, _) = socket.recv_from_full()?;
    parse_nsid(&reply)
}

/// The reply to RTM_GETNSID: the id, or None for NETNSA_NSID_NOT_ASSIGNED.
pub fn parse_nsid(data: &[u8]) -> Result<Option<i32>, Error> {
    match first_message(data)? {
        (NLMSG_ERROR, payload) => Err(kernel_error(payload)),
        (RTM_NEWNSID, payload) => {
            let msg = NsidMessage::parse(payload)?;
            let id = msg.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) => Some(*id),
                _ => None,
            });
            Ok(id.filter(|&id| id >= 0))
        }
        (ty, _) => Err(Error::Unexpected(ty)),
    }
}

/// How the kernel routes one destination, as far as choosing the
/// interfaces to watch needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Leaves by these interfaces (ifindex): one, or every nexthop of a
    /// multipath route. Empty when the reply named none.
    Out(Vec<u32>),
    /// Delivered to this host: one of its own (or anycast) addresses.
    Local,
    /// Leaves by no interface: a reject route (unreachable, prohibit,
    /// blackhole, throw), no route at all, or no such address family here.
    Refused(String),
}

/// What the kernel's lookup errors mean for a route request: no route
/// (ENETUNREACH), a reject route or rule (EHOSTUNREACH, EACCES, EINVAL for
/// blackhole, EAGAIN for throw), no IPv6 in this kernel (EAFNOSUPPORT,
/// EOPNOTSUPP), or an interface gone meanwhile (ENODEV).
const UNROUTABLE: [i32; 8] = [
    libc::ENETUNREACH,
    libc::EHOSTUNREACH,
    libc::EACCES,
    libc::EINVAL,
    libc::EAGAIN,
    libc::EAFNOSUPPORT,
    libc::EOPNOTSUPP,
    libc::ENODEV,
];

/// Ask the kernel how it routes `dst` from this host (RTM_GETROUTE, as
/// `ip route get`), leaving by `oif` if given. With `fib_match`, the answer
/// is the routing entry that matched (`ip route get fibmatch`: every
/// nexthop of a multipath route) rather than the one path this lookup took.
pub fn route_get(dst: IpAddr, oif: Option<u32>, fib_match: bool) -> Result<Route, Error> {
    let mut msg = RouteMessage::default();
    (msg.header.address_family, msg.header.destination_prefix_length) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    if fib_match {
        msg.header.flags = RouteFlags::FibMatch;
    }
    msg.attributes.push(RouteAttribute::Destination(dst.into()));
    msg.attributes.extend(oif.map(RouteAttribute::Oif));
    let socket = request(RouteNetlinkMessage::GetRoute(msg), 0)?;
    let (reply, _) = socket.recv_from_full()?;
    parse_route(&reply)
}

/// The reply to RTM_GETROUTE.
pub fn parse_route(data: &[u8]) -> Result<Route, Error> {
    let payload = match first_message(data)? {
        (NLMSG_ERROR, payload) => {
            return match kernel_error(payload) {
                Error::Kernel(errno) if UNROUTABLE.contains(&errno) => {
                    Ok(Route::Refused(io::Error::from_raw_os_error(errno).to_string()))
                }
                e => Err(e),
            };
        }
        (RTM_NEWROUTE, payload) => payload,
        (ty, _) => return Err(Error::Unexpected(ty)),
    };
    let header = RouteHeader::parse(payload)?;
    match header.kind {
        RouteType::Unicast | RouteType::Broadcast | RouteType::Multicast => {}
        RouteType::Local | RouteType::Anycast => return Ok(Route::Local),
        other => return Ok(Route::Refused(format!("{other:?} route").to_lowercase())),
    }
    let param = (header.address_family, header.kind, RouteLwEnCapType::default());
    let body = &payload[header.buffer_len()..];
    let mut oifs = Vec::new();
    for attr in attributes(body, |nla| RouteAttribute::parse_with_param(nla, param)) {
        match attr {
            Ok(RouteAttribute::Oif(i)) => oifs.push(i),
            // Dead nexthops too: their link may come back.
            Ok(RouteAttribute::MultiPath(hops)) => {
                oifs.extend(hops.iter().map(|h| h.interface_index))
            }
            _ => {}
        }
    }
    oifs.retain(|&i| i != 0);
    oifs.dedup();
    Ok(Route::Out(oifs))
}

/// A socket that hears about links appearing, changing and going, so that a
/// new container's veth is attached before its first packet.
pub struct LinkEvents {
    socket: Socket,
}

impl LinkEvents {
    pub fn subscribe() -> Result<Self, Error> {
        Ok(Self { socket: socket(RTMGRP_LINK)? })
    }

    /// Wait up to `timeout` for changes; true if any arrived (they are
    /// consumed).
    pub fn wait(&self, timeout: Duration) -> bool {
        let fd = self.socket.as_raw_fd();
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        r > 0 && self.drain()
    }

    /// Discard what arrived; true if anything did (or the socket overran,
    /// which also means "look again").
    fn drain(&self) -> bool {
        let mut buf = Vec::with_capacity(16 << 10);
        let mut any = false;
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(0) => return any,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
                Err(_) => return true, // ENOBUFS: events were lost; rescan
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Messages built byte by byte as the kernel lays them out (native
    // endian), so that the crate's parsing is checked on the wire format
    // rather than on its own serialization.
    const NLMSG_HDRLEN: usize = 16;
    const IFINFOMSG_LEN: usize = 16;
    const RTGENMSG_LEN: usize = 4;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_MTU: u16 = 4;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_INFO_PORT_DATA: u16 = 5;
    const IFLA_LINK_NETNSID: u16 = 37;
    const NETNSA_NSID: u16 = 1;

    fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

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
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 2]); // flags
        m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        m.extend_from_slice(&[0; 4]); // port
        m.extend_from_slice(body);
        m.resize(align4(m.len()), 0);
        m
    }

    fn newlink_with(
        ifindex: i32,
        name: &str,
        linkinfo: Option<Vec<u8>>,
        nsid: Option<i32>,
    ) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        body.extend(attr(IFLA_IFNAME, format!("{name}\0").as_bytes()));
        if let Some(info) = linkinfo {
            body.extend(attr(IFLA_LINKINFO, &info));
        }
        if let Some(id) = nsid {
            body.extend(attr(IFLA_LINK_NETNSID, &id.to_ne_bytes()));
        }
        message(RTM_NEWLINK, &body)
    }

    fn newlink(ifindex: i32, name: &str, kind: Option<&str>, nsid: Option<i32>) -> Vec<u8> {
        newlink_with(ifindex, name, kind.map(|k| attr(IFLA_INFO_KIND, k.as_bytes())), nsid)
    }

    #[test]
    fn links_with_kind_and_peer_netns() {
        let mut dgram = newlink(1, "lo", None, None);
        dgram.extend(newlink(7, "veth3a9f", Some("veth"), Some(4)));
        dgram.extend(newlink(8, "docker0", Some("bridge"), None));
        let mut out = Vec::new();
        assert!(!parse_links(&dgram, &mut out).unwrap(), "no DONE yet");
        let link = |ifindex, name: &str, kind: Option<&str>, peer_netnsid| Link {
            ifindex,
            name: name.into(),
            kind: kind.map(Into::into),
            peer_netnsid,
        };
        assert_eq!(
            out,
            vec![
                link(1, "lo", None, None),
                link(7, "veth3a9f", Some("veth"), Some(4)),
                link(8, "docker0", Some("bridge"), None),
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
        let eperm = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        let err = parse_links(&eperm, &mut out).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    /// An attribute the crate rejects costs that attribute, not the link.
    #[test]
    fn unparsable_attributes_are_skipped_alone() {
        // IFLA_MTU two bytes long; a port's data with no port kind before
        // it, which fails the crate's IFLA_LINKINFO as a whole.
        let mut info = attr(IFLA_INFO_KIND, b"veth");
        info.extend(attr(IFLA_INFO_PORT_DATA, &attr(1, &[3])));
        let mut msg = newlink_with(9, "veth77", Some(info), Some(2));
        let mtu = attr(IFLA_MTU, &[0xdc, 0x05]);
        msg.extend_from_slice(&mtu);
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        let mut out = Vec::new();
        parse_links(&msg, &mut out).unwrap();
        let kind = Some("veth".into());
        let want = Link { ifindex: 9, name: "veth77".into(), kind, peer_netnsid: Some(2) };
        assert_eq!(out, vec![want]);
    }

    /// An error code that is no -errno (i32::MIN cannot be negated) is a
    /// malformed reply, not a panic.
    #[test]
    fn error_code_without_an_errno() {
        let mut body = i32::MIN.to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 16]); // the request's header
        let msg = message(NLMSG_ERROR, &body);
        assert!(matches!(parse_links(&msg, &mut Vec::new()), Err(Error::Decode(_))));
        assert!(matches!(parse_route(&msg), Err(Error::Decode(_))));
        assert!(matches!(parse_nsid(&msg), Err(Error::Decode(_))));
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
        let ebadf = message(NLMSG_ERROR, &(-libc::EBADF).to_ne_bytes());
        assert_eq!(parse_nsid(&ebadf).unwrap_err().raw_os_error(), Some(libc::EBADF));
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// A container's host-side veth enslaved to a bridge, as a 6.18 kernel
    /// dumps it (the RTM_NEWLINK body: stats, bridge port data, AF_SPEC and
    /// all; ifindex 8, its peer in netns id 0).
    const VETH_ON_BRIDGE: &str = concat!(
        "00000100080000000310000000000000070003007641000008000d00e8030000050010000200000005001100",
        "00000000050043000000000008000400dc050000080032004400000008003300ffff000008001b0000000000",
        "08001e000100000008003d000100000008001f000200000008002800ffff0000080029000000010008003a00",
        "0000010008003f0000000100080040000000010008003b00f8ff070008003c00ffff00000800420000000000",
        "080020000200000008000a00060000000500210000000000080023000100000008002f000000000008003000",
        "010000000600440000000000060045000000000005002700000000000a000100963bbee2024b00000a000200",
        "ffffffffffff0000cc0017000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000006400070000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000c002b0005000200000000006c0112000900010076657468000000000b0004006272696467650000",
        "5001050005000100000000000600020020000000080003000200000005000400000000000500050000000000",
        "0500060000000000050007000000000005001c00000000000500080001000000050009000100000005001b00",
        "0100000005001e000100000005000a000000000005000c00000000000c000d008000963bbee2024b0c000e00",
        "8000963bbee2024b06000f000180000006001000000000000600110001800000060012000100000005001300",
        "00000000050014000000000005001d000000000006001f000000000005002000000000000500230000000000",
        "050024000000000005002100000000000500270000000000050028000000000005002b00000000000c001500",
        "00000000000000000c00160000000000000000000c0017000000000000000000050019000100000008002500",
        "000200000800260000000000080029000000000008002a000000000008002500000000000800050007000000",
        "0c0006006e6f71756575650030031a008c000200880001000000000000000000000000000100000001000000",
        "0100000001000000000000000100000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000010270000",
        "e80300000000000000000000000000000000000001000000a0020a00080001000000000014000500ffff0000",
        "9f340800644f0000e8030000f40002000000000040000000dc05000001000000010000000100000001000000",
        "ffffffffa00f0000e803000000000000803a0900805101000300000058020000100000000000000001000000",
        "010000000100000060ea00000000000000000000000000000000000000000000000000000100000000000000",
        "0000000010270000e80300000100000000000000000000000100000000000000000000000100000000000000",
        "00000000000000000000000080ee360000000000000000000100000000000000000000000000000000000000",
        "000000000004000000000000ffff0000ffffffff010000000000000000000000000000003401030026000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000003c00060007000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000001400070000000000000000000000000000000000050008000000000024000e0000000000",
        "0000000000000000000000000000000000000000000000000000000004003e8004004180",
    );

    #[cfg(target_endian = "little")]
    #[test]
    fn recorded_veth_on_a_bridge() {
        let mut out = Vec::new();
        parse_links(&message(RTM_NEWLINK, &unhex(VETH_ON_BRIDGE)), &mut out).unwrap();
        let kind = Some("veth".into());
        let want = Link { ifindex: 8, name: "vA".into(), kind, peer_netnsid: Some(0) };
        assert_eq!(out, vec![want]);
    }

    /// Replies of a 6.18 kernel to RTM_GETROUTE, recorded in a namespace with
    /// `default nexthop via 10.9.0.1 dev dummy0 nexthop via 10.9.1.1 dev
    /// dummy1` (ifindex 3 and 5), `unreachable 169.254.169.253`, `unreachable
    /// fd00:ec2::254`, `fd00:ec2::23 dev dummy1`, and the addresses 10.9.1.2
    /// and 2001:db8::1.
    #[cfg(target_endian = "little")]
    #[test]
    fn recorded_route_replies() {
        let multipath_lookup = concat!(
            "700000001800000001000000bfec04be02200000fe0000010002000008000f00fe00000008000100a9fea9fe",
            "0800040003000000080007000a090002080005000a090001080019000000000024000c000200000000000000",
            "000000000000000000000000000000000000000000000000",
        );
        let multipath_entry = concat!(
            "480000001800000001000000632389de02000000fe0300010000000008000f00fe0000002400090010000000",
            "03000000080005000a0900011000000005000000080005000a090101",
        );
        let unreachable4 = concat!(
            "380000000200000001000000ee1a16e88fffffff240000001a00010001000000000000000220000000000000",
            "0020000008000100a9fea9fd",
        );
        let local4_entry = concat!(
            "3c0000001800000001000000927b369102200000fe02fe020000000008000f00fe000000080001000a090102",
            "080007000a0901020800040005000000",
        );
        let unicast6_entry = concat!(
            "74000000180000000100000032e7f9d80a800000fe0300010000000008000f00fe00000014000100fd000ec2",
            "000000000000000000000023080006000a000000080004000500000024000c00000000000000000000000000",
            "00000000000000000000000000000000000000000500140000000000",
        );
        let unreachable6 = concat!(
            "44000000020000000100000095cce4f18fffffff300000001a00010001000000000000000a80000000000000",
            "0020000014000100fd000ec2000000000000000000000254",
        );
        let local6_lookup = concat!(
            "9c00000018000000010000001a2f6ea40a808000ff0200020000000008000f00ff0000001400010020010db8",
            "00000000000000000000000114000200000000000000000000000000000000001400070020010db800000000",
            "00000000000000010800060000000000080004000100000024000c0002000000000000000000000000000000",
            "000000000000000000000000000000000500140000000000",
        );
        let route = |hex: &str| parse_route(&unhex(hex)).unwrap();
        // The lookup takes one path; the matching entry holds both.
        assert_eq!(route(multipath_lookup), Route::Out(vec![3]));
        assert_eq!(route(multipath_entry), Route::Out(vec![3, 5]));
        assert_eq!(route(unicast6_entry), Route::Out(vec![5]));
        // The entry of a local address names the device holding it.
        assert_eq!(route(local4_entry), Route::Local);
        assert_eq!(route(local6_lookup), Route::Local);
        let refused = Route::Refused(io::Error::from_raw_os_error(libc::EHOSTUNREACH).to_string());
        assert_eq!(route(unreachable4), refused);
        assert_eq!(route(unreachable6), refused);
    }

    #[test]
    fn route_reply_errors_and_reject_types() {
        let error = |errno: i32| message(NLMSG_ERROR, &(-errno).to_ne_bytes());
        assert!(matches!(parse_route(&error(libc::ENETUNREACH)), Ok(Route::Refused(_))));
        assert!(matches!(parse_route(&error(libc::EAFNOSUPPORT)), Ok(Route::Refused(_))));
        let enobufs = parse_route(&error(libc::ENOBUFS)).unwrap_err();
        assert_eq!(enobufs.raw_os_error(), Some(libc::ENOBUFS));
        assert!(matches!(parse_route(&message(NLMSG_ERROR, &[0; 4])), Err(Error::Ack)));
        assert!(parse_route(&[0; 8]).is_err());
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
        // scope, type, flags; then RTA_OIF.
        let rtmsg = |rtn: u8| {
            let mut body = vec![libc::AF_INET as u8, 32, 0, 0, 254, 4, 0, rtn, 0, 0, 0, 0];
            body.extend(attr(4, &2u32.to_ne_bytes()));
            message(RTM_NEWROUTE, &body)
        };
        assert_eq!(parse_route(&rtmsg(1)).unwrap(), Route::Out(vec![2]), "unicast");
        assert_eq!(parse_route(&rtmsg(3)).unwrap(), Route::Out(vec![2]), "broadcast");
        assert_eq!(parse_route(&rtmsg(4)).unwrap(), Route::Local, "anycast");
        for (rtn, what) in [(6, "blackhole"), (7, "unreachable"), (8, "prohibit"), (9, "throw")] {
            assert_eq!(parse_route(&rtmsg(rtn)).unwrap(), Route::Refused(format!("{what} route")));
        }
        // An RTA_OIF the crate cannot parse is no device, not an error.
        let mut body = vec![libc::AF_INET as u8, 32, 0, 0, 254, 4, 0, 1, 0, 0, 0, 0];
        body.extend(attr(4, &[2, 0]));
        assert_eq!(parse_route(&message(RTM_NEWROUTE, &body)).unwrap(), Route::Out(vec![]));
    }

    /// The real kernel: this namespace's links include `lo`.
    #[test]
    fn lists_this_namespace() {
        let links = links().expect("RTM_GETLINK needs no privilege");
        assert!(links.iter().any(|l| l.name == "lo" && l.ifindex == 1), "{links:?}");
    }

    /// The real kernel: loopback addresses are delivered locally, whether
    /// the lookup or the matching entry is asked for.
    #[test]
    fn routes_this_namespace() {
        for fib_match in [false, true] {
            let r = route_get("127.0.0.1".parse().unwrap(), None, fib_match).unwrap();
            assert_eq!(r, Route::Local, "fibmatch {fib_match}");
            match route_get("::1".parse().unwrap(), None, fib_match).unwrap() {
                Route::Local | Route::Refused(_) => {} // Refused: no IPv6 here
                r => panic!("::1: {r:?}"),
            }
        }
    }
}
