//! The TUI with 5,000 containers and 1,000,000 events replayed through its
//! state (the diagnosis engine and the rows), then frames rendered to a
//! 200x50 TestBackend. Prints figures; asserts nothing about time.
//!
//!   cargo bench -p imds-observer --bench tui_render
//!
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant, UNIX_EPOCH},
};

use imds_observer::{
    diagnose::{Config, Diagnoser},
    model::{Event, Kind, Proto, TcpFlags},
    tui::{
        app::{App, Feed, Mode},
        input::Action,
        ui,
    },
};
use ratatui::{Terminal, backend::TestBackend};

const CONTAINERS: u64 = 5_000;
const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 33)), 41644);
const IMDS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80);
const EVENTS: usize = 1_000_000;
/// The node's hop limit is 2; one container in this many sits two hops
/// away (behind a router) and loses its token replies.
const FAILING_EVERY: u64 = 10;
const HOP_LIMIT: u8 = 2;
const FRAMES: usize = 200;
/// New events between two frames in the "live" runs.
const CHURN: usize = 1_000;

/// One connection: its container, socket cookie and distance.
#[derive(Clone, Copy)]
struct Conn {
    cg: u64,
    flow: u64,
    hops: u8,
}

/// Events of a realistic mix: every container, in turn, opens a connection
/// and asks for a token (every fourth round) or reads its credentials.
/// Failing ones lose the token reply (a kernel drop, an ICMP), then go on
/// without a token. 2 ms of stream time per exchange.
struct Gen {
    ms: u64,
    turn: u64,
    flow: u64,
    buf: std::collections::VecDeque<Event>,
}

impl Gen {
    fn new() -> Gen {
        Gen { ms: 0, turn: 0, flow: 1, buf: Default::default() }
    }

    fn ev(&self, kind: Kind, Conn { cg, flow, .. }: Conn) -> Event {
        let ts = UNIX_EPOCH + Duration::from_secs(1_790_000_000) + Duration::from_millis(self.ms);
        let mut e = Event::new(kind, ts, "ip-10-0-1-17".into());
        e.flow = Some(flow);
        e.cgroup_id = Some(cg);
        e.cgroup = Some(format!(
            "/kubepods.slice/kubepods-burstable.slice/pod{cg:08x}/cri-containerd-{cg:064x}.scope"
        ));
        e.proto = Some(Proto::Tcp);
        if matches!(kind, Kind::HostIngress | Kind::HostEgress) {
            e.iface = Some("ens5".into());
        }
        e
    }

    /// Request at the socket and leaving the uplink.
    fn send(&mut self, c: Conn, seq: u32, ack: u32, flags: &str, http: Option<(&str, &str, bool)>) {
        for (kind, ttl) in [(Kind::Request, 64), (Kind::HostEgress, 64 - c.hops)] {
            let mut e = self.ev(kind, c);
            e.src = Some(CLIENT);
            e.dst = Some(IMDS);
            e.ttl = Some(ttl);
            e.tcp_flags = Some(TcpFlags::parse(flags));
            e.seq = Some(seq);
            e.ack = Some(ack);
            e.len = Some(if http.is_some() { 120 } else { 0 });
            if let Some((m, p, token)) = http {
                e.method = Some(m.into());
                e.path = Some(p.into());
                e.token_header = Some(token);
                e.token_ttl_header = Some(m == "PUT");
            }
            self.buf.push_back(e);
        }
    }

    /// A reply at the uplink with `ttl`; delivered or dropped.
    fn receive(&mut self, c: Conn, seq: u32, ack: u32, status: Option<u16>, ttl: u8) {
        let mut hi = self.ev(Kind::HostIngress, c);
        hi.src = Some(IMDS);
        hi.dst = Some(CLIENT);
        hi.ttl = Some(ttl);
        hi.tcp_flags =
            Some(if status.is_some() { TcpFlags::PSH } else { TcpFlags::SYN } | TcpFlags::ACK);
        hi.seq = Some(seq);
        hi.ack = Some(ack);
        hi.len = Some(if status.is_some() { 56 } else { 0 });
        hi.status = status;
        self.buf.push_back(hi.clone());
        if ttl > c.hops {
            let mut r = hi;
            r.kind = Kind::Reply;
            r.ttl = Some(ttl - c.hops);
            r.iface = None;
            self.buf.push_back(r);
        } else {
            let mut d = hi;
            d.kind = Kind::Drop;
            d.iface = None;
            d.reason = Some("IP_INHDR".into());
            self.buf.push_back(d.clone());
            d.reason = Some("TTL_EXCEEDED".into());
            d.via = Some("icmp_time_exceeded".into());
            self.buf.push_back(d);
        }
    }

    /// One container's next exchange.
    fn step(&mut self) {
        let cg = 10_000 + self.turn % CONTAINERS;
        let round = self.turn / CONTAINERS;
        self.turn += 1;
        let failing = cg.is_multiple_of(FAILING_EVERY);
        let c = Conn { cg, flow: self.flow, hops: if failing { 2 } else { 1 } };
        self.flow += 1;
        let (c0, s0) = (c.flow as u32 * 7919, 5_000_000 + c.flow as u32 * 10);
        self.send(c, c0, 0, "SYN", None);
        self.receive(c, s0, c0 + 1, None, 64);
        let (c1, s1) = (c0 + 1, s0 + 1);
        if round.is_multiple_of(4) {
            self.send(c, c1, s1, "PSH|ACK", Some(("PUT", "/latest/api/token", false)));
            self.receive(c, s1, c1 + 120, Some(200), HOP_LIMIT);
        } else {
            let path = "/latest/meta-data/iam/security-credentials/app-role";
            self.send(c, c1, s1, "PSH|ACK", Some(("GET", path, !failing)));
            self.receive(c, s1, c1 + 120, Some(200), 64);
        }
        self.ms += 2;
    }
}

impl Iterator for Gen {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        if self.buf.is_empty() {
            self.step();
        }
        self.buf.pop_front()
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn status(field: &str) -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .map_or("?".into(), |l| l[field.len()..].trim().to_string())
}

/// Mean, p99 and max frame time (ms) over `FRAMES` frames, with `churn`
/// new events applied before each (not timed: that is the replay's cost).
fn frames(
    app: &mut App,
    term: &mut Terminal<TestBackend>,
    gen: &mut Gen,
    churn: usize,
) -> (f64, f64, f64) {
    let mut times = Vec::with_capacity(FRAMES);
    for i in 0..FRAMES {
        for e in gen.by_ref().take(churn) {
            app.feed(Feed::Event(Box::new(e)));
        }
        // Scroll, as a user reading the table would.
        if i % 10 == 0 {
            app.handle(Action::PageDown);
        }
        let t = Instant::now();
        term.draw(|f| ui::render(f, app)).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    (mean, p99, times[times.len() - 1])
}

fn main() {
    println!(
        "imds-observer TUI: {CONTAINERS} containers, {EVENTS} events, {FRAMES} frames on a 200x50 TestBackend"
    );
    // 5,000 containers: past the default budget (model::budget), on purpose.
    let cfg = Config {
        max_containers_per_node: 2 * CONTAINERS as usize,
        max_flows_per_node: 65_536,
        ..Config::default()
    };
    let mut app = App::new(cfg.clone(), Mode::Stream, "from bench");
    let mut term = Terminal::new(TestBackend::new(200, 50)).unwrap();
    let mut gen = Gen::new();

    let t = Instant::now();
    let mut fed = 0usize;
    for checkpoint in [100_000, EVENTS] {
        for e in gen.by_ref().take(checkpoint - fed) {
            app.feed(Feed::Event(Box::new(e)));
        }
        fed = checkpoint;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "\nTUI state after {fed} events: {:.2} s replayed ({:.0} events/s), RSS {}",
            secs,
            fed as f64 / secs,
            status("VmRSS:"),
        );
        // The first frame after a replay reads every touched row once.
        let t0 = Instant::now();
        term.draw(|f| ui::render(f, &mut app)).unwrap();
        let first = ms(t0);
        let (counts, undecided) = app.kind_counts();
        println!("  {} rows ({undecided} undecided): {counts:?}", app.rows().len());
        println!("  first frame (reads every row the replay touched): {first:.3} ms");
        let (mean, p99, max) = frames(&mut app, &mut term, &mut gen, 0);
        println!(
            "  table, no new data:            mean {mean:.3} ms  p99 {p99:.3} ms  max {max:.3} ms"
        );
    }
    let (mean, p99, max) = frames(&mut app, &mut term, &mut gen, CHURN);
    println!(
        "  table, {CHURN} new events/frame:   mean {mean:.3} ms  p99 {p99:.3} ms  max {max:.3} ms"
    );
    app.handle(Action::Top);
    app.handle(Action::Open);
    let (mean, p99, max) = frames(&mut app, &mut term, &mut gen, CHURN);
    println!(
        "  detail, {CHURN} new events/frame:  mean {mean:.3} ms  p99 {p99:.3} ms  max {max:.3} ms"
    );
    app.handle(Action::Back);
    app.handle(Action::Filter);
    app.editing = Some("0001".into());
    app.handle(Action::Open);
    let (mean, p99, max) = frames(&mut app, &mut term, &mut gen, CHURN);
    println!(
        "  filtered, {CHURN} new events/frame: mean {mean:.3} ms  p99 {p99:.3} ms  max {max:.3} ms"
    );
    let size = app.diagnoser().state_size();
    println!(
        "\nengine state: {} containers, {} flows, {} exchanges, {} timeline attempts",
        size.containers, size.flows, size.exchanges, size.attempts
    );
    println!("memory: peak RSS (VmHWM) {}, now (VmRSS) {}", status("VmHWM:"), status("VmRSS:"));
    drop(app);

    // The engine alone, for comparison: what the TUI state adds per event.
    let t = Instant::now();
    let mut d = Diagnoser::new(cfg);
    for e in Gen::new().take(EVENTS) {
        d.observe(&e);
    }
    let engine = EVENTS as f64 / t.elapsed().as_secs_f64();
    println!(
        "\nfor comparison, the engine alone: {EVENTS} events in {:.2} s ({engine:.0} events/s), RSS {}",
        t.elapsed().as_secs_f64(),
        status("VmRSS:")
    );
    drop(d);
}
