//! OS plumbing the layers above share: clocks and socket options. No
//! policy here, only what the kernel says.
pub mod clock;
pub mod socket;
