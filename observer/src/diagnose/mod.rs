//! Per-container diagnosis: events → findings.
//!
//! [`Diagnoser`] consumes the typed event stream (live, or read back from
//! JSON lines) and keeps, per node:
//! - the hop limit the instance applies: the TTL of token replies (replies
//!   with a status to `PUT /latest/api/token`) arriving at the uplink, from
//!   any container or the host itself;
//! - per container (keyed by node and cgroup id): forwarding hops (TTL sent
//!   minus TTL of the same packet leaving the uplink, matched on
//!   flow+seq+flags), requests by kind, latency, the attempts the client made
//!   (a timeline) and what became of them;
//! - per flow: the connect, and the HTTP exchanges matched FIFO (keep-alive),
//!   each reply identified by its first TCP sequence number (= the request's
//!   ack), so that host_ingress, drop, ICMP and delivery of the same reply
//!   meet whatever order they arrive in, and retransmissions count once.
//!
//! A token reply seen at the host (or in a drop) that a TTL drop killed and
//! that was not delivered is `lost`; the `hop_limit_exceeded` finding goes out
//! at the first such drop, before the client's own timeout fires.
//!
//! Nothing is keyed across nodes: a hop limit seen on one node is never
//! applied to another. State is bounded: idle flows and containers are
//! evicted (by event time, and by [`Diagnoser::tick`]), and every per-flow
//! and per-container collection is capped.
mod api;
mod assess;
mod exchange;
mod finding;
mod outcome;
pub mod replay;
mod state;
mod storm;
pub use api::{ContainerView, Diagnoser};
pub use state::{Counts, LATENCY_LE, ReqKind};
#[cfg(test)]
pub(crate) mod tests;

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

#[allow(unused_imports)]
pub use finding::{
    Attempt, Container, EndpointFailures, Evidence, Fetches, Finding, FindingKind, FindingTag, Fix,
    GET_INSTANCE_ID, INSTANCE_ID_VAR, Latency, OWN_ROLE_VARS, OwnRole, Requests, instance_id_arg,
};
use foldhash::{HashMap, HashMapExt};
use state::{
    AttemptRec, ContainerState, Emitted, Exchange, FlowState, HopEpisode, MAX_DROP_REASONS,
    MAX_EXCHANGES, MAX_PATHS, MAX_PENDING_DROPS, MAX_REQ_SEQS, MAX_TTL_SAMPLES, NodeState, Outcome,
    PendingDrop, Resp, StatusState, Ts, TtlSample, round3, secs, since,
};

use crate::model::{Event, Kind, NodeInfo, TcpFlags, bounded::oldest_eighth};

/// How long after the client closed (FIN/RST) an unanswered request is
/// declared timed out (a late reply, or a half-closing client, gets this
/// long).
const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// How long a flow whose connection ended is kept: its late packets (the
/// endpoint's retransmissions, their drops, the client's last ACKs) are
/// still its own. Well past `CLOSE_GRACE`, when its exchanges are decided.
const ENDED_LINGER: Duration = Duration::from_secs(2);
/// How often (node time) pending outcomes are checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often (node time) idle state is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Which decided exchanges become `exchange` events (`Diagnoser::drain`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Exchanges {
    /// None (offline diagnosis, the TUI).
    #[default]
    None,
    /// Those that went wrong, and every exchange of a workload while a
    /// finding other than `healthy` holds for it; the rest are counted
    /// into its `summary`.
    Problems,
    /// Every one.
    All,
}

/// How often (node time) a workload's healthy exchanges are summed up in a
/// `summary` event.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Config {
    /// The EC2 instance id for the fix command (the live observer's own
    /// node), used only while one node is seen. A node's own id wins: its
    /// pair in `instance_ids`, an id in its name (`i-0123...`), its
    /// providerID; without any, the fix reads `"$INSTANCE_ID"`.
    pub instance_id: Option<String>,
    /// Node name → instance id, for streams merged from several nodes.
    pub instance_ids: HashMap<String, String>,
    /// Set by the engine once a second node is seen: `instance_id` then
    /// applies to none.
    pub several_nodes: bool,
    /// Flows idle this long are evicted.
    pub flow_idle: Duration,
    /// Containers unseen this long are evicted (with their findings).
    pub container_idle: Duration,
    /// A SYN without SYN|ACK or RST for this long is a connect timeout.
    pub connect_timeout: Duration,
    /// A request without any reply for this long times out (when the client
    /// did not close first).
    pub request_timeout: Duration,
    /// Attempts kept per container.
    pub timeline_cap: usize,
    pub max_flows_per_node: usize,
    pub max_containers_per_node: usize,
    pub max_nodes: usize,
    pub exchanges: Exchanges,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance_id: None,
            instance_ids: HashMap::new(),
            several_nodes: false,
            flow_idle: Duration::from_secs(300),
            container_idle: Duration::from_secs(1800),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            timeline_cap: 64,
            max_flows_per_node: crate::model::budget::DIAGNOSE_FLOWS,
            max_containers_per_node: crate::model::budget::DIAGNOSE_CONTAINERS,
            max_nodes: 4_096,
            exchanges: Exchanges::None,
        }
    }
}

/// Counters of what the engine saw and skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    /// Events without a flow, or a container to attribute them to.
    pub ignored: u64,
    /// Sum of `lost_events` counts (records the capture could not hand over).
    pub lost_events: u64,
    /// Sum of `suppressed` counts (records budgets held back).
    pub suppressed: u64,
    /// Flows forgotten idle, or to make room.
    pub evicted_flows: u64,
    /// Flows forgotten after their connection ended.
    pub ended_flows: u64,
    pub evicted_containers: u64,
    pub evicted_nodes: u64,
}

/// How much state is held (for tests, the bench and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSize {
    pub nodes: usize,
    pub containers: usize,
    pub flows: usize,
    pub exchanges: usize,
    pub attempts: usize,
}

impl Config {
    /// `--instance-id` values: `node=id` pairs for their node, one bare id
    /// for single-node input. More than one bare id is an error.
    pub fn with_instance_ids(mut self, values: &[String]) -> Result<Self, String> {
        for v in values {
            match v.split_once('=') {
                Some((node, id)) if !node.is_empty() && !id.is_empty() => {
                    self.instance_ids.insert(node.to_string(), id.to_string());
                }
                Some(_) => return Err(format!("--instance-id {v:?}: expected NODE=ID or ID")),
                None if self.instance_id.is_some() => {
                    return Err(
                        "--instance-id: one bare id only (for single-node input); use NODE=ID pairs for several nodes".into()
                    );
                }
                None => self.instance_id = Some(v.clone()),
            }
        }
        Ok(self)
    }
}
