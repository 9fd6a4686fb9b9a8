//! The engine's API: feed events and time, read containers and findings.
//! Upkeep (timeouts that time decides, eviction within the caps) runs here;
//! what one event does to a flow is exchange.rs, what an outcome says about
//! a container is outcome.rs, which findings hold is assess.rs.
use super::{
    exchange::{Cx, Effects, handle, resolve_due},
    replay, *,
};
pub struct Diagnoser {
    cfg: Config,
    nodes: HashMap<std::sync::Arc<str>, NodeState>,
    stats: Stats,
}

impl Default for Diagnoser {
    fn default() -> Self {
        Self::new(Config::default())
    }
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
        self.nodes.get(&*ev.node)?.workload_of(ev)
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
        let node = self.nodes.get_mut(&*ev.node).expect("ensured");
        if ts > node.now {
            node.now = ts;
        }
        if ts > node.last_event {
            node.last_event = ts;
        }
        if kind == Kind::Node {
            if ev.node_info.is_some() && node.info.as_deref() != ev.node_info.as_deref() {
                node.info = ev.node_info.as_deref().cloned().map(std::sync::Arc::new);
                // What fits the node may have changed for every container.
                let all: Vec<u64> = node.containers.keys().copied().collect();
                all.into_iter().for_each(|k| node.mark(k));
            }
            let mut out = Vec::new();
            flush(&ev.node, node, cfg, ts, &mut out);
            out.sort_by_key(|f| f.kind);
            return out;
        }
        if kind == Kind::LostEvents {
            let n = ev.count.unwrap_or(1);
            node.lost_events += n;
            self.stats.lost_events += n;
            return Vec::new();
        }
        if kind == Kind::Suppressed {
            let n = ev.count.unwrap_or(1);
            self.stats.suppressed += n;
            match ev.workload_key() {
                Some(cg) => {
                    if !node.containers.contains_key(&cg)
                        && node.containers.len() >= cfg.max_containers_per_node
                    {
                        make_room_containers(node, &mut self.stats);
                    }
                    let c = node.containers.entry(cg).or_insert_with(|| ContainerState::new(ts));
                    c.counts.suppressed += n;
                    c.learn_identity(&ev.container);
                    c.last_seen = c.last_seen.max(ts);
                    node.mark(cg);
                }
                None => node.unattributed.suppressed += n,
            }
            let mut out = Vec::new();
            flush(&ev.node, node, cfg, ts, &mut out);
            return out;
        }
        if matches!(kind, Kind::Exchange | Kind::Summary) {
            // Read back from a stream written at the exchange level.
            if !replay::record(node, cfg, &mut self.stats, ev) {
                self.stats.ignored += 1;
            }
            let mut out = Vec::new();
            flush(&ev.node, node, cfg, ts, &mut out);
            out.sort_by_key(|f| f.kind);
            return out;
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
        self.nodes.retain(|_, n| {
            !(n.containers.is_empty() && n.flows.is_empty() && since(n.last_event, n.now) > idle)
        });
        self.stats.evicted_nodes += (before - self.nodes.len()) as u64;
        out.sort_by_key(|f| f.kind);
        out
    }

    /// Move the exchanges decided so far into `out` as `exchange` events,
    /// as `Config::exchanges` says; count the others into their workloads'
    /// summaries. Call after `observe` and `tick`.
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        let all = self.cfg.exchanges == Exchanges::All;
        for (name, node) in self.nodes.iter_mut() {
            for (flow, cg, mut ev) in std::mem::take(&mut node.done) {
                let c = node.containers.get_mut(&cg);
                let troubled = c
                    .as_ref()
                    .is_some_and(|c| c.emitted.iter().any(|e| e.kind != FindingKind::Healthy));
                if !(all || troubled || went_wrong(&ev)) {
                    if let Some(c) = c {
                        let kind = ReqKind::of(
                            ev.method.as_deref().unwrap_or(""),
                            ev.path.as_deref().unwrap_or(""),
                        );
                        let latency =
                            ev.latency_ms.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3));
                        c.summary.add(ev.ts, kind, ev.token_header == Some(true), latency);
                    }
                    continue;
                }
                ev.node = name.clone();
                ev.flow = Some(flow);
                ev.hop_limit = node.hop_limit;
                workload(&mut ev, cg, c.map(|c| &*c));
                out.push(ev);
            }
        }
    }

    /// `summary` events of the workloads whose healthy exchanges were not
    /// written, every `SUMMARY_EVERY` of node time, or now for all of them
    /// when `flush` (at the end of a run).
    pub fn summaries(&mut self, flush: bool, out: &mut Vec<Event>) {
        for (name, node) in self.nodes.iter_mut() {
            if !flush && node.now < node.next_summary {
                continue;
            }
            node.next_summary = node.now + SUMMARY_EVERY;
            let now = node.now;
            for (&cg, c) in node.containers.iter_mut() {
                let Some(s) = c.summary.take(now) else { continue };
                let mut ev = Event::new(Kind::Summary, now, name.clone());
                if let Some(since) = now.checked_sub(Duration::from_secs_f64(s.interval_s)) {
                    ev.ts = since;
                }
                ev.summary = Some(Box::new(s));
                ev.hops = c.forwarding_hops;
                ev.hop_limit = node.hop_limit;
                workload(&mut ev, cg, Some(c));
                out.push(ev);
            }
        }
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
            n.containers.iter().map(move |(&cg, c)| ContainerView {
                cfg: &self.cfg,
                name,
                node: n,
                cg,
                c,
            })
        })
    }

    fn ensure_node(&mut self, name: &str, ts: Ts) {
        if self.nodes.contains_key(name) {
            return;
        }
        if self.nodes.len() >= self.cfg.max_nodes {
            if let Some(oldest) =
                self.nodes.iter().min_by_key(|(_, n)| n.now).map(|(k, _)| k.clone())
            {
                self.nodes.remove(&oldest);
                self.stats.evicted_nodes += 1;
            }
        }
        self.nodes.insert(name.into(), NodeState::new(ts));
        // A second node: the one bare instance id is no longer its own.
        self.cfg.several_nodes |= self.nodes.len() > 1;
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
        let known = self.c.forwarding_hops.is_some()
            || self.c.episode.as_ref().is_some_and(|e| e.reply_ttl.is_some());
        known.then(|| {
            assess::required(
                &node_view(self.cfg, self.name, self.node, self.node.info.as_deref()),
                self.c,
            )
        })
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
        let view = node_view(self.cfg, self.name, self.node, self.node.info.as_deref());
        assess::active(&view, self.c).as_slice().iter().map(|(k, _)| *k).collect()
    }

    /// The findings that hold now, worst first.
    pub fn findings(&self) -> Vec<Finding> {
        let view = node_view(self.cfg, self.name, self.node, self.node.info.as_deref());
        assess::active(&view, self.c)
            .as_slice()
            .iter()
            .map(|&(kind, _)| {
                let ts =
                    self.c.emitted.iter().find(|e| e.kind == kind).map_or(self.node.now, |e| e.ts);
                assess::build(&view, self.cg, self.c, kind, ts)
            })
            .collect()
    }

    /// Its attempts with a known outcome, oldest first, whatever the finding.
    pub fn timeline(&self) -> Vec<Attempt> {
        assess::timeline(self.c)
    }
}

/// An exchange that went wrong: no reply delivered, a drop, a request sent
/// again, an error status, or an AWS IMDS request without a token.
fn went_wrong(ev: &Event) -> bool {
    let tokenless = match (&ev.method, &ev.path) {
        (Some(m), Some(p)) => {
            ReqKind::of(m, p) != ReqKind::Token
                && state::is_aws_imds_path(p)
                && ev.token_header != Some(true)
        }
        _ => false,
    };
    ev.outcome != Some(crate::model::Outcome::Answered)
        || ev.status.is_none_or(|s| s >= 400)
        || ev.delivered != Some(true)
        || ev.reason.is_some()
        || ev.retransmits.is_some()
        || tokenless
}

/// Name the workload `cg` on a record derived from its packets.
fn workload(ev: &mut Event, cg: u64, c: Option<&ContainerState>) {
    if cg & crate::model::NETNS_KEY == 0 {
        ev.cgroup_id = Some(cg);
    }
    if let Some(c) = c {
        ev.cgroup = c.cgroup.clone();
        ev.container = c.identity.clone();
    }
}

pub(super) fn node_view<'a>(
    cfg: &'a Config,
    name: &'a str,
    node: &NodeState,
    info: Option<&'a NodeInfo>,
) -> assess::NodeView<'a> {
    assess::NodeView {
        name,
        hop_limit: node.hop_limit,
        lost_events: node.lost_events,
        tokens_required: node.tokens_required,
        instance_id: instance_id(cfg, name, info, !cfg.several_nodes),
        info,
    }
}

/// The instance id for a node's fix command, this node's own only: its
/// `node=id` pair, else its name when that is one, else its providerID,
/// else the one bare id, and that only while this is the only node (one
/// id given for a merged stream would go into every node's fix).
pub(super) fn instance_id<'a>(
    cfg: &'a Config,
    node: &'a str,
    info: Option<&'a NodeInfo>,
    single_node: bool,
) -> Option<&'a str> {
    if let Some(id) = cfg.instance_ids.get(node) {
        return Some(id);
    }
    if let Some(id) = id_in_name(node) {
        return Some(id);
    }
    if let Some(id) = info.and_then(|i| i.instance_id.as_deref()) {
        return Some(id);
    }
    cfg.instance_id.as_deref().filter(|_| single_node)
}

/// EKS/Karpenter resource-name host names: i-0123456789abcdef0.<region>...
fn id_in_name(node: &str) -> Option<&str> {
    let first = node.split('.').next().unwrap_or(node);
    let hex = first.strip_prefix("i-")?;
    ((hex.len() == 8 || hex.len() == 17)
        && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(first)
}

/// Re-assess the containers an event touched; queue findings that are new or
/// changed.
pub(super) fn flush(
    name: &str,
    node: &mut NodeState,
    cfg: &Config,
    at: Ts,
    out: &mut Vec<Finding>,
) {
    if node.dirty.is_empty() {
        return;
    }
    // Taken and given back: its memory serves every event.
    let mut dirty = std::mem::take(&mut node.dirty);
    let info = node.info.clone();
    let view = node_view(cfg, name, node, info.as_deref());
    for cg in dirty.drain(..) {
        let Some(c) = node.containers.get_mut(&cg) else { continue };
        // A name learned later is news too: findings go out again with it.
        let who = c.identity_fp;
        let current = assess::active(&view, c);
        let current = current.as_slice();
        // Most events change nothing: then nothing is built.
        let same = current.len() == c.emitted.len()
            && current
                .iter()
                .zip(&c.emitted)
                .all(|(&(k, f), e)| e.kind == k && e.fingerprint == f ^ who);
        if same {
            continue;
        }
        let mut emitted = Vec::with_capacity(current.len());
        let mut changed = Vec::new();
        for &(kind, fingerprint) in current {
            let fingerprint = fingerprint ^ who;
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
    node.dirty = dirty;
}

/// Time-based outcomes and eviction, by the node's clock.
pub(super) fn maintain(node: &mut NodeState, cfg: &Config, stats: &mut Stats, force: bool) {
    let now = node.now;
    forget_ended(node, cfg, stats, now);
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
pub(super) fn check_pending(node: &mut NodeState, cfg: &Config, now: Ts) {
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
        let done = cx.fx.done;
        node.decided(id, cg, done);
    }
    node.dirty.sort_unstable();
    node.dirty.dedup();
}

/// Forget the flows whose connection ended `ENDED_LINGER` ago (late
/// packets of theirs, a drop or a retransmission, came meanwhile), or
/// sooner when more wait than the flow table holds.
fn forget_ended(node: &mut NodeState, cfg: &Config, stats: &mut Stats, now: Ts) {
    while let Some(&(ts, id)) = node.ended.front() {
        if since(ts, now) < ENDED_LINGER && node.ended.len() <= cfg.max_flows_per_node {
            break;
        }
        node.ended.pop_front();
        if node.flows.contains_key(&id) {
            evict_flow(node, cfg, id, now);
            stats.ended_flows += 1;
        }
    }
}

/// Forget idle flows and containers; make room when over the caps.
pub(super) fn sweep(node: &mut NodeState, cfg: &Config, stats: &mut Stats, now: Ts) {
    let idle: Vec<u64> = node
        .flows
        .iter()
        .filter(|(_, f)| since(f.last_seen, now) > cfg.flow_idle)
        .map(|(k, _)| *k)
        .collect();
    for id in idle {
        evict_flow(node, cfg, id, now);
        stats.evicted_flows += 1;
    }
    let before = node.containers.len();
    node.containers.retain(|_, c| since(c.last_seen, now) <= cfg.container_idle);
    stats.evicted_containers += (before - node.containers.len()) as u64;
}

pub(super) fn evict_flow(node: &mut NodeState, cfg: &Config, id: u64, now: Ts) {
    let Some(mut flow) = node.flows.remove(&id) else { return };
    node.watch.remove(&id);
    if flow.has_pending() {
        let cg = flow.cgroup_id;
        if let Some(c) = node.containers.get_mut(&cg) {
            let mut cx = Cx { cfg, ts: now, flow: &mut flow, c, fx: Effects::default() };
            resolve_due(&mut cx, now, true);
            let done = cx.fx.done;
            node.decided(id, cg, done);
            node.mark(cg);
        }
    }
}

/// Evict the least recently seen eighth of the flows.
pub(super) fn make_room_flows(node: &mut NodeState, cfg: &Config, stats: &mut Stats) {
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

pub(super) fn make_room_containers(node: &mut NodeState, stats: &mut Stats) {
    for id in oldest_eighth(node.containers.iter().map(|(k, c)| (*k, c.last_seen))) {
        node.containers.remove(&id);
        stats.evicted_containers += 1;
    }
}
