//! JSON lines on stdout: one object per event, flushed per batch so that
//! `kubectl logs -f` and pipes see events as they happen.
use std::{
    io::{self, BufWriter, Write},
    time::SystemTime,
};

use serde::Serialize;
use tracing::info;

use super::Sink;
use crate::{
    diagnose::{Diagnoser, Finding},
    model::Event,
};

/// `run`'s stdout: findings, exchanges and summaries; packets only at
/// `--events packets` (lost and suppressed records at every level).
pub struct Stdout<W: Write> {
    lines: JsonLines<W>,
    packets: bool,
}

impl<W: Write> Stdout<W> {
    pub fn new(w: W, packets: bool) -> Self {
        Self { lines: JsonLines::new(w), packets }
    }

    fn write_all<T: Serialize>(&mut self, items: &[T]) -> io::Result<()> {
        items.iter().try_for_each(|it| self.lines.write(it))
    }
}

impl<W: Write> Sink for Stdout<W> {
    fn event(&mut self, _: &Diagnoser, ev: &Event, findings: &[Finding]) -> io::Result<()> {
        if self.packets || !ev.is_packet() {
            self.lines.write(ev)?;
        }
        self.write_all(findings)
    }
    fn records(&mut self, records: &[Event]) -> io::Result<()> {
        self.write_all(records)
    }
    fn tick(&mut self, _: &Diagnoser, _: SystemTime, findings: &[Finding]) -> io::Result<()> {
        self.write_all(findings)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.lines.flush()
    }
    fn finish(&mut self) {
        info!(lines = self.lines.written, "done");
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
