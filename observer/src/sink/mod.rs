//! Where what `run` decides goes. The loop in run.rs owns the Diagnoser and
//! hands every [`Sink`] each event with the findings it changed, the
//! exchanges and summaries it decided, and time: stdout (`json`, written by
//! `output`'s thread so that a stalled stdout never blocks the loop), the
//! metrics the HTTP server shows (`metrics` + `http`), Kubernetes Events on
//! pods (`pod_events`). `report` renders findings for a person.
use std::{io, time::SystemTime};

use crate::{
    diagnose::{Diagnoser, Finding},
    model::Event,
};

pub mod http;
pub mod json;
pub mod metrics;
pub mod names;
pub mod output;
#[cfg(feature = "kubernetes")]
pub mod pod_events;
pub mod report;

/// One output of `run`. What only one sink needs goes to its constructor.
/// An error stops the run; a closed stdout (`| head`) stops it quietly.
pub trait Sink {
    /// An event the Diagnoser has observed, with the findings it
    /// established or changed (worst first).
    fn event(&mut self, _diag: &Diagnoser, _ev: &Event, _findings: &[Finding]) -> io::Result<()> {
        Ok(())
    }
    /// Exchanges and summaries the Diagnoser decided.
    fn records(&mut self, _records: &[Event]) -> io::Result<()> {
        Ok(())
    }
    /// Once a second, with the findings time decided.
    fn tick(
        &mut self,
        _diag: &Diagnoser,
        _now: SystemTime,
        _findings: &[Finding],
    ) -> io::Result<()> {
        Ok(())
    }
    /// After each drain of the ring, and at the end.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The run is over: say what it did, once.
    fn finish(&mut self) {}
}
