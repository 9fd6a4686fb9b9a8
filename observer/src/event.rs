//! The typed event stream: what the kernel saw, after decoding and
//! correlation. Every sink reads these, and `report`/`tui` can read them back
//! from JSON lines. The schema is documented in docs/events.md; keep the two
//! in step.
use serde::{Deserialize, Serialize};

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
}

/// One line of the stream. Fields that do not apply are omitted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: Option<Kind>,
    /// RFC 3339, UTC.
    pub ts: String,
    /// Host name, or NODE_NAME when set.
    pub node: String,
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
    pub container: Option<crate::identity::Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// "ip:port" ("[ip]:port" for IPv6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// IPv4 TTL or IPv6 hop limit, as the packet carried it at this hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// e.g. "SYN", "PSH|ACK".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<u32>,
    /// Transport payload bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
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
}

impl Event {
    pub fn new(kind: Kind, ts: String, node: String) -> Self {
        Self { kind: Some(kind), ts, node, ..Default::default() }
    }

    /// The workload it is about (see `Container::key`).
    pub fn workload_key(&self) -> Option<u64> {
        self.cgroup_id.or_else(|| self.container.as_ref()?.key())
    }
}

/// Format a wall-clock time as RFC 3339 UTC with microseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}
