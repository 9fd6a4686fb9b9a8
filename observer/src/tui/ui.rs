//! Drawing: a pure function of the app state (no I/O), so every screen is
//! tested on a `TestBackend`. Only the visible rows are built.
use std::time::SystemTime;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{
        Block, Borders, Cell, Clear, HighlightSpacing, Paragraph, Row as TableRow, Sparkline,
        Table, TableState,
    },
};

use super::{
    app::{App, Mode, Row, SortKey, View},
    input::KEYS,
};
use crate::{
    diagnose::{Attempt, ContainerView, Evidence, Finding, FindingKind, Fix},
    sink::{
        names,
        report::{self, shorten},
    },
};

/// Narrower than this, the container column drops other columns.
const CONTAINER_MIN: u16 = 24;
/// The selection marker's width.
const MARK: u16 = 2;
const SEP: &str = " · ";

/// Colours, or none at all (NO_COLOR). Modifiers (bold, reverse) stay: they
/// are not colours, and the selection must remain visible.
#[derive(Clone, Copy)]
pub struct Theme {
    color: bool,
}

impl Theme {
    pub fn new(color: bool) -> Theme {
        Theme { color }
    }

    fn fg(self, c: Color) -> Style {
        if self.color { Style::new().fg(c) } else { Style::new() }
    }

    fn bold(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    fn title(self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    fn dim(self) -> Style {
        self.fg(Color::DarkGray)
    }

    fn bad(self) -> Style {
        self.fg(Color::Red)
    }

    fn warn(self) -> Style {
        self.fg(Color::Yellow)
    }

    pub fn kind(self, k: FindingKind) -> Style {
        match k {
            FindingKind::HopLimitExceeded => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            FindingKind::NodeRoleBlocked => self.fg(Color::Magenta).add_modifier(Modifier::BOLD),
            FindingKind::TokenRejected | FindingKind::ImdsForbidden | FindingKind::Unreachable => {
                self.fg(Color::Red)
            }
            FindingKind::BadTokenRequest
            | FindingKind::Imdsv1Fallback
            | FindingKind::NodeRoleLeak
            | FindingKind::AtRisk
            | FindingKind::CredentialStorm => self.fg(Color::Yellow),
            FindingKind::Healthy => self.fg(Color::Green),
        }
    }
}

pub fn render(f: &mut Frame, app: &mut App) {
    app.prepare();
    let theme = Theme::new(!app.no_color);
    let area = f.area();
    if area.width < 40 || area.height < 10 {
        f.render_widget(
            Paragraph::new("imds-observer: the terminal is too small (40x10 at least); q quits"),
            area,
        );
        return;
    }
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(0), Constraint::Length(1)])
            .areas(area);
    render_header(f, header, app, theme);
    match app.view {
        View::Table => {
            let [rates, table] =
                Layout::vertical([Constraint::Length(2), Constraint::Min(0)]).areas(body);
            render_rates(f, rates, app, theme);
            render_table(f, table, app, theme);
        }
        View::Detail => render_detail(f, body, app, theme),
    }
    render_footer(f, footer, app, theme);
    if app.help {
        render_help(f, area, app, theme);
    }
}

fn render_header(f: &mut Frame, area: Rect, app: &App, t: Theme) {
    let stats = app.diagnoser().stats();
    // The source (a path can be long) gets what the numbers leave.
    let mut source = app.source.clone();
    if let Some(k) = &app.kernel {
        source.push_str(&format!(", kernel {k}"));
    }
    let numbers = format!(
        "{} events{SEP}{:.1} ev/s{SEP}",
        thousands(app.events),
        app.rates.events_per_sec(5)
    );
    let lost = format!("events lost {}", thousands(stats.lost_events));
    let paused = if app.paused { SEP.chars().count() + 6 } else { 0 };
    let room = (area.width as usize).saturating_sub(
        "imds-observer".len()
            + 2 * SEP.chars().count()
            + numbers.chars().count()
            + lost.len()
            + paused,
    );
    let mut l1 = vec![
        Span::styled("imds-observer", t.title()),
        Span::raw(SEP),
        Span::raw(clip_middle(&source, room.max(12))),
        Span::raw(SEP),
        Span::raw(numbers),
    ];
    l1.push(if stats.lost_events > 0 { Span::styled(lost, t.bad()) } else { Span::raw(lost) });
    if app.paused {
        l1.push(Span::raw(SEP));
        l1.push(Span::styled("PAUSED", t.warn().add_modifier(Modifier::BOLD | Modifier::REVERSED)));
    }

    let d = app.diagnoser();
    let limit = |name: &str| {
        d.hop_limit(name).map_or("hop limit not seen yet".to_string(), |l| format!("hop limit {l}"))
    };
    let l2 = match app.nodes() {
        [] => Line::styled("no events yet", t.dim()),
        [n] => {
            let up = if n.uplinks.is_empty() { "-".to_string() } else { n.uplinks.join(", ") };
            Line::from(vec![
                Span::raw(format!("node {}{SEP}uplinks {up}{SEP}", n.name)),
                Span::styled(limit(&n.name), t.bold()),
            ])
        }
        // A fleet: how many nodes have which hop limit (each row has its
        // node's in the LIMIT column).
        nodes if nodes.len() > 3 => {
            let mut by_limit = std::collections::BTreeMap::new();
            for n in nodes {
                *by_limit.entry(d.hop_limit(&n.name)).or_insert(0u64) += 1;
            }
            let mut spans = vec![Span::raw(format!("{} nodes", nodes.len()))];
            let suffix = node_suffix(app);
            if !suffix.is_empty() {
                spans.push(Span::raw(format!(" (names end in {suffix})")));
            }
            for (l, c) in by_limit {
                let what =
                    l.map_or("hop limit not seen yet".to_string(), |l| format!("hop limit {l}"));
                spans.push(Span::raw(SEP));
                spans.push(Span::styled(
                    format!("{what} on {}", plural(c, "node", "nodes")),
                    t.bold(),
                ));
            }
            Line::from(spans)
        }
        nodes => {
            let mut spans = vec![Span::raw(format!("{} nodes", nodes.len()))];
            for n in nodes {
                let up = if n.uplinks.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", n.uplinks.join(", "))
                };
                spans.push(Span::raw(format!("{SEP}{}: ", n.name)));
                spans.push(Span::styled(limit(&n.name), t.bold()));
                spans.push(Span::raw(up));
            }
            Line::from(spans)
        }
    };

    let (counts, undecided) = app.kind_counts();
    let n = app.rows().len();
    let mut l3 = vec![Span::raw(plural(n as u64, "container", "containers"))];
    for (k, c) in counts {
        l3.push(Span::raw(SEP));
        l3.push(Span::styled(format!("{k} {}", thousands(c)), t.kind(k)));
    }
    if undecided > 0 {
        l3.push(Span::styled(format!("{SEP}undecided {}", thousands(undecided)), t.dim()));
    }
    f.render_widget(Paragraph::new(vec![Line::from(l1), l2, Line::from(l3)]), area);
}

fn render_rates(f: &mut Frame, area: Rect, app: &App, t: Theme) {
    const LABEL: u16 = 24;
    let [label, spark] =
        Layout::horizontal([Constraint::Length(LABEL), Constraint::Min(0)]).areas(area);
    let hist = app.rates.history(spark.width as usize);
    let req: Vec<u64> = hist.iter().map(|b| b.requests).collect();
    let lost: Vec<u64> = hist.iter().map(|b| b.lost).collect();
    let line = |name: &str, v: &[u64]| {
        format!(
            "{name:<10}{:>5}  max {:<4}",
            v.last().copied().unwrap_or(0),
            v.iter().max().copied().unwrap_or(0)
        )
    };
    f.render_widget(
        Paragraph::new(vec![
            Line::from(line("requests/s", &req)),
            Line::styled(
                line("lost/s", &lost),
                if lost.iter().any(|&l| l > 0) { t.bad() } else { Style::new() },
            ),
        ]),
        label,
    );
    let [r1, r2] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(spark);
    f.render_widget(Sparkline::default().data(&req).style(t.fg(Color::Cyan)), r1);
    // Scaled to the requests, so that lost replies read as a share of them.
    let max = req.iter().chain(&lost).max().copied().unwrap_or(0).max(1);
    let style = if lost.iter().any(|&l| l > 0) { t.bad() } else { Style::new() };
    f.render_widget(Sparkline::default().data(&lost).max(max).style(style), r2);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Node,
    Limit,
    Container,
    Runtime,
    Pod,
    Requests,
    Tokens,
    V1,
    Hops,
    Need,
    Finding,
    Seen,
}

impl Col {
    fn title(self) -> &'static str {
        match self {
            Col::Node => "NODE",
            Col::Limit => "LIMIT",
            Col::Container => "CONTAINER",
            Col::Runtime => "RUNTIME",
            Col::Pod => "POD/TASK",
            Col::Requests => "REQ",
            Col::Tokens => "PUT ok/lost",
            Col::V1 => "IMDSv1",
            Col::Hops => "HOPS",
            Col::Need => "NEED",
            Col::Finding => "FINDING",
            Col::Seen => "SEEN",
        }
    }

    /// Narrow terminals drop the highest first; 0 is never dropped.
    fn drop_rank(self) -> u8 {
        match self {
            Col::Runtime => 9,
            Col::Seen => 8,
            Col::V1 => 7,
            Col::Pod => 6,
            Col::Tokens => 5,
            Col::Limit => 4,
            Col::Need => 3,
            Col::Requests => 2,
            Col::Hops => 1,
            Col::Node | Col::Container | Col::Finding => 0,
        }
    }

    fn right(self) -> bool {
        matches!(
            self,
            Col::Limit | Col::Requests | Col::Tokens | Col::V1 | Col::Hops | Col::Need | Col::Seen
        )
    }

    fn sorted_by(self, s: SortKey) -> bool {
        matches!(
            (self, s),
            (Col::Finding, SortKey::Worst)
                | (Col::Requests, SortKey::Requests)
                | (Col::Tokens, SortKey::Lost)
                | (Col::Seen, SortKey::LastSeen)
                | (Col::Container, SortKey::Name)
        )
    }
}

/// The columns that fit `width`, with their widths; the container takes
/// what is left.
fn columns(app: &App, width: u16) -> Vec<(Col, u16)> {
    let mut cols = Vec::new();
    if app.multi_node() {
        // Names without the domain they all share (the header says it),
        // a quarter of the frame at most, never so narrow two read alike.
        let suffix = node_suffix(app);
        let shown: Vec<&str> = app.nodes().iter().map(|n| names::strip(&n.name, &suffix)).collect();
        let need = shown.iter().map(|n| n.chars().count()).max().unwrap_or(4);
        let want = need.min((width as usize / 4).max(12));
        let w = names::distinct_width(shown.iter().copied(), want, names::cut_middle).max(4) as u16;
        cols.push((Col::Node, w));
        cols.push((Col::Limit, 5));
    }
    cols.push((Col::Container, 0));
    // Identity columns only once something is known.
    let (runtime, workload) = app.widths;
    if runtime > 0 {
        cols.push((Col::Runtime, runtime.clamp(7, 12) as u16));
    }
    if workload > 0 {
        cols.push((Col::Pod, workload.clamp(8, 28) as u16));
    }
    cols.extend([
        (Col::Requests, 6),
        (Col::Tokens, 11),
        (Col::V1, 6),
        (Col::Hops, 4),
        (Col::Need, 4),
        (Col::Finding, 21),
        (Col::Seen, 5),
    ]);
    loop {
        let fixed: u16 = cols.iter().map(|c| c.1).sum::<u16>() + cols.len() as u16 - 1 + MARK;
        if width >= fixed + CONTAINER_MIN {
            set_width(&mut cols, Col::Container, width - fixed);
            return cols;
        }
        match cols
            .iter()
            .enumerate()
            .filter(|(_, c)| c.0.drop_rank() > 0)
            .max_by_key(|(_, c)| c.0.drop_rank())
        {
            Some((i, _)) => {
                cols.remove(i);
            }
            None => {
                set_width(&mut cols, Col::Container, width.saturating_sub(fixed).max(8));
                return cols;
            }
        }
    }
}

/// The domain every node's name ends in (the fleet header states it once).
fn node_suffix(app: &App) -> String {
    if !app.multi_node() {
        return String::new();
    }
    names::common_suffix(app.nodes().iter().map(|n| n.name.as_str()))
}

fn set_width(cols: &mut [(Col, u16)], which: Col, w: u16) {
    if let Some(c) = cols.iter_mut().find(|c| c.0 == which) {
        c.1 = w;
    }
}

fn render_table(f: &mut Frame, area: Rect, app: &mut App, t: Theme) {
    if app.order().is_empty() {
        let msg = if !app.filter.is_empty() {
            format!("No container matches \"{}\" (Esc clears the filter).", app.filter)
        } else if !app.only.is_empty() {
            format!("No container matches {} yet.", app.only.describe())
        } else if app.mode == Mode::Live {
            "No metadata traffic seen yet: waiting for a container to talk to a metadata endpoint."
                .to_string()
        } else if app.ended.is_some() {
            "No metadata traffic in this stream.".to_string()
        } else {
            "No metadata traffic seen yet.".to_string()
        };
        let mut lines = vec![Line::raw(""), Line::styled(msg, t.bold())];
        if app.filter.is_empty() && app.skipped_total() > 0 {
            lines.push(Line::raw(format!(
                "{} not an event.",
                plural(app.skipped_total(), "line was", "lines were")
            )));
        }
        f.render_widget(Paragraph::new(lines).centered(), area);
        return;
    }
    let cols = columns(app, area.width);
    let height = area.height.saturating_sub(1) as usize;
    app.page = height.max(1);
    // Scroll just enough to keep the selection visible.
    let (len, cursor) = (app.order().len(), app.cursor());
    if cursor < app.offset {
        app.offset = cursor;
    } else if cursor >= app.offset + height {
        app.offset = cursor + 1 - height;
    }
    app.offset = app.offset.min(len.saturating_sub(height));

    let now = app.now();
    let header = TableRow::new(cols.iter().map(|&(c, w)| {
        let mut title = c.title().to_string();
        if c.sorted_by(app.sort) {
            title.push('▼');
        }
        Cell::from(align(&title, w, c.right()))
    }))
    .style(t.bold().add_modifier(Modifier::UNDERLINED));
    let visible = &app.order()[app.offset..(app.offset + height).min(len)];
    let rows: Vec<TableRow> =
        visible.iter().map(|&i| table_row(app, &app.rows()[i], &cols, now, t)).collect();
    let widths: Vec<Constraint> = cols.iter().map(|&(_, w)| Constraint::Length(w)).collect();
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ")
        .highlight_spacing(HighlightSpacing::Always);
    let mut state = TableState::default().with_selected(Some(cursor - app.offset));
    f.render_stateful_widget(table, area, &mut state);
}

fn table_row<'a>(
    app: &App,
    r: &Row,
    cols: &[(Col, u16)],
    now: SystemTime,
    t: Theme,
) -> TableRow<'a> {
    let node = &app.nodes()[r.node].name;
    let limit = app.diagnoser().hop_limit(node);
    let cells = cols.iter().map(|&(c, w)| {
        let (text, style) = match c {
            Col::Node => {
                (names::cut_middle(names::strip(node, &node_suffix(app)), w as usize), Style::new())
            }
            Col::Limit => (opt(limit), t.bold()),
            Col::Container => (shorten(&r.label, w as usize), Style::new()),
            Col::Runtime => (or_dash(&r.runtime, w), Style::new()),
            Col::Pod => (or_dash(&r.workload, w), Style::new()),
            Col::Requests => (r.requests.to_string(), Style::new()),
            Col::Tokens => {
                let style = if r.tokens_lost > 0 { t.bad() } else { Style::new() };
                (format!("{}/{}", r.tokens_ok, r.tokens_lost), style)
            }
            Col::V1 => (r.imdsv1.to_string(), if r.imdsv1 > 0 { t.warn() } else { Style::new() }),
            Col::Hops => (opt(r.hops), Style::new()),
            Col::Need => {
                let short = matches!((r.required, limit), (Some(n), Some(l)) if n > l);
                (opt(r.required), if short { t.bad() } else { Style::new() })
            }
            Col::Finding => match r.worst() {
                Some(k) if r.kinds.len() > 1 => (format!("{k} +{}", r.kinds.len() - 1), t.kind(k)),
                Some(k) => (k.to_string(), t.kind(k)),
                None => ("…".to_string(), t.dim()),
            },
            Col::Seen => (age(now, r.last_seen), Style::new()),
        };
        Cell::from(align(&text, w, c.right())).style(style)
    });
    TableRow::new(cells)
}

fn render_detail(f: &mut Frame, area: Rect, app: &mut App, t: Theme) {
    let width = area.width.saturating_sub(1) as usize;
    let lines = match app.detail() {
        Some((row, view)) => detail_lines(app, row, &view, width, t),
        None => {
            vec![Line::raw("This container is no longer tracked (idle too long). Esc goes back.")]
        }
    };
    let height = area.height as usize;
    app.page = height.max(1);
    let max = lines.len().saturating_sub(height);
    app.detail_scroll = app.detail_scroll.min(max);
    let shown: Vec<Line> = lines.into_iter().skip(app.detail_scroll).take(height).collect();
    f.render_widget(Paragraph::new(shown), area);
}

/// The detail of one container, wrapped to `width`: who it is, what is
/// wrong and why, the fix, then its exchanges.
fn detail_lines(
    app: &App,
    row: &Row,
    view: &ContainerView,
    width: usize,
    t: Theme,
) -> Vec<Line<'static>> {
    let mut out: Vec<Line<'static>> = Vec::new();
    let node = view.node().to_string();
    let limit = app.diagnoser().hop_limit(&node);
    let who = view.container();
    for l in wrap(&row.label, width) {
        out.push(Line::styled(l, t.title()));
    }
    let mut identity = Vec::new();
    let mut put = |name: &str, v: Option<&String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            identity.push(format!("{name} {v}"));
        }
    };
    put("runtime", Some(&row.runtime));
    put("workload", Some(&row.workload));
    put("image", who.image.as_ref());
    put("id", who.id.as_ref());
    put("cgroup", who.cgroup.as_ref().filter(|c| **c != row.label));
    for l in wrap_items("", &identity, width) {
        out.push(Line::raw(l));
    }
    let key = view.cgroup_id();
    let unit = if key & crate::model::NETNS_KEY == 0 {
        format!("cgroup {key}")
    } else {
        format!("netns {}", key & !crate::model::NETNS_KEY)
    };
    let mut facts = vec![format!("node {node}"), unit];
    facts.push(format!("forwarding hops {}", opt(view.forwarding_hops())));
    if let Some(n) = view.required_hop_limit() {
        facts.push(format!("needs hop limit {n}"));
    }
    facts.push(
        limit.map_or("node's hop limit not seen yet".into(), |l| format!("node's hop limit {l}")),
    );
    let r = view.requests();
    let traffic = [
        format!(
            "{} requests ({} token PUTs: {} ok, {} lost; {} IMDSv1, {} IMDSv2)",
            r.total,
            r.token,
            view.tokens_ok(),
            view.tokens_lost(),
            r.imdsv1,
            r.imdsv2
        ),
        match app.mode {
            Mode::Live => format!("last seen {}", age_long(app.now(), view.last_seen())),
            Mode::Stream => {
                format!("last seen {} (stream time)", age_long(app.now(), view.last_seen()))
            }
        },
    ];
    for l in wrap_items("", &facts, width).into_iter().chain(wrap_items("", &traffic, width)) {
        out.push(Line::raw(l));
    }

    let findings = view.findings();
    out.push(Line::raw(""));
    if findings.is_empty() {
        out.push(Line::styled(
            "Nothing decided yet: no exchange of this container has completed.",
            t.dim(),
        ));
    }
    // What is wrong, what to do, then why (evidence) and what happened.
    for fd in &findings {
        out.push(Line::styled(fd.kind.to_string(), t.kind(fd.kind).add_modifier(Modifier::BOLD)));
        for l in wrap(&fd.summary, width.saturating_sub(2)) {
            out.push(Line::raw(format!("  {l}")));
        }
    }
    if let Some(fix) = best_fix(&findings) {
        out.push(Line::raw(""));
        out.extend(fix_lines(fix, &findings, app.shared_fix.as_deref(), width, t));
    }
    if !findings.is_empty() {
        out.push(Line::raw(""));
        out.push(Line::styled("EVIDENCE", t.bold()));
    }
    for fd in &findings {
        for l in wrap_items(&format!("  {}: ", fd.kind), &evidence(&fd.evidence), width) {
            out.push(Line::raw(l));
        }
    }

    let tl = view.timeline();
    out.push(Line::raw(""));
    out.push(Line::styled(
        format!(
            "TIMELINE ({} exchange{}, oldest first)",
            tl.len(),
            if tl.len() == 1 { "" } else { "s" }
        ),
        t.bold(),
    ));
    if tl.is_empty() {
        out.push(Line::styled("  no exchange has completed yet", t.dim()));
    } else {
        out.extend(timeline_lines(&tl, width, t));
    }
    out
}

/// The fix with the highest hop limit (every container of the node then
/// gets its token), as text to copy: the command is never cut, and breaks
/// with `\` so that it pastes into a shell. `shared`: the nodes with the
/// same fix but for their ids, as `report` groups them.
fn fix_lines(
    fix: &Fix,
    findings: &[Finding],
    shared: Option<&str>,
    width: usize,
    t: Theme,
) -> Vec<Line<'static>> {
    if let Some(own) = &fix.own_role {
        // A node that keeps pods from its role by design: the pod's own
        // role, and the hop limit only as the last resort the note states.
        let mut out = vec![Line::styled("FIX: give the workload a role of its own", t.bold())];
        for l in wrap(crate::diagnose::OWN_ROLE_VARS, width.saturating_sub(2)) {
            out.push(Line::raw(format!("  {l}")));
        }
        for (name, cmd) in [("EKS Pod Identity", &own.pod_identity), ("or IRSA", &own.irsa)] {
            out.push(Line::raw(format!("  {name}:")));
            for l in report::command_lines(cmd, width.saturating_sub(4)) {
                out.push(Line::styled(format!("    {l}"), t.fg(Color::Green)));
            }
        }
        if let Some(note) = &fix.note {
            for l in wrap(&format!("only as a {note}"), width.saturating_sub(2)) {
                out.push(Line::raw(format!("  {l}")));
            }
        }
        return out;
    }
    let mut out =
        vec![Line::styled(format!("FIX: raise the hop limit to {}", fix.hop_limit), t.bold())];
    if let Some(who) = shared {
        let text = format!("the same fix on {who}, each with its own instance id");
        for l in wrap(&text, width.saturating_sub(2)) {
            out.push(Line::raw(format!("  {l}")));
        }
    }
    out.push(Line::raw("  on the running instance:"));
    if let Some(get) = &fix.get_instance_id {
        // Its id is not known here: the line that sets INSTANCE_ID, run on
        // the node, broken only outside its quotes (a break inside would
        // change them), so that nothing is cut at the screen's edge.
        out.push(Line::raw("  on the node, where its instance id is not known here:"));
        for l in report::command_lines(get, width.saturating_sub(4)) {
            out.push(Line::styled(format!("    {l}"), t.fg(Color::Green)));
        }
    }
    for l in report::command_lines(&fix.command, width.saturating_sub(4)) {
        out.push(Line::styled(format!("    {l}"), t.fg(Color::Green)));
    }
    for (name, text) in [
        ("launch template", &fix.launch_template),
        ("Karpenter", &fix.karpenter),
        ("EKS node group", &fix.eks_node_group),
    ] {
        for l in wrap(&format!("{name}: {text}"), width.saturating_sub(2)) {
            out.push(Line::raw(format!("  {l}")));
        }
    }
    if let Some(note) = findings.iter().find_map(|f| f.fix.as_ref()?.note.as_ref()) {
        match note.split_once(": aws ") {
            Some((text, cmd)) => {
                for l in wrap(&format!("then, {text}:"), width.saturating_sub(2)) {
                    out.push(Line::raw(format!("  {l}")));
                }
                for l in report::command_lines(&format!("aws {cmd}"), width.saturating_sub(4)) {
                    out.push(Line::styled(format!("    {l}"), t.fg(Color::Green)));
                }
            }
            None => {
                for l in wrap(&format!("then, {note}"), width.saturating_sub(2)) {
                    out.push(Line::raw(format!("  {l}")));
                }
            }
        }
    }
    out
}

fn best_fix(findings: &[Finding]) -> Option<&Fix> {
    findings.iter().filter_map(|f| f.fix.as_ref()).max_by_key(|f| f.hop_limit)
}

fn timeline_lines(tl: &[Attempt], width: usize, t: Theme) -> Vec<Line<'static>> {
    const TIME: usize = 12;
    const METHOD: usize = 6;
    const TTL: usize = 8;
    const RESULT: usize = 22;
    const LATENCY: usize = 9;
    let path_w = width.saturating_sub(2 + TIME + METHOD + TTL + RESULT + LATENCY + 5).max(8);
    let mut out = vec![Line::styled(
        format!(
            "  {:<TIME$} {:<METHOD$} {:<path_w$} {:>TTL$} {:<RESULT$} {:>LATENCY$}",
            "TIME", "METHOD", "PATH", "TTL@HOST", "RESULT", "LATENCY"
        ),
        t.bold().add_modifier(Modifier::UNDERLINED),
    )];
    for a in tl {
        let time = a.ts.get(11..23).unwrap_or(&a.ts);
        let (method, path) = match (&a.method, &a.path) {
            (Some(m), Some(p)) => (m.clone(), p.clone()),
            _ => ("-".to_string(), format!("connect {}", a.dst.as_deref().unwrap_or(""))),
        };
        let (result, style) = match a.outcome.as_str() {
            "ok" => ("ok, delivered".to_string(), t.fg(Color::Green)),
            "lost" => ("dropped (TTL exceeded)".to_string(), t.bad().add_modifier(Modifier::BOLD)),
            "timeout" => ("no reply (timeout)".to_string(), t.bad()),
            "refused" => ("refused".to_string(), t.bad()),
            s => (format!("{s}, delivered"), t.warn()),
        };
        let latency = a.latency_ms.map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
        out.push(Line::from(vec![
            Span::raw(format!(
                "  {time:<TIME$} {method:<METHOD$} {:<path_w$} {:>TTL$} ",
                clip_middle(&path, path_w),
                opt(a.reply_ttl_at_host)
            )),
            Span::styled(format!("{:<RESULT$}", clip(&result, RESULT)), style),
            Span::raw(format!(" {latency:>LATENCY$}")),
        ]));
    }
    out
}

/// The evidence that is set, as "name value" pieces.
fn evidence(e: &Evidence) -> Vec<String> {
    let mut v = Vec::new();
    let mut put = |name: &str, val: Option<String>| {
        if let Some(val) = val {
            v.push(format!("{name} {val}"));
        }
    };
    put("reply TTL at host", e.reply_ttl_at_host.map(|x| x.to_string()));
    put("forwarding hops", e.forwarding_hops.map(|x| x.to_string()));
    put("required hop limit", e.required_hop_limit.map(|x| x.to_string()));
    put("node's hop limit", e.node_hop_limit.map(|x| x.to_string()));
    put("lost replies", e.lost_replies.map(|x| x.to_string()));
    put("kernel drops", e.drops.map(|x| x.to_string()));
    put("ICMP time exceeded", e.icmp_time_exceeded.map(|x| x.to_string()));
    put("time lost", e.seconds_lost.map(report::seconds));
    put("failed token requests", e.failed_token_requests.map(|x| x.to_string()));
    put("tokenless requests", e.tokenless_requests.map(|x| x.to_string()));
    put("status", e.status.map(|x| x.to_string()));
    put("responses", e.responses.map(|x| x.to_string()));
    put("paths", (!e.paths.is_empty()).then(|| e.paths.join(", ")));
    for ep in &e.endpoints {
        put(&ep.endpoint, Some(format!("refused {}, timed out {}", ep.refused, ep.timeouts)));
    }
    put("drop reasons", (!e.drop_reasons.is_empty()).then(|| e.drop_reasons.join(", ")));
    // Findings written before p50/p99 were kept have only the mean.
    put(
        "latency",
        e.latency_ms.map(|l| match l.p99 > 0.0 {
            true => format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", l.p50, l.p99, l.max),
            false => format!("mean {:.1} ms, max {:.1} ms", l.mean, l.max),
        }),
    );
    put("records lost by the capture", e.lost_events.map(|x| x.to_string()));
    v
}

fn render_footer(f: &mut Frame, area: Rect, app: &App, t: Theme) {
    if let Some(text) = &app.editing {
        let line = Line::from(vec![
            Span::styled("/", t.bold()),
            Span::raw(text.clone()),
            Span::styled("█", t.dim()),
            Span::styled("   Enter keep · Esc clear", t.dim()),
        ]);
        f.render_widget(Paragraph::new(line), area);
        return;
    }
    let mut status = Vec::new();
    if app.paused {
        status.push(format!("paused: {} held", thousands(app.held() as u64)));
    }
    if app.held_dropped > 0 {
        status.push(format!("{} dropped while paused", thousands(app.held_dropped)));
    }
    if app.skipped_total() > 0 {
        status.push(format!("{} skipped", plural(app.skipped_total(), "line", "lines")));
    }
    if let Some(why) = &app.ended {
        status.push(why.clone());
    }
    if let Some(log) = &app.log {
        status.push(log.clone());
    }
    let status = status.join(SEP);
    let status_w =
        if status.is_empty() { 0 } else { (status.chars().count() as u16 + 1).min(area.width / 2) };
    let [left, right] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(status_w)]).areas(area);
    // `q quit` first, whatever else there is (a long filter, a status).
    let mut hints = vec![Span::styled(format!("q quit{SEP}"), t.dim())];
    if !app.filter.is_empty() {
        let room = (left.width as usize).saturating_sub(20);
        hints.push(Span::styled(
            format!("filter \"{}\"", clip_middle(&app.filter, room.max(8))),
            t.warn().add_modifier(Modifier::BOLD),
        ));
        hints.push(Span::raw(SEP));
    }
    let keys = match app.view {
        View::Table => {
            format!(
                "? help · ↑↓ move · Enter detail · / filter · c copy fix · s sort ({}) · Space pause",
                app.sort.label()
            )
        }
        View::Detail => {
            "? help · ↑↓ scroll · Esc back · c copy fix · / filter · Space pause".to_string()
        }
    };
    let used: usize = hints.iter().map(|h| h.content.chars().count()).sum();
    hints.push(Span::styled(clip(&keys, (left.width as usize).saturating_sub(used)), t.dim()));
    f.render_widget(Paragraph::new(Line::from(hints)), left);
    let status = clip(&status, status_w.saturating_sub(1) as usize);
    f.render_widget(Paragraph::new(Line::styled(status, t.warn())).right_aligned(), right);
}

fn render_help(f: &mut Frame, area: Rect, app: &App, t: Theme) {
    let w = area.width.saturating_sub(4).min(76);
    let h = (KEYS.len() as u16 + 5).min(area.height.saturating_sub(2));
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let key_w = KEYS.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0) + 2;
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![Span::styled(format!(" {k:<key_w$}"), t.bold()), Span::raw(*what)])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        format!(" Sorted by {}. NO_COLOR turns colours off.", app.sort.label()),
        t.dim(),
    ));
    if app.mode == Mode::Stream {
        lines
            .push(Line::styled(" SEEN is stream time: before the stream's latest event.", t.dim()));
    }
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::default().borders(Borders::ALL).title(" keys (? or Esc closes) ")),
        r,
    );
}

fn or_dash(s: &str, w: u16) -> String {
    if s.is_empty() { "-".into() } else { clip(s, w as usize) }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn align(s: &str, w: u16, right: bool) -> String {
    if right { format!("{s:>w$}", w = w as usize) } else { s.to_string() }
}

/// Cut to `w` characters with an ellipsis.
fn clip(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Cut to `w` characters in the middle, keeping both ends of a path.
fn clip_middle(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    let tail = (w.saturating_sub(1)) / 2;
    let head = w.saturating_sub(1) - tail;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// "a · b · c" in lines of at most `width` (after `prefix`, which later
/// lines are indented by), breaking between items; an item longer than a
/// line is word-wrapped.
fn wrap_items(prefix: &str, items: &[String], width: usize) -> Vec<String> {
    let indent = " ".repeat(prefix.chars().count());
    let avail = width.saturating_sub(indent.len()).max(8);
    let mut out: Vec<String> = Vec::new();
    let mut line = String::new();
    for item in items {
        let n = item.chars().count();
        if !line.is_empty() && line.chars().count() + SEP.chars().count() + n > avail {
            out.push(std::mem::take(&mut line));
        }
        if n > avail {
            out.extend(wrap(item, avail));
            continue;
        }
        if !line.is_empty() {
            line.push_str(SEP);
        }
        line.push_str(item);
    }
    if !line.is_empty() {
        out.push(line);
    }
    out.iter()
        .enumerate()
        .map(|(i, l)| format!("{}{l}", if i == 0 { prefix } else { indent.as_str() }))
        .collect()
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "now", "12s", "5m", "3h", "2d".
fn age(now: SystemTime, t: SystemTime) -> String {
    let s = now.duration_since(t).unwrap_or_default().as_secs();
    match s {
        0 => "now".into(),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn age_long(now: SystemTime, t: SystemTime) -> String {
    match age(now, t) {
        n if n == "now" => "just now".into(),
        a => format!("{a} ago"),
    }
}

/// Greedy word wrap; a word longer than the line is split.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut out = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        while word.chars().count() > width {
            if !line.is_empty() {
                out.push(std::mem::take(&mut line));
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            out.push(head);
        }
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        out.push(line);
    }
    out
}
