//! skb:kfree_skb (tp_btf): the kernel's own word that it dropped a packet to
//! or from an endpoint, where (`location`, e.g. in ip_forward) and why (e.g.
//! IP_INHDR when a reply's TTL ran out). This is the one hook that must read
//! `struct sk_buff`; its offsets come from the kernel's BTF at load time.
//!
//! Two variants, one loaded: the tracepoint gained its `reason` argument in
//! 5.17, and a program that reads an argument the prototype lacks does not
//! load. Userspace picks by the prototype in the kernel's BTF.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use observer_ebpf::{Hook, SNAP_LEN, SkbOffsets, snap_len};

use crate::capture::{self, Match, Meta, Packet, Role};

#[unsafe(no_mangle)]
static SKB_OFFSETS: SkbOffsets = SkbOffsets { head: 0, network_header: 0, tail: 0, skb_iif: 0 };

/// A packet in kernel memory, from its IP header.
struct KernelPacket {
    ip: *const u8,
    len: u32,
}

impl Packet for KernelPacket {
    #[inline(always)]
    fn len(&self) -> u32 {
        self.len
    }
    #[inline(always)]
    fn read(&self, off: u32, buf: &mut [u8]) -> Result<(), ()> {
        unsafe { bpf_probe_read_kernel_buf(self.ip.add(off as usize), buf) }.map_err(|_| ())
    }
    #[inline(always)]
    fn snapshot(&self, dst: &mut [u8; SNAP_LEN], n: u32) -> Result<(), ()> {
        if n == 0 {
            return Err(());
        }
        let r = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                dst.as_mut_ptr() as *mut _,
                snap_len(n),
                self.ip as *const _,
            )
        };
        if r == 0 { Ok(()) } else { Err(()) }
    }
}

// 5.17+: TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...)
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    on_drop(&ctx, reason)
}

// Before 5.17: TP_PROTO(struct sk_buff *skb, void *location)
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_plain(ctx: BtfTracePointContext) -> i32 {
    on_drop(&ctx, 0)
}

#[inline(always)]
fn on_drop(ctx: &BtfTracePointContext, reason: u32) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let off = unsafe { core::ptr::read_volatile(&SKB_OFFSETS) };
    if off.head == 0 {
        return 0;
    }
    let read = unsafe {
        (
            bpf_probe_read_kernel(skb.add(off.head as usize) as *const u64),
            bpf_probe_read_kernel(skb.add(off.network_header as usize) as *const u16),
            bpf_probe_read_kernel(skb.add(off.tail as usize) as *const u32),
        )
    };
    let (Ok(head), Ok(nh), Ok(tail)) = read else {
        return 0;
    };
    // The interface a packet came in by is what its sender cannot forge:
    // the budget of what a container sent (0 when this host sent it).
    let iif = if off.skb_iif == 0 {
        0
    } else {
        unsafe { bpf_probe_read_kernel(skb.add(off.skb_iif as usize) as *const u32) }.unwrap_or(0)
    };
    if head == 0 || nh == 0xffff {
        return 0;
    }
    let ip = (head + nh as u64) as *const u8;
    let Ok(h) = (unsafe { bpf_probe_read_kernel(ip as *const [u8; 8]) }) else {
        return 0;
    };
    let version = h[0] >> 4;
    // The IP header's own length says what the packet is (skb->len counts
    // from skb->data, which a transport protocol may have pulled past it);
    // only the linear data, up to skb->tail (an offset from head), is read:
    // a lying length or paged data would otherwise copy kernel memory that
    // is not the packet.
    let ip_len = match version {
        4 => u16::from_be_bytes([h[2], h[3]]) as u32,
        6 => 40 + u16::from_be_bytes([h[4], h[5]]) as u32,
        _ => return 0,
    };
    let linear = tail.saturating_sub(nh as u32);
    let pkt = KernelPacket { ip, len: if ip_len < linear { ip_len } else { linear } };
    capture::packet(&pkt, version, Match::Any, Role::Drop, |inbound| Meta {
        hook: Hook::Drop,
        ifindex: 0,
        cgroup_id: 0,
        cookie: 0,
        reason,
        location,
        // A reply came in by the uplink, which all workloads share: its
        // flow's budget then.
        via: if inbound { 0 } else { iif },
    });
    0
}
