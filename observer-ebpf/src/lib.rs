//! Wire types shared by the eBPF programs and userspace. Defined once here,
//! `no_std`, `#[repr(C)]`, explicit padding, 8-byte alignment at most.
#![no_std]

/// Bytes of a packet copied into a record, counted from its IP header.
/// A power of two: the programs bound lengths with a mask, the one bound
/// every verifier (5.10's included) carries to a helper's size argument.
pub const SNAP_LEN: usize = 512;
const _: () = assert!(SNAP_LEN.is_power_of_two());

/// `n` in [1, SNAP_LEN] as the verifier can prove it: `n` itself for every
/// `n` in that range (callers check), whatever the compiler knew of it.
#[inline(always)]
pub fn snap_len(n: u32) -> u32 {
    ((n.wrapping_sub(1)) & (SNAP_LEN as u32 - 1)) + 1
}

/// Payload bytes copied for packets that come *from* an endpoint: enough for
/// an HTTP status line, never enough to reach a reply body (a token or a
/// credential). The IP and transport headers before it are always copied.
pub const INBOUND_PAYLOAD: usize = 16;

/// The ring's size: about 6,500 records.
pub const RING_BYTES: u32 = 4 << 20;
/// Bytes waiting in the ring past which a record wakes the reader; below
/// it records wait for the reader's next drain (every `DRAIN_EVERY_MS`):
/// about 100 records, a 64th of the ring. A busy node pays no wakeup (a
/// context switch of the reader) per record.
pub const WAKE_AT: u64 = (RING_BYTES / 64) as u64;
/// How often userspace drains the ring unwoken: the most a record waits.
pub const DRAIN_EVERY_MS: u64 = 50;

/// Most endpoints per address family the programs compare against.
pub const MAX_ENDPOINTS: usize = 8;

/// Records one workload may put in the ring per second, sustained, and at
/// once: a flood from one container cannot fill the ring for the others,
/// nor the node's log pipeline. Whose budget a record takes is what the
/// sender cannot forge (see `BudgetKey`): the socket's cgroup at the socket
/// hooks, the container's veth at imds_tc_veth and at drops of what it sent;
/// where only the packet tells (the uplinks, drops of replies), its flow,
/// and then also the node-wide `GLOBAL_PER_SEC`.
/// Sized for 40 requests a second on a connection each (5 records at the
/// socket hooks: SYN, request, FIN out; SYN|ACK, reply in), 5 s of it at
/// once; 50 such workloads fill under a tenth of the ring a second.
pub const BUDGET_PER_SEC: u64 = 200;
pub const BUDGET_BURST: u64 = 1000;
/// An interface's budget (drops of what came in by it): a bridge carries
/// many workloads, and interface indexes are per network namespace (a drop
/// in another namespace, e.g. the endpoint's own in the lab, may share a
/// number with one of the host's). Ten workloads' worth: interfaces cannot
/// be forged, and a host has few.
pub const INTERFACE_PER_SEC: u64 = 10 * BUDGET_PER_SEC;
pub const INTERFACE_BURST: u64 = 10 * BUDGET_BURST;
/// Every record whose budget is keyed by its flow, node-wide: new flows
/// (forged addresses, a connect storm) each get a fresh flow budget, and
/// this is what bounds them. Sized for 1,000 requests a second on the
/// uplinks (5 records each), with room for the drops of a hop-limit failure.
pub const GLOBAL_PER_SEC: u64 = 8_000;
pub const GLOBAL_BURST: u64 = 16_000;
/// Index in map GLOBAL: the flow-keyed records' budget, and cgroup_mkdir's
/// (a workload allowed to make cgroups cannot make the ring its own).
pub const GLOBAL_FLOWS: u32 = 0;
pub const GLOBAL_MKDIR: u32 = 1;
/// Workloads whose budget is kept (an LRU: the least recently seen go).
pub const MAX_BUDGETS: u32 = 16_384;
/// Tags a budget key that is not a cgroup id (kernfs ids never reach bit
/// 63): an address, a flow or an interface.
const NOT_CGROUP: u64 = 1 << 63;
/// With `NOT_CGROUP`: an IPv6 address, folded into the 62 bits below.
const ADDRESS_V6: u64 = 1 << 62;
/// With `NOT_CGROUP`: an interface index in the low 32 bits.
const INTERFACE: u64 = 1 << 61;

/// The budget key of an IPv4 flow's local side (address as it sits in the
/// packet, port in host order; port 0: the address only).
#[inline(always)]
pub fn flow_key_v4(addr: u32, port: u16) -> u64 {
    NOT_CGROUP | (port as u64) << 32 | addr as u64
}

/// The budget key of an IPv6 flow's local side (words as they sit in the
/// packet), folded: two flows may share a budget, never with an IPv4 one.
#[inline(always)]
pub fn flow_key_v6(addr: &[u32; 4], port: u16) -> u64 {
    let folded = (((addr[0] ^ addr[2]) as u64) << 32) | (addr[1] ^ addr[3]) as u64;
    NOT_CGROUP | ADDRESS_V6 | ((folded ^ (port as u64) << 40) & !(NOT_CGROUP | ADDRESS_V6))
}

/// The budget key of the interface with index `ifindex`.
#[inline(always)]
pub fn interface_key(ifindex: u32) -> u64 {
    NOT_CGROUP | INTERFACE | ifindex as u64
}

/// Whose budget a key of map BUDGETS is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetKey {
    Cgroup(u64),
    /// The interface a workload's packets came in by (its veth).
    Interface(u32),
    /// A flow's local side: address as it sits in the packet, and port.
    Ipv4(u32, u16),
    /// Folded: the flow cannot be read back.
    Ipv6,
}

impl BudgetKey {
    /// Whether the key is a flow's, which the packet alone names (and so
    /// the sender may forge): such records also take from `GLOBAL_FLOWS`.
    pub fn is_flow(key: u64) -> bool {
        key & NOT_CGROUP != 0 && !Self::is_interface(key)
    }

    /// Whether the key is an interface's (`INTERFACE_PER_SEC`).
    pub fn is_interface(key: u64) -> bool {
        key & (NOT_CGROUP | INTERFACE | ADDRESS_V6) == NOT_CGROUP | INTERFACE
    }
}

impl From<u64> for BudgetKey {
    fn from(key: u64) -> Self {
        if key & NOT_CGROUP == 0 {
            Self::Cgroup(key)
        } else if key & ADDRESS_V6 != 0 {
            Self::Ipv6
        } else if key & INTERFACE != 0 {
            Self::Interface(key as u32)
        } else {
            Self::Ipv4(key as u32, (key >> 32) as u16)
        }
    }
}

/// One workload's budget (map BUDGETS, key: see `BudgetKey`), or a
/// node-wide one (map GLOBAL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub tokens: u64,
    /// When `tokens` was last refilled (bpf_ktime_get_ns).
    pub refilled_ns: u64,
    /// Records not taken for want of tokens, since the workload was first
    /// seen (userspace reports the growth).
    pub suppressed: u64,
}

/// Defines `Hook` and its `TryFrom<u8>` from one list, so the wire
/// numbers and the decoding cannot drift apart.
macro_rules! hooks {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// Where a record was taken.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Hook {
            $($(#[$doc])* $name = $value,)*
        }

        impl TryFrom<u8> for Hook {
            /// The unknown value.
            type Error = u8;

            fn try_from(v: u8) -> Result<Self, u8> {
                match v {
                    $($value => Ok(Self::$name),)*
                    _ => Err(v),
                }
            }
        }
    };
}

hooks! {
    /// cgroup_skb egress: a packet leaving a socket (the container side).
    CgroupEgress = 1,
    /// cgroup_skb ingress: a packet delivered to a socket.
    CgroupIngress = 2,
    /// tc ingress on an uplink: arriving at the host.
    TcIngress = 3,
    /// tc egress on an uplink: leaving the host.
    TcEgress = 4,
    /// cgroup connect4/connect6: a process connecting to an endpoint.
    Connect = 5,
    /// skb:kfree_skb: the kernel dropped a packet to or from an endpoint.
    Drop = 6,
    /// tc ingress on a container's host-side veth: a packet from the
    /// container entering the host (cgroup v1 hosts only).
    VethIngress = 7,
    /// cgroup:cgroup_mkdir: a cgroup2 cgroup was created; `cgroup_id` is
    /// its id and `data` its path (NUL-terminated, `snap_len` bytes).
    CgroupMkdir = 8,
}

/// One record in the ring buffer. Packet hooks fill `data` with the packet
/// from its IP header on; `Connect` fills `daddr`/`dport` and the process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Record {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// cgroup v2 id of the socket's cgroup (0 when the hook cannot tell).
    pub cgroup_id: u64,
    /// Socket cookie (0 when the hook has no socket).
    pub cookie: u64,
    /// Connect: `bpf_get_current_pid_tgid`.
    pub pid_tgid: u64,
    /// Connect: the network namespace cookie of the connecting socket.
    pub netns_cookie: u64,
    /// Drop: where the kernel freed the packet (a kernel text address;
    /// userspace names it through /proc/kallsyms). The one drop evidence
    /// every kernel gives: 5.10 has no drop reasons.
    pub location: u64,
    /// A [`Hook`].
    pub hook: u8,
    /// 4 or 6.
    pub family: u8,
    /// Connect: destination port, host byte order.
    pub dport: u16,
    /// tc, veth: the interface the program is attached to.
    pub ifindex: u32,
    /// Drop: the kernel's `enum skb_drop_reason` value (0 on kernels
    /// without reasons, before 5.17).
    pub reason: u32,
    /// Bytes of the packet from its IP header.
    pub pkt_len: u32,
    /// Bytes of `data` that are valid.
    pub snap_len: u32,
    /// With `FOLDED_REPLY`: the uplink the reply came in by.
    pub host_ifindex: u32,
    /// What the kernel folded into this record from the uplink (`FOLDED_*`
    /// bits): a healthy exchange's uplink packets cross the ring inside its
    /// reply's record, not as records of their own.
    pub folded: u8,
    /// `FOLDED_REPLY`: the reply's TTL as it arrived at the host.
    pub host_ttl: u8,
    /// `FOLDED_REQUEST`: the request's TTL, and its TCP flags, as it left
    /// the host (the segment the reply acknowledges; its sequence number is
    /// `host_req_seq`).
    pub host_req_ttl: u8,
    pub host_req_flags: u8,
    pub host_req_seq: u32,
    /// `FOLDED_REPLY`: the HTTP status the reply started with at the host
    /// (a drop's record may not reach its payload).
    pub host_status: u16,
    pub _pad: [u8; 6],
    /// Connect: `bpf_get_current_comm`.
    pub comm: [u8; 16],
    /// Connect: destination address (IPv4 in the first 4 bytes).
    pub daddr: [u8; 16],
    pub data: [u8; SNAP_LEN],
}

/// `Record::folded`: the reply's arrival at the host (`host_ttl`,
/// `host_ifindex`).
pub const FOLDED_REPLY: u8 = 1;
/// `Record::folded`: the departure from the host of the request the reply
/// acknowledges (`host_req_ttl`, `host_req_flags`, `host_req_seq`).
pub const FOLDED_REQUEST: u8 = 2;

/// `Record::folded` of a connect: the socket's SYN is not recorded (unless
/// every packet is asked for); the connect stands for it.
pub const FOLDED_SYN: u8 = 4;

/// Uplink sightings waiting for the socket hook that folds them (map
/// FOLDS, an LRU): a reply's arrival waits microseconds for its delivery, a
/// request's departure one round trip for its reply. 16,384 entries (about
/// 1.5 MiB): a flood must put more than 16,384 segments to an endpoint on
/// the uplinks within one such round trip (millions a second) to evict one
/// before its reply folds it; an evicted sighting only leaves the reply's
/// record without its host TTLs.
pub const MAX_FOLDS: u32 = 16_384;

/// Key of map FOLDS: an endpoint (IPv4 address as it sits in the packet,
/// or an IPv6 one folded), its port (host order), which sighting, and the
/// sequence number the reply names it by: a reply's own, or the one it
/// acknowledges (the request's end). NAT rewrites neither.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldKey {
    pub endpoint: u32,
    pub port: u16,
    /// `FOLDED_REPLY` or `FOLDED_REQUEST`.
    pub what: u16,
    pub seq: u32,
}

/// Value of map FOLDS: the segment as the uplink saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sighting {
    pub ifindex: u32,
    /// The segment's own sequence number.
    pub seq: u32,
    pub ttl: u8,
    pub flags: u8,
    /// A reply's HTTP status.
    pub status: u16,
    pub _pad: [u8; 4],
}

/// Offsets into the kernel's `struct sk_buff`, read from BTF at load time
/// (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbOffsets {
    pub head: u32,
    pub network_header: u32,
    /// End of the linear data, as an offset from `head` (64-bit kernels).
    pub tail: u32,
    /// The interface the packet came in by (0: sent by this host).
    pub skb_iif: u32,
}

/// Offsets into `struct cgroup`, `struct kernfs_node` and `struct
/// cgroup_root`, read from BTF at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupOffsets {
    /// `cgroup.kn`
    pub kn: u32,
    /// `cgroup.root`
    pub root: u32,
    /// `kernfs_node.id` (the cgroup id, as bpf_skb_cgroup_id reports it)
    pub kn_id: u32,
    /// `cgroup_root.hierarchy_id`
    pub hierarchy_id: u32,
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::Record {}
    unsafe impl aya::Pod for super::SkbOffsets {}
    unsafe impl aya::Pod for super::Budget {}
    unsafe impl aya::Pod for super::CgroupOffsets {}
}
