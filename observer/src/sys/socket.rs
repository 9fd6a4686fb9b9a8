//! What the kernel says about this process's sockets.

/// This process's network namespace cookie, as `bpf_get_netns_cookie`
/// reports it for sockets (SO_NETNS_COOKIE, Linux 5.14+; None before).
pub fn own_netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a throwaway socket and a u64 out-parameter of the right size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        libc::close(fd);
        (r == 0).then_some(cookie)
    }
}
