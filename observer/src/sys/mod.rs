//! OS plumbing: the kernel interfaces that capture, identity and the
//! pipeline lean on (netlink, clocks, socket options), behind typed calls.
//! No policy here, only what the kernel says. This layer imports from no
//! other module of the observer but the model.
pub mod caps;
pub mod clock;
pub mod instance_lock;
pub mod memory;
pub mod netlink;
pub mod socket;
