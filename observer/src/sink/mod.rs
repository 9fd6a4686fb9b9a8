//! Where events go.
pub mod http;
pub mod json;
pub mod metrics;
#[cfg(feature = "kubernetes")]
pub mod pod_events;
pub mod report;
