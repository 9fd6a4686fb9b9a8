//! Container state → findings: which kinds hold, a fingerprint of what makes
//! each one news (to emit on change, not per packet), and the finding itself
//! with its summary, evidence, timeline and fix.
use std::hash::{DefaultHasher, Hash, Hasher};

use super::{
    finding::{
        Attempt, Container, EndpointFailures, Evidence, Fetches, Finding, FindingKind, FindingTag,
        Fix, OwnRole,
    },
    state::{ContainerState, Outcome, StatusState, Ts},
    storm,
};
use crate::model::{NodeInfo, Provisioner, bounded::plural, rfc3339, sdk};

pub(super) struct NodeView<'a> {
    pub name: &'a str,
    pub hop_limit: Option<u8>,
    pub lost_events: u64,
    /// What tokenless requests' answers said (`NodeState::tokens_required`).
    pub tokens_required: Option<bool>,
    pub instance_id: Option<&'a str>,
    /// What the cluster says of the node, when it said.
    pub info: Option<&'a NodeInfo>,
}

pub(super) fn fp<T: Hash>(t: T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// The hop limit this container needs: one more than its forwarding hops
/// (and never less than one more than the TTL its replies died with).
pub(super) fn required(node: &NodeView, c: &ContainerState) -> u8 {
    let ttl = c.episode.as_ref().and_then(|e| e.reply_ttl);
    match (c.forwarding_hops, ttl) {
        (Some(h), Some(t)) => h.max(t).saturating_add(1),
        (Some(h), None) => h.saturating_add(1),
        (None, Some(t)) => t.saturating_add(1),
        (None, None) => node.hop_limit.unwrap_or(1).saturating_add(1),
    }
}

/// Farther from the uplink than token replies can travel, talks to AWS IMDS,
/// and has not had a token yet (none asked for, or the first still pending).
fn at_risk(node: &NodeView, c: &ContainerState) -> bool {
    c.episode.is_none()
        && c.tokens_ok == 0
        && c.requests.imdsv1 + c.requests.imdsv2 > 0
        && matches!((c.forwarding_hops, node.hop_limit), (Some(h), Some(l)) if h >= l)
}

fn status_slots(c: &ContainerState) -> [(FindingKind, &Option<StatusState>); 3] {
    [
        (FindingKind::TokenRejected, &c.s401),
        (FindingKind::ImdsForbidden, &c.s403),
        (FindingKind::BadTokenRequest, &c.s400),
    ]
}

/// The kinds that hold for `c` now, with fingerprints of what makes them
/// news. Growing counters (drops, seconds lost, requests, latency) are left
/// out on purpose: they change per packet.
pub(super) fn active(node: &NodeView, c: &ContainerState) -> Active {
    let mut v = Active::default();
    let hops = c.forwarding_hops;
    if let Some(ep) = &c.episode {
        // News: each lost retry, and each attempt the client made after the
        // last lost one (how it fell back), so the last line's timeline is
        // the whole story. Per client attempt, never per packet.
        let after = c
            .timeline
            .iter()
            .filter(|a| a.ts > ep.last_lost && a.outcome != Outcome::Pending)
            .count();
        let kind = match by_design(node) {
            Some(_) => FindingKind::NodeRoleBlocked,
            None => FindingKind::HopLimitExceeded,
        };
        // The SDK and what it asks for shape the summary and the fix: a
        // request that names them after the first line is news.
        let advice = (&c.sdk, c.asked.only_whereabouts());
        v.push((kind, fp((ep.reply_ttl, hops, required(node, c), ep.lost, after, advice))));
    }
    if c.token_failed_since.is_some() && c.tokenless_since_failure > 0 {
        let req = c.episode.as_ref().map(|_| required(node, c));
        v.push((FindingKind::Imdsv1Fallback, fp((c.failed_token_requests, req))));
    }
    for (kind, slot) in status_slots(c) {
        if let Some(s) = slot {
            let hop_cause = kind == FindingKind::TokenRejected && c.episode.is_some();
            v.push((kind, fp((&s.paths, hop_cause))));
        }
    }
    let failing: Vec<_> = c
        .endpoints
        .iter()
        .filter(|e| e.failing())
        .map(|e| (&e.endpoint, e.refused > 0, e.timeouts > 0))
        .collect();
    if !failing.is_empty() {
        v.push((FindingKind::Unreachable, fp(failing)));
    }
    if let Some(id) = leak(c) {
        v.push((FindingKind::NodeRoleLeak, fp((id, &c.sdk))));
    }
    if at_risk(node, c) {
        v.push((FindingKind::AtRisk, fp((hops, node.hop_limit))));
    }
    if c.fetches.storm().is_some() {
        // News: only the SDK (the fix names it). Its counts grow with every
        // call, and the other count passing too is the same storm.
        v.push((FindingKind::CredentialStorm, fp(&c.sdk)));
    }
    if v.is_empty()
        && c.last_success.is_some()
        && c.last_other_failure.is_none_or(|f| Some(f) < c.last_success)
    {
        v.push((FindingKind::Healthy, fp((hops, node.hop_limit))));
    }
    v.items[..v.len].sort_by_key(|(k, _)| *k);
    v
}

/// The kinds that hold, with their fingerprints, worst first: at most one
/// of each, kept inline (the engine asks after every event).
#[derive(Clone, Copy, Debug)]
pub(super) struct Active {
    items: [(FindingKind, u64); FindingKind::ALL.len()],
    len: usize,
}

impl Default for Active {
    fn default() -> Self {
        Active { items: [(FindingKind::Healthy, 0); FindingKind::ALL.len()], len: 0 }
    }
}

impl Active {
    fn push(&mut self, kind_fp: (FindingKind, u64)) {
        self.items[self.len] = kind_fp;
        self.len += 1;
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn as_slice(&self) -> &[(FindingKind, u64)] {
        &self.items[..self.len]
    }
}

pub(super) fn timeline(c: &ContainerState) -> Vec<Attempt> {
    c.timeline
        .iter()
        .filter(|a| a.outcome != Outcome::Pending)
        .map(|a| Attempt {
            ts: rfc3339(a.ts),
            method: a.method.clone(),
            path: a.path.clone(),
            dst: a.dst.map(|d| d.to_string()),
            token: a.token_header,
            outcome: a.outcome.label(),
            latency_ms: a.latency.map(|d| super::state::round3(d.as_secs_f64() * 1000.0)),
            reply_ttl_at_host: a.reply_ttl,
        })
        .collect()
}

/// Who set hop limit 1 on this node to keep pods from its role, if one did
/// (`NodeInfo::blocks_pods_by_design`).
pub(super) fn by_design(node: &NodeView) -> Option<Provisioner> {
    node.info.filter(|i| i.blocks_pods_by_design(node.hop_limit))?.provisioner
}

/// The fix for a container that the hop limit keeps from IMDS tokens. On a
/// node that does so by design, a role of the workload's own comes first,
/// and the hop limit only on a pool of nodes of its own: raised on this
/// one, every pod here would get the node's role. None for a workload that
/// only asks where it runs: its fix is its own configuration
/// ([`WHEREABOUTS_ADVICE`]), never the node's hop limit.
fn hop_fix(node: &NodeView, c: &ContainerState, required: u8) -> Option<Fix> {
    if c.asked.only_whereabouts() {
        return None;
    }
    let mut fix = Fix::hop_limit(node.instance_id, required);
    if let Some(p) = by_design(node) {
        let who = c.identity.as_ref();
        fix.own_role = Some(OwnRole::new(
            who.and_then(|w| w.namespace.as_deref()),
            who.and_then(|w| w.service_account.as_deref()),
        ));
        fix.note = Some(format!(
            "last resort, for workloads that need the node's own role: hop limit {required} on a dedicated {} for them alone. Every pod on such nodes gets the node's IAM role.",
            p.pool_word()
        ));
    }
    Some(fix)
}

/// For a workload that asked IMDS only where it runs.
const WHEREABOUTS_ADVICE: &str = " It asked IMDS only where it runs (region, zone, instance id), never for credentials: tell it its region instead (AWS_REGION, or the component's own region flag), and set AWS_EC2_METADATA_DISABLED=true if it needs nothing else from IMDS. The hop limit needs no change for it.";

/// What to do, after the facts: the workload's own need decides first,
/// then whether the node blocks pods from its role on purpose.
fn remedy(node: &NodeView, c: &ContainerState, required: u8) -> String {
    if c.asked.only_whereabouts() {
        return WHEREABOUTS_ADVICE.to_string();
    }
    match by_design(node) {
        Some(p) => by_design_advice(node, p, c),
        None => format!(
            " Raise the hop limit to {required} (the quick fix){}. The lasting fix is a role of its own{}: the instance profile hands every workload on the node the same role.",
            if node.tokens_required == Some(true) {
                ""
            } else {
                ", then require IMDSv2 (--http-tokens required)"
            },
            own_role_kind(c)
        ),
    }
}

/// The per-workload identity its orchestrator offers, for the lasting fix
/// on a node that does not block pods on purpose.
fn own_role_kind(c: &ContainerState) -> &'static str {
    let who = c.identity.as_deref();
    if who.is_some_and(|w| w.ecs_task.is_some()) {
        " (an ECS task role)"
    } else if who.is_some_and(|w| w.nomad.is_some()) {
        " (Nomad workload identity)"
    } else if who.is_some_and(|w| w.pod.is_some()) {
        " (EKS Pod Identity or IRSA for its ServiceAccount)"
    } else {
        " (EKS Pod Identity or IRSA, an ECS task role, Nomad workload identity)"
    }
}

/// The provider of a workload's own role, when its spec gives it one and it
/// took the node's role from IMDS anyway.
fn leak(c: &ContainerState) -> Option<sdk::Provider> {
    if c.node_credentials == 0 {
        return None;
    }
    match c.identity.as_ref()?.aws_identity.as_deref()? {
        "irsa" => Some(sdk::Provider::WebIdentity),
        "pod_identity" => Some(sdk::Provider::PodIdentity),
        _ => None,
    }
}

/// " (ServiceAccount ns/sa)" when the pod's is known.
fn service_account(c: &ContainerState) -> String {
    let who = c.identity.as_ref();
    match (who.and_then(|w| w.namespace.as_deref()), who.and_then(|w| w.service_account.as_deref()))
    {
        (Some(ns), Some(sa)) => format!(" (ServiceAccount {ns}/{sa})"),
        _ => String::new(),
    }
}

fn provider_name(p: sdk::Provider) -> &'static str {
    match p {
        sdk::Provider::WebIdentity => "IRSA",
        sdk::Provider::PodIdentity => "EKS Pod Identity",
    }
}

/// Why a workload configured for `p` still asks IMDS, as far as its SDK
/// tells: too old (with the first version that would do), or new enough
/// (so something earlier in its credential chain wins), or unknown.
fn leak_cause(c: &ContainerState, p: sdk::Provider, ev: &mut Evidence) -> String {
    let id = provider_name(p);
    let Some(s) = c.sdk.as_ref() else {
        return format!(
            "its AWS SDK may be older than the first to support {id}, or its credential chain is overridden (keys in its environment or a profile, or code that asks IMDS itself)"
        );
    };
    let Some(min) = sdk::minimum_for(s, p) else {
        return format!(
            "its SDK is {s}; check that it supports {id}, or whether its credential chain is overridden"
        );
    };
    ev.sdk_minimum = Some(min.to_string());
    match sdk::older_than(s, min) {
        Some(true) => {
            format!("its SDK, {s}, is older than {min}, the first to support {id}: upgrade it")
        }
        Some(false) => format!(
            "its SDK, {s}, supports {id} (since {min}), so something earlier in its credential chain wins: keys in its environment or a profile, or code that asks IMDS itself"
        ),
        None => format!(
            "its SDK is {s}; {id} needs {min} or later, or its credential chain is overridden"
        ),
    }
}

/// What a pod on a node that keeps pods from its role by design should be
/// told: that the block is the node's design, and what to do instead.
fn by_design_advice(node: &NodeView, p: Provisioner, c: &ContainerState) -> String {
    let who = c.identity.as_ref();
    let sa = service_account(c);
    let has = who.and_then(|w| w.aws_identity.as_deref()).map(|i| match i {
        "irsa" => "IRSA",
        _ => "EKS Pod Identity",
    });
    match has {
        Some(id) => format!(
            " On this node hop limit 1 is a control: {} keeps pods from the node's IAM role by design. This workload is configured for {id}{sa}, yet asked IMDS: its AWS SDK may be older than the first to support {id}, or its credential chain is overridden. Raising the hop limit would hand it, and every pod here, the node's role.",
            p.title()
        ),
        None => format!(
            " On this node hop limit 1 is a control: {} keeps pods from the node's IAM role by design.{} Give this workload a role of its own{sa}: EKS Pod Identity or IRSA. Raising the hop limit would hand every pod here the node's role.",
            p.title(),
            match node.tokens_required {
                Some(true) =>
                    " The instance requires tokens: after the wait, its SDK gets no credentials here.",
                Some(false) =>
                    " Tokens are optional on this instance: after the wait its SDK falls back to IMDSv1 and reaches the node's role anyway; require them (--http-tokens required).",
                None => "",
            }
        ),
    }
}

fn endpoint_hint(ep: &str) -> &'static str {
    let ip = ep.rsplit_once(':').map_or(ep, |(ip, _)| ip).trim_matches(['[', ']']);
    match ip {
        "169.254.170.2" => {
            " (the ECS task credentials endpoint: is the ECS agent running, and does the task have a role?)"
        }
        "169.254.170.23" | "fd00:ec2::23" => {
            " (the EKS Pod Identity agent: is the eks-pod-identity-agent add-on running on this node?)"
        }
        "169.254.169.254" | "fd00:ec2::254" => {
            " (the instance metadata service: is it enabled, and is a firewall or proxy in the way?)"
        }
        _ => "",
    }
}

/// The finding of `kind` for container `cg`, as of now, stamped `ts`.
pub(super) fn build(
    node: &NodeView,
    cg: u64,
    c: &ContainerState,
    kind: FindingKind,
    ts: Ts,
) -> Finding {
    let mut ev = Evidence {
        forwarding_hops: c.forwarding_hops,
        node_hop_limit: node.hop_limit,
        requests: Some(c.requests),
        latency_ms: c.latency.evidence(),
        lost_events: (node.lost_events > 0).then_some(node.lost_events),
        suppressed_records: (c.counts.suppressed > 0).then_some(c.counts.suppressed),
        imds_tokens: node
            .tokens_required
            .map(|r| if r { "required" } else { "optional" }.to_string()),
        sdk: c.sdk.clone(),
        ..Default::default()
    };
    let mut tl = Vec::new();
    let mut fix = None;
    let summary = match kind {
        FindingKind::HopLimitExceeded | FindingKind::NodeRoleBlocked => {
            let ep = c.episode.as_ref().expect("active");
            let req = required(node, c);
            let secs = c.seconds_lost();
            ev.reply_ttl_at_host = ep.reply_ttl;
            ev.required_hop_limit = Some(req);
            ev.lost_replies = Some(ep.lost);
            ev.drops = Some(ep.drops);
            ev.icmp_time_exceeded = Some(ep.icmp);
            ev.seconds_lost = Some(secs);
            tl = timeline(c);
            fix = hop_fix(node, c, req);
            let ttl = ep.reply_ttl.map_or("the hop limit".to_string(), |t| {
                format!("TTL {t} (the instance's hop limit)")
            });
            let were = if ep.lost == 1 { "was" } else { "were" };
            let place = match c.forwarding_hops {
                Some(h) => format!(
                    "this container, {} behind the host's uplink",
                    plural(h as u64, "forwarding hop", "forwarding hops")
                ),
                None => "this container (its forwarding hops are not measured yet)".to_string(),
            };
            let then = remedy(node, c, req);
            // The first finding comes as the reply dies: no time is lost
            // yet, but the client's SDK waits out its timeout next.
            let waited = if secs < 0.05 {
                format!(
                    "{} lost, and the SDK's timeout (often 1 s) is ahead before it retries or falls back",
                    if ep.lost == 1 {
                        "the client's attempt is"
                    } else {
                        "the client's attempts are"
                    }
                )
            } else {
                format!("the client lost {secs:.1} s waiting")
            };
            let waited = match c.sdk.as_ref().and_then(|s| sdk::at_the_limit(s).map(|t| (s, t))) {
                Some((s, does)) => format!("{waited} ({s}: {does})"),
                None => waited,
            };
            format!(
                "{} reached the host with {ttl} and {were} dropped on the way to {place}; {waited}.{then}",
                plural(ep.lost, "IMDSv2 token reply", "IMDSv2 token replies"),
            )
        }
        FindingKind::Imdsv1Fallback => {
            ev.failed_token_requests = Some(c.failed_token_requests);
            ev.tokenless_requests = Some(c.tokenless_since_failure);
            tl = timeline(c);
            let cause = if c.episode.is_some() {
                "lost to the hop limit".to_string()
            } else {
                match c.token_failed_outcome {
                    Some(Outcome::Timeout) => "timed out".to_string(),
                    Some(Outcome::Refused) => "refused".to_string(),
                    Some(Outcome::Status(s)) => format!("answered {s}"),
                    _ => "failed".to_string(),
                }
            };
            let then = if c.episode.is_some() {
                let req = required(node, c);
                fix = hop_fix(node, c, req).map(|mut f| {
                    let id = super::instance_id_arg(node.instance_id);
                    f.note = Some(format!(
                        "once tokens get through, turn IMDSv1 off: aws ec2 modify-instance-metadata-options --instance-id {id} --http-tokens required"
                    ));
                    f
                });
                match by_design(node) {
                    _ if c.asked.only_whereabouts() => {
                        format!(" Require IMDSv2 (--http-tokens required).{}", WHEREABOUTS_ADVICE)
                    }
                    Some(p) => format!(
                        " Require IMDSv2 (--http-tokens required): with IMDSv1 open, pods reach the node's role despite hop limit 1.{}",
                        by_design_advice(node, p, c)
                    ),
                    None => format!(
                        " Raise the hop limit to {req}, then require IMDSv2 (--http-tokens required)."
                    ),
                }
            } else {
                " Find why the token request fails, then require IMDSv2 (--http-tokens required)."
                    .to_string()
            };
            format!(
                "After {} ({cause}), this container fell back to IMDSv1: {} without a token got an answer. This is also a security problem: IMDSv1 is what SSRF attacks use to steal instance credentials.{then}",
                plural(
                    c.failed_token_requests,
                    "failed IMDSv2 token request",
                    "failed IMDSv2 token requests"
                ),
                plural(c.tokenless_since_failure, "request", "requests"),
            )
        }
        FindingKind::TokenRejected | FindingKind::ImdsForbidden | FindingKind::BadTokenRequest => {
            let (status, s) = match kind {
                FindingKind::TokenRejected => (401, c.s401.as_ref()),
                FindingKind::ImdsForbidden => (403, c.s403.as_ref()),
                _ => (400, c.s400.as_ref()),
            };
            let s = s.expect("active");
            ev.status = Some(status);
            ev.responses = Some(s.count);
            ev.method = Some(s.method.clone());
            ev.path = Some(s.path.clone());
            ev.paths = s.paths.iter().cloned().collect();
            tl = timeline(c);
            let what = format!("{} {}", s.method, s.path);
            let n = plural(s.count, "request", "requests");
            match kind {
                FindingKind::TokenRejected => match &c.episode {
                    Some(ep) => {
                        let req = required(node, c);
                        fix = hop_fix(node, c, req);
                        let ttl = ep.reply_ttl.map_or(String::new(), |t| format!(" ({t})"));
                        let then = remedy(node, c, req);
                        format!(
                            "IMDS rejected {n} with 401 Unauthorized (last: {what}). The cause is the hop limit: the container never got a token because the token replies died at the hop limit{ttl}, so it asks without one and this instance requires tokens.{then}"
                        )
                    }
                    None => format!(
                        "IMDS rejected {n} with 401 Unauthorized (last: {what}): the token was missing, invalid or expired, and this instance requires IMDSv2 tokens."
                    ),
                },
                FindingKind::ImdsForbidden => {
                    let why = if s.path.starts_with("/computeMetadata/") {
                        "the request lacks the Metadata-Flavor: Google header".to_string()
                    } else if s.method.eq_ignore_ascii_case("PUT")
                        && s.path.ends_with("/api/token")
                        && s.path != "/latest/api/token"
                    {
                        "tokens are only issued at /latest/api/token, not at a versioned path"
                            .to_string()
                    } else {
                        "the instance metadata service is disabled for this instance (--http-endpoint disabled), or the request is not allowed".to_string()
                    };
                    format!("IMDS answered 403 Forbidden to {n} (last: {what}): {why}.")
                }
                _ => {
                    ev.token_ttl_header = s.ttl_header;
                    let why = if s.path.starts_with("/metadata/") {
                        "the Metadata: true header or the api-version parameter is missing"
                            .to_string()
                    } else if s.ttl_header == Some(false) {
                        "the X-aws-ec2-metadata-token-ttl-seconds header is missing".to_string()
                    } else {
                        "the X-aws-ec2-metadata-token-ttl-seconds header is missing or outside 1..21600".to_string()
                    };
                    format!("IMDS answered 400 Bad Request to {n} (last: {what}): {why}.")
                }
            }
        }
        FindingKind::Unreachable => {
            // Never about the hop limit: drop the node's hop limit from it.
            ev.node_hop_limit = None;
            ev.endpoints = c
                .endpoints
                .iter()
                .filter(|e| e.failing())
                .map(|e| EndpointFailures {
                    endpoint: e.endpoint.to_string(),
                    refused: e.refused,
                    timeouts: e.timeouts,
                })
                .collect();
            ev.endpoints.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
            ev.drop_reasons = c.drop_reasons.clone();
            tl = timeline(c);
            let parts: Vec<String> = ev
                .endpoints
                .iter()
                .map(|e| {
                    let mut how = Vec::new();
                    if e.refused > 0 {
                        how.push(format!(
                            "{} refused",
                            plural(e.refused, "connection", "connections")
                        ));
                    }
                    if e.timeouts > 0 {
                        how.push(format!(
                            "{} timed out with no answer",
                            plural(e.timeouts, "attempt", "attempts")
                        ));
                    }
                    format!(
                        "{}: {}{}",
                        e.endpoint,
                        how.join(", "),
                        endpoint_hint(&e.endpoint.to_string())
                    )
                })
                .collect();
            let dropped = if ev.drop_reasons.is_empty() {
                String::new()
            } else {
                format!(" The kernel dropped packets with reason {}.", ev.drop_reasons.join(", "))
            };
            format!("Could not reach {}.{dropped}", parts.join("; "))
        }
        FindingKind::NodeRoleLeak => {
            let p = leak(c).expect("active");
            ev.node_credentials = Some(c.node_credentials);
            tl = timeline(c);
            let sa = service_account(c);
            let cause = leak_cause(c, p, &mut ev);
            format!(
                "This workload is configured for {}{sa}, yet IMDS handed it the node's IAM role credentials ({}): {cause}. Until then it acts with the node's role, not its own.",
                provider_name(p),
                plural(c.node_credentials, "answer", "answers"),
            )
        }
        FindingKind::AtRisk => {
            let (h, l) = (c.forwarding_hops.unwrap_or(0), node.hop_limit.unwrap_or(0));
            let req = required(node, c);
            ev.required_hop_limit = Some(req);
            fix = hop_fix(node, c, req);
            let then = remedy(node, c, req);
            format!(
                "This container is {} behind the host's uplink, but token replies on this node arrive with TTL {l} (the hop limit): its first IMDSv2 token request will be dropped, and the SDK will time out, then fall back to IMDSv1 or fail.{then}",
                plural(h as u64, "forwarding hop", "forwarding hops"),
            )
        }
        FindingKind::CredentialStorm => {
            let s = c.fetches.storm().expect("active");
            ev.fetches = Some(Fetches {
                window_minutes: storm::WINDOW_MINUTES as u32,
                tokens: s.tokens,
                credentials: s.credentials,
                threshold: storm::STORM_REQUESTS,
            });
            storm::summary(s, c.sdk.as_ref())
        }
        FindingKind::Healthy => {
            let r = &c.requests;
            let lat =
                c.latency.evidence().map_or(String::new(), |l| format!(" (mean {:.1} ms)", l.mean));
            let v1 = if r.imdsv1 > 0 {
                format!("; {} without a token (IMDSv1)", plural(r.imdsv1, "request", "requests"))
            } else {
                String::new()
            };
            format!(
                "{} to metadata endpoints, all answered{lat}{v1}.",
                plural(r.total, "request", "requests")
            )
        }
    };
    Finding {
        tag: FindingTag::Finding,
        ts: rfc3339(ts),
        node: node.name.to_string(),
        kind,
        container: container(cg, c),
        summary,
        evidence: ev,
        timeline: tl,
        fix,
        node_info: node.info.cloned(),
    }
}

/// The container a finding is about: its identity, with the cgroup filled in.
pub(super) fn container(cg: u64, c: &ContainerState) -> Container {
    let mut who = c.identity.as_deref().cloned().unwrap_or_default();
    if cg & crate::model::NETNS_KEY == 0 {
        who.cgroup_id = Some(cg);
    }
    if who.cgroup.is_none() {
        who.cgroup = c.cgroup.clone();
    }
    who
}
