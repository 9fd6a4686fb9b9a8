//! One observer per host network namespace: a second would attach the same
//! programs and report every packet twice. The lock is `flock` on a file in
//! a root-only directory of the host (`DIR`, a hostPath in the DaemonSet),
//! named after the network namespace; the kernel releases it when the
//! holder dies, SIGKILL included. An abstract unix socket does the same,
//! but any pod on the host network can bind its name first, and every
//! restart of the observer then exits "already running": it is only the
//! fallback where `DIR` cannot be written (a read-only root filesystem
//! without the mount), with a warning that says how to do better.
use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::{self, ErrorKind},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use anyhow::{Result, anyhow, bail};
use tracing::warn;

/// Where the lock files live (created 0700 when missing).
pub const DIR: &str = "/run/imds-observer";
/// The fallback's abstract socket name.
const ABSTRACT: &[u8] = b"imds-observer.lock";

/// What holds the lock while it lives.
pub enum Lock {
    File(File),
    Socket(std::os::unix::net::UnixListener),
}

/// Held while the returned lock lives.
pub fn take() -> Result<Lock> {
    match take_in(Path::new(DIR)) {
        Ok(f) => Ok(Lock::File(f)),
        Err(Failed::Held(path)) => held(&path),
        Err(Failed::Unusable(e)) => {
            warn!(
                "the instance lock's directory {DIR} cannot be used ({e}); falling back to an abstract socket, which another process on the host network can take first: mount {DIR} from the host (docs/deploy.md)"
            );
            take_abstract(ABSTRACT).map(Lock::Socket)
        }
    }
}

#[derive(Debug)]
enum Failed {
    /// Another observer holds it (the lock file's path).
    Held(String),
    /// The directory or file cannot be made or opened.
    Unusable(io::Error),
}

fn held<T>(what: &str) -> Result<T> {
    bail!(
        "another imds-observer is already running on this host (network namespace; lock {what}); stop it, or pass --alongside to run both"
    )
}

fn take_in(dir: &Path) -> Result<File, Failed> {
    let netns = std::fs::metadata("/proc/self/ns/net").map_err(Failed::Unusable)?.ino();
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(Failed::Unusable)?;
    let path = dir.join(format!("net-{netns}.lock"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(Failed::Unusable)?;
    // SAFETY: a valid fd, owned by `file` for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == ErrorKind::WouldBlock {
            Failed::Held(path.display().to_string())
        } else {
            Failed::Unusable(e)
        });
    }
    Ok(file)
}

fn take_abstract(name: &[u8]) -> Result<std::os::unix::net::UnixListener> {
    use std::os::{linux::net::SocketAddrExt, unix::net::SocketAddr};
    let addr = SocketAddr::from_abstract_name(name)?;
    std::os::unix::net::UnixListener::bind_addr(&addr).or_else(|e| {
        if e.kind() == ErrorKind::AddrInUse {
            held(&format!("@{}", String::from_utf8_lossy(name)))
        } else {
            Err(anyhow!("taking the instance lock: {e}"))
        }
    })
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
        assert!(matches!(take_in(&dir), Err(Failed::Held(p)) if p.contains("net-")));
        drop(first);
        let again = take_in(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn where_no_directory_can_be_made_an_abstract_socket_stands_in() {
        assert!(matches!(take_in(Path::new("/proc/imds-observer")), Err(Failed::Unusable(_))));
        let name = format!("imds-observer-test-{}.lock", std::process::id());
        let first = take_abstract(name.as_bytes()).unwrap();
        let err = take_abstract(name.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("already running") && err.contains("--alongside"), "{err}");
        drop(first);
        assert!(take_abstract(name.as_bytes()).is_ok());
    }

    #[test]
    fn a_symlink_in_place_of_the_lock_is_refused() {
        let dir = std::env::temp_dir().join(format!("imds-lock-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let target = dir.join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.join(format!("net-{netns}.lock"))).unwrap();
        assert!(matches!(take_in(&dir), Err(Failed::Unusable(_))));
        assert!(!target.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
