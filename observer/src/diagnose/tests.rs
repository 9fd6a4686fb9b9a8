//! Diagnosis on recorded event sequences (no root). The builder below emits
//! the events the pipeline would for a client in a container `hops`
//! forwarding hops behind the host's uplink (masquerade NAT on the uplink,
//! flow/cgroup already resolved on host_* and drop events).
use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::*;
use crate::model::{Event, Kind, Proto, TcpFlags, rfc3339};

/// 2026-09-21T...Z: any fixed instant will do.
const T0: u64 = 1_790_000_000;

pub(crate) fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_millis(ms)
}

pub(crate) fn at(ms: u64) -> String {
    rfc3339(time(ms))
}

/// A process's cgroup on a node, `hops` forwarding hops from the uplink
/// (0 = the host's own network).
#[derive(Clone, Debug)]
pub(crate) struct Ctr {
    pub node: String,
    pub cg: u64,
    pub path: String,
    pub addr: String,
    pub hops: u8,
}

impl Ctr {
    pub fn new(node: &str, cg: u64, path: &str, addr: &str, hops: u8) -> Self {
        Self { node: node.into(), cg, path: path.into(), addr: addr.into(), hops }
    }

    /// A podman container one hop away on node-a.
    pub fn podman() -> Self {
        Self::new(
            "node-a",
            4242,
            "/libpod_parent/libpod-3f2a9c1b7d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd",
            "10.88.0.5",
            1,
        )
    }

    /// A host process (host network) on `node`.
    pub fn host(node: &str) -> Self {
        Self::new(node, 7, "/system.slice/imds-agent.service", "198.18.0.2", 0)
    }

    pub fn conn(&self, flow: u64) -> Conn {
        Conn::new(self.clone(), flow, "169.254.169.254:80")
    }
}

/// One TCP connection from a `Ctr` to an endpoint, with its sequence
/// numbers.
pub(crate) struct Conn {
    pub ctr: Ctr,
    pub flow: u64,
    pub dst: SocketAddr,
    pub isn: u32,
    pub cseq: u32,
    pub sseq: u32,
    /// Sequence number and TTL of the last reply that started a response.
    pub last_reply: Option<(u32, u16, u8)>,
}

pub(crate) struct Http<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub token: bool,
    pub ttl_header: bool,
}

impl Conn {
    pub fn new(ctr: Ctr, flow: u64, dst: &str) -> Self {
        let isn = (flow as u32).wrapping_mul(7919).wrapping_add(1000);
        Self {
            ctr,
            flow,
            dst: dst.parse().unwrap(),
            isn,
            cseq: isn,
            sseq: 5_000_000 + flow as u32 * 10,
            last_reply: None,
        }
    }

    fn local(&self) -> SocketAddr {
        format!("{}:{}", self.ctr.addr, 40000 + (self.flow % 20000)).parse().unwrap()
    }

    /// The tuple on the uplink: masqueraded when the client is behind the host.
    fn uplink_local(&self) -> SocketAddr {
        if self.ctr.hops == 0 {
            self.local()
        } else {
            format!("198.18.0.2:{}", 60000 + (self.flow % 5000)).parse().unwrap()
        }
    }

    fn base(&self, kind: Kind, ms: u64) -> Event {
        let mut e = Event::new(kind, time(ms), self.ctr.node.as_str().into());
        e.flow = Some(self.flow);
        e.cgroup_id = Some(self.ctr.cg);
        e.cgroup = Some(self.ctr.path.clone());
        e.proto = Some(Proto::Tcp);
        if matches!(kind, Kind::Request | Kind::Reply) {
            e.pid = Some(1234);
            e.comm = Some("python3".into());
        } else {
            e.iface = Some("eth0".into());
        }
        e
    }

    /// A packet the client sends: at its socket and leaving the uplink.
    fn send(&mut self, ms: u64, flags: &str, len: u32, http: Option<Http>) -> Vec<Event> {
        let mut req = self.base(Kind::Request, ms);
        req.src = Some(self.local());
        req.dst = Some(self.dst);
        req.ttl = Some(64);
        req.tcp_flags = Some(TcpFlags::parse(flags));
        req.seq = Some(self.cseq);
        req.ack = Some(if flags == "SYN" { 0 } else { self.sseq });
        req.len = Some(len);
        if let Some(h) = http {
            req.method = Some(h.method.into());
            req.path = Some(h.path.into());
            req.token_header = Some(h.token);
            req.token_ttl_header = Some(h.ttl_header);
        }
        let mut eg = self.base(Kind::HostEgress, ms);
        eg.src = Some(self.uplink_local());
        eg.dst = req.dst;
        eg.ttl = Some(64 - self.ctr.hops);
        eg.tcp_flags = req.tcp_flags;
        eg.seq = req.seq;
        eg.ack = req.ack;
        eg.len = req.len;
        self.cseq =
            self.cseq.wrapping_add(len + u32::from(flags.contains("SYN") || flags.contains("FIN")));
        vec![req, eg]
    }

    pub fn syn(&mut self, ms: u64) -> Vec<Event> {
        self.cseq = self.isn;
        self.send(ms, "SYN", 0, None)
    }

    /// The kernel retransmits the SYN (same sequence number).
    pub fn syn_again(&mut self, ms: u64) -> Vec<Event> {
        self.cseq = self.isn;
        self.send(ms, "SYN", 0, None)
    }

    /// A packet from the endpoint arriving on the uplink with `host_ttl`:
    /// delivered when it survives the forwarding hops, else dropped (kernel
    /// drop, plus an ICMP time exceeded when `icmp`).
    fn receive(
        &mut self,
        ms: u64,
        flags: &str,
        len: u32,
        status: Option<u16>,
        host_ttl: u8,
        icmp: bool,
    ) -> Vec<Event> {
        let mut v = Vec::new();
        let mut hi = self.base(Kind::HostIngress, ms);
        hi.src = Some(self.dst);
        hi.dst = Some(self.uplink_local());
        hi.ttl = Some(host_ttl);
        hi.tcp_flags = Some(TcpFlags::parse(flags));
        hi.seq = Some(self.sseq);
        hi.ack = Some(self.cseq);
        hi.len = Some(len);
        hi.status = status;
        hi.cgroup = None;
        v.push(hi.clone());
        if host_ttl > self.ctr.hops {
            let mut r = self.base(Kind::Reply, ms);
            r.src = Some(self.dst);
            r.dst = Some(self.local());
            r.ttl = Some(host_ttl - self.ctr.hops);
            r.tcp_flags = hi.tcp_flags;
            r.seq = hi.seq;
            r.ack = hi.ack;
            r.len = hi.len;
            r.status = status;
            v.push(r);
        } else {
            v.extend(self.drops(ms, len, status, icmp));
        }
        v
    }

    fn drops(&self, ms: u64, len: u32, status: Option<u16>, icmp: bool) -> Vec<Event> {
        let mut v = Vec::new();
        let mut d = self.base(Kind::Drop, ms);
        d.cgroup = None;
        d.reason = Some("IP_INHDR".into());
        d.src = Some(self.dst);
        d.dst = Some(self.local());
        // The last forwarder drops it with TTL 1.
        d.ttl = Some(1);
        d.tcp_flags = Some(TcpFlags::PSH | TcpFlags::ACK);
        d.seq = Some(self.sseq);
        d.ack = Some(self.cseq);
        d.len = Some(len);
        d.status = status;
        v.push(d.clone());
        if icmp {
            let mut i = self.base(Kind::Drop, ms + 1);
            i.cgroup = None;
            i.reason = Some("TTL_EXCEEDED".into());
            i.via = Some("icmp_time_exceeded".into());
            i.src = d.src;
            i.dst = d.dst;
            i.ttl = Some(1);
            i.seq = d.seq;
            v.push(i);
        }
        v
    }

    pub fn synack(&mut self, ms: u64) -> Vec<Event> {
        let v = self.receive(ms, "SYN|ACK", 0, None, 64, false);
        self.sseq = self.sseq.wrapping_add(1);
        v
    }

    pub fn rst(&mut self, ms: u64) -> Vec<Event> {
        let mut r = self.base(Kind::Reply, ms);
        r.src = Some(self.dst);
        r.dst = Some(self.local());
        r.ttl = Some(64 - self.ctr.hops);
        r.tcp_flags = Some(TcpFlags::RST | TcpFlags::ACK);
        r.seq = Some(0);
        r.ack = Some(self.cseq);
        r.len = Some(0);
        vec![r]
    }

    /// SYN, SYN|ACK.
    pub fn connect(&mut self, ms: u64) -> Vec<Event> {
        let mut v = self.syn(ms);
        v.extend(self.synack(ms));
        v
    }

    pub fn request(&mut self, ms: u64, method: &str, path: &str, token: bool) -> Vec<Event> {
        let ttl_header = method == "PUT";
        self.send(ms, "PSH|ACK", 120, Some(Http { method, path, token, ttl_header }))
    }

    pub fn request_http(&mut self, ms: u64, h: Http) -> Vec<Event> {
        self.send(ms, "PSH|ACK", 120, Some(h))
    }

    pub fn put_token(&mut self, ms: u64) -> Vec<Event> {
        self.request(ms, "PUT", "/latest/api/token", false)
    }

    /// The endpoint answers; the reply leaves IMDS with `host_ttl` as seen
    /// at the uplink (the hop limit for token replies).
    pub fn respond(&mut self, ms: u64, status: u16, host_ttl: u8) -> Vec<Event> {
        let len = 56;
        self.last_reply = Some((self.sseq, status, host_ttl));
        let v = self.receive(ms, "PSH|ACK", len, Some(status), host_ttl, true);
        if host_ttl > self.ctr.hops {
            self.sseq = self.sseq.wrapping_add(len);
        }
        v
    }

    /// The endpoint retransmits its last reply (same sequence number, starts
    /// with the status line again).
    pub fn retransmit(&mut self, ms: u64, icmp: bool) -> Vec<Event> {
        let (seq, status, ttl) = self.last_reply.expect("a reply to retransmit");
        let saved = self.sseq;
        self.sseq = seq;
        let v = self.receive(ms, "PSH|ACK", 56, Some(status), ttl, icmp);
        self.sseq = saved;
        v
    }

    /// The client gives up: FIN.
    pub fn fin(&mut self, ms: u64) -> Vec<Event> {
        self.send(ms, "FIN|ACK", 0, None)
    }
}

/// Feed events, returning what was emitted.
pub(crate) fn feed(d: &mut Diagnoser, events: &[Event]) -> Vec<Finding> {
    events.iter().flat_map(|e| d.observe(e)).collect()
}

pub(crate) fn of(fs: &[Finding], kind: FindingKind) -> Vec<&Finding> {
    fs.iter().filter(|f| f.kind == kind).collect()
}

/// The hop-limit failure as an SDK meets it: the token reply (TTL 1) is lost,
/// the client gives up after 1 s and fetches credentials without a token;
/// that reply has `status`.
fn lost_token_then_credentials(ctr: &Ctr, status: u16) -> Vec<Event> {
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    v.extend(a.put_token(1));
    v.extend(a.respond(2, 200, 1));
    v.extend(a.fin(1001));
    let mut b = ctr.conn(2);
    v.extend(b.connect(1002));
    v.extend(b.request(1003, "GET", CREDS, false));
    v.extend(b.respond(1004, status, 64));
    v
}

fn one(fs: &[Finding], kind: FindingKind) -> &Finding {
    let v = of(fs, kind);
    assert_eq!(v.len(), 1, "expected one {kind}: {fs:#?}");
    v[0]
}

fn kinds(fs: &[Finding]) -> Vec<FindingKind> {
    fs.iter().map(|f| f.kind).collect()
}

fn outcomes(f: &Finding) -> Vec<(Option<&str>, Option<&str>, &str)> {
    f.timeline
        .iter()
        .map(|a| (a.method.as_deref(), a.path.as_deref(), a.outcome.as_str()))
        .collect()
}

const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
const ROLE: &str = "/latest/meta-data/iam/security-credentials/lab-role";

/// botocore against hop limit 1 from a container one hop away: one PUT,
/// reply lost (retransmitted twice), the client gives up after 1 s and
/// falls back to tokenless GETs.
pub(crate) fn hop_limit_failure() -> Vec<Event> {
    let ctr = Ctr::podman();
    let mut v = Vec::new();
    let mut a = ctr.conn(11);
    v.extend(a.connect(0));
    v.extend(a.put_token(1)); // ms 1
    v.extend(a.respond(2, 200, 1)); // host_ingress, drop, icmp at 2..3
    v.extend(a.retransmit(205, false));
    v.extend(a.retransmit(610, true));
    v.extend(a.fin(1001));
    let mut b = ctr.conn(12);
    v.extend(b.connect(1003));
    v.extend(b.request(1005, "GET", CREDS, false));
    v.extend(b.respond(1006, 200, 64));
    v.extend(b.request(1008, "GET", ROLE, false));
    v.extend(b.respond(1009, 200, 64));
    v.extend(b.fin(1010));
    v
}

#[test]
fn hop_limit_failure_is_found_at_the_first_drop_with_evidence_timeline_and_fix() {
    let mut d = Diagnoser::default();
    let events = hop_limit_failure();
    let put_ms = 1;
    let mut first_hop: Option<(usize, Finding)> = None;
    let mut emitted = Vec::new();
    for (i, e) in events.iter().enumerate() {
        for f in d.observe(e) {
            if f.kind == FindingKind::HopLimitExceeded && first_hop.is_none() {
                first_hop = Some((i, f.clone()));
            }
            emitted.push(f);
        }
    }
    let (i, first) = first_hop.expect("hop_limit_exceeded emitted");
    // Established by the kernel drop of the first token reply...
    assert_eq!(events[i].kind, Kind::Drop);
    assert!(events[i].via.is_none(), "established by the kernel drop, not the ICMP");
    assert_eq!(first.ts, at(2));
    // ...well before the client's own 1 s timeout.
    let ts = humantime::parse_rfc3339(&first.ts).unwrap();
    assert!(ts < time(put_ms) + Duration::from_secs(1));
    assert_eq!(first.evidence.reply_ttl_at_host, Some(1));
    assert_eq!(first.evidence.forwarding_hops, Some(1));
    assert_eq!(first.evidence.required_hop_limit, Some(2));
    assert_eq!(first.evidence.lost_replies, Some(1));
    assert_eq!(first.evidence.drops, Some(1));
    assert_eq!(outcomes(&first), vec![(Some("PUT"), Some("/latest/api/token"), "lost")]);

    // Updated per attempt the client made after it (two tokenless GETs);
    // not per retransmission.
    let hops = of(&emitted, FindingKind::HopLimitExceeded);
    assert_eq!(hops.len(), 3, "{hops:#?}");
    assert_eq!(hops.last().unwrap().timeline.len(), 3);
    assert_eq!(of(&emitted, FindingKind::Imdsv1Fallback).len(), 1);
    assert!(of(&emitted, FindingKind::Healthy).is_empty());

    let now = d.findings();
    assert_eq!(kinds(&now), vec![FindingKind::HopLimitExceeded, FindingKind::Imdsv1Fallback]);
    let hop = &now[0];
    assert_eq!(hop.node, "node-a");
    assert_eq!(hop.container.cgroup_id, Some(4242));
    assert_eq!(hop.container.cgroup.as_deref(), Some(Ctr::podman().path.as_str()));
    let e = &hop.evidence;
    assert_eq!(
        (e.reply_ttl_at_host, e.forwarding_hops, e.required_hop_limit),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(e.lost_replies, Some(1), "retransmissions of the same reply count once");
    assert_eq!(e.drops, Some(3), "three kernel drops: the reply and two retransmissions");
    assert_eq!(e.icmp_time_exceeded, Some(2), "ICMP is corroboration, not counted as drops");
    assert_eq!(e.node_hop_limit, Some(1));
    // Lost from the PUT (1 ms) to the next attempt (the GET at 1005 ms).
    assert!((e.seconds_lost.unwrap() - 1.004).abs() < 1e-6, "{:?}", e.seconds_lost);
    let r = e.requests.unwrap();
    assert_eq!((r.total, r.token, r.credentials, r.other, r.imdsv1, r.imdsv2), (3, 1, 2, 0, 2, 0));
    assert_eq!(
        outcomes(hop),
        vec![
            (Some("PUT"), Some("/latest/api/token"), "lost"),
            (Some("GET"), Some(CREDS), "ok"),
            (Some("GET"), Some(ROLE), "ok")
        ]
    );
    assert_eq!(hop.timeline[0].ts, at(1));
    assert_eq!(hop.timeline[1].latency_ms, Some(1.0));
    let fix = hop.fix.as_ref().expect("fix");
    assert_eq!(
        fix.command,
        "aws ec2 modify-instance-metadata-options --instance-id \"$INSTANCE_ID\" --http-put-response-hop-limit 2 --http-endpoint enabled"
    );
    assert_eq!(fix.launch_template, "MetadataOptions.HttpPutResponseHopLimit = 2");
    assert_eq!(fix.karpenter, "EC2NodeClass spec.metadataOptions.httpPutResponseHopLimit: 2");
    assert!(fix.eks_node_group.contains("HttpPutResponseHopLimit = 2"));
    assert!(
        hop.summary.contains("TTL 1") && hop.summary.contains("Raise the hop limit to 2"),
        "{}",
        hop.summary
    );

    let fb = &now[1];
    assert_eq!(fb.evidence.failed_token_requests, Some(1));
    assert_eq!(fb.evidence.tokenless_requests, Some(2));
    assert!(
        fb.summary.contains("security problem") && fb.summary.contains("SSRF"),
        "{}",
        fb.summary
    );
    assert!(fb.summary.contains("lost to the hop limit"), "{}", fb.summary);
    assert!(fb.fix.as_ref().unwrap().note.as_ref().unwrap().contains("--http-tokens required"));
}

/// 5.10 gives no drop reason: the kernel's drop carries only where it
/// happened (ip_forward). The finding and its evidence are the same.
#[test]
fn hop_limit_failure_without_drop_reasons_is_told_by_the_drop_location() {
    let located = |mut e: Event| {
        if e.kind == Kind::Drop && e.via.is_none() {
            e.reason = None;
            e.location = Some("ip_forward".into());
        }
        e
    };
    let mut d = Diagnoser::default();
    let first = hop_limit_failure()
        .into_iter()
        .map(located)
        .flat_map(|e| d.observe(&e))
        .find(|f| f.kind == FindingKind::HopLimitExceeded)
        .expect("hop_limit_exceeded without reasons");
    assert_eq!(first.ts, at(2), "at the kernel's drop, as with reasons");
    assert_eq!(first.evidence.drops, Some(1));
    assert_eq!(first.evidence.required_hop_limit, Some(2));

    // A drop elsewhere, or in ip_forward with TTL to spare, is no TTL drop.
    for (location, ttl) in [(None, 1), (Some("ip_forward"), 5)] {
        let mut d = Diagnoser::default();
        let found = hop_limit_failure()
            .into_iter()
            .map(|mut e| {
                if e.kind == Kind::Drop && e.via.is_none() {
                    e.reason = None;
                    e.location = location.map(str::to_string);
                    e.ttl = Some(ttl);
                }
                e
            })
            .filter(|e| e.via.is_none())
            .flat_map(|e| d.observe(&e))
            .find(|f| f.kind == FindingKind::HopLimitExceeded);
        assert!(
            found.as_ref().is_none_or(|f| f.evidence.drops.is_none()),
            "{location:?} ttl {ttl}: {found:#?}"
        );
    }
}

#[test]
fn finding_json_shape() {
    let mut d = Diagnoser::new(Config {
        instance_id: Some("i-0abc1234def567890".into()),
        ..Default::default()
    });
    feed(&mut d, &hop_limit_failure());
    let hop = d.findings().into_iter().next().unwrap();
    let v = serde_json::to_value(&hop).unwrap();
    assert_eq!(v["type"], "finding");
    assert_eq!(v["kind"], "hop_limit_exceeded");
    assert_eq!(v["node"], "node-a");
    assert_eq!(v["container"]["cgroup_id"], 4242);
    assert_eq!(v["evidence"]["reply_ttl_at_host"], 1);
    assert_eq!(v["evidence"]["forwarding_hops"], 1);
    assert_eq!(v["evidence"]["required_hop_limit"], 2);
    assert_eq!(v["evidence"]["lost_replies"], 1);
    assert_eq!(v["evidence"]["drops"], 3);
    assert!(v["evidence"].get("status").is_none(), "absent evidence is omitted");
    assert_eq!(v["timeline"][0]["outcome"], "lost");
    assert_eq!(v["timeline"][0]["method"], "PUT");
    assert_eq!(v["timeline"][1]["token"], false);
    assert!(v["fix"]["command"].as_str().unwrap().contains("--instance-id i-0abc1234def567890 "));
    assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    // Round trip.
    let line = serde_json::to_string(&hop).unwrap();
    let back: Finding = serde_json::from_str(&line).unwrap();
    assert_eq!(back, hop);
    // An event line is not a finding, and a container without a path omits it.
    assert!(serde_json::from_str::<Finding>(r#"{"type":"request","ts":"x","node":"n"}"#).is_err());
    let c = serde_json::to_value(Container { cgroup_id: Some(3), ..Default::default() }).unwrap();
    assert_eq!(c, serde_json::json!({"cgroup_id": 3}));
}

#[test]
fn instance_id_from_a_resource_name_node() {
    let mut d = Diagnoser::default();
    let mut ctr = Ctr::podman();
    ctr.node = "i-0123456789abcdef0.eu-west-1.compute.internal".into();
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    v.extend(a.put_token(1));
    v.extend(a.respond(2, 200, 1));
    feed(&mut d, &v);
    let f = d.findings();
    assert!(
        f[0].fix.as_ref().unwrap().command.contains("--instance-id i-0123456789abcdef0 "),
        "{f:#?}"
    );
}

/// AWS SDK for JavaScript v2: 4 token PUTs (1 s timeout each, backoff
/// 100/200/400 ms), each on a new connection, then tokenless GETs.
fn js_v2() -> Vec<Event> {
    let ctr = Ctr::podman();
    let mut v = Vec::new();
    let starts = [0u64, 1100, 2300, 3700];
    for (i, &t) in starts.iter().enumerate() {
        let mut c = ctr.conn(100 + i as u64);
        v.extend(c.connect(t));
        v.extend(c.put_token(t + 1));
        v.extend(c.respond(t + 2, 200, 1));
        v.extend(c.retransmit(t + 210, false));
        v.extend(c.fin(t + 1001));
    }
    let mut g = ctr.conn(200);
    v.extend(g.connect(4701));
    v.extend(g.request(4702, "GET", CREDS, false));
    v.extend(g.respond(4703, 200, 64));
    v.extend(g.request(4704, "GET", ROLE, false));
    v.extend(g.respond(4705, 200, 64));
    v
}

#[test]
fn js_v2_four_lost_puts_then_tokenless_gets() {
    let mut d = Diagnoser::default();
    let emitted = feed(&mut d, &js_v2());
    let hop_updates: Vec<_> = of(&emitted, FindingKind::HopLimitExceeded)
        .iter()
        .map(|f| (f.evidence.lost_replies.unwrap(), f.timeline.len()))
        .collect();
    // One update per lost retry and per attempt after it: not per packet.
    assert_eq!(hop_updates, vec![(1, 1), (2, 2), (3, 3), (4, 4), (4, 5), (4, 6)]);
    let now = d.findings();
    let hop = one(&now, FindingKind::HopLimitExceeded);
    let o: Vec<&str> = hop.timeline.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(o, vec!["lost", "lost", "lost", "lost", "ok", "ok"]);
    let puts: Vec<_> =
        hop.timeline.iter().take(4).map(|a| (a.method.as_deref(), a.ts.clone())).collect();
    assert_eq!(
        puts,
        vec![
            (Some("PUT"), at(1)),
            (Some("PUT"), at(1101)),
            (Some("PUT"), at(2301)),
            (Some("PUT"), at(3701))
        ]
    );
    assert_eq!(hop.evidence.lost_replies, Some(4));
    assert_eq!(hop.evidence.drops, Some(8));
    // (1101-1) + (2301-1101) + (3701-2301) + (4702-3701) ms
    let lost = hop.evidence.seconds_lost.unwrap();
    assert!((lost - 4.701).abs() < 1e-6, "{lost}");
    assert!(hop.summary.contains("4 IMDSv2 token replies"), "{}", hop.summary);
    let fb = one(&now, FindingKind::Imdsv1Fallback);
    assert_eq!(fb.evidence.failed_token_requests, Some(4));
    assert_eq!(fb.evidence.tokenless_requests, Some(2));
}

#[test]
fn seconds_lost_stops_where_the_client_gave_up() {
    let mut d = Diagnoser::default();
    let mut a = Ctr::podman().conn(1);
    let mut v = a.connect(0);
    v.extend(a.put_token(1000));
    v.extend(a.respond(1001, 200, 1));
    feed(&mut d, &v);
    // Still waiting: until the client's latest packet (its request).
    assert_eq!(d.findings()[0].evidence.seconds_lost, Some(0.0));
    // The kernel retransmits the request; the client waits on.
    let mut again = a.put_token(1400);
    for e in &mut again {
        e.seq = Some(a.isn + 1);
        e.retransmit = Some(true);
    }
    feed(&mut d, &again);
    assert_eq!(d.findings()[0].evidence.seconds_lost, Some(0.4));
    // It gives up at its 1 s timeout; the server still retransmits its
    // reply to a client that left, and time passes.
    feed(&mut d, &a.fin(2000));
    feed(&mut d, &a.retransmit(2200, true));
    feed(&mut d, &a.retransmit(2600, true));
    // A retransmitted FIN after the close adds nothing either.
    feed(&mut d, &a.fin(3000));
    d.tick(time(9000));
    let hop = one(&d.findings(), FindingKind::HopLimitExceeded).clone();
    assert_eq!(hop.evidence.seconds_lost, Some(1.0), "{hop:#?}");
    assert_eq!(hop.evidence.requests.unwrap().token, 1, "the retransmission is no new request");
    assert_eq!(hop.timeline.len(), 1);

    // It comes back a minute later: a new wait, not a minute lost.
    let mut b = Ctr::podman().conn(2);
    let mut v = b.connect(60_000);
    v.extend(b.put_token(60_001));
    v.extend(b.respond(60_002, 200, 1));
    v.extend(b.fin(61_001));
    feed(&mut d, &v);
    let hop = one(&d.findings(), FindingKind::HopLimitExceeded).clone();
    assert_eq!(hop.evidence.seconds_lost, Some(2.0), "{hop:#?}");
}

#[test]
fn a_retransmitted_request_is_no_new_attempt() {
    let mut d = Diagnoser::default();
    let mut a = Ctr::podman().conn(1);
    let mut v = a.connect(0);
    v.extend(a.request(1, "GET", CREDS, false));
    // The same request again, as the pipeline marks it (a recording made
    // before the mark is recognised by its sequence number instead).
    let mut again = v[v.len() - 2..].to_vec();
    for e in &mut again {
        e.ts = time(300);
        e.retransmit = Some(true);
    }
    v.extend(again);
    v.extend(a.respond(301, 200, 1));
    feed(&mut d, &v);
    let c = d.containers().next().unwrap();
    assert_eq!(c.requests().total, 1);
    assert_eq!(c.counts().requests.iter().flatten().sum::<u64>(), 1);
    assert_eq!(c.timeline().len(), 1);
}

#[test]
fn hop_limit_2_two_forwarding_hops_needs_3_and_is_healthy_at_3() {
    let ctr = Ctr::new("node-a", 77, "/lab/router/ctr", "10.99.0.2", 2);
    let run = |limit: u8| {
        let mut d = Diagnoser::default();
        let mut a = ctr.conn(5);
        let mut v = a.connect(0);
        v.extend(a.put_token(1));
        v.extend(a.respond(2, 200, limit));
        let mut b = ctr.conn(6);
        v.extend(b.connect(1003));
        v.extend(b.request(1004, "GET", CREDS, limit > 2));
        v.extend(b.respond(1005, 200, 64));
        feed(&mut d, &v);
        d
    };
    let d = run(2);
    let f = d.findings();
    let hop = one(&f, FindingKind::HopLimitExceeded);
    assert_eq!(hop.evidence.reply_ttl_at_host, Some(2));
    assert_eq!(hop.evidence.forwarding_hops, Some(2));
    assert_eq!(hop.evidence.required_hop_limit, Some(3));
    assert!(hop.fix.as_ref().unwrap().command.contains("--http-put-response-hop-limit 3 "));
    assert_eq!(d.hop_limit("node-a"), Some(2));

    let d = run(3);
    let f = d.findings();
    assert_eq!(kinds(&f), vec![FindingKind::Healthy], "{f:#?}");
    assert_eq!(f[0].evidence.forwarding_hops, Some(2));
    assert_eq!(f[0].evidence.node_hop_limit, Some(3));
    assert_eq!(f[0].evidence.requests.unwrap().imdsv2, 1);
    assert!(f[0].fix.is_none());
    assert_eq!(d.hop_limit("node-a"), Some(3));
}

#[test]
fn raising_the_hop_limit_resolves_the_finding() {
    let ctr = Ctr::podman();
    let mut d = Diagnoser::default();
    let v = lost_token_then_credentials(&ctr, 200);
    feed(&mut d, &v);
    assert_eq!(
        kinds(&d.findings()),
        vec![FindingKind::HopLimitExceeded, FindingKind::Imdsv1Fallback]
    );
    // The operator ran the fix; the next refresh gets its token.
    let mut c = ctr.conn(3);
    let mut v = c.connect(60_000);
    v.extend(c.put_token(60_001));
    v.extend(c.respond(60_002, 200, 2));
    v.extend(c.request(60_003, "GET", CREDS, true));
    v.extend(c.respond(60_004, 200, 64));
    let emitted = feed(&mut d, &v);
    assert_eq!(kinds(&emitted), vec![FindingKind::Healthy]);
    assert_eq!(kinds(&d.findings()), vec![FindingKind::Healthy]);
    assert_eq!(d.hop_limit("node-a"), Some(2));
}

#[test]
fn at_risk_before_the_first_token_request() {
    let host = Ctr::host("node-a");
    let ctr = Ctr::podman();
    // The host's own agent shows the hop limit (1) on the wire...
    let mut v = Vec::new();
    let mut h = host.conn(1);
    v.extend(h.connect(0));
    v.extend(h.put_token(1));
    v.extend(h.respond(2, 200, 1));
    v.extend(h.request(3, "GET", CREDS, true));
    v.extend(h.respond(4, 200, 64));
    // ...and a container one hop away only made a tokenless GET.
    let mut c = ctr.conn(2);
    v.extend(c.connect(10));
    v.extend(c.request(11, "GET", CREDS, false));
    v.extend(c.respond(12, 200, 64));
    let mut d = Diagnoser::default();
    let emitted = feed(&mut d, &v);
    let f = d.findings();
    assert_eq!(kinds(&f), vec![FindingKind::AtRisk, FindingKind::Healthy]);
    let risk = &f[0];
    assert_eq!(risk.container.cgroup_id, Some(4242));
    assert_eq!(risk.evidence.forwarding_hops, Some(1));
    assert_eq!(risk.evidence.node_hop_limit, Some(1));
    assert_eq!(risk.evidence.required_hop_limit, Some(2));
    assert!(risk.fix.as_ref().unwrap().command.contains("--http-put-response-hop-limit 2 "));
    assert!(risk.summary.contains("will be dropped"), "{}", risk.summary);
    let healthy = &f[1];
    assert_eq!(healthy.container.cgroup_id, Some(7));
    assert_eq!(healthy.evidence.forwarding_hops, Some(0));
    assert_eq!(of(&emitted, FindingKind::AtRisk).len(), 1);

    // Learned in the other order: the container's hops first, then the hop
    // limit from the host's token reply establishes at_risk.
    let mut d = Diagnoser::default();
    let mut v = Vec::new();
    let mut c = ctr.conn(2);
    v.extend(c.connect(10));
    v.extend(c.request(11, "GET", "/latest/meta-data/instance-id", false));
    v.extend(c.respond(12, 200, 64));
    let mut h = host.conn(1);
    v.extend(h.connect(20));
    v.extend(h.put_token(21));
    let first = feed(&mut d, &v);
    assert_eq!(kinds(&first), vec![FindingKind::Healthy]);
    let out = feed(&mut d, &h.respond(22, 200, 1));
    // The host's own exchange completes (healthy), and the container is now
    // known to be at risk.
    assert_eq!(kinds(&out), vec![FindingKind::AtRisk, FindingKind::Healthy]);
    assert_eq!(out[0].container.cgroup_id, Some(4242));
    assert_eq!(out[0].ts, at(22));

    // When it does ask for a token, the prediction holds while the PUT is
    // pending, and comes true.
    let mut t = ctr.conn(3);
    let mut v = t.connect(30);
    v.extend(t.put_token(31));
    assert!(feed(&mut d, &v).is_empty());
    assert_eq!(kinds(&d.findings()), vec![FindingKind::AtRisk, FindingKind::Healthy]);
    let after = feed(&mut d, &t.respond(32, 200, 1));
    assert_eq!(kinds(&after), vec![FindingKind::HopLimitExceeded]);
    assert!(of(&d.findings(), FindingKind::AtRisk).is_empty());
}

#[test]
fn token_rejected_after_hop_limit_failure_names_the_hop_limit() {
    let ctr = Ctr::podman();
    let v = lost_token_then_credentials(&ctr, 401);
    let mut d = Diagnoser::default();
    feed(&mut d, &v);
    let f = d.findings();
    // The tokenless GET was refused: nothing was exposed, and IMDS
    // already requires tokens. No imdsv1_fallback, no advice to require them.
    assert_eq!(kinds(&f), vec![FindingKind::HopLimitExceeded, FindingKind::TokenRejected]);
    assert!(f.iter().all(|x| !x.summary.contains("--http-tokens required")), "{f:#?}");
    assert!(f.iter().all(|x| x.fix.as_ref().is_none_or(|fix| fix.note.is_none())), "{f:#?}");
    let tr = &f[1];
    assert_eq!(tr.evidence.status, Some(401));
    assert_eq!(tr.evidence.path.as_deref(), Some(CREDS));
    assert!(tr.summary.contains("The cause is the hop limit"), "{}", tr.summary);
    assert!(tr.summary.contains("Raise the hop limit to 2"), "{}", tr.summary);
    assert_eq!(
        outcomes(tr),
        vec![(Some("PUT"), Some("/latest/api/token"), "lost"), (Some("GET"), Some(CREDS), "401")]
    );

    // A 401 without any hop-limit trouble says something else.
    let mut d = Diagnoser::default();
    let mut c = ctr.conn(9);
    let mut v = c.connect(0);
    v.extend(c.request(1, "GET", CREDS, true));
    v.extend(c.respond(2, 401, 64));
    feed(&mut d, &v);
    let f = d.findings();
    assert_eq!(kinds(&f), vec![FindingKind::TokenRejected]);
    assert!(!f[0].summary.to_lowercase().contains("hop"), "{}", f[0].summary);
    assert!(f[0].summary.contains("missing, invalid or expired"));
    assert!(f[0].fix.is_none());
}

#[test]
fn forbidden_and_bad_token_request_carry_the_path() {
    let ctr = Ctr::podman();
    let mut d = Diagnoser::default();
    let mut c = ctr.conn(1);
    let mut v = c.connect(0);
    v.extend(c.request(1, "GET", "/latest/meta-data/", false));
    v.extend(c.respond(2, 403, 64));
    let mut p = ctr.conn(2);
    v.extend(p.connect(10));
    v.extend(p.request_http(
        11,
        Http { method: "PUT", path: "/latest/api/token", token: false, ttl_header: false },
    ));
    v.extend(p.respond(12, 400, 64));
    let emitted = feed(&mut d, &v);
    assert_eq!(kinds(&emitted), vec![FindingKind::ImdsForbidden, FindingKind::BadTokenRequest]);
    let f = d.findings();
    assert_eq!(kinds(&f), vec![FindingKind::ImdsForbidden, FindingKind::BadTokenRequest]);
    let forb = &f[0];
    assert_eq!(forb.evidence.status, Some(403));
    assert_eq!(forb.evidence.path.as_deref(), Some("/latest/meta-data/"));
    assert_eq!(forb.evidence.method.as_deref(), Some("GET"));
    assert!(
        forb.summary.contains("403") && forb.summary.contains("/latest/meta-data/"),
        "{}",
        forb.summary
    );
    let bad = &f[1];
    assert_eq!(bad.evidence.status, Some(400));
    assert_eq!(bad.evidence.path.as_deref(), Some("/latest/api/token"));
    assert_eq!(bad.evidence.token_ttl_header, Some(false));
    assert!(
        bad.summary.contains("X-aws-ec2-metadata-token-ttl-seconds header is missing"),
        "{}",
        bad.summary
    );
    assert!(
        of(&f, FindingKind::Imdsv1Fallback).is_empty(),
        "no tokenless request after the failure"
    );
    assert!(of(&f, FindingKind::Healthy).is_empty());
}

#[test]
fn unreachable_refused_never_mentions_the_hop_limit() {
    let host = Ctr::host("node-a");
    let ctr = Ctr::podman();
    let mut v = Vec::new();
    // The node's hop limit is known (1)...
    let mut h = host.conn(1);
    v.extend(h.connect(0));
    v.extend(h.put_token(1));
    v.extend(h.respond(2, 200, 1));
    // ...and a container asks the ECS credentials endpoint, where nothing
    // listens.
    let mut e = Conn::new(ctr.clone(), 2, "169.254.170.2:80");
    v.extend(e.syn(10));
    v.extend(e.rst(11));
    let mut d = Diagnoser::default();
    let emitted = feed(&mut d, &v);
    let un = one(&emitted, FindingKind::Unreachable);
    assert_eq!(un.ts, at(11), "established by the RST");
    let f = d.findings();
    assert!(of(&f, FindingKind::HopLimitExceeded).is_empty());
    assert!(of(&f, FindingKind::AtRisk).is_empty(), "the container never talked to IMDS");
    let un = one(&f, FindingKind::Unreachable);
    assert_eq!(
        un.evidence.endpoints,
        vec![EndpointFailures { endpoint: "169.254.170.2:80".into(), refused: 1, timeouts: 0 }]
    );
    assert_eq!(outcomes(un), vec![(None, None, "refused")]);
    assert_eq!(un.timeline[0].dst.as_deref(), Some("169.254.170.2:80"));
    assert!(un.summary.contains("ECS"), "{}", un.summary);
    let json = serde_json::to_string(un).unwrap().to_lowercase();
    assert!(!json.contains("hop limit") && !json.contains("hop_limit"), "{json}");
    assert!(un.fix.is_none());
}

#[test]
fn unreachable_syn_timeout() {
    let ctr = Ctr::podman();
    let mut e = Conn::new(ctr.clone(), 3, "169.254.170.2:80");
    let syn = e.syn(0);
    let mut d = Diagnoser::default();
    assert!(feed(&mut d, &syn).is_empty());
    // The kernel retransmits the SYN after 1 s: still no answer, a timeout.
    let out = feed(&mut d, &e.syn_again(1000));
    let un = one(&out, FindingKind::Unreachable);
    assert_eq!(un.ts, at(1000));
    assert_eq!(un.evidence.endpoints[0].timeouts, 1);
    assert_eq!(un.evidence.endpoints[0].refused, 0);
    assert_eq!(outcomes(un), vec![(None, None, "timeout")]);
    assert_eq!(un.timeline[0].ts, at(0), "the attempt is dated by its first SYN");
    assert!(un.summary.contains("timed out"), "{}", un.summary);
    assert!(!un.summary.to_lowercase().contains("hop"), "{}", un.summary);

    // A firewall drop on the way is named (and still no hop limit).
    let mut fw = Diagnoser::default();
    let mut f = Conn::new(ctr.clone(), 8, "169.254.170.2:80");
    let mut v = f.syn(0);
    let mut drop = v[0].clone();
    drop.kind = Kind::Drop;
    drop.reason = Some("NETFILTER_DROP".into());
    drop.ttl = Some(64);
    v.push(drop);
    feed(&mut fw, &v);
    let out = fw.tick(time(1500));
    let un = one(&out, FindingKind::Unreachable);
    assert_eq!(un.evidence.drop_reasons, vec!["NETFILTER_DROP".to_string()]);
    assert!(un.summary.contains("NETFILTER_DROP"), "{}", un.summary);
    assert!(!un.summary.to_lowercase().contains("hop"), "{}", un.summary);

    // Not before 1 s; decided by tick()...
    let mut d2 = Diagnoser::default();
    feed(&mut d2, &syn);
    assert!(d2.tick(time(900)).is_empty());
    assert_eq!(kinds(&d2.tick(time(1100))), vec![FindingKind::Unreachable]);
    // ...or by any later event on the node.
    let mut d3 = Diagnoser::default();
    feed(&mut d3, &syn);
    let out = feed(&mut d3, &Ctr::host("node-a").conn(9).syn(1200));
    assert_eq!(kinds(&out), vec![FindingKind::Unreachable]);

    // A later successful connect and request to the same endpoint clears it.
    let mut ok = Conn::new(ctr, 4, "169.254.170.2:80");
    let mut v = ok.connect(5000);
    v.extend(ok.request(5001, "GET", "/v2/credentials/abc", false));
    v.extend(ok.respond(5002, 200, 64));
    feed(&mut d, &v);
    let f = d.findings();
    assert_eq!(kinds(&f), vec![FindingKind::Healthy], "{f:#?}");
    assert_eq!(f[0].evidence.requests.unwrap().imdsv1, 0, "ECS paths are not IMDSv1");
}

#[test]
fn reordered_drop_before_its_host_ingress() {
    let ctr = Ctr::podman();
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    v.extend(a.put_token(1));
    let reply = a.respond(3, 200, 1); // [host_ingress, drop, icmp]
    assert_eq!(reply.len(), 3);
    // The kernel drop and the ICMP are handed over before the uplink sees it.
    v.push(reply[1].clone());
    v.push(reply[2].clone());
    v.push(reply[0].clone());
    let mut d = Diagnoser::default();
    let emitted = feed(&mut d, &v);
    let hop = one(&emitted, FindingKind::HopLimitExceeded);
    assert_eq!(hop.ts, at(3));
    let f = d.findings();
    let hop = one(&f, FindingKind::HopLimitExceeded);
    assert_eq!(hop.evidence.lost_replies, Some(1));
    assert_eq!(hop.evidence.drops, Some(1));
    assert_eq!(hop.evidence.icmp_time_exceeded, Some(1));
    assert_eq!(hop.evidence.reply_ttl_at_host, Some(1));
    assert_eq!(d.hop_limit("node-a"), Some(1));

    // Without an ack on the request (nothing to match the reply's sequence
    // number to), the drop waits for its host_ingress.
    let mut b = ctr.conn(2);
    let mut v = b.connect(10);
    let mut put = b.put_token(11);
    for e in put.iter_mut() {
        e.ack = None;
    }
    v.extend(put);
    let reply = b.respond(12, 200, 1);
    let mut drop = reply[1].clone();
    drop.status = None; // a continuation-less snapshot
    v.push(drop);
    let mut d = Diagnoser::default();
    assert!(of(&feed(&mut d, &v), FindingKind::HopLimitExceeded).is_empty());
    let out = feed(&mut d, &reply[..1]);
    let hop = one(&out, FindingKind::HopLimitExceeded);
    assert_eq!(hop.evidence.lost_replies, Some(1));
    assert_eq!(hop.evidence.drops, Some(1));
}

#[test]
fn nat_resolved_events_and_events_without_flow() {
    let ctr = Ctr::podman();
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    v.extend(a.put_token(1));
    v.extend(a.respond(2, 200, 1));
    // The uplink saw the masqueraded tuple; the pipeline resolved the flow.
    let egress = v.iter().find(|e| e.kind == Kind::HostEgress).unwrap();
    assert_ne!(egress.src, v[0].src, "the builder masquerades");
    // Events the pipeline could not attribute come without flow/cgroup.
    let mut stray = Event::new(Kind::HostIngress, time(5), "node-a".into());
    stray.src = "169.254.169.254:80".parse().ok();
    stray.dst = "198.18.0.2:61234".parse().ok();
    stray.ttl = Some(3);
    stray.status = Some(200);
    stray.seq = Some(1);
    let mut stray_drop = Event::new(Kind::Drop, time(5), "node-a".into());
    stray_drop.reason = Some("IP_INHDR".into());
    stray_drop.ttl = Some(1);
    let flow_without_cgroup = Event { flow: Some(999), ..stray.clone() };
    let mut d = Diagnoser::default();
    assert!(feed(&mut d, &[stray.clone(), stray_drop, flow_without_cgroup]).is_empty());
    assert_eq!(d.stats().ignored, 3);
    assert_eq!(d.hop_limit("node-a"), None, "an unattributed reply teaches nothing");
    feed(&mut d, &v);
    let f = d.findings();
    let hop = one(&f, FindingKind::HopLimitExceeded);
    assert_eq!(hop.evidence.forwarding_hops, Some(1));
    assert_eq!(hop.evidence.lost_replies, Some(1));
    assert_eq!(d.hop_limit("node-a"), Some(1));
    assert_eq!(d.state_size().flows, 1);
}

#[test]
fn keep_alive_three_requests_on_one_flow() {
    let ctr = Ctr::podman();
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    v.extend(a.put_token(10));
    v.extend(a.respond(11, 200, 2));
    v.extend(a.request(20, "GET", CREDS, true));
    v.extend(a.respond(22, 200, 64));
    v.extend(a.request(30, "GET", "/latest/meta-data/placement/region", true));
    v.extend(a.respond(33, 200, 64));
    v.extend(a.fin(40));
    let mut d = Diagnoser::default();
    let emitted = feed(&mut d, &v);
    assert_eq!(kinds(&emitted), vec![FindingKind::Healthy], "healthy once, not per request");
    let f = d.findings();
    assert_eq!(kinds(&f), vec![FindingKind::Healthy]);
    let e = &f[0].evidence;
    let r = e.requests.unwrap();
    assert_eq!((r.total, r.token, r.credentials, r.other, r.imdsv1, r.imdsv2), (3, 1, 1, 1, 0, 2));
    let l = e.latency_ms.unwrap();
    assert_eq!((l.count, l.mean, l.max), (3, 2.0, 3.0));
    assert_eq!(d.hop_limit("node-a"), Some(2));

    // Pipelined: two requests before either reply; replies match FIFO.
    let mut b = ctr.conn(2);
    let mut v = b.connect(100);
    v.extend(b.request(101, "GET", "/latest/meta-data/ami-id", true));
    v.extend(b.request(102, "GET", ROLE, true));
    v.extend(b.respond(103, 200, 64));
    v.extend(b.respond(104, 401, 64));
    feed(&mut d, &v);
    let f = d.findings();
    let tr = one(&f, FindingKind::TokenRejected);
    assert_eq!(tr.evidence.path.as_deref(), Some(ROLE));
    let tl = outcomes(tr);
    assert_eq!(
        &tl[tl.len() - 2..],
        &[(Some("GET"), Some("/latest/meta-data/ami-id"), "ok"), (Some("GET"), Some(ROLE), "401")]
    );
}

#[test]
fn retransmissions_are_not_double_counted() {
    let ctr = Ctr::podman();
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    let put = a.put_token(1);
    v.extend(put.clone());
    v.extend(put.clone()); // the client retransmits its request
    v.extend(put);
    v.extend(a.respond(2, 200, 1));
    v.extend(a.retransmit(200, true));
    v.extend(a.retransmit(600, false));
    v.extend(a.retransmit(1400, false));
    let mut d = Diagnoser::default();
    let emitted = feed(&mut d, &v);
    assert_eq!(
        of(&emitted, FindingKind::HopLimitExceeded).len(),
        1,
        "not re-emitted per retransmission"
    );
    let f = d.findings();
    let hop = one(&f, FindingKind::HopLimitExceeded);
    assert_eq!(hop.evidence.requests.unwrap().total, 1);
    assert_eq!(hop.evidence.requests.unwrap().token, 1);
    assert_eq!(hop.evidence.lost_replies, Some(1));
    assert_eq!(hop.evidence.drops, Some(4));
    assert_eq!(hop.evidence.icmp_time_exceeded, Some(2));
    assert_eq!(hop.timeline.len(), 1);

    // A delivered reply retransmitted: one completed request, one latency.
    let mut b = ctr.conn(2);
    let mut v = b.connect(2000);
    v.extend(b.request(2001, "GET", CREDS, false));
    let first = b.respond(2003, 200, 64);
    v.extend(first.clone());
    v.extend(first);
    let mut d = Diagnoser::default();
    feed(&mut d, &v);
    let f = d.findings();
    let l = f[0].evidence.latency_ms.unwrap();
    assert_eq!((l.count, l.max), (1, 2.0));
}

#[test]
fn eviction_keeps_state_bounded_over_hours() {
    let mut d = Diagnoser::default();
    let mut peak = StateSize::default();
    // 100k connections, one every 100 ms (~2.8 h); a new container every
    // 20 s (500 over the run), each polling IMDS.
    for i in 0..100_000u64 {
        let t = i * 100;
        let ctr = Ctr::new("node-a", 1000 + i / 200, "/kubepods/pod/ctr", "10.88.1.2", 1);
        let mut c = ctr.conn(i + 1);
        let mut v = c.connect(t);
        v.extend(c.request(t + 1, "GET", CREDS, true));
        v.extend(c.respond(t + 2, 200, 64));
        v.extend(c.fin(t + 3));
        feed(&mut d, &v);
        if i % 5000 == 0 {
            let s = d.state_size();
            peak.flows = peak.flows.max(s.flows);
            peak.containers = peak.containers.max(s.containers);
            peak.attempts = peak.attempts.max(s.attempts);
        }
    }
    let s = d.state_size();
    // Flows: those of the last 2 s (ENDED_LINGER) at 10/s: each is
    // forgotten once its connection ended, not when it idles out.
    assert!(s.flows <= 21 && peak.flows <= 21, "{s:?} {peak:?}");
    // Containers: 30 min at one per 20 s.
    assert!(s.containers <= 92 && peak.containers <= 92, "{s:?} {peak:?}");
    assert!(peak.attempts <= 92 * 64, "{peak:?}");
    assert!(d.stats().ended_flows >= 99_900, "{:?}", d.stats());
    assert_eq!(d.stats().evicted_flows, 0, "{:?}", d.stats());
    assert!(d.stats().evicted_containers >= 400, "{:?}", d.stats());
    // Much later, everything is gone, node included.
    d.tick(time(100_000 * 100 + 3 * 3600 * 1000));
    assert_eq!(d.state_size(), StateSize::default());
}

#[test]
fn caps_hold_without_idle_time() {
    let cfg = Config {
        max_flows_per_node: 100,
        max_containers_per_node: 10,
        timeline_cap: 8,
        ..Default::default()
    };
    let mut d = Diagnoser::new(cfg);
    for i in 0..1000u64 {
        let ctr = Ctr::new("node-a", 1 + i % 40, "/c", "10.0.0.2", 1);
        let mut c = ctr.conn(i + 1);
        let mut v = c.syn(i);
        v.extend(c.synack(i));
        v.extend(c.request(i, "GET", CREDS, true));
        feed(&mut d, &v);
        let s = d.state_size();
        assert!(s.flows <= 100 && s.containers <= 10, "{s:?}");
    }
    assert!(d.state_size().attempts <= 10 * 8);
}

#[test]
fn two_nodes_keep_their_own_hop_limits() {
    let mut v = Vec::new();
    for (node, limit) in [("node-a", 1u8), ("node-b", 2u8)] {
        let mut h = Ctr::host(node).conn(1);
        v.extend(h.connect(0));
        v.extend(h.put_token(1));
        v.extend(h.respond(2, 200, limit));
        // The same cgroup id and flow id on both nodes: still apart.
        let mut c = Ctr::new(node, 500, "/docker/app", "172.17.0.2", 1).conn(2);
        v.extend(c.connect(10));
        v.extend(c.request(11, "GET", "/latest/meta-data/instance-id", false));
        v.extend(c.respond(12, 200, 64));
    }
    let mut d = Diagnoser::default();
    feed(&mut d, &v);
    assert_eq!(d.hop_limit("node-a"), Some(1));
    assert_eq!(d.hop_limit("node-b"), Some(2));
    let f = d.findings();
    let by_node: Vec<_> = f
        .iter()
        .filter(|f| f.container.cgroup_id == Some(500))
        .map(|f| (f.node.as_str(), f.kind))
        .collect();
    assert_eq!(by_node, vec![("node-a", FindingKind::AtRisk), ("node-b", FindingKind::Healthy)]);
    let risk = f.iter().find(|f| f.kind == FindingKind::AtRisk).unwrap();
    assert_eq!(risk.evidence.node_hop_limit, Some(1));

    // A lost token reply on node-b with TTL 2 does not change node-a.
    let mut c = Ctr::new("node-b", 600, "/docker/far", "172.18.0.2", 2).conn(3);
    let mut v = c.connect(20);
    v.extend(c.put_token(21));
    v.extend(c.respond(22, 200, 2));
    feed(&mut d, &v);
    let f = d.findings();
    let hop = one(&f, FindingKind::HopLimitExceeded);
    assert_eq!(
        (hop.node.as_str(), hop.evidence.reply_ttl_at_host, hop.evidence.required_hop_limit),
        ("node-b", Some(2), Some(3))
    );
    assert_eq!(d.hop_limit("node-a"), Some(1));
}

#[test]
fn a_lost_reply_delivered_after_all_is_not_lost() {
    let ctr = Ctr::podman();
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    v.extend(a.put_token(1));
    let reply = a.respond(2, 200, 1);
    v.extend(reply.clone());
    // The same reply (same seq) delivered after all.
    let mut delivered = reply[0].clone();
    delivered.kind = Kind::Reply;
    delivered.ts = time(300);
    delivered.ttl = Some(63);
    v.push(delivered);
    let mut d = Diagnoser::default();
    feed(&mut d, &v);
    let f = d.findings();
    assert_eq!(kinds(&f), vec![FindingKind::Healthy], "{f:#?}");
}

#[test]
fn request_without_reply_times_out_when_the_client_closes() {
    let ctr = Ctr::podman();
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    v.extend(a.put_token(1));
    v.extend(a.fin(1001));
    let mut b = ctr.conn(2);
    v.extend(b.connect(1002));
    v.extend(b.request(1003, "GET", CREDS, false));
    v.extend(b.respond(1250, 200, 64));
    let mut d = Diagnoser::default();
    feed(&mut d, &v);
    let f = d.findings();
    // No TTL drop anywhere: not a hop-limit problem; the endpoint did not
    // answer, and the client fell back.
    assert_eq!(kinds(&f), vec![FindingKind::Imdsv1Fallback], "{f:#?}");
    assert!(f[0].summary.contains("timed out"), "{}", f[0].summary);
    assert!(f[0].fix.is_none());
    assert_eq!(outcomes(&f[0])[0], (Some("PUT"), Some("/latest/api/token"), "timeout"));
    // The client waited 1 s on it (from the PUT to its close), counted once
    // at every level.
    for level in [Exchanges::None, Exchanges::Problems] {
        let mut d = Diagnoser::new(Config { exchanges: level, ..Default::default() });
        feed(&mut d, &v);
        d.tick(time(60_000));
        let c = d.container("node-a", ctr.cg).expect("the container");
        assert_eq!(c.counts().waited_us, 1_000_000, "{level:?}");
    }
}

/// What `run` writes at `--events problems|exchanges` for `events`: the
/// findings, exchanges and summaries, as the stdout sink orders them.
fn written_at(level: Exchanges, events: &[Event]) -> (Vec<Event>, Vec<Finding>) {
    let mut d = Diagnoser::new(Config { exchanges: level, ..Default::default() });
    let (mut records, mut findings) = (Vec::new(), Vec::new());
    for ev in events {
        findings.extend(d.observe(ev));
        d.drain(&mut records);
        d.summaries(false, &mut records);
    }
    let end = events.last().map_or(time(0), |e| e.ts) + Duration::from_secs(10);
    findings.extend(d.tick(end));
    d.drain(&mut records);
    d.summaries(true, &mut records);
    (records, findings)
}

/// `report --from` over those lines.
fn replayed(records: &[Event], findings: &[Finding]) -> Vec<Finding> {
    let mut text = String::new();
    for r in records {
        text += &serde_json::to_string(r).unwrap();
        text.push('\n');
    }
    for f in findings {
        text += &serde_json::to_string(f).unwrap();
        text.push('\n');
    }
    crate::diagnose::replay::diagnose_stream(text.as_bytes()).unwrap().findings
}

fn packet_verdicts(events: &[Event]) -> Vec<Finding> {
    let mut d = Diagnoser::default();
    feed(&mut d, events);
    d.tick(events.last().unwrap().ts + Duration::from_secs(10));
    d.findings()
}

#[test]
fn each_lost_token_reply_is_one_exchange_line_with_its_evidence() {
    let (records, _) = written_at(Exchanges::Problems, &hop_limit_failure());
    let lost: Vec<_> =
        records.iter().filter(|e| e.outcome == Some(crate::model::Outcome::Lost)).collect();
    assert_eq!(lost.len(), 1, "one lost PUT, its retransmissions folded in: {records:#?}");
    let x = lost[0];
    assert_eq!(x.kind, Kind::Exchange);
    assert_eq!((x.method.as_deref(), x.path.as_deref()), (Some("PUT"), Some("/latest/api/token")));
    assert_eq!((x.reply_ttl, x.delivered, x.status), (Some(1), Some(false), Some(200)));
    assert_eq!(x.retransmits, None, "the server's retransmissions are not the client's");
    assert_eq!(x.waited_ms, Some(1000.0), "written once the client gave up, at its close");
    assert_eq!(x.reason.as_deref(), Some("IP_INHDR"));
    assert_eq!((x.ttl, x.hops, x.host_egress_ttl), (Some(64), Some(1), Some(63)));
    assert_eq!((x.flow, x.cgroup_id, &*x.node), (Some(11), Some(4242), "node-a"));
    assert_eq!(x.cgroup, Some(Ctr::podman().path), "the workload is named");
    assert_eq!((x.pid, x.comm.as_deref()), (Some(1234), Some("python3")), "and its process");
    // The tokenless GETs after it are written too (the workload is in
    // trouble, and IMDSv1 is a finding of its own).
    let gets = records.iter().filter(|e| e.method.as_deref() == Some("GET")).count();
    assert_eq!(gets, 2);
    assert!(records.iter().all(|e| e.kind == Kind::Exchange), "nothing healthy to sum up");
}

#[test]
fn healthy_traffic_is_summed_up_not_written_line_by_line() {
    let ctr = Ctr::podman();
    let mut v = Vec::new();
    // 40 keep-alive exchanges: a token, then credentials with it.
    let mut a = ctr.conn(1);
    v.extend(a.connect(0));
    for i in 0..20u64 {
        v.extend(a.put_token(10 + i * 100));
        v.extend(a.respond(12 + i * 100, 200, 2));
        v.extend(a.request(20 + i * 100, "GET", ROLE, true));
        v.extend(a.respond(25 + i * 100, 200, 64));
    }
    v.extend(a.fin(5000));
    let (records, findings) = written_at(Exchanges::Problems, &v);
    assert_eq!(kinds(&findings), [FindingKind::Healthy]);
    assert_eq!(records.len(), 1, "one summary, no exchange line: {records:#?}");
    let s = records[0].summary.as_ref().expect("a summary");
    assert_eq!((s.requests, s.token, s.credentials, s.other, s.imdsv2), (40, 20, 20, 0, 20));
    let l = s.latency_ms.unwrap();
    // 2 ms and 5 ms latencies: each quantile is its bucket's upper edge.
    assert!((2.0..=2.5).contains(&l.p50), "{l:?}");
    assert!((5.0..=6.0).contains(&l.p99) && l.max == 5.0, "{l:?}");
    assert_eq!((records[0].hops, records[0].hop_limit), (Some(1), Some(2)));
    assert!(s.interval_s >= 1.9, "{s:?}");

    // Every exchange, at `exchanges`; no summary then (nothing left to sum).
    let (all, _) = written_at(Exchanges::All, &v);
    assert_eq!(all.len(), 40);
    assert!(all.iter().all(|e| e.kind == Kind::Exchange
        && e.outcome == Some(crate::model::Outcome::Answered)
        && e.delivered == Some(true)));
    assert_eq!(all[0].latency_ms, Some(2.0));

    // Read back, both give the same healthy verdict with the same counts.
    for lines in [&records, &all] {
        let f = replayed(lines, &findings);
        assert_eq!(kinds(&f), [FindingKind::Healthy]);
        let r = f[0].evidence.requests.unwrap();
        assert_eq!((r.total, r.token, r.credentials), (40, 20, 20));
    }
}

#[test]
fn every_level_replays_to_the_packets_verdicts() {
    let recording = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/recordings/hop-limit-1.jsonl"),
    )
    .unwrap();
    let recorded: Vec<Event> = recording
        .lines()
        .filter_map(|l| match crate::model::Line::parse(l.as_bytes()) {
            Some(crate::model::Line::Event(ev)) => Some(*ev),
            _ => None,
        })
        .collect();
    // One token PUT, lost, and the client gives up after 1 s without a
    // fallback (the SDK for Rust): what it lost is known only from its close.
    let mut one_put = Vec::new();
    let mut a = Ctr::podman().conn(21);
    one_put.extend(a.connect(0));
    one_put.extend(a.put_token(1));
    one_put.extend(a.respond(2, 200, 1));
    one_put.extend(a.fin(1001));
    for (name, events) in
        [("recording", recorded), ("hop_limit_failure", hop_limit_failure()), ("one_put", one_put)]
    {
        let want = packet_verdicts(&events);
        assert!(kinds(&want).contains(&FindingKind::HopLimitExceeded), "{name}");
        for level in [Exchanges::Problems, Exchanges::All] {
            let (records, findings) = written_at(level, &events);
            assert!(records.len() * 4 < events.len(), "{name} {level:?}: far fewer lines");
            let got = replayed(&records, &findings);
            assert_eq!(kinds(&got), kinds(&want), "{name} {level:?}");
            for (g, w) in got.iter().zip(&want) {
                let (ge, we) = (&g.evidence, &w.evidence);
                assert_eq!(ge.reply_ttl_at_host, we.reply_ttl_at_host, "{name} {level:?}");
                assert_eq!(ge.lost_replies, we.lost_replies, "{name} {level:?}");
                assert_eq!(ge.node_hop_limit, we.node_hop_limit, "{name} {level:?}");
                assert_eq!(ge.forwarding_hops, we.forwarding_hops, "{name} {level:?}");
                assert_eq!(ge.seconds_lost, we.seconds_lost, "{name} {level:?}");
                assert_eq!(g.fix, w.fix, "{name} {level:?}");
                assert_eq!(outcomes(g), outcomes(w), "{name} {level:?}: the same timeline");
            }
        }
    }
}

/// A Karpenter node's `node` event (instance from its providerID).
fn karpenter_node(ms: u64) -> Event {
    let mut ev = Event::new(Kind::Node, time(ms), "node-a".into());
    let labels = [("karpenter.sh/nodepool".to_string(), "general".to_string())].into();
    ev.node_info = Some(Box::new(crate::model::NodeInfo::from_node(
        &labels,
        Some("aws:///eu-west-1b/i-0fedcba9876543210"),
    )));
    ev
}

/// `events` as from a pod of namespace `shop` with ServiceAccount `web`
/// (and `aws_identity`, when given).
fn from_shop_web(mut events: Vec<Event>, aws_identity: Option<&str>) -> Vec<Event> {
    let who = crate::model::Container {
        pod: Some("web-1".into()),
        namespace: Some("shop".into()),
        service_account: Some("web".into()),
        aws_identity: aws_identity.map(str::to_string),
        ..Default::default()
    };
    for e in events.iter_mut().filter(|e| e.cgroup_id.is_some()) {
        e.container = Some(who.clone().into());
    }
    events
}

/// The seed's failure, from that pod.
fn pod_failure(aws_identity: Option<&str>) -> Vec<Event> {
    from_shop_web(hop_limit_failure(), aws_identity)
}

#[test]
fn where_hop_limit_1_is_the_nodes_design_the_workload_gets_its_own_role_first() {
    let mut d = Diagnoser::default();
    feed(&mut d, &[karpenter_node(0)]);
    feed(&mut d, &pod_failure(None));
    let f = d.findings();
    let kinds: Vec<_> = f.iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&FindingKind::NodeRoleBlocked), "{kinds:?}");
    assert!(!kinds.contains(&FindingKind::HopLimitExceeded), "{kinds:?}");
    let blocked = f.iter().find(|f| f.kind == FindingKind::NodeRoleBlocked).unwrap();
    assert!(blocked.summary.contains("hop limit 1 is a control: Karpenter"), "{}", blocked.summary);
    assert!(blocked.summary.contains("ServiceAccount shop/web"), "{}", blocked.summary);
    for f in &f {
        assert!(!f.summary.contains("Raise the hop limit"), "{}: {}", f.kind, f.summary);
        assert!(!f.summary.contains("hostNetwork"), "{}", f.summary);
    }
    let fix = blocked.fix.as_ref().unwrap();
    let own = fix.own_role.as_ref().expect("the workload's own role first");
    assert_eq!(
        own.pod_identity,
        "aws eks create-pod-identity-association --cluster \"$CLUSTER\" --namespace shop \
         --service-account web --role-arn \"$ROLE_ARN\""
    );
    assert_eq!(
        own.irsa,
        "kubectl annotate serviceaccount -n shop web eks.amazonaws.com/role-arn=\"$ROLE_ARN\""
    );
    // The hop limit only as the last resort, on a pool of its own, saying
    // what it costs; the instance named from the node's providerID.
    let note = fix.note.as_deref().unwrap();
    assert!(note.starts_with("last resort"), "{note}");
    assert!(note.contains("dedicated NodePool") && note.contains("Every pod"), "{note}");
    assert!(fix.command.contains("--instance-id i-0fedcba9876543210 "), "{}", fix.command);
    assert_eq!(blocked.node_info.as_ref().unwrap().pool.as_deref(), Some("general"));
    // Its tokenless GETs were answered: tokens are optional here, and the
    // block leaks through IMDSv1.
    assert_eq!(blocked.evidence.imds_tokens.as_deref(), Some("optional"));
    assert!(blocked.summary.contains("falls back to IMDSv1"), "{}", blocked.summary);
}

#[test]
fn where_tokens_are_required_the_wait_ends_with_no_credentials() {
    let mut v = vec![karpenter_node(0)];
    v.extend(from_shop_web(lost_token_then_credentials(&Ctr::podman(), 401), None));
    let mut d = Diagnoser::default();
    feed(&mut d, &v);
    let f = d.findings();
    let blocked = f.iter().find(|f| f.kind == FindingKind::NodeRoleBlocked);
    let blocked = blocked.unwrap_or_else(|| panic!("{f:?}"));
    assert_eq!(blocked.evidence.imds_tokens.as_deref(), Some("required"));
    assert!(blocked.summary.contains("gets no credentials here"), "{}", blocked.summary);
    // The 401 is the same cause, with the same fix.
    let rejected = f.iter().find(|f| f.kind == FindingKind::TokenRejected).unwrap();
    assert!(rejected.fix.as_ref().unwrap().own_role.is_some(), "{rejected:?}");
    assert!(!rejected.summary.contains("Raise the hop limit"), "{}", rejected.summary);
}

#[test]
fn a_workload_with_its_own_identity_is_told_its_sdk_or_chain_is_the_problem() {
    let mut d = Diagnoser::default();
    feed(&mut d, &[karpenter_node(0)]);
    feed(&mut d, &pod_failure(Some("irsa")));
    let f = d.findings();
    let blocked = f.iter().find(|f| f.kind == FindingKind::NodeRoleBlocked).unwrap();
    assert!(blocked.summary.contains("configured for IRSA"), "{}", blocked.summary);
    assert!(blocked.summary.contains("SDK may be older"), "{}", blocked.summary);
}

#[test]
fn the_node_learned_later_turns_the_advice_and_no_node_keeps_the_quick_fix() {
    // Without a node event (a self-managed host): the hop limit is the fix.
    let mut d = Diagnoser::default();
    feed(&mut d, &pod_failure(None));
    let kinds: Vec<_> = d.findings().iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&FindingKind::HopLimitExceeded), "{kinds:?}");
    assert!(d.findings().iter().all(|f| f.fix.as_ref().is_none_or(|x| x.own_role.is_none())));
    // The node's Karpenter labels arrive after: the verdict follows.
    let out = d.observe(&karpenter_node(2000));
    assert!(out.iter().any(|f| f.kind == FindingKind::NodeRoleBlocked), "{out:?}");
    // A node whose provisioner left hop limit 2 is no control: a container
    // two hops away still gets the hop-limit fix.
    let mut d = Diagnoser::default();
    let mut eksctl = karpenter_node(0);
    eksctl.node_info.as_mut().unwrap().provisioner = Some(crate::model::Provisioner::Eksctl);
    feed(&mut d, &[eksctl]);
    let mut v = pod_failure(None);
    for e in v.iter_mut().filter(|e| e.kind == Kind::HostIngress || e.kind == Kind::Drop) {
        e.ttl = e.ttl.map(|t| if t == 1 { 2 } else { t });
    }
    feed(&mut d, &v);
    let kinds: Vec<_> = d.findings().iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&FindingKind::HopLimitExceeded), "{kinds:?}");
    assert!(!kinds.contains(&FindingKind::NodeRoleBlocked), "{kinds:?}");
}

/// The seed's failure from a client that wants only its region: its token
/// PUT dies at the hop limit, then it asks for the zone without a token,
/// as botocore's region lookup does. `sdk` is put on its requests.
fn region_only_failure(sdk: Option<&str>) -> Vec<Event> {
    let ctr = Ctr::podman();
    let mut v = Vec::new();
    let mut a = ctr.conn(11);
    v.extend(a.connect(0));
    v.extend(a.put_token(1));
    v.extend(a.respond(2, 200, 1));
    v.extend(a.fin(1001));
    let mut b = ctr.conn(12);
    v.extend(b.connect(1003));
    v.extend(b.request(1005, "GET", "/latest/meta-data/placement/availability-zone/", false));
    v.extend(b.respond(1006, 200, 64));
    v.extend(b.fin(1010));
    with_sdk(v, sdk)
}

#[test]
fn a_workload_that_asks_only_where_it_runs_is_told_its_region_never_a_hop_limit() {
    // On a node with nothing said of its design, and on a Karpenter node.
    for karpenter in [false, true] {
        let mut d = Diagnoser::default();
        if karpenter {
            feed(&mut d, &[karpenter_node(0)]);
        }
        feed(&mut d, &from_shop_web(region_only_failure(None), None));
        let f = d.findings();
        let hop = f
            .iter()
            .find(|f| {
                matches!(f.kind, FindingKind::HopLimitExceeded | FindingKind::NodeRoleBlocked)
            })
            .unwrap_or_else(|| panic!("{:?}", kinds(&f)));
        for f in &f {
            assert!(f.fix.is_none(), "{}: a hop-limit fix offered: {:?}", f.kind, f.fix);
            assert!(!f.summary.contains("Raise the hop limit"), "{}: {}", f.kind, f.summary);
        }
        assert!(hop.summary.contains("AWS_REGION"), "{}", hop.summary);
        assert!(hop.summary.contains("AWS_EC2_METADATA_DISABLED=true"), "{}", hop.summary);
        assert!(hop.summary.contains("The hop limit needs no change"), "{}", hop.summary);
    }
    // One credentials request and it needs the role after all.
    let mut v = from_shop_web(region_only_failure(None), None);
    let ctr = Ctr::podman();
    let mut c = ctr.conn(13);
    v.extend(c.connect(1100));
    v.extend(c.request(1101, "GET", CREDS, false));
    let mut d = Diagnoser::default();
    feed(&mut d, &v);
    let f = d.findings();
    let hop = f.iter().find(|f| f.kind == FindingKind::HopLimitExceeded).unwrap();
    assert!(
        hop.fix.is_some() && hop.summary.contains("Raise the hop limit to 2"),
        "{}",
        hop.summary
    );
}

#[test]
fn the_sdk_its_user_agent_named_is_evidence_and_says_how_it_waits() {
    let mut d = Diagnoser::default();
    feed(&mut d, &region_only_failure(Some("botocore/1.43.11")));
    let f = d.findings();
    let hop = f.iter().find(|f| f.kind == FindingKind::HopLimitExceeded).unwrap();
    assert_eq!(
        hop.evidence.sdk.as_ref().map(|s| s.to_string()).as_deref(),
        Some("botocore/1.43.11")
    );
    assert!(
        hop.summary
            .contains("(botocore/1.43.11: botocore waits 1 s for the token once per process"),
        "{}",
        hop.summary
    );
    let line = serde_json::to_string(hop).unwrap();
    assert!(line.contains(r#""sdk":"botocore/1.43.11""#), "{line}");
    // No SDK named: nothing said of one.
    let mut d = Diagnoser::default();
    feed(&mut d, &region_only_failure(None));
    let hop = d.findings().into_iter().find(|f| f.kind == FindingKind::HopLimitExceeded).unwrap();
    assert!(hop.evidence.sdk.is_none() && !hop.summary.contains("botocore"), "{}", hop.summary);
}

/// A healthy IMDSv2 credentials fetch from pod shop/web-1 (`aws_identity`
/// in its spec), its requests naming `sdk`.
fn credentials_fetch(aws_identity: Option<&str>, sdk: Option<&str>) -> Vec<Event> {
    let ctr = Ctr::podman();
    let mut v = Vec::new();
    let mut a = ctr.conn(21);
    v.extend(a.connect(0));
    v.extend(a.put_token(1));
    v.extend(a.respond(2, 200, 64));
    v.extend(a.request(3, "GET", CREDS, true));
    v.extend(a.respond(4, 200, 64));
    v.extend(a.request(5, "GET", ROLE, true));
    v.extend(a.respond(6, 200, 64));
    v.extend(a.fin(7));
    from_shop_web(with_sdk(v, sdk), aws_identity)
}

#[test]
fn a_workload_with_a_role_of_its_own_that_takes_the_nodes_is_a_leak() {
    let leak = |aws_identity, sdk| {
        let mut d = Diagnoser::default();
        feed(&mut d, &credentials_fetch(aws_identity, sdk));
        d.findings()
    };
    // Pod Identity with a botocore older than the table's 1.34.41.
    let f = leak(Some("pod_identity"), Some("botocore/1.29.0"));
    assert_eq!(kinds(&f), vec![FindingKind::NodeRoleLeak]);
    let l = &f[0];
    assert_eq!(l.evidence.node_credentials, Some(2));
    assert_eq!(l.evidence.sdk_minimum.as_deref(), Some("1.34.41"));
    assert!(l.fix.is_none(), "never the hop limit: {:?}", l.fix);
    for want in [
        "configured for EKS Pod Identity (ServiceAccount shop/web)",
        "the node's IAM role credentials (2 answers)",
        "its SDK, botocore/1.29.0, is older than 1.34.41, the first to support EKS Pod Identity: upgrade it",
    ] {
        assert!(l.summary.contains(want), "{want:?} not in {}", l.summary);
    }
    // IRSA with an SDK new enough: the chain is overridden.
    let f = leak(Some("irsa"), Some("botocore/1.43.11"));
    assert!(
        f[0].summary.contains("supports IRSA (since 1.12.200), so something earlier"),
        "{}",
        f[0].summary
    );
    // No SDK named: both causes said.
    let f = leak(Some("irsa"), None);
    assert!(
        f[0].summary.contains("may be older than the first to support IRSA"),
        "{}",
        f[0].summary
    );
    assert!(f[0].evidence.sdk_minimum.is_none());
    // A dated minimum is said, not compared.
    let f = leak(Some("pod_identity"), Some("aws-sdk-rust/1.7.0"));
    assert!(
        f[0].summary.contains("EKS Pod Identity needs release-2024-03-13 or later"),
        "{}",
        f[0].summary
    );
    // Without a role of its own, the node's role is what it is meant to use.
    assert_eq!(kinds(&leak(None, Some("botocore/1.29.0"))), vec![FindingKind::Healthy]);
}

/// `events` with `sdk` (`name/version`) named by their HTTP requests.
fn with_sdk(mut events: Vec<Event>, sdk: Option<&str>) -> Vec<Event> {
    let sdk: Option<crate::model::Sdk> = sdk.map(|s| serde_json::from_value(s.into()).unwrap());
    for e in events.iter_mut().filter(|e| e.kind == Kind::Request && e.method.is_some()) {
        e.sdk = sdk.clone();
    }
    events
}

#[test]
fn where_nothing_says_the_block_is_deliberate_the_quick_fix_comes_with_the_lasting_one() {
    let hop = |events: Vec<Event>| {
        let mut d = Diagnoser::default();
        feed(&mut d, &events);
        d.findings().into_iter().find(|f| f.kind == FindingKind::HopLimitExceeded).unwrap()
    };
    // A pod: its ServiceAccount's own role; tokens optional here (its
    // tokenless GETs were answered), so require them after the raise.
    let pod = hop(pod_failure(None));
    for want in [
        "Raise the hop limit to 2 (the quick fix), then require IMDSv2 (--http-tokens required).",
        "The lasting fix is a role of its own (EKS Pod Identity or IRSA for its ServiceAccount)",
    ] {
        assert!(pod.summary.contains(want), "{want:?} not in {}", pod.summary);
    }
    assert!(pod.fix.is_some());
    // A Nomad task: workload identity.
    let mut nomad = hop_limit_failure();
    let who = crate::model::Container {
        nomad: Some(crate::model::Nomad { job: Some("web".into()), ..Default::default() }),
        ..Default::default()
    };
    for e in nomad.iter_mut().filter(|e| e.cgroup_id.is_some()) {
        e.container = Some(who.clone().into());
    }
    assert!(hop(nomad).summary.contains("(Nomad workload identity)"));
    // Tokens already required (401s): nothing more to require.
    let ctr = Ctr::podman();
    let mut d = Diagnoser::default();
    feed(&mut d, &lost_token_then_credentials(&ctr, 401));
    let f = d.findings().into_iter().find(|f| f.kind == FindingKind::HopLimitExceeded).unwrap();
    assert!(!f.summary.contains("require IMDSv2"), "{}", f.summary);
}

/// The stream as the kernel hands it over by default: the uplinks'
/// sightings of a request (by the sequence number its reply acknowledges)
/// and of a reply's start ride on the reply's event (delivered, or
/// dropped), and no other uplink packet crosses but ICMP errors.
pub(crate) fn folded(events: &[Event]) -> Vec<Event> {
    type Sighting = (Option<std::sync::Arc<str>>, u8);
    let mut requests: Vec<(u32, (u32, TcpFlags, u8), Sighting)> = Vec::new();
    let mut replies: Vec<(u32, Option<u16>, Sighting)> = Vec::new();
    let mut out = Vec::new();
    for e in events {
        let data = e.len.is_some_and(|l| l > 0);
        match (e.kind, e.seq, e.ttl) {
            (Kind::HostEgress, Some(seq), Some(ttl)) if e.proto != Some(Proto::Icmp) => {
                if data {
                    let end = seq.wrapping_add(e.len.unwrap());
                    requests.push((end, (seq, e.flags(), ttl), (e.iface.clone(), ttl)));
                }
            }
            (Kind::HostIngress, Some(seq), Some(ttl)) => {
                if e.status.is_some() {
                    replies.push((seq, e.status, (e.iface.clone(), ttl)));
                }
            }
            (Kind::Reply | Kind::Drop, Some(seq), _) if e.via.is_none() && data => {
                let mut e = e.clone();
                let mut h = crate::model::HostSide::default();
                let consume = e.kind == Kind::Reply && e.status.is_some();
                if let Some(i) = replies.iter().position(|r| r.0 == seq) {
                    let (_, status, (iface, ttl)) =
                        if consume { replies.remove(i) } else { replies[i].clone() };
                    (h.ttl, h.status, h.iface) = (Some(ttl), status, iface);
                }
                if let Some(i) = requests.iter().position(|r| Some(r.0) == e.ack) {
                    let (_, request, (iface, _)) =
                        if consume { requests.remove(i) } else { requests[i].clone() };
                    h.request = Some(request);
                    h.iface = h.iface.or(iface);
                }
                if h != Default::default() {
                    e.host = Some(h);
                }
                out.push(e);
            }
            _ => out.push(e.clone()),
        }
    }
    out
}

/// What the kernel folds by default changes no verdict, evidence, timeline
/// or fix: the same findings as from every packet of every hook.
#[test]
fn folded_uplink_sightings_give_the_packets_verdicts() {
    let ctr = Ctr::new("node-a", 77, "/lab/router/ctr", "10.99.0.2", 2);
    let mut two_hops = Vec::new();
    let mut a = ctr.conn(5);
    two_hops.extend(a.connect(0));
    two_hops.extend(a.put_token(1));
    two_hops.extend(a.respond(2, 200, 3));
    two_hops.extend(a.request(4, "GET", CREDS, true));
    two_hops.extend(a.respond(5, 200, 64));
    for stream in [hop_limit_failure(), js_v2(), two_hops] {
        let f = folded(&stream);
        assert!(f.len() < stream.len() && f.iter().any(|e| e.host.is_some()), "{f:#?}");
        assert!(f.iter().all(|e| e.kind != Kind::HostIngress), "{f:#?}");
        let json = |fs: Vec<Finding>| {
            fs.into_iter()
                .map(|f| {
                    let mut v = serde_json::to_value(f).unwrap();
                    v.as_object_mut().unwrap().remove("ts");
                    v
                })
                .collect::<Vec<_>>()
        };
        let (want, got) = (json(packet_verdicts(&stream)), json(packet_verdicts(&f)));
        assert!(!want.is_empty());
        assert_eq!(got, want);
    }
}

/// A client that builds its SDK client per call: a token, the role's name
/// and its credentials each time, 5 calls a second on one keep-alive flow.
fn per_call_fetches(ctr: &Ctr, calls: u64) -> Vec<Event> {
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    for i in 0..calls {
        let t = 10 + i * 200;
        v.extend(a.put_token(t));
        v.extend(a.respond(t + 2, 200, 2));
        v.extend(a.request(t + 5, "GET", CREDS, true));
        v.extend(a.respond(t + 7, 200, 64));
        v.extend(a.request(t + 9, "GET", ROLE, true));
        v.extend(a.respond(t + 11, 200, 64));
    }
    v
}

#[test]
fn a_client_that_fetches_per_call_is_a_credential_storm_said_once() {
    let ctr = Ctr::podman();
    let mut d = Diagnoser::new(Config::default());
    // 60 calls are 120 credential requests: the threshold, not past it;
    // at 121 calls the tokens pass it too.
    let v = per_call_fetches(&ctr, 150);
    let split = v
        .iter()
        .position(|e| e.path.as_deref() == Some(CREDS) && e.ts == time(10 + 60 * 200 + 5))
        .expect("the 61st call's first credential request");
    let before = feed(&mut d, &v[..split]);
    assert!(of(&before, FindingKind::CredentialStorm).is_empty(), "{:?}", kinds(&before));
    let after = feed(&mut d, &v[split..]);
    // Past it, once: the counts grow with every call, and the tokens pass
    // the threshold too, the line does not repeat.
    let f = one(&after, FindingKind::CredentialStorm);
    let fetches = f.evidence.fetches.expect("fetches");
    assert_eq!((fetches.window_minutes, fetches.threshold), (10, 120));
    assert_eq!((fetches.tokens, fetches.credentials), (61, 121));
    assert!(f.summary.contains("61 IMDSv2 tokens and 121 credential requests"), "{}", f.summary);
    assert!(f.fix.is_none(), "the fix is in the workload, never the node: {:?}", f.fix);
    // Not healthy while it storms.
    assert!(of(&after, FindingKind::Healthy).is_empty(), "{:?}", kinds(&after));
}

#[test]
fn a_429_or_503_is_a_throttled_outcome_counted_per_workload() {
    let ctr = Ctr::podman();
    let mut a = ctr.conn(1);
    let mut v = a.connect(0);
    v.extend(a.put_token(10));
    v.extend(a.respond(12, 200, 2));
    v.extend(a.request(20, "GET", ROLE, true));
    v.extend(a.respond(25, 429, 64));
    v.extend(a.request(1020, "GET", ROLE, true));
    v.extend(a.respond(1026, 503, 64));
    v.extend(a.fin(2000));
    let mut d = Diagnoser::default();
    feed(&mut d, &v);
    assert_eq!(d.containers().map(|c| c.counts().throttled).sum::<u64>(), 2);
    // Each is an `exchange` line by default (an error status), as throttled,
    // with its latency (an answer, if a refusal).
    let (records, _) = written_at(Exchanges::Problems, &v);
    let lines: Vec<_> = records.iter().filter(|e| e.kind == Kind::Exchange).collect();
    assert_eq!(lines.len(), 2, "{records:#?}");
    for (e, (status, ms)) in lines.iter().zip([(429, 5.0), (503, 6.0)]) {
        assert_eq!(e.outcome, Some(crate::model::Outcome::Throttled), "{e:?}");
        assert_eq!((e.status, e.latency_ms, e.waited_ms), (Some(status), Some(ms), None));
    }
    assert_eq!(Outcome::Status(429).label(), "throttled");
    assert_eq!(Outcome::Status(503).label(), "throttled");
    assert_eq!(Outcome::Status(500).label(), "500");
    // `report --from` reads them back as events, none skipped.
    let mut text = String::new();
    for r in &lines {
        text += &serde_json::to_string(r).unwrap();
        text.push('\n');
    }
    assert!(text.contains(r#""outcome":"throttled""#), "{text}");
    let back = crate::diagnose::replay::diagnose_stream(text.as_bytes()).unwrap();
    assert_eq!((back.events, back.skipped.total()), (2, 0));
}
