//! The allocator: mimalloc (main.rs), in place of musl's, whose mapping
//! and unmapping as records come and go cost a third of the agent's CPU.
//! mimalloc keeps freed pages for reuse: start-up's peak (the kernel's BTF,
//! /proc/kallsyms, the programs' object) would stay resident, and a node's
//! churn of containers would show as growth. `return_freed` after each
//! start-up step and once a second gives them back.

/// Give the pages freed so far back to the kernel. Harmless under another
/// allocator (tests): mimalloc then holds nothing to give back.
pub fn return_freed() {
    // SAFETY: no arguments to get wrong; mimalloc frees only what is free.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Keep transparent huge pages away from this process: with THP "always",
/// the first touch of each region mimalloc reuses after `return_freed`
/// faulted in and zeroed 2 MiB, a tenth of the agent's CPU under load,
/// for an agent whose heap is a few MiB.
pub fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        tracing::debug!("PR_SET_THP_DISABLE: {}", std::io::Error::last_os_error());
    }
}
