//! Decodes the packet snapshot of a [`Record`](observer_ebpf::Record):
//! `data[..snap_len]`, bytes from the IP header on.
//!
//! Pure and std-only. [`decode`] runs on every captured packet, so it never
//! panics: the IP, TCP and UDP headers are read by `etherparse` (its lax
//! slicing takes the IP length fields without trusting them), the few bytes
//! read here go through bounds-checked slice access, and no length field is
//! trusted (a header that claims more bytes than the packet or the snapshot
//! holds is either an error or, for the optional parts, ignored).
//!
//! What counts as what:
//! - The snapshot may be shorter than the packet (the eBPF side copies at most
//!   512 bytes, and only headers + 16 payload bytes of packets that come from
//!   an endpoint) and, on tc ingress, longer than it (Ethernet padding after
//!   the IP datagram). Lengths (`ip_len`, `payload_len`) come from the header
//!   fields; payload bytes are looked at only where both the snapshot and the
//!   IP length say they exist.
//! - The IP header and the fixed part of the transport header (TCP 20, UDP 8,
//!   ICMP 8 bytes) must be in the snapshot, else [`DecodeError::Truncated`].
//!   TCP options cut off by the snapshot are tolerated (no payload is seen).
//! - Extension headers (IPv4 AH, IPv6's) are not followed: the protocol is the
//!   IP header's own protocol / next-header field.
//! - Checksums are not verified (offloads leave them unset on egress).
//!
//! Security rule: HTTP header VALUES are never stored. Only the presence of
//! the IMDSv2 token headers is recorded, and only the request line's method
//! and path are kept.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use etherparse::{
    IpNumber, Ipv6Header, LaxIpv4Slice, LaxIpv6Slice, TcpHeader, UdpHeader, UdpHeaderSlice,
    err::{LenError, ipv4, ipv6, tcp},
    icmpv4, icmpv6,
};

use crate::model::TcpFlags;

/// Length of the fixed ICMP(v6) header: type, code, checksum, 4 more bytes.
const ICMP_HDR: usize = 8;

/// Longest request path kept, in bytes (the path is ASCII, so also chars).
pub const MAX_PATH: usize = 256;

/// Which header a [`DecodeError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    Ipv4,
    Ipv6,
    Tcp,
    Udp,
    Icmp,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Tcp => "TCP",
            Layer::Udp => "UDP",
            Layer::Icmp => "ICMP",
        })
    }
}

/// Why a snapshot could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `family` was neither 4 nor 6.
    #[error("unsupported address family {0} (expected 4 or 6)")]
    UnsupportedFamily(u8),
    /// The IP version nibble does not match `family`.
    #[error("IP version {version} in a family-{family} record")]
    VersionMismatch { family: u8, version: u8 },
    /// The snapshot ends inside a header that must be present.
    #[error("{layer} header truncated: need {need} bytes, snapshot has {have}")]
    Truncated { layer: Layer, need: usize, have: usize },
    /// A header-length field is below its minimum (IPv4 IHL < 5, TCP data
    /// offset < 5); `len` is the length it claims, in bytes.
    #[error("{layer} header length {len} is below the minimum")]
    BadHeaderLength { layer: Layer, len: usize },
    /// The IP length field leaves less room than the headers need: `declared`
    /// bytes where `need` are required. Also raised for an IPv4 total length
    /// or IPv6 payload length of 0 (jumbograms / BIG TCP are not decoded).
    #[error("{layer}: length field leaves {declared} bytes, headers need {need}")]
    BadLength { layer: Layer, declared: usize, need: usize },
    /// A non-first IPv4 fragment: no transport header to decode. `offset` is
    /// in bytes.
    #[error("non-first IPv4 fragment (offset {offset})")]
    Fragment { offset: usize },
}

/// Transport protocol. ICMPv4 (1) and ICMPv6 (58) are both [`Proto::Icmp`];
/// `Other` carries the IPv4 protocol / IPv6 next-header number (an IPv6
/// extension header shows up here, e.g. `Other(0)` for hop-by-hop).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Other(u8),
}

impl Proto {
    fn from_number(n: IpNumber, family: u8) -> Self {
        match (n, family) {
            (IpNumber::TCP, _) => Proto::Tcp,
            (IpNumber::UDP, _) => Proto::Udp,
            (IpNumber::ICMP, 4) | (IpNumber::IPV6_ICMP, 6) => Proto::Icmp,
            (n, _) => Proto::Other(n.0),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::Tcp => f.write_str("tcp"),
            Proto::Udp => f.write_str("udp"),
            Proto::Icmp => f.write_str("icmp"),
            Proto::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// The TCP fields the observer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
}

#[cfg(test)]
impl Tcp {
    pub fn has(&self, flag: TcpFlags) -> bool {
        self.flags.contains(flag)
    }

    /// This segment's flags as the event stream writes them.
    pub fn flags_str(&self) -> String {
        self.flags.to_string()
    }
}

/// What the first payload bytes of a TCP segment say, if they start an
/// HTTP/1.x message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Http {
    /// A request line. `path` is the request target (starts with `/`, at most
    /// [`MAX_PATH`] bytes, visible ASCII only). The flags say whether the
    /// IMDSv2 header NAMES appear in the header block within the snapshot;
    /// their values are never read.
    Request {
        method: String,
        path: String,
        /// `X-aws-ec2-metadata-token:` present.
        token_header: bool,
        /// `X-aws-ec2-metadata-token-ttl-seconds:` present.
        token_ttl_header: bool,
        /// The SDK named by `User-Agent` (only its name and version are
        /// kept; a header line cut by the snapshot names none).
        sdk: Option<crate::model::Sdk>,
        /// `amz-sdk-request: attempt=N; max=M`.
        attempt: Option<(u8, u8)>,
    },
    /// A status line `HTTP/1.x NNN`.
    Response { status: u16 },
}

/// Which ICMP error an [`IcmpError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IcmpKind {
    /// ICMPv4 type 11 / ICMPv6 type 3 (code 0: TTL / hop limit exceeded in
    /// transit).
    TimeExceeded,
    /// ICMPv4 type 3 / ICMPv6 type 1.
    DestUnreachable,
}

impl fmt::Display for IcmpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IcmpKind::TimeExceeded => "time-exceeded",
            IcmpKind::DestUnreachable => "dest-unreachable",
        })
    }
}

/// An ICMP(v6) error and the packet it is about (the "inner" packet quoted in
/// its body).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpError {
    pub kind: IcmpKind,
    /// The ICMP code.
    pub code: u8,
    /// Inner source / destination. Port 0 when the inner packet is not
    /// TCP/UDP, is a non-first fragment, or its ports are not in the snapshot.
    pub inner_src: SocketAddr,
    pub inner_dst: SocketAddr,
    pub inner_proto: Proto,
    /// TTL / hop limit of the inner packet as the reporting node saw it.
    pub inner_ttl: u8,
    /// Inner TCP sequence number, when the inner packet is TCP and the
    /// snapshot holds it.
    pub inner_tcp_seq: Option<u32>,
}

/// A decoded snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Source / destination; port 0 for anything but TCP and UDP.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: Proto,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub tcp: Option<Tcp>,
    /// Datagram length from the IP header: IPv4 total length, IPv6 40 +
    /// payload length.
    pub ip_len: u32,
    /// Transport payload length from the length fields (IP length minus the IP
    /// and transport headers; for `Other`, everything after the IP header),
    /// not from the snapshot size.
    pub payload_len: u32,
    /// Only for TCP, from the payload bytes present in the snapshot.
    pub http: Option<Http>,
    /// Only for ICMP errors whose inner IP header is in the snapshot.
    pub icmp: Option<IcmpError>,
}

/// Decodes a snapshot starting at the IP header. `family` is the record's
/// family (4 or 6). Never panics.
pub fn decode(data: &[u8], family: u8) -> Result<Packet, DecodeError> {
    let ip = match family {
        4 => ipv4(data)?,
        6 => ipv6(data)?,
        other => return Err(DecodeError::UnsupportedFamily(other)),
    };
    // L4 length per the IP header.
    let l4_declared = if family == 4 {
        ip.len_field.checked_sub(ip.hdr_len).ok_or(DecodeError::BadLength {
            layer: Layer::Ipv4,
            declared: ip.len_field,
            need: ip.hdr_len,
        })?
    } else if ip.len_field == 0 {
        // Jumbogram / BIG TCP: the real length is elsewhere.
        return Err(DecodeError::BadLength { layer: Layer::Ipv6, declared: 0, need: 1 });
    } else {
        ip.len_field
    };
    if ip.frag_offset != 0 {
        return Err(DecodeError::Fragment { offset: ip.frag_offset });
    }
    // What the IP length leaves for the payload after a transport header of
    // `need` bytes.
    let payload_len = |layer, need| {
        l4_declared.checked_sub(need).map(clamp_u32).ok_or(DecodeError::BadLength {
            layer,
            declared: l4_declared,
            need,
        })
    };
    // The transport header is read from the snapshot (as far as it goes: a
    // datagram too short for it is for `payload_len` to report), the payload
    // only from `ip.payload`.
    let after_ip = data.get(ip.hdr_len..).unwrap_or(&[]);

    let mut pkt = Packet {
        src: SocketAddr::new(ip.src, 0),
        dst: SocketAddr::new(ip.dst, 0),
        proto: ip.proto,
        ttl: ip.ttl,
        tcp: None,
        ip_len: clamp_u32(ip.hdr_len + l4_declared),
        payload_len: clamp_u32(l4_declared),
        http: None,
        icmp: None,
    };
    match ip.proto {
        Proto::Tcp => {
            let h = tcp_header(after_ip).map_err(|e| match e {
                tcp::HeaderSliceError::Len(e) => truncated(Layer::Tcp, ip.hdr_len, &e),
                tcp::HeaderSliceError::Content(tcp::HeaderError::DataOffsetTooSmall {
                    data_offset,
                }) => DecodeError::BadHeaderLength {
                    layer: Layer::Tcp,
                    len: usize::from(data_offset) * 4,
                },
            })?;
            pkt.payload_len = payload_len(Layer::Tcp, h.header_len())?;
            pkt.src.set_port(h.source_port);
            pkt.dst.set_port(h.destination_port);
            pkt.tcp = Some(tcp_fields(&h));
            // Options cut by the snapshot: no payload bytes to look at.
            pkt.http = parse_http(ip.payload.get(h.header_len()..).unwrap_or(&[]));
        }
        Proto::Udp => {
            let h = UdpHeaderSlice::from_slice(after_ip)
                .map_err(|e| truncated(Layer::Udp, ip.hdr_len, &e))?;
            pkt.payload_len = payload_len(Layer::Udp, UdpHeader::LEN)?;
            pkt.src.set_port(h.source_port());
            pkt.dst.set_port(h.destination_port());
        }
        Proto::Icmp => {
            // Type and code are read here, not by etherparse: its Icmpv4Slice
            // wants a timestamp message to be exactly 20 bytes, which a cut or
            // padded snapshot need not be, and its typed view files codes it
            // does not know under `Unknown`, whatever the type.
            let Some(&[ty, code, ..]) = after_ip.get(..ICMP_HDR) else {
                return Err(DecodeError::Truncated {
                    layer: Layer::Icmp,
                    need: ip.hdr_len + ICMP_HDR,
                    have: data.len(),
                });
            };
            pkt.payload_len = payload_len(Layer::Icmp, ICMP_HDR)?;
            let kind = match (family, ty) {
                (4, icmpv4::TYPE_TIME_EXCEEDED) | (6, icmpv6::TYPE_TIME_EXCEEDED) => {
                    Some(IcmpKind::TimeExceeded)
                }
                (4, icmpv4::TYPE_DEST_UNREACH) | (6, icmpv6::TYPE_DST_UNREACH) => {
                    Some(IcmpKind::DestUnreachable)
                }
                _ => None,
            };
            if let Some(kind) = kind {
                let quote = ip.payload.get(ICMP_HDR..).unwrap_or(&[]);
                pkt.icmp = parse_inner(quote, family, kind, code);
            }
        }
        Proto::Other(_) => {}
    }
    Ok(pkt)
}

/// The IP-layer facts both families share, from etherparse's lax slices.
/// The length fields are as the header says, unchecked: [`decode`] checks
/// them, an ICMP quote's describe the original packet rather than the quote.
struct Ip<'a> {
    src: IpAddr,
    dst: IpAddr,
    /// From the IP header's own protocol / next-header field.
    proto: Proto,
    ttl: u8,
    hdr_len: usize,
    /// IPv4 total length or IPv6 payload length.
    len_field: usize,
    /// Byte offset of a non-first IPv4 fragment, else 0.
    frag_offset: usize,
    /// The bytes after the IP header that are both in the snapshot and in
    /// the datagram: the lax payload ends where the length field says or,
    /// if sooner, where the snapshot does. Meant for TCP, UDP and ICMP only
    /// (for an extension header etherparse would have skipped it).
    payload: &'a [u8],
}

fn ipv4(data: &[u8]) -> Result<Ip<'_>, DecodeError> {
    use ipv4::{HeaderError as E, HeaderSliceError as S};
    // The AH error (second) is for an extension header, not followed here.
    let (ip, _) = LaxIpv4Slice::from_slice(data).map_err(|e| match e {
        S::Len(e) => truncated(Layer::Ipv4, 0, &e),
        S::Content(E::UnexpectedVersion { version_number }) => {
            DecodeError::VersionMismatch { family: 4, version: version_number }
        }
        S::Content(E::HeaderLengthSmallerThanHeader { ihl }) => {
            DecodeError::BadHeaderLength { layer: Layer::Ipv4, len: usize::from(ihl) * 4 }
        }
    })?;
    let h = ip.header();
    Ok(Ip {
        src: h.source_addr().into(),
        dst: h.destination_addr().into(),
        proto: Proto::from_number(h.protocol(), 4),
        ttl: h.ttl(),
        hdr_len: h.slice().len(),
        len_field: h.total_len().into(),
        frag_offset: h.fragments_offset().byte_offset().into(),
        payload: ip.payload().payload,
    })
}

fn ipv6(data: &[u8]) -> Result<Ip<'_>, DecodeError> {
    use ipv6::{HeaderError as E, HeaderSliceError as S};
    // The extension header error (second) is for headers not followed here.
    let (ip, _) = LaxIpv6Slice::from_slice(data).map_err(|e| match e {
        S::Len(e) => truncated(Layer::Ipv6, 0, &e),
        S::Content(E::UnexpectedVersion { version_number }) => {
            DecodeError::VersionMismatch { family: 6, version: version_number }
        }
    })?;
    let h = ip.header();
    Ok(Ip {
        src: h.source_addr().into(),
        dst: h.destination_addr().into(),
        proto: Proto::from_number(h.next_header(), 6),
        ttl: h.hop_limit(),
        hdr_len: Ipv6Header::LEN,
        len_field: h.payload_length().into(),
        frag_offset: 0,
        payload: ip.payload().payload,
    })
}

/// etherparse's length error for the header of `layer`, which starts `off`
/// bytes into the snapshot, as ours.
fn truncated(layer: Layer, off: usize, e: &LenError) -> DecodeError {
    DecodeError::Truncated { layer, need: off + e.required_len, have: off + e.len }
}

/// The TCP header at the start of `l4`. Options cut by the snapshot are
/// tolerated: etherparse then gets the header with the missing option bytes
/// as zeros (options are never read, and the header length stays the one the
/// data offset says).
fn tcp_header(l4: &[u8]) -> Result<TcpHeader, tcp::HeaderSliceError> {
    match TcpHeader::from_slice(l4) {
        Err(tcp::HeaderSliceError::Len(e)) if e.len >= TcpHeader::MIN_LEN => {
            let mut padded = [0u8; TcpHeader::MAX_LEN];
            padded.iter_mut().zip(l4).for_each(|(p, b)| *p = *b);
            TcpHeader::from_slice(&padded).map(|(h, _)| h)
        }
        r => r.map(|(h, _)| h),
    }
}

fn tcp_fields(h: &TcpHeader) -> Tcp {
    let flags = [
        (h.fin, TcpFlags::FIN),
        (h.syn, TcpFlags::SYN),
        (h.rst, TcpFlags::RST),
        (h.psh, TcpFlags::PSH),
        (h.ack, TcpFlags::ACK),
        (h.urg, TcpFlags::URG),
        (h.ece, TcpFlags::ECE),
        (h.cwr, TcpFlags::CWR),
    ];
    Tcp {
        seq: h.sequence_number,
        ack: h.acknowledgment_number,
        flags: flags
            .into_iter()
            .filter(|&(set, _)| set)
            .fold(TcpFlags::empty(), |acc, (_, bit)| acc | bit),
    }
}

/// The packet quoted in an ICMP error. None when its IP header is not all in
/// the snapshot or does not parse; the ports and sequence number are optional.
/// The inner length fields describe the original packet, not the quote, so
/// they are not checked against anything.
fn parse_inner(quote: &[u8], family: u8, kind: IcmpKind, code: u8) -> Option<IcmpError> {
    let parse = if family == 4 { ipv4 } else { ipv6 };
    let ip = parse(quote).ok()?;
    // Only a first fragment starts with the transport header, and all of the
    // quote after the IP header is the transport header (not `ip.payload`,
    // which ends where the inner length field says). RFC 792 quotes just 8
    // bytes of it, too few for etherparse's TCP header (20 bytes), so the
    // ports and the sequence number are read here.
    let l4 = match quote.get(ip.hdr_len..) {
        Some(l4) if ip.frag_offset == 0 => l4,
        _ => &[],
    };
    let (sport, dport) = match (ip.proto, bytes(l4, 0)) {
        (Proto::Tcp | Proto::Udp, Some([a, b, c, d])) => {
            (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
        }
        _ => (0, 0),
    };
    let inner_tcp_seq = match ip.proto {
        Proto::Tcp => bytes(l4, 4).map(u32::from_be_bytes),
        _ => None,
    };
    Some(IcmpError {
        kind,
        code,
        inner_src: SocketAddr::new(ip.src, sport),
        inner_dst: SocketAddr::new(ip.dst, dport),
        inner_proto: ip.proto,
        inner_ttl: ip.ttl,
        inner_tcp_seq,
    })
}

/// The `N` bytes at `off` in `d`, if all there.
fn bytes<const N: usize>(d: &[u8], off: usize) -> Option<[u8; N]> {
    d.get(off..)?.get(..N)?.try_into().ok()
}

const METHODS: [&str; 7] = ["GET", "PUT", "POST", "HEAD", "DELETE", "PATCH", "OPTIONS"];
const TOKEN_HEADER: &[u8] = b"x-aws-ec2-metadata-token";
const TOKEN_TTL_HEADER: &[u8] = b"x-aws-ec2-metadata-token-ttl-seconds";

/// Recognises an HTTP/1.x request or status line at the start of `payload`.
pub(crate) fn parse_http(payload: &[u8]) -> Option<Http> {
    if payload.starts_with(b"HTTP/1.") {
        return parse_status(payload);
    }
    let method = METHODS.iter().find(|m| {
        let m = m.as_bytes();
        payload.len() > m.len() && payload.starts_with(m) && payload[m.len()] == b' '
    })?;
    let rest = payload.get(method.len() + 1..)?;
    // The path must end (with a space) inside the snapshot; a path cut by the
    // snapshot is not reported at all.
    let end = rest.iter().position(|&b| b == b' ')?;
    let path = &rest[..end];
    if path.first() != Some(&b'/') || !path.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let kept = &path[..path.len().min(MAX_PATH)];
    // Visible ASCII, so valid UTF-8; the fallback never triggers.
    let path = redact(String::from_utf8(kept.to_vec()).ok()?);

    let h = headers(rest.get(end..).unwrap_or(&[]));
    Some(Http::Request {
        method: (*method).to_string(),
        path,
        token_header: h.token,
        token_ttl_header: h.ttl,
        sdk: h.sdk,
        attempt: h.attempt,
    })
}

/// Where the ECS agent serves a task's role credentials: what follows is
/// the handle to them.
const ECS_CREDENTIALS: &str = "/v2/credentials/";
/// What stands for a redacted part of a path.
pub const REDACTED: &str = "REDACTED";

/// A path as it may be written out: without its query string (it may carry
/// anything), and with the ECS credentials id replaced.
fn redact(mut path: String) -> String {
    if let Some(q) = path.find('?') {
        path.truncate(q);
    }
    if path.len() > ECS_CREDENTIALS.len() && path.starts_with(ECS_CREDENTIALS) {
        path.truncate(ECS_CREDENTIALS.len());
        path.push_str(REDACTED);
    }
    path
}

/// `HTTP/1.x NNN` followed by a space, CR or the end of the snapshot.
fn parse_status(payload: &[u8]) -> Option<Http> {
    let head = payload.get(..12)?;
    if !head[7].is_ascii_digit() || head[8] != b' ' {
        return None;
    }
    let digits = &head[9..12];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match payload.get(12) {
        None | Some(b' ') | Some(b'\r') => {}
        Some(_) => return None,
    }
    let status = digits.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    Some(Http::Response { status })
}

/// What the header block says, of the little we read.
#[derive(Default)]
struct Headers {
    token: bool,
    ttl: bool,
    sdk: Option<crate::model::Sdk>,
    attempt: Option<(u8, u8)>,
}

/// Whether the token / token-TTL header names start a line in the header
/// block, and the SDK and attempt of `User-Agent` / `amz-sdk-request`.
/// `after_target` is everything after the request target; the header block
/// starts at its first CRLF and ends at the blank line (or at the end of the
/// snapshot). Token headers: only names are compared, up to and including
/// the colon. The two values read are read only from whole lines (a line
/// the snapshot cuts could name a wrong version), and only through
/// `model::sdk`, which keeps nothing but a known name and its version.
fn headers(after_target: &[u8]) -> Headers {
    let mut h = Headers::default();
    let Some(first_crlf) = find(after_target, b"\r\n") else {
        return h;
    };
    let mut rest = &after_target[first_crlf + 2..];
    loop {
        let (line, next) = match find(rest, b"\r\n") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        if line.is_empty() {
            // Blank line: end of headers (body bytes are not headers).
            break;
        }
        h.token |= is_header(line, TOKEN_HEADER);
        h.ttl |= is_header(line, TOKEN_TTL_HEADER);
        if next.is_some() {
            if let Some(v) = value_of(line, b"User-Agent") {
                h.sdk = crate::model::sdk::from_user_agent(v);
            } else if let Some(v) = value_of(line, b"amz-sdk-request") {
                h.attempt = crate::model::sdk::attempt(v);
            }
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    h
}

fn value_of<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    is_header(line, name).then(|| line[name.len() + 1..].trim_ascii())
}

fn is_header(line: &[u8], name: &[u8]) -> bool {
    line.len() > name.len()
        && line[..name.len()].eq_ignore_ascii_case(name)
        && line[name.len()] == b':'
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- builders ---------------------------------------------------------

    const IMDS4: [u8; 4] = [169, 254, 169, 254];
    const POD4: [u8; 4] = [10, 244, 1, 7];
    const HOST4: [u8; 4] = [10, 0, 3, 15];
    // fd00:ec2::254
    const IMDS6: [u8; 16] = [0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54];
    // fd00:10:244::7
    const POD6: [u8; 16] = [0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07];
    // fd00::1
    const HOST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    const PUT_BODY: &[u8] = b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
    const TOKEN: &str = "AQAEAFakeTokenValueThatMustNeverAppear==";

    fn get_with_token() -> Vec<u8> {
        format!(
            "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: {TOKEN}\r\nAccept: */*\r\n\r\n"
        )
        .into_bytes()
    }

    /// IPv4 header with `options` (a multiple of 4 bytes) and `payload`.
    fn ipv4(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        ttl: u8,
        options: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let hl = 20 + options.len();
        let total = (hl + payload.len()) as u16;
        let mut p = vec![0x40 | (hl / 4) as u8, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34, 0x40, 0x00]); // id, DF
        p.extend_from_slice(&[ttl, proto, 0, 0]); // checksum left 0
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(options);
        p.extend_from_slice(payload);
        p
    }

    fn ipv6(src: [u8; 16], dst: [u8; 16], nh: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[nh, hop]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    fn tcp(
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        options: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let doff = (20 + options.len()) / 4;
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.extend_from_slice(&[(doff as u8) << 4, flags]);
        t.extend_from_slice(&64240u16.to_be_bytes()); // window
        t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        t.extend_from_slice(options);
        t.extend_from_slice(payload);
        t
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    fn icmp(ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
        let mut i = vec![ty, code, 0, 0, 0, 0, 0, 0];
        i.extend_from_slice(body);
        i
    }

    const MSS: [u8; 4] = [2, 4, 0x05, 0xb4];
    const SYN: u8 = TcpFlags::SYN.bits();
    const SYNACK: u8 = TcpFlags::SYN.bits() | TcpFlags::ACK.bits();
    const PSHACK: u8 = TcpFlags::PSH.bits() | TcpFlags::ACK.bits();

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }
    fn v6(a: [u8; 16], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    /// Cuts a packet the way the eBPF side does for packets from an
    /// endpoint: IP + transport headers + 16 payload bytes.
    fn snap_inbound(pkt: &[u8], headers: usize) -> &[u8] {
        &pkt[..pkt.len().min(headers + 16)]
    }

    fn all_packets() -> Vec<(Vec<u8>, u8)> {
        let get = get_with_token();
        let reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nAQAEtokenbody";
        let inner4 = ipv4(IMDS4, POD4, 6, 1, &[], &tcp(80, 43210, 7777, 1, PSHACK, &[], reply));
        let inner6 = ipv6(IMDS6, POD6, 6, 1, &tcp(80, 43210, 7777, 1, PSHACK, &[], reply));
        vec![
            (ipv4(POD4, IMDS4, 6, 64, &[], &tcp(43210, 80, 1000, 0, SYN, &MSS, &[])), 4),
            (ipv4(POD4, IMDS4, 6, 64, &[], &tcp(43210, 80, 1001, 5001, PSHACK, &[], PUT_BODY)), 4),
            (ipv4(POD4, IMDS4, 6, 64, &[], &tcp(43210, 80, 1001, 5001, PSHACK, &[], &get)), 4),
            (ipv4(IMDS4, POD4, 6, 1, &[], &tcp(80, 43210, 5001, 1100, PSHACK, &[], reply)), 4),
            (ipv4(POD4, IMDS4, 6, 64, &[1, 1, 1, 0], &tcp(43210, 80, 1000, 0, SYN, &[], &[])), 4),
            (ipv4(POD4, [10, 96, 0, 10], 17, 64, &[], &udp(5353, 53, b"\x12\x34query")), 4),
            (ipv4(HOST4, IMDS4, 1, 64, &[], &icmp(11, 0, &inner4)), 4),
            (ipv6(POD6, IMDS6, 6, 64, &tcp(43210, 80, 1000, 0, SYN, &MSS, &[])), 6),
            (ipv6(POD6, IMDS6, 6, 64, &tcp(43210, 80, 1001, 5001, PSHACK, &[], PUT_BODY)), 6),
            (ipv6(IMDS6, POD6, 6, 1, &tcp(80, 43210, 5001, 1100, PSHACK, &[], reply)), 6),
            (ipv6(POD6, HOST6, 17, 64, &udp(5353, 53, b"\x12\x34query")), 6),
            (ipv6(HOST6, IMDS6, 58, 64, &icmp(3, 0, &inner6)), 6),
        ]
    }

    // ---- TCP / HTTP -------------------------------------------------------

    #[test]
    fn ipv4_syn() {
        let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(43210, 80, 1000, 0, SYN, &MSS, &[]));
        let d = decode(&p, 4).unwrap();
        assert_eq!(d.src, v4(POD4, 43210));
        assert_eq!(d.dst, v4(IMDS4, 80));
        assert_eq!(d.proto, Proto::Tcp);
        assert_eq!(d.ttl, 64);
        assert_eq!(d.ip_len, 44);
        assert_eq!(d.payload_len, 0);
        let t = d.tcp.unwrap();
        assert_eq!((t.seq, t.ack, t.flags), (1000, 0, TcpFlags::SYN));
        assert_eq!(t.flags_str(), "SYN");
        assert!(t.has(TcpFlags::SYN) && !t.has(TcpFlags::ACK));
        assert_eq!(d.http, None);
        assert_eq!(d.icmp, None);
    }

    #[test]
    fn ipv4_put_token_request() {
        let p = ipv4(POD4, IMDS4, 6, 63, &[], &tcp(43210, 80, 1001, 5001, PSHACK, &[], PUT_BODY));
        let d = decode(&p, 4).unwrap();
        assert_eq!(d.ttl, 63);
        assert_eq!(d.ip_len as usize, 40 + PUT_BODY.len());
        assert_eq!(d.payload_len as usize, PUT_BODY.len());
        assert_eq!(d.tcp.unwrap().flags_str(), "PSH|ACK");
        assert_eq!(
            d.http,
            Some(Http::Request {
                method: "PUT".into(),
                path: "/latest/api/token".into(),
                token_header: false,
                token_ttl_header: true,
                sdk: None,
                attempt: None,
            })
        );
    }

    #[test]
    fn ipv4_get_with_token_never_keeps_the_value() {
        let get = get_with_token();
        let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(43210, 80, 1001, 5001, PSHACK, &[], &get));
        let d = decode(&p, 4).unwrap();
        assert_eq!(
            d.http,
            Some(Http::Request {
                method: "GET".into(),
                path: "/latest/meta-data/iam/security-credentials/".into(),
                token_header: true,
                token_ttl_header: false,
                sdk: None,
                attempt: None,
            })
        );
        let dbg = format!("{d:?}");
        assert!(!dbg.contains(TOKEN) && !dbg.contains("AQAE"), "{dbg}");
    }

    #[test]
    fn header_names_case_insensitive_and_both() {
        let req = b"PUT /latest/api/token HTTP/1.1\r\nx-AWS-EC2-metadata-TOKEN-ttl-seconds: 60\r\nX-Aws-Ec2-Metadata-Token: x\r\n\r\n";
        let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 1, PSHACK, &[], req));
        match decode(&p, 4).unwrap().http {
            Some(Http::Request { token_header, token_ttl_header, .. }) => {
                assert!(token_header && token_ttl_header)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_sdk_and_attempt_come_from_whole_header_lines_only() {
        let ua = "Botocore/1.43.11 Python/3.11.7 Linux/6.18.44";
        let sdk_of = |req: &[u8]| {
            let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 1, PSHACK, &[], req));
            match decode(&p, 4).unwrap().http {
                Some(Http::Request { sdk, attempt, .. }) => (sdk.map(|s| s.to_string()), attempt),
                other => panic!("{other:?}"),
            }
        };
        let whole = format!(
            "GET / HTTP/1.1\r\nuser-agent: {ua}\r\namz-sdk-request: attempt=2; max=3\r\n\r\n"
        );
        assert_eq!(sdk_of(whole.as_bytes()), (Some("botocore/1.43.11".into()), Some((2, 3))));
        // Cut by the snapshot inside the version: unknown, not "1.4".
        assert_eq!(sdk_of(b"GET / HTTP/1.1\r\nUser-Agent: Botocore/1.4"), (None, None));
        // In the body, or in another header's value: not the User-Agent.
        assert_eq!(
            sdk_of(format!("PUT / HTTP/1.1\r\n\r\nUser-Agent: {ua}\r\n").as_bytes()).0,
            None
        );
        assert_eq!(
            sdk_of(format!("GET / HTTP/1.1\r\nX-Note: User-Agent: {ua}\r\n\r\n").as_bytes()).0,
            None
        );
        // Nothing but the name and version is kept of the header.
        let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 1, PSHACK, &[], whole.as_bytes()));
        let dbg = format!("{:?}", decode(&p, 4).unwrap());
        assert!(!dbg.contains("Python") && !dbg.contains("Linux"), "{dbg}");
    }

    #[test]
    fn header_names_only_at_line_start_in_header_block_with_colon() {
        for req in [
            // In a value, not at a line start.
            &b"GET / HTTP/1.1\r\nFoo: x-aws-ec2-metadata-token: 1\r\n\r\n"[..],
            // In the body.
            b"PUT / HTTP/1.1\r\nContent-Length: 30\r\n\r\nx-aws-ec2-metadata-token: abc\r\n",
            // Name cut by the snapshot before the colon.
            b"GET / HTTP/1.1\r\nx-aws-ec2-metadata-token",
            // A longer name sharing the prefix.
            b"GET / HTTP/1.1\r\nx-aws-ec2-metadata-tokens: 1\r\n\r\n",
            // On the request line itself.
            b"GET /x-aws-ec2-metadata-token: HTTP/1.1\r\n\r\n",
        ] {
            let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 1, PSHACK, &[], req));
            match decode(&p, 4).unwrap().http {
                Some(Http::Request { token_header, token_ttl_header, .. }) => {
                    assert!(
                        !token_header && !token_ttl_header,
                        "{:?}",
                        String::from_utf8_lossy(req)
                    )
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reply_200_from_truncated_inbound_snapshot() {
        let reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 56\r\n\r\nAQAEsecret-token-body-that-is-not-in-the-snapshot-at-all";
        let p = ipv4(IMDS4, POD4, 6, 1, &[], &tcp(80, 43210, 5001, 1100, PSHACK, &[], reply));
        let snap = snap_inbound(&p, 40);
        assert_eq!(snap.len(), 56);
        let d = decode(snap, 4).unwrap();
        assert_eq!(d.src, v4(IMDS4, 80));
        assert_eq!(d.dst, v4(POD4, 43210));
        assert_eq!(d.ttl, 1);
        assert_eq!(d.ip_len as usize, p.len());
        assert_eq!(d.payload_len as usize, reply.len());
        assert_eq!(d.http, Some(Http::Response { status: 200 }));
    }

    #[test]
    fn status_lines() {
        let cases: [(&[u8], Option<u16>); 9] = [
            (b"HTTP/1.1 401 Unauthorized\r\n", Some(401)),
            (b"HTTP/1.0 404", Some(404)),
            (b"HTTP/1.1 400\r\n", Some(400)),
            (b"HTTP/1.1 20", None),
            (b"HTTP/1.1 2000 OK", None),
            (b"HTTP/1.x 200 OK", None),
            (b"HTTP/2 200 OK", None),
            (b"HTTP/1.1 2a0 OK", None),
            (b"http/1.1 200 OK", None),
        ];
        for (payload, want) in cases {
            let p = ipv4(IMDS4, POD4, 6, 1, &[], &tcp(80, 1, 1, 1, PSHACK, &[], payload));
            let got = decode(&p, 4).unwrap().http;
            assert_eq!(
                got,
                want.map(|status| Http::Response { status }),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn request_line_cut_by_snapshot_gives_no_http() {
        let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(43210, 80, 1, 1, PSHACK, &[], PUT_BODY));
        // Cut inside the path.
        let d = decode(&p[..40 + 12], 4).unwrap();
        assert_eq!(d.http, None);
        assert_eq!(d.payload_len as usize, PUT_BODY.len());
        // Cut right after the path's terminating space: method and path known.
        let cut = 40 + b"PUT /latest/api/token ".len();
        match decode(&p[..cut], 4).unwrap().http {
            Some(Http::Request { method, path, token_header, token_ttl_header, .. }) => {
                assert_eq!((method.as_str(), path.as_str()), ("PUT", "/latest/api/token"));
                assert!(!token_header && !token_ttl_header);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_line_rejects() {
        for payload in [
            &b"get / HTTP/1.1\r\n"[..],
            b"GET  / HTTP/1.1\r\n",
            b"GET latest HTTP/1.1\r\n",
            b"GETX / HTTP/1.1\r\n",
            b"CONNECT / HTTP/1.1\r\n",
            b"GET /a\x01b HTTP/1.1\r\n",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n",
            b"GET",
            b"GET ",
            b"",
        ] {
            let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 1, PSHACK, &[], payload));
            assert_eq!(decode(&p, 4).unwrap().http, None, "{:?}", String::from_utf8_lossy(payload));
        }
        for m in METHODS {
            let req = format!("{m} /x HTTP/1.1\r\n\r\n");
            let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 1, PSHACK, &[], req.as_bytes()));
            match decode(&p, 4).unwrap().http {
                Some(Http::Request { method, path, .. }) => {
                    assert_eq!((method.as_str(), path.as_str()), (m, "/x"))
                }
                other => panic!("{m}: {other:?}"),
            }
        }
    }

    #[test]
    fn long_path_capped() {
        let long = format!("/{}", "a".repeat(400));
        let req = format!("GET {long} HTTP/1.1\r\nX-aws-ec2-metadata-token: t\r\n\r\n");
        let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 1, PSHACK, &[], req.as_bytes()));
        match decode(&p, 4).unwrap().http {
            Some(Http::Request { path, token_header, .. }) => {
                assert_eq!(path.len(), MAX_PATH);
                assert_eq!(path, long[..MAX_PATH]);
                assert!(token_header);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http_only_for_tcp() {
        let p = ipv4(POD4, IMDS4, 17, 64, &[], &udp(1, 80, b"GET / HTTP/1.1\r\n\r\n"));
        let d = decode(&p, 4).unwrap();
        assert_eq!(d.http, None);
        assert_eq!(d.tcp, None);
    }

    #[test]
    fn link_padding_after_datagram_is_not_payload() {
        // A 40-byte bare ACK padded to the 46-byte Ethernet minimum, with the
        // padding happening to look like a request.
        let mut p =
            ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 1, TcpFlags::ACK.bits(), &[], &[]));
        p.extend_from_slice(b"GET / ");
        let d = decode(&p, 4).unwrap();
        assert_eq!(d.ip_len, 40);
        assert_eq!(d.payload_len, 0);
        assert_eq!(d.http, None);
    }

    #[test]
    fn tcp_options_cut_by_snapshot() {
        let opts = [1u8; 20];
        let p = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 9, 0, SYN, &opts, &[]));
        let d = decode(&p[..50], 4).unwrap();
        assert_eq!(d.tcp.unwrap().seq, 9);
        assert_eq!(d.payload_len, 0);
    }

    #[test]
    fn ipv4_with_options_ihl6() {
        let p = ipv4(
            POD4,
            IMDS4,
            6,
            64,
            &[0x94, 0x04, 0, 0],
            &tcp(43210, 80, 1001, 5001, PSHACK, &[], PUT_BODY),
        );
        assert_eq!(p[0], 0x46);
        let d = decode(&p, 4).unwrap();
        assert_eq!(d.src, v4(POD4, 43210));
        assert_eq!(d.dst, v4(IMDS4, 80));
        assert_eq!(d.tcp.unwrap().seq, 1001);
        assert_eq!(d.ip_len as usize, 44 + PUT_BODY.len());
        assert_eq!(d.payload_len as usize, PUT_BODY.len());
        assert!(
            matches!(d.http, Some(Http::Request { ref path, .. }) if path == "/latest/api/token")
        );
    }

    // ---- IPv6 -------------------------------------------------------------

    #[test]
    fn ipv6_syn_ack() {
        let p = ipv6(IMDS6, POD6, 6, 255, &tcp(80, 43210, 5000, 1001, SYNACK, &MSS, &[]));
        let d = decode(&p, 6).unwrap();
        assert_eq!(d.src, v6(IMDS6, 80));
        assert_eq!(d.dst, v6(POD6, 43210));
        assert_eq!(d.src.to_string(), "[fd00:ec2::254]:80");
        assert_eq!(d.ttl, 255);
        assert_eq!(d.ip_len, 64);
        assert_eq!(d.payload_len, 0);
        assert_eq!(d.tcp.unwrap().flags_str(), "SYN|ACK");
    }

    #[test]
    fn ipv6_put_get_and_reply() {
        let p = ipv6(POD6, IMDS6, 6, 64, &tcp(43210, 80, 1001, 5001, PSHACK, &[], PUT_BODY));
        let d = decode(&p, 6).unwrap();
        assert_eq!(d.ip_len as usize, 60 + PUT_BODY.len());
        assert_eq!(d.payload_len as usize, PUT_BODY.len());
        assert_eq!(
            d.http,
            Some(Http::Request {
                method: "PUT".into(),
                path: "/latest/api/token".into(),
                token_header: false,
                token_ttl_header: true,
                sdk: None,
                attempt: None,
            })
        );

        let get = get_with_token();
        let p = ipv6(POD6, IMDS6, 6, 64, &tcp(43210, 80, 1001, 5001, PSHACK, &[], &get));
        let d = decode(&p, 6).unwrap();
        assert!(matches!(
            d.http,
            Some(Http::Request { token_header: true, token_ttl_header: false, .. })
        ));
        assert!(!format!("{d:?}").contains(TOKEN));

        let reply = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        let p = ipv6(
            IMDS6,
            POD6,
            6,
            1,
            &tcp(
                80,
                43210,
                5001,
                1100,
                TcpFlags::FIN.bits() | TcpFlags::PSH.bits() | TcpFlags::ACK.bits(),
                &[],
                reply,
            ),
        );
        let d = decode(snap_inbound(&p, 60), 6).unwrap();
        assert_eq!(d.ttl, 1);
        assert_eq!(d.payload_len as usize, reply.len());
        assert_eq!(d.http, Some(Http::Response { status: 401 }));
    }

    #[test]
    fn ipv6_extension_header_is_other() {
        // Hop-by-hop (0) then TCP: not followed.
        let mut payload = vec![6, 0, 0, 0, 0, 0, 0, 0];
        payload.extend(tcp(1, 80, 1, 1, SYN, &[], &[]));
        let p = ipv6(POD6, IMDS6, 0, 64, &payload);
        let d = decode(&p, 6).unwrap();
        assert_eq!(d.proto, Proto::Other(0));
        assert_eq!(d.src.port(), 0);
        assert_eq!(d.dst.port(), 0);
        assert_eq!(d.tcp, None);
        assert_eq!(d.payload_len as usize, payload.len());
        // ICMPv4's number inside IPv6 is not ICMP either.
        let d = decode(&ipv6(POD6, IMDS6, 1, 64, &icmp(11, 0, &[])), 6).unwrap();
        assert_eq!(d.proto, Proto::Other(1));
    }

    #[test]
    fn ipv6_udp() {
        let p = ipv6(POD6, HOST6, 17, 64, &udp(5353, 53, b"\x12\x34query"));
        let d = decode(&p, 6).unwrap();
        assert_eq!(d.proto, Proto::Udp);
        assert_eq!(d.src, v6(POD6, 5353));
        assert_eq!(d.dst, v6(HOST6, 53));
        assert_eq!(d.payload_len, 7);
        assert_eq!(d.ip_len, 55);
        assert_eq!(d.tcp, None);
    }

    // ---- UDP / ICMP -------------------------------------------------------

    #[test]
    fn ipv4_udp() {
        let p = ipv4(POD4, [10, 96, 0, 10], 17, 64, &[], &udp(5353, 53, b"\x12\x34query"));
        let d = decode(&p, 4).unwrap();
        assert_eq!(d.proto, Proto::Udp);
        assert_eq!(d.src, v4(POD4, 5353));
        assert_eq!(d.dst, v4([10, 96, 0, 10], 53));
        assert_eq!(d.ip_len, 35);
        assert_eq!(d.payload_len, 7);
        assert_eq!((d.tcp, d.http, d.icmp), (None, None, None));
    }

    #[test]
    fn icmp_time_exceeded_with_inner_tcp() {
        // The host drops the TTL-1 PUT reply in ip_forward() and tells IMDS.
        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 56\r\n\r\nAQAEtoken";
        let inner =
            ipv4(IMDS4, POD4, 6, 1, &[], &tcp(80, 43210, 0xdead_beef, 1100, PSHACK, &[], reply));
        let p = ipv4(HOST4, IMDS4, 1, 64, &[], &icmp(11, 0, &inner));
        let d = decode(&p, 4).unwrap();
        assert_eq!(d.proto, Proto::Icmp);
        assert_eq!(d.src, v4(HOST4, 0));
        assert_eq!(d.dst, v4(IMDS4, 0));
        assert_eq!(d.payload_len as usize, inner.len());
        assert_eq!(d.http, None);
        assert_eq!(
            d.icmp,
            Some(IcmpError {
                kind: IcmpKind::TimeExceeded,
                code: 0,
                inner_src: v4(IMDS4, 80),
                inner_dst: v4(POD4, 43210),
                inner_proto: Proto::Tcp,
                inner_ttl: 1,
                inner_tcp_seq: Some(0xdead_beef),
            })
        );

        // RFC 792 minimum quote: inner IP header + 8 bytes.
        let p = ipv4(HOST4, IMDS4, 1, 64, &[], &icmp(11, 0, &inner[..28]));
        let e = decode(&p, 4).unwrap().icmp.unwrap();
        assert_eq!(e.inner_dst, v4(POD4, 43210));
        assert_eq!(e.inner_tcp_seq, Some(0xdead_beef));
        // Only the ports: no sequence number.
        let p = ipv4(HOST4, IMDS4, 1, 64, &[], &icmp(11, 0, &inner[..24]));
        let e = decode(&p, 4).unwrap().icmp.unwrap();
        assert_eq!(e.inner_dst, v4(POD4, 43210));
        assert_eq!(e.inner_tcp_seq, None);
        // Inner header incomplete: no icmp, but the packet still decodes.
        let p = ipv4(HOST4, IMDS4, 1, 64, &[], &icmp(11, 0, &inner[..19]));
        assert_eq!(decode(&p, 4).unwrap().icmp, None);
    }

    #[test]
    fn icmp_dest_unreachable_inner_udp_and_echo() {
        let inner = ipv4(POD4, [10, 96, 0, 10], 17, 63, &[], &udp(5353, 53, b"q"));
        let p = ipv4(HOST4, POD4, 1, 64, &[], &icmp(3, 3, &inner));
        let e = decode(&p, 4).unwrap().icmp.unwrap();
        assert_eq!(e.kind, IcmpKind::DestUnreachable);
        assert_eq!(e.code, 3);
        assert_eq!(e.inner_proto, Proto::Udp);
        assert_eq!(e.inner_src, v4(POD4, 5353));
        assert_eq!(e.inner_dst, v4([10, 96, 0, 10], 53));
        assert_eq!(e.inner_ttl, 63);
        assert_eq!(e.inner_tcp_seq, None);
        // Echo request: ICMP, not an error.
        let p = ipv4(POD4, IMDS4, 1, 64, &[], &icmp(8, 0, b"ping"));
        let d = decode(&p, 4).unwrap();
        assert_eq!((d.proto, d.icmp, d.payload_len), (Proto::Icmp, None, 4));
        // ICMPv6 type numbers in ICMPv4 mean something else (3 = unreachable).
        let p = ipv4(HOST4, POD4, 1, 64, &[], &icmp(1, 0, &inner));
        assert_eq!(decode(&p, 4).unwrap().icmp, None);
    }

    #[test]
    fn icmpv6_time_exceeded() {
        let inner =
            ipv6(IMDS6, POD6, 6, 1, &tcp(80, 43210, 42, 1100, PSHACK, &[], b"HTTP/1.1 200 OK\r\n"));
        let p = ipv6(HOST6, IMDS6, 58, 64, &icmp(3, 0, &inner));
        let d = decode(&p, 6).unwrap();
        assert_eq!(d.proto, Proto::Icmp);
        assert_eq!(d.src, v6(HOST6, 0));
        assert_eq!(
            d.icmp,
            Some(IcmpError {
                kind: IcmpKind::TimeExceeded,
                code: 0,
                inner_src: v6(IMDS6, 80),
                inner_dst: v6(POD6, 43210),
                inner_proto: Proto::Tcp,
                inner_ttl: 1,
                inner_tcp_seq: Some(42),
            })
        );
        // ICMPv6 dest unreachable is type 1.
        let p = ipv6(HOST6, POD6, 58, 64, &icmp(1, 4, &inner));
        assert_eq!(decode(&p, 6).unwrap().icmp.unwrap().kind, IcmpKind::DestUnreachable);
        // An inner IPv4 packet in ICMPv6 is not decoded.
        let inner4 =
            ipv4(IMDS4, POD4, 6, 1, &[], &tcp(80, 1, 1, 1, TcpFlags::ACK.bits(), &[], &[]));
        let p = ipv6(HOST6, IMDS6, 58, 64, &icmp(3, 0, &inner4));
        assert_eq!(decode(&p, 6).unwrap().icmp, None);
    }

    // ---- errors and robustness --------------------------------------------

    #[test]
    fn errors() {
        let syn = ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 0, SYN, &[], &[]));
        assert_eq!(decode(&syn, 5), Err(DecodeError::UnsupportedFamily(5)));
        assert_eq!(decode(&syn, 6), Err(DecodeError::VersionMismatch { family: 6, version: 4 }));
        assert_eq!(
            decode(&syn[..39], 6),
            Err(DecodeError::Truncated { layer: Layer::Ipv6, need: 40, have: 39 })
        );
        let syn6 = ipv6(POD6, IMDS6, 6, 64, &tcp(1, 80, 1, 0, SYN, &[], &[]));
        assert_eq!(decode(&syn6, 4), Err(DecodeError::VersionMismatch { family: 4, version: 6 }));
        assert_eq!(
            decode(&[], 4),
            Err(DecodeError::Truncated { layer: Layer::Ipv4, need: 20, have: 0 })
        );
        assert_eq!(
            decode(&syn[..30], 4),
            Err(DecodeError::Truncated { layer: Layer::Tcp, need: 40, have: 30 })
        );

        // IHL 4.
        let mut bad = syn.clone();
        bad[0] = 0x44;
        assert_eq!(
            decode(&bad, 4),
            Err(DecodeError::BadHeaderLength { layer: Layer::Ipv4, len: 16 })
        );
        // IHL 15 with only 40 bytes.
        bad[0] = 0x4f;
        assert_eq!(
            decode(&bad, 4),
            Err(DecodeError::Truncated { layer: Layer::Ipv4, need: 60, have: 40 })
        );
        // Total length shorter than the IP header.
        let mut bad = syn.clone();
        bad[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(
            decode(&bad, 4),
            Err(DecodeError::BadLength { layer: Layer::Ipv4, declared: 10, need: 20 })
        );
        // Total length leaves no room for the TCP header.
        bad[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(
            decode(&bad, 4),
            Err(DecodeError::BadLength { layer: Layer::Tcp, declared: 10, need: 20 })
        );
        // TCP data offset 2.
        let mut bad = syn.clone();
        bad[32] = 0x20;
        assert_eq!(
            decode(&bad, 4),
            Err(DecodeError::BadHeaderLength { layer: Layer::Tcp, len: 8 })
        );
        // TCP data offset 15 beyond the datagram.
        bad[32] = 0xf0;
        assert_eq!(
            decode(&bad, 4),
            Err(DecodeError::BadLength { layer: Layer::Tcp, declared: 20, need: 60 })
        );
        // Non-first fragment.
        let mut bad = syn.clone();
        bad[6..8].copy_from_slice(&0x2003u16.to_be_bytes());
        assert_eq!(decode(&bad, 4), Err(DecodeError::Fragment { offset: 24 }));
        // IPv6 payload length 0.
        let mut bad = syn6.clone();
        bad[4..6].copy_from_slice(&[0, 0]);
        assert!(matches!(decode(&bad, 6), Err(DecodeError::BadLength { layer: Layer::Ipv6, .. })));
        // IPv6 payload length too small for UDP.
        let mut u6 = ipv6(POD6, HOST6, 17, 64, &udp(1, 53, b"x"));
        u6[4..6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(
            decode(&u6, 6),
            Err(DecodeError::BadLength { layer: Layer::Udp, declared: 4, need: 8 })
        );

        for e in [
            DecodeError::UnsupportedFamily(5),
            DecodeError::VersionMismatch { family: 4, version: 6 },
            DecodeError::Truncated { layer: Layer::Tcp, need: 40, have: 30 },
            DecodeError::BadHeaderLength { layer: Layer::Ipv4, len: 16 },
            DecodeError::BadLength { layer: Layer::Udp, declared: 4, need: 8 },
            DecodeError::Fragment { offset: 24 },
        ] {
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            DecodeError::Truncated { layer: Layer::Tcp, need: 40, have: 30 }.to_string(),
            "TCP header truncated: need 40 bytes, snapshot has 30"
        );
    }

    #[test]
    fn error_messages() {
        let cases = [
            (DecodeError::UnsupportedFamily(5), "unsupported address family 5 (expected 4 or 6)"),
            (
                DecodeError::VersionMismatch { family: 4, version: 6 },
                "IP version 6 in a family-4 record",
            ),
            (
                DecodeError::BadHeaderLength { layer: Layer::Ipv4, len: 16 },
                "IPv4 header length 16 is below the minimum",
            ),
            (
                DecodeError::BadLength { layer: Layer::Udp, declared: 4, need: 8 },
                "UDP: length field leaves 4 bytes, headers need 8",
            ),
            (DecodeError::Fragment { offset: 24 }, "non-first IPv4 fragment (offset 24)"),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn length_field_larger_than_snapshot_is_fine() {
        // A lying (or just truncated) total length: lengths come from the
        // header, payload from the snapshot.
        let mut p =
            ipv4(POD4, IMDS4, 6, 64, &[], &tcp(1, 80, 1, 1, PSHACK, &[], b"GET /a HTTP/1.1\r\n"));
        p[2..4].copy_from_slice(&65535u16.to_be_bytes());
        let d = decode(&p, 4).unwrap();
        assert_eq!(d.ip_len, 65535);
        assert_eq!(d.payload_len, 65535 - 40);
        assert!(matches!(d.http, Some(Http::Request { ref path, .. }) if path == "/a"));
    }

    #[test]
    fn every_truncation_never_panics() {
        for (pkt, fam) in all_packets() {
            let full = decode(&pkt, fam).unwrap_or_else(|e| panic!("full packet: {e}"));
            let hdrs = if fam == 4 { usize::from(pkt[0] & 0xf) * 4 } else { 40 };
            for len in 0..pkt.len() {
                let r = decode(&pkt[..len], fam);
                if len < hdrs {
                    assert!(matches!(r, Err(DecodeError::Truncated { .. })), "len {len}: {r:?}");
                }
                if let Ok(d) = &r {
                    // Header-derived facts do not depend on the snapshot size.
                    assert_eq!(
                        (d.src, d.dst, d.proto, d.ttl),
                        (full.src, full.dst, full.proto, full.ttl)
                    );
                    assert_eq!(
                        (d.ip_len, d.payload_len, d.tcp),
                        (full.ip_len, full.payload_len, full.tcp)
                    );
                }
                let _ = decode(&pkt[..len], if fam == 4 { 6 } else { 4 });
            }
        }
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut buf = vec![0u8; 600];
        let mut ok = 0;
        for i in 0..10_000 {
            let len = (rng.next() % 601) as usize;
            for b in buf.iter_mut().take(len) {
                *b = rng.next() as u8;
            }
            let fam = [4u8, 6, 0, 255][(rng.next() % 4) as usize];
            // Most of the time give it a plausible version nibble and
            // protocol so the deeper parsers are reached too.
            if len > 0 && i % 4 != 0 {
                let v = if fam == 6 { 0x60 } else { 0x40 };
                buf[0] = v | (buf[0] & 0x0f);
                if fam == 6 && len > 6 {
                    buf[6] = [6, 17, 58, 0][(rng.next() % 4) as usize];
                } else if len > 9 {
                    buf[9] = [6, 17, 1, 50][(rng.next() % 4) as usize];
                    buf[6] &= 0xe0; // mostly first fragments
                }
            }
            match decode(&buf[..len], fam) {
                Ok(p) => {
                    ok += 1;
                    let _ = format!("{p:?}");
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        assert!(ok > 0, "the fuzz loop never reached a successful decode");
    }

    #[test]
    fn mutated_packets_never_panic() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let pkts = all_packets();
        for _ in 0..20_000 {
            let (pkt, fam) = &pkts[(rng.next() % pkts.len() as u64) as usize];
            let mut p = pkt.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() % p.len() as u64) as usize;
                p[i] = rng.next() as u8;
            }
            let len = (rng.next() % (p.len() as u64 + 1)) as usize;
            let _ = decode(&p[..len], *fam);
        }
    }

    #[test]
    fn paths_lose_query_strings_and_the_ecs_credentials_id() {
        let path = |req: &str| match parse_http(req.as_bytes()) {
            Some(Http::Request { path, .. }) => path,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            path("GET /v2/credentials/4f6d2c1e-1111-2222-3333-444455556666 HTTP/1.1\r\n"),
            "/v2/credentials/REDACTED"
        );
        assert_eq!(
            path("GET /latest/meta-data/iam/info?token=abc HTTP/1.1\r\n"),
            "/latest/meta-data/iam/info"
        );
        assert_eq!(path("GET /v2/credentials/ HTTP/1.1\r\n"), "/v2/credentials/");
        assert_eq!(path("GET /v2/metadata HTTP/1.1\r\n"), "/v2/metadata");
    }
}
