//! tc ingress/egress on the host's uplinks: replies as they arrive at the
//! host (their TTL is the hop limit the instance applied) and requests as
//! they leave it (their TTL, against the container's, counts the hops).
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::classifier, programs::TcContext,
};
use observer_ebpf::Hook;

use crate::capture::{self, Match, Meta, Role, Skb, ip_version};

/// Ethernet header; userspace attaches only to Ethernet devices.
const ETH_HLEN: u32 = 14;
/// TC_ACT_UNSPEC, which TCX reads as "next": observe, never decide.
pub const TC_NEXT: i32 = -1;

/// Record a matching packet. `veth`: a container's veth, where the sending
/// socket is still attached (its cookie is asked, only for a match) and the
/// interface names the container (its budget).
#[inline(always)]
pub fn on_packet(ctx: &TcContext, hook: Hook, want: Match, veth: bool) {
    let version = ip_version(unsafe { (*ctx.skb.skb).protocol });
    if version == 0 {
        return;
    }
    let pkt = Skb { skb: &ctx.skb, l3: ETH_HLEN };
    if pkt.outside_endpoints(version, want) {
        return;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let role = if veth { Role::Veth } else { Role::Uplink { ifindex } };
    capture::packet(&pkt, version, want, role, |_| Meta {
        hook,
        ifindex,
        cgroup_id: 0,
        cookie: if veth { unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) } } else { 0 },
        reason: 0,
        location: 0,
        via: if veth { ifindex } else { 0 },
    });
}

#[classifier]
pub fn imds_tc_ingress(ctx: TcContext) -> i32 {
    on_packet(&ctx, Hook::TcIngress, Match::Src, false);
    TC_NEXT
}

#[classifier]
pub fn imds_tc_egress(ctx: TcContext) -> i32 {
    on_packet(&ctx, Hook::TcEgress, Match::Dst, false);
    TC_NEXT
}
