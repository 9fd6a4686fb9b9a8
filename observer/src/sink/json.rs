//! JSON lines on stdout: one object per event. `run`'s lines go through
//! [`Output`](super::output::Output): one buffer per drain of the ring, a
//! writer thread, and lines dropped (and said so) rather than the capture
//! loop waiting on a stalled stdout. `report --json` writes [`JsonLines`].
use std::{
    io::{self, BufWriter, Write},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tracing::{info, warn};

use super::{
    Sink,
    output::{DropCounts, Dropped, LineKind, Output},
};
use crate::{
    diagnose::{Diagnoser, Finding},
    model::{DroppedLines, Event, Kind},
};

/// How long the end of the run waits for a stalled stdout to take what is
/// queued.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// `run`'s stdout: findings, exchanges and summaries; packets only at
/// `--events packets` (lost and suppressed records at every level).
pub struct Stdout {
    out: Output,
    packets: bool,
    /// The node of the events seen, for the `output_dropped` line.
    node: std::sync::Arc<str>,
}

impl Stdout {
    pub fn new(out: Output, packets: bool) -> Self {
        Self { out, packets, node: "".into() }
    }

    /// Lines dropped since the start, by kind (for the metric).
    pub fn dropped(&self) -> Arc<Dropped> {
        self.out.dropped()
    }

    fn put<T: Serialize>(&mut self, kind: LineKind, item: &T) -> io::Result<()> {
        self.out
            .line(kind, |buf| {
                serde_json::to_writer(&mut *buf, item)?;
                buf.push(b'\n');
                Ok(())
            })
            .map(drop)
    }

    fn put_event(&mut self, ev: &Event) -> io::Result<()> {
        if self.node.is_empty() {
            self.node.clone_from(&ev.node);
        }
        self.put(LineKind::of(ev), ev)
    }

    /// The `output_dropped` line, when lines were dropped and the writer
    /// has caught up (or at once with `now`).
    fn say_dropped(&mut self, now: bool) -> io::Result<()> {
        let Some(d) = self.out.take_dropped(now) else { return Ok(()) };
        warn!(
            lines = d.total(),
            "stdout did not take lines: dropped (an output_dropped line says which)"
        );
        let mut ev = Event::new(Kind::OutputDropped, SystemTime::now(), self.node.clone());
        ev.count = Some(d.total());
        ev.dropped = Some(Box::new(dropped_lines(&d)));
        // Findings' room: it fits once the writer caught up.
        self.put(LineKind::Finding, &ev)
    }
}

fn dropped_lines(d: &DropCounts) -> DroppedLines {
    DroppedLines {
        packet: d.get(LineKind::Packet),
        exchange: d.get(LineKind::Exchange),
        summary: d.get(LineKind::Summary),
        other: d.get(LineKind::Other),
        finding: d.get(LineKind::Finding),
    }
}

impl Sink for Stdout {
    fn event(&mut self, _: &Diagnoser, ev: &Event, findings: &[Finding]) -> io::Result<()> {
        if self.packets || !ev.is_packet() {
            self.put_event(ev)?;
        } else if self.node.is_empty() {
            self.node.clone_from(&ev.node);
        }
        findings.iter().try_for_each(|f| self.put(LineKind::Finding, f))
    }
    fn records(&mut self, records: &[Event]) -> io::Result<()> {
        records.iter().try_for_each(|ev| self.put_event(ev))
    }
    fn tick(&mut self, _: &Diagnoser, _: SystemTime, findings: &[Finding]) -> io::Result<()> {
        findings.iter().try_for_each(|f| self.put(LineKind::Finding, f))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.say_dropped(false)?;
        self.out.flush()
    }
    fn finish(&mut self) {
        let _ = self.say_dropped(true);
        let complete = self.out.finish(FINISH_WAIT);
        if !complete {
            warn!(
                bytes = self.out.queued(),
                "stdout did not take the last lines within {FINISH_WAIT:?}: they are lost"
            );
        }
        info!(lines = self.out.written, "done");
    }
}

pub struct JsonLines<W: Write> {
    out: BufWriter<W>,
    pub written: u64,
}

impl<W: Write> JsonLines<W> {
    pub fn new(w: W) -> Self {
        Self { out: BufWriter::new(w), written: 0 }
    }

    pub fn write<T: Serialize>(&mut self, item: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, item)?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, Kind};

    #[test]
    fn one_object_per_line_with_type_ts_node() {
        let mut buf = Vec::new();
        {
            let mut s = JsonLines::new(&mut buf);
            let mut ev = Event::new(
                Kind::Request,
                humantime::parse_rfc3339("2026-11-26T20:00:00.000000Z").unwrap(),
                "node-a".into(),
            );
            ev.ttl = Some(64);
            s.write(&ev).unwrap();
            s.write(&Event::new(
                Kind::LostEvents,
                humantime::parse_rfc3339("2026-11-26T20:00:01.000000Z").unwrap(),
                "node-a".into(),
            ))
            .unwrap();
            s.flush().unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "request");
        assert_eq!(lines[0]["node"], "node-a");
        assert_eq!(lines[0]["ttl"], 64);
        assert!(lines[0].get("flow").is_none(), "absent fields are omitted");
        assert_eq!(lines[1]["type"], "lost_events");
    }
}
