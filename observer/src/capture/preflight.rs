//! Checks before loading anything, each failing with one line that says what
//! to do. Kernel errors (EPERM from bpf(2), a verifier log) are far harder to
//! read than "missing CAP_BPF".
use std::{ffi::CString, path::Path};

use anyhow::{Result, bail};

/// Oldest kernel with everything used: BPF ring buffer (5.8), tp_btf,
/// bpf_skb_cgroup_id and socket cookies in cgroup programs.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capabilities the observer needs, by name, that `cap_eff` (the CapEff mask
/// from /proc/self/status) lacks. CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON, as it does in the kernel (and must on kernels before 5.8).
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// "6.18.44-fc-v669" → (6, 18).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let missing = parse_cap_eff(&status).map(missing_caps).unwrap_or_default();
    if !missing.is_empty() {
        bail!(
            "missing capabilities: {}. Run as root, or grant them (see Privileges in the README)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

/// The kernel is one the observer can run on: 5.8+ with BTF at `btf`.
pub fn check_kernel(btf: &Path) -> Result<()> {
    let release = kernel_release();
    if let Some(v) = parse_kernel_release(&release) {
        if v < MIN_KERNEL {
            bail!(
                "kernel {release} is too old: imds-observer needs {}.{} or newer (BPF ring buffer, BTF tracepoints)",
                MIN_KERNEL.0,
                MIN_KERNEL.1
            );
        }
    }
    if !btf.exists() {
        bail!(
            "kernel {release} has no BTF at {}: imds-observer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y \
             (every EKS, Bottlerocket, Amazon Linux 2023 and Debian kernel is)",
            btf.display()
        );
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose usual
/// default is smaller than the ring buffer. Raise it (needs
/// CAP_SYS_RESOURCE where the limit is lower); later kernels ignore it.
pub fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid rlimit for this process.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (only kernels before 5.11 need it)");
    }
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!(
            "interface {name:?} does not exist in this network namespace (see `ip link`; with --iface name an uplink)"
        );
    }
    Ok(idx)
}

/// The tc programs parse Ethernet frames; refuse other link types.
pub fn check_ethernet(name: &str) -> Result<()> {
    ifindex(name)?;
    // SAFETY: plain ioctl on a throwaway datagram socket with a zeroed ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Ok(());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFHWADDR as _, &mut ifr);
        libc::close(fd);
        if r == 0 && ifr.ifr_ifru.ifru_hwaddr.sa_family != libc::ARPHRD_ETHER {
            bail!(
                "interface {name:?} is not an Ethernet device; the tc hooks only parse Ethernet uplinks"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert!(missing_caps(u64::MAX).is_empty());
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        let caps = (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN);
        assert!(missing_caps(caps).is_empty());
    }

    #[test]
    fn names_each_missing_cap() {
        assert_eq!(missing_caps(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert_eq!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)), vec!["CAP_NET_ADMIN"]);
    }

    #[test]
    fn parses_status_and_release() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_kernel_release("garbage"), None);
    }
}
