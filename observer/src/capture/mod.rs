//! Load the eBPF programs, attach them, and read their ring buffer.
//!
//! Hooks (kernel side in observer-ebpf/src/, one file each):
//! cgroup_skb egress/ingress and cgroup connect4/connect6 at the cgroup v2
//! root, tc ingress/egress on the uplinks, tp_btf skb:kfree_skb and
//! cgroup:cgroup_mkdir, and on
//! cgroup v1 hosts tc ingress on each container's host-side veth (veths.rs).
pub mod attach;
pub mod btf;
pub mod decode;
pub mod kallsyms;
pub mod preflight;
pub mod record_dump;
pub mod uplinks;
pub mod veths;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as AyaHashMap, MapData, PerCpuArray, RingBuf},
};
use observer_ebpf::{Budget, GLOBAL_MKDIR, MAX_ENDPOINTS, Record};
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::{model::Endpoint, sys::netlink};

/// The metadata endpoints watched by default: AWS IMDS (also GCP and Azure),
/// the ECS task-credentials endpoint and the EKS Pod Identity agent.
pub const DEFAULT_ENDPOINTS: &[&str] =
    &["169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23"];

/// Records taken from the ring per read.
pub const READ_BATCH: usize = 256;

pub struct Config {
    pub endpoints: Vec<Endpoint>,
    pub cgroup_root: PathBuf,
    /// Interfaces for the tc programs (already resolved: never empty unless
    /// no interface routes an endpoint).
    pub ifaces: Vec<String>,
    /// The running kernel's BTF (/sys/kernel/btf/vmlinux).
    pub kernel_btf: PathBuf,
    /// No other instance runs (no `--alongside`): tc filters of our
    /// programs found at start are a killed instance's leftovers.
    pub sole_instance: bool,
    /// Hand over every matching packet, not only what the diagnosis reads
    /// (`run --events packets`).
    pub all_packets: bool,
}

/// What this kernel lets the observer see, chosen from its BTF.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// skb:kfree_skb passes a drop reason (5.17+).
    pub drop_reasons: bool,
    /// tc attaches through TCX links (6.6+), else netlink on clsact.
    pub tcx: bool,
    /// /proc/kallsyms names drop locations (needs CAP_SYSLOG, or
    /// kptr_restrict 0 with perf_event_paranoid <= 1).
    pub locations: bool,
}

impl Kernel {
    /// What is missing and what stands in for it, once at start (None when
    /// nothing is).
    pub fn limits(&self) -> Option<String> {
        let mut said = Vec::new();
        if !self.drop_reasons {
            said.push(if self.locations {
                "this kernel's skb:kfree_skb gives no drop reason (before 5.17): a drop is named by where the kernel freed the packet (ip_forward for an expired TTL), corroborated by the host's ICMP time exceeded and the reply that never reached its socket"
            } else {
                "this kernel's skb:kfree_skb gives no drop reason (before 5.17) and /proc/kallsyms hides addresses (no CAP_SYSLOG), so drops are not named: an expired TTL is told by the reply's TTL at the host, the host's ICMP time exceeded and the reply that never reached its socket"
            });
        }
        if !self.tcx {
            said.push("no TCX (before 6.6): uplink programs attach through netlink tc on a clsact qdisc, which stays after exit");
        }
        (!said.is_empty()).then(|| said.join("; "))
    }
}

/// What the kernel counted for one program (only while
/// `kernel.bpf_stats_enabled` is 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub run_time_ns: u64,
    pub runs: u64,
}

pub struct Capture {
    /// The cgroup v1 fallback's thread, on hosts that have cgroup v1.
    /// Stopped first on drop: it shares the programs.
    veths: Option<(veths::VethWorker, watch::Receiver<Vec<netlink::Link>>)>,
    // Owns the programs and their links: dropping it detaches everything.
    ebpf: Arc<Mutex<Ebpf>>,
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    budgets: AyaHashMap<MapData, u64, Budget>,
    /// Node-wide budgets (observer_ebpf::GLOBAL_FLOWS, GLOBAL_MKDIR).
    global: Array<MapData, Budget>,
    suppressed_total: PerCpuArray<MapData, u64>,
    /// The kernel's suppressed total, and per budget key, as last read.
    suppressed_seen: (u64, HashMap<Option<u64>, u64>),
    /// Kernel drop-reason number → name.
    pub drop_reasons: HashMap<u32, String>,
    /// Drop locations (kernel text addresses) → the function they are in.
    pub locations: kallsyms::Locations,
    pub kernel: Kernel,
    /// ifindex → name, for the uplinks attached.
    pub ifaces: HashMap<u32, String>,
}

/// The endpoint set as the programs compare it: addresses as network-order
/// words read natively, and each one's service port (host order).
struct EndpointGlobals {
    /// (prefix, mask) every IPv4 endpoint shares, as the programs read
    /// addresses; and of the IPv6 endpoints' first 32 bits.
    prefix_v4: [u32; 2],
    prefix_v6: [u32; 2],
    v4: [u32; MAX_ENDPOINTS],
    ports_v4: [u16; MAX_ENDPOINTS],
    v6: [[u32; 4]; MAX_ENDPOINTS],
    ports_v6: [u16; MAX_ENDPOINTS],
}

/// The longest prefix the 32-bit words share, as (prefix, mask) read natively
/// from network-order bytes. None at all: a prefix only 0.0.0.0 matches.
fn common_prefix(words: impl Iterator<Item = [u8; 4]>) -> [u32; 2] {
    let words: Vec<u32> = words.map(u32::from_be_bytes).collect();
    let Some(&first) = words.first() else { return [0, u32::MAX] };
    let differ = words.iter().fold(0, |d, w| d | (w ^ first));
    let len = differ.leading_zeros();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let native = |v: u32| u32::from_ne_bytes(v.to_be_bytes());
    [native(first & mask), native(mask)]
}

fn endpoint_globals(endpoints: &[Endpoint]) -> Result<EndpointGlobals> {
    let mut g = EndpointGlobals {
        prefix_v4: common_prefix(endpoints.iter().filter_map(|e| match e.addr {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        })),
        prefix_v6: common_prefix(endpoints.iter().filter_map(|e| match e.addr {
            IpAddr::V6(a) => {
                let o = a.octets();
                Some([o[0], o[1], o[2], o[3]])
            }
            IpAddr::V4(_) => None,
        })),
        v4: [0; MAX_ENDPOINTS],
        ports_v4: [0; MAX_ENDPOINTS],
        v6: [[0; 4]; MAX_ENDPOINTS],
        ports_v6: [0; MAX_ENDPOINTS],
    };
    let (mut n4, mut n6) = (0, 0);
    for ep in endpoints {
        match ep.addr {
            IpAddr::V4(a) => {
                anyhow::ensure!(n4 < MAX_ENDPOINTS, "at most {MAX_ENDPOINTS} IPv4 endpoints");
                g.v4[n4] = u32::from_ne_bytes(a.octets());
                g.ports_v4[n4] = ep.port;
                n4 += 1;
            }
            IpAddr::V6(a) => {
                anyhow::ensure!(n6 < MAX_ENDPOINTS, "at most {MAX_ENDPOINTS} IPv6 endpoints");
                let o = a.octets();
                for (i, w) in g.v6[n6].iter_mut().enumerate() {
                    *w = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                }
                g.ports_v6[n6] = ep.port;
                n6 += 1;
            }
        }
    }
    Ok(g)
}

/// The eBPF object (observer-ebpf), built by build.rs. Public for the
/// benchmark, which loads its empty programs from the same object.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer-ebpf"))
}

impl Capture {
    pub fn start(cfg: &Config) -> Result<Self> {
        let kbtf = btf::KernelBtf::load(&cfg.kernel_btf)?;
        let locations = kallsyms::Locations::read();
        let kernel = Kernel {
            drop_reasons: kbtf.kfree_skb_has_reason(),
            tcx: kbtf.has_tcx(),
            locations: !locations.is_empty(),
        };
        let skb = kbtf.skb_offsets()?;
        let cgroup_offsets = kbtf.cgroup_offsets()?;
        let drop_reasons = kbtf.drop_reasons();
        // The parsed kernel BTF is the largest thing the observer ever holds:
        // gone before aya parses its own, so that the two never coexist.
        drop(kbtf);
        crate::sys::memory::return_freed();
        let ep = endpoint_globals(&cfg.endpoints)?;
        let mut ebpf = EbpfLoader::new()
            .override_global("PREFIX_V4", &ep.prefix_v4, true)
            .override_global("PREFIX_V6", &ep.prefix_v6, true)
            .override_global("ENDPOINTS_V4", &ep.v4, true)
            .override_global("PORTS_V4", &ep.ports_v4, true)
            .override_global("ENDPOINTS_V6", &ep.v6, true)
            .override_global("PORTS_V6", &ep.ports_v6, true)
            .override_global("ALL_PACKETS", &u8::from(cfg.all_packets), true)
            .override_global("SKB_OFFSETS", &skb, true)
            .override_global("CGROUP_OFFSETS", &cgroup_offsets, true)
            .load(object())
            .context("loading the eBPF object")?;

        attach::cgroup_hooks(&mut ebpf, &cfg.cgroup_root)?;
        let tc_mode = attach::TcMode { tcx: kernel.tcx, clean_leftovers: cfg.sole_instance };
        let ifaces = attach::tc(&mut ebpf, &cfg.ifaces, tc_mode)?;
        let kfree_skb = if kernel.drop_reasons { "kfree_skb" } else { "kfree_skb_plain" };
        attach::tracepoints(&mut ebpf, kfree_skb)?;
        // aya's parse of the BTF is gone too.
        crate::sys::memory::return_freed();

        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map")?)?;
        let lost = PerCpuArray::try_from(ebpf.take_map("LOST").context("LOST map")?)?;
        let budgets = AyaHashMap::try_from(ebpf.take_map("BUDGETS").context("BUDGETS map")?)?;
        let global = Array::try_from(ebpf.take_map("GLOBAL").context("GLOBAL map")?)?;
        let suppressed_total =
            PerCpuArray::try_from(ebpf.take_map("SUPPRESSED").context("SUPPRESSED map")?)?;
        let ebpf = Arc::new(Mutex::new(ebpf));
        // Without it, capture still works; containers on a cgroup v1 host
        // then share their cgroup's row.
        let veths = match veths::Veths::new(&cfg.ifaces, tc_mode)
            .and_then(|v| v.map(|v| veths::VethWorker::start(v, ebpf.clone())).transpose())
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cgroup v1 fallback off: {e:#}");
                None
            }
        };
        Ok(Self {
            veths,
            ebpf,
            // SAFETY: the ring owns its fd, which stays open as long as the AsyncFd
            // (and is deregistered before it closes, on drop).
            ring: unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?,
            lost,
            budgets,
            global,
            suppressed_total,
            suppressed_seen: (0, HashMap::new()),
            drop_reasons,
            locations,
            kernel,
            ifaces,
        })
    }

    /// The container veths attached now, as they change (None without the
    /// cgroup v1 fallback).
    pub fn veths(&self) -> Option<watch::Receiver<Vec<netlink::Link>>> {
        self.veths.as_ref().map(|(_, rx)| rx.clone())
    }

    /// Wait for records and append up to [`READ_BATCH`] of them to `out`
    /// (the caller processes a batch before the next: memory stays that of
    /// one batch whatever the ring holds).
    pub async fn read(&mut self, out: &mut Vec<Record>) -> Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut taken = 0;
        while taken < READ_BATCH {
            let Some(item) = ring.next() else {
                // Empty: wait for the kernel's next wakeup.
                guard.clear_ready();
                return Ok(());
            };
            if item.len() >= size_of::<Record>() {
                // SAFETY: Record is plain old data and the item is at least its size.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Record>()) });
            }
            taken += 1;
        }
        // More is there: still ready.
        Ok(())
    }

    /// Take what the ring holds without waiting.
    pub fn drain(&mut self, out: &mut Vec<Record>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<Record>() {
                // SAFETY: as in `read`.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Record>()) });
            }
        }
    }

    /// Workloads whose budget held records back since the last call: (budget
    /// key, how many more; see `observer_ebpf::BudgetKey`; `None`: the
    /// node-wide budget of cgroup_mkdir records). Reads the budget maps only
    /// when the kernel's total grew.
    pub fn suppressed(&mut self) -> Vec<(Option<u64>, u64)> {
        let total: u64 =
            self.suppressed_total.get(&0, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
        if total == self.suppressed_seen.0 {
            return Vec::new();
        }
        self.suppressed_seen.0 = total;
        let mut out = Vec::new();
        let seen = &mut self.suppressed_seen.1;
        let mut now: HashMap<Option<u64>, u64> = self
            .budgets
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, b)| (Some(k), b.suppressed))
            .collect();
        if let Ok(b) = self.global.get(&GLOBAL_MKDIR, 0) {
            now.insert(None, b.suppressed);
        }
        for (&key, &n) in &now {
            // An evicted and re-created entry starts again from zero.
            let before = seen.get(&key).copied().unwrap_or(0);
            let grew = if n >= before { n - before } else { n };
            if grew > 0 {
                out.push((key, grew));
            }
        }
        *seen = now.into_iter().filter(|(_, n)| *n > 0).collect();
        out
    }

    /// Records the kernel dropped because the ring was full, since start.
    pub fn lost(&self) -> u64 {
        self.lost.get(&0, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
    }

    /// Per program: name, run time (ns), run count. The kernel counts them
    /// only while `kernel.bpf_stats_enabled` is 1 (zeros otherwise).
    pub fn bpf_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(ProgramStats {
                    name: name.to_string(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                    runs: info.run_count(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_share_a_prefix() {
        let native = |b: [u8; 4]| u32::from_ne_bytes(b);
        let ip4 = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap().octets();
        // The defaults: 169.254.169.254, .170.2, .170.23 share 169.254.168.0/22.
        let [p, m] = common_prefix(
            ["169.254.169.254", "169.254.170.2", "169.254.170.23"].into_iter().map(ip4),
        );
        assert_eq!(m, native([255, 255, 252, 0]));
        assert_eq!(p, native([169, 254, 168, 0]));
        for (addr, inside) in [
            ("169.254.169.254", true),
            ("169.254.170.2", true),
            ("10.0.0.1", false),
            ("169.255.0.1", false),
        ] {
            assert_eq!(native(ip4(addr)) & m == p, inside, "{addr}");
        }
        // One endpoint: itself. None: only 0.0.0.0.
        assert_eq!(
            common_prefix([ip4("10.1.2.3")].into_iter()),
            [native(ip4("10.1.2.3")), u32::MAX]
        );
        assert_eq!(common_prefix(std::iter::empty()), [0, u32::MAX]);
        // IPv6: fd00:ec2::254 and fd00:ec2::23 share their first 32 bits.
        let [p, m] = common_prefix([[0xfd, 0, 0x0e, 0xc2], [0xfd, 0, 0x0e, 0xc2]].into_iter());
        assert_eq!((p, m), (native([0xfd, 0, 0x0e, 0xc2]), u32::MAX));
    }

    use super::{Kernel, common_prefix};

    #[test]
    fn start_up_line_says_what_is_missing_and_what_stands_in() {
        let k = |drop_reasons, tcx, locations| Kernel { drop_reasons, tcx, locations };
        assert_eq!(k(true, true, true).limits(), None);
        let old = k(false, false, true).limits().unwrap();
        assert!(
            old.contains("no drop reason") && old.contains("ip_forward") && old.contains("no TCX"),
            "{old}"
        );
        let hidden = k(false, true, false).limits().unwrap();
        assert!(hidden.contains("CAP_SYSLOG") && !hidden.contains("TCX"), "{hidden}");
        assert!(k(true, false, false).limits().unwrap().contains("netlink"));
    }
}
