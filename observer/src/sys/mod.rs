//! OS plumbing: the kernel interfaces that capture and identity both lean
//! on, behind typed calls. This layer imports from no other module of the
//! observer; the layers above import from it, never the other way round.
pub mod netlink;
