//! The memory budget every table of the observer is sized from. A table a
//! workload can grow (by opening flows, making cgroups, sending requests)
//! is capped at its share of the budget divided by the worst-case size of
//! one entry, heap included; full, it evicts its least recently seen eighth
//! (model::bounded). With the kernel's per-workload record budget, this is
//! what keeps a hostile container from growing the observer's memory.
//!
//! The DaemonSet's memory limit is 256 MiB; the tables may hold half of it,
//! the rest is the runtime, the BTF parse at start and the allocator's
//! slack.
pub const STATE_BYTES: usize = 128 << 20;

/// Entries of a table holding `share_percent` of the budget, entries of
/// `entry_bytes` each (a full entry with the values metadata traffic has:
/// IMDS paths are under 128 bytes; the decoder keeps 256 at most).
pub const fn entries(share_percent: usize, entry_bytes: usize) -> usize {
    STATE_BYTES / 100 * share_percent / entry_bytes
}

/// The Diagnoser's flows, per node: an exchange keeps method and path (256
/// bytes at most) and its reply; 16 exchanges and the TTL samples.
pub const DIAGNOSE_FLOW_BYTES: usize = 8 << 10;
pub const DIAGNOSE_FLOWS: usize = entries(20, DIAGNOSE_FLOW_BYTES);
/// The Diagnoser's containers, per node: a timeline of 64 attempts (path
/// included), endpoints, status paths and the identity with its labels.
pub const DIAGNOSE_CONTAINER_BYTES: usize = 16 << 10;
pub const DIAGNOSE_CONTAINERS: usize = entries(40, DIAGNOSE_CONTAINER_BYTES);
/// correlate's flows: the flow, its comm, and its tuple, NAT tuple and
/// sent-segment entries.
pub const CORRELATE_FLOW_BYTES: usize = 512;
pub const CORRELATE_FLOWS: usize = entries(6, CORRELATE_FLOW_BYTES);
/// Identity: a container with its names, image and pod labels.
pub const IDENTITY_BYTES: usize = 2 << 10;
pub const IDENTITIES: usize = entries(10, IDENTITY_BYTES);
/// The cgroup id → path cache: a path below the cgroup2 root.
pub const CGROUP_PATH_BYTES: usize = 384;
pub const CGROUP_PATHS: usize = entries(8, CGROUP_PATH_BYTES);
/// Metrics: what was last read of a container, and its workload's labels.
pub const METRICS_SEEN_BYTES: usize = 256;
pub const METRICS_SEEN: usize = entries(3, METRICS_SEEN_BYTES);

// The tables fit the budget, and it is enough for a busy node: more
// containers than any instance type runs pods, thousands of concurrent
// metadata connections. Checked when the crate builds.
const _: () = assert!(
    DIAGNOSE_FLOWS * DIAGNOSE_FLOW_BYTES
        + DIAGNOSE_CONTAINERS * DIAGNOSE_CONTAINER_BYTES
        + CORRELATE_FLOWS * CORRELATE_FLOW_BYTES
        + 2 * IDENTITIES * IDENTITY_BYTES
        + CGROUP_PATHS * CGROUP_PATH_BYTES
        + METRICS_SEEN * METRICS_SEEN_BYTES
        <= STATE_BYTES
);
const _: () = assert!(DIAGNOSE_CONTAINERS >= 3_000 && DIAGNOSE_FLOWS >= 3_000);
const _: () = assert!(CORRELATE_FLOWS >= DIAGNOSE_FLOWS);
