//! Record → Event: decode the snapshot, name the flow and the cgroup.
use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use observer_ebpf::{Hook, Record};

use crate::{
    capture::decode::{self, Http, IcmpError, IcmpKind, Packet, Proto},
    correlate::flows::{Flow, FlowTable},
    event::{Event, Kind, rfc3339},
    identity::Identities,
};

/// Maps the eBPF clock (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn now() -> Self {
        Self { offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC) }
    }
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

/// Counters of input the pipeline skipped, reported on exit.
#[derive(Default, Debug)]
pub struct Skipped {
    pub malformed: u64,
    pub unknown_hook: u64,
}

pub struct Pipeline {
    pub node: String,
    pub clock: Clock,
    pub flows: FlowTable,
    pub identities: Option<Identities>,
    pub drop_reasons: HashMap<u32, String>,
    pub ifaces: HashMap<u32, String>,
    pub skipped: Skipped,
    /// The observer's own network namespace cookie (the host's, as deployed).
    own_netns: Option<u64>,
    last_sweep: u64,
}

/// This process's network namespace cookie, as `bpf_get_netns_cookie`
/// reports it for sockets (SO_NETNS_COOKIE, Linux 5.14+). The kernel side
/// takes it at connect: a short-lived process may be gone from /proc by
/// the time userspace reads the record.
fn own_netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a throwaway socket and a u64 out-parameter of the right size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len);
        libc::close(fd);
        (r == 0).then_some(cookie)
    }
}

impl Pipeline {
    pub fn new(node: String, clock: Clock, identities: Option<Identities>) -> Self {
        Self {
            node,
            clock,
            flows: FlowTable::new(),
            identities,
            drop_reasons: HashMap::new(),
            ifaces: HashMap::new(),
            skipped: Skipped::default(),
            own_netns: own_netns_cookie(),
            last_sweep: 0,
        }
    }

    fn event(&self, kind: Kind, ts_ns: u64) -> Event {
        Event::new(kind, rfc3339(self.clock.wall(ts_ns)), self.node.clone())
    }


    fn with_flow(&mut self, ev: &mut Event, flow: Option<Flow>) {
        if let Some(f) = flow {
            ev.flow = Some(f.cookie);
            if f.cgroup_id != 0 {
                ev.cgroup_id = Some(f.cgroup_id);
                ev.container = self.identities.as_mut().and_then(|i| i.identify(f.cgroup_id));
                // Not a container the runtime conventions know, in the host's
                // network namespace: a host process.
                if let Some(c) = ev.container.as_mut() {
                    if c.runtime.is_none() && c.id.is_none() && f.host_netns == Some(true) {
                        c.host = true;
                    }
                }
                ev.cgroup = ev.container.as_ref().and_then(|c| c.cgroup.clone());
            }
            ev.pid = f.pid;
            ev.comm = f.comm;
        }
    }

    /// An event for `rec`, if it makes one (connects only teach the table).
    pub fn process(&mut self, rec: &Record) -> Option<Event> {
        if rec.ts_ns.saturating_sub(self.last_sweep) > 10_000_000_000 {
            self.flows.sweep(rec.ts_ns);
            self.last_sweep = rec.ts_ns;
        }
        let Some(hook) = Hook::from_u8(rec.hook) else {
            self.skipped.unknown_hook += 1;
            return None;
        };
        if hook == Hook::Connect {
            let comm = comm(&rec.comm);
            let pid = (rec.pid_tgid >> 32) as u32;
            let host_netns = self.own_netns.filter(|_| rec.netns_cookie != 0).map(|own| own == rec.netns_cookie);
            self.flows.on_connect(rec.cookie, rec.cgroup_id, pid, comm, host_netns, rec.ts_ns);
            return None;
        }
        let n = (rec.snap_len as usize).min(rec.data.len());
        let pkt = match decode::decode(&rec.data[..n], rec.family) {
            Ok(p) => p,
            Err(_) => {
                self.skipped.malformed += 1;
                return None;
            }
        };
        match hook {
            Hook::CgroupEgress | Hook::CgroupIngress => self.socket_packet(hook, rec, &pkt),
            Hook::TcEgress if pkt.icmp.is_some() => self.icmp_drop(rec, &pkt),
            Hook::TcIngress | Hook::TcEgress => self.uplink_packet(hook, rec, &pkt),
            Hook::Drop => self.drop(rec, &pkt),
            Hook::Connect => None,
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
        let flow = self.flows.on_socket_packet(rec.cookie, rec.cgroup_id, local, endpoint, seq_ack, sent, rec.ts_ns).clone();
        let mut ev = self.event(if sent { Kind::Request } else { Kind::Reply }, rec.ts_ns);
        self.with_flow(&mut ev, Some(flow));
        fill_packet(&mut ev, pkt);
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
        let mut ev = self.event(if egress { Kind::HostEgress } else { Kind::HostIngress }, rec.ts_ns);
        ev.iface = Some(self.ifaces.get(&rec.ifindex).cloned().unwrap_or_else(|| format!("if{}", rec.ifindex)));
        self.with_flow(&mut ev, flow);
        fill_packet(&mut ev, pkt);
        Some(ev)
    }

    fn drop(&mut self, rec: &Record, pkt: &Packet) -> Option<Event> {
        let flow = self.flow_of(pkt.src, pkt.dst, rec.ts_ns);
        let mut ev = self.event(Kind::Drop, rec.ts_ns);
        ev.reason = Some(self.drop_reasons.get(&rec.reason).cloned().unwrap_or_else(|| format!("REASON_{}", rec.reason)));
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
        ev.src = Some(icmp.inner_src.to_string());
        ev.dst = Some(icmp.inner_dst.to_string());
        ev.ttl = Some(icmp.inner_ttl);
        ev.proto = Some(proto_name(icmp.inner_proto).into());
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

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Icmp => "icmp",
        Proto::Other(_) => "other",
    }
}

fn fill_packet(ev: &mut Event, pkt: &Packet) {
    ev.src = Some(pkt.src.to_string());
    ev.dst = Some(pkt.dst.to_string());
    ev.ttl = Some(pkt.ttl);
    ev.proto = Some(proto_name(pkt.proto).into());
    ev.len = Some(pkt.payload_len);
    if let Some(t) = &pkt.tcp {
        ev.tcp_flags = Some(decode::tcp_flags_str(t.flags));
        ev.seq = Some(t.seq);
        ev.ack = Some(t.ack);
    }
    match &pkt.http {
        Some(Http::Request { method, path, token_header, token_ttl_header }) => {
            ev.method = Some(method.clone());
            ev.path = Some(path.clone());
            ev.token_header = Some(*token_header);
            ev.token_ttl_header = Some(*token_ttl_header);
        }
        Some(Http::Response { status }) => ev.status = Some(*status),
        None => {}
    }
}
