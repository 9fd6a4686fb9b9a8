//! tc ingress on each container's host-side veth: a container's packets to
//! an endpoint as they enter the host. Where containers are not in cgroup2
//! (cgroup v1 hosts) the socket's cgroup names no container; the veth does:
//! userspace maps its ifindex to the peer's network namespace, and that to
//! the container. Attached only on such hosts (capture/veths.rs).
use aya_ebpf::{helpers::generated::bpf_get_socket_cookie, macros::classifier, programs::TcContext};
use observer_ebpf::Hook;

use crate::{
    capture::{self, Match, Meta},
    cgroup_skb::{Skb, ip_version},
};

const ETH_HLEN: u32 = 14;
/// TC_ACT_UNSPEC: observe, never decide.
const TC_NEXT: i32 = -1;

#[classifier]
pub fn tc_veth(ctx: TcContext) -> i32 {
    let version = ip_version(unsafe { (*ctx.skb.skb).protocol });
    if version != 0 {
        let pkt = Skb { skb: &ctx.skb, l3: ETH_HLEN };
        capture::packet(&pkt, version, Match::Dst, || Meta {
            hook: Hook::VethIngress,
            ifindex: unsafe { (*ctx.skb.skb).ifindex },
            cgroup_id: 0,
            // The sending socket is still attached when the packet crosses
            // the veth (it is orphaned later, in ip_rcv): its cookie names
            // the flow directly, NAT or not. 0 when it was forwarded.
            cookie: unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) },
            reason: 0,
        });
    }
    TC_NEXT
}
