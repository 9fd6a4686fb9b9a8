//! The TUI's state: the diagnosis engine (the same one `report` and `run`
//! use) fed with events, and a row per container kept up to date from it.
//!
//! Costs are kept off the event history: an event touches its own row
//! (counters are read from the engine, O(1)); finding kinds are re-read only
//! for rows touched since the last frame; the order is recomputed only when
//! something changed; the header's counts are kept as aggregates. Rendering
//! then builds only the visible rows.
use std::{
    cmp::Reverse,
    collections::{HashMap, VecDeque},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::input::Action;
use crate::{
    cli::Only,
    diagnose::{Config, Container, ContainerView, Diagnoser, Finding, FindingKind},
    model::{Event, Kind},
    sink::report,
};

/// Seconds of history for the rates.
pub const HISTORY: usize = 300;
/// Events held while paused on a live capture; beyond, they are dropped
/// (and counted). A paused stream is not read at all instead.
pub const HOLD_CAP: usize = 200_000;
/// Every so many ticks, rows are re-read from the engine: catches evicted
/// containers and anything an event did not point at.
const RESYNC_TICKS: u64 = 5;
/// Uplinks remembered per node.
const MAX_UPLINKS: usize = 4;

/// One item of a source (live capture or JSON lines).
#[derive(Debug)]
pub enum Feed {
    Event(Box<Event>),
    /// A line that is not an event (garbage, truncated JSON, unknown type).
    Skipped,
    /// A `"type":"finding"` line: ignored, the engine recomputes findings.
    Finding,
    /// The stream ended, and why.
    End(String),
}

/// What "now" is: the wall clock on a live capture, the newest event time on
/// a stream (a post-mortem file is not "hours old" on every row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    Stream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Table,
    Detail,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Worst finding first, then most lost token replies.
    Worst,
    Requests,
    Lost,
    LastSeen,
    Name,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Worst => SortKey::Requests,
            SortKey::Requests => SortKey::Lost,
            SortKey::Lost => SortKey::LastSeen,
            SortKey::LastSeen => SortKey::Name,
            SortKey::Name => SortKey::Worst,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Worst => "worst first",
            SortKey::Requests => "requests",
            SortKey::Lost => "lost replies",
            SortKey::LastSeen => "last seen",
            SortKey::Name => "name",
        }
    }
}

/// A node seen in the stream.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    name_lc: String,
    /// Interfaces host_* events were seen on.
    pub uplinks: Vec<String>,
}

/// One container, as the table lists it.
#[derive(Clone, Debug)]
pub struct Row {
    pub node: usize,
    pub cgroup_id: u64,
    /// `Container::workload_label()`: namespace/pod/container, else its
    /// name, short id or cgroup path (the report's label).
    pub label: String,
    /// docker, containerd, ..., "host"; empty when unknown.
    pub runtime: String,
    /// namespace/pod, Nomad job/task, ECS task; empty when unknown.
    pub workload: String,
    /// What the filter matches, lower case.
    search: String,
    pub requests: u64,
    pub imdsv1: u64,
    pub tokens_ok: u64,
    pub tokens_lost: u64,
    pub hops: Option<u8>,
    pub required: Option<u8>,
    /// Worst first; empty while nothing is decided.
    pub kinds: Vec<FindingKind>,
    pub last_seen: SystemTime,
    /// Kinds to re-read before the next frame.
    stale: bool,
    /// Seen in the current resync.
    present: bool,
}

impl Row {
    pub fn worst(&self) -> Option<FindingKind> {
        self.kinds.first().copied()
    }
}

/// Per-second counts, by event time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub events: u64,
    pub requests: u64,
    pub lost: u64,
}

/// The last `HISTORY` seconds; `end` is the newest second.
#[derive(Debug, Default)]
pub struct Rates {
    end: u64,
    buckets: VecDeque<Bucket>,
}

impl Rates {
    fn advance(&mut self, sec: u64) {
        if self.buckets.is_empty() {
            self.end = sec;
            self.buckets.push_back(Bucket::default());
            return;
        }
        if sec <= self.end {
            return;
        }
        let gap = (sec - self.end) as usize;
        if gap >= HISTORY {
            self.buckets.clear();
            self.buckets.push_back(Bucket::default());
        } else {
            for _ in 0..gap {
                self.buckets.push_back(Bucket::default());
            }
        }
        while self.buckets.len() > HISTORY {
            self.buckets.pop_front();
        }
        self.end = sec;
    }

    fn at(&mut self, sec: u64) -> Option<&mut Bucket> {
        self.advance(sec);
        let back = (self.end - sec) as usize;
        let n = self.buckets.len();
        (back < n).then(|| &mut self.buckets[n - 1 - back])
    }

    /// The last `n` complete seconds (the current one is still filling),
    /// oldest first, zero-padded in front.
    pub fn history(&self, n: usize) -> Vec<Bucket> {
        let complete = self.buckets.len().saturating_sub(1);
        let have = complete.min(n);
        let mut out = vec![Bucket::default(); n - have];
        out.extend(self.buckets.iter().skip(complete - have).take(have));
        out
    }

    /// Mean events per second over the last `n` complete seconds.
    pub fn events_per_sec(&self, n: usize) -> f64 {
        let h = self.history(n);
        h.iter().map(|b| b.events).sum::<u64>() as f64 / n.max(1) as f64
    }
}

type Key = (usize, u64);

pub struct App {
    diag: Diagnoser,
    pub mode: Mode,
    /// "live", a file name, "stdin".
    pub source: String,
    /// The kernel release, on a live capture.
    pub kernel: Option<String>,
    pub no_color: bool,
    /// `--node/--namespace/--pod`: the containers listed (and counted);
    /// the engine still sees every event, as `report`'s does.
    pub only: Only,

    nodes: Vec<NodeInfo>,
    node_index: HashMap<String, usize>,
    rows: Vec<Row>,
    row_index: HashMap<Key, usize>,
    stale: Vec<usize>,
    /// Containers per finding kind (`FindingKind::ALL` order), and
    /// undecided ones.
    kind_counts: [u64; FindingKind::ALL.len()],
    undecided: u64,
    /// Widest runtime and workload seen (0: none known, no column).
    pub widths: (usize, usize),

    /// Row indices, filtered and sorted.
    order: Vec<usize>,
    order_stale: bool,
    selected: Option<Key>,
    /// Position of the selection in `order`.
    cursor: usize,
    /// First visible position; kept by the renderer.
    pub offset: usize,
    /// Rows the table showed last frame (for page up/down).
    pub page: usize,

    pub view: View,
    /// The container the detail view shows.
    detail: Option<Key>,
    pub detail_scroll: usize,
    /// Whom the detail's fix is also for, as `report` groups nodes: "48
    /// nodes of node group ng-a" (None: this node's alone). Re-read on
    /// opening and once a second: it takes every node's findings.
    pub shared_fix: Option<String>,
    pub help: bool,
    pub filter: String,
    /// The filter being typed, until Enter.
    pub editing: Option<String>,
    pub sort: SortKey,

    pub paused: bool,
    held: VecDeque<Event>,
    pub held_dropped: u64,

    pub rates: Rates,
    /// Events applied.
    pub events: u64,
    /// Lines that were not events.
    pub skipped: u64,
    /// Finding lines in the stream (ignored).
    pub finding_lines: u64,
    /// Newest event time.
    pub stream_now: Option<SystemTime>,
    /// Why the stream ended, once it has.
    pub ended: Option<String>,
    /// The last log line (the capture logs to stderr, which the TUI holds).
    pub log: Option<String>,
    /// A fix `c` copied, for the loop to hand the terminal (OSC 52).
    pub clipboard: Option<String>,
    ticks: u64,
}

impl App {
    pub fn new(cfg: Config, mode: Mode, source: &str) -> App {
        App {
            diag: Diagnoser::new(cfg),
            mode,
            source: source.to_string(),
            kernel: None,
            no_color: false,
            only: Only::default(),
            nodes: Vec::new(),
            node_index: HashMap::new(),
            rows: Vec::new(),
            row_index: HashMap::new(),
            stale: Vec::new(),
            kind_counts: [0; FindingKind::ALL.len()],
            undecided: 0,
            widths: (0, 0),
            order: Vec::new(),
            order_stale: false,
            selected: None,
            cursor: 0,
            offset: 0,
            page: 10,
            view: View::Table,
            detail: None,
            detail_scroll: 0,
            shared_fix: None,
            help: false,
            filter: String::new(),
            editing: None,
            sort: SortKey::Worst,
            paused: false,
            held: VecDeque::new(),
            held_dropped: 0,
            rates: Rates::default(),
            events: 0,
            skipped: 0,
            finding_lines: 0,
            stream_now: None,
            ended: None,
            log: None,
            clipboard: None,
            ticks: 0,
        }
    }

    pub fn diagnoser(&self) -> &Diagnoser {
        &self.diag
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Row indices as listed: filtered, sorted. Call `prepare` first.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn multi_node(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Containers per finding kind (non-zero only), then undecided ones.
    pub fn kind_counts(&self) -> (Vec<(FindingKind, u64)>, u64) {
        let v = FindingKind::ALL
            .iter()
            .zip(self.kind_counts)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (*k, n))
            .collect();
        (v, self.undecided)
    }

    /// What "now" is for ages and rates.
    pub fn now(&self) -> SystemTime {
        match self.mode {
            Mode::Live => SystemTime::now(),
            Mode::Stream => self.stream_now.unwrap_or(UNIX_EPOCH),
        }
    }

    /// Lines that were not usable events (bad JSON, bad timestamps).
    pub fn skipped_total(&self) -> u64 {
        self.skipped
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether to take more from a stream (a paused stream is left unread,
    /// so that nothing is lost; a live capture is held instead).
    pub fn accepting(&self, live: bool) -> bool {
        live || !self.paused
    }

    /// One item from the source.
    pub fn feed(&mut self, f: Feed) {
        match f {
            Feed::Event(ev) if self.paused => {
                if self.held.len() < HOLD_CAP {
                    self.held.push_back(*ev);
                } else {
                    self.held_dropped += 1;
                }
            }
            Feed::Event(ev) => self.apply(&ev),
            Feed::Skipped => self.skipped += 1,
            Feed::Finding => self.finding_lines += 1,
            Feed::End(why) => {
                self.ended = Some(why);
                if self.mode == Mode::Stream {
                    self.settle();
                }
            }
        }
    }

    /// Feed one event to the engine and bring its container's row up to
    /// date.
    pub fn apply(&mut self, ev: &Event) {
        self.events += 1;
        if !self.only.keeps_node(&ev.node) {
            // Another node's: its findings are not listed, it is no node here.
            self.diag.observe(ev);
            return;
        }
        let node = self.node(&ev.node);
        // The uplink, also where the kernel folded its sightings into a
        // reply's record.
        let uplink = match ev.kind {
            Kind::HostIngress | Kind::HostEgress | Kind::Exchange => ev.iface.as_ref(),
            _ => ev.host.as_ref().and_then(|h| h.iface.as_ref()),
        };
        if let Some(iface) = uplink {
            let up = &mut self.nodes[node].uplinks;
            if up.len() < MAX_UPLINKS && !up.iter().any(|u| **u == **iface) {
                up.push(iface.to_string());
                up.sort();
            }
        }
        if self.stream_now.is_none_or(|n| ev.ts > n) {
            self.stream_now = Some(ev.ts);
        }
        let sec = Some(unix_secs(ev.ts));
        if let Some(b) = sec.and_then(|s| self.rates.at(s)) {
            b.events += 1;
        }
        for f in self.diag.observe(ev) {
            if let Some(cg) = f.container.key() {
                self.touch(node, cg, sec);
            }
        }
        if let Some(cg) = ev.workload_key() {
            self.touch(node, cg, sec);
        }
    }

    /// Let time pass (once a second): timeouts are decided (live: by the
    /// wall clock; a stream: as far as its own newest event time decides),
    /// rates move on, and now and then every row is re-read.
    pub fn tick(&mut self, now: SystemTime) {
        if self.paused {
            return;
        }
        self.ticks += 1;
        let found = match self.mode {
            Mode::Live => {
                self.rates.advance(unix_secs(now));
                self.diag.tick(now)
            }
            Mode::Stream => self.diag.settle(),
        };
        self.touch_found(found);
        if self.ticks.is_multiple_of(RESYNC_TICKS) {
            self.resync();
        }
        if self.view == View::Detail {
            self.read_shared_fix();
        }
    }

    /// `shared_fix` for the container the detail shows: its node's block
    /// among the fixes of every node listed (`report::fix_groups`).
    fn read_shared_fix(&mut self) {
        let Some((node, _)) = self.detail else { return };
        let name = self.nodes[node].name.as_str();
        let findings: Vec<Finding> = self
            .diag
            .findings()
            .into_iter()
            .filter(|f| self.only.keeps(&f.node, &f.container))
            .collect();
        let blocks = report::fix_groups(&findings, findings.iter().map(|f| f.node.as_str()));
        self.shared_fix = blocks
            .iter()
            .find(|b| b.nodes.iter().any(|(n, _)| *n == name))
            .filter(|b| b.nodes.len() > 1)
            .map(|b| b.who(str::to_string));
    }

    /// Decide what the stream's newest time already decides (end of a
    /// recording).
    fn settle(&mut self) {
        let found = self.diag.settle();
        self.touch_found(found);
    }

    /// The rows of what the engine just decided (other nodes' are none).
    fn touch_found(&mut self, found: Vec<Finding>) {
        let sec = self.stream_now.map(unix_secs);
        for f in found {
            if let (Some(cg), true) = (f.container.cgroup_id, self.only.keeps_node(&f.node)) {
                let node = self.node(&f.node);
                self.touch(node, cg, sec);
            }
        }
    }

    fn node(&mut self, name: &str) -> usize {
        if let Some(&i) = self.node_index.get(name) {
            return i;
        }
        self.nodes.push(NodeInfo {
            name: name.to_string(),
            name_lc: name.to_lowercase(),
            uplinks: Vec::new(),
        });
        self.node_index.insert(name.to_string(), self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// Read a container's counters from the engine into its row; what they
    /// grew by goes to the rates at `sec`.
    fn touch(&mut self, node: usize, cg: u64, sec: Option<u64>) {
        let Some(view) = self.diag.container(&self.nodes[node].name, cg) else { return };
        let i = match self.row_index.get(&(node, cg)) {
            Some(&i) => i,
            // Not asked for (yet: a pod's name can come later).
            None if !self.only.keeps(&self.nodes[node].name, &view.container()) => return,
            None => {
                self.rows.push(Row {
                    node,
                    cgroup_id: cg,
                    label: String::new(),
                    runtime: String::new(),
                    workload: String::new(),
                    search: String::new(),
                    requests: 0,
                    imdsv1: 0,
                    tokens_ok: 0,
                    tokens_lost: 0,
                    hops: None,
                    required: None,
                    kinds: Vec::new(),
                    last_seen: view.last_seen(),
                    stale: false,
                    present: true,
                });
                self.undecided += 1;
                let i = self.rows.len() - 1;
                read_identity(&mut self.rows[i], &view.container(), &mut self.widths);
                self.row_index.insert((node, cg), i);
                i
            }
        };
        let row = &mut self.rows[i];
        let (requests, lost) = (view.requests().total, view.tokens_lost());
        let grew = (requests.saturating_sub(row.requests), lost.saturating_sub(row.tokens_lost));
        read_counters(row, &view);
        if grew != (0, 0) {
            if let Some(b) = sec.and_then(|s| self.rates.at(s)) {
                b.requests += grew.0;
                b.lost += grew.1;
            }
        }
        if !row.stale {
            row.stale = true;
            self.stale.push(i);
        }
    }

    /// Re-read every container from the engine: rows for containers no
    /// event pointed at, none for evicted ones (nor for those `only` no
    /// longer keeps).
    fn resync(&mut self) {
        let keys: Vec<Key> = self
            .diag
            .containers()
            .filter(|v| self.only.is_empty() || self.only.keeps(v.node(), &v.container()))
            .filter_map(|v| Some((*self.node_index.get(v.node())?, v.cgroup_id())))
            .collect();
        for r in &mut self.rows {
            r.present = false;
        }
        for (node, cg) in keys {
            match self.row_index.get(&(node, cg)) {
                Some(&i) => {
                    self.rows[i].present = true;
                    if !self.rows[i].stale {
                        self.rows[i].stale = true;
                        self.stale.push(i);
                    }
                }
                None => self.touch(node, cg, None),
            }
        }
        if self.rows.iter().all(|r| r.present) {
            return;
        }
        for r in self.rows.iter().filter(|r| !r.present) {
            count(&mut self.kind_counts, &mut self.undecided, &r.kinds, -1);
        }
        self.rows.retain(|r| r.present);
        self.row_index =
            self.rows.iter().enumerate().map(|(i, r)| ((r.node, r.cgroup_id), i)).collect();
        self.stale = (0..self.rows.len()).filter(|&i| self.rows[i].stale).collect();
        // Now, not at the next frame: `order` holds indices into `rows`.
        self.reorder();
    }

    /// Before a frame: re-read the finding kinds of touched rows, and
    /// re-sort if anything changed. Costs what changed since the last
    /// frame, not what was ever seen.
    pub fn prepare(&mut self) {
        if !self.stale.is_empty() {
            for i in std::mem::take(&mut self.stale) {
                let row = &mut self.rows[i];
                row.stale = false;
                let Some(view) = self.diag.container(&self.nodes[row.node].name, row.cgroup_id)
                else {
                    continue;
                };
                read_counters(row, &view);
                let kinds = view.kinds();
                if kinds != row.kinds {
                    count(&mut self.kind_counts, &mut self.undecided, &row.kinds, -1);
                    count(&mut self.kind_counts, &mut self.undecided, &kinds, 1);
                    row.kinds = kinds;
                }
                read_identity(row, &view.container(), &mut self.widths);
            }
            self.order_stale = true;
        }
        if self.order_stale {
            self.order_stale = false;
            self.reorder();
        }
    }

    fn reorder(&mut self) {
        let needle = self.filter.to_lowercase();
        let (rows, nodes) = (&self.rows, &self.nodes);
        self.order.clear();
        self.order
            .extend((0..rows.len()).filter(|&i| {
                needle.is_empty() || matches(&rows[i], &nodes[rows[i].node], &needle)
            }));
        let name = |r| name_key(r, nodes);
        match self.sort {
            SortKey::Worst => self.order.sort_by(|&a, &b| {
                let (a, b) = (&rows[a], &rows[b]);
                (severity(a), Reverse(a.tokens_lost), name(a)).cmp(&(
                    severity(b),
                    Reverse(b.tokens_lost),
                    name(b),
                ))
            }),
            SortKey::Requests => self.order.sort_by(|&a, &b| {
                (Reverse(rows[a].requests), name(&rows[a]))
                    .cmp(&(Reverse(rows[b].requests), name(&rows[b])))
            }),
            SortKey::Lost => self.order.sort_by(|&a, &b| {
                (Reverse(rows[a].tokens_lost), severity(&rows[a]), name(&rows[a])).cmp(&(
                    Reverse(rows[b].tokens_lost),
                    severity(&rows[b]),
                    name(&rows[b]),
                ))
            }),
            SortKey::LastSeen => self.order.sort_by(|&a, &b| {
                (Reverse(rows[a].last_seen), name(&rows[a]))
                    .cmp(&(Reverse(rows[b].last_seen), name(&rows[b])))
            }),
            SortKey::Name => self.order.sort_by(|&a, &b| name(&rows[a]).cmp(&name(&rows[b]))),
        }
        // Keep the selected container selected, wherever it moved.
        let found = self
            .selected
            .and_then(|k| self.order.iter().position(|&i| (rows[i].node, rows[i].cgroup_id) == k));
        self.cursor = match found {
            Some(p) => p,
            None => self.cursor.min(self.order.len().saturating_sub(1)),
        };
        self.selected = self.order.get(self.cursor).map(|&i| (rows[i].node, rows[i].cgroup_id));
    }

    /// The selected row.
    #[cfg(test)]
    pub fn selected_row(&self) -> Option<&Row> {
        self.order.get(self.cursor).map(|&i| &self.rows[i])
    }

    /// The container the detail view shows, if the engine still holds it.
    pub fn detail(&self) -> Option<(&Row, ContainerView<'_>)> {
        let (node, cg) = self.detail?;
        let row = &self.rows[*self.row_index.get(&(node, cg))?];
        Some((row, self.diag.container(&self.nodes[node].name, cg)?))
    }

    fn select(&mut self, pos: usize) {
        if self.order.is_empty() {
            return;
        }
        self.cursor = pos.min(self.order.len() - 1);
        let r = &self.rows[self.order[self.cursor]];
        self.selected = Some((r.node, r.cgroup_id));
    }

    /// Apply a key; false to quit.
    pub fn handle(&mut self, a: Action) -> bool {
        // Keys act on what the screen would show now.
        self.prepare();
        if let Some(text) = &mut self.editing {
            match a {
                // Filtering as you type; Enter keeps it, Esc clears it.
                Action::Char(c) => {
                    text.push(c);
                    self.filter = text.clone();
                    self.order_stale = true;
                }
                Action::Backspace => {
                    text.pop();
                    self.filter = text.clone();
                    self.order_stale = true;
                }
                Action::Open => {
                    self.filter = self.editing.take().unwrap_or_default();
                    self.order_stale = true;
                }
                Action::Back => {
                    self.editing = None;
                    self.filter.clear();
                    self.order_stale = true;
                }
                Action::Quit => return false,
                _ => {}
            }
            return true;
        }
        if self.help {
            match a {
                Action::Quit => return false,
                Action::Help | Action::Back => self.help = false,
                _ => {}
            }
            return true;
        }
        match a {
            Action::Quit => return false,
            Action::Help => self.help = true,
            Action::Copy => self.copy_fix(),
            Action::Pause => self.toggle_pause(),
            Action::Sort => {
                self.sort = self.sort.next();
                self.order_stale = true;
            }
            Action::Filter => {
                self.view = View::Table;
                self.editing = Some(self.filter.clone());
            }
            _ if self.view == View::Detail => match a {
                Action::Back => self.view = View::Table,
                Action::Up => self.detail_scroll = self.detail_scroll.saturating_sub(1),
                Action::Down => self.detail_scroll += 1,
                Action::PageUp => self.detail_scroll = self.detail_scroll.saturating_sub(self.page),
                Action::PageDown => self.detail_scroll += self.page,
                Action::Top => self.detail_scroll = 0,
                Action::Bottom => self.detail_scroll = usize::MAX,
                _ => {}
            },
            Action::Up => self.select(self.cursor.saturating_sub(1)),
            Action::Down => self.select(self.cursor + 1),
            Action::PageUp => self.select(self.cursor.saturating_sub(self.page.max(1))),
            Action::PageDown => self.select(self.cursor + self.page.max(1)),
            Action::Top => self.select(0),
            Action::Bottom => self.select(usize::MAX),
            Action::Open => {
                if let Some(k) = self.selected.filter(|_| !self.order.is_empty()) {
                    self.detail = Some(k);
                    self.detail_scroll = 0;
                    self.view = View::Detail;
                    self.read_shared_fix();
                }
            }
            Action::Back => {
                if !self.filter.is_empty() {
                    self.filter.clear();
                    self.order_stale = true;
                }
            }
            Action::Char(_) | Action::Backspace => {}
        }
        true
    }

    /// `c`: the fix of the container on screen (the detail's, else the
    /// selected row's), as the detail shows it first: the workload's own
    /// role where that comes first, else the command for the instance
    /// (after the line that sets INSTANCE_ID where its id is not known),
    /// each whole on one line.
    fn copy_fix(&mut self) {
        let key = if self.view == View::Detail { self.detail } else { self.selected };
        let fix = key.and_then(|(node, cg)| {
            let findings = self.diag.container(&self.nodes[node].name, cg)?.findings();
            let fix = findings.iter().filter_map(|f| f.fix.as_ref()).max_by_key(|f| f.hop_limit)?;
            Some(match (&fix.own_role, &fix.get_instance_id) {
                (Some(own), _) => own.pod_identity.clone(),
                // The line that sets INSTANCE_ID first: the command reads it.
                (None, Some(get)) => format!("{get}\n{}", fix.command),
                (None, None) => fix.command.clone(),
            })
        });
        self.log = Some(match fix {
            Some(f) => {
                self.clipboard = Some(f);
                "fix copied to the clipboard (OSC 52)".into()
            }
            None => "no fix to copy for this container".into(),
        });
    }

    fn toggle_pause(&mut self) {
        self.paused = !self.paused;
        if !self.paused {
            while let Some(ev) = self.held.pop_front() {
                self.apply(&ev);
            }
        }
    }
}

/// Who the row is (names can be learned after the first event); widens the
/// runtime and workload columns as needed.
fn read_identity(row: &mut Row, c: &Container, widths: &mut (usize, usize)) {
    // The report's label, so a row in a ticket is found here.
    let label = c.workload_label();
    let runtime =
        c.runtime.clone().unwrap_or_else(|| if c.host { "host".into() } else { String::new() });
    let workload = workload(c);
    if (&label, &runtime, &workload) == (&row.label, &row.runtime, &row.workload) {
        return;
    }
    widths.0 = widths.0.max(runtime.chars().count());
    widths.1 = widths.1.max(workload.chars().count());
    row.search = [
        &label,
        c.cgroup.as_deref().unwrap_or(""),
        &runtime,
        &workload,
        c.image.as_deref().unwrap_or(""),
    ]
    .join("\n")
    .to_lowercase();
    (row.label, row.runtime, row.workload) = (label, runtime, workload);
}

fn read_counters(row: &mut Row, view: &ContainerView) {
    let r = view.requests();
    row.requests = r.total;
    row.imdsv1 = r.imdsv1;
    row.tokens_ok = view.tokens_ok();
    row.tokens_lost = view.tokens_lost();
    row.hops = view.forwarding_hops();
    row.required = view.required_hop_limit();
    row.last_seen = view.last_seen();
}

fn count(counts: &mut [u64], undecided: &mut u64, kinds: &[FindingKind], by: i64) {
    if kinds.is_empty() {
        *undecided = undecided.saturating_add_signed(by);
    }
    for k in kinds {
        let c = &mut counts[k.severity() as usize];
        *c = c.saturating_add_signed(by);
    }
}

fn name_key<'a>(r: &'a Row, nodes: &'a [NodeInfo]) -> (&'a str, &'a str, u64) {
    (&r.label, &nodes[r.node].name, r.cgroup_id)
}

/// Undecided containers sort after healthy ones.
fn severity(r: &Row) -> u8 {
    r.worst().map_or(u8::MAX, FindingKind::severity)
}

fn matches(r: &Row, node: &NodeInfo, needle: &str) -> bool {
    r.search.contains(needle)
        || node.name_lc.contains(needle)
        || r.kinds.iter().any(|k| k.as_str().contains(needle))
}

/// Where the container belongs: namespace/pod, Nomad job/task, ECS task.
fn workload(c: &Container) -> String {
    if let Some(pod) = &c.pod {
        return match &c.namespace {
            Some(ns) => format!("{ns}/{pod}"),
            None => pod.clone(),
        };
    }
    if let Some(n) = &c.nomad {
        let parts: Vec<&str> =
            [&n.job, &n.task].into_iter().flatten().map(String::as_str).collect();
        if !parts.is_empty() {
            return parts.join("/");
        }
        if let Some(a) = &n.alloc {
            return format!("alloc {}", a.chars().take(8).collect::<String>());
        }
    }
    c.ecs_task.clone().unwrap_or_default()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}
