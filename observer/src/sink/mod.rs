//! Where events go.
pub mod http;
pub mod json;
pub mod metrics;
pub mod report;
