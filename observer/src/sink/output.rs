//! `run`'s stdout without blocking the capture loop. Lines are serialized
//! into one buffer per drain of the ring and handed to a writer thread
//! (one `write` per buffer) through a queue bounded by bytes. When stdout
//! stalls (the node's log driver, a reader that stopped), the queue fills
//! and lines are dropped and counted by kind instead of the loop waiting:
//! ring reading, diagnosis, `/metrics` and `/healthz` go on. Once the
//! writer has caught up, one `output_dropped` line says what was dropped.
//!
//! The budget ([`QUEUE_BYTES`], 4 MiB) is out of the half of the
//! DaemonSet's 256 MiB that model/budget.rs leaves to everything but the
//! tables; it holds every byte batched or queued and not yet written
//! (a buffer being written included). Lines are admitted by kind, in tiers,
//! so that findings are the last to go ([`limit`]):
//! - packets, exchanges, summaries: up to 3 MiB queued;
//! - the node's own records (`lost_events`, `suppressed`, `node`,
//!   `output_dropped`): up to 3.5 MiB;
//! - findings: up to the whole 4 MiB (a finding line is a few KiB: the
//!   last 1 MiB holds hundreds of them).
//!
//! A write error ends the writer; the next [`Output::flush`] returns it (a
//! closed stdout, `| head`, is `BrokenPipe`: `run` then ends quietly).
use std::{
    io::{self, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::model::{Event, Kind};

/// Bytes batched or queued for stdout and not yet written, at most.
pub const QUEUE_BYTES: usize = 4 << 20;
/// The last bytes of the queue: only findings and the node's own records
/// may use them (half of it findings only).
pub const RESERVE_BYTES: usize = 1 << 20;
/// Once the queue holds no more than this, the writer has caught up: the
/// `output_dropped` line goes out.
const CAUGHT_UP_DIVISOR: usize = 4;
/// Written buffers handed back for reuse (no allocation per drain), when
/// not grown past this; at most `SPARES` of them wait.
const SPARE_CAPACITY: usize = 256 << 10;
const SPARES: usize = 4;

/// What a line is, for the order lines are dropped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    Packet,
    Exchange,
    Summary,
    /// `lost_events`, `suppressed`, `node`, `output_dropped`.
    Other,
    Finding,
}

impl LineKind {
    pub const ALL: [LineKind; 5] = [
        LineKind::Packet,
        LineKind::Exchange,
        LineKind::Summary,
        LineKind::Other,
        LineKind::Finding,
    ];

    /// The metric's `kind` label and the `dropped` field's key.
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Packet => "packet",
            LineKind::Exchange => "exchange",
            LineKind::Summary => "summary",
            LineKind::Other => "other",
            LineKind::Finding => "finding",
        }
    }

    pub fn of(ev: &Event) -> LineKind {
        match ev.kind {
            Kind::Exchange => LineKind::Exchange,
            Kind::Summary => LineKind::Summary,
            _ if ev.is_packet() => LineKind::Packet,
            _ => LineKind::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Most bytes queued (this line included) at which a line of `kind` is
/// still admitted, out of `budget` with `reserve` kept back.
pub fn limit(kind: LineKind, budget: usize, reserve: usize) -> usize {
    match kind {
        LineKind::Packet | LineKind::Exchange | LineKind::Summary => budget - reserve,
        LineKind::Other => budget - reserve / 2,
        LineKind::Finding => budget,
    }
}

/// Lines dropped since the start, by kind (`LineKind::ALL` order): what
/// `imds_observer_output_dropped_lines_total{kind}` shows.
#[derive(Debug, Default)]
pub struct Dropped([AtomicU64; 5]);

impl Dropped {
    pub fn get(&self, kind: LineKind) -> u64 {
        self.0[kind.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, kind: LineKind, n: u64) {
        self.0[kind.index()].fetch_add(n, Ordering::Relaxed);
    }
}

/// Lines dropped since the last `output_dropped` line, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts(pub [u64; 5]);

impl DropCounts {
    pub fn get(&self, kind: LineKind) -> u64 {
        self.0[kind.index()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

struct Shared {
    /// Bytes handed to the writer and not yet written.
    queued: AtomicUsize,
    /// Why the writer stopped.
    failed: Mutex<Option<io::Error>>,
}

/// The loop's side of the queue: [`Output::line`] for each line, then
/// [`Output::flush`] once per drain.
pub struct Output {
    batch: Vec<u8>,
    budget: usize,
    reserve: usize,
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    spares: mpsc::Receiver<Vec<u8>>,
    writer: Option<thread::JoinHandle<()>>,
    pending: DropCounts,
    dropped: Arc<Dropped>,
    /// Lines admitted.
    pub written: u64,
}

impl Output {
    /// A writer thread for `w` with the stated budget.
    pub fn spawn(w: impl Write + Send + 'static) -> io::Result<Output> {
        Self::with_budget(w, QUEUE_BYTES, RESERVE_BYTES)
    }

    pub fn with_budget(
        w: impl Write + Send + 'static,
        budget: usize,
        reserve: usize,
    ) -> io::Result<Output> {
        assert!(reserve < budget);
        let shared = Arc::new(Shared { queued: AtomicUsize::new(0), failed: Mutex::new(None) });
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let (spare_tx, spares) = mpsc::sync_channel(SPARES);
        let s = shared.clone();
        let writer = thread::Builder::new()
            .name("stdout".into())
            .spawn(move || write_loop(w, &rx, &spare_tx, &s))?;
        Ok(Output {
            batch: Vec::new(),
            budget,
            reserve,
            shared,
            tx: Some(tx),
            spares,
            writer: Some(writer),
            pending: DropCounts::default(),
            dropped: Arc::default(),
            written: 0,
        })
    }

    /// Lines dropped since the start, for the metric.
    pub fn dropped(&self) -> Arc<Dropped> {
        self.dropped.clone()
    }

    /// Bytes batched or queued, not yet written.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire) + self.batch.len()
    }

    /// Append one line (`put` writes it, newline included) to this drain's
    /// buffer if the queue has room for its kind; else drop and count it.
    /// True when kept.
    pub fn line(
        &mut self,
        kind: LineKind,
        put: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<bool> {
        let start = self.batch.len();
        if let Err(e) = put(&mut self.batch) {
            self.batch.truncate(start);
            return Err(e);
        }
        let queued = self.shared.queued.load(Ordering::Acquire);
        if queued + self.batch.len() <= limit(kind, self.budget, self.reserve) {
            self.written += 1;
            return Ok(true);
        }
        self.batch.truncate(start);
        self.pending.0[kind.index()] += 1;
        self.dropped.add(kind, 1);
        Ok(false)
    }

    /// What was dropped since the last call, once the writer has caught up
    /// (or at once with `now`); None when nothing was.
    pub fn take_dropped(&mut self, now: bool) -> Option<DropCounts> {
        if self.pending.total() == 0 {
            return None;
        }
        if !now && self.queued() > self.budget / CAUGHT_UP_DIVISOR {
            return None;
        }
        Some(std::mem::take(&mut self.pending))
    }

    /// Hand this drain's buffer to the writer (nothing when empty); the
    /// writer's error if it stopped.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(e) = self.shared.failed.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let Some(tx) = &self.tx else { return Err(io::ErrorKind::BrokenPipe.into()) };
        let next = self.spares.try_recv().unwrap_or_default();
        let batch = std::mem::replace(&mut self.batch, next);
        self.shared.queued.fetch_add(batch.len(), Ordering::AcqRel);
        tx.send(batch).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Flush, then wait up to `wait` for the writer to write everything.
    /// False when it did not (stdout still stalled): what is left is lost.
    pub fn finish(&mut self, wait: Duration) -> bool {
        let _ = self.flush();
        drop(self.tx.take());
        let t0 = Instant::now();
        while self.shared.queued.load(Ordering::Acquire) > 0
            && self.shared.failed.lock().unwrap_or_else(|e| e.into_inner()).is_none()
        {
            if t0.elapsed() >= wait {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        true
    }
}

fn write_loop(
    mut w: impl Write,
    rx: &mpsc::Receiver<Vec<u8>>,
    spares: &mpsc::SyncSender<Vec<u8>>,
    shared: &Shared,
) {
    while let Ok(mut buf) = rx.recv() {
        let n = buf.len();
        let r = w.write_all(&buf).and_then(|()| w.flush());
        // Counted until written: a buffer stuck in write(2) holds its room.
        shared.queued.fetch_sub(n, Ordering::AcqRel);
        if let Err(e) = r {
            *shared.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            return;
        }
        buf.clear();
        if buf.capacity() <= SPARE_CAPACITY {
            let _ = spares.try_send(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, Sender};

    use super::*;

    /// A stdout that writes only when told to: each `go` lets one write
    /// through; what it wrote comes back on `written`.
    struct Gated {
        go: Receiver<()>,
        written: Sender<Vec<u8>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.go.recv().map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            let _ = self.written.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gated(budget: usize, reserve: usize) -> (Output, Sender<()>, Receiver<Vec<u8>>) {
        let (go_tx, go) = mpsc::channel();
        let (written, written_rx) = mpsc::channel();
        let out = Output::with_budget(Gated { go, written }, budget, reserve).unwrap();
        (out, go_tx, written_rx)
    }

    /// A line of `n` bytes (newline included) starting with `tag`.
    fn put(out: &mut Output, kind: LineKind, tag: &str, n: usize) -> bool {
        out.line(kind, |b| {
            b.extend_from_slice(tag.as_bytes());
            b.resize(b.len() + n - tag.len() - 1, b'.');
            b.push(b'\n');
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn tiers_drop_bulk_lines_first_and_findings_last() {
        let (budget, reserve) = (4 << 20, 1 << 20);
        for kind in [LineKind::Packet, LineKind::Exchange, LineKind::Summary] {
            assert_eq!(limit(kind, budget, reserve), 3 << 20);
        }
        assert_eq!(limit(LineKind::Other, budget, reserve), (7 << 20) / 2);
        assert_eq!(limit(LineKind::Finding, budget, reserve), budget);
    }

    #[test]
    fn a_stalled_writer_drops_and_counts_by_kind_findings_last() {
        // 1000 bytes: bulk lines up to 600, others 800, findings 1000.
        let (mut out, go, written) = gated(1000, 400);
        // Stdout is stalled: the first buffer is handed over and stays.
        for _ in 0..5 {
            assert!(put(&mut out, LineKind::Exchange, "x", 100));
        }
        out.flush().unwrap();
        assert_eq!(out.queued(), 500);
        assert!(put(&mut out, LineKind::Summary, "s", 100)); // 600
        assert!(!put(&mut out, LineKind::Exchange, "x", 100), "past 600: bulk dropped");
        assert!(!put(&mut out, LineKind::Packet, "p", 100));
        assert!(put(&mut out, LineKind::Other, "o", 100)); // 700
        assert!(put(&mut out, LineKind::Other, "o", 100)); // 800
        assert!(!put(&mut out, LineKind::Other, "o", 100), "past 800: others dropped");
        assert!(put(&mut out, LineKind::Finding, "f", 100)); // 900
        assert!(put(&mut out, LineKind::Finding, "f", 100)); // 1000
        assert!(!put(&mut out, LineKind::Finding, "f", 1), "past the budget: findings dropped");
        assert!(!put(&mut out, LineKind::Exchange, "x", 1));
        out.flush().unwrap();
        assert_eq!(out.queued(), 1000);
        let d = out.dropped();
        let by_kind: Vec<u64> = LineKind::ALL.iter().map(|&k| d.get(k)).collect();
        // packet, exchange, summary, other, finding
        assert_eq!(by_kind, [1, 2, 0, 1, 1]);
        // Not caught up: no notice yet.
        assert_eq!(out.take_dropped(false), None);

        // Stdout moves again: both buffers are written, in order, each in
        // one write.
        go.send(()).unwrap();
        go.send(()).unwrap();
        let first = written.recv().unwrap();
        let second = written.recv().unwrap();
        assert_eq!(first.len(), 500);
        assert_eq!(second.len(), 500);
        let tags: String =
            second.split(|&b| b == b'\n').filter_map(|l| l.first()).map(|&b| b as char).collect();
        assert_eq!(tags, "sooff");
        while out.queued() > 0 {
            thread::sleep(Duration::from_millis(1));
        }
        let notice = out.take_dropped(false).expect("caught up: the drops are said");
        assert_eq!(notice.0, [1, 2, 0, 1, 1]);
        assert_eq!(notice.total(), 5);
        assert_eq!(out.take_dropped(false), None, "said once");
        // The metric's counts stay.
        assert_eq!(d.get(LineKind::Exchange), 2);
        assert_eq!(out.written, 10);
        drop(go);
    }

    #[test]
    fn nothing_is_dropped_while_the_writer_keeps_up() {
        let (mut out, go, written) = gated(1000, 400);
        for round in 0..50 {
            for _ in 0..5 {
                assert!(put(&mut out, LineKind::Packet, "p", 100), "round {round}");
            }
            out.flush().unwrap();
            go.send(()).unwrap();
            assert_eq!(written.recv().unwrap().len(), 500);
            while out.queued() > 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(out.take_dropped(true), None);
        assert!(out.finish(Duration::from_secs(1)));
    }

    #[test]
    fn a_closed_stdout_ends_the_run_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output::with_budget(Closed, 1000, 400).unwrap();
        assert!(put(&mut out, LineKind::Finding, "f", 10));
        out.flush().unwrap();
        let t0 = Instant::now();
        let e = loop {
            assert!(put(&mut out, LineKind::Finding, "f", 10));
            match out.flush() {
                Err(e) => break e,
                Ok(()) => thread::sleep(Duration::from_millis(1)),
            }
            assert!(t0.elapsed() < Duration::from_secs(5));
        };
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn finish_gives_up_on_a_stalled_stdout() {
        let (mut out, go, _written) = gated(1000, 400);
        assert!(put(&mut out, LineKind::Finding, "f", 10));
        let t0 = Instant::now();
        assert!(!out.finish(Duration::from_millis(50)));
        assert!(t0.elapsed() < Duration::from_secs(1));
        drop(go);
    }
}
