//! The typed event stream: what the kernel saw, after decoding and
//! correlation. The pipeline makes these; diagnose, metrics and the TUI read
//! them as they are. JSON exists only at the edges: the stdout sink writes
//! it, and `report`/`tui --from` turn each line back into an [`Event`] once
//! ([`Line::parse`]). The schema is documented in docs/events.md; keep the
//! two in step, and keep old recordings readable.
use std::{
    io::{self, BufRead, Read},
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{Container, NodeInfo, TcpFlags};

/// Which hook saw it: one variant per hook of the kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A packet from a socket to an endpoint, at the socket (container side).
    Request,
    /// A packet from an endpoint delivered to a socket.
    Reply,
    /// A packet from an endpoint arriving on an uplink.
    HostIngress,
    /// A packet to an endpoint leaving on an uplink.
    HostEgress,
    /// The kernel dropped a packet to or from an endpoint.
    Drop,
    /// Records the kernel could not hand over (ring buffer full).
    LostEvents,
    /// Records a workload's budget held back (at most one a second per
    /// workload): `count` of them, and whose.
    Suppressed,
    /// One HTTP request and what became of its reply (or a connect that
    /// never got through), decided from the packets above: what `run`
    /// writes instead of packets.
    Exchange,
    /// A workload's exchanges of an interval that were not written one by
    /// one (the healthy ones): counts, latency, the hops it needs.
    Summary,
    /// What the cluster says of this node (`node_info`): once known, and
    /// when it changes.
    Node,
    /// Lines `run` dropped because stdout did not take them (`count`,
    /// `dropped` by kind): once the writer has caught up.
    OutputDropped,
}

/// An `output_dropped` line's counts: lines dropped, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DroppedLines {
    pub packet: u64,
    pub exchange: u64,
    pub summary: u64,
    /// `lost_events`, `suppressed`, `node`, `output_dropped`.
    pub other: u64,
    pub finding: u64,
}

/// What became of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A reply with a status was delivered to the socket (`status` says
    /// which).
    Answered,
    /// A reply with 429 or 503 was delivered: the endpoint turned the
    /// request away for its rate (IMDS, the ECS agent, Pod Identity, Azure's
    /// 5 a second).
    Throttled,
    /// The reply reached the host and died on the way in (a TTL drop).
    Lost,
    /// No reply (or no answer to the connect) in time.
    Timeout,
    /// Connection refused or reset.
    Refused,
}

/// A `summary` line's figures: the interval's exchanges not written as
/// `exchange` lines.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// Seconds the summary covers (from its `ts` on).
    pub interval_s: f64,
    /// Requests, retransmissions once.
    pub requests: u64,
    /// `PUT /latest/api/token`.
    pub token: u64,
    /// Under `/latest/meta-data/iam/security-credentials/`.
    pub credentials: u64,
    pub other: u64,
    /// AWS IMDS requests that carried a token.
    pub imdsv2: u64,
    /// Request → reply delivered, in milliseconds: quantiles of a
    /// histogram (each the upper edge of its bucket, within 20 %).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Quantiles>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The transport protocol of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    /// Anything else (also a name a newer version may write).
    #[serde(other)]
    Other,
}

/// One line of the stream. Fields that do not apply are omitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Written as RFC 3339, UTC, with microseconds.
    #[serde(with = "rfc3339_serde")]
    pub ts: SystemTime,
    /// Host name, or NODE_NAME when set.
    pub node: std::sync::Arc<str>,
    /// Stable id of the connection (the socket cookie of its container side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Path below the cgroup2 root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The workload behind the cgroup: runtime, id, name, image, pod, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<std::sync::Arc<Container>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<std::sync::Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<std::sync::Arc<str>>,
    /// Written "ip:port" ("[ip]:port" for IPv6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<SocketAddr>,
    /// IPv4 TTL or IPv6 hop limit, as the packet carried it at this hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    /// Written "SYN", "PSH|ACK".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlags>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<u32>,
    /// Transport payload bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
    /// `true` on a TCP segment the socket already sent or received once (a
    /// retransmission: not a new request); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmit: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `X-aws-ec2-metadata-token` present (never its value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_header: Option<bool>,
    /// `X-aws-ec2-metadata-token-ttl-seconds` present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ttl_header: Option<bool>,
    /// Request: the SDK its `User-Agent` names, `name/version` (nothing
    /// else of the header is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdk: Option<super::Sdk>,
    /// Request: `amz-sdk-request`'s attempt and the SDK's most, `[n, max]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdk_attempt: Option<[u8; 2]>,
    /// HTTP status, when the packet starts a response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Drop: the kernel's reason name without its SKB_DROP_REASON_ prefix
    /// (absent on kernels before 5.17, which give none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Drop: the kernel function that freed the packet, when it is one the
    /// diagnosis reads (e.g. "ip_forward": its TTL ran out while forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Drop: "icmp_time_exceeded" when the evidence is the host's ICMP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// lost_events: how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// exchange: what became of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// exchange: request sent → reply delivered, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// exchange, unanswered: how long the client waited on it (to its
    /// close, else its last packet), in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<f64>,
    /// exchange: TTL of the request leaving the host's uplink (`ttl` is
    /// its TTL at the container).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_egress_ttl: Option<u8>,
    /// exchange: TTL of the reply arriving at the host (or at its drop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_ttl: Option<u8>,
    /// exchange: the reply reached the socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<bool>,
    /// exchange: times the client sent the request again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u32>,
    /// exchange, summary: forwarding hops between the workload and the
    /// uplink, as known then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops: Option<u8>,
    /// exchange, summary: the node's hop limit, as known then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop_limit: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Box<Summary>>,
    /// node: who provisioned it, its instance (see `NodeInfo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_info: Option<Box<NodeInfo>>,
    /// output_dropped: the lines of `count`, by kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Box<DroppedLines>>,
    /// `reply`, `drop`: what the uplinks saw of this reply and of the
    /// request it answers, folded by the kernel into its record. Never
    /// written: at `--events packets` they are `host_ingress` and
    /// `host_egress` lines of their own.
    #[serde(skip)]
    pub host: Option<HostSide>,
}

/// A reply's uplink side (see `Event::host`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostSide {
    /// The uplink.
    pub iface: Option<std::sync::Arc<str>>,
    /// The reply as it arrived: its TTL and the status it started with.
    pub ttl: Option<u8>,
    pub status: Option<u16>,
    /// The request segment the reply acknowledges, as it left: sequence
    /// number, flags, TTL.
    pub request: Option<(u32, TcpFlags, u8)>,
}

impl Event {
    pub fn new(kind: Kind, ts: SystemTime, node: std::sync::Arc<str>) -> Self {
        Self {
            kind,
            ts,
            node,
            flow: None,
            cgroup_id: None,
            cgroup: None,
            container: None,
            pid: None,
            comm: None,
            iface: None,
            src: None,
            dst: None,
            ttl: None,
            proto: None,
            tcp_flags: None,
            seq: None,
            ack: None,
            len: None,
            retransmit: None,
            method: None,
            path: None,
            token_header: None,
            token_ttl_header: None,
            sdk: None,
            sdk_attempt: None,
            status: None,
            reason: None,
            location: None,
            via: None,
            count: None,
            outcome: None,
            latency_ms: None,
            waited_ms: None,
            host_egress_ttl: None,
            reply_ttl: None,
            delivered: None,
            retransmits: None,
            hops: None,
            hop_limit: None,
            summary: None,
            node_info: None,
            dropped: None,
            host: None,
        }
    }

    /// A packet (one of the hooks' kinds), not a record derived from them.
    pub fn is_packet(&self) -> bool {
        matches!(
            self.kind,
            Kind::Request | Kind::Reply | Kind::HostIngress | Kind::HostEgress | Kind::Drop
        )
    }

    /// The workload it is about (see `Container::key`).
    pub fn workload_key(&self) -> Option<u64> {
        self.cgroup_id.or_else(|| self.container.as_ref()?.key())
    }

    /// Its TCP flags; none for other protocols.
    pub fn flags(&self) -> TcpFlags {
        self.tcp_flags.unwrap_or_default()
    }
}

impl Default for Event {
    fn default() -> Self {
        Self::new(Kind::Request, UNIX_EPOCH, "".into())
    }
}

/// Format a wall-clock time as RFC 3339 UTC with microseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

mod rfc3339_serde {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(D::Error::custom)
    }
}

/// Longest line read back from a stream: an event is a few hundred bytes,
/// a finding with its timeline a few KiB. Longer lines are skipped whole.
pub const MAX_LINE: usize = 1 << 20;

/// Read one line (at most [`MAX_LINE`] bytes, newline included) into `buf`,
/// which is cleared first. `None` at the end of the stream; `Some(false)`
/// for a longer line, consumed to its end and not kept.
pub fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    if r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf)? == 0 {
        return Ok(None);
    }
    if buf.len() <= MAX_LINE || buf.ends_with(b"\n") {
        return Ok(Some(true));
    }
    loop {
        buf.clear();
        let n = r.by_ref().take(MAX_LINE as u64).read_until(b'\n', buf)?;
        if n == 0 || buf.ends_with(b"\n") {
            buf.clear();
            return Ok(Some(false));
        }
    }
}

/// One line of a JSON-lines stream, read back: the only place the stream's
/// JSON becomes an [`Event`].
#[derive(Debug)]
pub enum Line {
    Event(Box<Event>),
    /// A finding line (`run` interleaves them; `report` reads events).
    Finding,
    /// An event whose `ts` is not RFC 3339.
    BadTime,
    /// JSON, but not an event.
    NotEvent,
    /// Not JSON at all (garbage, a truncated line, a log line).
    NotJson,
}

impl Line {
    /// What `text` is; None for a blank line.
    pub fn parse(text: &[u8]) -> Option<Line> {
        let text = kubectl_prefixes(text.trim_ascii());
        if text.is_empty() {
            return None;
        }
        if let Ok(ev) = serde_json::from_slice::<Event>(text) {
            return Some(Line::Event(Box::new(ev)));
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) else {
            return Some(Line::NotJson);
        };
        let is_event =
            v.get("type").is_some_and(|t| serde_json::from_value::<Kind>(t.clone()).is_ok());
        Some(match v.get("type").and_then(|t| t.as_str()) {
            Some("finding") => Line::Finding,
            // An event in every other way: only its time is unreadable.
            _ if is_event && v.get("ts").is_some() && {
                let mut fixed = v.clone();
                fixed["ts"] = serde_json::Value::from("1970-01-01T00:00:00Z");
                serde_json::from_value::<Event>(fixed).is_ok()
            } =>
            {
                Line::BadTime
            }
            _ => Line::NotEvent,
        })
    }
}

/// A line of `kubectl logs --prefix` (`[pod/NAME/CONTAINER] `) and/or
/// `--timestamps` (`2026-11-26T20:54:00.123456789Z `) without those: the
/// JSON after them. Only in front of a `{`, so nothing else is cut.
fn kubectl_prefixes(text: &[u8]) -> &[u8] {
    let mut rest = text;
    if rest.starts_with(b"[pod/") {
        if let Some(end) = rest.windows(2).position(|w| w == b"] ") {
            rest = &rest[end + 2..];
        }
    }
    if let Some(sp) = rest.iter().position(|&b| b == b' ') {
        let ts = std::str::from_utf8(&rest[..sp]).ok();
        if ts.is_some_and(|t| humantime::parse_rfc3339(t).is_ok()) {
            rest = rest[sp + 1..].trim_ascii_start();
        }
    }
    if rest.starts_with(b"{") { rest } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #26 item 9: `kubectl logs --prefix --timestamps` lines are read.
    #[test]
    fn kubectl_prefix_and_timestamps_are_stripped() {
        let ev = r#"{"type":"request","ts":"2026-11-26T20:54:00.002000Z","node":"n","flow":11}"#;
        for line in [
            format!("[pod/imds-observer-x7k2p/observer] {ev}"),
            format!("2026-11-26T20:54:00.123456789Z {ev}"),
            format!("[pod/imds-observer-x7k2p/observer] 2026-11-26T20:54:00.123456789Z {ev}"),
        ] {
            let stripped = kubectl_prefixes(line.as_bytes());
            assert_eq!(stripped, ev.as_bytes(), "{line}");
        }
        // Anything else is left as it is.
        for other in ["[pod/x no closing", "12 apples", "2026 not a time {}"] {
            assert_eq!(kubectl_prefixes(other.as_bytes()), other.as_bytes());
        }
    }

    #[test]
    fn a_line_round_trips_with_its_types() {
        let line = r#"{"type":"request","ts":"2026-11-26T20:54:00.002000Z","node":"n","flow":11,"src":"172.17.0.2:41644","dst":"[fd00:ec2::254]:80","ttl":64,"proto":"tcp","tcp_flags":"PSH|ACK","seq":1001,"len":120,"method":"PUT","path":"/latest/api/token"}"#;
        let Some(Line::Event(ev)) = Line::parse(line.as_bytes()) else { panic!("an event") };
        assert_eq!(ev.kind, Kind::Request);
        assert_eq!(ev.dst, Some("[fd00:ec2::254]:80".parse().unwrap()));
        assert_eq!(ev.tcp_flags, Some(TcpFlags::PSH | TcpFlags::ACK));
        assert_eq!(ev.proto, Some(Proto::Tcp));
        assert_eq!(serde_json::to_string(&ev).unwrap(), line);
    }

    #[test]
    fn long_lines_are_skipped_whole() {
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"a\":1}\n");
        input.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE));
        input.extend_from_slice(b"\nlast");
        let mut r = io::BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"{\"a\":1}\n");
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), Some(false));
        assert!(buf.is_empty());
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), None);
    }

    #[test]
    fn lines_that_are_not_events_say_what_they_are() {
        assert!(Line::parse(b"  \n").is_none());
        assert!(matches!(Line::parse(b"not json"), Some(Line::NotJson)));
        assert!(matches!(
            Line::parse(br#"{"type":"bogus","ts":"x","node":"n"}"#),
            Some(Line::NotEvent)
        ));
        assert!(matches!(
            Line::parse(br#"{"type":"finding","kind":"healthy"}"#),
            Some(Line::Finding)
        ));
        assert!(matches!(
            Line::parse(br#"{"type":"request","ts":"yesterday","node":"n"}"#),
            Some(Line::BadTime)
        ));
        // A protocol name from a newer version is read, as "other".
        let Some(Line::Event(ev)) = Line::parse(
            br#"{"type":"reply","ts":"2026-11-26T20:54:00Z","node":"n","proto":"sctp"}"#,
        ) else {
            panic!("an event")
        };
        assert_eq!(ev.proto, Some(Proto::Other));
    }
}
