//! Where the TUI's events come from: the live capture, or a JSON event stream
//! (stdin, or a file followed like `tail -f`). Streams are read and parsed on
//! a thread of their own, so a slow pipe or a big file never stalls the
//! screen, and a paused screen pushes back on the reader instead of
//! buffering.
use std::{
    io::{self, BufRead, BufReader, Read},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;

pub use super::app::Feed;
use crate::{
    cli::TuiArgs,
    model::{Event, Line, MAX_LINE},
    run,
};

/// How often a followed file is polled for appended lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Lines parsed ahead of the screen.
const QUEUE: usize = 4096;

pub struct Source {
    rx: Rx,
    /// What the header says the screen shows ("live on <node>", "from <file>").
    pub label: String,
    pub live: bool,
    ended: bool,
}

enum Rx {
    Live(mpsc::Receiver<Event>),
    Lines(mpsc::Receiver<Feed>),
}

impl Source {
    /// The live capture, or `--from`. Fails before the terminal is touched,
    /// so that preflight errors print as usual.
    pub fn open(args: &TuiArgs) -> Result<Source> {
        match args.from.as_deref() {
            Some("-") => Ok(Source::lines(spawn_reader(io::stdin(), false), "from stdin")),
            Some(path) => {
                let f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
                // Reading a directory would fail only later, on the reader's
                // thread, behind the screen.
                if f.metadata().is_ok_and(|m| m.is_dir()) {
                    bail!("reading {path}: it is a directory");
                }
                Ok(Source::lines(spawn_reader(f, true), &format!("from {path}")))
            }
            None => {
                let rx = run::spawn_live(args.capture.clone())?;
                let label = format!("live on {}", run::node_name(args.capture.node_name.clone()));
                Ok(Source { rx: Rx::Live(rx), label, live: true, ended: false })
            }
        }
    }

    pub fn lines(rx: mpsc::Receiver<Feed>, label: &str) -> Source {
        Source { rx: Rx::Lines(rx), label: label.into(), live: false, ended: false }
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next item; `End` once when the stream closes (then never again).
    pub async fn recv(&mut self) -> Feed {
        let got = match &mut self.rx {
            Rx::Live(rx) => rx.recv().await.map(|e| Feed::Event(Box::new(e))),
            Rx::Lines(rx) => rx.recv().await,
        };
        self.close_on(got)
    }

    /// An item already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Feed> {
        if self.ended {
            return None;
        }
        let got = match &mut self.rx {
            Rx::Live(rx) => match rx.try_recv() {
                Ok(e) => Some(Feed::Event(Box::new(e))),
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            },
            Rx::Lines(rx) => match rx.try_recv() {
                Ok(f) => Some(f),
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            },
        };
        Some(self.close_on(got))
    }

    fn close_on(&mut self, got: Option<Feed>) -> Feed {
        match got {
            Some(Feed::End(why)) => {
                self.ended = true;
                Feed::End(why)
            }
            Some(f) => f,
            None => {
                self.ended = true;
                Feed::End(if self.live { "the capture stopped" } else { "end of stream" }.into())
            }
        }
    }
}

/// What one line of a stream is; `None` for a blank line.
pub fn classify(line: &[u8]) -> Option<Feed> {
    Some(match Line::parse(line)? {
        Line::Event(ev) => Feed::Event(ev),
        Line::Finding => Feed::Finding,
        Line::BadTime | Line::NotEvent | Line::NotJson => Feed::Skipped,
    })
}

/// Read JSON lines on a thread. With `follow` (a file), end of file means
/// "wait for more"; without (stdin), it ends the stream. The thread stops
/// when the receiver is dropped.
pub fn spawn_reader<R: Read + Send + 'static>(r: R, follow: bool) -> mpsc::Receiver<Feed> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("tui-reader".into())
        .spawn(move || read_lines(r, follow, &tx))
        .expect("spawning the reader thread");
    rx
}

fn read_lines<R: Read>(r: R, follow: bool, tx: &mpsc::Sender<Feed>) {
    let send = |f: Feed| tx.blocking_send(f).is_ok();
    let mut r = BufReader::with_capacity(1 << 16, r);
    let mut line = Vec::new();
    // Inside a line longer than MAX_LINE: dropped up to its newline.
    let mut skipping = false;
    loop {
        let room = (MAX_LINE + 1).saturating_sub(line.len()).max(1) as u64;
        match (&mut r).take(room).read_until(b'\n', &mut line) {
            // Skipping with nothing more yet: wait (a file) or end (stdin).
            Ok(n) if skipping && n > 0 => {
                if line.ends_with(b"\n") {
                    skipping = false;
                }
                line.clear();
            }
            Ok(0) if follow => {
                // A writer may be half-way through a line; a line that is
                // already a whole JSON object is taken without its newline.
                if !line.is_empty()
                    && serde_json::from_slice::<serde::de::IgnoredAny>(&line).is_ok()
                {
                    if let Some(f) = classify(&line) {
                        if !send(f) {
                            return;
                        }
                    }
                    line.clear();
                }
                if tx.is_closed() {
                    return;
                }
                std::thread::sleep(FOLLOW_POLL);
            }
            Ok(0) => {
                if let Some(f) = classify(&line) {
                    send(f);
                }
                send(Feed::End("end of stream".into()));
                return;
            }
            Ok(_) if line.ends_with(b"\n") => {
                if let Some(f) = classify(&line) {
                    if !send(f) {
                        return;
                    }
                }
                line.clear();
            }
            Ok(_) if line.len() > MAX_LINE => {
                skipping = true;
                line.clear();
                if !send(Feed::Skipped) {
                    return;
                }
            }
            // A partial line at the end of what is written so far.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                send(Feed::End(format!("read error: {e}")));
                return;
            }
        }
    }
}
