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
    status_mask(status, "CapEff:")
}

/// A capability mask of /proc/self/status (`CapEff:`, `CapBnd:`...).
fn status_mask(status: &str, field: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    u64::from_str_radix(value.trim(), 16).ok()
}

/// Why capabilities that the runtime allowed (they are in the bounding set)
/// are not held, from /proc/self/status and the permitted set of the
/// binary's file capabilities (`file`): a non-root process gets them only
/// from those (or as ambient ones), and not at all under no_new_privs where
/// the runtime left its permitted set empty (Docker Engine does, for a
/// non-root user; containerd and CRI-O put the added capabilities there).
fn why_missing(status: &str, file: Option<u64>) -> Option<&'static str> {
    let bounding = status_mask(status, "CapBnd:")?;
    if !missing_caps(bounding).is_empty() {
        return None; // not granted: the line says so
    }
    if missing_caps(status_mask(status, "CapPrm:")?).is_empty() {
        return Some("they are permitted but not effective");
    }
    let no_new_privs = status.lines().find_map(|l| l.strip_prefix("NoNewPrivs:"))?.trim() == "1";
    Some(match file {
        None => {
            "they are in the bounding set, but this binary has no file capabilities to take them up as a non-root user: run the image's binary (which has them), give yours the same (docs/deploy.md, The image), or make them ambient"
        }
        Some(f) if !missing_caps(f).is_empty() => {
            "they are in the bounding set, but this binary's file capabilities do not include them: give it those of the image (docs/deploy.md, The image)"
        }
        Some(_) if no_new_privs => {
            "they are in the bounding set, but no_new_privs kept this binary's file capabilities from granting them: the runtime gave this non-root process no permitted capabilities (as Docker Engine and cri-dockerd do); allow privilege escalation (allowPrivilegeEscalation: true, or no no-new-privileges security option)"
        }
        Some(_) => {
            "they are in the bounding set, but the kernel ignored this binary's file capabilities (a nosuid mount, or a file written in another user namespace)"
        }
    })
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
        let why =
            why_missing(&status, crate::sys::caps::file_permitted(Path::new("/proc/self/exe")));
        bail!(
            "missing capabilities: {}. Run as root, or grant them (see Privileges in the README){}",
            missing.join(", "),
            why.map(|w| format!("; {w}")).unwrap_or_default()
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

    /// /proc/self/status of uid 65534 with the DaemonSet's four capabilities
    /// in the bounding set (CAP_NET_ADMIN 12, CAP_SYSLOG 34, CAP_PERFMON 38,
    /// CAP_BPF 39) and none permitted.
    fn bounded_only(no_new_privs: u8) -> String {
        format!(
            "Uid:\t65534\t65534\t65534\t65534\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
             CapEff:\t0000000000000000\nCapBnd:\t000000c400001000\nCapAmb:\t0000000000000000\n\
             NoNewPrivs:\t{no_new_privs}\n"
        )
    }

    #[test]
    fn says_why_capabilities_in_the_bounding_set_are_not_held() {
        let image = Some(0xc4_0128_1000); // the image's setcap list
        let hint = |nnp, file| why_missing(&bounded_only(nnp), file).unwrap_or("none");
        assert!(hint(1, image).contains("no_new_privs kept"), "{}", hint(1, image));
        assert!(hint(1, image).contains("allowPrivilegeEscalation: true"));
        assert!(hint(0, image).contains("kernel ignored"), "{}", hint(0, image));
        assert!(hint(0, None).contains("no file capabilities"), "{}", hint(0, None));
        assert!(hint(1, None).contains("no file capabilities"), "no_new_privs is not the cause");
        assert!(hint(0, Some(1 << CAP_BPF)).contains("do not include them"));
        // Held, only not raised (main raises them before the check).
        let held =
            bounded_only(0).replace("CapPrm:\t0000000000000000", "CapPrm:\t000000c400001000");
        assert_eq!(why_missing(&held, image), Some("they are permitted but not effective"));
        // Not in the bounding set: the runtime did not grant them.
        let ungranted = bounded_only(1).replace("000000c400001000", "000000c000000000");
        assert_eq!(why_missing(&ungranted, image), None);
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
