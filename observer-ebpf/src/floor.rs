//! Programs that do nothing, on the packet hooks the observer uses: the floor
//! `cargo xtask bench` measures ours against (the kernel's cost of running
//! any program there, with the same object and loader). Never attached by the
//! observer.
use aya_ebpf::{
    macros::{cgroup_skb, classifier},
    programs::{SkBuffContext, TcContext},
};

use crate::tc::TC_NEXT;

#[cgroup_skb(egress)]
pub fn empty_egress(_ctx: SkBuffContext) -> i32 {
    1
}

#[cgroup_skb(ingress)]
pub fn empty_ingress(_ctx: SkBuffContext) -> i32 {
    1
}

#[classifier]
pub fn imds_floor_in(_ctx: TcContext) -> i32 {
    TC_NEXT
}

#[classifier]
pub fn imds_floor_out(_ctx: TcContext) -> i32 {
    TC_NEXT
}
