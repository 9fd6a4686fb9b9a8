//! What every hook shares: the endpoint filter, the ring buffer and the
//! snapshot of a matching packet.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use observer_ebpf::{
    BUDGET_BURST, BUDGET_PER_SEC, Budget, BudgetKey, FOLDED_REPLY, FOLDED_REQUEST, FOLDED_SYN,
    FoldKey, GLOBAL_BURST, GLOBAL_FLOWS, GLOBAL_MKDIR, GLOBAL_PER_SEC, Hook, INBOUND_PAYLOAD,
    INTERFACE_BURST, INTERFACE_PER_SEC, MAX_BUDGETS, MAX_ENDPOINTS, MAX_FOLDS, RING_BYTES, Record,
    SNAP_LEN, Sighting, WAKE_AT, flow_key_v4, flow_key_v6, interface_key, snap_len,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Records lost to a full ring, per CPU.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per workload: its record budget (see `observer_ebpf::Budget`).
#[map]
pub static BUDGETS: LruHashMap<u64, Budget> = LruHashMap::with_max_entries(MAX_BUDGETS, 0);

/// Node-wide budgets (`GLOBAL_FLOWS`, `GLOBAL_MKDIR`): an array, so that no
/// number of new keys in BUDGETS can evict them.
#[map]
pub static GLOBAL: Array<Budget> = Array::with_max_entries(2, 0);

/// The uplinks' sightings of exchanges in flight, for the socket hook to
/// fold into the reply's record (see `observer_ebpf::MAX_FOLDS`).
#[map]
pub static FOLDS: LruHashMap<FoldKey, Sighting> = LruHashMap::with_max_entries(MAX_FOLDS, 0);

/// Records suppressed by budgets, per CPU: userspace reads BUDGETS only when
/// this grew.
#[map]
pub static SUPPRESSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Take a token from `b` (refilled at `per_sec`, holding `burst` at most).
/// Not atomic across CPUs: concurrent records may both take the last
/// token, which bounds nothing worse than a few records.
#[inline(always)]
fn take(b: &mut Budget, now: u64, per_sec: u64, burst: u64) -> bool {
    let ns_per_token = 1_000_000_000 / per_sec;
    let elapsed = now.saturating_sub(b.refilled_ns);
    if elapsed >= burst * ns_per_token {
        b.tokens = burst;
        b.refilled_ns = now;
    } else {
        let add = elapsed / ns_per_token;
        if add > 0 {
            b.tokens = if b.tokens + add > burst { burst } else { b.tokens + add };
            b.refilled_ns += add * ns_per_token;
        }
    }
    if b.tokens > 0 {
        b.tokens -= 1;
        return true;
    }
    false
}

#[inline(always)]
fn count_suppressed(b: &mut Budget) {
    b.suppressed += 1;
    if let Some(n) = SUPPRESSED.get_ptr_mut(0) {
        unsafe { *n += 1 };
    }
}

/// Take one record from the node-wide budget `index` of map GLOBAL; a
/// refusal counts there.
#[inline(always)]
pub fn admit_global(index: u32, now: u64) -> bool {
    let Some(g) = GLOBAL.get_ptr_mut(index) else {
        return false;
    };
    let g = unsafe { &mut *g };
    let (per_sec, burst) = if index == GLOBAL_MKDIR {
        (BUDGET_PER_SEC, BUDGET_BURST)
    } else {
        (GLOBAL_PER_SEC, GLOBAL_BURST)
    };
    if take(g, now, per_sec, burst) {
        return true;
    }
    count_suppressed(g);
    false
}

/// Take one record from the budget of workload `key` (a `BudgetKey`); a
/// flow's record also from the node-wide `GLOBAL_FLOWS`. A refusal counts
/// against `key`.
#[inline(always)]
pub fn admit(key: u64) -> bool {
    let now = unsafe { bpf_ktime_get_ns() };
    if BUDGETS.get_ptr_mut(key).is_none() {
        // Full; `take` caps it at the key's own burst.
        let fresh = Budget { tokens: BUDGET_BURST, refilled_ns: now, suppressed: 0 };
        let _ = BUDGETS.insert(key, fresh, 0);
    }
    let Some(b) = BUDGETS.get_ptr_mut(key) else {
        return false;
    };
    let b = unsafe { &mut *b };
    let (per_sec, burst) = if BudgetKey::is_interface(key) {
        (INTERFACE_PER_SEC, INTERFACE_BURST)
    } else {
        (BUDGET_PER_SEC, BUDGET_BURST)
    };
    if !take(b, now, per_sec, burst) {
        count_suppressed(b);
        return false;
    }
    if BudgetKey::is_flow(key) && !admit_global(GLOBAL_FLOWS, now) {
        // Counted node-wide and against the flow, so userspace can say
        // whose records went.
        b.suppressed += 1;
        return false;
    }
    true
}

// The endpoint set, written by userspace before load (`EbpfLoader::set_global`).
// Addresses as they sit in the packet (network byte order); zero = unused.
#[unsafe(no_mangle)]
static ENDPOINTS_V4: [u32; MAX_ENDPOINTS] = [0; MAX_ENDPOINTS];
#[unsafe(no_mangle)]
static ENDPOINTS_V6: [[u32; 4]; MAX_ENDPOINTS] = [[0; 4]; MAX_ENDPOINTS];
// What every endpoint of a family shares: (prefix, mask) of the IPv4
// address, and of the IPv6 address's first 32 bits, as read natively from
// the packet. One compare rejects almost every packet of the host.
#[unsafe(no_mangle)]
static PREFIX_V4: [u32; 2] = [0, 0];
#[unsafe(no_mangle)]
static PREFIX_V6: [u32; 2] = [0, 0];
// 1: hand over every matching packet (`run --events packets`); 0: only
// those the diagnosis reads (see `wanted`).
#[unsafe(no_mangle)]
static ALL_PACKETS: u8 = 0;
// Each endpoint's TCP service port (host order), same index.
#[unsafe(no_mangle)]
static PORTS_V4: [u16; MAX_ENDPOINTS] = [0; MAX_ENDPOINTS];
#[unsafe(no_mangle)]
static PORTS_V6: [u16; MAX_ENDPOINTS] = [0; MAX_ENDPOINTS];

const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMP errors that quote a packet: v4 destination unreachable and time
/// exceeded, v6 destination unreachable and time exceeded.
const ICMP_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_UNREACH: u8 = 1;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// ICMP header before the quoted packet.
const ICMP_HLEN: u32 = 8;
/// What an ICMP error may keep of the quoted transport header: ports and
/// the TCP sequence number, never payload.
const QUOTED_L4: u32 = 8;

// Where the filter reads, in bytes from the IP header.
const IPV4_MIN_HLEN: usize = 20;
const IPV4_FRAG_OFF: usize = 6;
const IPV4_TTL: usize = 8;
const IPV4_PROTOCOL: usize = 9;
const IPV4_SADDR: usize = 12;
const IPV4_DADDR: usize = 16;
const IPV6_HLEN: usize = 40;
const IPV6_NEXTHDR: usize = 6;
const IPV6_HOPLIMIT: usize = 7;
const IPV6_SADDR: usize = 8;
const IPV6_DADDR: usize = 24;
/// From the TCP header: data offset, in its high nibble; the flags.
const TCP_DOFF: u32 = 12;
const TCP_FLAGS: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// IPv4 total length, IPv6 payload length (big endian, bytes 2-3 and 4-5).
const IPV4_TOT_LEN: usize = 2;
const IPV6_PAYLOAD_LEN: usize = 4;
/// How a reply's first segment starts; only it may show payload bytes.
const HTTP_STATUS: &[u8; 7] = b"HTTP/1.";
/// `HTTP/1.1 200`: through the status code.
const STATUS_LINE: usize = 12;

/// The status code of a status line's start (`HTTP/1.x NNN`); 0 if the
/// three digits are not there.
#[inline(always)]
fn http_status(line: &[u8; STATUS_LINE]) -> u16 {
    let d = |b: u8| b.wrapping_sub(b'0');
    let (a, b, c) = (d(line[9]), d(line[10]), d(line[11]));
    if line[8] != b' ' || a == 0 || a > 9 || b > 9 || c > 9 {
        return 0;
    }
    a as u16 * 100 + b as u16 * 10 + c as u16
}

/// The service port of the endpoint at `addr`, if it is one.
#[inline(always)]
pub fn endpoint_v4(addr: u32) -> Option<u16> {
    let mut i = 0;
    while i < MAX_ENDPOINTS {
        // Volatile: the value is only known at load time.
        let e = unsafe { core::ptr::read_volatile(&ENDPOINTS_V4[i]) };
        if e != 0 && e == addr {
            return Some(unsafe { core::ptr::read_volatile(&PORTS_V4[i]) });
        }
        i += 1;
    }
    None
}

#[inline(always)]
pub fn endpoint_v6(addr: &[u32; 4]) -> Option<u16> {
    let mut i = 0;
    while i < MAX_ENDPOINTS {
        let e = unsafe { core::ptr::read_volatile(&ENDPOINTS_V6[i]) };
        if e[0] != 0 && e[0] == addr[0] && e[1] == addr[1] && e[2] == addr[2] && e[3] == addr[3] {
            return Some(unsafe { core::ptr::read_volatile(&PORTS_V6[i]) });
        }
        i += 1;
    }
    None
}

/// A packet's bytes, wherever they live (an skb context, or kernel memory).
pub trait Packet {
    /// Total bytes from the IP header on.
    fn len(&self) -> u32;
    /// Copy `buf.len()` bytes from `off` (relative to the IP header).
    fn read(&self, off: u32, buf: &mut [u8]) -> Result<(), ()>;
    /// Copy `n` (1..=SNAP_LEN) bytes from the IP header into `dst`. Pass
    /// the length through `observer_ebpf::snap_len` on its way to the helper.
    fn snapshot(&self, dst: &mut [u8; SNAP_LEN], n: u32) -> Result<(), ()>;
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// An skb whose data starts `l3` bytes before its IP header (0 for cgroup_skb,
/// the Ethernet header for tc).
pub struct Skb<'a> {
    pub skb: &'a aya_ebpf::programs::sk_buff::SkBuff,
    pub l3: u32,
}

impl Skb<'_> {
    /// The address `want` looks at is in the linear data and outside every
    /// endpoint's common prefix: the packet is not metadata traffic, decided
    /// by direct packet access, without a helper call. False when it cannot
    /// tell (the full filter then decides).
    #[inline(always)]
    pub fn outside_endpoints(&self, version: u8, want: Match) -> bool {
        let (off, prefix) = match (version, want) {
            (4, Match::Dst) => (IPV4_DADDR, &PREFIX_V4),
            (4, Match::Src) => (IPV4_SADDR, &PREFIX_V4),
            (6, Match::Dst) => (IPV6_DADDR, &PREFIX_V6),
            (6, Match::Src) => (IPV6_SADDR, &PREFIX_V6),
            _ => return false,
        };
        let skb = unsafe { &*self.skb.skb };
        let (data, end) = (skb.data as usize, skb.data_end as usize);
        let at = data + self.l3 as usize + off;
        if at + 4 > end {
            return false;
        }
        let addr = unsafe { core::ptr::read_unaligned(at as *const u32) };
        let [p, mask] = unsafe { core::ptr::read_volatile(prefix) };
        addr & mask != p
    }
}

impl Packet for Skb<'_> {
    #[inline(always)]
    fn len(&self) -> u32 {
        self.skb.len().saturating_sub(self.l3)
    }
    #[inline(always)]
    fn read(&self, off: u32, buf: &mut [u8]) -> Result<(), ()> {
        let r = unsafe {
            aya_ebpf::helpers::generated::bpf_skb_load_bytes(
                self.skb.skb as *const _,
                self.l3 + off,
                buf.as_mut_ptr() as *mut _,
                buf.len() as u32,
            )
        };
        if r == 0 { Ok(()) } else { Err(()) }
    }
    #[inline(always)]
    fn snapshot(&self, dst: &mut [u8; SNAP_LEN], n: u32) -> Result<(), ()> {
        if n == 0 {
            return Err(());
        }
        let r = unsafe {
            aya_ebpf::helpers::generated::bpf_skb_load_bytes(
                self.skb.skb as *const _,
                self.l3,
                dst.as_mut_ptr() as *mut _,
                snap_len(n),
            )
        };
        if r == 0 { Ok(()) } else { Err(()) }
    }
}

/// The IP version of an skb from its EtherType (`skb->protocol`).
#[inline(always)]
pub fn ip_version(protocol: u32) -> u8 {
    match u16::from_be(protocol as u16) {
        ETH_P_IP => 4,
        ETH_P_IPV6 => 6,
        _ => 0,
    }
}

/// Which side of the packet must be an endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Destination (packets leaving toward an endpoint).
    Dst,
    /// Source (packets coming from an endpoint).
    Src,
    /// Either (drops).
    Any,
}

/// What a hook does with a matching TCP segment (unless every packet is
/// asked for: then each records what it sees).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// cgroup_skb: records what the diagnosis reads of the socket's side,
    /// folding the uplink's sightings into a reply's record.
    Socket,
    /// An uplink: keeps a request's departure and a reply's arrival in
    /// FOLDS for the socket hook; records only what no socket will see
    /// (RST, and ICMP errors).
    Uplink { ifindex: u32 },
    /// A container's veth: records what the diagnosis reads, as is.
    Veth,
    /// skb:kfree_skb: records whatever it carries, with the sightings of a
    /// dropped reply.
    Drop,
}

/// The uplink's sightings a record carries (`Record::folded` and after).
#[derive(Clone, Copy, Default)]
pub struct Folded {
    pub bits: u8,
    pub ttl: u8,
    pub ifindex: u32,
    pub req_ttl: u8,
    pub req_flags: u8,
    pub req_seq: u32,
    pub status: u16,
}

pub struct Meta {
    pub hook: Hook,
    pub ifindex: u32,
    pub cgroup_id: u64,
    pub cookie: u64,
    pub reason: u32,
    pub location: u64,
    /// The interface the packet came in by, when it names the sending
    /// workload (its veth): the budget's key. 0: none.
    pub via: u32,
}

/// Set every header field of a reserved record (ring memory is not zeroed):
/// the one place that knows the header's layout.
#[inline(always)]
pub fn header(rec: &mut Record, hook: Hook, family: u8, cgroup_id: u64, cookie: u64) {
    rec.ts_ns = unsafe { bpf_ktime_get_ns() };
    rec.cgroup_id = cgroup_id;
    rec.cookie = cookie;
    rec.pid_tgid = 0;
    rec.netns_cookie = 0;
    rec.location = 0;
    rec.hook = hook as u8;
    rec.family = family;
    rec.dport = 0;
    rec.ifindex = 0;
    rec.reason = 0;
    rec.pkt_len = 0;
    rec.snap_len = 0;
    rec.host_ifindex = 0;
    rec.folded = 0;
    rec.host_ttl = 0;
    rec.host_req_ttl = 0;
    rec.host_req_flags = 0;
    rec.host_req_seq = 0;
    rec.host_status = 0;
    rec._pad = [0; 6];
    rec.comm = [0; 16];
    rec.daddr = [0; 16];
}

/// Record `pkt` if it is metadata traffic: TCP between a socket and an
/// endpoint's service port, or an ICMP error about such a packet. `version`
/// is 4 or 6. `meta` is only called for a record (with whether the packet
/// comes from the endpoint): its helper calls (cgroup id, socket cookie)
/// are not paid by the host's other packets.
///
/// What the record keeps never holds a reply body: packets from an
/// endpoint keep their headers, and the first bytes of payload only when
/// the segment starts a response (`HTTP/1.`); ICMP errors keep the quoted
/// IP header and 8 bytes of the quoted TCP header.
#[inline(always)]
pub fn packet<P: Packet>(
    pkt: &P,
    version: u8,
    want: Match,
    role: Role,
    meta: impl FnOnce(bool) -> Meta,
) {
    // Header bytes up to and including both addresses; the version decides
    // which endpoint set, `want` which address.
    let (inbound, proto, l3_len, port, local, endpoint, total, ttl) = if version == 4 {
        let mut h = [0u8; IPV4_MIN_HLEN];
        if pkt.read(0, &mut h).is_err() {
            return;
        }
        let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (src, dst) = (w(IPV4_SADDR), w(IPV4_DADDR));
        let (inbound, port) = match want {
            Match::Dst => match endpoint_v4(dst) {
                Some(p) => (false, p),
                None => return,
            },
            Match::Src => match endpoint_v4(src) {
                Some(p) => (true, p),
                None => return,
            },
            Match::Any => match (endpoint_v4(src), endpoint_v4(dst)) {
                (Some(p), _) => (true, p),
                (None, Some(p)) => (false, p),
                (None, None) => return,
            },
        };
        // A fragment after the first carries no transport header.
        if u16::from_be_bytes([h[IPV4_FRAG_OFF], h[IPV4_FRAG_OFF + 1]]) & 0x1fff != 0 {
            return;
        }
        let (local, endpoint) = if inbound { (dst, src) } else { (src, dst) };
        let total = u16::from_be_bytes([h[IPV4_TOT_LEN], h[IPV4_TOT_LEN + 1]]) as u32;
        // IHL, in 32-bit words.
        let ihl = ((h[0] & 0x0f) as u32) * 4;
        (inbound, h[IPV4_PROTOCOL], ihl, port, [local, 0, 0, 0], endpoint, total, h[IPV4_TTL])
    } else if version == 6 {
        let mut h = [0u8; IPV6_HLEN];
        if pkt.read(0, &mut h).is_err() {
            return;
        }
        let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let src = [w(IPV6_SADDR), w(IPV6_SADDR + 4), w(IPV6_SADDR + 8), w(IPV6_SADDR + 12)];
        let dst = [w(IPV6_DADDR), w(IPV6_DADDR + 4), w(IPV6_DADDR + 8), w(IPV6_DADDR + 12)];
        let (inbound, port) = match want {
            Match::Dst => match endpoint_v6(&dst) {
                Some(p) => (false, p),
                None => return,
            },
            Match::Src => match endpoint_v6(&src) {
                Some(p) => (true, p),
                None => return,
            },
            Match::Any => match (endpoint_v6(&src), endpoint_v6(&dst)) {
                (Some(p), _) => (true, p),
                (None, Some(p)) => (false, p),
                (None, None) => return,
            },
        };
        let (local, remote) = if inbound { (dst, src) } else { (src, dst) };
        // The few endpoints of a node differ in these bits.
        let endpoint = remote[0] ^ remote[1] ^ remote[2] ^ remote[3];
        let payload = u16::from_be_bytes([h[IPV6_PAYLOAD_LEN], h[IPV6_PAYLOAD_LEN + 1]]) as u32;
        let l3 = IPV6_HLEN as u32;
        (inbound, h[IPV6_NEXTHDR], l3, port, local, endpoint, l3 + payload, h[IPV6_HOPLIMIT])
    } else {
        return;
    };
    // The flow's local port (0 for ICMP errors): with `local`, the budget
    // key where no socket or interface names the workload.
    let mut local_port = 0u16;
    let mut folded = Folded::default();
    let cap = match proto {
        IPPROTO_TCP => {
            let mut t = [0u8; TCP_FLAGS + 1];
            if pkt.read(l3_len, &mut t).is_err() {
                return;
            }
            let (sport, dport) =
                (u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]));
            if (if inbound { sport } else { dport }) != port {
                return;
            }
            local_port = if inbound { dport } else { sport };
            let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
            let l4 = l3_len + ((t[TCP_DOFF as usize] >> 4) as u32) * 4;
            let flags = t[TCP_FLAGS];
            // A reply's first segment, and its status.
            let mut status = 0u16;
            if inbound {
                let mut start = [0u8; STATUS_LINE];
                if pkt.read(l4, &mut start).is_ok() && start[..HTTP_STATUS.len()] == *HTTP_STATUS {
                    status = http_status(&start);
                }
            }
            let starts_reply = status != 0;
            // A length of 0 (a BIG TCP super-packet) may carry data.
            let data = total > l4 || total == 0;
            let all = unsafe { core::ptr::read_volatile(&ALL_PACKETS) } != 0;
            let key = |what: u8, seq: u32| FoldKey { endpoint, port, what: what as u16, seq };
            match role {
                Role::Drop => {
                    // Past the linear data it may not show its start.
                    if inbound && data {
                        folded = fold(&key(FOLDED_REPLY, seq), &key(FOLDED_REQUEST, ack), false);
                    }
                }
                _ if all => {}
                Role::Uplink { ifindex } => {
                    // A request's departure, named by the sequence number its
                    // reply acknowledges, and a reply's arrival: kept for the
                    // socket hook. Nothing else of a healthy exchange.
                    if flags & TCP_RST == 0 {
                        if !inbound && total > l4 {
                            let end = seq.wrapping_add(total - l4);
                            keep(&key(FOLDED_REQUEST, end), ifindex, seq, ttl, flags, 0);
                        } else if starts_reply {
                            keep(&key(FOLDED_REPLY, seq), ifindex, seq, ttl, flags, status);
                        }
                        return;
                    }
                }
                Role::Socket => {
                    // The connect record stands for the socket's first SYN
                    // (`FOLDED_SYN`); a retransmitted one is not told apart.
                    // A SYN with data (TCP Fast Open: no connect) is the
                    // request.
                    if !inbound && flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN && !data {
                        return;
                    }
                    if starts_reply {
                        folded = fold(&key(FOLDED_REPLY, seq), &key(FOLDED_REQUEST, ack), true);
                    }
                }
                Role::Veth => {}
            }
            if want != Match::Any && !all && !wanted(inbound, flags, data, starts_reply) {
                return;
            }
            if inbound {
                l4 + if starts_reply { INBOUND_PAYLOAD as u32 } else { 0 }
            } else {
                // Requests: the request line and which headers are there.
                SNAP_LEN as u32
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match quoted_len(pkt, version, l3_len, port) {
            Some(q) => l3_len + ICMP_HLEN + q + QUOTED_L4,
            None => return,
        },
        _ => return,
    };
    let meta = meta(inbound);
    // Whose budget: what the sender cannot forge where the hook knows it
    // (the socket's cgroup, the interface it came in by), else the flow.
    let key = if meta.cgroup_id != 0 {
        meta.cgroup_id
    } else if meta.via != 0 {
        interface_key(meta.via)
    } else if version == 4 {
        flow_key_v4(local[0], local_port)
    } else {
        flow_key_v6(&local, local_port)
    };
    if !admit(key) {
        return;
    }
    emit(pkt, version, cap, &meta, &folded);
}

/// `Record::folded` of a connect record.
#[inline(always)]
pub fn connect_folds() -> u8 {
    if unsafe { core::ptr::read_volatile(&ALL_PACKETS) } != 0 { 0 } else { FOLDED_SYN }
}

/// What the uplinks kept of the reply `reply` and of the request it
/// acknowledges (`request`); `consume`: the reply was delivered, they are
/// no longer needed.
#[inline(always)]
fn fold(reply: &FoldKey, request: &FoldKey, consume: bool) -> Folded {
    let mut f = Folded::default();
    if let Some(s) = unsafe { FOLDS.get(reply) } {
        f.bits |= FOLDED_REPLY;
        f.ttl = s.ttl;
        f.ifindex = s.ifindex;
        f.status = s.status;
        if consume {
            let _ = FOLDS.remove(reply);
        }
    }
    if let Some(s) = unsafe { FOLDS.get(request) } {
        f.bits |= FOLDED_REQUEST;
        f.req_ttl = s.ttl;
        f.req_flags = s.flags;
        f.req_seq = s.seq;
        if f.bits & FOLDED_REPLY == 0 {
            f.ifindex = s.ifindex;
        }
        if consume {
            let _ = FOLDS.remove(request);
        }
    }
    f
}

/// Keep an uplink's sighting of a segment (TTL, flags, interface) under
/// `key`.
#[inline(always)]
fn keep(key: &FoldKey, ifindex: u32, seq: u32, ttl: u8, flags: u8, status: u16) {
    let s = Sighting { ifindex, seq, ttl, flags, status, _pad: [0; 4] };
    let _ = FOLDS.insert(key, &s, 0);
}

/// Whether the diagnosis reads a TCP segment (unless every packet is
/// asked for): from a socket, what opens, carries or closes its side (SYN,
/// data, FIN, RST); from an endpoint, what answers or refuses the connect
/// (SYN, RST) and the first segment of each reply (`HTTP/1.`). Pure ACKs,
/// the rest of a reply and the endpoint's FIN cross nothing: they are most
/// of a healthy exchange's packets.
#[inline(always)]
fn wanted(inbound: bool, flags: u8, payload: bool, starts_reply: bool) -> bool {
    if inbound {
        flags & (TCP_SYN | TCP_RST) != 0 || starts_reply
    } else {
        flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 || payload
    }
}

/// For an ICMP error quoting a TCP packet to or from `port`: the quoted IP
/// header's length.
#[inline(always)]
fn quoted_len<P: Packet>(pkt: &P, version: u8, l3_len: u32, port: u16) -> Option<u32> {
    let mut t = [0u8; 1];
    pkt.read(l3_len, &mut t).ok()?;
    let error = if version == 4 {
        t[0] == ICMP_UNREACH || t[0] == ICMP_TIME_EXCEEDED
    } else {
        t[0] == ICMPV6_UNREACH || t[0] == ICMPV6_TIME_EXCEEDED
    };
    if !error {
        return None;
    }
    let q = l3_len + ICMP_HLEN;
    let (proto, q_len) = if version == 4 {
        let mut h = [0u8; IPV4_PROTOCOL + 1];
        pkt.read(q, &mut h).ok()?;
        (h[IPV4_PROTOCOL], ((h[0] & 0x0f) as u32) * 4)
    } else {
        let mut h = [0u8; IPV6_NEXTHDR + 1];
        pkt.read(q, &mut h).ok()?;
        (h[IPV6_NEXTHDR], IPV6_HLEN as u32)
    };
    if proto != IPPROTO_TCP {
        return None;
    }
    let mut ports = [0u8; 4];
    pkt.read(q + q_len, &mut ports).ok()?;
    let (sport, dport) =
        (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]));
    (sport == port || dport == port).then_some(q_len)
}

/// Copy the first `cap` bytes of `pkt` (at most SNAP_LEN) into a record.
#[inline(always)]
fn emit<P: Packet>(pkt: &P, version: u8, cap: u32, meta: &Meta, folded: &Folded) {
    let len = pkt.len();
    let mut n = if len < cap { len } else { cap };
    if n > SNAP_LEN as u32 {
        n = SNAP_LEN as u32;
    }

    let Some(mut entry) = reserve() else {
        return;
    };
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    header(rec, meta.hook, version, meta.cgroup_id, meta.cookie);
    rec.ifindex = meta.ifindex;
    rec.reason = meta.reason;
    rec.location = meta.location;
    rec.pkt_len = len;
    rec.folded = folded.bits;
    rec.host_ttl = folded.ttl;
    rec.host_ifindex = folded.ifindex;
    rec.host_req_ttl = folded.req_ttl;
    rec.host_req_flags = folded.req_flags;
    rec.host_req_seq = folded.req_seq;
    rec.host_status = folded.status;
    if n == 0 || pkt.snapshot(&mut rec.data, n).is_err() {
        n = 0;
    }
    rec.snap_len = n;
    entry.submit(submit_flags());
}

/// How to submit a record: without waking the reader while less than
/// `WAKE_AT` bytes wait in the ring (userspace drains it every
/// `DRAIN_EVERY_MS` anyway); past it, wake the reader before the ring
/// fills.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKE_AT {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Reserve a record for a non-packet event, or count it lost.
#[inline(always)]
pub fn reserve() -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<Record>> {
    let entry = EVENTS.reserve::<Record>(0);
    if entry.is_none() {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            unsafe { *lost += 1 };
        }
    }
    entry
}
