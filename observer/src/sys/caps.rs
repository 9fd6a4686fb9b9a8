//! This thread's capability sets: raising the permitted ones at start, and
//! giving one up once its one use is over.
//!
//! Raising: the image's binary carries its capabilities as file
//! capabilities in the permitted set only, with no effective bit, so that
//! exec never fails where a runtime grants fewer of them than the file
//! names (the kernel gives the process those the bounding set allows, and
//! none of them effective). The observer makes them effective itself, first
//! thing, before it checks what it holds; where effective already equals
//! permitted (root, ambient capabilities) nothing changes.
//!
//! Giving up: CAP_SYSLOG lets the observer read /proc/kallsyms's addresses
//! (to name where the kernel dropped a packet: the only drop evidence
//! kernels before 5.17 give); it is read once at start, and the capability
//! dropped from every set before any other thread exists (capabilities are
//! per thread).
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

type Sets = [Data; 2];

fn get() -> io::Result<Sets> {
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: header and two data words, as version 3 requires.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

fn set(data: &Sets) -> io::Result<()> {
    let mut header = Header { version: VERSION_3, pid: 0 };
    // SAFETY: as in `get`; the kernel only reads `data`.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `data` with every permitted capability effective, and the mask of those
/// that were not (bit n: capability n).
fn with_permitted_effective(mut data: Sets) -> (Sets, u64) {
    let mut raised = 0u64;
    for (i, d) in data.iter_mut().enumerate() {
        raised |= u64::from(d.permitted & !d.effective) << (32 * i);
        d.effective = d.permitted;
    }
    (data, raised)
}

/// Make every capability this thread holds in its permitted set effective
/// (the kernel allows it: effective may be any subset of permitted). The
/// mask of those raised, 0 when there was nothing to do. Call it before any
/// other thread starts: threads inherit the creating thread's sets.
pub fn raise_permitted() -> io::Result<u64> {
    let (data, raised) = with_permitted_effective(get()?);
    if raised != 0 {
        set(&data)?;
    }
    Ok(raised)
}

/// Drop capability `cap` from this thread's effective, permitted and
/// inheritable sets (the kernel then drops it from the ambient set too):
/// it cannot come back. Whether it was held.
pub fn drop(cap: u32) -> io::Result<bool> {
    let mut data = get()?;
    let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    let held = (data[word].permitted | data[word].effective | data[word].inheritable) & bit != 0;
    if !held {
        return Ok(false);
    }
    data[word].effective &= !bit;
    data[word].permitted &= !bit;
    data[word].inheritable &= !bit;
    set(&data)?;
    Ok(true)
}

/// The permitted set of `path`'s file capabilities (its
/// `security.capability` attribute), None where it has none or they cannot
/// be read.
pub fn file_permitted(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 24];
    // SAFETY: a NUL-terminated path, a name literal, and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    parse_file_caps(buf.get(..usize::try_from(n).ok()?)?)
}

/// `vfs_cap_data` (revision 2, or 3 with a root uid after it): a
/// little-endian word of revision and flags, then permitted and inheritable
/// words for capabilities 0-31 and 32-63. The permitted mask.
fn parse_file_caps(raw: &[u8]) -> Option<u64> {
    let word = |i: usize| Some(u32::from_le_bytes(raw.get(i * 4..i * 4 + 4)?.try_into().ok()?));
    let revision = word(0)? & 0xff00_0000;
    let len = match revision {
        0x0200_0000 => 20,
        0x0300_0000 => 24,
        _ => return None,
    };
    if raw.len() != len {
        return None;
    }
    Some(u64::from(word(1)?) | u64::from(word(3)?) << 32)
}

/// Whether this thread holds `cap` in its effective set.
pub fn effective(cap: u32) -> bool {
    status_mask("CapEff:") & (1 << cap) != 0
}

/// A capability mask of /proc/thread-self/status (`CapEff:`, `CapPrm:`...).
fn status_mask(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
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

    /// The attribute `setcap cap_net_admin,cap_bpf=p` writes (revision 2),
    /// the same with the effective flag and a root uid (revision 3), and
    /// what is not file capabilities.
    #[test]
    fn file_capabilities_are_read_from_both_revisions() {
        let v2 = [0, 0, 0, 2, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_file_caps(&v2), Some((1 << 12) | (1 << 39)));
        let mut v3 = v2.to_vec();
        v3[0] = 1; // effective
        v3[3] = 3;
        v3.extend_from_slice(&1000u32.to_le_bytes());
        assert_eq!(parse_file_caps(&v3), Some((1 << 12) | (1 << 39)));
        assert_eq!(parse_file_caps(&v2[..16]), None, "short");
        assert_eq!(parse_file_caps(&v3[..20]), None, "revision 3 without its root uid");
        assert_eq!(parse_file_caps(&[0, 0, 0, 1, 0, 0x10, 0, 0, 0, 0, 0, 0]), None, "revision 1");
        assert_eq!(parse_file_caps(&[]), None);
        // A file without the attribute (this test's own binary, as built).
        assert_eq!(file_permitted(&std::env::current_exe().unwrap()), None);
    }

    /// What exec leaves a non-root process whose binary has permitted-only
    /// file capabilities: CAP_NET_ADMIN (12) and CAP_BPF (39) permitted,
    /// none effective.
    #[test]
    fn raising_makes_each_permitted_capability_effective_in_both_words() {
        let file_caps = [
            Data { effective: 0, permitted: 1 << 12, inheritable: 0 },
            Data { effective: 0, permitted: 1 << (39 - 32), inheritable: 0 },
        ];
        let (data, raised) = with_permitted_effective(file_caps);
        assert_eq!(raised, (1 << 12) | (1 << 39));
        assert_eq!(data[0].effective, 1 << 12);
        assert_eq!(data[1].effective, 1 << 7);
        assert_eq!([data[0].permitted, data[1].permitted], [1 << 12, 1 << 7], "permitted kept");
        // Root, ambient capabilities: effective is permitted already.
        let (again, none) = with_permitted_effective(data);
        assert_eq!((again, none), (data, 0));
    }

    /// The real call, root or not: as root one capability is first made
    /// ineffective (still permitted) and comes back; unprivileged, nothing
    /// is permitted and nothing is raised. Either way effective ends equal
    /// to permitted.
    #[test]
    fn raising_restores_an_ineffective_permitted_capability() {
        std::thread::spawn(|| {
            let mut data = get().unwrap();
            let permitted_syslog = data[1].permitted & (1 << (CAP_SYSLOG - 32)) != 0;
            if permitted_syslog {
                data[1].effective &= !(1 << (CAP_SYSLOG - 32));
                set(&data).unwrap();
                assert!(!effective(CAP_SYSLOG));
                assert_eq!(raise_permitted().unwrap(), 1 << CAP_SYSLOG);
                assert!(effective(CAP_SYSLOG));
            } else {
                let expected = status_mask("CapPrm:") & !status_mask("CapEff:");
                assert_eq!(raise_permitted().unwrap(), expected);
            }
            assert_eq!(status_mask("CapEff:"), status_mask("CapPrm:"));
            assert_eq!(raise_permitted().unwrap(), 0, "nothing left to raise");
        })
        .join()
        .unwrap();
    }
}
