//! `imds-observer tui`: live investigation.
//!
//! One `tokio::select!` loop over terminal keys, the event source, a
//! one-second tick, a frame timer and signals. Data is applied as it comes;
//! the screen is redrawn on input at once and on data at most every frame.
//! The state (`app`) knows nothing of the terminal and the drawing (`ui`)
//! nothing of I/O, so both are tested without one.
pub mod app;
pub mod input;
pub mod source;
pub mod ui;

#[cfg(test)]
mod tests;

use std::{
    io::{self, IsTerminal, Write},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use ratatui::{
    DefaultTerminal, Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor, execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::MissedTickBehavior,
};

use self::{
    app::{App, Mode},
    source::Source,
};
use crate::{cli::TuiArgs, diagnose};

/// At most this often on data (input redraws at once).
const FRAME: Duration = Duration::from_millis(100);
/// Items applied per wake-up before the loop looks at keys again.
const BATCH: usize = 20_000;

pub async fn main(args: TuiArgs) -> Result<()> {
    if !io::stdout().is_terminal() {
        bail!("the TUI needs a terminal; for text, use `imds-observer report`");
    }
    // The terminal is the key reader's: an event stream cannot come from it.
    if args.from.as_deref() == Some("-") && io::stdin().is_terminal() {
        bail!(crate::cli::refuse_terminal_stdin("tui"));
    }
    // Opened first: a preflight error prints as usual.
    let source = Source::open(&args)?;
    let cfg = diagnose::Config::default()
        .with_instance_ids(&args.fleet.instance_id)
        .map_err(anyhow::Error::msg)?;
    // The header names the source, and the filters where there are any.
    let only = &args.fleet.only;
    let label = match only.is_empty() {
        true => source.label.clone(),
        false => format!("{}, {}", source.label, only.describe()),
    };
    let mut app = App::new(cfg, if source.live { Mode::Live } else { Mode::Stream }, &label);
    app.only = only.clone();
    app.no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    if source.live {
        app.kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|k| k.trim().to_string());
    }

    // Logs (the capture's, on stderr) would scribble over the screen: they
    // go to the status line while the TUI runs, and are printed after.
    let logs = if io::stderr().is_terminal() {
        Some(logs::capture().context("capturing stderr")?)
    } else {
        None
    };
    let result = {
        let (screen, mut term) = Screen::enter().context("setting up the terminal")?;
        let r = run(&mut term, &mut app, source, logs.as_ref().map(|l| &l.rx)).await;
        drop(screen);
        r
    };
    if let Some(l) = logs {
        // Not eprintln!: it panics when the terminal is gone.
        let mut err = io::stderr().lock();
        for line in l.finish() {
            let _ = writeln!(err, "{line}");
        }
    }
    result
}

async fn run(
    term: &mut DefaultTerminal,
    app: &mut App,
    mut source: Source,
    logs: Option<&std::sync::mpsc::Receiver<String>>,
) -> Result<()> {
    let mut keys = input::Terminal::spawn()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (mut redraw, mut data) = (true, false);
    loop {
        if redraw {
            term.draw(|f| ui::render(f, app))?;
            (redraw, data) = (false, false);
        }
        let reading = !source.ended() && app.accepting(source.live);
        tokio::select! {
            ev = keys.rx.recv() => {
                let Some(ev) = ev else { bail!("reading the terminal failed") };
                if let ratatui::crossterm::event::Event::Key(k) = ev {
                    if let Some(a) = input::action(k, app.editing.is_some()) {
                        if !app.handle(a) {
                            return Ok(());
                        }
                        if let Some(text) = app.clipboard.take() {
                            let mut out = io::stdout().lock();
                            out.write_all(input::osc52(&text).as_bytes())?;
                            out.flush()?;
                        }
                    }
                }
                redraw = true;
            }
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
            _ = sighup.recv() => return Ok(()),
            f = source.recv(), if reading => {
                app.feed(f);
                for _ in 0..BATCH {
                    if !app.accepting(source.live) {
                        break;
                    }
                    match source.try_recv() {
                        Some(f) => app.feed(f),
                        None => break,
                    }
                }
                data = true;
            }
            _ = tick.tick() => {
                // A closed terminal (its window, the tmux server) does not
                // always send SIGHUP.
                if !io::stdout().is_terminal() {
                    return Ok(());
                }
                app.tick(SystemTime::now());
                if let Some(rx) = logs {
                    while let Ok(line) = rx.try_recv() {
                        app.log = Some(line);
                    }
                }
                data = true;
            }
            _ = frame.tick() => redraw = data,
        }
    }
}

/// Raw mode and the alternate screen, given back on drop, on panic (before
/// the panic message prints) and after a signal (the loop returns).
struct Screen;

static ACTIVE: AtomicBool = AtomicBool::new(false);

impl Screen {
    fn enter() -> io::Result<(Screen, DefaultTerminal)> {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A panicking helper thread (the capture) ends its stream and
            // the screen says so; its message is among the logs printed on
            // exit. Only the UI thread's panic ends the UI.
            if std::thread::current().name() == Some("main") {
                leave();
            }
            prev(info);
        }));
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let screen = Screen;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        let term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        Ok((screen, term))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        leave();
    }
}

/// Once only: leaving the alternate screen twice would move the cursor
/// back over what was printed in between (a panic message).
fn leave() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let mut out = io::stdout();
        let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
        let _ = out.flush();
    }
    logs::restore();
}

/// Holding stderr while the screen is ours.
mod logs {
    use std::{
        collections::VecDeque,
        fs::File,
        io::{self, BufRead, BufReader},
        os::fd::FromRawFd,
        sync::{
            atomic::{AtomicI32, Ordering},
            mpsc,
        },
        thread::JoinHandle,
    };

    /// Lines kept to print after the TUI exits.
    const KEEP: usize = 50;

    /// The real stderr while fd 2 is the pipe.
    static SAVED: AtomicI32 = AtomicI32::new(-1);

    pub struct Logs {
        pub rx: mpsc::Receiver<String>,
        thread: JoinHandle<Vec<String>>,
    }

    /// Point fd 2 at a pipe; its lines (ANSI colours stripped) arrive on
    /// `rx`.
    pub fn capture() -> io::Result<Logs> {
        let mut fds = [0; 2];
        // SAFETY: plain fd syscalls on fds this function owns; fd 2 is put
        // back by `restore`.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(io::Error::last_os_error());
            }
            let saved = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3);
            if saved < 0 || libc::dup2(fds[1], 2) < 0 {
                let e = io::Error::last_os_error();
                libc::close(fds[0]);
                libc::close(fds[1]);
                if saved >= 0 {
                    libc::close(saved);
                }
                return Err(e);
            }
            libc::close(fds[1]);
            SAVED.store(saved, Ordering::SeqCst);
        }
        // SAFETY: fds[0] is open and owned by nothing else.
        let pipe = unsafe { File::from_raw_fd(fds[0]) };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name("tui-logs".into()).spawn(move || {
            let mut kept = VecDeque::new();
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                let _ = tx.send(short(&line));
                if kept.len() == KEEP {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
            kept.into()
        })?;
        Ok(Logs { rx, thread })
    }

    impl Logs {
        /// Give stderr back; the lines it got, to print.
        pub fn finish(self) -> Vec<String> {
            restore();
            self.thread.join().unwrap_or_default()
        }
    }

    /// Put the real stderr back (idempotent; called from the panic hook).
    pub fn restore() {
        let fd = SAVED.swap(-1, Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: `fd` is the saved stderr, owned here.
            unsafe {
                libc::dup2(fd, 2);
                libc::close(fd);
            }
        }
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // CSI: ESC [ params final-byte
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) && c != '[' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Without tracing's leading timestamp, for the status line.
    fn short(line: &str) -> String {
        match line.split_once(' ') {
            Some((ts, rest))
                if ts.starts_with(|c: char| c.is_ascii_digit()) && ts.contains('T') =>
            {
                rest.trim().to_string()
            }
            _ => line.to_string(),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn log_lines_lose_colours_and_timestamps() {
            let l = "\x1b[2m2026-11-26T21:08:48.123456Z\x1b[0m \x1b[33m WARN\x1b[0m imds_observer::run: events lost";
            let s = super::strip_ansi(l);
            assert_eq!(s, "2026-11-26T21:08:48.123456Z  WARN imds_observer::run: events lost");
            assert_eq!(super::short(&s), "WARN imds_observer::run: events lost");
        }
    }
}
