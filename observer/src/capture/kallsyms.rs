//! Where the kernel dropped a packet, by function name: skb:kfree_skb's
//! `location` (the return address into the function that freed it) looked
//! up in /proc/kallsyms. Every kernel gives it; 5.10 gives no drop reason,
//! so there it is the kernel's own evidence of a TTL drop (`ip_forward`).
//!
//! Only the functions the diagnosis reads are kept (a few ranges, not the
//! ~100k symbols), and no address is ever written out: kernel addresses
//! would defeat KASLR for whoever reads the logs.
use std::io::{BufRead, BufReader};

/// Functions a drop location is named by. The forwarding ones mean "lost on
/// the way"; the others free packets that were already delivered (a socket
/// closed with its queue unread: 5.10 frees them in sk_stream_kill_queues),
/// which on kernels without the QUEUE_PURGE reason is the only way to tell
/// such a free from a loss.
pub const FORWARD: &[&str] = &["ip_forward", "ip6_forward"];
pub const DELIVERED: &[&str] = &[
    "sk_stream_kill_queues",
    "skb_queue_purge",
    "skb_queue_purge_reason",
    "inet_sock_destruct",
    "tcp_close",
    "__tcp_close",
];

static PRELOADED: std::sync::OnceLock<Locations> = std::sync::OnceLock::new();

#[derive(Clone, Debug, Default)]
pub struct Locations {
    /// (start, end, name), sorted by start.
    ranges: Vec<(u64, u64, &'static str)>,
}

impl Locations {
    /// For `run`, before any other thread exists: read /proc/kallsyms, then
    /// give up CAP_SYSLOG, held (in the shipped manifests) for this read
    /// alone. [`Locations::read`] then returns what was read here.
    pub fn preload() {
        let _ = PRELOADED.set(Self::read_file());
        match crate::sys::caps::drop(crate::sys::caps::CAP_SYSLOG) {
            Ok(true) => tracing::debug!("CAP_SYSLOG dropped: /proc/kallsyms read"),
            Ok(false) => {}
            Err(e) => tracing::warn!("dropping CAP_SYSLOG after reading /proc/kallsyms: {e}"),
        }
    }

    /// What [`Locations::preload`] read, else /proc/kallsyms now.
    pub fn read() -> Self {
        PRELOADED.get().cloned().unwrap_or_else(Self::read_file)
    }

    /// From /proc/kallsyms; empty when it hides addresses (a reader without
    /// CAP_SYSLOG sees zeros where kernel.perf_event_paranoid > 1) or
    /// cannot be read.
    fn read_file() -> Self {
        match std::fs::File::open("/proc/kallsyms") {
            Ok(f) => Self::parse(BufReader::new(f)),
            Err(e) => {
                tracing::debug!("/proc/kallsyms: {e}");
                Self::default()
            }
        }
    }

    pub fn parse(r: impl BufRead) -> Self {
        let mut starts = Vec::new();
        let mut wanted = Vec::new();
        for line in r.lines().map_while(Result::ok) {
            let mut f = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            if addr == 0 {
                continue;
            }
            starts.push(addr);
            // Module symbols carry "[module]" after the name; ours are core.
            if f.next().is_none() {
                if let Some(n) = FORWARD.iter().chain(DELIVERED).find(|n| **n == name) {
                    wanted.push((addr, *n));
                }
            }
        }
        starts.sort_unstable();
        let mut ranges: Vec<(u64, u64, &'static str)> = wanted
            .into_iter()
            .map(|(start, name)| {
                // A function ends where the next symbol begins.
                let i = starts.partition_point(|a| *a <= start);
                (start, starts.get(i).copied().unwrap_or(u64::MAX), name)
            })
            .collect();
        ranges.sort_unstable();
        Self { ranges }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The function `addr` is in, if it is one we name.
    pub fn name(&self, addr: u64) -> Option<&'static str> {
        let i = self.ranges.partition_point(|(start, _, _)| *start <= addr);
        let (start, end, name) = *self.ranges.get(i.checked_sub(1)?)?;
        (start <= addr && addr < end).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff82057290 T ip_forward
ffffffff820577a0 t ip_forward_finish
ffffffff8213c270 T ip6_forward
ffffffff8213d000 T ip6_forward_finish
ffffffff81e90000 T skb_queue_purge
ffffffff81e90100 T skb_dequeue
ffffffffc0001000 t ip_forward\t[some_module]
ffffffff83000000 D some_data
";

    #[test]
    fn names_addresses_inside_known_functions() {
        let l = Locations::parse(KALLSYMS.as_bytes());
        assert_eq!(l.name(0xffffffff82057290), Some("ip_forward"));
        assert_eq!(l.name(0xffffffff820573a1), Some("ip_forward"));
        assert_eq!(l.name(0xffffffff820577a0), None, "the next function");
        assert_eq!(l.name(0xffffffff8213c400), Some("ip6_forward"));
        assert_eq!(l.name(0xffffffff81e900ff), Some("skb_queue_purge"));
        assert_eq!(l.name(0xffffffff81000010), None, "a function we do not name");
        assert_eq!(l.name(0), None);
        assert_eq!(l.name(u64::MAX), None);
    }

    #[test]
    fn hidden_addresses_name_nothing() {
        let hidden = "0000000000000000 T ip_forward\n0000000000000000 T ip_forward_finish\n";
        assert!(Locations::parse(hidden.as_bytes()).is_empty());
        assert!(Locations::parse("garbage\n\n  \nzz T x\n".as_bytes()).is_empty());
    }
}
