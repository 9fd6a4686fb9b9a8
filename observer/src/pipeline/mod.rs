//! Record → Event: decode the snapshot, name the flow and the cgroup.
//!
//! On cgroup v1 hosts a container's socket may sit in the cgroup2 root, and
//! its packets name no container; the first packet of such a flow is held
//! (at most [`VETH_WAIT`]) until the same packet is seen entering the host on
//! the container's veth, which names it (identity/netns.rs). The veth is then
//! remembered for the socket's network namespace, so later flows from it are
//! named at connect and never wait.
mod hold;

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use foldhash::{HashMap, HashMapExt};
use observer_ebpf::{BudgetKey, Hook, Record};

use self::hold::HoldQueue;
use crate::{
    capture::{
        decode::{self, Http, IcmpError, IcmpKind, Packet, Proto},
        kallsyms::{self, Locations},
    },
    correlate::flows::{Flow, FlowTable, segment_kind},
    identity::{Container, Identities},
    model::{self, Event, Kind, TcpFlags},
    sys::{clock::Clock, socket::own_netns_cookie},
};

/// Counters of input the pipeline skipped, reported on exit.
#[derive(Default, Debug)]
pub struct Skipped {
    pub malformed: u64,
    pub unknown_hook: u64,
    /// Packets a socket had received and was freeing unread as it closed,
    /// and bare FINs that met a socket already closed.
    pub purged: u64,
}

/// How long a flow's first packets wait for the veth that names them. The
/// veth sees the same packet microseconds after the socket did; this only
/// bounds the wait when no veth ever will (a macvlan or a routed netns).
pub const VETH_WAIT: Duration = Duration::from_millis(100);
/// Network namespaces whose veth is remembered.
const MAX_NETNS: usize = 16_384;
/// Records waiting for a veth at most (about 600 bytes each).
const MAX_HELD: usize = 4_096;

/// What the kernel side names by number: drop reasons, drop locations,
/// interfaces (from capture, at start).
#[derive(Default)]
pub struct KernelNames {
    /// Drop-reason number → name.
    pub drop_reasons: std::collections::HashMap<u32, String>,
    /// Drop locations → function names (capture::kallsyms).
    pub locations: Locations,
    /// ifindex → name.
    pub ifaces: std::collections::HashMap<u32, std::sync::Arc<str>>,
}

pub struct Pipeline {
    node: std::sync::Arc<str>,
    clock: Clock,
    flows: FlowTable,
    identities: Option<Identities>,
    names: KernelNames,
    skipped: Skipped,
    /// The observer's own network namespace cookie (the host's, as deployed).
    own_netns: Option<u64>,
    last_sweep: u64,
    /// The cgroup v1 fallback is on: container veths are attached.
    veth_fallback: bool,
    /// Network namespace cookie → the container veth it sends by (None: it
    /// was waited for and did not come).
    netns_veth: HashMap<u64, Option<u32>>,
    /// Records of flows waiting for their veth.
    held: HoldQueue,
}

impl Pipeline {
    pub fn new(
        node: std::sync::Arc<str>,
        clock: Clock,
        identities: Option<Identities>,
        names: KernelNames,
    ) -> Self {
        Self {
            node,
            clock,
            flows: FlowTable::new(),
            identities,
            names,
            skipped: Skipped::default(),
            own_netns: own_netns_cookie(),
            last_sweep: 0,
            veth_fallback: false,
            netns_veth: HashMap::new(),
            held: HoldQueue::new(MAX_HELD),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn skipped(&self) -> &Skipped {
        &self.skipped
    }

    /// Flows the flow table forgot, idle or to stay in bounds.
    pub fn flows_evicted(&self) -> u64 {
        self.flows.evicted()
    }

    /// The container veths attached now; an empty list turns the fallback off.
    pub fn set_veths(&mut self, links: &[crate::sys::netlink::Link]) {
        self.veth_fallback = !links.is_empty();
        if let Some(ids) = self.identities.as_mut() {
            ids.set_veths(links);
        }
    }

    fn event(&self, kind: Kind, ts_ns: u64) -> Event {
        Event::new(kind, self.clock.wall(ts_ns), self.node.clone())
    }

    fn with_flow(&mut self, ev: &mut Event, flow: Option<Flow>) {
        if let Some(f) = flow {
            ev.flow = Some(f.cookie);
            let host_netns = self.host_netns(&f);
            let mut veth_names_it = host_netns != Some(true);
            if f.cgroup_id != 0 {
                ev.cgroup_id = Some(f.cgroup_id);
                ev.container = self.identities.as_mut().and_then(|i| i.identify(f.cgroup_id));
                veth_names_it &= ev.container.as_deref().is_none_or(Container::is_shared_cgroup);
                // Not a container the runtime conventions know, in the host's
                // network namespace: a host process. In another network
                // namespace: not a host process, whatever its cgroup says.
                if let Some(c) = ev.container.as_mut() {
                    let host = match host_netns {
                        Some(true) if c.runtime.is_none() && c.id.is_none() => true,
                        Some(false) => false,
                        _ => c.host,
                    };
                    if c.host != host {
                        // Said once, to the cache: later events share it.
                        let ids = self.identities.as_mut();
                        match ids.and_then(|i| i.set_host(f.cgroup_id, host)) {
                            Some(cached) => *c = cached,
                            None => std::sync::Arc::make_mut(c).host = host,
                        }
                    }
                }
            }
            // Its cgroup is shared, its veth is not: the container is told
            // apart by its network namespace.
            if veth_names_it {
                let veth =
                    f.veth.or_else(|| self.netns_veth.get(&f.netns_cookie).copied().flatten());
                if let Some(c) = veth.and_then(|v| self.identities.as_mut()?.identify_veth(v)) {
                    ev.container = Some(c);
                    ev.cgroup_id = None;
                }
            }
            ev.cgroup = ev.container.as_ref().and_then(|c| c.cgroup.clone());
            ev.pid = f.pid;
            ev.comm = f.comm;
        }
    }

    /// The flow's process shares the observer's network namespace (host
    /// networking); None when either cookie is unknown.
    fn host_netns(&self, f: &Flow) -> Option<bool> {
        self.own_netns.filter(|_| f.netns_cookie != 0).map(|own| own == f.netns_cookie)
    }

    /// A socket packet of a flow whose container only its veth can name,
    /// and the veth has not yet been seen: it waits (and so do the flow's
    /// later packets, to keep their order).
    fn waits_for_veth(&mut self, rec: &Record) -> bool {
        if !self.veth_fallback {
            return false;
        }
        if self.held.holds(rec.cookie) {
            return true;
        }
        let Some(f) = self.flows.get(rec.cookie) else { return false };
        if f.veth.is_some() || self.host_netns(f) != Some(false) {
            return false;
        }
        if self.netns_veth.contains_key(&f.netns_cookie) {
            return false;
        }
        let cgroup_id = f.cgroup_id;
        self.identities
            .as_mut()
            .and_then(|i| i.identify(cgroup_id))
            .is_none_or(|c| c.is_shared_cgroup())
    }

    /// A container's packet entering the host on its veth: the veth of the
    /// flow (by socket cookie) and of the flow's network namespace.
    fn on_veth(&mut self, rec: &Record, out: &mut Vec<Event>) {
        // Forwarded packets (a netns behind a router netns) have no socket:
        // the veth is not where they were sent from.
        if rec.cookie == 0 {
            return;
        }
        let Some(f) = self.flows.get_mut(rec.cookie) else { return };
        if f.veth.is_none() {
            f.veth = Some(rec.ifindex);
        }
        if f.netns_cookie != 0 {
            if self.netns_veth.len() >= MAX_NETNS {
                self.netns_veth.clear();
            }
            self.netns_veth.insert(f.netns_cookie, Some(rec.ifindex));
        }
        self.release(&[rec.cookie], out);
    }

    /// Process the held records of the flows `cookies`, in order.
    fn release(&mut self, cookies: &[u64], out: &mut Vec<Event>) {
        for h in self.held.take(cookies) {
            self.event_for(&h, out);
        }
    }

    /// Release what waited longer than [`VETH_WAIT`] by `now_ns` (all of it
    /// with `u64::MAX`, at the end); their namespaces stop waiting.
    pub fn release_due(&mut self, now_ns: u64, out: &mut Vec<Event>) {
        let due = self.held.due(now_ns.saturating_sub(VETH_WAIT.as_nanos() as u64));
        for cookie in &due {
            if let Some(ns) = self.flows.get(*cookie).map(|f| f.netns_cookie).filter(|&n| n != 0) {
                self.netns_veth.entry(ns).or_insert(None);
            }
        }
        self.release(&due, out);
    }

    /// A `suppressed` event: `count` records of the workload with budget key
    /// `key` were held back (see `observer_ebpf::Budget`); `None`: the
    /// node-wide budget of cgroup_mkdir records.
    pub fn suppressed(&mut self, key: Option<u64>, count: u64, ts: SystemTime) -> Event {
        let mut ev = Event::new(Kind::Suppressed, ts, self.node.clone());
        ev.count = Some(count);
        let Some(key) = key else {
            ev.via = Some("cgroup_mkdir".to_string());
            return ev;
        };
        match BudgetKey::from(key) {
            BudgetKey::Cgroup(id) => {
                ev.cgroup_id = Some(id);
                ev.container = self.identities.as_mut().and_then(|i| i.identify(id));
                ev.cgroup = ev.container.as_ref().and_then(|c| c.cgroup.clone());
            }
            BudgetKey::Interface(ifindex) => {
                ev.container = self.identities.as_mut().and_then(|i| i.identify_veth(ifindex));
                ev.iface = Some(crate::sys::netlink::name_of(ifindex).into());
            }
            BudgetKey::Ipv4(addr, port) => {
                let ip = std::net::Ipv4Addr::from(addr.to_ne_bytes());
                ev.src = Some(SocketAddr::new(ip.into(), port));
            }
            BudgetKey::Ipv6 => {}
        }
        ev
    }

    /// The `suppressed` events of one tick: one per workload, and the flows'
    /// (a budget each, new flows every second) summed into one line, so
    /// that a busy node's uplink says it once, not once per connection.
    pub fn suppressed_all(&mut self, held: Vec<(Option<u64>, u64)>, ts: SystemTime) -> Vec<Event> {
        let mut out = Vec::new();
        let mut flows = 0;
        for (key, n) in held {
            match key {
                Some(k) if BudgetKey::is_flow(k) => flows += n,
                _ => out.push(self.suppressed(key, n, ts)),
            }
        }
        if flows > 0 {
            let mut ev = Event::new(Kind::Suppressed, ts, self.node.clone());
            ev.count = Some(flows);
            ev.via = Some("flows".to_string());
            out.push(ev);
        }
        out
    }

    /// A `node` event, when what the cluster says of this node is news.
    pub fn node_event(&mut self, ts: SystemTime) -> Option<Event> {
        let info = self.identities.as_mut()?.node_news()?;
        let mut ev = Event::new(Kind::Node, ts, self.node.clone());
        ev.node_info = Some(Box::new(info));
        Some(ev)
    }

    /// Records are waiting for a veth.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The events `rec` makes, now or (for a flow waiting for its veth) when
    /// the veth is seen: appended to `out`.
    pub fn process(&mut self, rec: &Record, out: &mut Vec<Event>) {
        match Hook::try_from(rec.hook).ok() {
            Some(Hook::CgroupEgress | Hook::CgroupIngress) if self.waits_for_veth(rec) => {
                // Bounded: under a flood the oldest go out unnamed.
                if let Some(oldest) = self.held.push(*rec) {
                    self.event_for(&oldest, out);
                }
            }
            // The SYN a connect stands for waits like the socket's packets
            // (the connect itself teaches the table at once).
            Some(Hook::Connect) if rec.folded & observer_ebpf::FOLDED_SYN != 0 => {
                self.sweep(rec.ts_ns);
                self.learn_connect(rec);
                if !self.waits_for_veth(rec) {
                    let flow = self.flows.get(rec.cookie).cloned();
                    out.extend(flow.map(|f| self.connect_syn(rec, f)));
                } else if let Some(oldest) = self.held.push(*rec) {
                    self.event_for(&oldest, out);
                }
            }
            Some(Hook::VethIngress) => {
                self.sweep(rec.ts_ns);
                self.on_veth(rec, out);
            }
            Some(Hook::CgroupMkdir) => {
                let n = (rec.snap_len as usize).min(rec.data.len());
                let path = rec.data[..n].split(|&b| b == 0).next().unwrap_or_default();
                match (std::str::from_utf8(path), self.identities.as_mut()) {
                    (Ok(p), Some(ids)) if !p.is_empty() => ids.learn_cgroup(rec.cgroup_id, p),
                    (Ok(_), _) => {}
                    (Err(_), _) => self.skipped.malformed += 1,
                }
            }
            _ => self.event_for(rec, out),
        }
    }

    fn sweep(&mut self, now: u64) {
        self.flows.forget_ended(now);
        if now.saturating_sub(self.last_sweep) > 10_000_000_000 {
            self.flows.sweep(now);
            self.last_sweep = now;
        }
    }

    /// The events `rec` makes, appended to `out`: a connect teaches the
    /// table (and makes the SYN it stands for); a reply's or a drop's event
    /// carries the uplink's sightings the kernel folded into its record.
    fn event_for(&mut self, rec: &Record, out: &mut Vec<Event>) {
        self.sweep(rec.ts_ns);
        let Some(hook) = Hook::try_from(rec.hook).ok() else {
            self.skipped.unknown_hook += 1;
            return;
        };
        if hook == Hook::Connect {
            let flow = self.learn_connect(rec).clone();
            if rec.folded & observer_ebpf::FOLDED_SYN != 0 {
                out.push(self.connect_syn(rec, flow));
            }
            return;
        }
        let n = (rec.snap_len as usize).min(rec.data.len());
        let pkt = match decode::decode(&rec.data[..n], rec.family) {
            Ok(p) => p,
            Err(_) => {
                self.skipped.malformed += 1;
                return;
            }
        };
        let ev = match hook {
            Hook::CgroupEgress | Hook::CgroupIngress => self.socket_packet(hook, rec, &pkt),
            Hook::TcEgress if pkt.icmp.is_some() => self.icmp_drop(rec, &pkt),
            Hook::TcIngress | Hook::TcEgress => self.uplink_packet(hook, rec, &pkt),
            Hook::Drop => self.drop(rec, &pkt),
            Hook::Connect | Hook::VethIngress | Hook::CgroupMkdir => None,
        };
        let Some(mut ev) = ev else { return };
        if rec.folded & (observer_ebpf::FOLDED_REPLY | observer_ebpf::FOLDED_REQUEST) != 0 {
            ev.host = Some(self.host_side(rec));
        }
        out.push(ev);
    }

    /// A connect teaches the flow table who the socket is.
    fn learn_connect(&mut self, rec: &Record) -> &Flow {
        let comm = comm(&rec.comm);
        let pid = (rec.pid_tgid >> 32) as u32;
        let veth = self.netns_veth.get(&rec.netns_cookie).copied().flatten();
        let f = self.flows.on_connect(rec.cookie, rec.cgroup_id, pid, comm, rec.ts_ns);
        f.netns_cookie = rec.netns_cookie;
        f.veth = f.veth.or(veth);
        f
    }

    /// The SYN a connect stands for (`FOLDED_SYN`): the kernel records the
    /// connect, not the socket's SYN that follows it.
    fn connect_syn(&mut self, rec: &Record, flow: Flow) -> Event {
        let mut ev = self.event(Kind::Request, rec.ts_ns);
        self.with_flow(&mut ev, Some(flow));
        let ip: std::net::IpAddr = if rec.family == 6 {
            std::net::Ipv6Addr::from(rec.daddr).into()
        } else {
            std::net::Ipv4Addr::new(rec.daddr[0], rec.daddr[1], rec.daddr[2], rec.daddr[3]).into()
        };
        ev.dst = Some(SocketAddr::new(ip, rec.dport));
        ev.proto = Some(model::Proto::Tcp);
        ev.tcp_flags = Some(TcpFlags::SYN);
        ev.len = Some(0);
        ev
    }

    /// An interface's name (as at start), else `if<index>`.
    fn iface(&self, ifindex: u32) -> std::sync::Arc<str> {
        self.names.ifaces.get(&ifindex).cloned().unwrap_or_else(|| format!("if{ifindex}").into())
    }

    /// The uplink's sightings the kernel folded into a reply's (or a
    /// dropped reply's) record.
    fn host_side(&self, rec: &Record) -> model::HostSide {
        let iface = self.iface(rec.host_ifindex);
        let reply = rec.folded & observer_ebpf::FOLDED_REPLY != 0;
        let request = rec.folded & observer_ebpf::FOLDED_REQUEST != 0;
        model::HostSide {
            iface: Some(iface),
            ttl: reply.then_some(rec.host_ttl),
            status: (reply && rec.host_status != 0).then_some(rec.host_status),
            request: request.then(|| {
                let flags = TcpFlags::from_bits_truncate(rec.host_req_flags);
                (rec.host_req_seq, flags, rec.host_req_ttl)
            }),
        }
    }

    fn socket_packet(&mut self, hook: Hook, rec: &Record, pkt: &Packet) -> Option<Event> {
        // ICMP errors toward an endpoint also pass a socket hook; the uplink
        // reports them once, as drop evidence.
        if !matches!(pkt.proto, Proto::Tcp | Proto::Udp) {
            return None;
        }
        let sent = hook == Hook::CgroupEgress;
        let (local, endpoint) = if sent { (pkt.src, pkt.dst) } else { (pkt.dst, pkt.src) };
        let seq_ack = pkt.tcp.as_ref().map(|t| (t.seq, t.ack));
        let flow = self
            .flows
            .on_socket_packet(
                rec.cookie,
                rec.cgroup_id,
                (local, endpoint),
                seq_ack,
                sent,
                rec.ts_ns,
            )
            .clone();
        let mut ev = self.event(if sent { Kind::Request } else { Kind::Reply }, rec.ts_ns);
        self.with_flow(&mut ev, Some(flow));
        fill_packet(&mut ev, pkt);
        if let Some(t) = &pkt.tcp {
            let kind = segment_kind(t.flags, pkt.payload_len);
            if self.flows.retransmit(rec.cookie, sent, t.seq, kind) {
                ev.retransmit = Some(true);
            }
            let closing = if sent { TcpFlags::FIN | TcpFlags::RST } else { TcpFlags::RST };
            if t.flags.intersects(closing) {
                self.flows.ended(rec.cookie, rec.ts_ns);
            }
        }
        Some(ev)
    }

    fn uplink_packet(&mut self, hook: Hook, rec: &Record, pkt: &Packet) -> Option<Event> {
        let egress = hook == Hook::TcEgress;
        let flow = if egress {
            let seq_ack = pkt.tcp.as_ref().map(|t| (t.seq, t.ack));
            self.flows.on_uplink_egress(pkt.src, pkt.dst, seq_ack, rec.ts_ns).cloned()
        } else {
            self.flows.lookup(pkt.dst, pkt.src, rec.ts_ns).cloned()
        };
        let mut ev =
            self.event(if egress { Kind::HostEgress } else { Kind::HostIngress }, rec.ts_ns);
        ev.iface = Some(self.iface(rec.ifindex));
        self.with_flow(&mut ev, flow);
        fill_packet(&mut ev, pkt);
        Some(ev)
    }

    fn drop(&mut self, rec: &Record, pkt: &Packet) -> Option<Event> {
        // Kernels before 5.17 give no reason (0); later ones always do.
        let reason = match self.names.drop_reasons.get(&rec.reason) {
            Some(name) => Some(name.clone()),
            None if self.names.drop_reasons.is_empty() => None,
            None => Some(format!("REASON_{}", rec.reason)),
        };
        let location = self.names.locations.name(rec.location);
        // Delivered, then freed unread when its socket closed (a FIN after
        // the client hung up): nothing was lost on the way. Kernels without
        // the QUEUE_PURGE reason say so by where they freed it.
        // A bare FIN (no data) freed outside forwarding without a reason:
        // the client had closed first, and its TIME_WAIT socket took the
        // endpoint's FIN (5.10 frees it with kfree_skb in tcp_v4_rcv). The
        // end of a finished exchange, not a lost reply; in forwarding it
        // stays evidence.
        let bare_fin = pkt.tcp.as_ref().is_some_and(|t| {
            t.flags.contains(TcpFlags::FIN)
                && !t.flags.intersects(TcpFlags::SYN | TcpFlags::RST)
                && pkt.payload_len == 0
        }) && !location.is_some_and(|l| kallsyms::FORWARD.contains(&l))
            && matches!(reason.as_deref(), None | Some("NOT_SPECIFIED"));
        if reason.as_deref() == Some("QUEUE_PURGE")
            || location.is_some_and(|l| kallsyms::DELIVERED.contains(&l))
            || bare_fin
        {
            self.skipped.purged += 1;
            return None;
        }
        let flow = self.flow_of(pkt.src, pkt.dst, rec.ts_ns);
        let mut ev = self.event(Kind::Drop, rec.ts_ns);
        ev.reason = reason;
        ev.location = location.map(str::to_string);
        self.with_flow(&mut ev, flow);
        fill_packet(&mut ev, pkt);
        Some(ev)
    }

    /// The host told an endpoint that one of its packets died in transit:
    /// the ICMP error quotes the dropped packet.
    fn icmp_drop(&mut self, rec: &Record, pkt: &Packet) -> Option<Event> {
        let icmp: &IcmpError = pkt.icmp.as_ref()?;
        if icmp.kind != IcmpKind::TimeExceeded {
            return None;
        }
        let flow = self.flow_of(icmp.inner_src, icmp.inner_dst, rec.ts_ns);
        let mut ev = self.event(Kind::Drop, rec.ts_ns);
        ev.reason = Some("TTL_EXCEEDED".into());
        ev.via = Some("icmp_time_exceeded".into());
        self.with_flow(&mut ev, flow);
        ev.src = Some(icmp.inner_src);
        ev.dst = Some(icmp.inner_dst);
        ev.ttl = Some(icmp.inner_ttl);
        ev.proto = Some(proto(icmp.inner_proto));
        ev.seq = icmp.inner_tcp_seq;
        Some(ev)
    }

    /// A packet seen without a socket: match whichever side is the local one.
    fn flow_of(&mut self, src: SocketAddr, dst: SocketAddr, now: u64) -> Option<Flow> {
        if let Some(f) = self.flows.lookup(dst, src, now) {
            return Some(f.clone());
        }
        self.flows.lookup(src, dst, now).cloned()
    }
}

fn comm(raw: &[u8; 16]) -> std::sync::Arc<str> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into()
}

fn proto(p: Proto) -> model::Proto {
    match p {
        Proto::Tcp => model::Proto::Tcp,
        Proto::Udp => model::Proto::Udp,
        Proto::Icmp => model::Proto::Icmp,
        Proto::Other(_) => model::Proto::Other,
    }
}

fn fill_packet(ev: &mut Event, pkt: &Packet) {
    ev.src = Some(pkt.src);
    ev.dst = Some(pkt.dst);
    ev.ttl = Some(pkt.ttl);
    ev.proto = Some(proto(pkt.proto));
    ev.len = Some(pkt.payload_len);
    if let Some(t) = &pkt.tcp {
        ev.tcp_flags = Some(t.flags);
        ev.seq = Some(t.seq);
        ev.ack = Some(t.ack);
    }
    match &pkt.http {
        Some(Http::Request { method, path, token_header, token_ttl_header, sdk, attempt }) => {
            ev.method = Some(method.clone());
            ev.path = Some(path.clone());
            ev.token_header = Some(*token_header);
            ev.token_ttl_header = Some(*token_ttl_header);
            ev.sdk = sdk.clone();
            ev.sdk_attempt = attempt.map(|(n, max)| [n, max]);
        }
        Some(Http::Response { status }) => ev.status = Some(*status),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::Link;

    const MS: u64 = 1_000_000;
    const HOST_NS: u64 = 1;
    const CONTAINER_NS: u64 = 77;

    /// An IPv4 TCP segment, TTL 64: from 198.18.2.2:40000 to
    /// 169.254.169.254:80, or (`inbound`) back.
    fn segment(inbound: bool, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (mut a, mut b) = (([198, 18, 2, 2], 40000u16), ([169, 254, 169, 254], 80u16));
        if inbound {
            (a, b) = (b, a);
        }
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(40 + payload.len() as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&a.0);
        p[16..20].copy_from_slice(&b.0);
        p[20..22].copy_from_slice(&a.1.to_be_bytes());
        p[22..24].copy_from_slice(&b.1.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&ack.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p.extend_from_slice(payload);
        p
    }

    /// A SYN from 198.18.2.2:40000 to 169.254.169.254:80.
    fn syn(seq: u32) -> Vec<u8> {
        segment(false, seq, 0, 0x02, b"")
    }

    fn rec(hook: Hook, ts_ns: u64, cookie: u64) -> Record {
        // SAFETY: Record is plain old data; all zeroes is a valid value.
        let mut r: Record = unsafe { std::mem::zeroed() };
        r.hook = hook as u8;
        r.ts_ns = ts_ns;
        r.cookie = cookie;
        r.family = 4;
        r
    }

    fn connect(ts: u64, cookie: u64, netns: u64) -> Record {
        let mut r = rec(Hook::Connect, ts, cookie);
        r.cgroup_id = 1;
        r.netns_cookie = netns;
        r.pid_tgid = 4242 << 32;
        r
    }

    fn packet(hook: Hook, ts: u64, cookie: u64, seq: u32) -> Record {
        let mut r = rec(hook, ts, cookie);
        let p = syn(seq);
        r.data[..p.len()].copy_from_slice(&p);
        r.snap_len = p.len() as u32;
        r.pkt_len = p.len() as u32;
        r.cgroup_id = if hook == Hook::CgroupEgress { 1 } else { 0 };
        r.ifindex = 9;
        r
    }

    fn pipeline(fallback: bool) -> Pipeline {
        let mut p = Pipeline::new("n".into(), Clock::now(), None, KernelNames::default());
        p.own_netns = Some(HOST_NS);
        if fallback {
            p.set_veths(&[Link {
                ifindex: 9,
                name: "veth9".into(),
                kind: Some("veth".into()),
                peer_netnsid: Some(3),
            }]);
        }
        p
    }

    fn kinds(out: &[Event]) -> Vec<(Kind, Option<u32>)> {
        out.iter().map(|e| (e.kind, e.seq)).collect()
    }

    #[test]
    fn a_suppressed_event_names_whose_budget_it_was() {
        use observer_ebpf::{flow_key_v4, flow_key_v6, interface_key};
        let mut p = pipeline(false);
        let ts = SystemTime::UNIX_EPOCH;
        let ev = p.suppressed(Some(42), 7, ts);
        assert_eq!(
            (ev.kind, ev.count, ev.cgroup_id, ev.src),
            (Kind::Suppressed, Some(7), Some(42), None)
        );
        let v4 = u32::from_ne_bytes([198, 18, 2, 2]);
        let ev = p.suppressed(Some(flow_key_v4(v4, 41000)), 1, ts);
        assert_eq!((ev.cgroup_id, ev.src), (None, Some("198.18.2.2:41000".parse().unwrap())));
        // The loopback interface always has index 1.
        let ev = p.suppressed(Some(interface_key(1)), 1, ts);
        assert_eq!((ev.cgroup_id, ev.src, ev.iface.as_deref()), (None, None, Some("lo")));
        let ev = p.suppressed(None, 3, ts);
        assert_eq!((ev.count, ev.via.as_deref()), (Some(3), Some("cgroup_mkdir")));
        // Equal first and third words: the folded key's upper word is zero,
        // which the IPv4 label once took for an IPv4 address.
        let words = |a: std::net::Ipv6Addr| -> [u32; 4] {
            std::array::from_fn(|i| {
                u32::from_ne_bytes(a.octets()[i * 4..][..4].try_into().unwrap())
            })
        };
        let key = flow_key_v6(&words("fd00::fd00:0:0:2".parse().unwrap()), 0);
        assert_eq!(key as u32, u32::from_ne_bytes([0, 0, 0, 2]));
        let ev = p.suppressed(Some(key), 1, ts);
        assert_eq!((ev.cgroup_id, ev.src, ev.iface), (None, None, None));
        // Which budget the kernel gives each: a v6 fold with the interface
        // bit set is still a flow's; a cgroup id is neither.
        use observer_ebpf::BudgetKey;
        let v6_with_bit_61 = flow_key_v6(&[1 << 29, 0, 0, 0], 0);
        assert_ne!(v6_with_bit_61 & (1 << 61), 0);
        for (key, flow, interface) in [
            (interface_key(7), false, true),
            (flow_key_v4(v4, 41000), true, false),
            (key, true, false),
            (v6_with_bit_61, true, false),
            (42, false, false),
        ] {
            assert_eq!((BudgetKey::is_flow(key), BudgetKey::is_interface(key)), (flow, interface));
        }
    }

    #[test]
    fn the_flows_held_back_in_a_tick_are_one_line() {
        use observer_ebpf::{flow_key_v4, interface_key};
        let mut p = pipeline(false);
        let held = (0..500u16)
            .map(|port| (Some(flow_key_v4(u32::from_ne_bytes([10, 0, 0, 2]), port)), 2))
            .chain([(Some(42), 7), (Some(interface_key(1)), 3), (None, 1)])
            .collect();
        let evs = p.suppressed_all(held, SystemTime::UNIX_EPOCH);
        assert_eq!(evs.len(), 4, "{evs:?}");
        let flows = evs.iter().find(|e| e.via.as_deref() == Some("flows")).unwrap();
        assert_eq!((flows.count, flows.src), (Some(1000), None));
        assert!(evs.iter().any(|e| e.cgroup_id == Some(42) && e.count == Some(7)));
    }

    /// 169.254.169.254:80 → 198.18.2.2:40000: the first segment of a
    /// reply (`HTTP/1.1 200 OK`), or (`status` false) a segment of the same
    /// length past the linear data.
    fn reply(seq: u32, ack: u32, status: bool) -> Vec<u8> {
        let body: &[u8] = if status { b"HTTP/1.1 200 OK\r" } else { &[0; 16] };
        segment(true, seq, ack, 0x18, body)
    }

    fn with_packet(mut r: Record, p: &[u8]) -> Record {
        r.data[..p.len()].copy_from_slice(p);
        r.snap_len = p.len() as u32;
        r.pkt_len = p.len() as u32;
        r
    }

    /// What the kernel folded into a reply's record rides on the reply's
    /// event (the diagnosis reads it as the uplink's); and a connect that
    /// stands for its socket's SYN is that SYN.
    #[test]
    fn folded_sightings_ride_on_the_reply() {
        use observer_ebpf::{FOLDED_REPLY, FOLDED_REQUEST, FOLDED_SYN};
        let mut p = pipeline(false);
        let mut out = Vec::new();
        let mut c = connect(0, 5, HOST_NS);
        c.folded = FOLDED_SYN;
        c.daddr[..4].copy_from_slice(&[169, 254, 169, 254]);
        c.dport = 80;
        p.process(&c, &mut out);
        let syn = out.pop().expect("the SYN the connect stands for");
        assert!(out.is_empty());
        assert_eq!(
            (syn.kind, syn.tcp_flags, syn.flow),
            (Kind::Request, Some(TcpFlags::SYN), Some(5))
        );
        assert_eq!(syn.dst, Some("169.254.169.254:80".parse().unwrap()));
        assert_eq!(syn.pid, Some(4242));

        let mut r = with_packet(rec(Hook::CgroupIngress, MS, 5), &reply(900, 161, true));
        r.cgroup_id = 1;
        r.folded = FOLDED_REPLY | FOLDED_REQUEST;
        (r.host_ttl, r.host_req_ttl, r.host_ifindex) = (2, 63, 1);
        (r.host_req_seq, r.host_req_flags, r.host_status) = (101, 0x18, 200);
        p.process(&r, &mut out);
        let [ev] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(
            (ev.kind, ev.seq, ev.ttl, ev.status),
            (Kind::Reply, Some(900), Some(64), Some(200))
        );
        let host = ev.host.as_ref().expect("folded");
        assert_eq!(
            (host.ttl, host.status, host.iface.as_deref()),
            (Some(2), Some(200), Some("if1"))
        );
        assert_eq!(host.request, Some((101, TcpFlags::PSH | TcpFlags::ACK, 63)));
        assert!(!serde_json::to_string(ev).unwrap().contains("host"), "never written");

        // A drop's record may not reach the reply's status line: the
        // uplink's sighting says it.
        out.clear();
        let mut d = with_packet(rec(Hook::Drop, 2 * MS, 0), &reply(900, 161, false));
        d.folded = FOLDED_REPLY;
        (d.host_ttl, d.host_ifindex, d.host_status) = (1, 1, 200);
        p.process(&d, &mut out);
        let [ev] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!((ev.kind, ev.status, ev.flow), (Kind::Drop, None, Some(5)));
        let host = ev.host.as_ref().expect("folded");
        assert_eq!((host.ttl, host.status, host.request), (Some(1), Some(200), None));
        // Nothing folded: nothing rides.
        out.clear();
        let plain = with_packet(rec(Hook::CgroupIngress, 3 * MS, 5), &reply(1000, 161, true));
        p.process(&plain, &mut out);
        assert_eq!(kinds(&out), [(Kind::Reply, Some(1000))]);
        assert!(out[0].host.is_none());
    }

    #[test]
    fn without_the_fallback_nothing_waits() {
        let mut p = pipeline(false);
        let mut out = Vec::new();
        p.process(&connect(0, 5, CONTAINER_NS), &mut out);
        p.process(&packet(Hook::CgroupEgress, MS, 5, 100), &mut out);
        assert_eq!(kinds(&out), [(Kind::Request, Some(100))]);
        assert!(!p.holding());
    }

    #[test]
    fn first_packets_wait_for_their_veth_in_order() {
        let mut p = pipeline(true);
        let mut out = Vec::new();
        p.process(&connect(0, 5, CONTAINER_NS), &mut out);
        p.process(&packet(Hook::CgroupEgress, MS, 5, 100), &mut out);
        p.process(&packet(Hook::CgroupEgress, 2 * MS, 5, 101), &mut out);
        assert!(out.is_empty() && p.holding(), "held until the veth is seen");
        p.process(&packet(Hook::VethIngress, MS + 10, 5, 100), &mut out);
        assert_eq!(kinds(&out), [(Kind::Request, Some(100)), (Kind::Request, Some(101))]);
        assert!(!p.holding());
        assert_eq!(p.flows.get(5).unwrap().veth, Some(9));

        // The next flow of that namespace knows its veth at connect.
        out.clear();
        p.process(&connect(10 * MS, 6, CONTAINER_NS), &mut out);
        assert_eq!(p.flows.get(6).unwrap().veth, Some(9));
        p.process(&packet(Hook::CgroupEgress, 11 * MS, 6, 200), &mut out);
        assert_eq!(kinds(&out), [(Kind::Request, Some(200))]);
    }

    /// As deployed the connect stands for the socket's SYN: that SYN waits
    /// for the veth too, and comes out first, named by it.
    #[test]
    fn the_syn_a_connect_stands_for_waits_for_the_veth() {
        let mut p = pipeline(true);
        let mut out = Vec::new();
        let mut c = connect(0, 5, CONTAINER_NS);
        c.folded = observer_ebpf::FOLDED_SYN;
        p.process(&c, &mut out);
        p.process(&packet(Hook::CgroupEgress, MS, 5, 100), &mut out);
        assert!(out.is_empty() && p.holding(), "held until the veth is seen");
        p.process(&packet(Hook::VethIngress, MS + 10, 5, 100), &mut out);
        assert_eq!(kinds(&out), [(Kind::Request, None), (Kind::Request, Some(100))]);
        assert_eq!(out[0].tcp_flags, Some(TcpFlags::SYN));
        assert_eq!(p.flows.get(5).unwrap().veth, Some(9));
        // Without the fallback, at once.
        let mut p = pipeline(false);
        out.clear();
        p.process(&c, &mut out);
        assert_eq!(kinds(&out), [(Kind::Request, None)]);
    }

    #[test]
    fn a_segment_sent_again_is_marked_a_retransmission() {
        let mut p = pipeline(false);
        let mut out = Vec::new();
        p.process(&connect(0, 5, HOST_NS), &mut out);
        p.process(&packet(Hook::CgroupEgress, MS, 5, 100), &mut out);
        p.process(&packet(Hook::CgroupEgress, 2 * MS, 5, 100), &mut out);
        p.process(&packet(Hook::CgroupEgress, 3 * MS, 5, 101), &mut out);
        let marks: Vec<_> = out.iter().map(|e| (e.seq, e.retransmit)).collect();
        assert_eq!(marks, [(Some(100), None), (Some(100), Some(true)), (Some(101), None)]);
        // Another socket may reuse a sequence number.
        p.process(&connect(4 * MS, 6, HOST_NS), &mut out);
        p.process(&packet(Hook::CgroupEgress, 5 * MS, 6, 100), &mut out);
        assert_eq!(out[3].retransmit, None);
    }

    #[test]
    fn host_processes_never_wait() {
        let mut p = pipeline(true);
        let mut out = Vec::new();
        p.process(&connect(0, 5, HOST_NS), &mut out);
        p.process(&packet(Hook::CgroupEgress, MS, 5, 100), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn no_veth_in_time_releases_and_stops_waiting_for_that_netns() {
        let mut p = pipeline(true);
        let mut out = Vec::new();
        p.process(&connect(0, 5, CONTAINER_NS), &mut out);
        p.process(&packet(Hook::CgroupEgress, MS, 5, 100), &mut out);
        p.release_due(MS + VETH_WAIT.as_nanos() as u64 / 2, &mut out);
        assert!(out.is_empty(), "not due yet");
        p.release_due(MS + VETH_WAIT.as_nanos() as u64, &mut out);
        assert_eq!(kinds(&out), [(Kind::Request, Some(100))]);
        out.clear();
        p.process(&connect(300 * MS, 6, CONTAINER_NS), &mut out);
        p.process(&packet(Hook::CgroupEgress, 301 * MS, 6, 200), &mut out);
        assert_eq!(out.len(), 1, "that namespace no longer waits");
        // A forwarded packet (no socket) teaches nothing.
        p.process(&packet(Hook::VethIngress, 302 * MS, 0, 200), &mut out);
        assert_eq!(p.flows.get(6).unwrap().veth, None);
    }

    #[test]
    fn a_reply_purged_unread_at_close_is_no_drop() {
        let mut p = pipeline(false);
        p.names.drop_reasons = std::collections::HashMap::from([
            (2, "NOT_SPECIFIED".to_string()),
            (5, "QUEUE_PURGE".to_string()),
        ]);
        let mut out = Vec::new();
        let mut purged = packet(Hook::Drop, MS, 0, 1);
        purged.reason = 5;
        p.process(&purged, &mut out);
        assert!(out.is_empty());
        assert_eq!(p.skipped.purged, 1);
        let mut dropped = packet(Hook::Drop, MS, 0, 1);
        dropped.reason = 2;
        p.process(&dropped, &mut out);
        assert_eq!(out[0].reason.as_deref(), Some("NOT_SPECIFIED"));
    }

    #[test]
    fn kernels_without_reasons_name_drops_by_location() {
        let mut p = pipeline(false);
        // What 5.10's /proc/kallsyms says; no reason names at all.
        p.names.locations = Locations::parse(
            "ffffffff82057290 T ip_forward\nffffffff820577a0 t ip_forward_finish\n\
             ffffffff81e90000 T sk_stream_kill_queues\nffffffff81e90400 T sk_stream_wait_memory\n"
                .as_bytes(),
        );
        let mut out = Vec::new();
        let mut forwarded = packet(Hook::Drop, MS, 0, 1);
        forwarded.location = 0xffffffff820572f0;
        p.process(&forwarded, &mut out);
        assert_eq!(out[0].reason, None, "no REASON_0 where the kernel has no reasons");
        assert_eq!(out[0].location.as_deref(), Some("ip_forward"));
        // Freed unread when the socket closed: the purge 5.10 has no reason for.
        let mut purged = packet(Hook::Drop, MS, 0, 2);
        purged.location = 0xffffffff81e90010;
        p.process(&purged, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(p.skipped.purged, 1);
        // Elsewhere: a drop, not located.
        let mut other = packet(Hook::Drop, MS, 0, 3);
        other.location = 0xffffffff81000000;
        p.process(&other, &mut out);
        assert_eq!((out.len(), out[1].location.as_deref()), (2, None));
    }

    #[test]
    fn a_bare_fin_freed_outside_forwarding_is_no_drop() {
        let mut p = pipeline(false);
        p.names.locations = Locations::parse(
            "ffffffff82057290 T ip_forward\nffffffff820577a0 t ip_forward_finish\n".as_bytes(),
        );
        let mut out = Vec::new();
        let fin = |seq: u32, location: u64| {
            let mut r = packet(Hook::Drop, MS, 0, seq);
            r.data[33] = 0x11; // FIN|ACK, no payload
            r.location = location;
            r
        };
        // Met a TIME_WAIT socket (5.10: kfree_skb in tcp_v4_rcv, unnamed).
        p.process(&fin(1, 0xffffffff81000000), &mut out);
        assert!(out.is_empty());
        assert_eq!(p.skipped.purged, 1);
        // Died in forwarding (a hop limit): evidence.
        p.process(&fin(2, 0xffffffff820572f0), &mut out);
        assert_eq!(out[0].location.as_deref(), Some("ip_forward"));
    }

    #[test]
    fn waiting_is_bounded() {
        let mut p = pipeline(true);
        let mut out = Vec::new();
        p.process(&connect(0, 5, CONTAINER_NS), &mut out);
        for i in 0..MAX_HELD as u32 + 10 {
            p.process(&packet(Hook::CgroupEgress, MS, 5, i), &mut out);
        }
        assert_eq!(p.held.len(), MAX_HELD);
        assert_eq!(
            kinds(&out)[..2],
            [(Kind::Request, Some(0)), (Kind::Request, Some(1))],
            "oldest first"
        );
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn end_of_capture_releases_everything() {
        let mut p = pipeline(true);
        let mut out = Vec::new();
        p.process(&connect(0, 5, CONTAINER_NS), &mut out);
        p.process(&packet(Hook::CgroupEgress, MS, 5, 100), &mut out);
        p.release_due(u64::MAX, &mut out);
        assert_eq!(out.len(), 1);
    }
}
