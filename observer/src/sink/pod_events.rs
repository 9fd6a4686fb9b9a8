//! Kubernetes Events on the affected pod (`run`, cargo feature
//! `kubernetes`): a finding that asks for action on a pod's container
//! (`hop_limit_exceeded`, `imdsv1_fallback`, `token_rejected`, `at_risk`)
//! becomes a Warning Event (events.k8s.io/v1) regarding that Pod, so it shows
//! in `kubectl describe pod` and in whatever watches Events.
//!
//! Contract:
//! - Never blocks capture: [`PodEvents::finding`] only `try_send`s onto a
//!   bounded queue; a full queue drops the finding and counts it. A task of
//!   its own talks to the API server, each request bounded by
//!   [`Config::timeout`].
//! - Only pods of this node that the pod watch knows (the table
//!   `identity::kubernetes` keeps) get Events; a container that is not in a
//!   pod, or names a pod the watch does not list, gets none.
//! - Repeats of one reason on one pod update the Event's series (count,
//!   lastObservedTime) with a PATCH instead of creating new Events: kube's
//!   `Recorder` keeps that bookkeeping (keyed by reason, action, reporter and
//!   the Pod, as client-go's recorder is; a series quiet for 6 minutes starts
//!   a new Event). A series whose Event is gone (deleted with `kubectl
//!   delete events`) starts a new Event at its next repeat.
//! - At most [`PER_MINUTE`] requests (new Events and series updates) a
//!   minute per node, and [`PER_POD_PER_MINUTE`] per pod (one pod's
//!   flapping findings cannot take the others' Events), token buckets; what
//!   they drop is counted and logged once.
//! - A 403 or 401 names the missing RBAC once in the log and turns Events
//!   off for [`Config::off_after_forbidden`]; capture goes on.
//! - The note is the finding's summary and its fix, cut to the API's 1 KiB on
//!   a character boundary. Findings carry counts, TTLs, paths and commands,
//!   never a token, a credential or a reply body, and neither does the note.
use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    diagnose::{Finding, FindingKind, Fix},
    identity::{
        http::truncate,
        kubernetes,
        lookup::{Answer, Table},
        pods::PodInfo,
    },
};

/// Requests to the API server (new Events and series updates) per minute
/// per node at most: a bad day on a node with many failing pods must not
/// flood the API server. A kubelet sends far more; 60 leaves every pod of a
/// usual node its Event and a few updates each minute.
pub const PER_MINUTE: u32 = 60;
/// Of which one pod may take at most half: a flapping pod's series
/// updates leave the others at least as much.
pub const PER_POD_PER_MINUTE: u32 = PER_MINUTE / 2;
/// Findings waiting for the task at most; more are dropped and counted.
pub const QUEUE: usize = 256;
/// The API server refuses a note longer than 1 KiB.
pub const NOTE_MAX: usize = 1024;
/// `reportingController` of every Event.
pub const CONTROLLER: &str = "imds-observer";
/// `action` of every Event: what the observer did to find it.
pub const ACTION: &str = "Diagnose";

/// The Event reason of a finding kind; `None` for kinds that get no Event
/// (healthy, and the ones a pod's owner cannot act on from the node).
pub fn reason(kind: FindingKind) -> Option<&'static str> {
    match kind {
        FindingKind::HopLimitExceeded => Some("IMDSHopLimitExceeded"),
        FindingKind::NodeRoleBlocked => Some("IMDSNodeRoleBlocked"),
        FindingKind::Imdsv1Fallback => Some("IMDSv1Fallback"),
        FindingKind::TokenRejected => Some("IMDSTokenRejected"),
        FindingKind::AtRisk => Some("IMDSAtRisk"),
        FindingKind::NodeRoleLeak => Some("IMDSNodeRoleLeak"),
        FindingKind::CredentialStorm => Some("IMDSCredentialStorm"),
        FindingKind::ImdsForbidden
        | FindingKind::Unreachable
        | FindingKind::BadTokenRequest
        | FindingKind::Healthy => None,
    }
}

/// The Event's note: which container, the finding's summary, and the fix
/// when it has one, within [`NOTE_MAX`] bytes.
pub fn note(f: &Finding) -> String {
    let mut s = String::new();
    if let Some(name) = f.container.name.as_deref().filter(|n| !n.is_empty()) {
        let _ = write!(s, "Container {name}: ");
    }
    s.push_str(f.summary.trim());
    // A command that reads "$INSTANCE_ID" comes with the line that sets it,
    // whole: the summary is cut rather than either (a cut command is not
    // valid shell).
    if let Some(fix @ Fix { own_role: None, get_instance_id: Some(get), .. }) = &f.fix {
        let tail = format!(" Fix, on the node: {get}; {} (the running instance).", fix.command);
        let room = NOTE_MAX.saturating_sub(tail.len());
        let mut head = cut(s, room);
        let rest = format!(
            " Launch template: {}; Karpenter: {}; EKS node group: {}.",
            fix.launch_template, fix.karpenter, fix.eks_node_group
        );
        head.push_str(&tail);
        if head.len() + rest.len() <= NOTE_MAX {
            head.push_str(&rest);
        }
        return head;
    }
    match &f.fix {
        // The pod's own role first; the node's hop limit is the last resort.
        Some(fix @ Fix { own_role: Some(own), .. }) => {
            let _ = write!(
                s,
                " Fix ({}): EKS Pod Identity: {}; or IRSA: {}.",
                crate::diagnose::OWN_ROLE_VARS,
                own.pod_identity,
                own.irsa
            );
            if let Some(n) = fix.note.as_deref().filter(|n| !n.is_empty()) {
                let _ = write!(s, " Only as a {n}");
            }
        }
        Some(fix) => {
            let _ = write!(
                s,
                " Fix: {} (the running instance); launch template: {}; Karpenter: {}; EKS node group: {}.",
                fix.command, fix.launch_template, fix.karpenter, fix.eks_node_group
            );
            if let Some(n) = fix.note.as_deref().filter(|n| !n.is_empty()) {
                let _ = write!(s, " Then, {n}.");
            }
        }
        None => {}
    }
    cut(s, NOTE_MAX)
}

/// `s` in at most `max` bytes: cut on a character boundary, with `…` at
/// the end when cut.
pub fn cut(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A token bucket: `capacity` at once, refilled at `capacity` a minute.
#[derive(Clone, Debug)]
pub struct RateLimit {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl RateLimit {
    pub fn per_minute(n: u32, now: Instant) -> Self {
        let capacity = f64::from(n);
        RateLimit { capacity, tokens: capacity, per_sec: capacity / 60.0, last: now }
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// `reportingInstance`: the node's name.
    pub node: String,
    pub per_minute: u32,
    pub per_pod_per_minute: u32,
    pub queue: usize,
    /// One request to the API server at most this long.
    pub timeout: Duration,
    /// After a 403 or 401, Events stay off this long, then one is tried.
    pub off_after_forbidden: Duration,
}

impl Config {
    pub fn new(node: String) -> Self {
        Config {
            node,
            per_minute: PER_MINUTE,
            per_pod_per_minute: PER_POD_PER_MINUTE,
            queue: QUEUE,
            timeout: Duration::from_secs(10),
            off_after_forbidden: Duration::from_secs(600),
        }
    }
}

/// What became of the findings handed over (for the log at exit and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests the API server accepted (a new Event or a series update).
    pub sent: u64,
    /// Findings about a container that is no pod this node's watch lists.
    pub not_a_pod: u64,
    /// Dropped by the per-node limit.
    pub rate_limited: u64,
    /// Dropped because the queue was full.
    pub queue_full: u64,
    /// Dropped while Events are off after a 403/401.
    pub off: u64,
    /// Requests that failed (other errors, timeouts).
    pub failed: u64,
    /// 403/401 answers.
    pub forbidden: u64,
    /// The last failure, as logged.
    pub last_error: Option<String>,
}

impl Stats {
    /// The counts by result, for `imds_observer_pod_events_total{result}`.
    pub fn by_result(&self) -> [(&'static str, u64); 7] {
        [
            ("sent", self.sent),
            ("not_a_pod", self.not_a_pod),
            ("rate_limited", self.rate_limited),
            ("queue_full", self.queue_full),
            ("off", self.off),
            ("failed", self.failed),
            ("forbidden", self.forbidden),
        ]
    }
}

type SharedStats = Arc<Mutex<Stats>>;

fn update(stats: &SharedStats, f: impl FnOnce(&mut Stats)) {
    f(&mut stats.lock().unwrap_or_else(|e| e.into_inner()));
}

/// What the task needs of a finding: the pod's key, the reason, the note.
#[derive(Debug)]
struct Request {
    pod_uid: String,
    reason: &'static str,
    note: String,
}

/// The capture side: hands findings to the task that creates the Events.
pub struct PodEvents {
    tx: mpsc::Sender<Request>,
    stats: SharedStats,
}

impl PodEvents {
    /// Infer the client configuration as the pod watch does (kubeconfig,
    /// else in-cluster) and start the task (inside a tokio runtime).
    pub fn spawn_from_env(cfg: Config, pods: Table<Arc<PodInfo>>) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let stats = SharedStats::default();
        let st = stats.clone();
        tokio::spawn(async move {
            match kubernetes::client_from_env().await {
                Ok((client, _)) => serve(client, cfg, pods, rx, st).await,
                Err(e) => warn!("Kubernetes: {e}; no pod Events"),
            }
        });
        PodEvents { tx, stats }
    }

    /// The task on `client` (tests: a fake API server).
    pub fn spawn(client: Client, cfg: Config, pods: Table<Arc<PodInfo>>) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let stats = SharedStats::default();
        tokio::spawn(serve(client, cfg, pods, rx, stats.clone()));
        PodEvents { tx, stats }
    }

    /// Hand a finding over, never waiting. Kinds without an Event and
    /// containers that name no pod UID are left out here already, as are
    /// those no pod was attached to (`pod` absent: the pod's status has not
    /// confirmed the container, `Container::enrich_pod`), so a key another
    /// pod claims never puts an Event on that pod.
    pub fn finding(&self, f: &Finding) {
        let Some(reason) = reason(f.kind) else { return };
        let named = f.container.pod.is_some();
        let Some(uid) = f.container.pod_uid.as_deref().filter(|u| named && !u.is_empty()) else {
            update(&self.stats, |s| s.not_a_pod += 1);
            return;
        };
        let req = Request { pod_uid: uid.to_owned(), reason, note: note(f) };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(req) {
            let first = {
                let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.queue_full += 1;
                s.queue_full == 1
            };
            if first {
                warn!(
                    "pod Events: the queue is full (the API server is slow); findings are dropped from Events and counted, they still go to stdout"
                );
            }
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The Pod an Event is about, as the API names it.
fn regarding(pod: &PodInfo) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.name.clone()),
        namespace: Some(pod.namespace.clone()),
        uid: Some(pod.uid.clone()),
        ..Default::default()
    }
}

/// How long kube's Recorder keeps a quiet series (its CACHE_TTL).
const SERIES_QUIET: Duration = Duration::from_secs(6 * 60);

/// The task: one request at a time, in the order findings came.
async fn serve(
    client: Client,
    cfg: Config,
    pods: Table<Arc<PodInfo>>,
    mut rx: mpsc::Receiver<Request>,
    stats: SharedStats,
) {
    let reporter = Reporter { controller: CONTROLLER.into(), instance: Some(cfg.node) };
    // A Recorder per series (pod, reason): kube's Recorder cannot forget one
    // series, and one whose Event is gone would PATCH into a 404 until the
    // Recorder's cache lets it go, 6 minutes after its last success. Kept
    // while in use: at most what the rate limit lets through in that time.
    let mut series: HashMap<(String, &'static str), (Recorder, Instant)> = HashMap::new();
    let mut limit = RateLimit::per_minute(cfg.per_minute, Instant::now());
    // Per pod, with when last used: kept while it may still hold a pod back
    // (a minute refills it), so at most the pods of this node.
    let mut pod_limits: HashMap<String, (RateLimit, Instant)> = HashMap::new();
    let mut off_until: Option<Instant> = None;
    let (mut told_forbidden, mut told_limit, mut told_pod_limit, mut failing) =
        (false, false, false, false);
    while let Some(req) = rx.recv().await {
        // A mirror pod is known by the static pod's UID too; the Event
        // regards the Pod object the API server has.
        let Answer::Found(pod) = pods.get(&req.pod_uid) else {
            update(&stats, |s| s.not_a_pod += 1);
            continue;
        };
        let now = Instant::now();
        if off_until.is_some_and(|t| now < t) {
            update(&stats, |s| s.off += 1);
            continue;
        }
        pod_limits.retain(|_, (_, used)| now.duration_since(*used) < Duration::from_secs(60));
        let (pod_limit, used) = pod_limits
            .entry(pod.uid.clone())
            .or_insert_with(|| (RateLimit::per_minute(cfg.per_pod_per_minute, now), now));
        *used = now;
        if !pod_limit.take(now) {
            update(&stats, |s| s.rate_limited += 1);
            if !told_pod_limit {
                told_pod_limit = true;
                warn!(
                    pod = %pod.name,
                    "pod Events: more than {} a minute for one pod; its others are dropped and counted (findings still go to stdout)",
                    cfg.per_pod_per_minute
                );
            }
            continue;
        }
        if !limit.take(now) {
            update(&stats, |s| s.rate_limited += 1);
            if !told_limit {
                told_limit = true;
                warn!(
                    "pod Events: more than {} a minute on this node; the rest are dropped and counted (findings still go to stdout)",
                    cfg.per_minute
                );
            }
            continue;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: req.reason.into(),
            note: Some(req.note),
            action: ACTION.into(),
            secondary: None,
        };
        let about = regarding(&pod);
        series.retain(|_, (_, used)| now.duration_since(*used) < SERIES_QUIET);
        let key = (pod.uid.clone(), req.reason);
        let recorder = series
            .entry(key.clone())
            .or_insert_with(|| (Recorder::new(client.clone(), reporter.clone()), now));
        recorder.1 = now;
        let recorder = recorder.0.clone();
        let mut result = tokio::time::timeout(cfg.timeout, recorder.publish(&event, &about)).await;
        if matches!(&result, Ok(Err(kube::Error::Api(s))) if s.code == 404) {
            // The series' Event is gone: a new one, with a count of its own.
            let fresh = Recorder::new(client.clone(), reporter.clone());
            series.insert(key, (fresh.clone(), now));
            result = tokio::time::timeout(cfg.timeout, fresh.publish(&event, &about)).await;
        }
        let error = match result {
            Ok(Ok(())) => {
                update(&stats, |s| s.sent += 1);
                if failing || off_until.take().is_some() {
                    info!("pod Events: the API server accepts them again");
                    failing = false;
                }
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => {
                let msg = format!("no answer within {:?}", cfg.timeout);
                update(&stats, |s| {
                    s.failed += 1;
                    s.last_error = Some(msg.clone());
                });
                if !failing {
                    warn!(
                        "pod Events: creating an Event on pod {}/{}: {msg}",
                        pod.namespace, pod.name
                    );
                    failing = true;
                }
                continue;
            }
        };
        match &error {
            kube::Error::Api(s) if s.code == 403 || s.code == 401 => {
                let msg = forbidden(s.code, &s.message, &pod.namespace);
                off_until = Some(now + cfg.off_after_forbidden);
                update(&stats, |st| {
                    st.forbidden += 1;
                    st.last_error = Some(msg.clone());
                });
                if !told_forbidden {
                    told_forbidden = true;
                    warn!(
                        "Kubernetes: {msg}; pod Events are off for {}, findings still go to stdout",
                        humantime::format_duration(cfg.off_after_forbidden)
                    );
                } else {
                    debug!("Kubernetes: {msg}");
                }
            }
            e => {
                let msg = format!("creating an Event on pod {}/{}: {e}", pod.namespace, pod.name);
                update(&stats, |s| {
                    s.failed += 1;
                    s.last_error = Some(msg.clone());
                });
                if !failing {
                    warn!("pod Events: {msg}; the next finding tries again");
                    failing = true;
                } else {
                    debug!("pod Events: {msg}");
                }
            }
        }
    }
}

/// A 403/401 in words, naming the RBAC the Events need.
fn forbidden(code: u16, message: &str, namespace: &str) -> String {
    let message = truncate(message.trim(), 300);
    if code == 401 {
        format!(
            "cannot create events.k8s.io/v1 Events in {namespace} (HTTP 401: {message}): the API server rejected the observer's credentials"
        )
    } else {
        format!(
            "cannot create events.k8s.io/v1 Events in {namespace} (HTTP 403: {message}): the ClusterRole needs create and patch on events in API group events.k8s.io (deploy/kubernetes/rbac.yaml)"
        )
    }
}

/// `run`'s Kubernetes Events: each finding handed over (never waits), and
/// what became of them counted in the metrics, when they are served.
pub struct PodEventsSink {
    pub events: PodEvents,
    pub metrics: Option<Arc<Mutex<super::metrics::Metrics>>>,
}

impl super::Sink for PodEventsSink {
    fn event(
        &mut self,
        _: &crate::diagnose::Diagnoser,
        _: &crate::model::Event,
        findings: &[Finding],
    ) -> std::io::Result<()> {
        findings.iter().for_each(|f| self.events.finding(f));
        Ok(())
    }
    fn tick(
        &mut self,
        _: &crate::diagnose::Diagnoser,
        _: std::time::SystemTime,
        findings: &[Finding],
    ) -> std::io::Result<()> {
        findings.iter().for_each(|f| self.events.finding(f));
        if let Some(m) = &self.metrics {
            let by_result = self.events.stats().by_result();
            m.lock().unwrap_or_else(|e| e.into_inner()).set_pod_events(&by_result);
        }
        Ok(())
    }
    fn finish(&mut self) {
        let s = self.events.stats();
        info!(
            sent = s.sent,
            not_a_pod = s.not_a_pod,
            rate_limited = s.rate_limited,
            queue_full = s.queue_full,
            off = s.off,
            failed = s.failed,
            forbidden = s.forbidden,
            "pod Events"
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::{
        diagnose::{Evidence, FindingTag, Fix},
        identity::{
            http::fake::find,
            lookup::{Changes, Writer},
        },
        model::Container,
    };

    const UID: &str = "4a9e2c1d-7b3f-4e8a-9d6c-2f1e0b3a5c7d";
    const STATIC_UID: &str = "6f6c8b1fa0a1f2b5e7e8c9d0e1f2a3b4";

    fn finding(kind: FindingKind, pod_uid: Option<&str>) -> Finding {
        Finding {
            tag: FindingTag::Finding,
            ts: "2026-11-30T10:00:00.000000Z".into(),
            node: "node-a".into(),
            kind,
            container: Container {
                pod_uid: pod_uid.map(String::from),
                pod: pod_uid.map(|_| "api-7f9c".to_string()),
                namespace: pod_uid.map(|_| "payments".to_string()),
                name: Some("api".into()),
                ..Default::default()
            },
            summary: "1 IMDSv2 token reply reached the host with TTL 1 (the instance's hop limit) and was dropped. Raise the hop limit to 2.".into(),
            evidence: Evidence::default(),
            timeline: Vec::new(),
            fix: Some(Fix::hop_limit(Some("i-0123456789abcdef0"), 2)),
            node_info: None,
        }
    }

    #[test]
    fn seven_kinds_get_a_reason_the_others_none() {
        let got: Vec<(FindingKind, Option<&str>)> =
            FindingKind::ALL.iter().map(|k| (*k, reason(*k))).collect();
        assert_eq!(
            got,
            vec![
                (FindingKind::HopLimitExceeded, Some("IMDSHopLimitExceeded")),
                (FindingKind::NodeRoleBlocked, Some("IMDSNodeRoleBlocked")),
                (FindingKind::TokenRejected, Some("IMDSTokenRejected")),
                (FindingKind::ImdsForbidden, None),
                (FindingKind::Unreachable, None),
                (FindingKind::BadTokenRequest, None),
                (FindingKind::Imdsv1Fallback, Some("IMDSv1Fallback")),
                (FindingKind::NodeRoleLeak, Some("IMDSNodeRoleLeak")),
                (FindingKind::AtRisk, Some("IMDSAtRisk")),
                (FindingKind::CredentialStorm, Some("IMDSCredentialStorm")),
                (FindingKind::Healthy, None),
            ]
        );
    }

    #[test]
    fn note_is_container_summary_and_fix() {
        let f = finding(FindingKind::HopLimitExceeded, Some(UID));
        assert_eq!(
            note(&f),
            "Container api: 1 IMDSv2 token reply reached the host with TTL 1 (the instance's hop limit) and was dropped. \
             Raise the hop limit to 2. Fix: aws ec2 modify-instance-metadata-options --instance-id i-0123456789abcdef0 \
             --http-put-response-hop-limit 2 --http-endpoint enabled (the running instance); launch template: \
             MetadataOptions.HttpPutResponseHopLimit = 2; Karpenter: EC2NodeClass spec.metadataOptions.httpPutResponseHopLimit: 2; \
             EKS node group: set MetadataOptions.HttpPutResponseHopLimit = 2 in the node group's launch template \
             (Terraform: metadata_options.http_put_response_hop_limit = 2), then roll the node group."
        );
        let mut f = finding(FindingKind::TokenRejected, Some(UID));
        f.fix = None;
        f.container.name = None;
        assert_eq!(note(&f), f.summary);
    }

    #[test]
    fn note_fits_one_kib_cut_on_a_char_boundary() {
        let mut f = finding(FindingKind::HopLimitExceeded, Some(UID));
        // 3-byte characters straddle the limit wherever it falls.
        f.summary = "€".repeat(700);
        let n = note(&f);
        assert!(n.len() <= NOTE_MAX, "{}", n.len());
        assert!(n.len() >= NOTE_MAX - 3, "{}", n.len());
        assert!(n.ends_with("€…"), "{}", &n[n.len() - 9..]);
        assert!(n.starts_with("Container api: €€"));
        // Exactly at the limit: kept whole; one byte over: cut.
        assert_eq!(cut("a".repeat(NOTE_MAX), NOTE_MAX), "a".repeat(NOTE_MAX));
        let over = cut("a".repeat(NOTE_MAX + 1), NOTE_MAX);
        assert_eq!(over, format!("{}…", "a".repeat(NOTE_MAX - 3)));
        assert_eq!(over.len(), NOTE_MAX);
        for max in 0..8 {
            let c = cut("ééééé".into(), max);
            assert!(c.len() <= max.max(3), "{max}: {c}");
        }
    }

    /// No instance id known: the note carries the line that sets
    /// INSTANCE_ID and the command reading it, both whole, within NOTE_MAX,
    /// however long the summary; the summary is what gets cut.
    #[test]
    fn note_without_an_instance_id_keeps_both_commands_whole() {
        use crate::diagnose::GET_INSTANCE_ID;
        let mut f = finding(FindingKind::HopLimitExceeded, Some(UID));
        f.fix = Some(Fix::hop_limit(None, 2));
        let cmd = f.fix.as_ref().unwrap().command.clone();
        assert!(cmd.contains("--instance-id \"$INSTANCE_ID\" "), "{cmd}");
        let pair = format!("Fix, on the node: {GET_INSTANCE_ID}; {cmd} (the running instance).");
        // A short summary: everything fits, the launch template too.
        let n = note(&f);
        assert!(n.len() <= NOTE_MAX, "{}", n.len());
        assert!(n.contains(&pair), "{n}");
        assert!(n.contains(&f.summary), "{n}");
        assert!(n.contains("Launch template: "), "{n}");
        // Summaries up to far past the limit: cut, never the commands.
        for len in [200, 600, 900, 2000] {
            f.summary = "x".repeat(len);
            let n = note(&f);
            assert!(n.len() <= NOTE_MAX, "{len}: {}", n.len());
            assert!(n.contains(&pair), "{len}: {n}");
            assert!(n.ends_with("(the running instance).") || n.contains("Launch template: "));
            if len == 2000 {
                assert!(n.starts_with("Container api: xxx") && n.contains("x… Fix, on the node"));
            }
        }
    }

    #[test]
    fn rate_limit_is_a_minute_of_burst_then_one_a_second() {
        let t0 = Instant::now();
        let mut l = RateLimit::per_minute(60, t0);
        assert_eq!((0..100).filter(|_| l.take(t0)).count(), 60);
        assert!(!l.take(t0 + Duration::from_millis(900)));
        assert!(l.take(t0 + Duration::from_millis(1000)));
        assert!(!l.take(t0 + Duration::from_millis(1500)));
        // A quiet minute refills the bucket, never past its capacity.
        let later = t0 + Duration::from_secs(600);
        assert_eq!((0..100).filter(|_| l.take(later)).count(), 60);
        // A clock that goes back takes nothing extra.
        assert!(!l.take(t0));
    }

    /// A fake API server on 127.0.0.1 for events.k8s.io/v1: POST creates,
    /// PATCH (a JSON merge patch) updates, each kept by name; `status` other
    /// than 0 answers every request with that code.
    struct FakeEvents {
        port: u16,
        requests: Arc<Mutex<Vec<(String, String)>>>,
        events: Arc<Mutex<HashMap<String, Value>>>,
        status: Arc<Mutex<u16>>,
    }

    async fn fake_events() -> FakeEvents {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let fake = FakeEvents {
            port,
            requests: Arc::default(),
            events: Arc::default(),
            status: Arc::default(),
        };
        let (reqs, evs, status) = (fake.requests.clone(), fake.events.clone(), fake.status.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (reqs, evs, status) = (reqs.clone(), evs.clone(), status.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut b = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = find(&req, b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&req[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while req.len() < head_end + len {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req[..head_end]).into_owned();
                    let mut words = text.split(' ');
                    let method = words.next().unwrap_or_default().to_string();
                    let path = words.next().unwrap_or_default().to_string();
                    let body: Value =
                        serde_json::from_slice(&req[head_end..head_end + len]).unwrap_or_default();
                    reqs.lock().unwrap().push((method.clone(), path.clone()));
                    let code = *status.lock().unwrap();
                    let (st, out) = if code != 0 {
                        (
                            format!("{code} Forbidden"),
                            json!({"kind":"Status","apiVersion":"v1","status":"Failure","message":"events.events.k8s.io is forbidden: User \"system:serviceaccount:imds-observer:imds-observer\" cannot create resource \"events\" in API group \"events.k8s.io\" in the namespace \"payments\"","reason":"Forbidden","code":code}),
                        )
                    } else if method == "POST" {
                        let name =
                            body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                        evs.lock().unwrap().insert(name, body.clone());
                        ("201 Created".to_string(), body)
                    } else {
                        let name = path
                            .rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .split('?')
                            .next()
                            .unwrap()
                            .to_string();
                        let mut evs = evs.lock().unwrap();
                        match evs.get_mut(&name) {
                            Some(ev) => {
                                json_patch::merge(ev, &body);
                                ("200 OK".to_string(), ev.clone())
                            }
                            None => {
                                ("404 Not Found".to_string(), json!({"kind":"Status","code":404}))
                            }
                        }
                    };
                    let out = out.to_string();
                    let reply = format!(
                        "HTTP/1.1 {st}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                        out.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        fake
    }

    fn pod_table(pods: &[PodInfo]) -> (Table<Arc<PodInfo>>, Writer<Arc<PodInfo>>) {
        let (table, writer) = Table::watched(&Changes::default());
        for p in pods {
            let p = Arc::new(p.clone());
            for k in p.keys() {
                writer.found(k.to_owned(), p.clone());
            }
        }
        (table, writer)
    }

    fn api_pod() -> PodInfo {
        PodInfo {
            uid: UID.into(),
            name: "api-7f9c".into(),
            namespace: "payments".into(),
            ..Default::default()
        }
    }

    fn start(fake: &FakeEvents, cfg: Config, pods: &[PodInfo]) -> PodEvents {
        let config = kube::Config::new(format!("http://127.0.0.1:{}", fake.port).parse().unwrap());
        let (table, _writer) = pod_table(pods);
        PodEvents::spawn(kubernetes::client(config).unwrap(), cfg, table)
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn ten_repeats_are_one_event_with_a_series_of_ten() {
        let fake = fake_events().await;
        // Eleven requests for one pod: past its own limit.
        let cfg = Config { per_pod_per_minute: 20, ..Config::new("node-a".into()) };
        let ev = start(&fake, cfg, &[api_pod()]);
        let f = finding(FindingKind::HopLimitExceeded, Some(UID));
        for _ in 0..10 {
            ev.finding(&f);
        }
        until("ten requests", || fake.requests.lock().unwrap().len() == 10).await;
        let reqs = fake.requests.lock().unwrap().clone();
        assert_eq!(
            reqs[0],
            ("POST".into(), "/apis/events.k8s.io/v1/namespaces/payments/events?".into())
        );
        let events = fake.events.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "{events:#?}");
        let (name, e) = events.into_iter().next().unwrap();
        for r in &reqs[1..] {
            assert_eq!(r.0, "PATCH");
            assert_eq!(r.1, format!("/apis/events.k8s.io/v1/namespaces/payments/events/{name}?"));
        }
        assert!(name.starts_with("api-7f9c."), "{name}");
        assert_eq!(e["series"]["count"], 10, "{e}");
        assert!(e["series"]["lastObservedTime"].is_string(), "{e}");
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["reason"], "IMDSHopLimitExceeded");
        assert_eq!(e["action"], "Diagnose");
        assert_eq!(e["reportingController"], "imds-observer");
        assert_eq!(e["reportingInstance"], "node-a");
        assert_eq!(e["note"], note(&f));
        assert_eq!(
            e["regarding"],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "api-7f9c", "namespace": "payments", "uid": UID})
        );
        assert_eq!(e["metadata"]["namespace"], "payments");
        // The fake has the tenth request before the task counts its answer.
        until("ten counted", || ev.stats().sent == 10).await;
        assert_eq!(ev.stats(), Stats { sent: 10, ..Default::default() });

        // Another reason on the same pod is an Event of its own.
        ev.finding(&finding(FindingKind::Imdsv1Fallback, Some(UID)));
        until("a second event", || fake.events.lock().unwrap().len() == 2).await;
        let reasons: Vec<Value> =
            fake.events.lock().unwrap().values().map(|e| e["reason"].clone()).collect();
        assert!(reasons.contains(&json!("IMDSv1Fallback")), "{reasons:?}");
    }

    #[tokio::test]
    async fn a_series_whose_event_was_deleted_starts_a_new_event() {
        let fake = fake_events().await;
        let ev = start(&fake, Config::new("node-a".into()), &[api_pod()]);
        let f = finding(FindingKind::HopLimitExceeded, Some(UID));
        ev.finding(&f);
        ev.finding(&f);
        until("a series of two", || fake.requests.lock().unwrap().len() == 2).await;
        let first = fake.events.lock().unwrap().keys().next().unwrap().clone();
        // `kubectl delete events`: the next repeat PATCHes into a 404 and
        // creates a new Event instead of waiting out kube's cache.
        fake.events.lock().unwrap().clear();
        ev.finding(&f);
        until("a new event", || fake.events.lock().unwrap().len() == 1).await;
        let methods: Vec<String> =
            fake.requests.lock().unwrap().iter().map(|(m, _)| m.clone()).collect();
        assert_eq!(methods, ["POST", "PATCH", "PATCH", "POST"]);
        let events = fake.events.lock().unwrap().clone();
        let (name, e) = events.into_iter().next().unwrap();
        assert_ne!(name, first);
        assert!(e.get("series").is_none_or(Value::is_null), "a fresh count: {e}");
        assert_eq!(e["reason"], "IMDSHopLimitExceeded");
        assert_eq!(ev.stats(), Stats { sent: 3, ..Default::default() });
        // And it is the series from then on.
        ev.finding(&f);
        until("its series", || fake.requests.lock().unwrap().len() == 5).await;
        assert_eq!(
            fake.requests.lock().unwrap()[4].1,
            format!("/apis/events.k8s.io/v1/namespaces/payments/events/{name}?")
        );
    }

    #[tokio::test]
    async fn only_pods_the_watch_lists_get_events() {
        let fake = fake_events().await;
        // A static pod: its cgroup path names the static UID, the Event
        // regards the mirror Pod the API server has.
        let mirror = PodInfo {
            uid: "11111111-2222-4333-8444-555555555555".into(),
            name: "kube-proxy-node-a".into(),
            namespace: "kube-system".into(),
            mirror_of: Some(STATIC_UID.into()),
            ..Default::default()
        };
        let ev = start(&fake, Config::new("node-a".into()), &[api_pod(), mirror]);
        // Not in a pod (Docker, Nomad, a host process), and a pod the watch
        // does not list (another node's, or gone).
        ev.finding(&finding(FindingKind::HopLimitExceeded, None));
        ev.finding(&finding(
            FindingKind::HopLimitExceeded,
            Some("0000aaaa-0000-4000-8000-000000000000"),
        ));
        // A pod's UID with no pod attached: its status did not confirm the
        // container (another pod's claim on the key, say).
        let mut unconfirmed = finding(FindingKind::HopLimitExceeded, Some(UID));
        unconfirmed.container.pod = None;
        ev.finding(&unconfirmed);
        // Kinds without an Event are not even counted.
        ev.finding(&finding(FindingKind::Healthy, Some(UID)));
        ev.finding(&finding(FindingKind::HopLimitExceeded, Some(STATIC_UID)));
        until("the static pod's event", || ev.stats().sent == 1).await;
        assert_eq!(ev.stats(), Stats { sent: 1, not_a_pod: 3, ..Default::default() });
        let events = fake.events.lock().unwrap().clone();
        assert_eq!(events.len(), 1);
        let e = events.values().next().unwrap();
        assert_eq!(e["regarding"]["uid"], "11111111-2222-4333-8444-555555555555");
        assert_eq!(e["regarding"]["name"], "kube-proxy-node-a");
        assert_eq!(e["metadata"]["namespace"], "kube-system");
    }

    #[tokio::test]
    async fn the_limit_drops_and_counts() {
        let fake = fake_events().await;
        let cfg = Config { per_minute: 3, ..Config::new("node-a".into()) };
        let ev = start(&fake, cfg, &[api_pod()]);
        for _ in 0..8 {
            ev.finding(&finding(FindingKind::HopLimitExceeded, Some(UID)));
        }
        until("all handled", || {
            let s = ev.stats();
            s.sent + s.rate_limited == 8
        })
        .await;
        assert_eq!(ev.stats(), Stats { sent: 3, rate_limited: 5, ..Default::default() });
        assert_eq!(fake.requests.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn one_pod_cannot_take_the_nodes_events() {
        let fake = fake_events().await;
        let cfg = Config { per_pod_per_minute: 3, ..Config::new("node-a".into()) };
        let other = PodInfo {
            uid: "9b8c7d6e-5f4a-4b3c-8d2e-1f0a9b8c7d6e".into(),
            name: "web-1".into(),
            namespace: "shop".into(),
            ..Default::default()
        };
        let ev = start(&fake, cfg, &[api_pod(), other.clone()]);
        for _ in 0..8 {
            ev.finding(&finding(FindingKind::HopLimitExceeded, Some(UID)));
        }
        ev.finding(&finding(FindingKind::HopLimitExceeded, Some(&other.uid)));
        until("all handled", || {
            let s = ev.stats();
            s.sent + s.rate_limited == 9
        })
        .await;
        assert_eq!(ev.stats(), Stats { sent: 4, rate_limited: 5, ..Default::default() });
        let requests = fake.requests.lock().unwrap();
        assert_eq!(
            requests.iter().filter(|(_, path)| path.contains("/namespaces/shop/")).count(),
            1
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let fake = fake_events().await;
        let cfg = Config { queue: 4, ..Config::new("node-a".into()) };
        let ev = start(&fake, cfg, &[api_pod()]);
        // The test's runtime has one thread: the task cannot run before
        // this loop yields, so the queue fills.
        for _ in 0..10 {
            ev.finding(&finding(FindingKind::HopLimitExceeded, Some(UID)));
        }
        assert_eq!(ev.stats().queue_full, 6);
        until("the queued four", || ev.stats().sent == 4).await;
        assert_eq!(ev.stats(), Stats { sent: 4, queue_full: 6, ..Default::default() });
    }

    #[tokio::test]
    async fn forbidden_names_the_rbac_once_and_turns_events_off() {
        let fake = fake_events().await;
        *fake.status.lock().unwrap() = 403;
        let cfg = Config {
            off_after_forbidden: Duration::from_millis(300),
            ..Config::new("node-a".into())
        };
        let ev = start(&fake, cfg, &[api_pod()]);
        for _ in 0..5 {
            ev.finding(&finding(FindingKind::HopLimitExceeded, Some(UID)));
        }
        until("all handled", || {
            let s = ev.stats();
            s.forbidden + s.off == 5
        })
        .await;
        let s = ev.stats();
        assert_eq!((s.forbidden, s.off, s.sent, s.failed), (1, 4, 0, 0), "{s:?}");
        assert_eq!(fake.requests.lock().unwrap().len(), 1, "off after the 403");
        let err = s.last_error.unwrap();
        assert!(
            err.starts_with("cannot create events.k8s.io/v1 Events in payments (HTTP 403: events.events.k8s.io is forbidden"),
            "{err}"
        );
        assert!(
            err.ends_with("the ClusterRole needs create and patch on events in API group events.k8s.io (deploy/kubernetes/rbac.yaml)"),
            "{err}"
        );
        // RBAC fixed: after the pause, Events go out again.
        *fake.status.lock().unwrap() = 0;
        tokio::time::sleep(Duration::from_millis(400)).await;
        ev.finding(&finding(FindingKind::HopLimitExceeded, Some(UID)));
        until("sent after the pause", || ev.stats().sent == 1).await;
        assert_eq!(fake.events.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn other_failures_are_counted_and_retried_with_the_next_finding() {
        let fake = fake_events().await;
        *fake.status.lock().unwrap() = 500;
        let ev = start(&fake, Config::new("node-a".into()), &[api_pod()]);
        for _ in 0..3 {
            ev.finding(&finding(FindingKind::HopLimitExceeded, Some(UID)));
        }
        until("three failures", || ev.stats().failed == 3).await;
        assert_eq!(fake.requests.lock().unwrap().len(), 3, "not turned off");
        assert_eq!(ev.stats().forbidden, 0);
    }
}
