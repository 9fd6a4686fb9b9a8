//! Screens rendered on ratatui's TestBackend from recorded event sequences
//! (the diagnosis tests' builder), asserting what specific rows say; and the
//! stream reader fed through a pipe and a growing file.
use std::{io::Write, time::Duration};

use ratatui::{
    Terminal,
    backend::TestBackend,
    buffer::Buffer,
    style::{Color, Modifier},
};

use super::{
    app::{App, Mode, SortKey, View},
    input::{Action, KEYS},
    source::{self, Feed, Source},
    ui,
};
use crate::{
    diagnose::{
        Config, Diagnoser, FindingKind,
        tests::{Conn, Ctr, folded, hop_limit_failure},
    },
    model::Event,
};

const LIBPOD: &str = "/libpod_parent/libpod-3f2a9c1b7d4e";
const AGENT: &str = "/system.slice/imds-agent.service";

fn app(events: &[Event]) -> App {
    let mut a = App::new(Config::default(), Mode::Stream, "from test.jsonl");
    for e in events {
        a.feed(Feed::Event(Box::new(e.clone())));
    }
    a
}

/// A host process that gets its token and uses it.
fn host_process(node: &str, flow: u64, at: u64) -> Vec<Event> {
    let mut h = Ctr::host(node).conn(flow);
    let mut v = h.connect(at);
    v.extend(h.put_token(at + 1));
    v.extend(h.respond(at + 2, 200, 1));
    v.extend(h.request(at + 3, "GET", "/latest/meta-data/instance-id", true));
    v.extend(h.respond(at + 4, 200, 1));
    v
}

/// The podman container losing its token reply to hop limit 1, and a host
/// process that is fine.
fn failing_host() -> Vec<Event> {
    let mut v = hop_limit_failure();
    v.extend(host_process("node-a", 50, 2000));
    v
}

fn draw(app: &mut App, w: u16, h: u16) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::render(f, app)).unwrap();
    t.backend().buffer().clone()
}

fn lines(b: &Buffer) -> Vec<String> {
    (0..b.area.height)
        .map(|y| {
            (0..b.area.width).map(|x| b[(x, y)].symbol()).collect::<String>().trim_end().to_string()
        })
        .collect()
}

fn screen(app: &mut App, w: u16, h: u16) -> (Buffer, Vec<String>) {
    let b = draw(app, w, h);
    let l = lines(&b);
    (b, l)
}

fn dump(l: &[String]) -> String {
    l.iter().enumerate().map(|(i, s)| format!("{i:2}|{s}\n")).collect()
}

fn find(l: &[String], needle: &str) -> usize {
    l.iter()
        .position(|s| s.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{}", dump(l)))
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// The style of the first cell of `needle` on row `y`.
fn style_at(b: &Buffer, l: &[String], y: usize, needle: &str) -> ratatui::style::Style {
    let chars: Vec<char> = l[y].chars().collect();
    let n: Vec<char> = needle.chars().collect();
    let x = (0..chars.len()).find(|&i| chars[i..].starts_with(&n)).expect("on the row");
    b[(x as u16, y as u16)].style()
}

fn keys(app: &mut App, actions: &[Action]) {
    for &a in actions {
        assert!(app.handle(a), "{a:?} quit");
    }
}

fn type_text(app: &mut App, s: &str) {
    for c in s.chars() {
        app.handle(Action::Char(c));
    }
}

#[test]
fn table_shows_the_failing_container_first_with_its_numbers() {
    let mut a = app(&failing_host());
    let (b, l) = screen(&mut a, 100, 30);
    assert!(l[0].starts_with("imds-observer · from test.jsonl · "), "{}", dump(&l));
    assert!(l[0].contains(" events · ") && l[0].ends_with("events lost 0"), "{}", l[0]);
    assert_eq!(l[1], "node node-a · uplinks eth0 · hop limit 1");
    assert_eq!(l[2], "2 containers · hop_limit_exceeded 1 · imdsv1_fallback 1 · healthy 1");
    assert!(l[3].starts_with("requests/s") && l[4].starts_with("lost/s"), "{}", dump(&l));
    assert_eq!(
        words(&l[4])[..4],
        ["lost/s", "0", "max", "1"],
        "one token reply lost, in one second"
    );
    // 100 columns: runtime and pod are dropped, the rest fits.
    assert_eq!(
        words(&l[5]),
        ["CONTAINER", "REQ", "PUT", "ok/lost", "IMDSv1", "HOPS", "NEED", "FINDING▼", "SEEN"],
        "{}",
        dump(&l)
    );
    // Worst first, selected: 3 requests, 0 tokens ok / 1 lost, 2 IMDSv1, one
    // hop, needs 2.
    assert_eq!(
        words(&l[6]),
        ["▶", LIBPOD, "3", "0/1", "2", "1", "2", "hop_limit_exceeded", "+1", "now"],
        "{}",
        dump(&l)
    );
    assert_eq!(words(&l[7]), [AGENT, "2", "1/0", "0", "0", "1", "healthy", "now"]);
    assert!(l[8].is_empty());
    assert!(l[29].contains("Enter detail") && l[29].contains("s sort (worst first)"), "{}", l[29]);
    // Coloured by severity; the selection is reversed.
    let hop = style_at(&b, &l, 6, "hop_limit_exceeded");
    assert_eq!(hop.fg, Some(Color::Red));
    assert!(hop.add_modifier.contains(Modifier::REVERSED));
    assert_eq!(style_at(&b, &l, 7, "healthy").fg, Some(Color::Green));
    assert_eq!(style_at(&b, &l, 6, "0/1").fg, Some(Color::Red), "lost token replies in red");
    assert_eq!(style_at(&b, &l, 2, "hop_limit_exceeded 1").fg, Some(Color::Red));
}

#[test]
fn detail_shows_finding_fix_evidence_and_timeline() {
    let mut a = app(&failing_host());
    a.handle(Action::Open);
    assert_eq!(a.view, View::Detail);
    let (b, l) = screen(&mut a, 100, 34);
    // The header stays; the body starts with who it is, in full.
    assert_eq!(l[2], "2 containers · hop_limit_exceeded 1 · imdsv1_fallback 1 · healthy 1");
    assert_eq!(l[3], Ctr::podman().path, "the full label, not shortened");
    assert_eq!(
        l[4],
        "node node-a · cgroup 4242 · forwarding hops 1 · needs hop limit 2 · node's hop limit 1"
    );
    assert_eq!(
        l[5],
        "3 requests (1 token PUTs: 0 ok, 1 lost; 2 IMDSv1, 0 IMDSv2) · last seen just now (stream \
         time)"
    );
    // What is wrong, worst first, coloured.
    assert_eq!(l[7], "hop_limit_exceeded");
    assert_eq!(style_at(&b, &l, 7, "hop_limit_exceeded").fg, Some(Color::Red));
    assert!(
        l[8].starts_with(
            "  1 IMDSv2 token reply reached the host with TTL 1 (the instance's hop limit)"
        ),
        "{}",
        dump(&l)
    );
    let fallback = l.iter().position(|s| s == "imdsv1_fallback").expect("its own line");
    let summary = l[8..fallback].iter().map(|s| s.trim()).collect::<Vec<_>>().join(" ");
    assert!(summary.contains("Raise the hop limit to 2 (the quick fix)"), "{}", dump(&l));
    assert_eq!(l[fallback], "imdsv1_fallback");
    assert_eq!(style_at(&b, &l, fallback, "imdsv1_fallback").fg, Some(Color::Yellow));
    // What to do: the command whole, broken with `\` so that it pastes.
    let fix = find(&l, "FIX: raise the hop limit to 2");
    assert_eq!(l[fix + 1], "  on the running instance:");
    // No id known here: the line that sets it, then the command reading it.
    assert_eq!(l[fix + 2], "  on the node, where its instance id is not known here:");
    // Longer than the screen: broken outside its quotes, never cut.
    assert!(l[fix + 3].starts_with("    INSTANCE_ID=$("), "{}", l[fix + 3]);
    let (get, next) = joined(&l, fix + 3);
    assert_eq!(get, crate::diagnose::GET_INSTANCE_ID, "{}", dump(&l));
    assert!(next > fix + 4, "one line of 196 characters at 100 columns");
    assert!(l[fix + 3..next].iter().all(|x| x.chars().count() < 100), "{}", dump(&l));
    let fix = next - 4;
    assert_eq!(
        l[fix + 4],
        "    aws ec2 modify-instance-metadata-options --instance-id \"$INSTANCE_ID\" \\"
    );
    assert_eq!(l[fix + 5], "        --http-put-response-hop-limit 2 --http-endpoint enabled");
    assert_eq!(l[fix + 6], "  launch template: MetadataOptions.HttpPutResponseHopLimit = 2");
    assert_eq!(
        l[fix + 7],
        "  Karpenter: EC2NodeClass spec.metadataOptions.httpPutResponseHopLimit: 2"
    );
    let then = find(&l, "then, once tokens get through, turn IMDSv1 off:");
    assert_eq!(
        l[then + 1],
        "    aws ec2 modify-instance-metadata-options --instance-id \"$INSTANCE_ID\" --http-tokens required"
    );

    // Evidence and the timeline are below: scroll to the end.
    a.handle(Action::Bottom);
    let (b, l) = screen(&mut a, 100, 30);
    let ev = find(&l, "EVIDENCE");
    assert_eq!(
        l[ev + 1],
        "  hop_limit_exceeded: reply TTL at host 1 · forwarding hops 1 · required hop limit 2"
    );
    assert_eq!(
        l[ev + 2],
        "                      node's hop limit 1 · lost replies 1 · kernel drops 3 · ICMP time exceeded 2"
    );
    assert!(
        l[ev + 3]
            .trim_start()
            .starts_with("time lost 1.0 s · latency p50 1.0 ms, p99 1.0 ms, max 1.0 ms"),
        "{}",
        dump(&l)
    );
    find(&l, "  imdsv1_fallback: forwarding hops 1 · node's hop limit 1 · failed token requests 1");
    let head = find(&l, "TIMELINE (3 exchanges, oldest first)");
    assert_eq!(words(&l[head + 1]), ["TIME", "METHOD", "PATH", "TTL@HOST", "RESULT", "LATENCY"]);
    // The PUT whose reply reached the host with TTL 1 and died there.
    assert_eq!(
        words(&l[head + 2]),
        ["14:13:20.001", "PUT", "/latest/api/token", "1", "dropped", "(TTL", "exceeded)", "-"],
        "{}",
        dump(&l)
    );
    assert_eq!(style_at(&b, &l, head + 2, "dropped").fg, Some(Color::Red));
    // Then the tokenless GETs that worked; long paths keep both ends.
    assert_eq!(
        words(&l[head + 3]),
        [
            "14:13:21.005",
            "GET",
            "/latest/meta-data…rity-credentials/",
            "64",
            "ok,",
            "delivered",
            "1.0",
            "ms"
        ]
    );
    assert!(l[head + 4].contains("/latest/meta-data…dentials/lab-role"), "{}", l[head + 4]);
    assert_eq!(head + 4, 28, "the end of the detail is the last line:\n{}", dump(&l));

    a.handle(Action::Back);
    assert_eq!(a.view, View::Table);
}

#[test]
fn fix_command_is_never_cut_at_80_columns() {
    let mut d = Diagnoser::default();
    let v = failing_host();
    crate::diagnose::tests::feed(&mut d, &v);
    let want = d.findings()[0].fix.clone().unwrap().command;
    let mut a = app(&v);
    a.handle(Action::Open);
    // Scroll until the fix is at the top.
    let mut l = screen(&mut a, 80, 24).1;
    while !l[3].starts_with("FIX") {
        a.handle(Action::Down);
        l = screen(&mut a, 80, 24).1;
        assert!(a.detail_scroll < 30, "no FIX line:\n{}", dump(&l));
    }
    let mut cmd = String::new();
    let start = l.iter().position(|x| x.trim_start().starts_with("aws ec2")).expect("command");
    for line in &l[start..] {
        let t = line.trim();
        cmd.push_str(t.trim_end_matches('\\').trim());
        cmd.push(' ');
        if !t.ends_with('\\') {
            break;
        }
    }
    assert_eq!(cmd.trim(), want);
    assert_eq!(
        l[start],
        "    aws ec2 modify-instance-metadata-options --instance-id \"$INSTANCE_ID\" \\"
    );
}

#[test]
fn eighty_by_twenty_four_drops_less_important_columns() {
    let mut a = app(&failing_host());
    a.source =
        "from /var/log/imds-observer/2026-11-26/ip-10-0-1-17.eu-west-1.compute.internal.jsonl"
            .into();
    let (_, l) = screen(&mut a, 80, 24);
    // A long source gives way to the numbers.
    assert_eq!(
        l[0],
        "imds-observer · from /var/lo…ternal.jsonl · 42 events · 6.0 ev/s · events lost 0"
    );
    assert_eq!(
        words(&l[5]),
        ["CONTAINER", "REQ", "PUT", "ok/lost", "HOPS", "NEED", "FINDING▼"],
        "{}",
        dump(&l)
    );
    assert_eq!(
        words(&l[6]),
        ["▶", "…/libpod-3f2a9c1b7d4e", "3", "0/1", "1", "2", "hop_limit_exceeded", "+1"]
    );
    assert_eq!(words(&l[7]), ["…/imds-agent.service", "2", "1/0", "0", "1", "healthy"]);
    assert!(l[23].starts_with("q quit · ? help · ↑↓ move · Enter detail"), "{}", l[23]);
}

#[test]
fn help_lists_every_key() {
    let mut a = app(&failing_host());
    a.handle(Action::Help);
    let (_, l) = screen(&mut a, 100, 30);
    let top = find(&l, "keys (? or Esc closes)");
    for (k, what) in KEYS {
        let y = find(&l, what);
        assert!(y > top && l[y].contains(k), "{k}: {}", l[y]);
    }
    // Keys other than ?/Esc/q do nothing while it is open.
    a.handle(Action::Down);
    a.handle(Action::Back);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(!l.iter().any(|s| s.contains("keys (? or Esc closes)")));
    assert_eq!(a.cursor(), 0);
    assert!(!a.handle(Action::Quit));
}

#[test]
fn filter_applies_as_typed_and_clears_on_esc() {
    let mut a = app(&failing_host());
    a.handle(Action::Filter);
    type_text(&mut a, "agent");
    let (_, l) = screen(&mut a, 100, 30);
    assert_eq!(l[29], "/agent█   Enter keep · Esc clear");
    assert!(words(&l[6]).starts_with(&["▶", AGENT]) && l[7].is_empty(), "as typed: {}", dump(&l));

    a.handle(Action::Open);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(words(&l[6]).starts_with(&["▶", AGENT]), "{}", dump(&l));
    assert!(l[7].is_empty());
    assert!(l[29].starts_with("q quit · filter \"agent\" · ? help"), "{}", l[29]);
    // The header still counts every container.
    assert!(l[2].starts_with("2 containers"));

    // By finding kind, too; and a filter that matches nothing says so.
    a.handle(Action::Filter);
    for _ in 0.."agent".len() {
        a.handle(Action::Backspace);
    }
    type_text(&mut a, "HOP_limit");
    a.handle(Action::Open);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(words(&l[6]).starts_with(&["▶", LIBPOD]) && l[7].is_empty(), "{}", dump(&l));
    a.handle(Action::Filter);
    type_text(&mut a, "zzz");
    a.handle(Action::Open);
    let (_, l) = screen(&mut a, 100, 30);
    find(&l, "No container matches \"HOP_limitzzz\" (Esc clears the filter).");

    a.handle(Action::Back);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(l[6].contains(LIBPOD) && l[7].contains(AGENT), "{}", dump(&l));
}

#[test]
fn empty_host() {
    let mut a = app(&[]);
    let (_, l) = screen(&mut a, 100, 30);
    assert_eq!(l[1], "no events yet");
    assert_eq!(l[2], "0 containers");
    find(&l, "No metadata traffic seen yet.");
    a.feed(Feed::Skipped);
    a.feed(Feed::End("end of stream".into()));
    let (_, l) = screen(&mut a, 100, 30);
    find(&l, "No metadata traffic in this stream.");
    find(&l, "1 line was not an event.");
    assert!(l[29].ends_with("1 line skipped · end of stream"), "{}", l[29]);
    // Keys on an empty table are harmless.
    keys(&mut a, &[Action::Down, Action::Up, Action::Open, Action::Bottom, Action::Sort]);
    assert_eq!(a.view, View::Table);
}

#[test]
fn healthy_host() {
    let mut v = host_process("node-a", 1, 0);
    let mut c = Ctr::new("node-a", 10, "/docker/app", "172.17.0.2", 1).conn(2);
    v.extend(c.connect(10));
    v.extend(c.put_token(11));
    v.extend(c.respond(12, 200, 2));
    // As the kernel hands it over by default (the uplinks folded into the
    // replies), the node's line is the same.
    let (_, l) = screen(&mut app(&folded(&v)), 100, 30);
    assert_eq!(l[1], "node node-a · uplinks eth0 · hop limit 2");
    let mut a = app(&v);
    let (b, l) = screen(&mut a, 100, 30);
    assert_eq!(l[1], "node node-a · uplinks eth0 · hop limit 2");
    assert_eq!(l[2], "2 containers · healthy 2");
    assert_eq!(words(&l[4])[..4], ["lost/s", "0", "max", "0"]);
    assert!(
        words(&l[6]).starts_with(&["▶", "/docker/app", "1", "1/0", "0", "1", "2", "healthy"]),
        "{}",
        dump(&l)
    );
    assert!(words(&l[7]).starts_with(&[AGENT]));
    for y in 0..b.area.height {
        for x in 0..b.area.width {
            assert_ne!(b[(x, y)].fg, Color::Red, "nothing red on a healthy host:\n{}", dump(&l));
        }
    }
}

#[test]
fn several_nodes_get_a_node_column_and_their_own_hop_limit() {
    let mut v = Vec::new();
    for (node, limit, cg) in [("node-a", 1u8, 10u64), ("node-b", 2, 11)] {
        let mut c = Ctr::new(node, cg, "/docker/app", "172.17.0.2", 1).conn(cg);
        v.extend(c.connect(0));
        v.extend(c.put_token(1));
        v.extend(c.respond(2, 200, limit));
    }
    let mut a = app(&v);
    let (_, l) = screen(&mut a, 100, 30);
    assert_eq!(l[1], "2 nodes · node-a: hop limit 1 (eth0) · node-b: hop limit 2 (eth0)");
    assert!(words(&l[5]).starts_with(&["NODE", "LIMIT", "CONTAINER"]), "{}", dump(&l));
    assert_eq!(words(&l[6])[..5], ["▶", "node-a", "1", "/docker/app", "1"]);
    assert!(l[6].contains("hop_limit_exceeded"));
    assert_eq!(words(&l[7])[..4], ["node-b", "2", "/docker/app", "1"]);
    assert!(l[7].contains("healthy"), "node-a's hop limit is not applied to node-b:\n{}", dump(&l));
    // Filter by node.
    a.handle(Action::Filter);
    type_text(&mut a, "node-b");
    a.handle(Action::Open);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(words(&l[6]).starts_with(&["▶", "node-b"]) && l[7].is_empty());
}

/// #26: `tui --node/--namespace/--pod` (`report`'s flags, by the one
/// struct both flatten) list only those containers, counted as such; with
/// one node left there is no node column.
#[test]
fn node_namespace_and_pod_flags_list_only_those_containers() {
    let only = |args: &[&str]| {
        let all = [&["imds-observer", "tui", "--from", "x"][..], args].concat();
        match crate::cli::Cli::try_parse_env(all).unwrap().command {
            crate::cli::Command::Tui(a) => a.fleet.only,
            _ => unreachable!(),
        }
    };
    // node-a: pods api-7d9f8c-x2x4q and web-1 in prod; node-b: one more api.
    let mut v = Vec::new();
    for (node, cg, pod) in
        [("node-a", 10u64, "api-7d9f8c-x2x4q"), ("node-a", 11, "web-1"), ("node-b", 12, "api-5c4")]
    {
        let who = crate::diagnose::Container {
            pod: Some(pod.into()),
            namespace: Some("prod".into()),
            name: Some("app".into()),
            ..Default::default()
        };
        let mut c = Ctr::new(node, cg, "/docker/app", "172.17.0.2", 1).conn(cg);
        for mut e in [c.connect(0), c.put_token(1), c.respond(2, 200, 1)].concat() {
            if e.cgroup_id.is_some() {
                e.container = Some(who.clone().into());
            }
            v.push(e);
        }
    }
    let listed = |args: &[&str]| {
        let mut a = App::new(Config::default(), Mode::Stream, "from test.jsonl");
        a.only = only(args);
        for e in &v {
            a.feed(Feed::Event(Box::new(e.clone())));
        }
        let (_, l) = screen(&mut a, 100, 30);
        let rows: Vec<String> = l[6..].iter().filter(|r| r.contains("prod/")).cloned().collect();
        (l, rows)
    };
    let (l, rows) = listed(&[]);
    assert_eq!(rows.len(), 3, "{}", dump(&l));
    let (l, rows) = listed(&["--node", "node-b"]);
    assert_eq!(rows.len(), 1, "{}", dump(&l));
    assert!(rows[0].contains("prod/api-5c4/app"), "{}", dump(&l));
    assert!(l[1].starts_with("node node-b"), "one node, no other counted:\n{}", dump(&l));
    assert!(l[2].starts_with("1 container"), "{}", dump(&l));
    assert!(!l[5].contains("NODE"), "{}", dump(&l));
    let (l, rows) = listed(&["--pod", "api", "-n", "prod"]);
    assert_eq!(rows.len(), 2, "{}", dump(&l));
    assert!(rows.iter().all(|r| r.contains("prod/api-")), "{}", dump(&l));
    let (l, rows) = listed(&["--node", "node-a", "--pod", "web"]);
    assert!(rows.len() == 1 && rows[0].contains("prod/web-1/app"), "{}", dump(&l));
    let (l, rows) = listed(&["-n", "dev"]);
    assert!(rows.is_empty(), "{}", dump(&l));
    find(&l, "No container matches --namespace dev yet.");
}

/// #26: the detail says how many nodes share its fix, as `report` groups
/// them (its `fix_groups`): the nodes of one node group whose fixes differ
/// in their ids only; none for a node whose fix is its own.
#[test]
fn detail_says_how_many_nodes_share_the_fix() {
    let mut v = Vec::new();
    for (i, (pool, limit)) in
        [("ng-a", 1u8), ("ng-a", 1), ("ng-a", 1), ("ng-b", 1), ("ng-a", 2)].into_iter().enumerate()
    {
        let node = format!("node-{i}");
        let mut ev = Event::new(
            crate::model::Kind::Node,
            crate::diagnose::tests::time(0),
            node.as_str().into(),
        );
        ev.node_info = Some(Box::new(crate::model::NodeInfo {
            pool: Some(pool.into()),
            instance_id: Some(format!("i-0abc{i:013x}")),
            ..Default::default()
        }));
        v.push(ev);
        let mut c = Ctr::new(&node, 10, "/docker/app", "172.17.0.2", 1).conn(1);
        v.extend(c.connect(0));
        v.extend(c.put_token(1));
        v.extend(c.respond(2, 200, limit));
    }
    let mut a = app(&v);
    let detail = |a: &mut App, node: &str| {
        a.handle(Action::Back);
        a.handle(Action::Back);
        a.handle(Action::Filter);
        type_text(a, node);
        a.handle(Action::Open);
        a.handle(Action::Open);
        let (_, l) = screen(a, 100, 60);
        assert!(l.iter().any(|r| r.contains(node)), "{node}:\n{}", dump(&l));
        l
    };
    let l = detail(&mut a, "node-1");
    let fix = find(&l, "FIX: raise the hop limit to 2");
    assert_eq!(
        l[fix + 1],
        "  the same fix on 3 nodes of node group ng-a, each with its own instance id",
        "{}",
        dump(&l)
    );
    // ng-b's node is alone in its group; node-4 (hop limit 2) is healthy.
    let l = detail(&mut a, "node-3");
    let fix = find(&l, "FIX: raise the hop limit to 2");
    assert!(!l[fix + 1].contains("the same fix"), "{}", dump(&l));
    // Only what --node keeps counts.
    let mut a = app(&[]);
    a.only.nodes = vec!["node-0".into(), "node-1".into()];
    for e in &v {
        a.feed(Feed::Event(Box::new(e.clone())));
    }
    let l = detail(&mut a, "node-1");
    find(&l, "the same fix on 2 nodes of node group ng-a");
}

#[test]
fn no_color_means_no_colour_anywhere() {
    for view in [View::Table, View::Detail] {
        let mut a = app(&failing_host());
        a.no_color = true;
        if view == View::Detail {
            a.handle(Action::Open);
        }
        a.handle(Action::Help);
        let b = draw(&mut a, 80, 24);
        for y in 0..b.area.height {
            for x in 0..b.area.width {
                let c = &b[(x, y)];
                assert_eq!(
                    (c.fg, c.bg),
                    (Color::Reset, Color::Reset),
                    "({x},{y}) in {view:?}:\n{}",
                    dump(&lines(&b))
                );
            }
        }
        // The selection is still visible.
        if view == View::Table {
            a.handle(Action::Help);
            let b = draw(&mut a, 80, 24);
            let l = lines(&b);
            assert!(l[6].starts_with("▶ "));
            assert!(b[(4, 6)].modifier.contains(Modifier::REVERSED));
        }
    }
}

#[test]
fn sort_cycles_and_keeps_the_selection() {
    let mut v = failing_host();
    // A third container with many requests.
    let mut c = Ctr::new("node-a", 20, "/docker/busy", "172.17.0.3", 0).conn(70);
    v.extend(c.connect(3000));
    for i in 0..5 {
        v.extend(c.request(3001 + 2 * i, "GET", "/latest/meta-data/instance-id", false));
        v.extend(c.respond(3002 + 2 * i, 200, 64));
    }
    let mut a = app(&v);
    a.handle(Action::Down);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(l[7].starts_with("▶ /docker/busy"), "{}", dump(&l));
    a.handle(Action::Sort);
    assert_eq!(a.sort, SortKey::Requests);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(l[5].contains("REQ▼") && !l[5].contains("FINDING▼"));
    assert!(
        l[6].starts_with("▶ /docker/busy"),
        "most requests first, still selected:\n{}",
        dump(&l)
    );
    for want in [SortKey::Lost, SortKey::LastSeen, SortKey::Name, SortKey::Worst] {
        a.handle(Action::Sort);
        assert_eq!(a.sort, want);
    }
    let (_, l) = screen(&mut a, 100, 30);
    assert!(l[6].contains(LIBPOD) && l[7].starts_with("▶ /docker/busy"));
}

#[test]
fn pause_holds_new_events_until_resumed() {
    let all = failing_host();
    let (first, rest) = all.split_at(hop_limit_failure().len());
    let mut a = app(first);
    a.handle(Action::Pause);
    for e in rest {
        a.feed(Feed::Event(Box::new(e.clone())));
    }
    let (_, l) = screen(&mut a, 100, 30);
    assert!(l[0].ends_with("· PAUSED"), "{}", l[0]);
    assert!(l[2].starts_with("1 container ·"), "nothing applied while paused:\n{}", dump(&l));
    assert!(l[29].ends_with(&format!("paused: {} held", rest.len())), "{}", l[29]);
    assert!(a.accepting(true) && !a.accepting(false), "a stream is left unread while paused");
    a.handle(Action::Pause);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(l[2].starts_with("2 containers ·") && !l[0].contains("PAUSED"), "{}", dump(&l));
}

#[test]
fn thousands_of_containers_scroll() {
    let mut v = Vec::new();
    for i in 0..3000u64 {
        let mut c = Ctr::new("node-a", 1000 + i, &format!("/docker/c{i:05}"), "172.17.0.2", 1)
            .conn(10_000 + i);
        v.extend(c.connect(i));
        v.extend(c.request(i + 1, "GET", "/latest/meta-data/instance-id", false));
        v.extend(c.respond(i + 2, 200, 64));
    }
    let mut a = app(&v);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(l[2].starts_with("3,000 containers · healthy 3,000"), "{}", l[2]);
    assert!(l[6].starts_with("▶ /docker/c00000"));
    // 30 rows: 3 header, 2 rates, 1 table header, 23 rows, 1 footer.
    assert!(l[28].starts_with("  /docker/c00022"), "{}", dump(&l));
    for _ in 0..30 {
        a.handle(Action::Down);
    }
    let (_, l) = screen(&mut a, 100, 30);
    assert!(
        l[28].starts_with("▶ /docker/c00030"),
        "the selection scrolls into view:\n{}",
        dump(&l)
    );
    a.handle(Action::PageDown);
    a.handle(Action::Bottom);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(l[28].starts_with("▶ /docker/c02999"));
    a.handle(Action::Top);
    let (_, l) = screen(&mut a, 100, 30);
    assert!(l[6].starts_with("▶ /docker/c00000"));
    assert_eq!(a.selected_row().map(|r| r.label.as_str()), Some("/docker/c00000"));
}

#[test]
fn rows_follow_the_engine_as_events_arrive() {
    let v = hop_limit_failure();
    // Up to the token request: the container is known, nothing decided.
    let put = v.iter().position(|e| e.method.as_deref() == Some("PUT")).unwrap();
    let mut a = app(&v[..=put]);
    let (_, l) = screen(&mut a, 100, 30);
    assert_eq!(l[2], "1 container · undecided 1");
    assert_eq!(words(&l[6]), ["▶", LIBPOD, "1", "0/0", "0", "1", "2", "…", "now"]);
    // The reply dies at the host: found at the first drop.
    for e in &v[put + 1..] {
        a.feed(Feed::Event(Box::new(e.clone())));
        if e.kind == crate::model::Kind::Drop {
            break;
        }
    }
    let (_, l) = screen(&mut a, 100, 30);
    assert_eq!(l[2], "1 container · hop_limit_exceeded 1", "{}", dump(&l));
    assert!(l[6].contains("0/1") && l[6].contains("hop_limit_exceeded"));
}

#[test]
fn finding_lines_are_ignored_and_garbage_skipped() {
    assert!(source::classify(b"   \n").is_none());
    assert!(matches!(source::classify(b"not json"), Some(Feed::Skipped)));
    assert!(matches!(
        source::classify(b"{\"type\":\"bogus\",\"ts\":\"x\",\"node\":\"n\"}"),
        Some(Feed::Skipped)
    ));
    let f = r#"{"type":"finding","ts":"2026-01-01T00:00:00Z","node":"n","kind":"healthy","container":{},"summary":"","evidence":{}}"#;
    assert!(matches!(source::classify(f.as_bytes()), Some(Feed::Finding)));
    let e = serde_json::to_string(&hop_limit_failure()[0]).unwrap();
    assert!(matches!(source::classify(e.as_bytes()), Some(Feed::Event(_))));
}

fn json_lines(events: &[Event]) -> String {
    events.iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect()
}

/// Take what the source has until `until` holds (or time runs out).
async fn pump(src: &mut Source, app: &mut App, until: impl Fn(&mut App) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !until(app) {
        let f = tokio::time::timeout_at(deadline, src.recv())
            .await
            .expect("the source delivers in time");
        app.feed(f);
    }
}

fn kinds(app: &mut App) -> Vec<FindingKind> {
    app.prepare();
    app.rows().iter().flat_map(|r| r.kinds.clone()).collect()
}

#[tokio::test]
async fn from_stdin_is_read_as_it_is_written() {
    let (r, mut w) = std::io::pipe().unwrap();
    let mut src = Source::lines(source::spawn_reader(r, false), "stdin");
    let mut a = App::new(Config::default(), Mode::Stream, "stdin");
    let v = hop_limit_failure();
    let put = v.iter().position(|e| e.method.as_deref() == Some("PUT")).unwrap();

    // The connect and the token request, then half a line of the reply.
    let text = json_lines(&v);
    let head = json_lines(&v[..=put]);
    let next = serde_json::to_string(&v[put + 1]).unwrap();
    w.write_all(head.as_bytes()).unwrap();
    w.write_all(&next.as_bytes()[..20]).unwrap();
    w.flush().unwrap();
    pump(&mut src, &mut a, |a| a.events == (put + 1) as u64).await;
    a.prepare();
    assert_eq!(a.rows().len(), 1);
    assert_eq!(a.rows()[0].requests, 1);
    assert!(kinds(&mut a).is_empty(), "nothing decided before the reply");
    assert!(src.try_recv().is_none(), "half a line is not an event yet");

    // The rest: the reply dies at the host.
    w.write_all(&text.as_bytes()[head.len() + 20..]).unwrap();
    w.write_all(b"garbage\n").unwrap();
    w.flush().unwrap();
    pump(&mut src, &mut a, |a| a.events == v.len() as u64 && a.skipped == 1).await;
    assert_eq!(kinds(&mut a), [FindingKind::HopLimitExceeded, FindingKind::Imdsv1Fallback]);
    assert!(a.ended.is_none());

    drop(w);
    pump(&mut src, &mut a, |a| a.ended.is_some()).await;
    assert_eq!(a.ended.as_deref(), Some("end of stream"));
    assert!(src.ended());
}

#[tokio::test]
async fn a_file_is_followed_like_tail_f() {
    let dir = std::env::temp_dir().join(format!("imds-tui-follow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.jsonl");
    let v = hop_limit_failure();
    let half = v.len() / 2;
    std::fs::write(&path, json_lines(&v[..half])).unwrap();

    let mut src = Source::lines(
        source::spawn_reader(std::fs::File::open(&path).unwrap(), true),
        "events.jsonl",
    );
    let mut a = App::new(Config::default(), Mode::Stream, "events.jsonl");
    pump(&mut src, &mut a, |a| a.events == half as u64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(src.try_recv().is_none() && !src.ended(), "end of file is not the end of the stream");

    // Appended, the last line without its newline yet.
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    let rest = json_lines(&v[half..]);
    f.write_all(rest.trim_end().as_bytes()).unwrap();
    f.flush().unwrap();
    pump(&mut src, &mut a, |a| a.events == v.len() as u64).await;
    assert_eq!(kinds(&mut a)[0], FindingKind::HopLimitExceeded);
    f.write_all(b"\n").unwrap();
    drop(src);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A command shown from line `at`, its `\\` continuations joined; and the
/// index of the line after it.
fn joined(l: &[String], at: usize) -> (String, usize) {
    let mut cmd = String::new();
    for (i, line) in l.iter().enumerate().skip(at) {
        let t = line.trim();
        match t.strip_suffix(" \\") {
            Some(head) => {
                cmd.push_str(head);
                cmd.push(' ');
            }
            None => {
                cmd.push_str(t);
                return (cmd, i + 1);
            }
        }
    }
    panic!("a continuation at the end of the screen: {cmd}")
}

#[test]
fn command_lines_break_at_options_and_keep_everything() {
    let cmd = "aws ec2 modify-instance-metadata-options --instance-id i-0123456789abcdef0 --http-put-response-hop-limit 2 --http-endpoint enabled";
    let l = crate::sink::report::command_lines(cmd, 50);
    assert_eq!(
        l,
        [
            "aws ec2 modify-instance-metadata-options \\",
            "    --instance-id i-0123456789abcdef0 \\",
            "    --http-put-response-hop-limit 2 \\",
            "    --http-endpoint enabled"
        ]
    );
    assert_eq!(crate::sink::report::command_lines(cmd, 200), [cmd]);
    // Never inside quotes: each line's quotes pair up, and the lines joined
    // are the command again.
    let get = crate::diagnose::GET_INSTANCE_ID;
    for w in [30, 60, 75, 95] {
        let l = crate::sink::report::command_lines(get, w);
        assert!(l.len() > 1, "{w}");
        for x in &l {
            assert!(x.matches('\'').count() % 2 == 0 && x.matches('"').count() % 2 == 0, "{x}");
        }
        let all: Vec<String> = l.iter().map(|x| format!("    {x}")).collect();
        assert_eq!(joined(&all, 0), (get.to_string(), l.len()), "{w}");
    }
    // Where every word fits, every line does.
    for x in crate::sink::report::command_lines(get, 75) {
        assert!(x.chars().count() <= 75, "{x}");
    }
    assert_eq!(ui::wrap("a bb ccc", 8), ["a bb ccc"]);
    assert_eq!(ui::thousands(1_234_567), "1,234,567");
}

#[test]
fn a_tiny_terminal_says_so() {
    let mut a = app(&failing_host());
    let (_, l) = screen(&mut a, 30, 8);
    assert!(l[0].starts_with("imds-observer: the terminal"), "{}", dump(&l));
}

#[test]
fn the_conn_builder_still_matches_the_engine() {
    // Guards the fixtures above: a Conn from the diagnosis tests, with the
    // reply TTL the timeline shows.
    let mut d = Diagnoser::default();
    let mut c = Conn::new(Ctr::podman(), 1, "169.254.169.254:80");
    let mut v = c.connect(0);
    v.extend(c.put_token(1));
    v.extend(c.respond(2, 200, 1));
    crate::diagnose::tests::feed(&mut d, &v);
    let view = d.container("node-a", 4242).unwrap();
    assert_eq!(view.timeline()[0].reply_ttl_at_host, Some(1));
    assert_eq!((view.tokens_ok(), view.tokens_lost()), (0, 1));
}

#[test]
fn identity_fills_runtime_and_pod_columns_and_is_learned_late() {
    let who = crate::diagnose::Container {
        id: Some("3f2a9c1b7d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd".into()),
        name: Some("web".into()),
        runtime: Some("containerd".into()),
        image: Some("shop/web:1.27".into()),
        pod: Some("web-7d9c4".into()),
        namespace: Some("shop".into()),
        ..Default::default()
    };
    let v = failing_host();
    let n = hop_limit_failure().len();
    // The pod's name arrives with its later events only (an API lookup).
    let v: Vec<Event> = v
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            if i >= 10 && i < n {
                e.container = Some(who.clone().into());
            }
            e
        })
        .collect();
    let mut a = app(&v);
    let (_, l) = screen(&mut a, 120, 30);
    assert_eq!(
        words(&l[5]),
        [
            "CONTAINER",
            "RUNTIME",
            "POD/TASK",
            "REQ",
            "PUT",
            "ok/lost",
            "IMDSv1",
            "HOPS",
            "NEED",
            "FINDING▼",
            "SEEN"
        ],
        "{}",
        dump(&l)
    );
    assert_eq!(
        words(&l[6])[..5],
        // The report's label: namespace/pod/container.
        ["▶", "shop/web-7d9c4/web", "containerd", "shop/web-7d9c4", "3"],
        "{}",
        dump(&l)
    );
    assert_eq!(words(&l[7])[..4], ["…/imds-agent.service", "-", "-", "2"]);
    // Narrower, the runtime goes first, then the age and IMDSv1 count.
    let (_, l) = screen(&mut a, 100, 30);
    assert_eq!(words(&l[5])[..3], ["CONTAINER", "POD/TASK", "REQ"], "{}", dump(&l));
    // The filter matches the pod, the image and the cgroup path too.
    for needle in ["web-7d9", "shop/web:1", "libpod_parent"] {
        a.handle(Action::Filter);
        a.editing = Some(needle.into());
        a.handle(Action::Open);
        let (_, l) = screen(&mut a, 100, 30);
        assert!(
            l[6].starts_with("▶ shop/web-7d9c4/web ") && l[7].is_empty(),
            "{needle}:\n{}",
            dump(&l)
        );
    }
    a.handle(Action::Back);
    a.handle(Action::Open);
    let (_, l) = screen(&mut a, 100, 30);
    assert_eq!(l[3], "shop/web-7d9c4/web");
    assert_eq!(l[4], "runtime containerd · workload shop/web-7d9c4 · image shop/web:1.27");
    assert_eq!(l[5], "id 3f2a9c1b7d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd");
    assert_eq!(l[6], format!("cgroup {}", Ctr::podman().path));
}

#[test]
fn a_fleet_header_counts_nodes_per_hop_limit() {
    let mut v = Vec::new();
    for (i, limit) in [1u8, 1, 2, 1, 2].into_iter().enumerate() {
        let mut c = Ctr::new(&format!("node-{i}"), 10, "/docker/app", "172.17.0.2", 1).conn(1);
        v.extend(c.connect(0));
        v.extend(c.put_token(1));
        v.extend(c.respond(2, 200, limit));
    }
    let mut a = app(&v);
    let (_, l) = screen(&mut a, 100, 30);
    assert_eq!(l[1], "5 nodes · hop limit 1 on 3 nodes · hop limit 2 on 2 nodes");
    assert_eq!(l[2], "5 containers · hop_limit_exceeded 3 · healthy 2");
    assert_eq!(words(&l[6])[..3], ["▶", "node-0", "1"], "{}", dump(&l));
}

#[tokio::test]
async fn a_line_longer_than_the_limit_is_skipped_whole() {
    let v = hop_limit_failure();
    let mut input = vec![b'x'; 3 * crate::model::MAX_LINE];
    input.push(b'\n');
    input.extend_from_slice(json_lines(&v[..1]).as_bytes());
    let mut rx = source::spawn_reader(std::io::Cursor::new(input), false);
    assert!(matches!(rx.recv().await, Some(Feed::Skipped)));
    assert!(matches!(rx.recv().await, Some(Feed::Event(_))), "the next line is read");
    assert!(matches!(rx.recv().await, Some(Feed::End(_))));
}

/// #26 item 8: the filter matches what `?` says it does, each of them.
#[test]
fn filter_matches_what_the_help_says() {
    let help = crate::tui::input::KEYS.iter().find(|(k, _)| *k == "/").unwrap().1;
    for (field, needle, row) in [
        ("name", "libpod-3f2a", LIBPOD),
        ("cgroup", "imds-agent.service", AGENT),
        ("node", "node-a", LIBPOD),
        ("finding", "imdsv1_fallback", LIBPOD),
    ] {
        assert!(help.contains(field), "{field}: {help}");
        let mut a = app(&failing_host());
        a.handle(Action::Filter);
        type_text(&mut a, needle);
        let (_, l) = screen(&mut a, 100, 30);
        assert!(l[6].contains(row), "{field} {needle:?}:\n{}", dump(&l));
    }
    // And nothing it does not name: a finding's fix text is not searched.
    let mut a = app(&failing_host());
    a.handle(Action::Filter);
    type_text(&mut a, "modify-instance-metadata-options");
    let (_, l) = screen(&mut a, 100, 30);
    find(&l, "No container matches");
}

/// #26 item 10: `q quit` stays on screen at 80 columns, in both views.
#[test]
fn quit_is_visible_at_80_columns() {
    let mut a = app(&failing_host());
    let (_, l) = screen(&mut a, 80, 24);
    assert!(l[23].contains("q quit"), "{}", dump(&l));
    a.handle(Action::Filter);
    type_text(&mut a, "podman");
    a.handle(Action::Open);
    a.handle(Action::Open);
    let (_, l) = screen(&mut a, 80, 24);
    assert!(l[23].contains("q quit") && l[23].contains("filter"), "{}", dump(&l));
    // A filter as long as a node's whole name, and a status: still there.
    a.handle(Action::Back);
    a.handle(Action::Back);
    a.handle(Action::Filter);
    type_text(&mut a, "ip-10-0-3-36.us-west-2.compute.internal");
    a.handle(Action::Open);
    a.log = Some("fix copied to the clipboard (OSC 52)".into());
    let (_, l) = screen(&mut a, 80, 24);
    assert!(l[23].starts_with("q quit · filter \"ip-10-0-"), "{}", dump(&l));
}

/// #26 item 10: `c` hands the selected container's fix to the terminal.
#[test]
fn copy_key_takes_the_fix_of_the_container_on_screen() {
    let mut a = app(&failing_host());
    keys(&mut a, &[Action::Copy]);
    let fix = a.clipboard.take().expect("the failing container's fix");
    // No id known: the line that sets it, then the command, each whole.
    let (get, cmd) = fix.split_once('\n').expect("two lines");
    assert_eq!(get, crate::diagnose::GET_INSTANCE_ID);
    assert!(cmd.starts_with("aws ec2 modify-instance-metadata-options"), "{fix}");
    assert!(cmd.contains(" --instance-id \"$INSTANCE_ID\" ") && !cmd.contains('\n'), "{fix}");
    assert_eq!(a.log.as_deref(), Some("fix copied to the clipboard (OSC 52)"));
    // The healthy one has none to copy, and says so.
    keys(&mut a, &[Action::Down, Action::Copy]);
    assert!(a.clipboard.is_none());
    assert_eq!(a.log.as_deref(), Some("no fix to copy for this container"));
}

/// #26 item 10: with a stream, ages are the stream's, and say so.
#[test]
fn stream_ages_are_labelled_stream_time() {
    let mut a = app(&failing_host());
    a.handle(Action::Help);
    let (_, l) = screen(&mut a, 100, 30);
    find(&l, "SEEN is stream time");
}
