//! Outcome rules: what an exchange's or a connect's outcome says about its
//! container (token failures, hop-limit episodes, endpoint health, the
//! attempts' timeline).
use super::{exchange::Cx, *};
pub(super) fn undo_lost(cx: &mut Cx, i: usize) {
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

pub(super) fn clear_token_failure(c: &mut ContainerState) {
    c.episode = None;
    c.token_failed_since = None;
    c.token_failed_last = None;
    c.token_failed_outcome = None;
    c.failed_token_requests = 0;
    c.tokenless_since_failure = 0;
}

/// Record the outcome of exchange `i` and what it says about the container.
pub(super) fn set_outcome(cx: &mut Cx, i: usize, new: Outcome) {
    let ts = cx.ts;
    // A lost reply delivered after all: its held `lost` line is void.
    cx.flow.exchanges[i].held = None;
    if cx.cfg.exchanges != Exchanges::None {
        let hops = cx.c.forwarding_hops;
        let process = cx.c.process.as_ref();
        let mut ev =
            exchange_event(&cx.flow.exchanges[i], cx.flow.endpoint, process, hops, new, ts);
        if new == Outcome::Lost {
            // Decided at the drop, before the client gave up: held.
            cx.flow.exchanges[i].held = Some(Box::new(ev));
        } else {
            if !matches!(new, Outcome::Status(_)) {
                ev.waited_ms = waited_ms(cx.c, &cx.flow.exchanges[i]);
            }
            cx.fx.done.push(ev);
        }
    }
    if new == Outcome::Timeout {
        // Decided when the client gave up (or time ran out): its wait ends.
        count_wait(cx, i);
    }
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
    let mut imdsv1 = false;
    if let Some(a) = c.attempt_mut(attempt) {
        a.outcome = new;
        a.latency = latency;
        a.reply_ttl = reply_ttl;
        imdsv1 = a.imdsv1;
    }
    if let Some(l) = latency {
        c.latency.add(l);
        c.counts.answered(kind, l);
    }
    if matches!(new, Outcome::Status(s) if state::throttled(s)) {
        c.counts.throttled += 1;
    }
    match new {
        Outcome::Status(s) => {
            if let Some(ep) = endpoint {
                endpoint_ok(c, ep, req_ts, ts);
            }
            if (200..300).contains(&s) || s == 404 {
                c.last_success = Some(c.last_success.map_or(ts, |t| t.max(ts)));
            }
            if imdsv1 && (s == 401 || (200..300).contains(&s)) {
                cx.fx.tokens_required = Some(s == 401);
            }
            if (200..300).contains(&s) {
                // IMDSv1 exposure: a tokenless request IMDS answered. One
                // refused with 401 exposed nothing (token_rejected says why).
                if imdsv1 && c.token_failed_since.is_some_and(|t| req_ts > t) {
                    c.tokenless_since_failure += 1;
                }
                for st in [&mut c.s400, &mut c.s401, &mut c.s403] {
                    if let Some(x) = st {
                        x.paths.retain(|p| p != &path);
                        if x.paths.is_empty() {
                            *st = None;
                        }
                    }
                }
                if kind == ReqKind::Credentials {
                    c.node_credentials += 1;
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

pub(super) fn token_failed(c: &mut ContainerState, req_ts: Ts, how: Outcome) {
    c.failed_token_requests += 1;
    c.token_failed_outcome = Some(how);
    c.token_failed_last = Some(c.token_failed_last.map_or(req_ts, |t| t.max(req_ts)));
    if c.token_failed_since.is_none_or(|t| req_ts < t) {
        c.token_failed_since = Some(req_ts);
        // Tokenless requests may already have gone out (the failure is
        // decided at a timeout, the client moved on at the same moment).
        c.tokenless_since_failure =
            c.timeline.iter().filter(|a| a.imdsv1 && a.ts > req_ts && a.answered()).count() as u64;
    }
}

/// The `exchange` event of exchange `ex`, decided `new` at `ts` (node,
/// flow and workload are the caller's to add).
fn exchange_event(
    ex: &Exchange,
    endpoint: Option<SocketAddr>,
    process: Option<&(u32, std::sync::Arc<str>)>,
    hops: Option<u8>,
    new: Outcome,
    ts: Ts,
) -> Event {
    let mut ev = Event::new(Kind::Exchange, ex.req_ts, "".into());
    ev.outcome = settled(new);
    ev.dst = endpoint;
    if let Some((pid, comm)) = process {
        ev.pid = Some(*pid);
        ev.comm = Some(comm.clone()).filter(|c| !c.is_empty());
    }
    ev.method = Some(ex.method.clone());
    ev.path = Some(ex.path.clone());
    ev.token_header = ex.token_header;
    ev.token_ttl_header = ex.ttl_header;
    ev.ttl = ex.ttl;
    ev.hops = hops;
    ev.host_egress_ttl = ex.ttl.zip(hops).map(|(t, h)| t.saturating_sub(h));
    ev.retransmits = (ex.retransmits > 0).then_some(ex.retransmits);
    if let Some(r) = &ex.resp {
        ev.status = r.status;
        ev.reply_ttl = r.ttl_at_host;
        ev.iface = r.iface.clone();
        ev.delivered = Some(r.delivered);
        if r.dropped {
            ev.reason = r.drop_reason.clone();
            ev.location = r.drop_location.clone();
        }
    } else {
        ev.delivered = Some(false);
    }
    if matches!(new, Outcome::Status(_)) {
        ev.latency_ms = Some(round3(secs(since(ex.req_ts, ts)) * 1000.0));
    }
    ev
}

/// How long the client waited on an unanswered exchange: to its close,
/// else its last packet.
pub(super) fn waited_ms(c: &ContainerState, ex: &Exchange) -> Option<f64> {
    let a = c.timeline.iter().rev().find(|a| a.id == ex.attempt)?;
    Some(round3(secs(since(ex.req_ts, a.gave_up())) * 1000.0))
}

/// Add the client's wait on exchange `i` (no reply came) to the
/// container's `waited_us`, once.
pub(super) fn count_wait(cx: &mut Cx, i: usize) {
    if std::mem::replace(&mut cx.flow.exchanges[i].waited, true) {
        return;
    }
    if let Some(ms) = waited_ms(cx.c, &cx.flow.exchanges[i]) {
        cx.c.counts.waited_us += (ms * 1000.0) as u64;
    }
}

/// The wire name of a decided outcome.
pub(super) fn settled(o: Outcome) -> Option<crate::model::Outcome> {
    use crate::model::Outcome as M;
    match o {
        Outcome::Pending => None,
        Outcome::Status(s) if state::throttled(s) => Some(M::Throttled),
        Outcome::Status(_) => Some(M::Answered),
        Outcome::Lost => Some(M::Lost),
        Outcome::Timeout => Some(M::Timeout),
        Outcome::Refused => Some(M::Refused),
    }
}

/// A connect that never got through.
pub(super) fn connect_failed(cx: &mut Cx, syn: Ts, how: Outcome) {
    let ts = cx.ts;
    if cx.cfg.exchanges != Exchanges::None {
        let mut ev = Event::new(Kind::Exchange, syn, "".into());
        ev.outcome = settled(how);
        ev.dst = cx.flow.endpoint;
        if let Some((pid, comm)) = &cx.c.process {
            ev.pid = Some(*pid);
            ev.comm = Some(comm.clone()).filter(|c| !c.is_empty());
        }
        ev.delivered = Some(false);
        ev.reason = cx.flow.other_drop_reason.clone();
        cx.fx.done.push(ev);
    }
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
            client_last: ts,
            closed: None,
        },
        cx.cfg.timeline_cap,
    );
    if let Some(ep) = endpoint {
        if how == Outcome::Refused || !had_ttl_drop {
            endpoint_failed(c, ep, how, syn, ts, other_drop.as_ref());
        }
    }
}

pub(super) fn endpoint_ok(c: &mut ContainerState, ep: SocketAddr, attempt_ts: Ts, now: Ts) {
    let e = c.endpoint_mut(ep, now);
    e.last_ok = Some(e.last_ok.map_or(attempt_ts, |t| t.max(attempt_ts)));
}

pub(super) fn endpoint_failed(
    c: &mut ContainerState,
    ep: SocketAddr,
    how: Outcome,
    attempt_ts: Ts,
    now: Ts,
    reason: Option<&String>,
) {
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
