//! The kernel side of imds-observer: one module per hook. Every packet of the
//! host passes through the packet hooks, so each leaves within a few
//! instructions unless the packet is to or from a metadata endpoint; what
//! passes is copied as a fixed-size snapshot for userspace to parse.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod cgroup_mkdir;
#[cfg(target_arch = "bpf")]
mod cgroup_skb;
#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod floor;
#[cfg(target_arch = "bpf")]
mod kfree_skb;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod veth;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Built on the host only so that `cargo check --workspace` works.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
