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
mod assess;
mod finding;
mod state;
pub use state::Counts;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

#[allow(unused_imports)]
pub use finding::{
    Attempt, Container, EndpointFailures, Evidence, Finding, FindingKind, FindingTag, Fix, Latency, Requests,
};
use state::{
    since, AttemptRec, ContainerState, Emitted, Exchange, FlowState, HopEpisode, NodeState, Outcome,
    PendingDrop, ReqKind, Resp, StatusState, TtlSample, Ts, MAX_DROP_REASONS, MAX_EXCHANGES, MAX_PATHS,
    MAX_PENDING_DROPS, MAX_REQ_SEQS, MAX_TTL_SAMPLES,
};

use crate::model::{Event, Kind, TcpFlags, bounded::oldest_eighth};

/// How long after the client closed (FIN/RST) an unanswered request is
/// declared timed out (a late reply, or a half-closing client, gets this
/// long).
const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// How often (node time) pending outcomes are checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often (node time) idle state is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Config {
    /// The EC2 instance id for the fix command (the live observer's own
    /// node). Per-node ids in `instance_ids` win; without either, an id found
    /// in the node name (`i-0123...`) is used, else `<instance-id>`.
    pub instance_id: Option<String>,
    /// Node name → instance id, for streams merged from several nodes.
    pub instance_ids: HashMap<String, String>,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance_id: None,
            instance_ids: HashMap::new(),
            flow_idle: Duration::from_secs(300),
            container_idle: Duration::from_secs(1800),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            timeline_cap: 64,
            max_flows_per_node: 65_536,
            max_containers_per_node: 16_384,
            max_nodes: 4_096,
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
    pub evicted_flows: u64,
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

pub struct Diagnoser {
    cfg: Config,
    nodes: HashMap<String, NodeState>,
    stats: Stats,
}

impl Default for Diagnoser {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

/// What handling one event changed beyond its flow and container.
#[derive(Default)]
struct Effects {
    /// TTL of a token reply at the host: the node's hop limit.
    hop_limit: Option<u8>,
}

/// One event's flow and container.
struct Cx<'a> {
    cfg: &'a Config,
    ts: Ts,
    flow: &'a mut FlowState,
    c: &'a mut ContainerState,
    fx: Effects,
}

impl Diagnoser {
    pub fn new(cfg: Config) -> Self {
        Self { cfg, nodes: HashMap::new(), stats: Stats::default() }
    }


    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn state_size(&self) -> StateSize {
        let mut s = StateSize { nodes: self.nodes.len(), ..Default::default() };
        for n in self.nodes.values() {
            s.containers += n.containers.len();
            s.flows += n.flows.len();
            s.exchanges += n.flows.values().map(|f| f.exchanges.len()).sum::<usize>();
            s.attempts += n.containers.values().map(|c| c.timeline.len()).sum::<usize>();
        }
        s
    }

    /// Requests on `node` that no container could be attributed to.
    pub fn unattributed(&self, node: &str) -> Option<Counts> {
        Some(self.nodes.get(node)?.unattributed)
    }

    /// The container an event is about, as this engine attributed it: its
    /// flow's, else the event's own.
    pub fn workload_of(&self, ev: &Event) -> Option<u64> {
        let node = self.nodes.get(&ev.node)?;
        ev.flow.and_then(|f| Some(node.flows.get(&f)?.cgroup_id)).or_else(|| ev.workload_key())
    }

    /// The hop limit seen on `node` (TTL of token replies at its uplink).
    pub fn hop_limit(&self, node: &str) -> Option<u8> {
        self.nodes.get(node)?.hop_limit
    }

    /// Feed one event. Returns the findings it established or changed
    /// (an unchanged finding is not returned again), worst first.
    pub fn observe(&mut self, ev: &Event) -> Vec<Finding> {
        self.stats.events += 1;
        let (kind, ts) = (ev.kind, ev.ts);
        self.ensure_node(&ev.node, ts);
        let cfg = &self.cfg;
        let node = self.nodes.get_mut(&ev.node).expect("ensured");
        if ts > node.now {
            node.now = ts;
        }
        if ts > node.last_event {
            node.last_event = ts;
        }
        if kind == Kind::LostEvents {
            let n = ev.count.unwrap_or(1);
            node.lost_events += n;
            self.stats.lost_events += n;
            return Vec::new();
        }
        if !handle(node, cfg, &mut self.stats, kind, ev, ts) {
            self.stats.ignored += 1;
            if let (Kind::Request, Some(method)) = (kind, &ev.method) {
                let req = ReqKind::of(method, ev.path.as_deref().unwrap_or(""));
                node.unattributed.request(req, ev.token_header == Some(true));
            }
        }
        let mut out = Vec::new();
        maintain(node, cfg, &mut self.stats, false);
        flush(&ev.node, node, cfg, ts, &mut out);
        out.sort_by_key(|f| f.kind);
        out
    }

    /// Let time pass on every node (live: call it every second or so with
    /// the wall clock): connects and requests without an answer time out,
    /// idle flows and containers are evicted. Returns findings this
    /// established or changed.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Finding> {
        let mut out = Vec::new();
        let cfg = &self.cfg;
        for (name, node) in self.nodes.iter_mut() {
            if now > node.now {
                node.now = now;
            }
            maintain(node, cfg, &mut self.stats, true);
            let at = node.now;
            flush(name, node, cfg, at, &mut out);
        }
        let before = self.nodes.len();
        let idle = self.cfg.container_idle;
        self.nodes.retain(|_, n| !(n.containers.is_empty() && n.flows.is_empty() && since(n.last_event, n.now) > idle));
        self.stats.evicted_nodes += (before - self.nodes.len()) as u64;
        out.sort_by_key(|f| f.kind);
        out
    }

    /// Resolve what the newest event time of each node already decides (for
    /// the end of a recorded stream), without guessing beyond it.
    pub fn settle(&mut self) -> Vec<Finding> {
        let mut out = Vec::new();
        let cfg = &self.cfg;
        for (name, node) in self.nodes.iter_mut() {
            maintain(node, cfg, &mut self.stats, true);
            let at = node.now;
            flush(name, node, cfg, at, &mut out);
        }
        out.sort_by_key(|f| f.kind);
        out
    }

    /// Every current finding, worst first (then by node and container).
    pub fn findings(&self) -> Vec<Finding> {
        let mut out: Vec<Finding> = self.containers().flat_map(|c| c.findings()).collect();
        out.sort_by(|a, b| {
            (a.kind, &a.node, a.container.label(), a.container.cgroup_id).cmp(&(
                b.kind,
                &b.node,
                b.container.label(),
                b.container.cgroup_id,
            ))
        });
        out
    }

    /// One container, for views that show containers as they change (the
    /// TUI).
    pub fn container(&self, node: &str, cgroup_id: u64) -> Option<ContainerView<'_>> {
        let (name, n) = self.nodes.get_key_value(node)?;
        let c = n.containers.get(&cgroup_id)?;
        Some(ContainerView { cfg: &self.cfg, name, node: n, cg: cgroup_id, c })
    }

    /// Every container held, in no particular order.
    pub fn containers(&self) -> impl Iterator<Item = ContainerView<'_>> {
        self.nodes.iter().flat_map(move |(name, n)| {
            n.containers.iter().map(move |(&cg, c)| ContainerView { cfg: &self.cfg, name, node: n, cg, c })
        })
    }

    fn ensure_node(&mut self, name: &str, ts: Ts) {
        if self.nodes.contains_key(name) {
            return;
        }
        if self.nodes.len() >= self.cfg.max_nodes {
            if let Some(oldest) = self.nodes.iter().min_by_key(|(_, n)| n.now).map(|(k, _)| k.clone()) {
                self.nodes.remove(&oldest);
                self.stats.evicted_nodes += 1;
            }
        }
        self.nodes.insert(name.to_string(), NodeState::new(ts));
    }
}

/// Read access to one container: each method computes only what it returns,
/// so a view can poll counters per event and build findings on demand.
pub struct ContainerView<'a> {
    cfg: &'a Config,
    name: &'a str,
    node: &'a NodeState,
    cg: u64,
    c: &'a ContainerState,
}

impl ContainerView<'_> {
    pub fn node(&self) -> &str {
        self.name
    }

    pub fn cgroup_id(&self) -> u64 {
        self.cg
    }

    pub fn container(&self) -> Container {
        assess::container(self.cg, self.c)
    }

    pub fn last_seen(&self) -> SystemTime {
        self.c.last_seen
    }

    pub fn requests(&self) -> Requests {
        self.c.requests
    }

    pub fn forwarding_hops(&self) -> Option<u8> {
        self.c.forwarding_hops
    }

    /// The hop limit it needs, once its hops (or a lost reply's TTL) are
    /// known.
    pub fn required_hop_limit(&self) -> Option<u8> {
        let known = self.c.forwarding_hops.is_some() || self.c.episode.as_ref().is_some_and(|e| e.reply_ttl.is_some());
        known.then(|| assess::required(&node_view(self.cfg, self.name, self.node), self.c))
    }

    /// Its monotonic counters (what metrics export).
    pub fn counts(&self) -> Counts {
        self.c.counts
    }

    /// Token PUTs answered 2xx and delivered.
    pub fn tokens_ok(&self) -> u64 {
        self.c.tokens_ok
    }

    /// Token replies lost on the way in (never decreases, but for a lost
    /// reply that a retransmission delivered after all).
    pub fn tokens_lost(&self) -> u64 {
        self.c.tokens_lost
    }

    /// The finding kinds that hold now, worst first; empty while nothing is
    /// decided.
    pub fn kinds(&self) -> Vec<FindingKind> {
        let view = node_view(self.cfg, self.name, self.node);
        assess::active(&view, self.c).into_iter().map(|(k, _)| k).collect()
    }

    /// The findings that hold now, worst first.
    pub fn findings(&self) -> Vec<Finding> {
        let view = node_view(self.cfg, self.name, self.node);
        assess::active(&view, self.c)
            .into_iter()
            .map(|(kind, _)| {
                let ts = self.c.emitted.iter().find(|e| e.kind == kind).map_or(self.node.now, |e| e.ts);
                assess::build(&view, self.cg, self.c, kind, ts)
            })
            .collect()
    }

    /// Its attempts with a known outcome, oldest first, whatever the finding.
    pub fn timeline(&self) -> Vec<Attempt> {
        assess::timeline(self.c)
    }
}

fn node_view<'a>(cfg: &'a Config, name: &'a str, node: &NodeState) -> assess::NodeView<'a> {
    assess::NodeView {
        name,
        hop_limit: node.hop_limit,
        now: node.now,
        lost_events: node.lost_events,
        instance_id: instance_id(cfg, name),
    }
}

/// The instance id for a node's fix command.
fn instance_id<'a>(cfg: &'a Config, node: &'a str) -> Option<&'a str> {
    if let Some(id) = cfg.instance_ids.get(node) {
        return Some(id);
    }
    if let Some(id) = &cfg.instance_id {
        return Some(id);
    }
    // EKS/Karpenter resource-name host names: i-0123456789abcdef0.<region>...
    let first = node.split('.').next().unwrap_or(node);
    let hex = first.strip_prefix("i-")?;
    ((hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then_some(first)
}

/// Re-assess the containers an event touched; queue findings that are new or
/// changed.
fn flush(name: &str, node: &mut NodeState, cfg: &Config, at: Ts, out: &mut Vec<Finding>) {
    if node.dirty.is_empty() {
        return;
    }
    let dirty = std::mem::take(&mut node.dirty);
    let view = node_view(cfg, name, node);
    for cg in dirty {
        let Some(c) = node.containers.get_mut(&cg) else { continue };
        // A name learned later is news too: findings go out again with it.
        let who = assess::fp(&c.identity);
        let current: Vec<_> = assess::active(&view, c).into_iter().map(|(k, f)| (k, f ^ who)).collect();
        let mut emitted = Vec::with_capacity(current.len());
        let mut changed = Vec::new();
        for (kind, fingerprint) in current {
            match c.emitted.iter().find(|e| e.kind == kind) {
                Some(e) if e.fingerprint == fingerprint => emitted.push(*e),
                _ => {
                    emitted.push(Emitted { kind, fingerprint, ts: at });
                    changed.push(kind);
                }
            }
        }
        c.emitted = emitted;
        for kind in changed {
            out.push(assess::build(&view, cg, c, kind, at));
        }
    }
}

/// Time-based outcomes and eviction, by the node's clock.
fn maintain(node: &mut NodeState, cfg: &Config, stats: &mut Stats, force: bool) {
    let now = node.now;
    if force || now >= node.next_check {
        node.next_check = now + CHECK_EVERY;
        check_pending(node, cfg, now);
    }
    if force || now >= node.next_sweep {
        node.next_sweep = now + SWEEP_EVERY;
        sweep(node, cfg, stats, now);
    }
}

/// Connects and requests that time has decided.
fn check_pending(node: &mut NodeState, cfg: &Config, now: Ts) {
    if node.watch.is_empty() {
        return;
    }
    let watched: Vec<u64> = node.watch.iter().copied().collect();
    for id in watched {
        let Some(flow) = node.flows.get_mut(&id) else {
            node.watch.remove(&id);
            continue;
        };
        let cg = flow.cgroup_id;
        let Some(c) = node.containers.get_mut(&cg) else {
            node.watch.remove(&id);
            continue;
        };
        let mut cx = Cx { cfg, ts: now, flow, c, fx: Effects::default() };
        if resolve_due(&mut cx, now, false) {
            node.dirty.push(cg);
        }
        if !cx.flow.has_pending() {
            node.watch.remove(&id);
        }
    }
    node.dirty.sort_unstable();
    node.dirty.dedup();
}

/// Decide the connect and the exchanges of a flow whose time is up (all of
/// them when `all`, for a flow being evicted). True if anything changed.
fn resolve_due(cx: &mut Cx, now: Ts, all: bool) -> bool {
    let mut changed = false;
    if let (Some(syn), false) = (cx.flow.syn_ts, cx.flow.connect_done) {
        if all || since(syn, now) >= cx.cfg.connect_timeout {
            cx.flow.connect_done = true;
            connect_failed(cx, syn, Outcome::Timeout);
            changed = true;
        }
    }
    let closed_due = cx.flow.closed_at.is_some_and(|t| since(t, now) >= CLOSE_GRACE);
    for i in 0..cx.flow.exchanges.len() {
        let ex = &cx.flow.exchanges[i];
        if ex.outcome != Outcome::Pending {
            continue;
        }
        if all || closed_due || since(ex.req_ts, now) >= cx.cfg.request_timeout {
            unanswered(cx, i);
            changed = true;
        }
    }
    changed
}

/// Forget idle flows and containers; make room when over the caps.
fn sweep(node: &mut NodeState, cfg: &Config, stats: &mut Stats, now: Ts) {
    let idle: Vec<u64> =
        node.flows.iter().filter(|(_, f)| since(f.last_seen, now) > cfg.flow_idle).map(|(k, _)| *k).collect();
    for id in idle {
        evict_flow(node, cfg, id, now);
        stats.evicted_flows += 1;
    }
    let before = node.containers.len();
    node.containers.retain(|_, c| since(c.last_seen, now) <= cfg.container_idle);
    stats.evicted_containers += (before - node.containers.len()) as u64;
}

fn evict_flow(node: &mut NodeState, cfg: &Config, id: u64, now: Ts) {
    let Some(mut flow) = node.flows.remove(&id) else { return };
    node.watch.remove(&id);
    if flow.has_pending() {
        let cg = flow.cgroup_id;
        if let Some(c) = node.containers.get_mut(&cg) {
            let mut cx = Cx { cfg, ts: now, flow: &mut flow, c, fx: Effects::default() };
            resolve_due(&mut cx, now, true);
            node.mark(cg);
        }
    }
}

/// Evict the least recently seen eighth of the flows.
fn make_room_flows(node: &mut NodeState, cfg: &Config, stats: &mut Stats) {
    let now = node.now;
    sweep(node, cfg, stats, now);
    if node.flows.len() < cfg.max_flows_per_node {
        return;
    }
    for id in oldest_eighth(node.flows.iter().map(|(k, f)| (*k, f.last_seen))) {
        evict_flow(node, cfg, id, now);
        stats.evicted_flows += 1;
    }
}

fn make_room_containers(node: &mut NodeState, stats: &mut Stats) {
    for id in oldest_eighth(node.containers.iter().map(|(k, c)| (*k, c.last_seen))) {
        node.containers.remove(&id);
        stats.evicted_containers += 1;
    }
}

/// Apply one packet event to its flow and container. False if it could not
/// be attributed (no flow, or a flow never seen with a cgroup).
fn handle(node: &mut NodeState, cfg: &Config, stats: &mut Stats, kind: Kind, ev: &Event, ts: Ts) -> bool {
    let Some(flow_id) = ev.flow else { return false };
    let Some(cg) = node.flows.get(&flow_id).map(|f| f.cgroup_id).or_else(|| ev.workload_key()) else { return false };
    if !node.flows.contains_key(&flow_id) {
        if node.flows.len() >= cfg.max_flows_per_node {
            make_room_flows(node, cfg, stats);
        }
        node.flows.insert(flow_id, FlowState::new(cg, ts));
    }
    if !node.containers.contains_key(&cg) {
        if node.containers.len() >= cfg.max_containers_per_node {
            make_room_containers(node, stats);
        }
        node.containers.insert(cg, ContainerState::new(ts));
    }
    let flow = node.flows.get_mut(&flow_id).expect("inserted");
    let c = node.containers.get_mut(&cg).expect("inserted");
    if ts > flow.last_seen {
        flow.last_seen = ts;
    }
    if ts > c.last_seen {
        c.last_seen = ts;
    }
    if let Some(p) = &ev.cgroup {
        if c.cgroup.as_deref() != Some(p.as_str()) {
            c.cgroup = Some(p.clone());
        }
    }
    if ev.container.is_some() && c.identity != ev.container {
        c.identity = ev.container.clone();
    }
    let mut cx = Cx { cfg, ts, flow, c, fx: Effects::default() };
    match kind {
        Kind::Request => on_request(&mut cx, ev),
        Kind::Reply => on_reply(&mut cx, ev),
        Kind::HostIngress => on_host_ingress(&mut cx, ev),
        Kind::HostEgress => on_host_egress(&mut cx, ev),
        Kind::Drop => on_drop(&mut cx, ev),
        Kind::LostEvents => {}
    }
    let watch = cx.flow.has_pending();
    let fx = cx.fx;
    if watch {
        node.watch.insert(flow_id);
    }
    node.mark(cg);
    if let Some(t) = fx.hop_limit {
        if node.hop_limit != Some(t) {
            node.hop_limit = Some(t);
            // Every container of this node may now be (or stop being) at risk.
            let all: Vec<u64> = node.containers.keys().copied().collect();
            for k in all {
                node.mark(k);
            }
        }
    }
    true
}

fn payload(ev: &Event) -> bool {
    ev.len.is_none_or(|l| l > 0)
}

/// Forwarding hops: a packet the socket sent and the same packet (flow, seq,
/// flags) leaving the uplink, whichever is seen first.
fn sample_ttl(cx: &mut Cx, ev: &Event, sent: bool) {
    let (Some(seq), Some(ttl)) = (ev.seq, ev.ttl) else { return };
    let flags = ev.flags();
    let (mine, other) = if sent {
        (&mut cx.flow.sent_ttl, &cx.flow.egress_ttl)
    } else {
        (&mut cx.flow.egress_ttl, &cx.flow.sent_ttl)
    };
    if let Some(o) = other.iter().rev().find(|s| s.seq == seq && s.flags == flags) {
        let hops = if sent { ttl.saturating_sub(o.ttl) } else { o.ttl.saturating_sub(ttl) };
        cx.c.forwarding_hops = Some(hops);
        return;
    }
    if !mine.iter().any(|s| s.seq == seq && s.flags == flags) {
        mine.push_back(TtlSample { seq, flags, ttl });
        if mine.len() > MAX_TTL_SAMPLES {
            mine.pop_front();
        }
    }
}

fn on_request(cx: &mut Cx, ev: &Event) {
    let flags = ev.flags();
    if cx.flow.endpoint.is_none() {
        cx.flow.endpoint = ev.dst;
    }
    sample_ttl(cx, ev, true);
    if flags.is_syn() && cx.flow.syn_ts.is_none() && !cx.flow.connect_done {
        cx.flow.syn_ts = Some(cx.ts);
    }
    if let (Some(method), Some(path)) = (&ev.method, &ev.path) {
        let retransmitted = ev.seq.is_some_and(|s| cx.flow.req_seqs.contains(&s));
        if !retransmitted {
            if let Some(s) = ev.seq {
                cx.flow.req_seqs.push_back(s);
                if cx.flow.req_seqs.len() > MAX_REQ_SEQS {
                    cx.flow.req_seqs.pop_front();
                }
            }
            new_request(cx, ev, method, path);
        }
    }
    if flags.intersects(TcpFlags::FIN | TcpFlags::RST) && cx.flow.closed_at.is_none() {
        cx.flow.closed_at = Some(cx.ts);
    }
}

fn new_request(cx: &mut Cx, ev: &Event, method: &str, path: &str) {
    let ts = cx.ts;
    // A request means the connect succeeded, whether or not we saw it.
    if !cx.flow.connect_done {
        cx.flow.connect_done = true;
        cx.flow.syn_acked = true;
    }
    let kind = ReqKind::of(method, path);
    let aws = state::is_aws_imds_path(path);
    let token_header = ev.token_header.unwrap_or(false);
    let c = &mut *cx.c;
    c.counts.request(kind, token_header);
    c.requests.total += 1;
    match kind {
        ReqKind::Token => c.requests.token += 1,
        ReqKind::Credentials => c.requests.credentials += 1,
        ReqKind::Other => c.requests.other += 1,
    }
    let imdsv1 = aws && kind != ReqKind::Token && !token_header;
    if aws && kind != ReqKind::Token {
        if token_header {
            c.requests.imdsv2 += 1;
        } else {
            c.requests.imdsv1 += 1;
            if c.token_failed_since.is_some_and(|t| ts > t) {
                c.tokenless_since_failure += 1;
            }
        }
    }
    let id = c.next_attempt;
    c.next_attempt += 1;
    let dst = cx.flow.endpoint.or(ev.dst);
    c.push_attempt(
        AttemptRec {
            id,
            ts,
            method: Some(method.to_string()),
            path: Some(path.to_string()),
            dst,
            token_header: Some(token_header),
            imdsv1,
            outcome: Outcome::Pending,
            latency: None,
            reply_ttl: None,
        },
        cx.cfg.timeline_cap,
    );
    let ex = Exchange {
        attempt: id,
        req_ts: ts,
        req_ack: ev.ack,
        kind,
        method: method.to_string(),
        path: path.to_string(),
        ttl_header: ev.token_ttl_header,
        resp: None,
        outcome: Outcome::Pending,
    };
    let flow = &mut *cx.flow;
    flow.exchanges.push_back(ex);
    if flow.exchanges.len() > MAX_EXCHANGES {
        // Prefer forgetting a finished exchange.
        let i = flow.exchanges.iter().position(|e| e.outcome != Outcome::Pending).unwrap_or(0);
        flow.exchanges.remove(i);
    }
}

fn on_reply(cx: &mut Cx, ev: &Event) {
    let flags = ev.flags();
    if flags.contains(TcpFlags::SYN | TcpFlags::ACK) {
        cx.flow.syn_acked = true;
        if !cx.flow.connect_done {
            cx.flow.connect_done = true;
            if let (Some(ep), Some(syn)) = (cx.flow.endpoint, cx.flow.syn_ts) {
                endpoint_ok(cx.c, ep, syn, cx.ts);
            }
        }
    }
    if flags.contains(TcpFlags::RST) {
        match cx.flow.syn_ts {
            Some(syn) if !cx.flow.syn_acked && !cx.flow.connect_done => {
                cx.flow.connect_done = true;
                connect_failed(cx, syn, Outcome::Refused);
            }
            _ => {
                for i in 0..cx.flow.exchanges.len() {
                    if cx.flow.exchanges[i].outcome == Outcome::Pending
                        && !cx.flow.exchanges[i].resp.as_ref().is_some_and(|r| r.dropped)
                    {
                        set_outcome(cx, i, Outcome::Refused);
                    }
                }
            }
        }
        return;
    }
    if ev.status.is_some() || payload(ev) {
        if let Some(i) = match_resp(cx.flow, ev.seq, ev.status, payload(ev)) {
            let r = cx.flow.exchanges[i].resp.as_mut().expect("matched");
            r.delivered = true;
            settle(cx, i);
        }
    }
}

fn on_host_ingress(cx: &mut Cx, ev: &Event) {
    if ev.status.is_none() && !payload(ev) {
        return;
    }
    let Some(i) = match_resp(cx.flow, ev.seq, ev.status, payload(ev)) else { return };
    let ex = &mut cx.flow.exchanges[i];
    let r = ex.resp.as_mut().expect("matched");
    r.seen_at_host = true;
    if ev.ttl.is_some() {
        r.ttl_at_host = ev.ttl;
    }
    if ex.kind == ReqKind::Token && r.status.is_some() {
        cx.fx.hop_limit = r.ttl_at_host.or(cx.fx.hop_limit);
    }
    settle(cx, i);
}

fn on_host_egress(cx: &mut Cx, ev: &Event) {
    sample_ttl(cx, ev, false);
}

/// A TTL (hop limit) expiry while forwarding: by reason name, or (kernels
/// without reasons) by where the kernel freed a packet whose TTL was spent.
fn is_ttl_drop(ev: &Event) -> bool {
    if ev.via.is_some() {
        return true;
    }
    let r = ev.reason.as_deref().unwrap_or("");
    let spent = ev.ttl.is_none_or(|t| t <= 1);
    let forwarding = ev.location.as_deref().is_some_and(|l| crate::capture::kallsyms::FORWARD.contains(&l));
    r.contains("TTL") || r.contains("HOP_LIMIT") || (spent && (r == "IP_INHDR" || forwarding))
}

fn on_drop(cx: &mut Cx, ev: &Event) {
    let inbound = match (cx.flow.endpoint, ev.src, ev.dst) {
        (Some(ep), Some(src), _) if src == ep => true,
        (Some(ep), _, Some(dst)) if dst == ep => false,
        _ => true,
    };
    if !is_ttl_drop(ev) {
        // Kept on the flow; reported if the flow's connect or request fails.
        if ev.reason.is_some() {
            cx.flow.other_drop_reason = ev.reason.clone();
        }
        return;
    }
    if !inbound {
        return;
    }
    let kernel = ev.via.is_none();
    if kernel {
        cx.flow.ttl_drops += 1;
    } else {
        cx.flow.icmp += 1;
    }
    if let Some(ep) = cx.c.episode.as_mut() {
        if kernel {
            ep.drops += 1;
        } else {
            ep.icmp += 1;
        }
    }
    match match_resp(cx.flow, ev.seq, ev.status, payload(ev)) {
        Some(i) => {
            let ex = &mut cx.flow.exchanges[i];
            let r = ex.resp.as_mut().expect("matched");
            r.dropped = true;
            if r.ttl_at_host.is_none() {
                r.ttl_at_host = ev.ttl;
            }
            if ex.kind == ReqKind::Token && !r.seen_at_host && r.status.is_some() {
                cx.fx.hop_limit = r.ttl_at_host.or(cx.fx.hop_limit);
            }
            settle(cx, i);
        }
        None if payload(ev) => {
            // Its reply has not shown up yet (events slightly out of order),
            // or the request carried no ack: hold it.
            let d = PendingDrop { seq: ev.seq, ttl: ev.ttl };
            if !cx.flow.pending_drops.iter().any(|p| p.seq == d.seq && d.seq.is_some()) {
                cx.flow.pending_drops.push_back(d);
                if cx.flow.pending_drops.len() > MAX_PENDING_DROPS {
                    cx.flow.pending_drops.pop_front();
                }
            }
        }
        None => {}
    }
}

/// The exchange a reply packet belongs to, creating its `Resp` when the
/// packet starts the reply: the same first sequence number as a reply already
/// seen (retransmission, or the same packet at another hook), else the
/// oldest unanswered exchange whose request acked that sequence number, else
/// (for a packet with a status) the oldest unanswered exchange (FIFO).
fn match_resp(flow: &mut FlowState, seq: Option<u32>, status: Option<u16>, payload: bool) -> Option<usize> {
    if let Some(s) = seq {
        if let Some(i) = flow.exchanges.iter().position(|e| e.resp.as_ref().is_some_and(|r| r.seq == Some(s))) {
            let r = flow.exchanges[i].resp.as_mut().expect("found");
            if r.status.is_none() {
                r.status = status;
            }
            return Some(i);
        }
    }
    let by_ack = match seq {
        Some(s) if payload || status.is_some() => {
            flow.exchanges.iter().position(|e| e.resp.is_none() && e.req_ack == Some(s))
        }
        _ => None,
    };
    let i = by_ack.or_else(|| status.and_then(|_| flow.exchanges.iter().position(|e| e.resp.is_none())))?;
    let mut r = Resp { seq, status, ..Default::default() };
    if let Some(s) = seq {
        if let Some(p) = flow.pending_drops.iter().position(|d| d.seq == Some(s)) {
            let d = flow.pending_drops.remove(p).expect("found");
            r.dropped = true;
            r.ttl_at_host = d.ttl;
        }
    }
    flow.exchanges[i].resp = Some(r);
    Some(i)
}

/// Decide an exchange from what is known about its reply.
fn settle(cx: &mut Cx, i: usize) {
    let ex = &cx.flow.exchanges[i];
    let Some(r) = &ex.resp else { return };
    let new = match (r.delivered, r.status, r.dropped) {
        (true, Some(s), _) => Outcome::Status(s),
        (false, _, true) => Outcome::Lost,
        _ => return,
    };
    match (ex.outcome, new) {
        (old, new) if old == new => {}
        (Outcome::Pending, _) => set_outcome(cx, i, new),
        // A lost reply was delivered after all (a retransmission made it).
        (Outcome::Lost, Outcome::Status(_)) => {
            undo_lost(cx, i);
            set_outcome(cx, i, new);
        }
        _ => {}
    }
}

/// No reply delivered and time is up: lost if a TTL drop killed it, else a
/// timeout.
fn unanswered(cx: &mut Cx, i: usize) {
    let dropped = cx.flow.exchanges[i].resp.as_ref().is_some_and(|r| r.dropped && !r.delivered);
    if dropped {
        set_outcome(cx, i, Outcome::Lost);
        return;
    }
    if cx.flow.exchanges[i].resp.is_none() {
        if let Some(d) = cx.flow.pending_drops.pop_front() {
            cx.flow.exchanges[i].resp = Some(Resp { seq: d.seq, ttl_at_host: d.ttl, dropped: true, ..Default::default() });
            set_outcome(cx, i, Outcome::Lost);
            return;
        }
    }
    set_outcome(cx, i, Outcome::Timeout);
}

fn undo_lost(cx: &mut Cx, i: usize) {
    if cx.flow.exchanges[i].kind != ReqKind::Token {
        return;
    }
    let c = &mut *cx.c;
    c.tokens_lost = c.tokens_lost.saturating_sub(1);
    if let Some(ep) = c.episode.as_mut() {
        ep.lost = ep.lost.saturating_sub(1);
        if ep.lost == 0 {
            c.episode = None;
        }
    }
    c.failed_token_requests = c.failed_token_requests.saturating_sub(1);
    if c.failed_token_requests == 0 {
        clear_token_failure(c);
    }
}

fn clear_token_failure(c: &mut ContainerState) {
    c.episode = None;
    c.token_failed_since = None;
    c.token_failed_last = None;
    c.token_failed_outcome = None;
    c.failed_token_requests = 0;
    c.tokenless_since_failure = 0;
}

/// Record the outcome of exchange `i` and what it says about the container.
fn set_outcome(cx: &mut Cx, i: usize, new: Outcome) {
    let ts = cx.ts;
    let ex = &mut cx.flow.exchanges[i];
    ex.outcome = new;
    let (req_ts, kind, attempt) = (ex.req_ts, ex.kind, ex.attempt);
    let delivered = ex.resp.as_ref().is_some_and(|r| r.delivered);
    let reply_ttl = ex.resp.as_ref().and_then(|r| r.ttl_at_host);
    let (method, path, ttl_header) = (ex.method.clone(), ex.path.clone(), ex.ttl_header);
    let latency = (matches!(new, Outcome::Status(_)) && delivered).then(|| since(req_ts, ts));
    let endpoint = cx.flow.endpoint;
    let had_ttl_drop = cx.flow.had_ttl_drop();
    let other_drop = cx.flow.other_drop_reason.clone();
    let (flow_drops, flow_icmp) = (cx.flow.ttl_drops, cx.flow.icmp);
    let c = &mut *cx.c;
    if let Some(a) = c.attempt_mut(attempt) {
        a.outcome = new;
        a.latency = latency;
        a.reply_ttl = reply_ttl;
    }
    if let Some(l) = latency {
        c.latency.add(l);
    }
    match new {
        Outcome::Status(s) => {
            if let Some(ep) = endpoint {
                endpoint_ok(c, ep, req_ts, ts);
            }
            if (200..300).contains(&s) || s == 404 {
                c.last_success = Some(c.last_success.map_or(ts, |t| t.max(ts)));
            }
            if (200..300).contains(&s) {
                for st in [&mut c.s400, &mut c.s401, &mut c.s403] {
                    if let Some(x) = st {
                        x.paths.retain(|p| p != &path);
                        if x.paths.is_empty() {
                            *st = None;
                        }
                    }
                }
                if kind == ReqKind::Token {
                    c.tokens_ok += 1;
                    if c.token_failed_last.is_none_or(|t| req_ts > t) {
                        clear_token_failure(c);
                    }
                }
            } else if s != 404 {
                let slot = match s {
                    400 => Some(&mut c.s400),
                    401 => Some(&mut c.s401),
                    403 => Some(&mut c.s403),
                    _ => None,
                };
                match slot {
                    Some(st) => {
                        let x = st.get_or_insert_with(|| StatusState {
                            count: 0,
                            paths: Default::default(),
                            method: String::new(),
                            path: String::new(),
                            ttl_header: None,
                        });
                        x.count += 1;
                        x.method = method;
                        x.ttl_header = ttl_header;
                        if !x.paths.contains(&path) {
                            x.paths.push_back(path.clone());
                            if x.paths.len() > MAX_PATHS {
                                x.paths.pop_front();
                            }
                        }
                        x.path = path;
                    }
                    None => c.last_other_failure = Some(ts),
                }
                if kind == ReqKind::Token {
                    token_failed(c, req_ts, new);
                }
            }
        }
        Outcome::Lost => {
            if kind == ReqKind::Token {
                c.tokens_lost += 1;
                c.counts.replies_lost += 1;
                match c.episode.as_mut() {
                    Some(ep) => {
                        ep.lost += 1;
                        ep.reply_ttl = reply_ttl.or(ep.reply_ttl);
                        ep.last_lost = ep.last_lost.max(req_ts);
                        ep.started = ep.started.min(req_ts);
                    }
                    None => {
                        c.episode = Some(HopEpisode {
                            started: req_ts,
                            reply_ttl,
                            lost: 1,
                            drops: flow_drops,
                            icmp: flow_icmp,
                            last_lost: req_ts,
                            evicted_seconds: 0.0,
                        })
                    }
                }
                token_failed(c, req_ts, new);
            } else {
                c.last_other_failure = Some(ts);
            }
        }
        Outcome::Timeout | Outcome::Refused => {
            if let Some(ep) = endpoint {
                if new == Outcome::Refused || !had_ttl_drop {
                    endpoint_failed(c, ep, new, req_ts, ts, other_drop.as_ref());
                }
            }
            if kind == ReqKind::Token {
                token_failed(c, req_ts, new);
            } else if had_ttl_drop {
                c.last_other_failure = Some(ts);
            }
        }
        Outcome::Pending => {}
    }
}

fn token_failed(c: &mut ContainerState, req_ts: Ts, how: Outcome) {
    c.failed_token_requests += 1;
    c.token_failed_outcome = Some(how);
    c.token_failed_last = Some(c.token_failed_last.map_or(req_ts, |t| t.max(req_ts)));
    if c.token_failed_since.is_none_or(|t| req_ts < t) {
        c.token_failed_since = Some(req_ts);
        // Tokenless requests may already have gone out (the failure is
        // decided at a timeout, the client moved on at the same moment).
        c.tokenless_since_failure = c.timeline.iter().filter(|a| a.imdsv1 && a.ts > req_ts).count() as u64;
    }
}

/// A connect that never got through.
fn connect_failed(cx: &mut Cx, syn: Ts, how: Outcome) {
    let ts = cx.ts;
    let had_ttl_drop = cx.flow.had_ttl_drop();
    let other_drop = cx.flow.other_drop_reason.clone();
    let endpoint = cx.flow.endpoint;
    let c = &mut *cx.c;
    let id = c.next_attempt;
    c.next_attempt += 1;
    c.push_attempt(
        AttemptRec {
            id,
            ts: syn,
            method: None,
            path: None,
            dst: endpoint,
            token_header: None,
            imdsv1: false,
            outcome: how,
            latency: None,
            reply_ttl: None,
        },
        cx.cfg.timeline_cap,
    );
    if let Some(ep) = endpoint {
        if how == Outcome::Refused || !had_ttl_drop {
            endpoint_failed(c, ep, how, syn, ts, other_drop.as_ref());
        }
    }
}

fn endpoint_ok(c: &mut ContainerState, ep: SocketAddr, attempt_ts: Ts, now: Ts) {
    let e = c.endpoint_mut(ep, now);
    e.last_ok = Some(e.last_ok.map_or(attempt_ts, |t| t.max(attempt_ts)));
}

fn endpoint_failed(c: &mut ContainerState, ep: SocketAddr, how: Outcome, attempt_ts: Ts, now: Ts, reason: Option<&String>) {
    if let Some(r) = reason {
        if !c.drop_reasons.contains(r) {
            if c.drop_reasons.len() >= MAX_DROP_REASONS {
                c.drop_reasons.remove(0);
            }
            c.drop_reasons.push(r.clone());
        }
    }
    let e = c.endpoint_mut(ep, now);
    match how {
        Outcome::Refused => e.refused += 1,
        _ => e.timeouts += 1,
    }
    e.last_fail = Some(e.last_fail.map_or(attempt_ts, |t| t.max(attempt_ts)));
}
