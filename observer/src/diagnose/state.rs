//! Per-node, per-container and per-flow state of the diagnosis. Every
//! collection here is bounded (see the caps), so memory does not grow with
//! uptime.
use std::{
    collections::VecDeque,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::finding::{FindingKind, Latency, Requests};
use crate::model::TcpFlags;

pub(super) type Ts = SystemTime;

/// Exchanges kept per flow (keep-alive connections).
pub(super) const MAX_EXCHANGES: usize = 16;
/// Request sequence numbers remembered per flow, to skip retransmissions.
pub(super) const MAX_REQ_SEQS: usize = 32;
/// Packets remembered per flow for forwarding-hop matching.
pub(super) const MAX_TTL_SAMPLES: usize = 8;
/// Drops waiting for the reply they belong to.
pub(super) const MAX_PENDING_DROPS: usize = 8;
/// Endpoints whose reachability is tracked per container.
pub(super) const MAX_ENDPOINTS: usize = 8;
/// Paths remembered per HTTP error status.
pub(super) const MAX_PATHS: usize = 4;
/// Distinct drop reasons remembered per container.
pub(super) const MAX_DROP_REASONS: usize = 4;

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `b - a`, zero when negative (events may be slightly out of order).
pub(super) fn since(a: Ts, b: Ts) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReqKind {
    Token,
    Credentials,
    Other,
}

const CREDS: &str = "/latest/meta-data/iam/security-credentials";

impl ReqKind {
    pub fn of(method: &str, path: &str) -> ReqKind {
        let p = path_only(path);
        if method.eq_ignore_ascii_case("PUT") && p == "/latest/api/token" {
            ReqKind::Token
        } else if p == CREDS || p.strip_prefix(CREDS).is_some_and(|rest| rest.starts_with('/')) {
            ReqKind::Credentials
        } else {
            ReqKind::Other
        }
    }
}

fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// An AWS IMDS path (as opposed to ECS, Pod Identity, GCP or Azure): told
/// apart by path, not by address. `/latest/...`, `/<yyyy-mm-dd>/...`, `/`.
pub(super) fn is_aws_imds_path(path: &str) -> bool {
    let p = path_only(path);
    if p == "/" || p == "/latest" || p.starts_with("/latest/") {
        return true;
    }
    let b = p.as_bytes();
    b.len() >= 11
        && b[0] == b'/'
        && b[1..5].iter().all(u8::is_ascii_digit)
        && b[5] == b'-'
        && b[6..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && (b.len() == 11 || b[11] == b'/')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Outcome {
    Pending,
    Status(u16),
    Lost,
    Timeout,
    Refused,
}

impl Outcome {
    pub fn label(self) -> String {
        match self {
            Outcome::Pending => "pending".into(),
            Outcome::Status(s) if (200..300).contains(&s) => "ok".into(),
            Outcome::Status(s) if throttled(s) => "throttled".into(),
            Outcome::Status(s) => s.to_string(),
            Outcome::Lost => "lost".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Refused => "refused".into(),
        }
    }
}

/// One attempt on the container's timeline.
#[derive(Clone, Debug)]
pub(super) struct AttemptRec {
    pub id: u64,
    pub ts: Ts,
    pub method: Option<String>,
    pub path: Option<String>,
    pub dst: Option<SocketAddr>,
    pub token_header: Option<bool>,
    /// An AWS IMDS request (not the token PUT) without a token.
    pub imdsv1: bool,
    pub outcome: Outcome,
    pub latency: Option<Duration>,
    /// TTL of its reply at the host's uplink (or at the drop).
    pub reply_ttl: Option<u8>,
    /// The client's latest packet on it (retransmissions included).
    pub client_last: Ts,
    /// When the client first closed its connection after sending it
    /// (FIN or RST): where its wait ended if nothing came after.
    pub closed: Option<Ts>,
}

impl AttemptRec {
    /// When the client stopped waiting on this attempt: its close, else
    /// its last packet (never a later retransmission of its FIN).
    pub fn gave_up(&self) -> Ts {
        self.closed.unwrap_or(self.client_last).max(self.ts)
    }

    /// Answered with a success (2xx).
    pub fn answered(&self) -> bool {
        matches!(self.outcome, Outcome::Status(s) if (200..300).contains(&s))
    }
}

/// The reply to one exchange, from whichever of host_ingress / drop / reply
/// saw its first segment first.
#[derive(Clone, Debug, Default)]
pub(super) struct Resp {
    pub seq: Option<u32>,
    pub status: Option<u16>,
    /// TTL at the uplink (host_ingress) or, failing that, at the drop (the
    /// forward path drops before decrementing).
    pub ttl_at_host: Option<u8>,
    pub seen_at_host: bool,
    pub dropped: bool,
    pub delivered: bool,
    /// The uplink it arrived on.
    pub iface: Option<std::sync::Arc<str>>,
    /// The kernel's word on the drop (reason, freeing function).
    pub drop_reason: Option<String>,
    pub drop_location: Option<String>,
}

/// One HTTP request and its reply, on a flow.
#[derive(Clone, Debug)]
pub(super) struct Exchange {
    pub attempt: u64,
    pub req_ts: Ts,
    /// The request's TCP ack = the sequence number the reply will start at.
    pub req_ack: Option<u32>,
    pub kind: ReqKind,
    pub method: String,
    pub path: String,
    /// The request carried the token TTL header.
    pub ttl_header: Option<bool>,
    pub token_header: Option<bool>,
    /// The request's first sequence number, and how often it was sent
    /// again.
    pub req_seq: Option<u32>,
    pub retransmits: u32,
    /// TTL the request left its socket with.
    pub ttl: Option<u8>,
    pub resp: Option<Resp>,
    pub outcome: Outcome,
    /// Its `exchange` event, decided `lost` at the drop and held until the
    /// client stops waiting on it (so the line can say how long it waited).
    pub held: Option<Box<crate::model::Event>>,
    /// Lost or timed out, and the client's wait on it is counted
    /// (`Counts::waited_us`).
    pub waited: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct TtlSample {
    pub seq: u32,
    pub flags: TcpFlags,
    pub ttl: u8,
}

#[derive(Clone, Debug)]
pub(super) struct PendingDrop {
    pub seq: Option<u32>,
    pub ttl: Option<u8>,
    pub reason: Option<String>,
    pub location: Option<String>,
}

/// One connection (socket cookie).
#[derive(Clone, Debug)]
pub(super) struct FlowState {
    pub cgroup_id: u64,
    /// The endpoint, as the socket addressed it.
    pub endpoint: Option<SocketAddr>,
    pub last_seen: Ts,
    pub syn_ts: Option<Ts>,
    /// The connect's outcome is known (answered, refused or timed out).
    pub connect_done: bool,
    pub syn_acked: bool,
    /// The client sent FIN or RST.
    pub closed_at: Option<Ts>,
    pub exchanges: VecDeque<Exchange>,
    pub req_seqs: VecDeque<u32>,
    pub sent_ttl: VecDeque<TtlSample>,
    pub egress_ttl: VecDeque<TtlSample>,
    pub pending_drops: VecDeque<PendingDrop>,
    /// Kernel TTL drops of packets from the endpoint on this flow.
    pub ttl_drops: u64,
    pub icmp: u64,
    /// Other kernel drop reasons on this flow (for `unreachable`).
    pub other_drop_reason: Option<String>,
}

impl FlowState {
    pub fn new(cgroup_id: u64, now: Ts) -> Self {
        Self {
            cgroup_id,
            endpoint: None,
            last_seen: now,
            syn_ts: None,
            connect_done: false,
            syn_acked: false,
            closed_at: None,
            exchanges: VecDeque::new(),
            req_seqs: VecDeque::new(),
            sent_ttl: VecDeque::new(),
            egress_ttl: VecDeque::new(),
            pending_drops: VecDeque::new(),
            ttl_drops: 0,
            icmp: 0,
            other_drop_reason: None,
        }
    }

    /// Anything whose outcome time will decide?
    pub fn has_pending(&self) -> bool {
        (self.syn_ts.is_some() && !self.connect_done)
            || self.exchanges.iter().any(|e| e.outcome == Outcome::Pending || e.held.is_some())
    }

    pub fn had_ttl_drop(&self) -> bool {
        self.ttl_drops > 0 || self.icmp > 0 || !self.pending_drops.is_empty()
    }
}

/// A run of lost token replies, until a token request succeeds again.
#[derive(Clone, Debug)]
pub(super) struct HopEpisode {
    /// Request time of the first lost token request.
    pub started: Ts,
    pub reply_ttl: Option<u8>,
    /// Distinct lost token replies.
    pub lost: u64,
    pub drops: u64,
    pub icmp: u64,
    /// Request time of the latest lost token request.
    pub last_lost: Ts,
    /// seconds_lost of lost attempts already pushed off the timeline.
    pub evicted_seconds: f64,
}

/// 401 / 403 / 400 seen by a container.
#[derive(Clone, Debug)]
pub(super) struct StatusState {
    pub count: u64,
    pub paths: VecDeque<String>,
    pub method: String,
    pub path: String,
    /// The last PUT that got it carried the TTL header (for 400).
    pub ttl_header: Option<bool>,
}

#[derive(Clone, Debug)]
pub(super) struct EndpointHealth {
    pub endpoint: SocketAddr,
    pub refused: u64,
    pub timeouts: u64,
    pub last_fail: Option<Ts>,
    pub last_ok: Option<Ts>,
    pub touched: Ts,
}

impl EndpointHealth {
    pub fn failing(&self) -> bool {
        match (self.last_fail, self.last_ok) {
            (Some(f), Some(o)) => f > o,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct LatencyAcc {
    pub count: u64,
    pub sum: f64,
    pub hist: LatencyHist,
}

impl LatencyAcc {
    pub fn add(&mut self, d: Duration) {
        let ms = secs(d) * 1000.0;
        self.count += 1;
        self.sum += ms;
        self.hist.add(ms);
    }

    pub fn evidence(&self) -> Option<Latency> {
        (self.count > 0).then(|| Latency {
            count: self.count,
            mean: round3(self.sum / self.count as f64),
            max: round3(self.hist.max_ms),
            p50: self.hist.quantile(0.5),
            p99: self.hist.quantile(0.99),
        })
    }
}

/// Latencies in a fixed histogram (no allocation per exchange): bucket
/// `i` holds those up to `LATENCY_EDGE_MS * LATENCY_GROWTH^i` ms.
#[derive(Clone, Copy, Debug)]
pub(super) struct LatencyHist {
    pub buckets: [u32; LATENCY_BUCKETS],
    pub max_ms: f64,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self { buckets: [0; LATENCY_BUCKETS], max_ms: 0.0 }
    }
}

impl LatencyHist {
    pub fn add(&mut self, ms: f64) {
        let i = (ms / LATENCY_EDGE_MS).max(1.0).log(LATENCY_GROWTH).ceil() as usize;
        let b = &mut self.buckets[i.min(LATENCY_BUCKETS - 1)];
        *b = b.saturating_add(1);
        self.max_ms = self.max_ms.max(ms);
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|&c| c == 0)
    }

    /// The upper edge of the bucket holding quantile `q` (within 25 %
    /// above the true value), never past the largest.
    pub fn quantile(&self, q: f64) -> f64 {
        let n: u64 = self.buckets.iter().map(|&c| u64::from(c)).sum();
        let want = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += u64::from(c);
            if seen >= want {
                let edge = LATENCY_EDGE_MS * LATENCY_GROWTH.powi(i as i32);
                return round3(edge.min(self.max_ms));
            }
        }
        round3(self.max_ms)
    }
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Monotonic counters of a workload, for metrics (which read them, and
/// never recount from events).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// HTTP requests, retransmissions once: [ReqKind as usize][v2 as usize],
    /// v2 meaning it carried a token or is the token PUT.
    pub requests: [[u64; 2]; 3],
    /// Token replies lost on the way in (never decreases, unlike
    /// `tokens_lost`).
    pub replies_lost: u64,
    /// Records its budget held back (`suppressed` events).
    pub suppressed: u64,
    /// Exchanges answered (reply delivered), by [ReqKind as usize]: how
    /// many took at most each of `LATENCY_LE` (the last: longer), and the
    /// sum of their latencies in microseconds.
    pub latency: [[u64; LATENCY_LE.len() + 1]; 3],
    pub latency_us: [u64; 3],
    /// Microseconds clients waited on attempts that got no reply (lost or
    /// timed out), from each request to when the client gave up on it.
    pub waited_us: u64,
    /// Replies that turned a request away for its rate ([`throttled`]).
    pub throttled: u64,
}

/// 429 Too Many Requests, or 503: how metadata endpoints say they throttle
/// (IMDS, the ECS agent, EKS Pod Identity, Azure IMDS beyond 5 a second).
pub fn throttled(status: u16) -> bool {
    status == 429 || status == 503
}

/// Upper edges of the latency buckets, in seconds: 1 ms to 10 s (the
/// SDKs' timeouts are 1 to 5 s).
pub const LATENCY_LE: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Counts {
    pub fn request(&mut self, kind: ReqKind, token_header: bool) {
        self.requests[kind as usize][usize::from(kind == ReqKind::Token || token_header)] += 1;
    }

    /// An exchange of `kind` answered after `latency`.
    pub fn answered(&mut self, kind: ReqKind, latency: std::time::Duration) {
        let s = latency.as_secs_f64();
        let b = LATENCY_LE.iter().position(|&le| s <= le).unwrap_or(LATENCY_LE.len());
        self.latency[kind as usize][b] += 1;
        self.latency_us[kind as usize] += latency.as_micros() as u64;
    }

    /// Every counter, in one order (to compare and subtract them whole).
    pub fn cells(&self) -> impl Iterator<Item = u64> + '_ {
        self.requests
            .iter()
            .flatten()
            .chain([&self.replies_lost, &self.suppressed])
            .chain(self.latency.iter().flatten())
            .chain(&self.latency_us)
            .chain([&self.waited_us, &self.throttled])
            .copied()
    }

    pub fn cells_mut(&mut self) -> impl Iterator<Item = &mut u64> + '_ {
        self.requests
            .iter_mut()
            .flatten()
            .chain([&mut self.replies_lost, &mut self.suppressed])
            .chain(self.latency.iter_mut().flatten())
            .chain(&mut self.latency_us)
            .chain([&mut self.waited_us, &mut self.throttled])
    }
}

/// Latency buckets of a summary: bucket `i` holds latencies up to
/// `LATENCY_EDGE_MS * LATENCY_GROWTH^i` ms; 48 buckets reach past 10 s.
const LATENCY_BUCKETS: usize = 48;
const LATENCY_EDGE_MS: f64 = 0.25;
const LATENCY_GROWTH: f64 = 1.25;

/// A workload's exchanges since its last `summary` line: counters and a
/// fixed histogram, so a healthy exchange costs no allocation.
#[derive(Clone, Debug, Default)]
pub(super) struct SummaryAcc {
    /// Start of the interval (the first exchange counted).
    pub since: Option<Ts>,
    pub requests: u64,
    pub token: u64,
    pub credentials: u64,
    pub other: u64,
    pub imdsv2: u64,
    pub latency: LatencyHist,
}

impl SummaryAcc {
    pub fn add(&mut self, ts: Ts, kind: ReqKind, imdsv2: bool, latency: Option<Duration>) {
        self.since = Some(self.since.map_or(ts, |s| s.min(ts)));
        self.requests += 1;
        match kind {
            ReqKind::Token => self.token += 1,
            ReqKind::Credentials => self.credentials += 1,
            ReqKind::Other => self.other += 1,
        }
        self.imdsv2 += u64::from(imdsv2);
        if let Some(l) = latency {
            self.latency.add(secs(l) * 1000.0);
        }
    }

    /// The figures of the interval up to `now`, and a fresh interval.
    pub fn take(&mut self, now: Ts) -> Option<crate::model::Summary> {
        let since = self.since?;
        let any_latency = !self.latency.is_empty();
        let s = crate::model::Summary {
            interval_s: round3(secs(self::since(since, now))),
            requests: self.requests,
            token: self.token,
            credentials: self.credentials,
            other: self.other,
            imdsv2: self.imdsv2,
            latency_ms: any_latency.then(|| crate::model::Quantiles {
                p50: self.latency.quantile(0.5),
                p99: self.latency.quantile(0.99),
                max: round3(self.latency.max_ms),
            }),
        };
        *self = SummaryAcc::default();
        Some(s)
    }
}

/// What was last emitted for one finding kind of a container.
#[derive(Clone, Copy, Debug)]
pub(super) struct Emitted {
    pub kind: FindingKind,
    pub fingerprint: u64,
    pub ts: Ts,
}

#[derive(Clone, Debug)]
pub(super) struct ContainerState {
    pub cgroup: Option<String>,
    /// Who it is, as the latest event named it (names arrive after the
    /// first packets when the runtime API answers later).
    pub identity: Option<std::sync::Arc<crate::model::Container>>,
    /// A fingerprint of `identity` (assess::fp), kept as it changes: a
    /// name learned later makes findings news again.
    pub identity_fp: u64,
    pub last_seen: Ts,
    pub forwarding_hops: Option<u8>,
    pub requests: Requests,
    pub latency: LatencyAcc,
    /// Attempts, sorted by time, capped.
    pub timeline: VecDeque<AttemptRec>,
    pub next_attempt: u64,
    pub episode: Option<HopEpisode>,
    /// Request time of the first failed token request since the last
    /// successful one.
    pub token_failed_since: Option<Ts>,
    pub token_failed_last: Option<Ts>,
    /// How the latest token request failed.
    pub token_failed_outcome: Option<Outcome>,
    pub failed_token_requests: u64,
    /// Token requests answered 2xx and delivered.
    pub tokens_ok: u64,
    /// Token replies lost on the way in, over all episodes.
    pub tokens_lost: u64,
    pub counts: Counts,
    pub tokenless_since_failure: u64,
    pub s401: Option<StatusState>,
    pub s403: Option<StatusState>,
    pub s400: Option<StatusState>,
    pub endpoints: Vec<EndpointHealth>,
    pub drop_reasons: Vec<String>,
    pub last_success: Option<Ts>,
    pub last_other_failure: Option<Ts>,
    pub emitted: Vec<Emitted>,
    /// Exchanges not written one by one since the last `summary`.
    pub summary: SummaryAcc,
    /// Who sent its latest request (pid, comm: the connect hook's process).
    pub process: Option<(u32, std::sync::Arc<str>)>,
    /// The SDK its latest request's `User-Agent` named.
    pub sdk: Option<crate::model::Sdk>,
    /// Answers (2xx) it got from IMDS's role-credentials path: the node's
    /// role, in its hands.
    pub node_credentials: u64,
    /// What it asked AWS IMDS for.
    pub asked: Asked,
    /// Its token and credential requests of the last minutes.
    pub fetches: super::storm::FetchWindow,
}

/// What a workload asked AWS IMDS for, token requests aside: whether it
/// needs the node's role at all, or only to know where it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Asked {
    pub credentials: bool,
    /// Region, zone, instance id, the identity document.
    pub whereabouts: bool,
    pub other: bool,
}

/// Paths that say where the instance runs (what SDKs read for a region).
const WHEREABOUTS: [&str; 4] = [
    "/latest/meta-data/placement",
    "/latest/meta-data/instance-id",
    "/latest/dynamic/instance-identity/document",
    "/latest/dynamic/instance-identity",
];

impl Asked {
    pub fn note(&mut self, kind: ReqKind, path: &str) {
        let p = path_only(path).trim_end_matches('/');
        match kind {
            ReqKind::Token => {}
            ReqKind::Credentials => self.credentials = true,
            ReqKind::Other
                if WHEREABOUTS.iter().any(|w| {
                    p.strip_prefix(w).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                }) =>
            {
                self.whereabouts = true
            }
            ReqKind::Other => self.other = true,
        }
    }

    /// It asked, and only where it runs: it needs no credentials from IMDS.
    pub fn only_whereabouts(&self) -> bool {
        self.whereabouts && !self.credentials && !self.other
    }
}

impl ContainerState {
    /// Take `who` as this container's identity when it says something new
    /// (the same Arc, or an equal one, changes nothing).
    pub fn learn_identity(&mut self, who: &Option<std::sync::Arc<crate::model::Container>>) {
        let Some(w) = who else { return };
        if self.identity.as_ref().is_some_and(|c| std::sync::Arc::ptr_eq(c, w) || c == w) {
            return;
        }
        self.identity = Some(w.clone());
        self.identity_fp = super::assess::fp(&self.identity);
    }

    pub fn new(now: Ts) -> Self {
        Self {
            cgroup: None,
            identity: None,
            identity_fp: 0,
            last_seen: now,
            forwarding_hops: None,
            requests: Requests::default(),
            latency: LatencyAcc::default(),
            timeline: VecDeque::new(),
            next_attempt: 0,
            episode: None,
            token_failed_since: None,
            token_failed_last: None,
            token_failed_outcome: None,
            failed_token_requests: 0,
            tokens_ok: 0,
            tokens_lost: 0,
            counts: Counts::default(),
            tokenless_since_failure: 0,
            s401: None,
            s403: None,
            s400: None,
            endpoints: Vec::new(),
            drop_reasons: Vec::new(),
            last_success: None,
            last_other_failure: None,
            emitted: Vec::new(),
            summary: SummaryAcc::default(),
            process: None,
            sdk: None,
            node_credentials: 0,
            asked: Asked::default(),
            fetches: Default::default(),
        }
    }

    pub fn attempt_mut(&mut self, id: u64) -> Option<&mut AttemptRec> {
        self.timeline.iter_mut().rev().find(|a| a.id == id)
    }

    /// Add an attempt in time order; drop the oldest beyond `cap`.
    pub fn push_attempt(&mut self, a: AttemptRec, cap: usize) {
        // Attempts almost always come in time order: append without a search.
        if self.timeline.back().is_none_or(|x| x.ts <= a.ts) {
            self.timeline.push_back(a);
        } else {
            let pos = self.timeline.partition_point(|x| x.ts <= a.ts);
            self.timeline.insert(pos, a);
        }
        while self.timeline.len() > cap.max(1) {
            let old = self.timeline.pop_front().expect("non-empty");
            if old.outcome == Outcome::Lost {
                if let (Some(ep), Some(next)) = (self.episode.as_mut(), self.timeline.front()) {
                    if old.ts >= ep.started {
                        let end = wait_end(&old, std::iter::once(next));
                        ep.evicted_seconds += secs(since(old.ts, end));
                    }
                }
            }
        }
    }

    pub fn endpoint_mut(&mut self, endpoint: SocketAddr, now: Ts) -> &mut EndpointHealth {
        if let Some(i) = self.endpoints.iter().position(|e| e.endpoint == endpoint) {
            let e = &mut self.endpoints[i];
            e.touched = now;
            return e;
        }
        if self.endpoints.len() >= MAX_ENDPOINTS {
            // Forget the endpoint least recently heard of.
            if let Some(i) =
                self.endpoints.iter().enumerate().min_by_key(|(_, e)| e.touched).map(|(i, _)| i)
            {
                self.endpoints.swap_remove(i);
            }
        }
        self.endpoints.push(EndpointHealth {
            endpoint,
            refused: 0,
            timeouts: 0,
            last_fail: None,
            last_ok: None,
            touched: now,
        });
        self.endpoints.last_mut().expect("just pushed")
    }

    /// Seconds the client lost to lost token replies in the current
    /// episode: from each lost attempt to the client's next attempt (a
    /// retry, its fallback, the success after), or to its close when it
    /// gave up. Never past the client's own close: a server retransmitting
    /// to a client that left, or a client that comes back much later, adds
    /// nothing.
    pub fn seconds_lost(&self) -> f64 {
        let Some(ep) = &self.episode else { return 0.0 };
        let mut total = ep.evicted_seconds;
        for (i, a) in self.timeline.iter().enumerate() {
            if a.outcome != Outcome::Lost || a.ts < ep.started {
                continue;
            }
            total += secs(since(a.ts, wait_end(a, self.timeline.iter().skip(i + 1))));
        }
        round3(total)
    }
}

/// A client that closed and came back after this long started a new wait.
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Where the client's wait on lost attempt `a` ended, given the attempts
/// after it: its next attempt (attempts at the very same instant are
/// parallel, not "next") if it came within [`MAX_PAUSE`] of giving up on
/// `a`, else when it gave up.
fn wait_end<'a>(a: &AttemptRec, after: impl Iterator<Item = &'a AttemptRec>) -> Ts {
    let gave_up = a.gave_up();
    let mut after = after;
    match after.find(|b| b.ts > a.ts) {
        Some(b) if b.ts <= gave_up + MAX_PAUSE => b.ts,
        _ => gave_up,
    }
}

/// Everything known about one node.
#[derive(Debug)]
pub(super) struct NodeState {
    /// Newest time seen (events or ticks).
    pub now: Ts,
    pub hop_limit: Option<u8>,
    /// Whether the instance requires IMDSv2 tokens, as tokenless requests'
    /// answers said (401: required; 2xx: optional); None until one did.
    pub tokens_required: Option<bool>,
    /// What the cluster says of the node (a `node` event).
    pub info: Option<std::sync::Arc<crate::model::NodeInfo>>,
    pub flows: HashMap<u64, FlowState>,
    pub containers: HashMap<u64, ContainerState>,
    /// Flows with an outcome that time will decide.
    pub watch: HashSet<u64>,
    pub next_check: Ts,
    pub next_sweep: Ts,
    pub lost_events: u64,
    /// Requests no flow or container could be attributed to.
    pub unattributed: Counts,
    /// Newest event time (ticks excluded).
    pub last_event: Ts,
    /// Containers to re-assess after the current event.
    pub dirty: Vec<u64>,
    /// Exchanges decided since the last drain: (flow, workload, event).
    pub done: Vec<(u64, u64, crate::model::Event)>,
    /// When `summary` events were last due.
    pub next_summary: Ts,
    /// Flows whose connection is over, by when (oldest first): each is
    /// forgotten `ENDED_LINGER` later (`api::forget_ended`); no more wait
    /// than the flow table holds. A client that
    /// opens a connection per request would otherwise fill the table with
    /// finished flows until they idle out, and make every new flow pay an
    /// eviction.
    pub ended: VecDeque<(Ts, u64)>,
}

impl NodeState {
    pub fn new(now: Ts) -> Self {
        Self {
            now,
            hop_limit: None,
            tokens_required: None,
            info: None,
            flows: HashMap::new(),
            containers: HashMap::new(),
            watch: HashSet::new(),
            next_check: now,
            next_sweep: now,
            lost_events: 0,
            unattributed: Counts::default(),
            last_event: now,
            dirty: Vec::new(),
            done: Vec::new(),
            next_summary: now,
            ended: VecDeque::new(),
        }
    }

    /// The container an event is about: its flow's, else the event's own.
    pub fn workload_of(&self, ev: &crate::model::Event) -> Option<u64> {
        ev.flow.and_then(|f| Some(self.flows.get(&f)?.cgroup_id)).or_else(|| ev.workload_key())
    }

    /// What a tokenless request's answer said of the instance's tokens:
    /// news re-assesses every container (their advice names it).
    pub fn learn_tokens(&mut self, required: Option<bool>) {
        if required.is_none() || self.tokens_required == required {
            return;
        }
        self.tokens_required = required;
        let all: Vec<u64> = self.containers.keys().copied().collect();
        all.into_iter().for_each(|k| self.mark(k));
    }

    /// The connection of `flow` ended at `ts`.
    pub fn ended(&mut self, flow: u64, ts: Ts) {
        self.ended.push_back((ts, flow));
    }

    /// Keep the exchanges one flow's handling decided, for the drain.
    pub fn decided(&mut self, flow: u64, cgroup_id: u64, done: Vec<crate::model::Event>) {
        self.done.extend(done.into_iter().map(|ev| (flow, cgroup_id, ev)));
    }

    pub fn mark(&mut self, cgroup_id: u64) {
        if !self.dirty.contains(&cgroup_id) {
            self.dirty.push(cgroup_id);
        }
    }
}
