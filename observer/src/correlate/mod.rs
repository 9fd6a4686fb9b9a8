//! From packets to flows: which socket (and so which process and cgroup) a
//! packet seen at the host belongs to, also behind NAT.
pub mod flows;
