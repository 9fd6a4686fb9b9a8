//! One observer per host network namespace: a second would attach the same
//! programs and report every packet twice. The lock is `flock` on a file in
//! a root-only directory of the host (`DIR`, a hostPath in the DaemonSet),
//! named after the network namespace; the kernel releases it when the
//! holder dies, SIGKILL included. An abstract unix socket did the same, but
//! any pod on the host network could bind its name first, and every restart
//! of the observer then exited "already running".
use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::ErrorKind,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};

/// Where the lock files live (created 0700 when missing).
pub const DIR: &str = "/run/imds-observer";

/// Held while the returned file is open.
pub fn take() -> Result<File> {
    take_in(Path::new(DIR))
}

fn take_in(dir: &Path) -> Result<File> {
    let netns = std::fs::metadata("/proc/self/ns/net")
        .context("reading this process's network namespace")?
        .ino();
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path: PathBuf = dir.join(format!("net-{netns}.lock"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("opening the instance lock {}", path.display()))?;
    // SAFETY: a valid fd, owned by `file` for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::WouldBlock {
            bail!(
                "another imds-observer is already running on this host (network namespace; lock {}); stop it, or pass --alongside to run both",
                path.display()
            );
        }
        return Err(anyhow!("taking the instance lock {}: {e}", path.display()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("imds-lock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = take_in(&dir).unwrap();
        // flock is per open file: a second open in this process conflicts
        // as another process's would.
        let err = take_in(&dir).unwrap_err().to_string();
        assert!(err.contains("already running") && err.contains("--alongside"), "{err}");
        drop(first);
        let again = take_in(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_in_place_of_the_lock_is_refused() {
        let dir = std::env::temp_dir().join(format!("imds-lock-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let target = dir.join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.join(format!("net-{netns}.lock"))).unwrap();
        assert!(take_in(&dir).is_err());
        assert!(!target.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
