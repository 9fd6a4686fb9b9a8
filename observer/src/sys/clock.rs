//! The eBPF clock (CLOCK_MONOTONIC, `bpf_ktime_get_ns`) and its mapping to
//! wall-clock time.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Maps the eBPF clock to wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        Self { offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC) }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

/// The monotonic clock the eBPF timestamps use.
pub fn mono_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}
