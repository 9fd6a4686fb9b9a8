//! Keys → actions, and the thread that reads the terminal.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    /// Enter: open the detail; in the filter prompt, apply.
    Open,
    /// Esc: back; in the filter prompt, clear.
    Back,
    Filter,
    Sort,
    Pause,
    Help,
    /// `c`: the selected container's fix to the terminal's clipboard.
    Copy,
    Quit,
    /// Text for the filter prompt.
    Char(char),
    Backspace,
}

/// The keys, as the help screen lists them.
pub const KEYS: &[(&str, &str)] = &[
    ("↑ ↓  j k", "move; scroll in the detail"),
    ("PgUp PgDn  g G", "page up, page down, first, last"),
    ("Enter", "open the selected container's detail"),
    ("Esc", "back; clear the filter"),
    ("/", "filter: name, pod, image, runtime, cgroup, node, finding"),
    ("c", "copy the fix to the clipboard (OSC 52; works over ssh)"),
    ("s", "sort: worst first, requests, lost, last seen, name"),
    ("Space", "pause / resume (new events are held)"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];

/// What a key does; `editing` while the filter prompt is open (printable
/// keys are text then).
pub fn action(key: KeyEvent, editing: bool) -> Option<Action> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return matches!(key.code, KeyCode::Char('c')).then_some(Action::Quit);
    }
    let a = match key.code {
        KeyCode::Up => Action::Up,
        KeyCode::Down => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home => Action::Top,
        KeyCode::End => Action::Bottom,
        KeyCode::Enter => Action::Open,
        KeyCode::Esc => Action::Back,
        KeyCode::Backspace => Action::Backspace,
        KeyCode::Char(c) if editing => Action::Char(c),
        KeyCode::Char('k') => Action::Up,
        KeyCode::Char('j') => Action::Down,
        KeyCode::Char('g') => Action::Top,
        KeyCode::Char('G') => Action::Bottom,
        KeyCode::Char('/') => Action::Filter,
        KeyCode::Char('s') => Action::Sort,
        KeyCode::Char(' ') => Action::Pause,
        KeyCode::Char('?') => Action::Help,
        KeyCode::Char('c') => Action::Copy,
        KeyCode::Char('q') => Action::Quit,
        _ => return None,
    };
    Some(a)
}

/// OSC 52: the terminal puts `text` on its clipboard (xterm, kitty,
/// WezTerm, iTerm2, tmux with `set-clipboard on`), also over ssh, where no
/// clipboard tool of this host could reach the engineer's.
pub fn osc52(text: &str) -> String {
    use base64::Engine;
    format!("\x1b]52;c;{}\x07", base64::engine::general_purpose::STANDARD.encode(text))
}

/// Terminal events read on a thread (crossterm reads the tty, also when
/// stdin is the event stream). Dropping it stops the thread and waits a
/// little for it, so that nothing reads the terminal after the TUI has given
/// it back; not forever: on a hung-up tty crossterm's reader never returns.
pub struct Terminal {
    pub rx: mpsc::Receiver<Event>,
    stop: Arc<AtomicBool>,
    /// Disconnects when the thread ends.
    done: std::sync::mpsc::Receiver<()>,
}

impl Terminal {
    pub fn spawn() -> std::io::Result<Terminal> {
        let (tx, rx) = mpsc::channel(64);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new().name("tui-keys".into()).spawn(move || {
            let _done = done_tx;
            while !flag.load(Ordering::Relaxed) {
                match event::poll(Duration::from_millis(50)) {
                    Ok(true) => match event::read() {
                        Ok(ev) => {
                            if tx.blocking_send(ev).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    },
                    Ok(false) => {}
                    Err(_) => break,
                }
            }
        })?;
        Ok(Terminal { rx, stop, done })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx.close();
        let _ = self.done.recv_timeout(Duration::from_millis(300));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_map_to_actions_and_the_prompt_takes_text() {
        assert_eq!(action(key(KeyCode::Char('j')), false), Some(Action::Down));
        assert_eq!(action(key(KeyCode::Char('k')), false), Some(Action::Up));
        assert_eq!(action(key(KeyCode::Char('q')), false), Some(Action::Quit));
        assert_eq!(action(key(KeyCode::Char(' ')), false), Some(Action::Pause));
        assert_eq!(action(key(KeyCode::Char('x')), false), None);
        assert_eq!(action(key(KeyCode::Char('c')), false), Some(Action::Copy));
        assert_eq!(
            action(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), false),
            Some(Action::Quit)
        );
        // In the filter prompt, letters are text; Ctrl-C still quits.
        assert_eq!(action(key(KeyCode::Char('q')), true), Some(Action::Char('q')));
        assert_eq!(action(key(KeyCode::Char('/')), true), Some(Action::Char('/')));
        assert_eq!(action(key(KeyCode::Char('c')), true), Some(Action::Char('c')));
        assert_eq!(action(key(KeyCode::Enter), true), Some(Action::Open));
        assert_eq!(
            action(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), true),
            Some(Action::Quit)
        );
    }

    #[test]
    fn osc52_carries_the_text_base64() {
        assert_eq!(osc52("aws ec2 x"), "\x1b]52;c;YXdzIGVjMiB4\x07");
    }
}
