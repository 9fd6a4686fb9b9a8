//! Giving up a capability once its one use is over. CAP_SYSLOG lets the
//! observer read /proc/kallsyms's addresses (to name where the kernel
//! dropped a packet: the only drop evidence kernels before 5.17 give); it
//! is read once at start, and the capability dropped from every set before
//! any other thread exists (capabilities are per thread).
use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;
pub const CAP_SYSLOG: u32 = 34;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drop capability `cap` from this thread's effective, permitted and
/// inheritable sets (the kernel then drops it from the ambient set too):
/// it cannot come back. Whether it was held.
pub fn drop(cap: u32) -> io::Result<bool> {
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: header and two data words, as version 3 requires.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    let held = (data[word].permitted | data[word].effective | data[word].inheritable) & bit != 0;
    if !held {
        return Ok(false);
    }
    data[word].effective &= !bit;
    data[word].permitted &= !bit;
    data[word].inheritable &= !bit;
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// Whether this thread holds `cap` in its effective set.
pub fn effective(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << cap) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a thread of its own: capabilities are per thread, so the test's
    /// others keep theirs.
    #[test]
    fn a_dropped_capability_is_gone_and_stays_gone() {
        std::thread::spawn(|| {
            let had = effective(CAP_SYSLOG);
            assert_eq!(drop(CAP_SYSLOG).unwrap(), had);
            assert!(!effective(CAP_SYSLOG));
            assert!(!drop(CAP_SYSLOG).unwrap(), "dropped once, held no more");
        })
        .join()
        .unwrap();
    }
}
