//! Prometheus metrics for `--metrics-addr` (served by `sink::http`).
//!
//! [`Metrics`] holds no flow state of its own: the Diagnoser counts requests
//! and lost replies per container (monotonic [`Counts`]), and metrics read
//! them, for the container an event touched ([`Metrics::observe`]) and for
//! all of them with the current findings ([`Metrics::update_from`]), adding
//! what grew to the container's workload series. Only node-wide counters
//! (drops by reason, events lost) are counted here. A fresh
//! prometheus-client `Registry` (one collector over a sorted snapshot) is
//! built on every [`Metrics::encode`]: expiry is then a matter of forgetting
//! map entries, and series come out in a stable order.
//!
//! Families (all prefixed `imds_observer_`):
//! - `requests_total{node,workload,namespace,kind,version}`: HTTP requests
//!   (request events that carry `method`), retransmissions counted once
//!   (flow + seq), as the Diagnoser counts them. kind: `token` (`PUT /latest/api/token`) | `credentials`
//!   (under `/latest/meta-data/iam/security-credentials/`) | `other`, as the
//!   Diagnoser classifies them; version: `v2` when the request carried the
//!   token header or is the token PUT, else `v1`.
//! - `replies_lost_total{node,workload,namespace}`: token replies the
//!   Diagnoser found lost on the way in (seen at the host, dropped by the
//!   kernel, never delivered), each reply once whatever its retransmissions.
//! - `suppressed_total{node,workload,namespace}`: records of the workload its
//!   budget held back in the kernel (a flood from it), when there were any.
//! - `throttled_total{node,workload,namespace}`: replies with 429 or 503
//!   (the endpoint turned the request away for its rate), once there is one.
//! - `seconds_lost_total{node,workload,namespace}`: seconds clients waited
//!   on requests that got no reply (lost or timed out), each request's wait
//!   counted once the client gave up on it.
//! - `exchange_latency_seconds{node,workload,namespace,kind}`: histogram of
//!   request sent → reply delivered, answered exchanges only, buckets
//!   `diagnose::LATENCY_LE` (1 ms to 10 s), from the Diagnoser's counts.
//! - `drops_total{node,reason}`: kernel drops (not the ICMP evidence).
//! - `findings{node,workload,namespace,kind}`: 1 per finding kind that holds
//!   now (including `healthy`), rebuilt on every update.
//! - `hop_limit{node}`: the hop limit observed on the node.
//! - `forwarding_hops{node,workload,namespace}`: forwarding hops between the
//!   workload and the uplink (the largest of its containers).
//! - `events_lost_total{node}`: records the capture could not hand over.
//! - `series_capped_total`: workloads folded into `workload="_other"`.
//! - `pod_events_total{result}`: findings handed to the Kubernetes Events
//!   sink, by what became of them (sent, not_a_pod, rate_limited,
//!   queue_full, off, failed, forbidden); only while that sink is on.
//! - `output_dropped_lines_total{kind}`: lines `run` dropped because stdout
//!   did not take them (sink::output), by kind (packet, exchange, summary,
//!   other, finding); every kind from the start, once stdout is attached.
//! - `bpf_program_run_time_seconds_total{program}`,
//!   `bpf_program_runs_total{program}`: only while supplied (the kernel
//!   counts them only with `kernel.bpf_stats_enabled=1`).
//!
//! With [`Config::process`] (what `run` serves), also the observer's own
//! cost under the names every Prometheus client library uses, without the
//! prefix, so dashboards and alerts written for them fit:
//! `process_cpu_seconds_total` (user + system) and
//! `process_resident_memory_bytes`, read from /proc/self/stat and
//! /proc/self/statm at each encoding (left out if unreadable).
//!
//! The `workload` label is a human, bounded name, never an id of a cgroup
//! or a flow, chosen from the identity in this order: the Kubernetes pod
//! name (its namespace in `namespace`; empty for everything else); Nomad
//! `job/task`; the container name (a host process's systemd unit is its
//! name); `runtime:shortid` (12 hex); `host` for other host processes; the
//! last component of the cgroup path. Requests without any identity count
//! as `_unknown`. Values are cut at 128 bytes.
//!
//! Bounds: a workload not seen in any event for `grace` (default 10 min)
//! loses all its series; at most `max_workloads` (default 2000) workload
//! series exist, and workloads beyond that are folded into `_other` (each
//! counted once in `series_capped_total`) until they are idle for `grace`.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::output::{Dropped, LineKind};
use crate::{
    diagnose::{ContainerView, Counts, Diagnoser, Finding, FindingKind, LATENCY_LE},
    model::{Container, Event, Kind, bounded::oldest_eighth},
};

/// `Content-Type` of [`Metrics::encode`] (OpenMetrics 1.0 text).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of [`Metrics::encode_prometheus`] (Prometheus text 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Workloads beyond the cap share this `workload` label value.
pub const OTHER: &str = "_other";
/// Requests with no identity at all.
pub const UNKNOWN: &str = "_unknown";

const PREFIX: &str = "imds_observer";
const MAX_LABEL_BYTES: usize = 128;
/// Containers whose counters were last read (the Diagnoser's own cap, one
/// node's worth, is 16,384 containers).
const MAX_SEEN: usize = crate::model::budget::METRICS_SEEN;
const MAX_DROP_REASONS: usize = 256;
const MAX_PROGRAMS: usize = 256;

#[derive(Clone, Debug)]
pub struct Config {
    /// A workload not seen in any event for this long loses its series.
    pub grace: Duration,
    /// Workload series at most (across nodes); later workloads are folded
    /// into `workload="_other"`.
    pub max_workloads: usize,
    /// Also export this process's CPU time and resident memory. Off by
    /// default: they change between two encodings, which tests compare.
    pub process: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { grace: Duration::from_secs(600), max_workloads: 2000, process: false }
    }
}

/// The observer's own cost, as `process_*` metrics show it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

impl ProcessStats {
    /// This process's, now; None if /proc is not readable.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) =
            unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        Self::parse(&stat, &statm, u64::try_from(ticks).ok()?, u64::try_from(page).ok()?)
    }

    /// From the text of /proc/PID/stat and /proc/PID/statm (proc(5)), with
    /// the clock ticks per second and the page size.
    fn parse(stat: &str, statm: &str, ticks_per_second: u64, page_size: u64) -> Option<Self> {
        if ticks_per_second == 0 {
            return None;
        }
        // The command name, in parentheses, may hold spaces and ')': the
        // fields resume after the last ')', at field 3 (state).
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15.
        let tick = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
        let ticks = tick(14)?.checked_add(tick(15)?)?;
        // statm: size, resident, ... in pages.
        let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(Self {
            cpu_seconds: ticks as f64 / ticks_per_second as f64,
            resident_bytes: resident.checked_mul(page_size)?,
        })
    }
}

/// True when the kernel counts run time and runs per BPF program
/// (`sysctl kernel.bpf_stats_enabled=1`).
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// Label values of one workload series: node, workload, namespace.
type Key = (String, String, String);
/// Workload and namespace, from an identity.
type Who = (String, String);

const KINDS: [&str; 3] = ["token", "credentials", "other"];
const VERSIONS: [&str; 2] = ["v1", "v2"];

fn clip(s: &str) -> String {
    if s.len() <= MAX_LABEL_BYTES {
        return s.to_string();
    }
    let mut end = MAX_LABEL_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// The `workload` and `namespace` label values for an identity (see the
/// module doc for the order); None when it names nothing.
pub fn workload_labels(c: &Container) -> Option<(String, String)> {
    who(c, true)
}

fn who(c: &Container, parse_path: bool) -> Option<Who> {
    if let Some(pod) = nonempty(&c.pod) {
        return Some((clip(pod), clip(nonempty(&c.namespace).unwrap_or(""))));
    }
    if let Some(n) = &c.nomad {
        let name = match (nonempty(&n.job), nonempty(&n.task)) {
            (Some(j), Some(t)) => Some(format!("{j}/{t}")),
            (Some(x), None) | (None, Some(x)) => Some(x.to_string()),
            (None, None) => None,
        };
        if let Some(name) = name {
            return Some((clip(&name), String::new()));
        }
    }
    if let Some(name) = nonempty(&c.name) {
        return Some((clip(name.trim_start_matches('/')), String::new()));
    }
    if let (Some(rt), Some(id)) = (nonempty(&c.runtime), nonempty(&c.id)) {
        let short: String = id.chars().take(12).collect();
        return Some((clip(&format!("{rt}:{short}")), String::new()));
    }
    if c.host {
        return Some(("host".into(), String::new()));
    }
    let path = nonempty(&c.cgroup)?;
    if parse_path && c.runtime.is_none() && c.id.is_none() {
        // Only the path is known (e.g. a recording without identities):
        // what the runtime conventions in it say.
        let parsed = Container::from_path(c.cgroup_id.unwrap_or(0), path);
        if let Some(w) = who(&parsed, false) {
            return Some(w);
        }
    }
    match path.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty()) {
        Some(last) => Some((clip(last), String::new())),
        None => Some(("host".into(), String::new())),
    }
}

struct Workload {
    last_seen: SystemTime,
    /// Its containers' counters, summed.
    counts: Counts,
    findings: BTreeSet<FindingKind>,
    forwarding_hops: Option<u8>,
}

impl Workload {
    fn new(ts: SystemTime) -> Self {
        Self {
            last_seen: ts,
            counts: Counts::default(),
            findings: BTreeSet::new(),
            forwarding_hops: None,
        }
    }
}

/// What was last read of one container of the Diagnoser.
struct Seen {
    who: Who,
    counts: Counts,
    last_seen: SystemTime,
}

#[derive(Default)]
struct Node {
    drops: BTreeMap<String, u64>,
    events_lost: u64,
    /// The Diagnoser's unattributed requests, as last read.
    unattributed: Counts,
}

/// What grew from `before` to `now`; all of `now` after a reset (the
/// Diagnoser evicted the container and met it again).
fn growth(before: &Counts, now: &Counts) -> Counts {
    if now.cells().zip(before.cells()).any(|(n, b)| n < b) {
        return *now;
    }
    let mut d = *now;
    for (x, b) in d.cells_mut().zip(before.cells()) {
        *x -= b;
    }
    d
}

pub use crate::capture::ProgramStats as BpfProgramStats;

pub struct Metrics {
    cfg: Config,
    nodes: BTreeMap<std::sync::Arc<str>, Node>,
    workloads: BTreeMap<Key, Workload>,
    /// (node, container key) → what was last read of it.
    seen: HashMap<(String, u64), Seen>,
    /// The last expiry's cutoff: containers idle since before it make no
    /// series, though the Diagnoser may still hold them.
    cutoff: SystemTime,
    /// Workloads folded into `_other`, with when they were last seen.
    folded: HashMap<Key, SystemTime>,
    capped: u64,
    hop_limits: BTreeMap<String, u8>,
    /// name → (run time ns, runs); empty when not supplied.
    bpf: BTreeMap<String, (u64, u64)>,
    /// Pod Events by result; empty while that sink is off.
    pod_events: Vec<(&'static str, u64)>,
    /// stdout's drops, read at each encoding (they grow while the loop
    /// is busy elsewhere).
    output_dropped: Option<std::sync::Arc<Dropped>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Metrics {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            nodes: BTreeMap::new(),
            workloads: BTreeMap::new(),
            seen: HashMap::new(),
            cutoff: UNIX_EPOCH,
            folded: HashMap::new(),
            capped: 0,
            hop_limits: BTreeMap::new(),
            bpf: BTreeMap::new(),
            pod_events: Vec::new(),
            output_dropped: None,
        }
    }

    /// stdout's drop counters, shown as `output_dropped_lines_total`.
    pub fn set_output_dropped(&mut self, dropped: std::sync::Arc<Dropped>) {
        self.output_dropped = Some(dropped);
    }

    /// The node this observer runs on: its node-wide series
    /// (`events_lost_total`) exist from the first scrape, before any event,
    /// so a quiet node is listed too (dashboards take their node list and
    /// the join to `process_*` from them).
    pub fn add_node(&mut self, node: &str) {
        self.nodes.entry(node.into()).or_default();
    }

    /// Workload series held (including `_other` ones).
    #[cfg(test)]
    pub fn workloads(&self) -> usize {
        self.workloads.len()
    }

    /// After the Diagnoser observed `ev`: count node-wide drops and lost
    /// events, and read the counters of the container it touched.
    pub fn observe(&mut self, diag: &Diagnoser, ev: &Event) {
        let node = self.nodes.entry(ev.node.clone()).or_default();
        match ev.kind {
            Kind::LostEvents => node.events_lost += ev.count.unwrap_or(1),
            Kind::Drop if ev.via.is_none() => {
                let reason = ev.reason.as_deref().filter(|r| !r.is_empty()).unwrap_or("unknown");
                let reason =
                    if node.drops.contains_key(reason) || node.drops.len() < MAX_DROP_REASONS {
                        clip(reason)
                    } else {
                        OTHER.to_string()
                    };
                *node.drops.entry(reason).or_default() += 1;
            }
            _ => {}
        }
        if let Some(c) = diag.workload_of(ev).and_then(|key| diag.container(&ev.node, key)) {
            self.read(&c);
        }
        if let Some(now) = diag.unattributed(&ev.node) {
            self.read_unattributed(&ev.node, now, ev.ts);
        }
    }

    /// Add what one container's counters grew by to its workload's series
    /// (moving the series when the container got a new name).
    fn read(&mut self, c: &ContainerView) {
        let node = c.node();
        let who =
            workload_labels(&c.container()).unwrap_or_else(|| (UNKNOWN.to_string(), String::new()));
        let (now, ts) = (c.counts(), c.last_seen());
        if ts < self.cutoff {
            return;
        }
        let id = (node.to_string(), c.cgroup_id());
        let before = match self.seen.get(&id).map(|s| (s.who.clone(), s.counts)) {
            Some((old, counts)) => {
                if old != who {
                    self.rename(node, old, who.clone());
                }
                counts
            }
            None => {
                if self.seen.len() >= MAX_SEEN {
                    let old: Vec<_> =
                        oldest_eighth(self.seen.iter().map(|(k, s)| (k, s.last_seen)))
                            .into_iter()
                            .cloned()
                            .collect();
                    for k in old {
                        self.seen.remove(&k);
                    }
                }
                Counts::default()
            }
        };
        self.seen.insert(id, Seen { who: who.clone(), counts: now, last_seen: ts });
        let key = self.assign(node, who, ts);
        self.add(&key, growth(&before, &now));
    }

    /// Requests the Diagnoser could not attribute count as `_unknown`.
    fn read_unattributed(&mut self, node: &str, now: Counts, ts: SystemTime) {
        let Some(n) = self.nodes.get_mut(node) else { return };
        let grew = growth(&n.unattributed, &now);
        n.unattributed = now;
        if grew != Counts::default() {
            let key = self.assign(node, (UNKNOWN.to_string(), String::new()), ts);
            self.add(&key, grew);
        }
    }

    fn add(&mut self, key: &Key, d: Counts) {
        let w = self.workloads.get_mut(key).expect("assigned");
        for (x, n) in w.counts.cells_mut().zip(d.cells()) {
            *x += n;
        }
    }

    /// Move a workload's counters to its new name (adding to what the new
    /// name already has).
    fn rename(&mut self, node: &str, old: Who, new: Who) {
        let old_key = (node.to_string(), old.0, old.1);
        let Some(w) = self.workloads.remove(&old_key) else { return };
        let new_key = (node.to_string(), new.0, new.1);
        match self.workloads.get_mut(&new_key) {
            Some(n) => {
                for (a, b) in n.counts.cells_mut().zip(w.counts.cells()) {
                    *a += b;
                }
                n.last_seen = n.last_seen.max(w.last_seen);
            }
            None => {
                self.workloads.insert(new_key, w);
            }
        }
    }

    /// The series key for a workload seen at `ts`: its own, or `_other`
    /// beyond the cap. Creates it, and marks it seen.
    fn assign(&mut self, node: &str, who: Who, ts: SystemTime) -> Key {
        let mut key = (node.to_string(), who.0, who.1);
        if !self.workloads.contains_key(&key) {
            let fold = match self.folded.get_mut(&key) {
                Some(t) => {
                    if ts > *t {
                        *t = ts;
                    }
                    true
                }
                None => {
                    let own = self.workloads.keys().filter(|k| k.1 != OTHER).count();
                    if own >= self.cfg.max_workloads {
                        // Bounded memory, not series: forgetting only makes a
                        // workload count in series_capped_total again.
                        if self.folded.len() >= self.cfg.max_workloads.max(1024) * 8 {
                            self.folded.clear();
                        }
                        self.folded.insert(key.clone(), ts);
                        self.capped += 1;
                        true
                    } else {
                        false
                    }
                }
            };
            if fold {
                key = (node.to_string(), OTHER.to_string(), String::new());
            }
        }
        let w = self.workloads.entry(key.clone()).or_insert_with(|| Workload::new(ts));
        if ts > w.last_seen {
            w.last_seen = ts;
        }
        key
    }

    /// The series key of a workload that has one now (its own or
    /// `_other`); None for workloads expired or never seen in events.
    fn lookup(&self, node: &str, who: Who) -> Option<Key> {
        let key = (node.to_string(), who.0, who.1);
        if self.workloads.contains_key(&key) {
            return Some(key);
        }
        if self.folded.contains_key(&key) {
            let other = (node.to_string(), OTHER.to_string(), String::new());
            return self.workloads.contains_key(&other).then_some(other);
        }
        None
    }

    /// Replace the findings and hop-limit gauges: `findings` are every
    /// current finding (`Diagnoser::findings()`), `hop_limits` the hop limit
    /// of each node that has one. Findings of workloads without series
    /// (expired, or never in an event) are left out.
    #[allow(dead_code)] // `run` uses update_from
    pub fn update_findings(&mut self, findings: &[Finding], hop_limits: &[(String, u8)]) {
        self.clear_findings();
        for f in findings {
            self.apply(&f.node, &f.container, [f.kind], f.evidence.forwarding_hops);
        }
        self.hop_limits = hop_limits.iter().cloned().collect();
    }

    /// [`Self::update_findings`] straight from the Diagnoser, without
    /// building whole findings (timelines, summaries): cheap enough to call
    /// once a second and whenever `observe` returned findings.
    pub fn update_from(&mut self, diag: &Diagnoser) {
        self.clear_findings();
        for c in diag.containers() {
            self.read(&c);
            self.apply(c.node(), &c.container(), c.kinds(), c.forwarding_hops());
        }
        self.hop_limits =
            self.nodes.keys().filter_map(|n| Some((n.to_string(), diag.hop_limit(n)?))).collect();
    }

    fn clear_findings(&mut self) {
        for w in self.workloads.values_mut() {
            w.findings.clear();
            w.forwarding_hops = None;
        }
    }

    fn apply(
        &mut self,
        node: &str,
        c: &Container,
        kinds: impl IntoIterator<Item = FindingKind>,
        hops: Option<u8>,
    ) {
        let Some(who) = workload_labels(c) else { return };
        let Some(key) = self.lookup(node, who) else { return };
        let w = self.workloads.get_mut(&key).expect("looked up");
        w.findings.extend(kinds);
        if let Some(h) = hops {
            w.forwarding_hops = Some(w.forwarding_hops.map_or(h, |o| o.max(h)));
        }
    }

    /// Per-program run time (ns) and run count, summed by name. Empty when
    /// the kernel does not count them: the series are then left out.
    pub fn set_bpf_stats(&mut self, stats: Vec<BpfProgramStats>) {
        self.bpf.clear();
        for BpfProgramStats { name, run_time_ns: ns, runs } in stats {
            if self.bpf.len() >= MAX_PROGRAMS && !self.bpf.contains_key(&name) {
                continue;
            }
            let e = self.bpf.entry(clip(&name)).or_default();
            e.0 = e.0.saturating_add(ns);
            e.1 = e.1.saturating_add(runs);
        }
    }

    /// What the Kubernetes Events sink did with the findings it was handed,
    /// by result (its own monotonic counts).
    pub fn set_pod_events(&mut self, by_result: &[(&'static str, u64)]) {
        self.pod_events = by_result.to_vec();
    }

    /// Forget workloads (and what was read of their containers) not seen
    /// for the grace period.
    pub fn expire(&mut self, now: SystemTime) {
        let cutoff = now.checked_sub(self.cfg.grace).unwrap_or(UNIX_EPOCH);
        self.cutoff = self.cutoff.max(cutoff);
        self.workloads.retain(|_, w| w.last_seen >= cutoff);
        self.folded.retain(|_, t| *t >= cutoff);
        self.seen.retain(|_, s| s.last_seen >= cutoff);
    }

    /// OpenMetrics text ([`OPENMETRICS_CONTENT_TYPE`]), ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())
            .expect("writing to a String");
        out
    }

    /// Prometheus text 0.0.4 ([`PROMETHEUS_CONTENT_TYPE`]).
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry())
            .expect("writing to a String");
        out
    }

    fn registry(&self) -> Registry {
        // process_* go unprefixed, as every client library names them.
        let mut r = Registry::default();
        if self.cfg.process {
            if let Some(p) = ProcessStats::read() {
                r.register_collector(Box::new(process_families(p)));
            }
        }
        r.sub_registry_with_prefix(PREFIX).register_collector(Box::new(self.snapshot()));
        r
    }

    fn snapshot(&self) -> Snapshot {
        let wl = |(n, w, ns): &Key| {
            vec![("node", n.clone()), ("workload", w.clone()), ("namespace", ns.clone())]
        };
        let mut requests = Family::counter(
            "requests",
            "HTTP requests to metadata endpoints, retransmissions counted once.",
        );
        let mut lost = Family::counter(
            "replies_lost",
            "Distinct IMDSv2 token replies that reached the host and were dropped by the kernel.",
        );
        let mut suppressed = Family::counter(
            "suppressed",
            "Records of the workload its budget held back (200 a second, 1,000 at once).",
        );
        let mut findings =
            Family::gauge("findings", "1 for each finding kind that holds now for the workload.");
        let mut hops = Family::gauge(
            "forwarding_hops",
            "Forwarding hops between the workload and the host's uplink.",
        );
        let mut throttled = Family::counter(
            "throttled",
            "Replies with 429 or 503: the endpoint turned the request away for its rate.",
        );
        let mut lost_time = Family {
            name: "seconds_lost",
            help: "Seconds clients waited on requests that got no reply (lost or timed out).",
            unit: None,
            ty: MetricType::Counter,
            series: Vec::new(),
        };
        let mut latency = Family {
            name: "exchange_latency",
            help: "Request sent to reply delivered, of answered exchanges, by what was asked.",
            unit: Some(Unit::Seconds),
            ty: MetricType::Histogram,
            series: Vec::new(),
        };
        for (key, w) in &self.workloads {
            for (k, by_version) in w.counts.requests.iter().enumerate() {
                for (v, &n) in by_version.iter().enumerate() {
                    if n > 0 {
                        let mut l = wl(key);
                        l.push(("kind", KINDS[k].into()));
                        l.push(("version", VERSIONS[v].into()));
                        requests.push(l, Value::Counter(n));
                    }
                }
            }
            lost.push(wl(key), Value::Counter(w.counts.replies_lost));
            lost_time.push(wl(key), Value::Seconds(w.counts.waited_us as f64 / 1e6));
            if w.counts.suppressed > 0 {
                suppressed.push(wl(key), Value::Counter(w.counts.suppressed));
            }
            if w.counts.throttled > 0 {
                throttled.push(wl(key), Value::Counter(w.counts.throttled));
            }
            for (k, buckets) in w.counts.latency.iter().enumerate() {
                let count: u64 = buckets.iter().sum();
                if count > 0 {
                    let mut l = wl(key);
                    l.push(("kind", KINDS[k].into()));
                    let sum = w.counts.latency_us[k] as f64 / 1e6;
                    latency.push(l, Value::Histogram { sum, count, buckets: *buckets });
                }
            }
            for kind in &w.findings {
                let mut l = wl(key);
                l.push(("kind", kind.as_str().into()));
                findings.push(l, Value::Gauge(1));
            }
            if let Some(h) = w.forwarding_hops {
                hops.push(wl(key), Value::Gauge(h.into()));
            }
        }
        let mut drops = Family::counter(
            "drops",
            "Packets to or from metadata endpoints the kernel dropped, by reason.",
        );
        let mut events_lost = Family::counter(
            "events_lost",
            "Records the capture could not hand over (ring buffer full).",
        );
        for (node, n) in &self.nodes {
            for (reason, &c) in &n.drops {
                drops.push(
                    vec![("node", node.to_string()), ("reason", reason.clone())],
                    Value::Counter(c),
                );
            }
            events_lost.push(vec![("node", node.to_string())], Value::Counter(n.events_lost));
        }
        let mut hop_limit = Family::gauge(
            "hop_limit",
            "The instance's IMDS hop limit observed on the node (TTL of token replies at the uplink).",
        );
        for (node, &h) in &self.hop_limits {
            hop_limit.push(vec![("node", node.clone())], Value::Gauge(h.into()));
        }
        let mut capped = Family::counter(
            "series_capped",
            "Workloads folded into the workload label _other by the series cap.",
        );
        capped.push(Vec::new(), Value::Counter(self.capped));
        let mut families = vec![
            requests,
            lost,
            lost_time,
            throttled,
            suppressed,
            latency,
            drops,
            findings,
            hop_limit,
            hops,
            events_lost,
            capped,
        ];
        if !self.pod_events.is_empty() {
            let mut pod_events = Family::counter(
                "pod_events",
                "Findings handed to the Kubernetes Events sink, by what became of them.",
            );
            for &(result, n) in &self.pod_events {
                pod_events.push(vec![("result", result.to_string())], Value::Counter(n));
            }
            families.push(pod_events);
        }
        if let Some(d) = &self.output_dropped {
            let mut dropped = Family::counter(
                "output_dropped_lines",
                "Lines not written to stdout because it did not take them (a stalled log pipe), by kind.",
            );
            for kind in LineKind::ALL {
                dropped
                    .push(vec![("kind", kind.as_str().to_string())], Value::Counter(d.get(kind)));
            }
            families.push(dropped);
        }
        if !self.bpf.is_empty() {
            let mut time = Family::counter(
                "bpf_program_run_time",
                "Time the kernel spent running the BPF program.",
            );
            time.unit = Some(Unit::Seconds);
            let mut runs =
                Family::counter("bpf_program_runs", "Times the kernel ran the BPF program.");
            for (name, &(ns, n)) in &self.bpf {
                time.push(vec![("program", name.clone())], Value::Seconds(ns as f64 / 1e9));
                runs.push(vec![("program", name.clone())], Value::Counter(n));
            }
            families.push(time);
            families.push(runs);
        }
        Snapshot(families)
    }
}

fn process_families(p: ProcessStats) -> Snapshot {
    let mut cpu = Family::counter("process_cpu", "Total user and system CPU time spent.");
    cpu.unit = Some(Unit::Seconds);
    cpu.push(Vec::new(), Value::Seconds(p.cpu_seconds));
    let mut rss = Family::gauge("process_resident_memory", "Resident memory size.");
    rss.unit = Some(Unit::Bytes);
    rss.push(Vec::new(), Value::Gauge(i64::try_from(p.resident_bytes).unwrap_or(i64::MAX)));
    Snapshot(vec![cpu, rss])
}

#[derive(Debug)]
enum Value {
    Counter(u64),
    Seconds(f64),
    Gauge(i64),
    /// Per bucket of `LATENCY_LE` (not cumulative), the last one +Inf.
    Histogram {
        sum: f64,
        count: u64,
        buckets: [u64; LATENCY_LE.len() + 1],
    },
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    ty: MetricType,
    series: Vec<(Vec<(&'static str, String)>, Value)>,
}

impl Family {
    fn counter(name: &'static str, help: &'static str) -> Self {
        Self { name, help, unit: None, ty: MetricType::Counter, series: Vec::new() }
    }

    fn gauge(name: &'static str, help: &'static str) -> Self {
        Self { name, help, unit: None, ty: MetricType::Gauge, series: Vec::new() }
    }

    fn push(&mut self, labels: Vec<(&'static str, String)>, v: Value) {
        self.series.push((labels, v));
    }
}

/// What one scrape shows, in order.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut me = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), f.ty)?;
            match f.series.as_slice() {
                // A family of one series without labels.
                [(labels, v)] if labels.is_empty() => encode_value(v, me)?,
                series => {
                    for (labels, v) in series {
                        encode_value(v, me.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(
    v: &Value,
    mut e: prometheus_client::encoding::MetricEncoder,
) -> Result<(), std::fmt::Error> {
    match *v {
        Value::Counter(n) => ConstCounter::new(n).encode(e),
        Value::Seconds(s) => ConstCounter::new(s).encode(e),
        Value::Gauge(g) => ConstGauge::new(g).encode(e),
        Value::Histogram { sum, count, ref buckets } => {
            let edges = LATENCY_LE.iter().copied().chain([f64::INFINITY]);
            let b: Vec<(f64, u64)> = edges.zip(buckets.iter().copied()).collect();
            e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &b, None)
        }
    }
}

/// `run`'s metrics, as the HTTP server shows them: read from the
/// Diagnoser after each event and each second.
pub struct MetricsSink(pub std::sync::Arc<std::sync::Mutex<Metrics>>);

impl MetricsSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Metrics> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl super::Sink for MetricsSink {
    fn event(&mut self, diag: &Diagnoser, ev: &Event, findings: &[Finding]) -> std::io::Result<()> {
        let mut m = self.lock();
        m.observe(diag, ev);
        if !findings.is_empty() {
            m.update_from(diag);
        }
        Ok(())
    }
    fn tick(&mut self, diag: &Diagnoser, now: SystemTime, _: &[Finding]) -> std::io::Result<()> {
        let mut m = self.lock();
        m.update_from(diag);
        m.expire(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        diagnose::{
            Evidence, FindingTag,
            tests::{Ctr, at, hop_limit_failure, time},
        },
        identity::Nomad,
    };

    const ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd";

    /// The identity the pipeline puts on every event of a Kubernetes pod's
    /// container (after the runtime API named it).
    fn pod(cg: u64, pod: &str, ns: &str) -> Container {
        Container {
            id: Some(ID.into()),
            name: Some("app".into()),
            runtime: Some("containerd".into()),
            pod: Some(pod.into()),
            namespace: Some(ns.into()),
            pod_uid: Some("6b1f9a52-0c5e-4c1e-9e0e-2f4b7f6a1d11".into()),
            cgroup: Some(format!(
                "/kubepods.slice/kubepods-pod6b1f.slice/cri-containerd-{ID}.scope"
            )),
            cgroup_id: Some(cg),
            ..Default::default()
        }
    }

    /// Put `c` on every event of cgroup `cg`, as the pipeline does.
    fn with_identity(mut events: Vec<Event>, cg: u64, c: &Container) -> Vec<Event> {
        for e in &mut events {
            if e.cgroup_id == Some(cg) {
                e.container = Some(c.clone().into());
                e.cgroup = c.cgroup.clone();
            }
        }
        events
    }

    /// One event, as `run` hands it on: to the Diagnoser, then to metrics.
    fn fed(m: &mut Metrics, d: &mut Diagnoser, e: &Event) {
        d.observe(e);
        m.observe(d, e);
    }

    fn feed_both(m: &mut Metrics, d: &mut Diagnoser, events: &[Event]) {
        for e in events {
            fed(m, d, e);
        }
        m.update_from(d);
    }

    #[track_caller]
    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "missing line {line:?} in:\n{text}");
    }

    #[track_caller]
    fn lacks(text: &str, needle: &str) {
        assert!(!text.contains(needle), "unexpected {needle:?} in:\n{text}");
    }

    /// Sample lines of one family.
    fn samples<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        text.lines().filter(|l| !l.starts_with('#') && l.starts_with(family)).collect()
    }

    fn request(
        ms: u64,
        node: &str,
        flow: u64,
        seq: u32,
        who: &Container,
        method: &str,
        path: &str,
    ) -> Event {
        let mut e = Event::new(Kind::Request, crate::diagnose::tests::time(ms), node.into());
        e.flow = Some(flow);
        e.cgroup_id = who.cgroup_id;
        e.cgroup = who.cgroup.clone();
        e.container = Some(who.clone().into());
        e.seq = Some(seq);
        e.ack = Some(1);
        e.method = Some(method.into());
        e.path = Some(path.into());
        e.token_header = Some(false);
        e
    }

    fn named(cg: u64, name: &str) -> Container {
        Container {
            id: Some(format!("{cg:064x}")),
            name: Some(name.into()),
            runtime: Some("docker".into()),
            cgroup: Some(format!("/system.slice/docker-{cg:064x}.scope")),
            cgroup_id: Some(cg),
            ..Default::default()
        }
    }

    /// A latency counts in the first bucket whose edge it does not pass;
    /// past 10 s, only in +Inf.
    #[test]
    fn latency_buckets_are_upper_edges() {
        use crate::diagnose::ReqKind;
        let mut c = Counts::default();
        for ms in [0.5, 1.0, 1.5, 999.0, 20_000.0] {
            c.answered(ReqKind::Token, Duration::from_secs_f64(ms / 1e3));
        }
        let t = c.latency[ReqKind::Token as usize];
        assert_eq!((t[0], t[1], t[9], t[LATENCY_LE.len()]), (2, 1, 1, 1));
        assert_eq!(t.iter().sum::<u64>(), 5);
        assert_eq!(c.latency_us[ReqKind::Token as usize], 21_002_000);
        // Its growth is what metrics add: a second reading adds the new one.
        let before = c;
        c.answered(ReqKind::Other, Duration::from_millis(3));
        let d = growth(&before, &c);
        assert_eq!(d.latency[ReqKind::Other as usize][2], 1);
        assert_eq!(d.cells().sum::<u64>(), 1 + 3_000);
    }

    #[test]
    fn throttled_replies_are_counted_per_workload() {
        use crate::diagnose::tests::Ctr;
        let who = pod(4242, "quotes-5d8f7-abcde", "shop");
        let mut a = Ctr::podman().conn(1);
        let mut v = a.connect(0);
        for (i, status) in [429, 200, 503].into_iter().enumerate() {
            let t = 10 + i as u64 * 100;
            v.extend(a.request(t, "GET", "/latest/meta-data/instance-id", true));
            v.extend(a.respond(t + 2, status, 64));
        }
        let events = with_identity(v, 4242, &who);
        let (mut m, mut d) = (Metrics::default(), Diagnoser::default());
        feed_both(&mut m, &mut d, &events);
        let text = m.encode();
        let w = r#"node="node-a",workload="quotes-5d8f7-abcde",namespace="shop""#;
        has(&text, &format!("imds_observer_throttled_total{{{w}}} 2"));
        has(&text, "# TYPE imds_observer_throttled counter");
    }

    #[test]
    fn hop_limit_failure_of_a_pod() {
        let who = pod(4242, "api-7f9c8d-x2x4q", "payments");
        let events = with_identity(hop_limit_failure(), 4242, &who);
        let (mut m, mut d) = (Metrics::default(), Diagnoser::default());
        feed_both(&mut m, &mut d, &events);
        let text = m.encode();
        let w = r#"node="node-a",workload="api-7f9c8d-x2x4q",namespace="payments""#;
        // One token PUT (v2 by definition), two tokenless credential GETs.
        assert_eq!(
            samples(&text, "imds_observer_requests_total"),
            vec![
                format!(r#"imds_observer_requests_total{{{w},kind="token",version="v2"}} 1"#),
                format!(r#"imds_observer_requests_total{{{w},kind="credentials",version="v1"}} 2"#),
            ]
        );
        // The token reply and its two retransmissions died: one lost reply,
        // three kernel drops (the ICMP is not a drop).
        has(&text, &format!("imds_observer_replies_lost_total{{{w}}} 1"));
        assert_eq!(
            samples(&text, "imds_observer_drops_total"),
            vec![r#"imds_observer_drops_total{node="node-a",reason="IP_INHDR"} 3"#]
        );
        assert_eq!(
            samples(&text, "imds_observer_findings"),
            vec![
                format!(r#"imds_observer_findings{{{w},kind="hop_limit_exceeded"}} 1"#),
                format!(r#"imds_observer_findings{{{w},kind="imdsv1_fallback"}} 1"#),
            ]
        );
        has(&text, r#"imds_observer_hop_limit{node="node-a"} 1"#);
        has(&text, &format!("imds_observer_forwarding_hops{{{w}}} 1"));
        // The two GETs answered in 1 ms each; the lost PUT has no latency.
        let l = format!(r#"{w},kind="credentials""#);
        let h = "imds_observer_exchange_latency_seconds";
        has(&text, &format!(r#"{h}_bucket{{le="0.001",{l}}} 2"#));
        has(&text, &format!(r#"{h}_bucket{{le="+Inf",{l}}} 2"#));
        has(&text, &format!("{h}_count{{{l}}} 2"));
        has(&text, &format!("{h}_sum{{{l}}} 0.002"));
        has(&text, &format!("# TYPE {h} histogram"));
        // The client waited on its lost PUT (1 ms) until it gave up on it
        // and closed (1,001 ms).
        has(&text, &format!("imds_observer_seconds_lost_total{{{w}}} 1.0"));
        lacks(&text, r#"kind="token",le="#);
        has(&text, r#"imds_observer_events_lost_total{node="node-a"} 0"#);
        has(&text, "imds_observer_series_capped_total 0");
        has(&text, "# TYPE imds_observer_requests counter");
        has(&text, "# TYPE imds_observer_findings gauge");
        assert!(text.ends_with("# EOF\n"));
        // Label values are names: never a cgroup id, a container id or a flow.
        lacks(&text, "4242");
        lacks(&text, &ID[..12]);
        lacks(&text, "flow");
        lacks(&text, "bpf_program");

        // The same from whole findings.
        let (mut m2, mut d2) = (Metrics::default(), Diagnoser::default());
        for e in &events {
            fed(&mut m2, &mut d2, e);
        }
        m2.update_findings(&d.findings(), &[("node-a".into(), 1)]);
        assert_eq!(m2.encode(), text);

        // Prometheus text 0.0.4 carries the same samples.
        let prom = m.encode_prometheus();
        has(&prom, &format!("imds_observer_replies_lost_total{{{w}}} 1"));
        has(&prom, "# TYPE imds_observer_requests_total counter");
        lacks(&prom, "# EOF");
    }

    #[test]
    fn lost_reply_counted_when_the_drop_comes_first() {
        let mut events = hop_limit_failure();
        // Swap the first token reply's host_ingress and drop.
        let hi =
            events.iter().position(|e| e.kind == Kind::HostIngress && e.status.is_some()).unwrap();
        assert_eq!(events[hi + 1].kind, Kind::Drop);
        events.swap(hi, hi + 1);
        let mut m = Metrics::default();
        let mut d = Diagnoser::default();
        events.iter().for_each(|e| fed(&mut m, &mut d, e));
        let text = m.encode();
        has(
            &text,
            r#"imds_observer_replies_lost_total{node="node-a",workload="podman:3f2a9c1b7d4e",namespace=""} 1"#,
        );
    }

    #[test]
    fn a_name_learned_later_carries_the_counters() {
        // The first packets go out before the runtime API answered: the
        // container is "podman:<id>" at first, "checkout-api" after.
        let events = hop_limit_failure();
        let n = events.len();
        let named = Container { name: Some("checkout-api".into()), ..Default::default() };
        let mut m = Metrics::default();
        let mut d = Diagnoser::default();
        for (i, e) in events.iter().enumerate() {
            let mut e = e.clone();
            if let (true, Some(cg), Some(path)) = (i > n / 2, e.cgroup_id, e.cgroup.clone()) {
                let mut c = Container::from_path(cg, &path);
                c.name = named.name.clone();
                e.container = Some(c.into());
            }
            fed(&mut m, &mut d, &e);
        }
        let text = m.encode();
        has(
            &text,
            r#"imds_observer_replies_lost_total{node="node-a",workload="checkout-api",namespace=""} 1"#,
        );
        lacks(&text, "podman:3f2a9c1b7d4e");
    }

    #[test]
    fn host_processes_are_named_by_unit_or_host() {
        // A systemd service on the host network: its unit is its name.
        let mut a = Ctr::host("node-a").conn(1);
        let mut v = a.connect(0);
        v.extend(a.put_token(1));
        v.extend(a.respond(2, 200, 1));
        v.extend(a.request(3, "GET", "/latest/meta-data/instance-id", true));
        v.extend(a.respond(4, 200, 1));
        // A process in the root cgroup: only "host" names it.
        let mut root = Ctr::new("node-a", 1, "/", "198.18.0.2", 0).conn(2);
        v.extend(root.connect(10));
        v.extend(root.request(11, "GET", "/latest/meta-data/iam/security-credentials/", false));
        v.extend(root.respond(12, 200, 1));
        let (mut m, mut d) = (Metrics::default(), Diagnoser::default());
        feed_both(&mut m, &mut d, &v);
        let text = m.encode();
        let unit = r#"node="node-a",workload="imds-agent.service",namespace="""#;
        has(
            &text,
            &format!(r#"imds_observer_requests_total{{{unit},kind="token",version="v2"}} 1"#),
        );
        has(
            &text,
            &format!(r#"imds_observer_requests_total{{{unit},kind="other",version="v2"}} 1"#),
        );
        has(&text, &format!(r#"imds_observer_findings{{{unit},kind="healthy"}} 1"#));
        has(&text, &format!("imds_observer_forwarding_hops{{{unit}}} 0"));
        has(&text, &format!("imds_observer_replies_lost_total{{{unit}}} 0"));
        let host = r#"node="node-a",workload="host",namespace="""#;
        has(
            &text,
            &format!(r#"imds_observer_requests_total{{{host},kind="credentials",version="v1"}} 1"#),
        );
        has(&text, r#"imds_observer_hop_limit{node="node-a"} 1"#);
        assert!(samples(&text, "imds_observer_drops_total").is_empty());
    }

    #[test]
    fn retransmitted_requests_count_once() {
        let who = named(9, "web");
        let put = request(0, "node-a", 5, 100, &who, "PUT", "/latest/api/token");
        let mut again = put.clone();
        again.ts = crate::diagnose::tests::time(200);
        let get = request(
            300,
            "node-a",
            5,
            156,
            &who,
            "GET",
            "/latest/meta-data/iam/security-credentials/role?x=1",
        );
        let mut with_token = get.clone();
        with_token.seq = Some(300);
        with_token.token_header = Some(true);
        // Another flow reusing the same seq is another request.
        let mut other_flow = get.clone();
        other_flow.flow = Some(6);
        // A packet of the request that does not start it (no method).
        let mut cont = get.clone();
        cont.method = None;
        cont.path = None;
        cont.seq = Some(400);
        let mut m = Metrics::default();
        let mut d = Diagnoser::default();
        for e in [&put, &again, &get, &get, &with_token, &other_flow, &cont] {
            fed(&mut m, &mut d, e);
        }
        let text = m.encode();
        let w = r#"node="node-a",workload="web",namespace="""#;
        assert_eq!(
            samples(&text, "imds_observer_requests_total"),
            vec![
                format!(r#"imds_observer_requests_total{{{w},kind="token",version="v2"}} 1"#),
                format!(r#"imds_observer_requests_total{{{w},kind="credentials",version="v1"}} 2"#),
                format!(r#"imds_observer_requests_total{{{w},kind="credentials",version="v2"}} 1"#),
            ]
        );
    }

    #[test]
    fn two_workloads_and_a_finding_that_changes_kind() {
        let a = pod(10, "api-0", "payments");
        let mut b = Container {
            runtime: Some("docker".into()),
            id: Some(ID.replace('3', "4")),
            name: Some("web-task-6c1d".into()),
            nomad: Some(Nomad {
                alloc: Some("6c1d2e3f-aaaa-bbbb-cccc-000000000000".into()),
                job: Some("web".into()),
                group: Some("g".into()),
                task: Some("frontend".into()),
                ..Default::default()
            }),
            cgroup_id: Some(11),
            ..Default::default()
        };
        b.cgroup = Some(format!("/nomad.slice/{}.scope", b.id.as_deref().unwrap()));
        let mut m = Metrics::default();
        let mut d = Diagnoser::default();
        fed(&mut m, &mut d, &request(0, "node-a", 1, 10, &a, "GET", "/latest/meta-data/"));
        fed(&mut m, &mut d, &request(0, "node-a", 2, 10, &b, "GET", "/latest/meta-data/"));
        let finding = |c: &Container, kind: FindingKind, hops: u8| Finding {
            tag: FindingTag::Finding,
            ts: at(0),
            node: "node-a".into(),
            kind,
            container: c.clone(),
            summary: String::new(),
            evidence: Evidence { forwarding_hops: Some(hops), ..Default::default() },
            timeline: Vec::new(),
            fix: None,
            node_info: None,
        };
        m.update_findings(
            &[finding(&a, FindingKind::AtRisk, 2), finding(&b, FindingKind::Healthy, 1)],
            &[("node-a".into(), 1)],
        );
        let text = m.encode();
        let wa = r#"node="node-a",workload="api-0",namespace="payments""#;
        let wb = r#"node="node-a",workload="web/frontend",namespace="""#;
        assert_eq!(
            samples(&text, "imds_observer_findings"),
            vec![
                format!(r#"imds_observer_findings{{{wa},kind="at_risk"}} 1"#),
                format!(r#"imds_observer_findings{{{wb},kind="healthy"}} 1"#),
            ]
        );
        has(&text, &format!("imds_observer_forwarding_hops{{{wa}}} 2"));
        has(&text, &format!("imds_observer_forwarding_hops{{{wb}}} 1"));
        lacks(&text, "6c1d2e3f");

        // a now fails the hop limit; b has no finding any more; the hop
        // limit is no longer known.
        m.update_findings(&[finding(&a, FindingKind::HopLimitExceeded, 2)], &[]);
        let text = m.encode();
        assert_eq!(
            samples(&text, "imds_observer_findings"),
            vec![format!(r#"imds_observer_findings{{{wa},kind="hop_limit_exceeded"}} 1"#)]
        );
        assert_eq!(
            samples(&text, "imds_observer_forwarding_hops"),
            vec![format!("imds_observer_forwarding_hops{{{wa}}} 2")]
        );
        assert!(samples(&text, "imds_observer_hop_limit").is_empty());
        // Findings of containers never seen in events make no series.
        m.update_findings(&[finding(&named(99, "ghost"), FindingKind::Unreachable, 1)], &[]);
        lacks(&m.encode(), "ghost");
    }

    #[test]
    fn series_of_gone_workloads_expire_after_the_grace_period() {
        let who = pod(4242, "api-7f9c8d-x2x4q", "payments");
        let events = with_identity(hop_limit_failure(), 4242, &who);
        let (mut m, mut d) = (
            Metrics::new(Config { grace: Duration::from_secs(300), ..Default::default() }),
            Diagnoser::default(),
        );
        feed_both(&mut m, &mut d, &events);
        let mut b = Ctr::podman();
        b.cg = 77;
        b.path = format!("/libpod_parent/libpod-{}", ID.replace('3', "5"));
        let mut c = b.conn(40);
        let later = c.connect(200_000).into_iter().chain(c.request(
            200_001,
            "GET",
            "/latest/meta-data/",
            true,
        ));
        later.for_each(|e| fed(&mut m, &mut d, &e));
        assert_eq!(m.workloads(), 2);

        m.expire(time(1_010) + Duration::from_secs(299));
        assert_eq!(m.workloads(), 2);
        m.expire(time(1_010) + Duration::from_secs(301));
        assert_eq!(m.workloads(), 1, "the pod's last event was at 1010 ms");
        // The findings the Diagnoser still holds do not bring it back.
        m.update_from(&d);
        let text = m.encode();
        lacks(&text, "api-7f9c8d");
        has(
            &text,
            r#"imds_observer_requests_total{node="node-a",workload="podman:5f2a9c1b7d4e",namespace="",kind="other",version="v2"} 1"#,
        );
        // Node counters stay.
        has(&text, r#"imds_observer_drops_total{node="node-a",reason="IP_INHDR"} 3"#);
        has(&text, r#"imds_observer_hop_limit{node="node-a"} 1"#);

        // It comes back (from zero) when it talks again.
        let mut again = request(400_000, "node-a", 900, 1, &who, "GET", "/latest/meta-data/");
        again.token_header = Some(true);
        fed(&mut m, &mut d, &again);
        has(
            &m.encode(),
            r#"imds_observer_requests_total{node="node-a",workload="api-7f9c8d-x2x4q",namespace="payments",kind="other",version="v2"} 1"#,
        );

        m.expire(time(400_000) + Duration::from_secs(301));
        assert_eq!(m.workloads(), 0);
        assert!(samples(&m.encode(), "imds_observer_requests_total").is_empty());
    }

    #[test]
    fn workloads_beyond_the_cap_fold_into_other() {
        let mut m = Metrics::new(Config { max_workloads: 2, ..Default::default() });
        let mut d = Diagnoser::default();
        let names = ["a", "b", "c", "d"];
        for (i, n) in names.iter().enumerate() {
            let who = named(i as u64 + 1, n);
            fed(
                &mut m,
                &mut d,
                &request(i as u64, "node-a", i as u64 + 1, 7, &who, "GET", "/latest/meta-data/"),
            );
        }
        // d again, on a new connection: still folded, not counted again.
        fed(
            &mut m,
            &mut d,
            &request(10, "node-a", 50, 7, &named(4, "d"), "GET", "/latest/meta-data/"),
        );
        m.update_findings(
            &[Finding {
                tag: FindingTag::Finding,
                ts: at(10),
                node: "node-a".into(),
                kind: FindingKind::Imdsv1Fallback,
                container: named(3, "c"),
                summary: String::new(),
                evidence: Evidence::default(),
                timeline: Vec::new(),
                fix: None,
                node_info: None,
            }],
            &[],
        );
        let text = m.encode();
        let req = |w: &str, n: u64| {
            format!(
                r#"imds_observer_requests_total{{node="node-a",workload="{w}",namespace="",kind="other",version="v1"}} {n}"#
            )
        };
        assert_eq!(
            samples(&text, "imds_observer_requests_total"),
            vec![req("_other", 3), req("a", 1), req("b", 1)]
        );
        has(&text, "imds_observer_series_capped_total 2");
        has(
            &text,
            r#"imds_observer_findings{node="node-a",workload="_other",namespace="",kind="imdsv1_fallback"} 1"#,
        );
        lacks(&text, r#"workload="c""#);
        assert_eq!(m.workloads(), 3);

        // Once a and b are gone, a new workload gets its own series again.
        m.expire(time(0) + Duration::from_secs(601));
        assert_eq!(m.workloads(), 0);
        fed(
            &mut m,
            &mut d,
            &request(700_000, "node-a", 60, 7, &named(5, "e"), "GET", "/latest/meta-data/"),
        );
        has(&m.encode(), &req("e", 1));
    }

    /// Busy until this process has used at least one clock tick of CPU
    /// (a fresh test process may not have), at most 2 s.
    fn spend_cpu() {
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while ProcessStats::read().is_some_and(|p| p.cpu_seconds == 0.0)
            && t0.elapsed() < Duration::from_secs(2)
        {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    }

    #[test]
    fn process_stats_from_proc() {
        // A command name with a space and a ')' in it; utime 250 and stime
        // 130 ticks (fields 14 and 15), 3,000 resident pages.
        let stat = "4242 (imds (obs) er) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 130 0 0 \
                    20 0 9 0 1234 567890 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        let statm = "12000 3000 1500 800 0 5000 0\n";
        assert_eq!(
            ProcessStats::parse(stat, statm, 100, 4096),
            Some(ProcessStats { cpu_seconds: 3.8, resident_bytes: 3000 * 4096 })
        );
        assert_eq!(ProcessStats::parse(stat, statm, 0, 4096), None);
        assert_eq!(ProcessStats::parse("4242 (x) S 1 2", statm, 100, 4096), None, "cut short");
        assert_eq!(ProcessStats::parse(stat, "", 100, 4096), None);

        // This test's own process: some CPU spent, some memory resident.
        spend_cpu();
        let me = ProcessStats::read().expect("/proc/self is readable");
        assert!(me.cpu_seconds > 0.0 && me.resident_bytes > 1 << 20, "{me:?}");
    }

    #[test]
    fn a_quiet_node_has_its_series_from_the_start() {
        let mut m = Metrics::default();
        m.add_node("node-a");
        let text = m.encode();
        assert_eq!(
            samples(&text, "imds_observer_events_lost_total"),
            vec![r#"imds_observer_events_lost_total{node="node-a"} 0"#]
        );
        assert!(samples(&text, "imds_observer_requests_total").is_empty());
        assert!(samples(&text, "imds_observer_drops_total").is_empty());
    }

    #[test]
    fn process_metrics_only_when_configured_and_unprefixed() {
        let off = Metrics::default().encode();
        lacks(&off, "process_");
        let m = Metrics::new(Config { process: true, ..Default::default() });
        spend_cpu();
        let text = m.encode();
        has(&text, "# TYPE process_cpu_seconds counter");
        has(&text, "# UNIT process_cpu_seconds seconds");
        has(&text, "# TYPE process_resident_memory_bytes gauge");
        has(&text, "# UNIT process_resident_memory_bytes bytes");
        let value = |t: &str, name: &str| -> f64 {
            let line = t
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in:\n{t}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value(&text, "process_cpu_seconds_total") > 0.0);
        assert!(value(&text, "process_resident_memory_bytes") >= (1 << 20) as f64);
        // The observer's own families keep their prefix.
        has(&text, "imds_observer_series_capped_total 0");
        assert!(text.ends_with("# EOF\n"));
        let prom = m.encode_prometheus();
        has(&prom, "# TYPE process_cpu_seconds_total counter");
        assert!(value(&prom, "process_resident_memory_bytes") >= (1 << 20) as f64);
    }

    #[test]
    fn pod_events_by_result_only_while_the_sink_is_on() {
        let mut m = Metrics::default();
        lacks(&m.encode(), "pod_events");
        m.set_pod_events(&[("sent", 3), ("rate_limited", 0), ("forbidden", 1)]);
        let text = m.encode();
        has(&text, "# TYPE imds_observer_pod_events counter");
        has(&text, r#"imds_observer_pod_events_total{result="sent"} 3"#);
        has(&text, r#"imds_observer_pod_events_total{result="rate_limited"} 0"#);
        has(&text, r#"imds_observer_pod_events_total{result="forbidden"} 1"#);
    }

    #[test]
    fn output_drops_by_kind_once_stdout_is_attached() {
        let mut m = Metrics::default();
        lacks(&m.encode(), "output_dropped");
        let dropped = std::sync::Arc::new(Dropped::default());
        m.set_output_dropped(dropped.clone());
        has(&m.encode(), r#"imds_observer_output_dropped_lines_total{kind="finding"} 0"#);
        dropped.add(LineKind::Exchange, 40);
        dropped.add(LineKind::Packet, 2);
        let text = m.encode();
        has(&text, "# TYPE imds_observer_output_dropped_lines counter");
        has(&text, r#"imds_observer_output_dropped_lines_total{kind="exchange"} 40"#);
        has(&text, r#"imds_observer_output_dropped_lines_total{kind="packet"} 2"#);
        has(&text, r#"imds_observer_output_dropped_lines_total{kind="summary"} 0"#);
    }

    #[test]
    fn events_lost_and_bpf_stats() {
        let mut m = Metrics::default();
        let mut d = Diagnoser::default();
        let mut ev = Event::new(Kind::LostEvents, crate::diagnose::tests::time(0), "node-a".into());
        ev.count = Some(17);
        fed(&mut m, &mut d, &ev);
        ev.count = Some(3);
        fed(&mut m, &mut d, &ev);
        let text = m.encode();
        has(&text, r#"imds_observer_events_lost_total{node="node-a"} 20"#);
        lacks(&text, "bpf_program");

        let stats = |name: &str, run_time_ns, runs| BpfProgramStats {
            name: name.into(),
            run_time_ns,
            runs,
        };
        m.set_bpf_stats(vec![
            stats("imds_cgroup_egress", 1_500_000_000, 42),
            stats("imds_tc", 250_000, 3),
            // The same program attached twice: one series.
            stats("imds_tc", 250_000, 4),
        ]);
        let text = m.encode();
        has(&text, "# TYPE imds_observer_bpf_program_run_time_seconds counter");
        has(&text, "# UNIT imds_observer_bpf_program_run_time_seconds seconds");
        has(
            &text,
            r#"imds_observer_bpf_program_run_time_seconds_total{program="imds_cgroup_egress"} 1.5"#,
        );
        has(&text, r#"imds_observer_bpf_program_run_time_seconds_total{program="imds_tc"} 0.0005"#);
        has(&text, r#"imds_observer_bpf_program_runs_total{program="imds_cgroup_egress"} 42"#);
        has(&text, r#"imds_observer_bpf_program_runs_total{program="imds_tc"} 7"#);
        m.set_bpf_stats(Vec::new());
        lacks(&m.encode(), "bpf_program");
    }

    #[test]
    fn requests_without_identity_and_odd_names() {
        let mut m = Metrics::default();
        let mut d = Diagnoser::default();
        let mut anon = Event::new(Kind::Request, crate::diagnose::tests::time(0), "node-a".into());
        anon.method = Some("GET".into());
        anon.path = Some("/computeMetadata/v1/".into());
        fed(&mut m, &mut d, &anon);
        // A reply without a flow or identity attributes to nothing.
        fed(
            &mut m,
            &mut d,
            &Event::new(Kind::Reply, crate::diagnose::tests::time(1), "node-a".into()),
        );
        let long = "x".repeat(300);
        fed(&mut m, &mut d, &request(2, "node-a", 1, 1, &named(1, "we\"ird\\name\n"), "GET", "/"));
        fed(&mut m, &mut d, &request(3, "node-a", 2, 1, &named(2, &long), "GET", "/"));
        let text = m.encode();
        has(
            &text,
            r#"imds_observer_requests_total{node="node-a",workload="_unknown",namespace="",kind="other",version="v1"} 1"#,
        );
        has(
            &text,
            r#"imds_observer_requests_total{node="node-a",workload="we\"ird\\name\n",namespace="",kind="other",version="v1"} 1"#,
        );
        has(
            &text,
            &format!(
                r#"imds_observer_requests_total{{node="node-a",workload="{}",namespace="",kind="other",version="v1"}} 1"#,
                &long[..128]
            ),
        );
        assert_eq!(m.workloads(), 3);
    }

    #[test]
    fn workload_label_order() {
        let l = |c: Container| workload_labels(&c).map(|(w, ns)| format!("{ns}|{w}"));
        let base = Container {
            id: Some(ID.into()),
            runtime: Some("containerd".into()),
            cgroup: Some("/kubepods/besteffort/podx/abc".into()),
            cgroup_id: Some(9),
            ..Default::default()
        };
        assert_eq!(l(pod(1, "api-0", "prod")), Some("prod|api-0".into()));
        let nomad = |job: Option<&str>, task: Option<&str>| Container {
            nomad: Some(Nomad {
                alloc: Some("uuid".into()),
                job: job.map(Into::into),
                task: task.map(Into::into),
                group: None,
                ..Default::default()
            }),
            name: Some("name".into()),
            ..base.clone()
        };
        assert_eq!(l(nomad(Some("web"), Some("fe"))), Some("|web/fe".into()));
        assert_eq!(l(nomad(None, Some("fe"))), Some("|fe".into()));
        assert_eq!(l(nomad(None, None)), Some("|name".into()), "an alloc id alone is no name");
        assert_eq!(
            l(Container { name: Some("/nginx".into()), ..base.clone() }),
            Some("|nginx".into())
        );
        assert_eq!(l(base.clone()), Some("|containerd:3f2a9c1b7d4e".into()));
        assert_eq!(
            l(Container { host: true, cgroup: Some("/user.slice".into()), ..Default::default() }),
            Some("|host".into())
        );
        // Only a path: what it says, else its last component.
        let path = |p: &str| Container {
            cgroup: Some(p.into()),
            cgroup_id: Some(5),
            ..Default::default()
        };
        assert_eq!(
            l(path(&format!("/libpod_parent/libpod-{ID}"))),
            Some("|podman:3f2a9c1b7d4e".into())
        );
        assert_eq!(l(path("/system.slice/kubelet.service")), Some("|kubelet.service".into()));
        assert_eq!(l(path("/")), Some("|host".into()));
        assert_eq!(l(path("/lab/client-a")), Some("|client-a".into()));
        assert_eq!(
            l(Container { cgroup_id: Some(5), ..Default::default() }),
            None,
            "never a cgroup id"
        );
    }

    #[test]
    fn what_is_read_is_bounded_and_expires() {
        let mut m = Metrics::new(Config { grace: Duration::from_secs(60), ..Default::default() });
        let mut d = Diagnoser::default();
        // More containers than MAX_SEEN, over several nodes (the Diagnoser
        // holds 16,384 per node).
        for i in 0..(MAX_SEEN as u64 + 10) {
            let node = format!("node-{}", i % 5);
            fed(&mut m, &mut d, &request(i / 1000, &node, i, 1, &named(i + 1, "busy"), "GET", "/"));
        }
        assert!(m.seen.len() <= MAX_SEEN);
        m.expire(time(100) + Duration::from_secs(61));
        assert!(m.seen.is_empty());
        assert_eq!(m.workloads(), 0);
    }
}
