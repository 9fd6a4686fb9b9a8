//! One observer per host network namespace: a second would attach the same
//! programs and report every packet twice. The lock is `flock` on a file in
//! a root-only directory of the host (`DIR`, a hostPath in the DaemonSet),
//! named after the network namespace; the kernel releases it when the
//! holder dies, SIGKILL included.
//!
//! An observer that is not root (the DaemonSet runs as uid 65534) cannot
//! create that file: the kubelet makes the hostPath directory root-owned,
//! 0755. It locks the directory itself instead (flock needs only a
//! read-only descriptor): one lock per directory, which is one per node
//! where, as in the DaemonSet, every observer using it is in the node's
//! network namespace. Root observers keep the file (their lock is per
//! network namespace; the two do not see each other's). Any process of
//! the node's own mount namespace can open that directory and hold its
//! lock; no pod can, unless it mounts the host's directory.
//!
//! An abstract unix socket does the same, but any pod on the host network
//! can bind its name first, and every restart of the observer then exits
//! "already running": it is only the fallback where `DIR` cannot be used
//! at all (a read-only root filesystem without the mount, a non-root user
//! where `DIR` is missing or unreadable), with a warning that says how to do
//! better.
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
    /// The lock file, or the directory standing in for it.
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
    take_in_with(dir, |path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    })
}

/// `take_in`, with the lock file opened by `open_file` (tests stand in a
/// user who may not create it).
fn take_in_with(
    dir: &Path,
    open_file: impl FnOnce(&Path) -> io::Result<File>,
) -> Result<File, Failed> {
    let netns = std::fs::metadata("/proc/self/ns/net").map_err(Failed::Unusable)?.ino();
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(Failed::Unusable)?;
    let path = dir.join(format!("net-{netns}.lock"));
    let (file, locked) = match open_file(&path) {
        Ok(file) => (file, path),
        Err(e) if locks_the_directory(&e) => {
            let dir_file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(dir)
                .map_err(|_| Failed::Unusable(e))?;
            (dir_file, dir.to_path_buf())
        }
        Err(e) => return Err(Failed::Unusable(e)),
    };
    // SAFETY: a valid fd, owned by `file` for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == ErrorKind::WouldBlock {
            Failed::Held(locked.display().to_string())
        } else {
            Failed::Unusable(e)
        });
    }
    Ok(file)
}

/// Whether the lock file, failing with `e`, is stood in for by its
/// directory: there, but not writable by this user (a non-root observer in
/// the kubelet's root-owned 0755 hostPath) or read-only. Not for a symlink
/// in the file's place (ELOOP) or anything else.
fn locks_the_directory(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS))
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

    fn test_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("imds-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_user_who_may_not_create_the_lock_file_locks_its_directory() {
        let dir = test_dir("nonroot");
        let denied =
            |_: &Path| -> io::Result<File> { Err(io::Error::from_raw_os_error(libc::EACCES)) };
        let first = take_in_with(&dir, denied).unwrap();
        let held = std::fs::read_link(format!("/proc/self/fd/{}", first.as_raw_fd())).unwrap();
        assert_eq!(held, dir, "the directory itself is locked");
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "nothing written in it");
        // A second such observer is refused, naming the directory.
        let second = take_in_with(&dir, denied);
        assert!(
            matches!(&second, Err(Failed::Held(p)) if p == &dir.display().to_string()),
            "{second:?}"
        );
        drop(first);
        let again = take_in_with(&dir, denied).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_directory_that_denies_writing_stands_in_for_the_file() {
        for errno in [libc::EACCES, libc::EPERM, libc::EROFS] {
            assert!(locks_the_directory(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        for errno in [libc::ELOOP, libc::ENOENT, libc::ENOSPC, libc::EISDIR] {
            assert!(!locks_the_directory(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        // A directory that cannot be opened either (here a symlink to one,
        // which is not followed): unusable, as before.
        let denied =
            |_: &Path| -> io::Result<File> { Err(io::Error::from_raw_os_error(libc::EACCES)) };
        let dir = test_dir("linked");
        let link = dir.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(
            matches!(take_in_with(&link, denied), Err(Failed::Unusable(e)) if e.raw_os_error() == Some(libc::EACCES))
        );
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The real refusal where the kernel's permission checks apply (not
    /// for root, whom a 0555 directory does not stop; the lab runs the
    /// image as uid 65534 in the kubelet's 0755 root directory).
    #[test]
    fn in_a_read_only_directory_the_directory_is_locked() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return;
        }
        let dir = test_dir("readonly");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o555))
            .unwrap();
        let first = take_in(&dir).unwrap();
        assert!(matches!(take_in(&dir), Err(Failed::Held(p)) if p == dir.display().to_string()));
        drop(first);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
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
