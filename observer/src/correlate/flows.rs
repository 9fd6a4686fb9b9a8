//! The flow table. A flow is one socket's connection to an endpoint, named by
//! the socket cookie the cgroup hooks report. Packets seen where there is no
//! socket (the uplink, a drop in ip_forward) are matched to it:
//! - by their 5-tuple, when nothing rewrote it (routed containers, host
//!   processes, and replies after conntrack undid the NAT);
//! - behind masquerade NAT, by what NAT leaves alone: the destination and
//!   the TCP sequence/ack numbers of a packet the socket just sent. The first
//!   such match teaches the table the rewritten tuple.
//!
//! State is bounded: a flow is forgotten `ENDED_LINGER` after its
//! connection ended, idle ones after `IDLE`, and the table never holds more
//! than `MAX_FLOWS` flows. A flow keeps one tuple and one NAT tuple (its
//! latest: a raw socket writing from ever new addresses replaces, never
//! adds), and the sent segments are `MAX_SENT` at most.
use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use foldhash::HashMap;

use crate::model::bounded::oldest_eighth;

/// Flows idle this long are forgotten.
pub const IDLE: Duration = Duration::from_secs(300);
/// Packets a socket sent are kept this long for NAT matching.
const NAT_WINDOW: Duration = Duration::from_secs(10);
/// A flow whose connection ended (FIN or RST) is kept this long: the
/// endpoint's late packets (retransmitted replies, and their drops) are
/// still attributed to it.
pub const ENDED_LINGER: Duration = NAT_WINDOW;
/// At most (model::budget).
pub const MAX_FLOWS: usize = crate::model::budget::CORRELATE_FLOWS;
/// Sent segments kept for NAT matching, at most: a few per flow (SYN,
/// request, FIN within `NAT_WINDOW`); counted in the flow's budget.
const MAX_SENT: usize = MAX_FLOWS * 4;

/// Monotonic nanoseconds (the eBPF clock).
pub type Nanos = u64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub cookie: u64,
    pub cgroup_id: u64,
    pub pid: Option<u32>,
    pub comm: Option<std::sync::Arc<str>>,
    /// The connecting socket's network namespace cookie (0: unknown).
    pub netns_cookie: u64,
    /// The container veth its packets entered the host by (cgroup v1
    /// fallback).
    pub veth: Option<u32>,
    /// Segments that take sequence space (SYN, data, FIN) the socket sent
    /// [0] and received [1] lately: a second one is a retransmission.
    segments: [Segments; 2],
    last_seen: Nanos,
    /// Its keys in `by_tuple` and `by_nat_tuple`, to forget it by.
    tuple: Option<Tuple>,
    nat_tuple: Option<Tuple>,
    /// Its connection ended (it waits in `FlowTable::ended`).
    ended: bool,
}

/// The last few segments of one direction, by (sequence number, kind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Segments {
    seen: [(u32, u8); SEGMENTS],
    next: usize,
}

/// Per direction: enough for a client's request and its retransmissions.
const SEGMENTS: usize = 8;

/// What a segment carries that takes sequence space; 0: nothing (a pure
/// ACK shares its sequence number with the next data, and is never a
/// retransmission here).
pub fn segment_kind(flags: crate::model::TcpFlags, payload_len: u32) -> u8 {
    use crate::model::TcpFlags;
    u8::from(flags.contains(TcpFlags::SYN))
        | u8::from(payload_len > 0) << 1
        | u8::from(flags.contains(TcpFlags::FIN)) << 2
}

/// (local, remote) as the socket sees it; remote is the endpoint.
type Tuple = (SocketAddr, SocketAddr);

#[derive(Default)]
pub struct FlowTable {
    flows: HashMap<u64, Flow>,
    /// The socket's own tuple → cookie.
    by_tuple: HashMap<Tuple, u64>,
    /// A tuple rewritten by NAT, as seen on the uplink → cookie.
    by_nat_tuple: HashMap<Tuple, u64>,
    /// (endpoint, seq, ack) of packets sockets sent recently → (cookie, when).
    sent: HashMap<(SocketAddr, u32, u32), (u64, Nanos)>,
    /// Flows whose connection ended, by when, oldest first.
    ended: VecDeque<(Nanos, u64)>,
    evicted: u64,
}

/// `cookie`'s key in `map` becomes `new` (from `old`, which goes unless
/// another flow took it since).
fn replace_key(map: &mut HashMap<Tuple, u64>, old: Option<Tuple>, new: Tuple, cookie: u64) {
    if let Some(old) = old {
        if map.get(&old) == Some(&cookie) {
            map.remove(&old);
        }
    }
    map.insert(new, cookie);
}

fn ns(d: Duration) -> Nanos {
    d.as_nanos() as Nanos
}

impl FlowTable {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn get(&self, cookie: u64) -> Option<&Flow> {
        self.flows.get(&cookie)
    }

    pub fn get_mut(&mut self, cookie: u64) -> Option<&mut Flow> {
        self.flows.get_mut(&cookie)
    }

    fn flow_mut(&mut self, cookie: u64, cgroup_id: u64, now: Nanos) -> &mut Flow {
        if !self.flows.contains_key(&cookie) && self.flows.len() >= MAX_FLOWS {
            self.sweep(now);
            if self.flows.len() >= MAX_FLOWS {
                self.evict_oldest();
            }
        }
        let f = self.flows.entry(cookie).or_insert_with(|| Flow {
            cookie,
            cgroup_id,
            ..Default::default()
        });
        if cgroup_id != 0 {
            f.cgroup_id = cgroup_id;
        }
        f.last_seen = f.last_seen.max(now);
        f
    }

    /// A process connected: remember who it is.
    pub fn on_connect(
        &mut self,
        cookie: u64,
        cgroup_id: u64,
        pid: u32,
        comm: std::sync::Arc<str>,
        now: Nanos,
    ) -> &mut Flow {
        let f = self.flow_mut(cookie, cgroup_id, now);
        f.pid = Some(pid);
        f.comm = Some(comm);
        f
    }

    /// A packet at a socket (cgroup hook). `sent` is true for packets the
    /// socket sent to the endpoint; then seq/ack are kept for NAT matching.
    pub fn on_socket_packet(
        &mut self,
        cookie: u64,
        cgroup_id: u64,
        (local, endpoint): Tuple,
        tcp_seq_ack: Option<(u32, u32)>,
        sent: bool,
        now: Nanos,
    ) -> &Flow {
        if sent {
            if let Some((seq, ack)) = tcp_seq_ack {
                if self.sent.len() >= MAX_SENT {
                    self.evict_sent(now);
                }
                self.sent.insert((endpoint, seq, ack), (cookie, now));
            }
        }
        let tuple = (local, endpoint);
        let f = self.flow_mut(cookie, cgroup_id, now);
        if f.tuple != Some(tuple) {
            let old = f.tuple.replace(tuple);
            replace_key(&mut self.by_tuple, old, tuple, cookie);
        }
        &self.flows[&cookie]
    }

    /// The connection of `cookie` ended (a FIN or RST at its socket): the
    /// flow is forgotten `ENDED_LINGER` later.
    pub fn ended(&mut self, cookie: u64, now: Nanos) {
        if let Some(f) = self.flows.get_mut(&cookie).filter(|f| !f.ended) {
            f.ended = true;
            self.ended.push_back((now, cookie));
        }
    }

    /// Forget the flows whose connection ended `ENDED_LINGER` before `now`.
    /// Cheap when none is due: call it with every packet.
    pub fn forget_ended(&mut self, now: Nanos) {
        while let Some(&(t, cookie)) = self.ended.front() {
            if now.saturating_sub(t) < ns(ENDED_LINGER) {
                break;
            }
            self.ended.pop_front();
            if let Some(f) = self.flows.remove(&cookie) {
                for (map, key) in
                    [(&mut self.by_tuple, f.tuple), (&mut self.by_nat_tuple, f.nat_tuple)]
                {
                    if let Some(k) = key {
                        if map.get(&k) == Some(&cookie) {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
    }

    /// Whether the socket `cookie` already sent (or, with `sent` false,
    /// received) this segment: a retransmission. `kind` from
    /// [`segment_kind`]; segments of kind 0 never are.
    pub fn retransmit(&mut self, cookie: u64, sent: bool, seq: u32, kind: u8) -> bool {
        let Some(f) = self.flows.get_mut(&cookie) else { return false };
        if kind == 0 {
            return false;
        }
        let s = &mut f.segments[usize::from(!sent)];
        if s.seen.contains(&(seq, kind)) {
            return true;
        }
        s.seen[s.next] = (seq, kind);
        s.next = (s.next + 1) % SEGMENTS;
        false
    }

    /// A packet to an endpoint leaving an uplink: which flow sent it?
    pub fn on_uplink_egress(
        &mut self,
        local: SocketAddr,
        endpoint: SocketAddr,
        tcp_seq_ack: Option<(u32, u32)>,
        now: Nanos,
    ) -> Option<&Flow> {
        let tuple = (local, endpoint);
        let cookie = match self.by_tuple.get(&tuple).or_else(|| self.by_nat_tuple.get(&tuple)) {
            Some(c) => *c,
            None => {
                let (seq, ack) = tcp_seq_ack?;
                let (c, _) = *self.sent.get(&(endpoint, seq, ack))?;
                let old = self.flows.get_mut(&c)?.nat_tuple.replace(tuple);
                replace_key(&mut self.by_nat_tuple, old, tuple, c);
                c
            }
        };
        self.touch(cookie, now)
    }

    /// A packet between `local` and an endpoint seen without a socket (uplink
    /// ingress, a drop, an ICMP error): which flow is it?
    pub fn lookup(&mut self, local: SocketAddr, endpoint: SocketAddr, now: Nanos) -> Option<&Flow> {
        let tuple = (local, endpoint);
        let cookie = *self.by_tuple.get(&tuple).or_else(|| self.by_nat_tuple.get(&tuple))?;
        self.touch(cookie, now)
    }

    fn touch(&mut self, cookie: u64, now: Nanos) -> Option<&Flow> {
        let f = self.flows.get_mut(&cookie)?;
        f.last_seen = f.last_seen.max(now);
        Some(f)
    }

    /// Forget idle flows and stale NAT candidates.
    pub fn sweep(&mut self, now: Nanos) {
        let before = self.flows.len();
        self.flows.retain(|_, f| now.saturating_sub(f.last_seen) < ns(IDLE));
        self.evicted += (before - self.flows.len()) as u64;
        self.sent.retain(|_, (_, t)| now.saturating_sub(*t) < ns(NAT_WINDOW));
        self.drop_dangling();
    }

    /// A batch, so that a flood of new flows does not pay a pass over
    /// every map per flow.
    fn evict_oldest(&mut self) {
        for cookie in oldest_eighth(self.flows.iter().map(|(c, f)| (*c, f.last_seen))) {
            self.flows.remove(&cookie);
            self.evicted += 1;
        }
        self.drop_dangling();
    }

    /// The sent segments are full: those past the NAT window go, else the
    /// oldest eighth.
    fn evict_sent(&mut self, now: Nanos) {
        self.sent.retain(|_, (_, t)| now.saturating_sub(*t) < ns(NAT_WINDOW));
        if self.sent.len() >= MAX_SENT {
            for k in oldest_eighth(self.sent.iter().map(|(k, (_, t))| (*k, *t))) {
                self.sent.remove(&k);
            }
        }
    }

    fn drop_dangling(&mut self) {
        let flows = &self.flows;
        self.by_tuple.retain(|_, c| flows.contains_key(c));
        self.by_nat_tuple.retain(|_, c| flows.contains_key(c));
        self.sent.retain(|_, (c, _)| flows.contains_key(c));
        self.ended.retain(|(_, c)| flows.contains_key(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    const S: Nanos = 1_000_000_000;

    #[test]
    fn a_socket_writing_from_ever_new_tuples_keeps_one_of_each() {
        let mut t = FlowTable::new();
        let ep = sa("169.254.169.254:80");
        for i in 0..10_000u32 {
            let local = SocketAddr::new(std::net::Ipv4Addr::from(0x0a80_0000 | i).into(), 40000);
            t.on_socket_packet(7, 42, (local, ep), Some((i, 0)), true, S + u64::from(i));
            // The uplink learns each as a NAT tuple of the same flow.
            let nat = SocketAddr::new([192, 0, 2, 1].into(), 1024 + (i % 60000) as u16);
            assert!(t.on_uplink_egress(nat, ep, Some((i, 0)), S + u64::from(i)).is_some());
        }
        assert_eq!((t.len(), t.by_tuple.len(), t.by_nat_tuple.len()), (1, 1, 1));
        // The latest tuple names the flow; an earlier one no longer does.
        let last = SocketAddr::new(std::net::Ipv4Addr::from(0x0a80_0000 | 9_999).into(), 40000);
        assert_eq!(t.lookup(last, ep, 2 * S).map(|f| f.cookie), Some(7));
        let first = SocketAddr::new(std::net::Ipv4Addr::from(0x0a80_0000).into(), 40000);
        assert!(t.lookup(first, ep, 2 * S).is_none());
        // Sent segments are bounded too, all within the NAT window.
        for i in 0..(MAX_SENT as u32 + 100) {
            t.on_socket_packet(7, 42, (last, ep), Some((i, 1)), true, 3 * S);
        }
        assert!(t.sent.len() <= MAX_SENT, "{}", t.sent.len());
    }

    #[test]
    fn routed_flow_matches_by_tuple() {
        let mut t = FlowTable::new();
        t.on_connect(7, 42, 100, "curl".into(), S);
        t.on_socket_packet(
            7,
            42,
            (sa("198.18.1.2:4000"), sa("169.254.169.254:80")),
            Some((1, 0)),
            true,
            S,
        );
        let f = t
            .on_uplink_egress(sa("198.18.1.2:4000"), sa("169.254.169.254:80"), Some((1, 0)), S)
            .unwrap();
        assert_eq!((f.cookie, f.cgroup_id, f.pid), (7, 42, Some(100)));
        assert_eq!(t.lookup(sa("198.18.1.2:4000"), sa("169.254.169.254:80"), S).unwrap().cookie, 7);
    }

    #[test]
    fn nat_flow_matches_by_sequence_then_by_learned_tuple() {
        let mut t = FlowTable::new();
        let ep = sa("169.254.169.254:80");
        t.on_socket_packet(9, 5, (sa("198.18.2.2:5000"), ep), Some((1000, 0)), true, S);
        // The uplink sees the host's address and another port.
        let f = t.on_uplink_egress(sa("198.18.0.2:61000"), ep, Some((1000, 0)), S).unwrap();
        assert_eq!(f.cookie, 9);
        // The reply arrives addressed to the rewritten tuple.
        assert_eq!(t.lookup(sa("198.18.0.2:61000"), ep, S).unwrap().cookie, 9);
        // An unrelated sequence number on another tuple is not matched.
        assert!(t.on_uplink_egress(sa("198.18.0.2:61001"), ep, Some((5, 0)), S).is_none());
    }

    #[test]
    fn two_containers_behind_one_nat_stay_apart() {
        let mut t = FlowTable::new();
        let ep = sa("169.254.169.254:80");
        t.on_socket_packet(1, 10, (sa("198.18.2.2:5000"), ep), Some((111, 0)), true, S);
        t.on_socket_packet(2, 20, (sa("198.18.2.3:5000"), ep), Some((222, 0)), true, S);
        assert_eq!(
            t.on_uplink_egress(sa("198.18.0.2:6002"), ep, Some((222, 0)), S).unwrap().cgroup_id,
            20
        );
        assert_eq!(
            t.on_uplink_egress(sa("198.18.0.2:6001"), ep, Some((111, 0)), S).unwrap().cgroup_id,
            10
        );
        assert_eq!(t.lookup(sa("198.18.0.2:6001"), ep, S).unwrap().cookie, 1);
    }

    #[test]
    fn idle_flows_and_stale_nat_candidates_are_evicted() {
        let mut t = FlowTable::new();
        let ep = sa("169.254.169.254:80");
        t.on_socket_packet(1, 10, (sa("198.18.2.2:5000"), ep), Some((111, 0)), true, S);
        t.sweep(S + ns(NAT_WINDOW) + 1);
        // Too late for NAT matching, still known by its own tuple.
        assert!(
            t.on_uplink_egress(sa("198.18.0.2:6001"), ep, Some((111, 0)), S + ns(NAT_WINDOW) + 1)
                .is_none()
        );
        assert!(t.lookup(sa("198.18.2.2:5000"), ep, S).is_some());
        t.sweep(S + ns(IDLE) + ns(NAT_WINDOW) + 2);
        assert_eq!(t.len(), 0);
        assert!(t.lookup(sa("198.18.2.2:5000"), ep, S).is_none());
        assert_eq!(t.evicted(), 1);
    }

    #[test]
    fn an_ended_flow_is_forgotten_after_its_linger() {
        let mut t = FlowTable::new();
        let ep = sa("169.254.169.254:80");
        t.on_socket_packet(9, 5, (sa("198.18.2.2:5000"), ep), Some((1000, 0)), true, S);
        t.on_uplink_egress(sa("198.18.0.2:61000"), ep, Some((1000, 0)), S).unwrap();
        t.on_socket_packet(8, 5, (sa("198.18.2.2:5001"), ep), Some((2000, 0)), true, S);
        t.ended(9, 2 * S);
        t.ended(9, 3 * S); // a second FIN changes nothing
        t.forget_ended(2 * S + ns(ENDED_LINGER) - 1);
        // A late reply on the rewritten tuple is still the flow's.
        assert_eq!(t.lookup(sa("198.18.0.2:61000"), ep, 2 * S).unwrap().cookie, 9);
        t.forget_ended(2 * S + ns(ENDED_LINGER));
        assert!(t.get(9).is_none());
        assert!(t.lookup(sa("198.18.0.2:61000"), ep, 3 * S).is_none());
        assert!(t.lookup(sa("198.18.2.2:5000"), ep, 3 * S).is_none());
        // The other flow, still open, stays.
        assert_eq!(t.lookup(sa("198.18.2.2:5001"), ep, 3 * S).unwrap().cookie, 8);
        assert_eq!((t.len(), t.ended.len()), (1, 0));
    }

    #[test]
    fn table_is_bounded() {
        let mut t = FlowTable::new();
        let ep = sa("169.254.169.254:80");
        for i in 0..(MAX_FLOWS as u64 + 10) {
            let local =
                SocketAddr::new([10, (i >> 16) as u8, (i >> 8) as u8, i as u8].into(), 1000);
            t.on_socket_packet(i + 1, 1, (local, ep), None, true, S + i);
        }
        // Full, the oldest eighth went in one batch.
        assert!(t.len() <= MAX_FLOWS && t.len() > MAX_FLOWS * 7 / 8, "{}", t.len());
        assert!(t.get(1).is_none(), "the oldest flow goes first");
        assert!(t.get(MAX_FLOWS as u64 + 10).is_some());
    }
}
