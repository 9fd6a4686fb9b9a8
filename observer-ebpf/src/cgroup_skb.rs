//! cgroup_skb egress/ingress at the cgroup v2 root: every socket's packets,
//! with the socket's cgroup id and cookie. This is "the container side".
use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use observer_ebpf::Hook;

use crate::capture::{self, Match, Meta, Role, Skb, ip_version};

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, hook: Hook, want: Match) {
    let version = ip_version(unsafe { (*ctx.skb.skb).protocol });
    if version == 0 {
        return;
    }
    let pkt = Skb { skb: &ctx.skb, l3: 0 };
    if pkt.outside_endpoints(version, want) {
        return;
    }
    capture::packet(&pkt, version, want, Role::Socket, |_| Meta {
        hook,
        ifindex: 0,
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.skb.skb) },
        cookie: unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) },
        reason: 0,
        location: 0,
        via: 0,
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
