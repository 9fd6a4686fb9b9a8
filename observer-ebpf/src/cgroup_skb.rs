//! cgroup_skb egress/ingress at the cgroup v2 root: every socket's packets,
//! with the socket's cgroup id and cookie. This is "the container side".
use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use observer_ebpf::{Hook, SNAP_LEN, snap_len};

use crate::capture::{self, Match, Meta, Packet};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// An skb whose data starts `l3` bytes before its IP header (0 for cgroup_skb,
/// the Ethernet header for tc).
pub struct Skb<'a> {
    pub skb: &'a aya_ebpf::programs::sk_buff::SkBuff,
    pub l3: u32,
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

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, hook: Hook, want: Match) {
    let version = ip_version(unsafe { (*ctx.skb.skb).protocol });
    if version == 0 {
        return;
    }
    let pkt = Skb { skb: &ctx.skb, l3: 0 };
    capture::packet(&pkt, version, want, || Meta {
        hook,
        ifindex: 0,
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.skb.skb) },
        cookie: unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) },
        reason: 0,
        location: 0,
    });
}

#[cgroup_skb(egress)]
pub fn cgroup_egress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx, Hook::CgroupEgress, Match::Dst);
    1 // observe only: always let the packet through
}

#[cgroup_skb(ingress)]
pub fn cgroup_ingress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx, Hook::CgroupIngress, Match::Src);
    1
}
