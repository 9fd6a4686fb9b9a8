//! imds-observer: an eBPF observer of cloud-metadata traffic. The binary
//! (main.rs) is the command line over these modules; the benches use them
//! too. Layers, each importing only from those above it in this list:
//! model (shared types, no I/O) → sys (OS plumbing) → capture, identity →
//! correlate → pipeline → diagnose → sink, tui → run, cli.
pub mod capture;
pub mod cli;
pub mod correlate;
pub mod diagnose;
#[cfg(test)]
mod docs;
pub mod identity;
pub mod model;
pub mod pipeline;
pub mod run;
pub mod sink;
pub mod sys;
pub mod tui;
