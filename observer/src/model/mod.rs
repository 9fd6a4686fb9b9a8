//! The leaf of the house: the data every layer shares, and no I/O. The
//! typed [`Event`] the pipeline produces and every sink consumes, the
//! [`Container`] behind it, and the small value types they are made of.
//! Nothing here imports from another module of the crate.
pub mod bounded;
pub mod budget;
pub mod container;
mod endpoint;
mod event;
mod node;
pub mod sdk;
mod tcp_flags;

pub use container::{Container, NETNS_KEY, Nomad};
pub use endpoint::{DEFAULT_PORT, Endpoint};
pub use event::{
    DroppedLines, Event, HostSide, Kind, Line, MAX_LINE, Outcome, Proto, Quantiles, Summary,
    read_line, rfc3339,
};
pub use node::{NodeInfo, Provisioner};
pub use sdk::Sdk;
pub use tcp_flags::TcpFlags;
