//! cgroup:cgroup_mkdir (tp_btf): a cgroup2 cgroup's id and path as it is
//! created. The record is in the ring before any packet from a process in
//! it, so userspace names the cgroup even when it is gone by the time its
//! packets are read (a short-lived container). The struct offsets come from
//! the kernel's BTF at load time.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use observer_ebpf::{CgroupOffsets, GLOBAL_MKDIR, Hook};

use crate::capture;

#[unsafe(no_mangle)]
static CGROUP_OFFSETS: CgroupOffsets = CgroupOffsets { kn: 0, root: 0, kn_id: 0, hierarchy_id: 0 };

// TP_PROTO(struct cgroup *cgrp, const char *path)
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let off = unsafe { core::ptr::read_volatile(&CGROUP_OFFSETS) };
    if off.kn == 0 {
        return 0;
    }
    // cgroup2 only: the default hierarchy is number 0 (the "0::" line of
    // /proc/<pid>/cgroup). cgroup v1 hierarchies number their ids apart.
    let Ok(root) =
        (unsafe { bpf_probe_read_kernel(cgrp.add(off.root as usize) as *const *const u8) })
    else {
        return 0;
    };
    match unsafe { bpf_probe_read_kernel(root.add(off.hierarchy_id as usize) as *const i32) } {
        Ok(0) => {}
        _ => return 0,
    }
    let Ok(kn) = (unsafe { bpf_probe_read_kernel(cgrp.add(off.kn as usize) as *const *const u8) })
    else {
        return 0;
    };
    let Ok(id) = (unsafe { bpf_probe_read_kernel(kn.add(off.kn_id as usize) as *const u64) })
    else {
        return 0;
    };
    // Node-wide: a workload allowed to make cgroups cannot fill the ring.
    if !capture::admit_global(GLOBAL_MKDIR, unsafe { bpf_ktime_get_ns() }) {
        return 0;
    }
    let Some(mut entry) = capture::reserve() else {
        return 0;
    };
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    capture::header(rec, Hook::CgroupMkdir, 0, id, 0);
    let n = match unsafe { bpf_probe_read_kernel_str_bytes(path, &mut rec.data) } {
        Ok(s) => s.len() as u32,
        Err(_) => 0,
    };
    rec.pkt_len = n;
    rec.snap_len = n;
    entry.submit(capture::submit_flags());
    0
}
