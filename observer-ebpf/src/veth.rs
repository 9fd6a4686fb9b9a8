//! tc ingress on each container's host-side veth: a container's packets to
//! an endpoint as they enter the host. Where containers are not in cgroup2
//! (cgroup v1 hosts) the socket's cgroup names no container; the veth does:
//! userspace maps its ifindex to the peer's network namespace, and that to
//! the container. Attached only on such hosts (capture/veths.rs).
use aya_ebpf::{macros::classifier, programs::TcContext};
use observer_ebpf::Hook;

use crate::{
    capture::Match,
    tc::{TC_NEXT, on_packet},
};

#[classifier]
pub fn imds_tc_veth(ctx: TcContext) -> i32 {
    // The sending socket is still attached when the packet crosses the veth
    // (it is orphaned later, in ip_rcv): its cookie names the flow directly,
    // NAT or not. 0 when the packet was forwarded.
    on_packet(&ctx, Hook::VethIngress, Match::Dst, true);
    TC_NEXT
}
