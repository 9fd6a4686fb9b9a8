//! The TUI in a real terminal: tmux runs it (100x30; the generated fleet
//! at 80x24 and 200x50), keys go in with
//! `send-keys`, the screen comes out with `capture-pane`. On a recorded
//! stream (no root), on a stream being written to its stdin, and live in
//! the lab (root).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use imds_lab::{Attach, IMDS_V4, Lab, LabOpts, bin, fleet};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const APP: &str = "/kubepods.slice/kubepods-besteffort.slice/cri-containerd-3f2a9c1b7d4e.scope";
/// What the identity lookup says about APP, shown instead of its path.
const POD: &str = "shop/web-7d9c4";
const AGENT: &str = "/system.slice/imds-agent.service";
/// How the table shows AGENT when the pod column takes room.
const AGENT_SHOWN: &str = "…/imds-agent.service";

/// A tmux server of its own (not the user's), killed on drop, also when
/// the test fails.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    /// A 100x30 session running a plain shell with a known prompt.
    fn new(name: &str) -> Tmux {
        Tmux::sized(name, 100, 30)
    }

    /// A `width`x`height` session running a plain shell with a known
    /// prompt; OSC 52 from the program there fills tmux's paste buffer.
    fn sized(name: &str, width: u16, height: u16) -> Tmux {
        let t = Tmux {
            socket: format!("imds-tui-{}-{name}", std::process::id()),
            session: "tui".into(),
        };
        t.tmux(&["kill-server"]).ok();
        let out = t
            .tmux(&[
                "new-session",
                "-d",
                "-s",
                &t.session,
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
                "env PS1='tui-test$ ' sh",
            ])
            .expect("tmux is installed (CI setup installs it)");
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        let out = t.tmux(&["set-option", "-s", "set-clipboard", "on"]).expect("tmux set-option");
        assert!(out.status.success(), "set-clipboard: {}", String::from_utf8_lossy(&out.stderr));
        t.wait_for("the shell prompt", |s| s.contains("tui-test$"));
        t
    }

    fn tmux(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output()
    }

    /// Type a command line and run it.
    fn run(&self, line: &str) {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        let out = self.tmux(&args).expect("tmux send-keys");
        assert!(
            out.status.success(),
            "send-keys {keys:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Keys sent back to back can merge (Esc then `/` reads as Alt-/).
        thread::sleep(Duration::from_millis(150));
    }

    fn screen(&self) -> String {
        self.capture(&[])
    }

    /// The screen with the lines the terminal wrapped joined again: a
    /// command line longer than the pane (a clone in a long path) stays
    /// one line.
    fn screen_joined(&self) -> String {
        self.capture(&["-J"])
    }

    fn capture(&self, opts: &[&str]) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", &self.session];
        args.extend_from_slice(opts);
        let out = self.tmux(&args).expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn display(&self, format: &str) -> String {
        let out = self
            .tmux(&["display-message", "-p", "-t", &self.session, format])
            .expect("tmux display");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the screen:\n{s}");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of the program the shell runs in the foreground.
    fn child_pid(&self) -> u32 {
        let shell = self.display("#{pane_pid}");
        let children = fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        children.split_whitespace().next().expect("a foreground program").parse().unwrap()
    }

    /// After the TUI: the normal screen, the command line it was started
    /// from, its exit status, and a shell that echoes typed input again.
    fn assert_restored(&self, status: &str) {
        self.wait_for("the shell after the TUI", |s| s.contains(&format!("exit={status}")));
        let s = self.screen_joined();
        assert_eq!(self.display("#{alternate_on}"), "0", "still on the alternate screen:\n{s}");
        assert_eq!(self.display("#{cursor_flag}"), "1", "the cursor is still hidden");
        assert!(s.contains("imds-observer tui"), "the command line is back:\n{s}");
        assert!(!s.contains("CONTAINER") && !s.contains("FINDING"), "TUI leftovers:\n{s}");
        self.run("echo restored-$((40+2))");
        self.wait_for("echo in cooked mode", |s| s.contains("restored-42"));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("imds-tui-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn ts(ms: u64) -> String {
    // 2026-11-26T20:54:00Z + ms
    let (s, ms) = (ms / 1000, ms % 1000);
    format!("2026-11-26T20:{:02}:{:02}.{ms:03}000Z", 54 + s / 60, s % 60)
}

/// One TCP connection from a cgroup `hops` forwarding hops behind the
/// uplink (masquerade NAT), as `imds-observer run` writes it (docs/events.md).
struct Conn {
    flow: u64,
    cg: u64,
    path: &'static str,
    hops: u8,
    cseq: u32,
    sseq: u32,
}

impl Conn {
    fn new(flow: u64, cg: u64, path: &'static str, hops: u8) -> Conn {
        Conn {
            flow,
            cg,
            path,
            hops,
            cseq: 1000 + flow as u32 * 7919,
            sseq: 5_000_000 + flow as u32 * 10,
        }
    }

    fn ev(&self, kind: &str, ms: u64) -> Value {
        let mut e = json!({
            "type": kind, "ts": ts(ms), "node": "ip-10-0-1-17", "flow": self.flow,
            "cgroup_id": self.cg, "cgroup": self.path, "proto": "tcp",
        });
        if self.path == APP {
            e["container"] = json!({
                "runtime": "containerd", "id": "3f2a9c1b7d4e", "name": "web",
                "pod": "web-7d9c4", "namespace": "shop", "cgroup": APP, "cgroup_id": self.cg,
            });
        }
        if kind == "host_ingress" || kind == "host_egress" {
            e["iface"] = json!("ens5");
        } else {
            e["pid"] = json!(4242);
            e["comm"] = json!("python3");
        }
        e
    }

    /// A packet the client sends: at its socket, then leaving the uplink.
    fn send(
        &mut self,
        ms: u64,
        flags: &str,
        len: u32,
        http: Option<(&str, &str, bool)>,
    ) -> Vec<Value> {
        let mut v = Vec::new();
        for (kind, ttl) in [("request", 64), ("host_egress", 64 - self.hops)] {
            let mut e = self.ev(kind, ms);
            e["src"] = json!("10.0.1.33:41644");
            e["dst"] = json!("169.254.169.254:80");
            e["ttl"] = json!(ttl);
            e["tcp_flags"] = json!(flags);
            e["seq"] = json!(self.cseq);
            e["ack"] = json!(if flags == "SYN" { 0 } else { self.sseq });
            e["len"] = json!(len);
            if let Some((method, path, token)) = http {
                e["method"] = json!(method);
                e["path"] = json!(path);
                e["token_header"] = json!(token);
                e["token_ttl_header"] = json!(method == "PUT");
            }
            v.push(e);
        }
        self.cseq =
            self.cseq.wrapping_add(len + u32::from(flags.contains("SYN") || flags.contains("FIN")));
        v
    }

    /// A packet from the endpoint reaching the uplink with `ttl`: delivered
    /// if it survives the hops, else dropped by the host (plus its ICMP).
    fn receive(
        &mut self,
        ms: u64,
        flags: &str,
        len: u32,
        status: Option<u16>,
        ttl: u8,
    ) -> Vec<Value> {
        let mut hi = self.ev("host_ingress", ms);
        hi["src"] = json!("169.254.169.254:80");
        hi["dst"] = json!("10.0.1.33:41644");
        hi["ttl"] = json!(ttl);
        hi["tcp_flags"] = json!(flags);
        hi["seq"] = json!(self.sseq);
        hi["ack"] = json!(self.cseq);
        hi["len"] = json!(len);
        if let Some(s) = status {
            hi["status"] = json!(s);
        }
        let mut v = vec![hi.clone()];
        if ttl > self.hops {
            let mut r = hi;
            r["type"] = json!("reply");
            r["ttl"] = json!(ttl - self.hops);
            r["pid"] = json!(4242);
            r.as_object_mut().unwrap().remove("iface");
            v.push(r);
            self.sseq = self.sseq.wrapping_add(len.max(u32::from(flags.contains("SYN"))));
        } else {
            let mut d = hi.clone();
            d["type"] = json!("drop");
            d["reason"] = json!("IP_INHDR");
            d.as_object_mut().unwrap().remove("iface");
            let mut icmp = d.clone();
            icmp["ts"] = json!(ts(ms + 1));
            icmp["reason"] = json!("TTL_EXCEEDED");
            icmp["via"] = json!("icmp_time_exceeded");
            v.extend([d, icmp]);
        }
        v
    }

    fn connect(&mut self, ms: u64) -> Vec<Value> {
        let mut v = self.send(ms, "SYN", 0, None);
        v.extend(self.receive(ms, "SYN|ACK", 0, None, 64));
        v
    }
}

/// botocore in a pod one hop behind the uplink, hop limit 1: the token
/// reply dies at the host (twice: a retransmission), the SDK gives up after
/// a second and goes on without a token. Plus a host agent that is fine.
fn hop_limit_failure() -> Vec<Value> {
    let mut a = Conn::new(11, 1108, APP, 1);
    let mut v = a.connect(0);
    let put = a.send(1, "PSH|ACK", 120, Some(("PUT", "/latest/api/token", false)));
    v.extend(put);
    v.extend(a.receive(2, "PSH|ACK", 56, Some(200), 1));
    v.extend(a.receive(205, "PSH|ACK", 56, Some(200), 1));
    v.extend(a.send(1001, "FIN|ACK", 0, None));
    let mut b = Conn::new(12, 1108, APP, 1);
    v.extend(b.connect(1003));
    v.extend(b.send(
        1005,
        "PSH|ACK",
        120,
        Some(("GET", "/latest/meta-data/iam/security-credentials/", false)),
    ));
    v.extend(b.receive(1006, "PSH|ACK", 56, Some(200), 64));
    let mut h = Conn::new(50, 7, AGENT, 0);
    v.extend(h.connect(2000));
    v.extend(h.send(2001, "PSH|ACK", 120, Some(("PUT", "/latest/api/token", false))));
    v.extend(h.receive(2002, "PSH|ACK", 56, Some(200), 1));
    v
}

fn jsonl(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn observer() -> String {
    bin("imds-observer").display().to_string()
}

fn row<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle}:\n{screen}"))
}

/// The same traffic as `run` writes it by default (`--events problems`):
/// findings, the exchanges that went wrong, summaries; no packet.
fn as_deployed(packets: &[Value]) -> String {
    use imds_observer::{
        diagnose::{Config, Diagnoser, Exchanges},
        model::{Event, Line},
    };
    let mut d = Diagnoser::new(Config { exchanges: Exchanges::Problems, ..Default::default() });
    let mut out = String::new();
    let mut records = Vec::new();
    let write = |records: &mut Vec<Event>, findings: Vec<_>, out: &mut String| {
        for r in records.drain(..) {
            *out += &format!("{}\n", serde_json::to_string(&r).unwrap());
        }
        for f in findings {
            *out += &format!("{}\n", serde_json::to_string(&f).unwrap());
        }
    };
    let mut last = None;
    for p in packets {
        let Some(Line::Event(ev)) = Line::parse(p.to_string().as_bytes()) else {
            panic!("not an event: {p}")
        };
        let found = d.observe(&ev);
        d.drain(&mut records);
        write(&mut records, found, &mut out);
        last = Some(ev.ts);
    }
    let found = d.tick(last.unwrap() + Duration::from_secs(10));
    d.drain(&mut records);
    d.summaries(true, &mut records);
    write(&mut records, found, &mut out);
    out
}

#[test]
fn recorded_stream_failing_container_detail_filter_and_quit() {
    let text = jsonl(&hop_limit_failure());
    recorded_stream_shows_the_failure("recorded", text);
}

#[test]
fn recorded_stream_at_the_default_level_shows_the_same() {
    let text = as_deployed(&hop_limit_failure());
    assert!(text.contains("\"type\":\"exchange\"") && !text.contains("\"type\":\"request\""));
    recorded_stream_shows_the_failure("deployed", text);
}

fn recorded_stream_shows_the_failure(name: &str, mut text: String) {
    let dir = tempdir(name);
    let file = dir.join("capture.jsonl");
    // A finding line and garbage, as `run` output and `kubectl logs` carry.
    text.push_str("{\"type\":\"finding\",\"kind\":\"healthy\"}\nnot json\n");
    fs::write(&file, text).unwrap();

    let t = Tmux::new(name);
    t.run(&format!("{} tui --from {}; echo exit=$?", observer(), file.display()));
    let s = t.wait_for("the failing container", |s| {
        s.contains("hop_limit_exceeded") && s.contains("healthy")
    });
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines[0].starts_with("imds-observer · from ") && lines[0].contains("events lost 0"),
        "{s}"
    );
    assert_eq!(lines[1], "node ip-10-0-1-17 · uplinks ens5 · hop limit 1", "{s}");
    assert!(
        lines[2].starts_with("2 containers · hop_limit_exceeded 1 · imdsv1_fallback 1 · healthy 1"),
        "{s}"
    );
    // Worst first, selected: the pod, 1 token PUT lost, 1 hop, needs 2.
    let app = row(&s, "hop_limit_exceeded +1");
    let cells: Vec<&str> = app.split_whitespace().collect();
    assert_eq!(
        cells[..8],
        ["▶", "shop/web-7d9c4/web", POD, "2", "0/1", "1", "1", "2"],
        "REQ, PUT ok/lost, IMDSv1, HOPS, NEED:\n{s}"
    );
    assert!(row(&s, AGENT_SHOWN).contains("healthy"));
    assert!(s.contains("1 line skipped"), "the garbage line is counted:\n{s}");

    // Enter: the detail, with the fix ready to copy.
    t.keys(&["Enter"]);
    let s = t.wait_for("the detail", |s| s.contains("FIX: raise the hop limit to 2"));
    assert!(s.contains("runtime containerd · workload shop/web-7d9c4"), "{s}");
    assert!(s.contains(&format!("cgroup {APP}")), "{s}");
    assert!(s.contains("1 IMDSv2 token reply reached the host with TTL 1"), "{s}");
    // No instance id in the recording: the fix sets it on the node first.
    assert!(s.contains("    INSTANCE_ID=$(TOKEN=$(curl -sX PUT http://169.254.169.254/"), "{s}");
    assert!(
        s.contains(
            "    aws ec2 modify-instance-metadata-options --instance-id \"$INSTANCE_ID\" \\\n"
        ),
        "{s}"
    );
    assert!(s.contains("        --http-put-response-hop-limit 2 --http-endpoint enabled\n"), "{s}");
    t.keys(&["G"]);
    let s = t.wait_for("the timeline", |s| s.contains("TIMELINE"));
    let put = row(&s, "PUT    /latest/api/token");
    assert!(put.contains(" 1 dropped (TTL exceeded)"), "reply TTL at host 1, dropped:\n{s}");

    // Esc back; `/` filters as typed (Enter keeps it), Esc clears.
    t.keys(&["Escape"]);
    t.wait_for("the table", |s| s.contains("FINDING▼"));
    t.keys(&["/"]);
    t.keys(&["-l", "agent"]);
    t.wait_for("the filter prompt", |s| s.lines().last().is_some_and(|l| l.starts_with("/agent█")));
    t.keys(&["Enter"]);
    let s =
        t.wait_for("the filtered table", |s| s.contains("filter \"agent\"") && !s.contains(POD));
    assert!(row(&s, AGENT_SHOWN).starts_with("▶ "), "{s}");
    t.keys(&["Escape"]);
    t.wait_for("the filter cleared", |s| {
        s.contains(POD) && s.contains(AGENT_SHOWN) && !s.contains("filter \"")
    });

    // `q` quits and gives the terminal back.
    t.keys(&["q"]);
    t.assert_restored("0");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_restores_the_terminal() {
    let dir = tempdir("sigterm");
    let file = dir.join("capture.jsonl");
    fs::write(&file, jsonl(&hop_limit_failure())).unwrap();
    let t = Tmux::new("sigterm");
    t.run(&format!("{} tui --from {}; echo exit=$?", observer(), file.display()));
    t.wait_for("the TUI", |s| s.contains("hop_limit_exceeded"));
    let pid = t.child_pid();
    assert_eq!(fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim(), "imds-observer");
    let st = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(st.success());
    t.assert_restored("0");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_is_named_before_the_screen_is_taken() {
    let dir = tempdir("dir");
    let t = Tmux::new("dir");
    t.run(&format!("{} tui --from {}; echo exit=$?", observer(), dir.display()));
    let screen = t.wait_for("the error", |s| s.contains("exit="));
    assert!(screen.contains(&format!("reading {}: it is a directory", dir.display())), "{screen}");
    assert!(screen.contains("exit=2"), "{screen}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn closing_the_terminal_ends_the_tui() {
    let dir = tempdir("hangup");
    let file = dir.join("capture.jsonl");
    fs::write(&file, jsonl(&hop_limit_failure())).unwrap();
    let t = Tmux::new("hangup");
    t.run(&format!("{} tui --from {}", observer(), file.display()));
    t.wait_for("the TUI", |s| s.contains("hop_limit_exceeded"));
    let pid = t.child_pid();
    // The window goes away (SIGHUP may or may not reach the TUI).
    drop(t);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::metadata(format!("/proc/{pid}")).is_ok() {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("the TUI (pid {pid}) outlived its terminal: {state}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stdin_stream_is_shown_as_it_is_written() {
    let dir = tempdir("stdin");
    let fifo = dir.join("events.fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    let events = hop_limit_failure();
    // Up to the token request: the pod is known, nothing decided yet.
    let put = events.iter().position(|e| e["method"] == "PUT").unwrap() + 1;

    let t = Tmux::new("stdin");
    t.run(&format!("{} tui --from - < {}; echo exit=$?", observer(), fifo.display()));
    // Opening blocks until the shell has opened the fifo for the TUI.
    let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(jsonl(&events[..put]).as_bytes()).unwrap();
    w.flush().unwrap();
    let s = t.wait_for("the pod, undecided", |s| s.contains(POD));
    assert!(s.contains("1 container · undecided 1"), "{s}");
    assert!(s.contains("from stdin"), "{s}");

    w.write_all(jsonl(&events[put..]).as_bytes()).unwrap();
    w.flush().unwrap();
    let s =
        t.wait_for("the finding", |s| s.contains("hop_limit_exceeded") && s.contains(AGENT_SHOWN));
    assert!(!s.contains("end of stream"), "still open:\n{s}");
    drop(w);
    t.wait_for("the end of the stream", |s| s.contains("end of stream"));
    // Keys still come from the terminal although stdin is the stream.
    t.keys(&["q"]);
    t.assert_restored("0");
    fs::remove_dir_all(&dir).unwrap();
}

/// Live in the lab: the TUI captures in the host netns while a container
/// one hop away runs botocore against hop limit 1.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn live_in_the_lab_shows_the_failure_as_it_happens() {
    let mut lab = Lab::new(LabOpts::default());
    let c = lab.add_container("app", Attach::Routed);
    let t = Tmux::new("live");
    t.run(&format!("nsenter --net=/run/netns/{} {} tui; echo exit=$?", lab.host, observer()));
    // The capture logs "capturing" (to the status line) once attached.
    t.wait_for("the capture", |s| s.contains("· live on ") && s.contains("capturing"));
    c.sdk("botocore", &format!("http://{IMDS_V4}"));
    let label = c.cgroup_rel();
    let s = t.wait_for("the failing container", |s| {
        s.contains("hop_limit_exceeded") && s.contains(&label)
    });
    assert!(s.contains("hop limit 1"), "{s}");
    t.keys(&["Enter"]);
    t.wait_for("the fix", |s| s.contains("--http-put-response-hop-limit 2"));
    t.keys(&["q"]);
    t.assert_restored("0");
    drop(lab);
}

/// #26: the generated fleet (100 EKS-named nodes, 3 containers a pod) in a
/// terminal of `width`x`height`: every row of the table, paged through,
/// names its node and container so that no two distinct ones read alike;
/// a node's detail shows its own instance id in its fix and no other's, or
/// `"$INSTANCE_ID"` after the line that sets it, and how many nodes share
/// that fix (as `report` groups them); no fix line is cut at the screen's
/// edge; `c` copies the whole command; `q quit` stays in view.
fn fleet_in(width: u16, height: u16) {
    let name = format!("fleet{width}");
    let dir = tempdir(&name);
    let file = dir.join("fleet.jsonl");
    fs::write(&file, fleet::stream()).unwrap();
    let t = Tmux::sized(&name, width, height);
    t.run(&format!("{} tui --from {}; echo exit=$?", observer(), file.display()));
    let rows = fleet::NODES * fleet::CONTAINERS.len();
    let s = t.wait_for("the fleet", |s| {
        s.contains(&format!("{rows} containers · hop_limit_exceeded {rows}"))
    });
    // The domain every node shares, stated once, in the header.
    assert_eq!(s.matches(fleet::DOMAIN).count(), 1, "{s}");
    assert!(s.contains(&format!("{} nodes (names end in {})", fleet::NODES, fleet::DOMAIN)), "{s}");

    // Page through the table; row i of the sorted list is where the
    // selection (at the cursor, PgDn moves it a page) says it is.
    let mut shown: Vec<Option<(String, String)>> = vec![None; rows];
    let mut cursor = 0;
    loop {
        let s = t.screen();
        let lines: Vec<Vec<char>> = s.lines().map(|l| l.chars().collect()).collect();
        assert!(s.lines().last().unwrap().contains("q quit"), "{s}");
        assert!(lines.iter().all(|l| l.len() <= width as usize));
        let h = s.lines().position(|l| l.contains("NODE") && l.contains("CONTAINER")).unwrap();
        let header = &lines[h];
        let at = |name: &str| {
            let n: Vec<char> = name.chars().collect();
            header.windows(n.len()).position(|w| w == n.as_slice()).unwrap()
        };
        let cont = at("CONTAINER");
        let next = (cont + "CONTAINER".len()..header.len())
            .find(|&i| header[i] != ' ' && header[i - 1] == ' ')
            .unwrap();
        let cell = |l: &[char], a: usize, b: usize| -> String {
            l.iter().skip(a).take(b - a).collect::<String>().trim().to_string()
        };
        let body = &lines[h + 1..lines.len() - 1];
        let page = body.len();
        let sel = body.iter().position(|l| l.starts_with(&['▶'])).expect("a selected row");
        for (k, l) in body.iter().enumerate() {
            let i = cursor + k - sel;
            let got = (cell(l, 2, cont), cell(l, cont, next));
            assert!(!got.0.is_empty() && !got.1.is_empty(), "row {i}: {s}");
            if let Some(before) = &shown[i] {
                assert_eq!(before, &got, "row {i} changed between pages");
            }
            shown[i] = Some(got);
        }
        if cursor == rows - 1 {
            break;
        }
        t.keys(&["PageDown"]);
        cursor = (cursor + page).min(rows - 1);
        t.wait_for("the next page", |s| s.lines().any(|l| l.starts_with("▶")));
    }
    let shown: Vec<(String, String)> = shown.into_iter().map(|r| r.expect("every row")).collect();
    let mut per_node = BTreeMap::new();
    for (n, _) in &shown {
        *per_node.entry(n.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), fleet::NODES, "nodes that read alike: {per_node:?}");
    assert!(per_node.values().all(|&c| c == fleet::CONTAINERS.len()), "{per_node:?}");
    let distinct: BTreeSet<&(String, String)> = shown.iter().collect();
    assert_eq!(distinct.len(), rows, "containers that read alike: {shown:?}");

    // Node 0 says its instance id; the last does not.
    for i in [0, fleet::NODES - 1] {
        t.keys(&["/"]);
        t.keys(&["-l", &fleet::node(i)]);
        t.keys(&["Enter"]);
        let short = fleet::node(i).replace(fleet::DOMAIN, "");
        t.wait_for("the node's rows", |s| {
            s.contains("filter \"") && s.lines().any(|l| l.starts_with("▶ ") && l.contains(&short))
        });
        t.keys(&["Enter"]);
        // Scroll until the whole fix is in view.
        let mut s = t.wait_for("the detail", |s| s.contains("forwarding hops"));
        for _ in 0..20 {
            if s.contains("FIX: raise") && s.contains("launch template:") {
                break;
            }
            t.keys(&["Down"]);
            s = t.screen();
        }
        assert!(s.contains("FIX: raise the hop limit to 2"), "{s}");
        assert!(s.lines().last().unwrap().contains("q quit"), "{s}");
        // Nothing cut at the edge: the body's lines end before it.
        let lines: Vec<&str> = s.lines().collect();
        for l in &lines[3..lines.len() - 1] {
            assert!(l.chars().count() < width as usize, "cut at the edge: {l}\n{s}");
        }
        // How many nodes share the fix, as `report` groups them.
        let named = fleet::NODES - fleet::UNNAMED;
        let group = match fleet::instance_id(i) {
            Some(_) => format!("{} nodes of node group {}", named / 2, fleet::pool(i)),
            None => format!("{} nodes", fleet::UNNAMED),
        };
        let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(&format!("FIX: raise the hop limit to 2 the same fix on {group}, each")),
            "{group}:\n{s}"
        );
        let own = fleet::instance_id(i);
        for j in 0..fleet::NODES {
            if let Some(other) = fleet::instance_id(j).filter(|_| j != i) {
                assert!(!s.contains(&other), "node {i} shows node {j}'s id:\n{s}");
            }
        }
        let fix = &lines[lines.iter().position(|l| l.starts_with("FIX:")).unwrap()..];
        let commands = commands(fix);
        let want = match &own {
            Some(id) => {
                assert!(!s.contains("INSTANCE_ID"), "{s}");
                assert_eq!(commands.len(), 1, "{commands:?}");
                assert!(commands[0].contains(&format!(" --instance-id {id} ")), "{s}");
                commands[0].clone()
            }
            None => {
                assert_eq!(commands.len(), 2, "{commands:?}");
                assert_eq!(commands[0], imds_observer::diagnose::GET_INSTANCE_ID, "{s}");
                assert!(commands[1].contains(" --instance-id \"$INSTANCE_ID\" "), "{s}");
                commands.join("\n")
            }
        };
        bash_n(&want);
        // `c`: the same, whole, on the clipboard (tmux's paste buffer).
        t.tmux(&["delete-buffer"]).ok();
        t.keys(&["c"]);
        t.wait_for("the copy", |s| s.contains("fix copied"));
        let out = t.tmux(&["show-buffer"]).expect("tmux show-buffer");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "the copied fix");
        t.keys(&["Escape"]);
        t.keys(&["Escape"]);
        t.wait_for("the whole table", |s| {
            s.contains(&format!("{rows} containers")) && !s.contains("filter \"")
        });
    }
    t.keys(&["q"]);
    t.assert_restored("0");
    fs::remove_dir_all(&dir).unwrap();
}

/// The fix's commands as one would paste them: `\` continuations joined
/// (they are the only breaks, and each stands for one blank).
fn commands(fix: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for l in fix {
        let t = l.trim();
        if cur.is_empty() && !(t.starts_with("aws ") || t.starts_with("INSTANCE_ID=")) {
            continue;
        }
        match t.strip_suffix(" \\") {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    // "then, … turn IMDSv1 off" is a later step, not this fix.
    out.retain(|c| !c.contains("--http-tokens required"));
    out
}

fn bash_n(script: &str) {
    let mut child = Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bash");
    child.stdin.take().unwrap().write_all(format!("{script}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "bash -n: {script}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// #26: `tui --from FILE --node X` over the fleet lists X's containers
/// only (`report`'s flag, the same meaning): three rows, X's pod in each,
/// no other node's, and no node column.
#[test]
fn fleet_filtered_to_one_node() {
    let dir = tempdir("fleet-node");
    let file = dir.join("fleet.jsonl");
    fs::write(&file, fleet::stream()).unwrap();
    let t = Tmux::sized("fleet-node", 200, 30);
    let i = 7;
    t.run(&format!(
        "{} tui --from {} --node {}; echo exit=$?",
        observer(),
        file.display(),
        fleet::node(i)
    ));
    let n = fleet::CONTAINERS.len();
    let s = t.wait_for("the node's containers", |s| {
        s.contains(&format!("{n} containers · hop_limit_exceeded {n}"))
    });
    assert!(s.contains(&format!("node {}", fleet::node(i))), "{s}");
    let header = s.lines().find(|l| l.contains("CONTAINER")).unwrap();
    assert!(!header.contains("NODE"), "one node, no node column:\n{s}");
    let rows: Vec<&str> = s.lines().filter(|l| l.contains("shop/")).collect();
    assert_eq!(rows.len(), n, "{s}");
    let pod = fleet::pod(i);
    for c in fleet::CONTAINERS {
        assert!(rows.iter().any(|r| r.contains(&format!("shop/{pod}/{c}"))), "{c}:\n{s}");
    }
    for j in (0..fleet::NODES).filter(|&j| j != i) {
        assert!(!s.contains(&fleet::pod(j)), "node {j}'s pod:\n{s}");
    }
    t.keys(&["q"]);
    t.assert_restored("0");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fleet_at_80_by_24() {
    fleet_in(80, 24);
}

#[test]
fn fleet_at_200_by_50() {
    fleet_in(200, 50);
}
