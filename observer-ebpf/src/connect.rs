//! cgroup connect4/connect6: who opens a connection to an endpoint. The
//! socket cookie ties the process to the packets of its flow.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use observer_ebpf::Hook;

use crate::capture::{self, endpoint_v4, endpoint_v6};

const SOCK_STREAM: u32 = 1;

/// A TCP connect to the service port `port` of an endpoint (a UDP
/// `connect()` to the same address is not metadata traffic).
#[inline(always)]
fn to_service(ctx: &SockAddrContext, port: Option<u16>) -> bool {
    let sa = ctx.sock_addr;
    let (ty, user_port) = unsafe { ((*sa).type_, (*sa).user_port) };
    ty == SOCK_STREAM && port.is_some_and(|p| u16::from_be(user_port as u16) == p)
}

#[inline(always)]
fn record(ctx: &SockAddrContext, family: u8, addr: [u32; 4]) {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !capture::admit(cgroup_id) {
        return;
    }
    let Some(mut entry) = capture::reserve() else {
        return;
    };
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    capture::header(rec, Hook::Connect, family, cgroup_id, unsafe {
        bpf_get_socket_cookie(ctx.as_ptr())
    });
    rec.pid_tgid = bpf_get_current_pid_tgid();
    rec.netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    rec.dport = u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16);
    rec.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    rec.folded = capture::connect_folds();
    let mut i = 0;
    while i < 4 {
        let b = addr[i].to_ne_bytes();
        rec.daddr[i * 4] = b[0];
        rec.daddr[i * 4 + 1] = b[1];
        rec.daddr[i * 4 + 2] = b[2];
        rec.daddr[i * 4 + 3] = b[3];
        i += 1;
    }
    entry.submit(capture::submit_flags());
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    if to_service(&ctx, endpoint_v4(ip)) {
        record(&ctx, 4, [ip, 0, 0, 0]);
    }
    1 // observe only: never refuse a connect
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let a = unsafe { [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]] };
    // A dual-stack socket may reach an IPv4 endpoint as ::ffff:a.b.c.d.
    let mapped = a[0] == 0 && a[1] == 0 && a[2] == 0xffffu32.to_be();
    if mapped && to_service(&ctx, endpoint_v4(a[3])) {
        record(&ctx, 4, [a[3], 0, 0, 0]);
    } else if !mapped && to_service(&ctx, endpoint_v6(&a)) {
        record(&ctx, 6, a);
    }
    1
}
