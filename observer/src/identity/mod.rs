//! Who is behind a packet: cgroup paths now; runtimes and pods later.
pub mod cgroup;
pub mod runtime;
pub mod docker;
