//! Where events go.
pub mod json;
