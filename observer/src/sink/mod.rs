//! Where events go.
pub mod json;
pub mod report;
