//! Reading back what `run` writes above the packet level: an `exchange`
//! event replays its decided outcome through the same outcome rules the
//! packets went through; a `summary` adds the healthy exchanges it counts.
//! So `report` and `tui --from` reach the same verdicts from a stream of
//! findings, exchanges and summaries as from the packets themselves.
use super::{
    api::make_room_containers,
    exchange::{Cx, Effects, new_request},
    outcome::{connect_failed, set_outcome},
    *,
};
use crate::model::Outcome as Settled;

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
    if ev.container.is_some() && c.identity != ev.container {
        c.identity = ev.container.clone();
    }
    if ev.hops.is_some() {
        c.forwarding_hops = ev.hops;
    }
    match (&ev.summary, ev.kind) {
        (Some(s), Kind::Summary) => summary(c, ev.ts, s),
        (_, Kind::Exchange) => exchange(cfg, c, cg, ev),
        _ => {}
    }
    node.mark(cg);
    true
}

fn exchange(cfg: &Config, c: &mut ContainerState, cg: u64, ev: &Event) {
    let how = match (ev.outcome, ev.status) {
        (Some(Settled::Answered), Some(s)) => Outcome::Status(s),
        (Some(Settled::Lost), _) => Outcome::Lost,
        (Some(Settled::Timeout), _) => Outcome::Timeout,
        (Some(Settled::Refused), _) => Outcome::Refused,
        _ => return,
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
        return;
    };
    new_request(&mut cx, ev, method, path);
    let Some(ex) = cx.flow.exchanges.back_mut() else { return };
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
    let end = ts + Duration::from_secs_f64(s.interval_s.clamp(0.0, 1e9));
    c.last_success = Some(c.last_success.map_or(end, |t| t.max(end)));
    c.last_seen = c.last_seen.max(end);
}
