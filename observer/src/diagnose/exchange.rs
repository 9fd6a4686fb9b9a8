//! The exchange state machine: one packet event applied to its flow (the
//! connect, HTTP exchanges matched FIFO, replies identified by their first
//! sequence number wherever they are seen: host_ingress, drop, ICMP,
//! delivery) and its container (forwarding hops, the node's hop limit).
use super::{
    api::{make_room_containers, make_room_flows},
    outcome::*,
    *,
};
/// What handling one event changed beyond its flow and container.
#[derive(Default)]
pub(super) struct Effects {
    /// TTL of a token reply at the host: the node's hop limit.
    pub hop_limit: Option<u8>,
    /// What a tokenless AWS IMDS request's answer says of the instance:
    /// true, tokens required (401); false, optional (2xx).
    pub tokens_required: Option<bool>,
    /// Exchanges decided (`exchange` events without node, flow or
    /// workload; the caller knows those).
    pub done: Vec<Event>,
    /// The connection is over (the client closed it, or either side reset
    /// it): the flow is forgotten once late packets had time to come.
    pub ended: bool,
}

/// One event's flow and container.
pub(super) struct Cx<'a> {
    pub cfg: &'a Config,
    pub ts: Ts,
    pub flow: &'a mut FlowState,
    pub c: &'a mut ContainerState,
    pub fx: Effects,
}

/// Decide the connect and the exchanges of a flow whose time is up (all of
/// them when `all`, for a flow being evicted). True if anything changed.
pub(super) fn resolve_due(cx: &mut Cx, now: Ts, all: bool) -> bool {
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
        let due = all || closed_due || since(ex.req_ts, now) >= cx.cfg.request_timeout;
        if ex.outcome == Outcome::Pending && due {
            unanswered(cx, i);
            changed = true;
        }
    }
    if all
        || closed_due
        || cx.flow.exchanges.iter().any(|e| {
            (e.held.is_some() || (e.outcome == Outcome::Lost && !e.waited))
                && since(e.req_ts, now) >= cx.cfg.request_timeout
        })
    {
        release_held(cx);
    }
    changed
}

/// Apply one packet event to its flow and container. False if it could not
/// be attributed (no flow, or a flow never seen with a cgroup).
pub(super) fn handle(
    node: &mut NodeState,
    cfg: &Config,
    stats: &mut Stats,
    kind: Kind,
    ev: &Event,
    ts: Ts,
) -> bool {
    let Some(flow_id) = ev.flow else { return false };
    let Some(cg) = node.workload_of(ev) else { return false };
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
    c.learn_identity(&ev.container);
    let mut cx = Cx { cfg, ts, flow, c, fx: Effects::default() };
    // The uplinks' sightings folded into a reply's record: as if their own
    // events had come first, as they do at `--events packets`.
    if let Some(h) = &ev.host {
        if let Some((seq, flags, ttl)) = h.request {
            sample_ttl(&mut cx, seq, flags, ttl, false);
        }
        if h.ttl.is_some() {
            let status = h.status.or(ev.status);
            host_ingress(&mut cx, ev.seq, status, payload(ev), h.ttl, h.iface.as_ref());
        }
    }
    match kind {
        Kind::Request => on_request(&mut cx, ev),
        Kind::Reply => on_reply(&mut cx, ev),
        Kind::HostIngress => on_host_ingress(&mut cx, ev),
        Kind::HostEgress => on_host_egress(&mut cx, ev),
        Kind::Drop => on_drop(&mut cx, ev),
        Kind::LostEvents
        | Kind::Suppressed
        | Kind::Exchange
        | Kind::Summary
        | Kind::Node
        | Kind::OutputDropped => {}
    }
    let watch = cx.flow.has_pending();
    let fx = cx.fx;
    if watch {
        node.watch.insert(flow_id);
    }
    if fx.ended {
        node.ended(flow_id, ts);
    }
    node.decided(flow_id, cg, fx.done);
    node.mark(cg);
    node.learn_tokens(fx.tokens_required);
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

pub(super) fn payload(ev: &Event) -> bool {
    ev.len.is_none_or(|l| l > 0)
}

/// Forwarding hops: a packet the socket sent and the same packet (flow, seq,
/// flags) leaving the uplink, whichever is seen first.
pub(super) fn sample_ttl(cx: &mut Cx, seq: u32, flags: TcpFlags, ttl: u8, sent: bool) {
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

pub(super) fn on_request(cx: &mut Cx, ev: &Event) {
    let flags = ev.flags();
    if cx.flow.endpoint.is_none() {
        cx.flow.endpoint = ev.dst;
    }
    if let (Some(seq), Some(ttl)) = (ev.seq, ev.ttl) {
        sample_ttl(cx, seq, flags, ttl, true);
    }
    if flags.is_syn() && cx.flow.syn_ts.is_none() && !cx.flow.connect_done {
        cx.flow.syn_ts = Some(cx.ts);
    }
    if let (Some(method), Some(path)) = (&ev.method, &ev.path) {
        // Marked by the pipeline; recordings from before the mark are
        // recognised by their sequence number.
        let retransmitted =
            ev.retransmit == Some(true) || ev.seq.is_some_and(|s| cx.flow.req_seqs.contains(&s));
        if retransmitted {
            if let Some(ex) = cx
                .flow
                .exchanges
                .iter_mut()
                .rev()
                .find(|e| e.req_seq.is_some() && e.req_seq == ev.seq)
            {
                ex.retransmits += 1;
            }
        } else {
            if let Some(s) = ev.seq {
                cx.flow.req_seqs.push_back(s);
                if cx.flow.req_seqs.len() > MAX_REQ_SEQS {
                    cx.flow.req_seqs.pop_front();
                }
            }
            // The client moved on from what it was waiting for here.
            release_held(cx);
            new_request(cx, ev, method, path);
        }
    }
    let closing = flags.intersects(TcpFlags::FIN | TcpFlags::RST);
    if closing && cx.flow.closed_at.is_none() {
        cx.flow.closed_at = Some(cx.ts);
        cx.fx.ended = true;
    }
    // How long the client waited on its latest attempt here: until its last
    // packet, or its close.
    if let Some(id) = cx.flow.exchanges.back().map(|e| e.attempt) {
        let ts = cx.ts;
        if let Some(a) = cx.c.attempt_mut(id) {
            a.client_last = a.client_last.max(ts);
            if closing && a.closed.is_none() && ts >= a.ts {
                a.closed = Some(ts);
            }
        }
    }
    if closing {
        release_held(cx);
    }
}

/// Hand over the `exchange` events held for lost replies, saying how long
/// the client waited on each (to its close, else its last packet).
pub(super) fn release_held(cx: &mut Cx) {
    for i in 0..cx.flow.exchanges.len() {
        if cx.flow.exchanges[i].outcome == Outcome::Lost {
            count_wait(cx, i);
        }
        let Some(mut ev) = cx.flow.exchanges[i].held.take() else { continue };
        ev.waited_ms = waited_ms(cx.c, &cx.flow.exchanges[i]);
        cx.fx.done.push(*ev);
    }
}

pub(super) fn new_request(cx: &mut Cx, ev: &Event, method: &str, path: &str) {
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
    c.fetches.count(kind, ts);
    c.requests.total += 1;
    match kind {
        ReqKind::Token => c.requests.token += 1,
        ReqKind::Credentials => c.requests.credentials += 1,
        ReqKind::Other => c.requests.other += 1,
    }
    if aws {
        c.asked.note(kind, path);
    }
    if let Some(sdk) = ev.sdk.as_ref().filter(|s| c.sdk.as_ref() != Some(*s)) {
        c.sdk = Some(sdk.clone());
    }
    let imdsv1 = aws && kind != ReqKind::Token && !token_header;
    if aws && kind != ReqKind::Token {
        if token_header {
            c.requests.imdsv2 += 1;
        } else {
            c.requests.imdsv1 += 1;
        }
    }
    let id = c.next_attempt;
    c.next_attempt += 1;
    if let Some(pid) = ev.pid.filter(|p| c.process.as_ref().is_none_or(|(q, _)| q != p)) {
        c.process = Some((pid, ev.comm.clone().unwrap_or_default()));
    }
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
            client_last: ts,
            closed: None,
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
        token_header: ev.token_header,
        req_seq: ev.seq,
        retransmits: 0,
        ttl: ev.ttl,
        resp: None,
        outcome: Outcome::Pending,
        held: None,
        waited: false,
    };
    let flow = &mut *cx.flow;
    flow.exchanges.push_back(ex);
    if flow.exchanges.len() > MAX_EXCHANGES {
        // Prefer forgetting a finished exchange.
        let i = flow.exchanges.iter().position(|e| e.outcome != Outcome::Pending).unwrap_or(0);
        flow.exchanges.remove(i);
    }
}

pub(super) fn on_reply(cx: &mut Cx, ev: &Event) {
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
        cx.fx.ended = true;
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

pub(super) fn on_host_ingress(cx: &mut Cx, ev: &Event) {
    host_ingress(cx, ev.seq, ev.status, payload(ev), ev.ttl, ev.iface.as_ref());
}

/// A reply's segment arriving on an uplink.
pub(super) fn host_ingress(
    cx: &mut Cx,
    seq: Option<u32>,
    status: Option<u16>,
    payload: bool,
    ttl: Option<u8>,
    iface: Option<&std::sync::Arc<str>>,
) {
    if status.is_none() && !payload {
        return;
    }
    let Some(i) = match_resp(cx.flow, seq, status, payload) else { return };
    let ex = &mut cx.flow.exchanges[i];
    let r = ex.resp.as_mut().expect("matched");
    r.seen_at_host = true;
    if ttl.is_some() {
        r.ttl_at_host = ttl;
    }
    if r.iface.is_none() {
        r.iface = iface.cloned();
    }
    if ex.kind == ReqKind::Token && r.status.is_some() {
        cx.fx.hop_limit = r.ttl_at_host.or(cx.fx.hop_limit);
    }
    settle(cx, i);
}

pub(super) fn on_host_egress(cx: &mut Cx, ev: &Event) {
    if let (Some(seq), Some(ttl)) = (ev.seq, ev.ttl) {
        sample_ttl(cx, seq, ev.flags(), ttl, false);
    }
}

/// A TTL (hop limit) expiry while forwarding: by reason name, or (kernels
/// without reasons) by where the kernel freed a packet whose TTL was spent.
pub(super) fn is_ttl_drop(ev: &Event) -> bool {
    if ev.via.is_some() {
        return true;
    }
    let r = ev.reason.as_deref().unwrap_or("");
    let spent = ev.ttl.is_none_or(|t| t <= 1);
    let forwarding =
        ev.location.as_deref().is_some_and(|l| crate::capture::kallsyms::FORWARD.contains(&l));
    r.contains("TTL") || r.contains("HOP_LIMIT") || (spent && (r == "IP_INHDR" || forwarding))
}

pub(super) fn on_drop(cx: &mut Cx, ev: &Event) {
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
            r.drop_reason = ev.reason.clone().or(r.drop_reason.take());
            r.drop_location = ev.location.clone().or(r.drop_location.take());
            if ex.kind == ReqKind::Token && !r.seen_at_host && r.status.is_some() {
                cx.fx.hop_limit = r.ttl_at_host.or(cx.fx.hop_limit);
            }
            settle(cx, i);
        }
        None if payload(ev) => {
            // Its reply has not shown up yet (events slightly out of order),
            // or the request carried no ack: hold it.
            let d = PendingDrop {
                seq: ev.seq,
                ttl: ev.ttl,
                reason: ev.reason.clone(),
                location: ev.location.clone(),
            };
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
pub(super) fn match_resp(
    flow: &mut FlowState,
    seq: Option<u32>,
    status: Option<u16>,
    payload: bool,
) -> Option<usize> {
    if let Some(s) = seq {
        if let Some(i) =
            flow.exchanges.iter().position(|e| e.resp.as_ref().is_some_and(|r| r.seq == Some(s)))
        {
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
    let i = by_ack
        .or_else(|| status.and_then(|_| flow.exchanges.iter().position(|e| e.resp.is_none())))?;
    let mut r = Resp { seq, status, ..Default::default() };
    if let Some(s) = seq {
        if let Some(p) = flow.pending_drops.iter().position(|d| d.seq == Some(s)) {
            let d = flow.pending_drops.remove(p).expect("found");
            r.dropped = true;
            r.ttl_at_host = d.ttl;
            r.drop_reason = d.reason;
            r.drop_location = d.location;
        }
    }
    flow.exchanges[i].resp = Some(r);
    Some(i)
}

/// Decide an exchange from what is known about its reply.
pub(super) fn settle(cx: &mut Cx, i: usize) {
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
pub(super) fn unanswered(cx: &mut Cx, i: usize) {
    let dropped = cx.flow.exchanges[i].resp.as_ref().is_some_and(|r| r.dropped && !r.delivered);
    if dropped {
        set_outcome(cx, i, Outcome::Lost);
        return;
    }
    if cx.flow.exchanges[i].resp.is_none() {
        if let Some(d) = cx.flow.pending_drops.pop_front() {
            cx.flow.exchanges[i].resp = Some(Resp {
                seq: d.seq,
                ttl_at_host: d.ttl,
                dropped: true,
                drop_reason: d.reason,
                drop_location: d.location,
                ..Default::default()
            });
            set_outcome(cx, i, Outcome::Lost);
            return;
        }
    }
    set_outcome(cx, i, Outcome::Timeout);
}
