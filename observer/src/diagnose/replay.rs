//! Offline: a recorded JSON-lines stream (a file, `kubectl logs` of many
//! nodes) through the same engine as a live run. Above the packet level,
//! an `exchange` event replays its decided outcome through the same
//! outcome rules the packets went through, and a `summary` adds the healthy
//! exchanges it counts: `report` and `tui --from` reach the same verdicts
//! from every `--events` level.
use std::io::{self, BufRead};

use super::{
    api::make_room_containers,
    exchange::{Cx, Effects, new_request},
    outcome::{connect_failed, set_outcome},
    *,
};
use crate::model::{Line, Outcome as Settled, read_line};

/// A recorded stream, diagnosed.
#[derive(Debug, Default)]
pub struct StreamDiagnosis {
    /// The findings at the end of the stream, worst first (what `report`
    /// prints).
    pub findings: Vec<Finding>,
    /// The finding lines a live run would have written, in order (kept
    /// for the tests only: `report` holds no more than what it prints).
    #[cfg(test)]
    pub emitted: Vec<Finding>,
    /// Events fed to the engine.
    pub events: u64,
    /// Lines not fed to the engine, by why.
    pub skipped: Skipped,
    /// Records the capture reported lost.
    pub lost_events: u64,
}

/// Lines of a stream that are not events the engine can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Not JSON: garbage, a truncated line, not UTF-8 (or a log line).
    pub not_json: u64,
    /// JSON, but not an event: no or an unknown `type`, missing fields.
    pub not_event: u64,
    /// `"type":"finding"` lines: the engine recomputes findings from events.
    pub findings: u64,
    /// Events whose `ts` is not an RFC 3339 time.
    pub bad_time: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.not_json + self.not_event + self.findings + self.bad_time
    }

    /// "3 not JSON (...), 1 finding line (...)", or None when nothing was
    /// skipped.
    pub fn describe(&self) -> Option<String> {
        let s = |n: u64| if n == 1 { "" } else { "s" };
        let parts: Vec<String> = [
            (self.not_json, "not JSON (garbage, truncated or a log line)".to_string()),
            (self.not_event, "JSON but not an event".to_string()),
            (
                self.findings,
                format!(
                    "finding line{} (report reads the events `run` writes, not findings)",
                    s(self.findings)
                ),
            ),
            (self.bad_time, format!("event{} with a bad timestamp", s(self.bad_time))),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} {why}"))
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

#[cfg(test)]
/// Diagnose a JSON-lines event stream (a file, or `kubectl logs` of several
/// nodes) with the same engine as a live run.
pub fn diagnose_stream(r: impl BufRead) -> io::Result<StreamDiagnosis> {
    diagnose_stream_with(r, Config::default())
}

pub fn diagnose_stream_with(mut r: impl BufRead, cfg: Config) -> io::Result<StreamDiagnosis> {
    let mut d = Diagnoser::new(cfg);
    let mut out = StreamDiagnosis::default();
    let mut line = Vec::new();
    while let Some(kept) = read_line(&mut r, &mut line)? {
        if !kept {
            out.skipped.not_json += 1;
            continue;
        }
        match Line::parse(&line) {
            None => {}
            Some(Line::Event(ev)) => {
                let _found = d.observe(&ev);
                #[cfg(test)]
                out.emitted.extend(_found);
                out.events += 1;
            }
            Some(Line::BadTime) => out.skipped.bad_time += 1,
            Some(Line::Finding) => out.skipped.findings += 1,
            Some(Line::NotEvent) => out.skipped.not_event += 1,
            Some(Line::NotJson) => out.skipped.not_json += 1,
        }
    }
    let _settled = d.settle();
    #[cfg(test)]
    out.emitted.extend(_settled);
    out.findings = d.findings();
    out.lost_events = d.stats().lost_events;
    Ok(out)
}

/// Apply one `exchange` or `summary` event. False if it names no workload.
pub(super) fn record(node: &mut NodeState, cfg: &Config, stats: &mut Stats, ev: &Event) -> bool {
    let Some(cg) = ev.workload_key() else { return false };
    if !node.containers.contains_key(&cg) {
        if node.containers.len() >= cfg.max_containers_per_node {
            make_room_containers(node, stats);
        }
        node.containers.insert(cg, ContainerState::new(ev.ts));
    }
    if let Some(t) = ev.hop_limit.filter(|t| node.hop_limit != Some(*t)) {
        node.hop_limit = Some(t);
        let all: Vec<u64> = node.containers.keys().copied().collect();
        for k in all {
            node.mark(k);
        }
    }
    let c = node.containers.get_mut(&cg).expect("inserted");
    c.last_seen = c.last_seen.max(ev.ts);
    if ev.cgroup.is_some() && c.cgroup != ev.cgroup {
        c.cgroup = ev.cgroup.clone();
    }
    c.learn_identity(&ev.container);
    if ev.hops.is_some() {
        c.forwarding_hops = ev.hops;
    }
    match (&ev.summary, ev.kind) {
        (Some(s), Kind::Summary) => summary(c, ev.ts, s),
        (_, Kind::Exchange) => {
            let tokens = exchange(cfg, c, cg, ev);
            node.learn_tokens(tokens);
        }
        _ => {}
    }
    node.mark(cg);
    true
}

/// Replay one `exchange` line; returns what its answer said of the
/// instance's tokens (`Effects::tokens_required`).
fn exchange(cfg: &Config, c: &mut ContainerState, cg: u64, ev: &Event) -> Option<bool> {
    let how = match (ev.outcome, ev.status) {
        (Some(Settled::Answered | Settled::Throttled), Some(s)) => Outcome::Status(s),
        (Some(Settled::Lost), _) => Outcome::Lost,
        (Some(Settled::Timeout), _) => Outcome::Timeout,
        (Some(Settled::Refused), _) => Outcome::Refused,
        _ => return None,
    };
    // A flow of its own, for this one exchange: the rules read only it.
    let mut flow = FlowState::new(cg, ev.ts);
    flow.endpoint = ev.dst;
    flow.other_drop_reason = ev.reason.clone().filter(|_| how != Outcome::Lost);
    if how == Outcome::Lost {
        flow.ttl_drops = 1;
    }
    let mut cx = Cx { cfg, ts: ev.ts, flow: &mut flow, c, fx: Effects::default() };
    let (Some(method), Some(path)) = (&ev.method, &ev.path) else {
        // A connect that never got through.
        connect_failed(&mut cx, ev.ts, how);
        return None;
    };
    new_request(&mut cx, ev, method, path);
    let ex = cx.flow.exchanges.back_mut()?;
    // Where the client gave up on it (seconds lost are counted to there).
    if let Some(ms) = ev.waited_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
        let gave_up = ev.ts + Duration::from_secs_f64(ms / 1e3);
        if let Some(a) = cx.c.attempt_mut(ex.attempt) {
            a.closed = Some(gave_up);
            a.client_last = gave_up;
        }
    }
    ex.resp = Some(Resp {
        status: ev.status,
        ttl_at_host: ev.reply_ttl,
        seen_at_host: ev.reply_ttl.is_some(),
        iface: ev.iface.clone(),
        dropped: how == Outcome::Lost || ev.reason.is_some(),
        delivered: ev.delivered == Some(true),
        ..Default::default()
    });
    // Decided when the reply was delivered; else at the request (the
    // line does not say when the client gave up).
    if let Some(ms) = ev.latency_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
        cx.ts = ev.ts + Duration::from_secs_f64(ms / 1e3);
    }
    let i = cx.flow.exchanges.len() - 1;
    set_outcome(&mut cx, i, how);
    cx.fx.tokens_required
}

fn summary(c: &mut ContainerState, ts: Ts, s: &crate::model::Summary) {
    let r = &mut c.requests;
    r.total += s.requests;
    r.token += s.token;
    r.credentials += s.credentials;
    r.other += s.other;
    r.imdsv2 += s.imdsv2;
    // Summed exchanges are healthy ones: answered, tokens delivered.
    c.tokens_ok += s.token;
    c.node_credentials += s.credentials;
    let end = ts + Duration::from_secs_f64(s.interval_s.clamp(0.0, 1e9));
    c.last_success = Some(c.last_success.map_or(end, |t| t.max(end)));
    c.last_seen = c.last_seen.max(end);
}
