//! The `report` table: per container, what is wrong, the numbers behind it,
//! and how to fix it; plus the exit status. (A recorded stream becomes
//! findings in diagnose/replay.rs.)
use std::collections::BTreeMap;

use super::names;
use crate::{
    diagnose::{Finding, Fix, GET_INSTANCE_ID, INSTANCE_ID_VAR},
    model::bounded::plural,
};

/// Target width of the text report.
pub const WIDTH: usize = 100;

/// 0 when every finding is healthy (or there are none), 1 otherwise.
/// (2, for errors, is the caller's.)
pub fn exit_code(findings: &[Finding]) -> u8 {
    if findings.iter().all(Finding::is_healthy) { 0 } else { 1 }
}

/// Collapse long hex runs (container ids) to 12 characters.
fn collapse_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 16 {
            out.push_str(&run[..12]);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for ch in s.chars() {
        if ch.is_ascii_hexdigit() {
            run.push(ch);
        } else {
            flush(&mut run, &mut out);
            out.push(ch);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A container label that fits `max` columns: ids shortened, then a path's
/// leading components elided, anything else cut in the middle (marked).
pub fn shorten(label: &str, max: usize) -> String {
    let mut s = collapse_hex(label);
    if s.chars().count() <= max {
        return s;
    }
    for suffix in [".scope", ".slice"] {
        if let Some(t) = s.strip_suffix(suffix) {
            s = t.to_string();
        }
    }
    if s.chars().count() <= max {
        return s;
    }
    let mut tail = String::new();
    for part in s.split('/').rev() {
        let cand = if tail.is_empty() { part.to_string() } else { format!("{part}/{tail}") };
        if cand.chars().count() + 2 > max {
            break;
        }
        tail = cand;
    }
    if tail.is_empty() || !s.starts_with('/') {
        // Not a path (namespace/pod/container, a name): its start and its
        // end both tell it apart; cut in the middle.
        return names::cut_parts(&s, max);
    }
    format!("…/{tail}")
}

/// Greedy word wrap; every line starts with `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(indent);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    if !empty {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A shell command in lines of at most `width`, broken before options
/// ("--flag value" kept together) with `\` continuations; never cut, and
/// never broken inside quotes (a break there would change the quoted text).
pub fn command_lines(cmd: &str, width: usize) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    for word in shell_words(cmd) {
        match pieces.last_mut() {
            Some(last)
                if last.starts_with("--") && !last.contains(' ') && !word.starts_with("--") =>
            {
                last.push(' ');
                last.push_str(word);
            }
            _ => pieces.push(word.to_string()),
        }
    }
    let mut out = Vec::new();
    let mut line = String::new();
    let mut fresh = true;
    for p in pieces {
        if !fresh && line.chars().count() + 1 + p.chars().count() + 2 > width {
            out.push(format!("{line} \\"));
            line = "    ".to_string();
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(&p);
        fresh = false;
    }
    out.push(line);
    out
}

/// `cmd` split at the blanks outside quotes ('...' or "..."): the places a
/// `\` continuation may go.
fn shell_words(cmd: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote) = (None, None);
    for (i, c) in cmd.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => {
                quote = Some(c);
                start.get_or_insert(i);
            }
            (None, c) if c.is_whitespace() => {
                if let Some(s) = start.take() {
                    out.push(&cmd[s..i]);
                }
            }
            (None, _) => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        out.push(&cmd[s..]);
    }
    out
}

/// [`command_lines`] for the report: indented, one string.
fn wrap_command(cmd: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    for line in command_lines(cmd, width.saturating_sub(indent.chars().count())) {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn requests_cell(f: &Finding) -> String {
    let Some(r) = f.evidence.requests else { return "-".into() };
    let mut parts = Vec::new();
    if r.token > 0 {
        parts.push(format!("{} PUT", r.token));
    }
    if r.imdsv1 > 0 {
        parts.push(format!("{} v1", r.imdsv1));
    }
    if r.imdsv2 > 0 {
        parts.push(format!("{} v2", r.imdsv2));
    }
    if parts.is_empty() {
        r.total.to_string()
    } else {
        format!("{} ({})", r.total, parts.join(", "))
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

struct Group<'a> {
    node: &'a str,
    label: String,
    findings: Vec<&'a Finding>,
}

/// Nodes whose fixes differ only in their instance ids, in one block:
/// what is the same stated once, each node's command with its own id.
pub struct FixGroup<'a> {
    /// (node, its fix), in the order asked for.
    pub nodes: Vec<(&'a str, &'a Fix)>,
    /// "node group ng-a", when the cluster said.
    pub pool: Option<String>,
    /// The hop limit seen on the nodes ("unknown" before a reply).
    pub seen: String,
}

impl FixGroup<'_> {
    /// Whom the block is for: "12 nodes of node group X" (the TUI says it
    /// too), or the one node by `short` name (with its pool).
    pub fn who(&self, short: impl Fn(&str) -> String) -> String {
        let many = self.nodes.len() > 1;
        match (many, &self.pool) {
            (true, Some(pool)) => {
                format!("{} of {pool}", plural(self.nodes.len() as u64, "node", "nodes"))
            }
            (true, None) => plural(self.nodes.len() as u64, "node", "nodes"),
            (false, Some(pool)) => format!("{} ({pool})", short(self.nodes[0].0)),
            (false, None) => short(self.nodes[0].0),
        }
    }
}

/// Per node, the hop limit its token replies showed (the highest seen).
fn node_limits(findings: &[Finding]) -> BTreeMap<&str, u8> {
    let mut limits: BTreeMap<&str, u8> = BTreeMap::new();
    for f in findings {
        if let Some(l) = f.evidence.node_hop_limit {
            let e = limits.entry(&f.node).or_insert(l);
            *e = (*e).max(l);
        }
    }
    limits
}

/// The fix blocks of `findings`, nodes in the order of `nodes` (each
/// once): per node one fix (the largest hop limit any of its containers
/// needs), nodes alike but for their ids together; a node whose fix is a
/// role of the workload's own stays alone.
pub fn fix_groups<'a>(
    findings: &'a [Finding],
    nodes: impl IntoIterator<Item = &'a str>,
) -> Vec<FixGroup<'a>> {
    let limits = node_limits(findings);
    let mut fixes: BTreeMap<&str, &Fix> = BTreeMap::new();
    for f in findings {
        if let Some(fix) = &f.fix {
            let e = fixes.entry(&f.node).or_insert(fix);
            if fix.hop_limit > e.hop_limit {
                *e = fix;
            }
        }
    }
    let mut blocks: Vec<FixGroup> = Vec::new();
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut done = std::collections::BTreeSet::new();
    for node in nodes {
        let Some(&fix) = fixes.get(node) else { continue };
        if !done.insert(node) {
            continue;
        }
        let pool = pool_of(findings, node);
        let seen = limits.get(node).map_or("unknown".to_string(), |l| l.to_string());
        let key = match fix.own_role {
            Some(_) => format!("own|{node}"),
            None => fix_key(fix, &pool, &seen),
        };
        let i = *by_key.entry(key).or_insert_with(|| {
            blocks.push(FixGroup { nodes: Vec::new(), pool, seen });
            blocks.len() - 1
        });
        blocks[i].nodes.push((node, fix));
    }
    blocks
}

/// The pool a node belongs to, as the report names it.
fn pool_of(findings: &[Finding], node: &str) -> Option<String> {
    let info = findings.iter().find(|f| f.node == node)?.node_info.as_ref()?;
    let word = match info.provisioner {
        Some(crate::model::Provisioner::Karpenter) => "NodePool",
        _ => "node group",
    };
    Some(format!("{word} {}", info.pool.as_deref()?))
}

/// What must match for two nodes' fixes to be one block: all but the id.
fn fix_key(fix: &Fix, pool: &Option<String>, seen: &str) -> String {
    let id = fix_id(fix);
    let anon = |s: &str| match id {
        Some(id) => s.replace(id, INSTANCE_ID_VAR),
        None => s.to_string(),
    };
    format!(
        "{pool:?}|{seen}|{}|{}|{}",
        anon(&fix.command),
        anon(fix.note.as_deref().unwrap_or("")),
        fix.hop_limit
    )
}

/// The instance id a fix command names, if it names one.
fn fix_id(fix: &Fix) -> Option<&str> {
    if fix.get_instance_id.is_some() {
        return None;
    }
    let rest = fix.command.split_once("--instance-id ")?.1;
    rest.split_whitespace().next()
}

/// The report as plain text, at most 100 columns wide. See
/// [`render_width`].
pub fn render(findings: &[Finding]) -> String {
    render_width(findings, WIDTH)
}

/// The report as plain text in `width` columns (see
/// `names::terminal_width`): a table with one row per finding (container
/// columns on its first row), then why, then the fix per node, nodes with
/// the same fix in one block. Names are cut in the middle with a mark, never
/// so that two read alike; a domain all nodes share is said once; a table
/// too wide drops the columns the sections below repeat. Commands break
/// with `\` outside quotes, so that they paste whole. Control
/// characters from names (a label, a node name, a path read back from a
/// stream) are written escaped, never sent to the terminal.
pub fn render_width(findings: &[Finding], width: usize) -> String {
    escape_controls(&render_raw(findings, width.max(60)))
}

/// Every control character but the newline, escaped (`\u{1b}`).
fn escape_controls(text: &str) -> String {
    text.chars()
        .map(
            |c| {
                if c.is_control() && c != '\n' {
                    c.escape_default().collect()
                } else {
                    c.to_string()
                }
            },
        )
        .collect()
}

fn render_raw(findings: &[Finding], width: usize) -> String {
    if findings.is_empty() {
        return "No metadata traffic from any container was seen.\n".into();
    }
    // Containers, worst first.
    let mut groups: Vec<Group> = Vec::new();
    let mut index: BTreeMap<(&str, Option<u64>, String), usize> = BTreeMap::new();
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by(|a, b| {
        (a.kind, &a.node, a.container.workload_label()).cmp(&(
            b.kind,
            &b.node,
            b.container.workload_label(),
        ))
    });
    for f in sorted {
        let key = (f.node.as_str(), f.container.cgroup_id, f.container.workload_label());
        let i = *index.entry(key).or_insert_with(|| {
            groups.push(Group {
                node: &f.node,
                label: f.container.workload_label(),
                findings: Vec::new(),
            });
            groups.len() - 1
        });
        groups[i].findings.push(f);
    }
    let multi_node = groups.iter().any(|g| g.node != groups[0].node);
    let suffix = if multi_node {
        names::common_suffix(groups.iter().map(|g| g.node))
    } else {
        String::new()
    };
    let short = |node: &str| names::strip(node, &suffix).to_string();

    // Per node, the hop limit seen; the fix blocks, in table order.
    let limits = node_limits(findings);
    let blocks = fix_groups(findings, groups.iter().map(|g| g.node));
    let fix_no: BTreeMap<&str, usize> = blocks
        .iter()
        .enumerate()
        .flat_map(|(i, b)| b.nodes.iter().map(move |(node, _)| (*node, i + 1)))
        .collect();

    // Cells.
    let mut rows: Vec<Vec<String>> = Vec::new();
    for g in &groups {
        for (i, f) in g.findings.iter().enumerate() {
            let first = i == 0;
            let mut row = Vec::new();
            if multi_node {
                row.push(if first { short(g.node) } else { String::new() });
            }
            row.push(if first { g.label.clone() } else { String::new() });
            row.push(f.kind.to_string());
            let c = |s: String| if first { s } else { String::new() };
            row.push(c(opt(f.evidence.forwarding_hops)));
            row.push(c(opt(limits.get(g.node))));
            row.push(c(requests_cell(f)));
            row.push(opt(f.evidence.lost_replies).replace('-', ""));
            row.push(f.evidence.seconds_lost.map_or(String::new(), seconds));
            row.push(c(f.evidence.latency_ms.filter(|l| l.p99 > 0.0).map_or(String::new(), |l| {
                if l.p99 < 1000.0 { format!("{:.1} ms", l.p99) } else { seconds(l.p99 / 1e3) }
            })));
            row.push(match (&f.fix, fix_no.get(g.node)) {
                (Some(_), Some(n)) => format!("[{n}]"),
                _ => String::new(),
            });
            rows.push(row);
        }
    }
    let mut headers = Vec::new();
    if multi_node {
        headers.push("NODE");
    }
    headers.extend([
        "CONTAINER",
        "FINDING",
        "HOPS",
        "LIMIT",
        "REQUESTS",
        "LOST",
        "TIME LOST",
        "P99",
        "FIX",
    ]);
    let cont_col = usize::from(multi_node);
    // Right-aligned numeric columns.
    let right = |name: &str| matches!(name, "HOPS" | "LIMIT" | "LOST");
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if i != cont_col {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    if multi_node {
        // A quarter of the width at most, but never so narrow that two
        // nodes read alike.
        let shown: Vec<String> = groups.iter().map(|g| short(g.node)).collect();
        let want = widths[0].min((width / 4).max(12));
        widths[0] =
            names::distinct_width(shown.iter().map(String::as_str), want, names::cut_middle).max(4);
    }
    let cont_need = rows.iter().map(|r| r[cont_col].chars().count()).max().unwrap_or(0).max(9);
    let cont_width = |widths: &[usize]| {
        let others: usize =
            widths.iter().enumerate().filter(|(i, _)| *i != cont_col).map(|(_, w)| w + 2).sum();
        let cont_max = width.saturating_sub(others).max(16);
        let w = names::distinct_width(
            groups.iter().map(|g| g.label.as_str()),
            cont_need.min(cont_max),
            shorten,
        )
        .max(9);
        (w, others + w)
    };
    // Too wide for the terminal (80 columns): drop the latency (answered
    // requests' p99: no verdict rests on it) before the container column
    // is cut below `KEEP_CONTAINER` for it, then what the sections below
    // say again, least needed first (Why has the time lost and the
    // requests, Fix the hop limits).
    const KEEP_CONTAINER: usize = 40;
    for name in ["P99", "TIME LOST", "REQUESTS", "LIMIT", "HOPS"] {
        let (cont, total) = cont_width(&widths);
        if total <= width && (name != "P99" || cont >= cont_need.min(KEEP_CONTAINER)) {
            break;
        }
        let i = headers.iter().position(|h| *h == name).expect("a column of the table");
        headers.remove(i);
        widths.remove(i);
        for row in rows.iter_mut() {
            row.remove(i);
        }
    }
    widths[cont_col] = cont_width(&widths).0;
    for row in rows.iter_mut() {
        row[cont_col] = shorten(&row[cont_col], widths[cont_col]);
        if multi_node {
            row[0] = names::cut_middle(&row[0], widths[0]);
        }
    }

    let mut out = String::new();
    let bad = groups.iter().filter(|g| g.findings.iter().any(|f| !f.is_healthy())).count();
    let nodes: std::collections::BTreeSet<&str> = groups.iter().map(|g| g.node).collect();
    out.push_str(&format!(
        "{} on {}: {} need{} attention.\n",
        plural(groups.len() as u64, "container", "containers"),
        plural(nodes.len() as u64, "node", "nodes"),
        bad,
        if bad == 1 { "s" } else { "" },
    ));
    if !suffix.is_empty() {
        out.push_str(&format!("Node names below end in {suffix}\n"));
    }
    out.push('\n');
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let w = widths[i];
            let pad = w.saturating_sub(cell.chars().count());
            if right(headers[i]) {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < cells.len() {
                s.push_str("  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>()));
    for row in &rows {
        out.push_str(&line(row));
    }

    // Why.
    out.push_str("\nWhy\n");
    for g in &groups {
        let who =
            if multi_node { format!("{} {}", short(g.node), g.label) } else { g.label.clone() };
        out.push_str(&format!("  {}\n", shorten(&who, width - 2)));
        for f in &g.findings {
            out.push_str(&wrap(&format!("{}: {}", f.kind, f.summary), width, "    "));
        }
    }

    // Fix, per block of nodes.
    if !blocks.is_empty() {
        out.push_str("\nFix\n");
    }
    for (i, b) in blocks.iter().enumerate() {
        let n = i + 1;
        let (node, fix) = b.nodes[0];
        let seen = &b.seen;
        if fix.own_role.is_some() {
            // Hop limit 1 is this node's design: each workload's own
            // role, and the node's hop limit only as the last resort.
            let node = short(node);
            out.push_str(&wrap(
                &format!(
                    "[{n}] {node}: hop limit {seen} keeps pods from the node's role by design; give each workload a role of its own"
                ),
                width,
                "  ",
            ));
            out.push_str(&wrap(crate::diagnose::OWN_ROLE_VARS, width, "      "));
            for f in findings.iter().filter(|f| f.node == b.nodes[0].0) {
                let Some(own) = f.fix.as_ref().and_then(|x| x.own_role.as_ref()) else {
                    continue;
                };
                out.push_str(&wrap(&f.container.workload_label(), width, "      "));
                out.push_str(&wrap("EKS Pod Identity:", width, "        "));
                out.push_str(&wrap_command(&own.pod_identity, width, "          "));
                out.push_str(&wrap("or IRSA:", width, "        "));
                out.push_str(&wrap_command(&own.irsa, width, "          "));
            }
            if let Some(note) = &fix.note {
                out.push_str(&wrap(&format!("only as a {note}"), width, "      "));
            }
            continue;
        }
        let many = b.nodes.len() > 1;
        let who = b.who(short);
        out.push_str(&wrap(
            &format!(
                "[{n}] {who}: hop limit seen {seen}, {} containers need {}",
                if many { "their" } else { "its" },
                fix.hop_limit
            ),
            width,
            "  ",
        ));
        out.push_str(if many {
            "      running instances, each node's own command:\n"
        } else {
            "      running instance:\n"
        });
        let (known, unknown): (Vec<_>, Vec<_>) =
            b.nodes.iter().partition(|(_, f)| f.get_instance_id.is_none());
        for (node, f) in &known {
            if many {
                out.push_str(&format!("        # {}\n", short(node)));
            }
            out.push_str(&wrap_command(&f.command, width, "        "));
        }
        if let Some((_, f)) = unknown.first() {
            let on = match (many, unknown.len()) {
                (false, _) => "on the node".to_string(),
                (true, 1) => format!("on {}", short(unknown[0].0)),
                (true, _) => format!(
                    "on each of {}",
                    unknown.iter().map(|(n, _)| short(n)).collect::<Vec<_>>().join(", ")
                ),
            };
            out.push_str(&wrap(
                &format!("{on}, where its instance id is not known here:"),
                width,
                "        ",
            ));
            // Broken outside its quotes only, as the TUI shows it.
            out.push_str(&wrap_command(
                f.get_instance_id.as_deref().unwrap_or(GET_INSTANCE_ID),
                width,
                "        ",
            ));
            out.push_str(&wrap_command(&f.command, width, "        "));
        }
        out.push_str(&wrap(&format!("launch template: {}", fix.launch_template), width, "      "));
        out.push_str(&wrap(&format!("Karpenter: {}", fix.karpenter), width, "      "));
        out.push_str(&wrap(&format!("EKS node group: {}", fix.eks_node_group), width, "      "));
        let note =
            findings.iter().filter(|f| f.node == node).find_map(|f| f.fix.as_ref()?.note.as_ref());
        if let Some(note) = note {
            // A block's note names its first node's id: each node's own.
            let note = match (many, fix_id(fix)) {
                (true, Some(id)) => note.replace(id, INSTANCE_ID_VAR),
                _ => note.clone(),
            };
            match note.split_once(": aws ") {
                Some((text, cmd)) => {
                    let each = if many && note.contains(INSTANCE_ID_VAR) {
                        " (INSTANCE_ID: each node's id above)"
                    } else {
                        ""
                    };
                    out.push_str(&wrap(&format!("then, {text}{each}:"), width, "      "));
                    out.push_str(&wrap_command(&format!("aws {cmd}"), width, "        "));
                }
                None => out.push_str(&wrap(&format!("then, {note}"), width, "      ")),
            }
        }
    }

    if let Some(lost) = findings.iter().filter_map(|f| f.evidence.lost_events).max() {
        out.push_str(&format!("\nWarning: the capture lost {lost} records; counts may be low.\n"));
    }
    out
}

/// Seconds lost as the table shows them: a first lost attempt has cost
/// nothing yet, which "0.0 s" would state as a measurement.
pub fn seconds(s: f64) -> String {
    if s < 0.05 { "<0.1 s".to_string() } else { format!("{s:.1} s") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{
        Diagnoser, FindingKind,
        replay::{Skipped, diagnose_stream},
        tests::{Ctr, feed, hop_limit_failure},
    };

    fn scenario() -> Vec<Finding> {
        let mut d = Diagnoser::default();
        let mut v = hop_limit_failure();
        let mut h = Ctr::host("node-a").conn(50);
        v.extend(h.connect(2000));
        v.extend(h.put_token(2001));
        v.extend(h.respond(2002, 200, 1));
        let mut e = crate::diagnose::tests::Conn::new(
            Ctr::new(
                "node-a",
                99,
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0.scope",
                "10.88.0.9",
                1,
            ),
            60,
            "169.254.170.2:80",
        );
        v.extend(e.syn(2100));
        v.extend(e.rst(2101));
        feed(&mut d, &v);
        d.findings()
    }

    #[test]
    fn table_fits_100_columns_with_fix_and_why() {
        let f = scenario();
        let text = render(&f);
        for l in text.lines() {
            assert!(l.chars().count() <= WIDTH, "too wide ({}): {l}", l.chars().count());
        }
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "3 containers on 1 node: 2 need attention.");
        let header = lines[2];
        for col in ["CONTAINER", "FINDING", "HOPS", "LIMIT", "REQUESTS", "LOST", "TIME LOST", "FIX"]
        {
            assert!(header.contains(col), "{header}");
        }
        assert!(!header.contains("NODE"), "one node: no node column");
        // Worst first: the hop-limit container, then unreachable, then healthy.
        let row = lines[3];
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            vec![
                "…/libpod-3f2a9c1b7d4e",
                "hop_limit_exceeded",
                "1",
                "1",
                "3",
                "(1",
                "PUT,",
                "2",
                "v1)",
                "1",
                "1.0",
                "s",
                "[1]"
            ]
        );
        assert_eq!(lines[4].split_whitespace().collect::<Vec<_>>(), vec!["imdsv1_fallback", "[1]"]);
        assert!(lines[5].contains("unreachable") && !lines[5].contains('['), "{}", lines[5]);
        assert!(
            lines[6].contains("healthy") && lines[6].contains("…/imds-agent.service"),
            "{}",
            lines[6]
        );
        // The command can be pasted into a shell.
        assert!(text.contains(
            "        aws ec2 modify-instance-metadata-options --instance-id \"$INSTANCE_ID\" \\\n            --http-put-response-hop-limit 2 --http-endpoint enabled\n"
        ), "{text}");
        assert!(
            text.contains(
                "Karpenter: EC2NodeClass spec.metadataOptions.httpPutResponseHopLimit: 2"
            )
        );
        assert!(text.contains("launch template: MetadataOptions.HttpPutResponseHopLimit = 2"));
        // The unreachable explanation stays clear of the hop limit.
        let why = &text[text.find("unreachable: ").unwrap()..];
        let why = &why[..why.find("\n  /").unwrap()];
        assert!(!why.to_lowercase().contains("hop"), "{why}");
        assert!(why.contains("connection refused"));
    }

    /// #26: at 80 columns every line fits (at the least, 60, all but a
    /// word of a command that has no blank to break at): the table drops
    /// the columns Why and Fix repeat, and the line that sets INSTANCE_ID
    /// breaks outside its quotes, pasting as the one line.
    #[test]
    fn narrow_terminals_get_every_line_within_their_width() {
        let f = scenario();
        for width in [60, 80] {
            let text = render_width(&f, width);
            for l in text.lines() {
                let one_word = !l.trim().contains(' ');
                assert!(
                    l.chars().count() <= width || (width < 80 && one_word),
                    "{width}: too wide: {l}\n{text}"
                );
            }
            let header = text.lines().nth(2).unwrap();
            for col in ["CONTAINER", "FINDING", "LOST", "FIX"] {
                assert!(header.contains(col), "{width}: {header}");
            }
            let lines: Vec<&str> = text.lines().collect();
            let at = lines.iter().position(|l| l.trim_start().starts_with("INSTANCE_ID=")).unwrap();
            let mut joined = String::new();
            for l in &lines[at..] {
                match l.trim().strip_suffix(" \\") {
                    Some(head) => joined.push_str(&format!("{head} ")),
                    None => {
                        joined.push_str(l.trim());
                        break;
                    }
                }
            }
            assert_eq!(joined, GET_INSTANCE_ID, "{width}\n{text}");
        }
        // 100 columns keep every column the sections below need; the
        // answered requests' p99 goes before a container's name is cut, and
        // is there where the terminal has room.
        assert!(render(&f).lines().nth(2).unwrap().contains("TIME LOST"));
        assert!(!render(&f).lines().nth(2).unwrap().contains("P99"));
        let wide = render_width(&f, 140);
        let lines: Vec<&str> = wide.lines().collect();
        assert!(lines[2].contains("TIME LOST  P99"), "{wide}");
        assert!(lines[3].trim_end().ends_with("1.0 s      1.0 ms  [1]"), "{wide}");
        assert!(lines[3].starts_with("/libpod_parent/libpod-3f2a9c1b7d4e"), "{wide}");
        assert_eq!(
            (seconds(0.0), seconds(0.04), seconds(1.04)),
            ("<0.1 s".into(), "<0.1 s".into(), "1.0 s".into())
        );
    }

    #[test]
    fn several_nodes_get_a_node_column_and_a_fix_each() {
        let mut v = Vec::new();
        for (node, limit, hops) in [("node-a", 1u8, 1u8), ("node-b", 2, 2)] {
            let mut c = Ctr::new(node, 10, "/docker/app", "172.17.0.2", hops).conn(1);
            v.extend(c.connect(0));
            v.extend(c.put_token(1));
            v.extend(c.respond(2, 200, limit));
        }
        let mut d = Diagnoser::default();
        feed(&mut d, &v);
        let text = render(&d.findings());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2 containers on 2 nodes: 2 need attention.");
        assert!(lines[2].starts_with("NODE"), "{text}");
        assert!(lines[3].starts_with("node-a") && lines[3].ends_with("[1]"), "{text}");
        assert!(lines[4].starts_with("node-b") && lines[4].ends_with("[2]"), "{text}");
        assert!(text.contains("[1] node-a: hop limit seen 1, its containers need 2"), "{text}");
        assert!(text.contains("[2] node-b: hop limit seen 2, its containers need 3"), "{text}");
        assert!(text.contains("--http-put-response-hop-limit 3 --http-endpoint enabled"));
    }

    #[test]
    fn empty_report() {
        assert_eq!(render(&[]), "No metadata traffic from any container was seen.\n");
    }

    #[test]
    fn exit_codes() {
        let f = scenario();
        assert_eq!(exit_code(&f), 1);
        let healthy: Vec<Finding> =
            f.iter().filter(|f| f.kind == FindingKind::Healthy).cloned().collect();
        assert_eq!(healthy.len(), 1);
        assert_eq!(exit_code(&healthy), 0);
        assert_eq!(exit_code(&[]), 0);
        let risk: Vec<Finding> =
            f.iter().filter(|f| f.kind == FindingKind::Unreachable).cloned().collect();
        assert_eq!(exit_code(&risk), 1);
    }

    #[test]
    fn stream_gives_the_live_findings_and_skips_garbage() {
        let events = hop_limit_failure();
        let mut live = Diagnoser::default();
        let live_emitted = feed(&mut live, &events);
        live.settle();
        let live_findings = live.findings();

        let mut text = String::new();
        for (i, e) in events.iter().enumerate() {
            text.push_str(&serde_json::to_string(e).unwrap());
            text.push('\n');
            match i {
                3 => text.push_str("not json at all\n"),
                5 => text.push_str(
                    "{\"type\":\"bogus\",\"ts\":\"2026-01-01T00:00:00Z\",\"node\":\"x\"}\n",
                ),
                7 => text.push_str("{}\n"),
                9 => text.push_str("{\"type\":\"request\",\"ts\":\"2026-01-\n"),
                11 => {
                    // A finding written by the live observer: ignored.
                    text.push_str(&serde_json::to_string(&live_emitted[0]).unwrap());
                    text.push('\n');
                }
                13 => text.push_str("\n   \n"),
                15 => text.push_str(
                    "{\"type\":\"drop\",\"ts\":\"yesterday\",\"node\":\"node-a\",\"flow\":11}\n",
                ),
                _ => {}
            }
        }
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"\xff\xfe not utf-8\n");
        let got = diagnose_stream(&bytes[..]).unwrap();
        assert_eq!(got.events, events.len() as u64);
        let skipped = Skipped { not_json: 3, not_event: 2, findings: 1, bad_time: 1 };
        assert_eq!(
            got.skipped, skipped,
            "garbage, truncated, not utf-8; bogus type, {{}}; a finding; bad ts"
        );
        assert_eq!(got.findings, live_findings);
        assert_eq!(got.emitted, live_emitted);
        assert_eq!(
            got.findings.iter().map(|f| f.kind).collect::<Vec<_>>(),
            vec![FindingKind::HopLimitExceeded, FindingKind::Imdsv1Fallback]
        );
        assert_eq!(exit_code(&got.findings), 1);
    }

    #[test]
    fn a_pod_with_a_mebibyte_of_labels_is_still_in_the_report_from_its_lines() {
        // The pod's identity as `identify` carries it: bounded.
        let mut pod = crate::model::Container {
            pod: Some("labelled-7f9c".into()),
            namespace: Some("payments".into()),
            pod_uid: Some("0f4b2c7e-9a1d-4e3b-8c6a-5d2e1f0a9b8c".into()),
            labels: (0..16_384).map(|i| (format!("k{i:05}"), "v".repeat(60))).collect(),
            ..Default::default()
        };
        let unbounded = pod.clone();
        pod.bound();
        let stream = |who: &crate::model::Container| {
            let mut text = String::new();
            for mut e in hop_limit_failure() {
                if e.cgroup_id.is_some() {
                    let mut c = who.clone();
                    (c.cgroup, c.cgroup_id) = (e.cgroup.clone(), e.cgroup_id);
                    e.container = Some(c.into());
                }
                text.push_str(&serde_json::to_string(&e).unwrap());
                text.push('\n');
            }
            text
        };
        let text = stream(&pod);
        assert!(text.lines().all(|l| l.len() < 4096), "every line small");
        let got = diagnose_stream(text.as_bytes()).unwrap();
        assert_eq!(got.skipped, Skipped::default());
        let hop = got.findings.iter().find(|f| f.kind == FindingKind::HopLimitExceeded).unwrap();
        assert_eq!(hop.container.pod.as_deref(), Some("labelled-7f9c"));
        assert!(render(&got.findings).contains("payments/labelled-7f9c"));
        // What an unbounded identity did: every line over the limit,
        // skipped, the pod absent from the report.
        let text = stream(&unbounded);
        let got = diagnose_stream(text.as_bytes()).unwrap();
        assert!(got.findings.is_empty() && got.skipped.not_json > 0);
    }

    #[test]
    fn stream_of_several_nodes_keeps_them_apart() {
        let mut text = String::new();
        let mut a = Ctr::host("node-a").conn(1);
        let mut b = Ctr::new("node-b", 7, "/docker/x", "172.17.0.2", 1).conn(1);
        // Interleaved as `kubectl logs -l app=imds-observer` may print them.
        let mut va = a.connect(0);
        va.extend(a.put_token(1));
        va.extend(a.respond(2, 200, 1));
        let mut vb = b.connect(0);
        vb.extend(b.request(1, "GET", "/latest/meta-data/instance-id", false));
        vb.extend(b.respond(2, 200, 64));
        for (x, y) in va.iter().zip(vb.iter()) {
            text.push_str(&serde_json::to_string(x).unwrap());
            text.push('\n');
            text.push_str(&serde_json::to_string(y).unwrap());
            text.push('\n');
        }
        for y in vb.iter().skip(va.len()) {
            text.push_str(&serde_json::to_string(y).unwrap());
            text.push('\n');
        }
        let got = diagnose_stream(text.as_bytes()).unwrap();
        // node-a's hop limit (1) would put node-b's container at risk; it
        // must not be applied there.
        assert!(got.findings.iter().all(|f| f.kind == FindingKind::Healthy), "{:#?}", got.findings);
        assert_eq!(got.findings.len(), 2);
        assert_eq!(exit_code(&got.findings), 0);
    }

    #[test]
    fn shorten_keeps_the_end_and_shortens_ids() {
        assert_eq!(shorten("/system.slice/foo.service", 40), "/system.slice/foo.service");
        assert_eq!(
            shorten("/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", 40),
            "/docker/0123456789ab"
        );
        assert_eq!(shorten("/a/b/c/libpod-0123456789abcdef0123", 22), "…/libpod-0123456789ab");
        assert_eq!(
            shorten("/kubepods/x/cri-containerd-0123456789abcdef0123.scope", 30),
            "…/cri-containerd-0123456789ab"
        );
        assert_eq!(shorten("/averyveryverylongcomponentname", 10).chars().count(), 10);
    }

    #[test]
    fn control_characters_in_names_are_escaped() {
        assert_eq!(escape_controls("a\u{1b}[2Jb\tc\n"), "a\\u{1b}[2Jb\\tc\n");
        let ctr = Ctr::new("node\u{1b}]0;pwned\u{7}", 7, "/evil\u{1b}[31m", "10.0.0.2", 1);
        let mut a = ctr.conn(1);
        let mut v = a.connect(0);
        v.extend(a.put_token(1));
        v.extend(a.respond(2, 200, 1));
        let mut d = Diagnoser::default();
        for e in &v {
            d.observe(e);
        }
        let text = render(&d.findings());
        assert!(text.contains("hop_limit_exceeded"), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{text}");
    }
}
