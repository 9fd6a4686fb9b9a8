//! What the fuzz targets (fuzz/fuzz_targets/) run: one function per target,
//! each taking arbitrary bytes through the observer's own parsing of what
//! it does not control (ring records, JSON lines read back, HTTP replies of
//! the runtime APIs, netlink replies) and asserting what the code promises.
//! Not an API: hidden from the docs, used by the fuzz crate and by the
//! tests below, which replay the seed corpus (fuzz/corpus/) on every
//! `cargo test`, so a crash once fixed stays fixed without nightly.
//!
//! Contract: each function returns normally for every input; a panic (an
//! assertion here included) is a bug of the observer. Nothing here does
//! I/O but the in-memory stream of `http_response`.
use std::{collections::HashMap, io::BufReader, path::PathBuf, time::Duration};

use observer_ebpf::{Record, SNAP_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    capture::{
        decode::{self, Http, MAX_PATH, REDACTED},
        kallsyms::Locations,
    },
    diagnose::{Config, Diagnoser},
    identity::{
        docker::DockerClient,
        http,
        nomad::{NomadClient, TlsSettings},
    },
    model::{Event, Line, MAX_LINE, read_line},
    pipeline::{KernelNames, Pipeline},
    sink::report,
    sys::{
        clock::Clock,
        netlink::{self, Link, Route},
    },
};

/// The request methods the decoder knows (capture/decode.rs).
const METHODS: [&str; 7] = ["GET", "PUT", "POST", "HEAD", "DELETE", "PATCH", "OPTIONS"];
const ECS_CREDENTIALS: &str = "/v2/credentials/";

/// Bytes of a [`Record`] before its snapshot: the wire header.
pub const RECORD_HEADER: usize = std::mem::offset_of!(Record, data);

/// `decode_record`: a byte of settings, then records as the ring holds them
/// (each: the [`RECORD_HEADER`] bytes, then `snap_len` snapshot bytes, or
/// fewer at the end of the input), through the pipeline, its events
/// through the diagnosis and the report. Bit 0 of the settings turns the
/// cgroup v1 fallback on (records wait for a veth), bit 1 makes it a
/// kernel without drop reasons. Returns the events (for the tests).
pub fn decode_record(data: &[u8]) -> Vec<Event> {
    let Some((&settings, mut rest)) = data.split_first() else { return Vec::new() };
    let mut names = KernelNames {
        drop_reasons: HashMap::from([
            (2, "NOT_SPECIFIED".to_string()),
            (5, "QUEUE_PURGE".to_string()),
            (27, "IP_INHDR".to_string()),
        ]),
        // What 5.10's /proc/kallsyms says about the functions drops name.
        locations: Locations::parse(
            &b"ffffffff82057290 T ip_forward\nffffffff820577a0 t ip_forward_finish\n\
               ffffffff81e90000 T sk_stream_kill_queues\nffffffff81e90400 T sk_stream_wait_memory\n"[..],
        ),
        ifaces: HashMap::from([(2, "eth0".into())]),
    };
    if settings & 2 != 0 {
        names.drop_reasons.clear();
    }
    let mut p = Pipeline::new("node".into(), Clock::now(), None, names);
    if settings & 1 != 0 {
        p.set_veths(&[Link {
            ifindex: 9,
            name: "veth9".into(),
            kind: Some("veth".into()),
            peer_netnsid: Some(3),
        }]);
    }
    let mut events = Vec::new();
    let mut snapshots = Vec::new();
    while !rest.is_empty() {
        let mut raw = [0u8; size_of::<Record>()];
        let head = rest.len().min(RECORD_HEADER);
        raw[..head].copy_from_slice(&rest[..head]);
        rest = &rest[head..];
        // SAFETY: Record is plain old data (repr(C), integers and byte
        // arrays: any bytes are a value), and `raw` is exactly its size.
        let mut rec: Record = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        let n = (rec.snap_len as usize).min(SNAP_LEN).min(rest.len());
        rec.data[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        snapshots.push(rec.data);
        p.process(&rec, &mut events);
    }
    p.release_due(u64::MAX, &mut events);
    let mut d = Diagnoser::new(Config::default());
    for ev in &events {
        check_event(ev, &snapshots);
        let _ = d.observe(ev);
    }
    let _ = d.settle();
    check_report(&report::render(&d.findings()));
    events
}

/// What an event made from packets may carry: only the request line's
/// method and path (redacted, capped), a status; and it reads back.
fn check_event(ev: &Event, snapshots: &[[u8; SNAP_LEN]]) {
    if let Some(m) = &ev.method {
        assert!(METHODS.contains(&m.as_str()), "method {m:?}");
    }
    if let Some(path) = &ev.path {
        check_path(path);
        // It comes from a request line of some record, after its method.
        let seen = path.strip_suffix(REDACTED).unwrap_or(path);
        let line = format!("{} {seen}", ev.method.as_deref().unwrap_or_default());
        assert!(
            snapshots.iter().any(|s| s.windows(line.len()).any(|w| w == line.as_bytes())),
            "path {path:?} is in no request line"
        );
    }
    if let Some(s) = ev.status {
        assert!(s <= 999, "status {s}");
    }
    // From 16-bit length fields, never from the snapshot's size.
    if let Some(len) = ev.len {
        assert!(len <= u32::from(u16::MAX), "len {len}");
    }
    if let Some(c) = &ev.comm {
        assert!(c.chars().count() <= 16, "comm {c:?}");
    }
    // The stream `run` writes is the one `report --from` reads.
    let line = serde_json::to_vec(ev).expect("an event serializes");
    assert!(
        matches!(Line::parse(&line), Some(Line::Event(_))),
        "{}",
        String::from_utf8_lossy(&line)
    );
}

/// A path as an event may carry it: no query string, no ECS credentials
/// id, at most [`MAX_PATH`] bytes of visible ASCII.
fn check_path(path: &str) {
    assert!(path.starts_with('/') && path.len() <= MAX_PATH, "path {path:?}");
    assert!(path.bytes().all(|b| b.is_ascii_graphic()), "path {path:?}");
    assert!(!path.contains('?'), "query string kept: {path:?}");
    if let Some(rest) = path.strip_prefix(ECS_CREDENTIALS) {
        assert!(rest.is_empty() || rest == REDACTED, "credentials id kept: {path:?}");
    }
}

/// The report sends no control character but the newline to a terminal.
fn check_report(text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "control character in the report: {text:?}"
    );
}

/// `json_line`: a recorded stream, line by line as `report --from` and
/// `tui --from` read it, then diagnosed and rendered as `report` does.
pub fn json_line(data: &[u8]) {
    // A small buffer: lines cross many refills.
    let mut r = BufReader::with_capacity(64, data);
    let mut buf = Vec::new();
    while let Some(kept) = read_line(&mut r, &mut buf).expect("reading a slice never fails") {
        assert!(buf.len() <= MAX_LINE);
        assert!(!buf[..buf.len().saturating_sub(1)].contains(&b'\n'), "two lines in one");
        if !kept {
            assert!(buf.is_empty());
            continue;
        }
        if let Some(Line::Event(ev)) = Line::parse(&buf) {
            // What `run` would write of it reads back the same.
            let once = serde_json::to_vec(&ev).expect("an event serializes");
            let Some(Line::Event(again)) = Line::parse(&once) else {
                panic!("written, not read back: {}", String::from_utf8_lossy(&once))
            };
            assert_eq!(serde_json::to_vec(&again).unwrap(), once);
        }
    }
    let d = crate::diagnose::replay::diagnose_stream_with(data, Config::default())
        .expect("reading a slice");
    let _ = d.skipped.describe();
    check_report(&report::render(&d.findings));
}

/// Body bytes `http_response` reads at most: small, so that fuzzed inputs
/// reach the limit.
pub const FUZZ_MAX_REPLY: usize = 2048;

/// `http_response`: the bytes as a runtime API's reply, read by hyper's
/// client connection over an in-memory stream (whose far end then closes)
/// with the lookups' size cap, then handled as a Docker inspect and a
/// Nomad allocation reply. Also the decoder's reading of the same bytes as
/// a packet payload (request or status line). Returns the status of a
/// reply read whole (for the tests).
pub fn http_response(data: &[u8]) -> Option<u16> {
    match decode::parse_http(data) {
        Some(Http::Request { method, path, .. }) => {
            assert!(METHODS.contains(&method.as_str()));
            check_path(&path);
        }
        Some(Http::Response { status }) => assert!(status <= 999),
        None => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let reply = rt.block_on(async {
        // Room for the whole reply one way and the request the other, so
        // that neither side ever waits for the other to read.
        let (ours, mut theirs) = tokio::io::duplex(data.len() + 4096);
        // The peer answers once it has the request head (hyper refuses a
        // reply that comes before its request), then ends the stream.
        let peer = async move {
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match theirs.read(&mut b).await {
                    Ok(0) | Err(_) => return theirs,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
            }
            let _ = theirs.write_all(data).await;
            let _ = theirs.shutdown().await;
            // Kept open until the exchange is over.
            theirs
        };
        let req = http::Request {
            host: "docker",
            target: "/containers/abc/json",
            headers: &[],
            timeout: Duration::from_secs(10),
            max_reply: FUZZ_MAX_REPLY,
        };
        let request = http::build(&req).expect("a valid request");
        let exchange = http::exchange(ours, request, FUZZ_MAX_REPLY);
        // The stream ends: the exchange must too. (Real time: only a hang
        // ever waits for it.)
        let both = async { tokio::join!(exchange, peer).0 };
        tokio::time::timeout(req.timeout, both).await.expect("the exchange hangs")
    });
    let reply = match reply {
        Ok(reply) => reply,
        Err(e @ (http::Error::Protocol(_) | http::Error::TooLarge(_) | http::Error::Io(_))) => {
            let _ = e.to_string();
            return None;
        }
        Err(e) => panic!("not an error a reply can cause: {e:?}"),
    };
    assert!(reply.body.len() <= FUZZ_MAX_REPLY, "{} bytes", reply.body.len());
    assert!((100..=999).contains(&reply.status), "status {}", reply.status);
    let copy = http::Reply { status: reply.status, body: reply.body.clone() };
    let docker = DockerClient::new(PathBuf::from("/run/docker.sock"));
    match docker.inspect_reply(copy) {
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let nomad = NomadClient::new("http://127.0.0.1:4646", &TlsSettings::default())
        .expect("a valid address");
    let status = reply.status;
    match nomad.allocation_reply(reply) {
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    Some(status)
}

/// `netlink`: the bytes as one datagram of each reply the observer reads
/// (a link dump, a route, a netns id), and the uplinks the routes name.
pub fn netlink(data: &[u8]) {
    let mut links = Vec::new();
    match netlink::parse_links(data, &mut links) {
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    for l in &links {
        assert!(l.ifindex > 0 && l.ifindex <= i32::MAX as u32 && !l.name.is_empty(), "{l:?}");
    }
    let route = netlink::parse_route(data);
    if let Ok(Route::Out(oifs)) = &route {
        assert!(!oifs.contains(&0), "{oifs:?}");
    }
    if let Err(e) = &route {
        let _ = e.to_string();
    }
    match netlink::parse_nsid(data) {
        Ok(id) => assert!(id.is_none_or(|i| i >= 0), "{id:?}"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let names: HashMap<u32, String> = links.iter().map(|l| (l.ifindex, l.name.clone())).collect();
    let uplinks = crate::capture::uplinks::uplinks_from_routes(route.as_ref().ok(), &names);
    assert!(!uplinks.iter().any(|u| u == "lo"));
    assert!(uplinks.windows(2).all(|w| w[0] < w[1]), "{uplinks:?}");
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    /// Every seed of a target's corpus (and every crash kept there once
    /// fixed) runs through it.
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
        let mut n = 0;
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.unwrap().path();
            // Shown with the failure: which seed it was.
            eprintln!("{}", path.display());
            run(&fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn decode_record_corpus() {
        replay("decode_record", |d| drop(super::decode_record(d)));
    }

    /// The seeds' record layout (fuzz/seeds.py) is the wire's.
    #[test]
    fn record_header_is_what_the_seeds_write() {
        assert_eq!(super::RECORD_HEADER, 120);
    }

    /// The hop-limit-1 seed is the exchange it claims to be: the reply dies
    /// in ip_forward, and the host's ICMP says so too.
    #[test]
    fn the_hop_limit_seed_makes_the_events_of_a_lost_reply() {
        let seed = fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode_record/hop_limit_1"),
        )
        .unwrap();
        let events = super::decode_record(&seed);
        let kinds: Vec<_> = events.iter().map(|e| format!("{:?}", e.kind)).collect();
        assert_eq!(
            kinds,
            [
                "Request",
                "HostEgress",
                "HostIngress",
                "Reply",
                "Request",
                "HostEgress",
                "HostIngress",
                "Drop",
                "Drop"
            ]
        );
        assert_eq!(events[4].path.as_deref(), Some("/latest/api/token"));
        assert_eq!((events[6].status, events[6].ttl), (Some(200), Some(1)));
        assert_eq!(events[7].location.as_deref(), Some("ip_forward"));
        assert_eq!(events[7].reason.as_deref(), Some("IP_INHDR"));
        assert_eq!(events[8].via.as_deref(), Some("icmp_time_exceeded"));
        assert!(events.iter().all(|e| e.flow == Some(5)), "one flow");
    }

    #[test]
    fn json_line_corpus() {
        replay("json_line", super::json_line);
    }

    #[test]
    fn http_response_corpus() {
        replay("http_response", |d| {
            let _ = super::http_response(d);
        });
    }

    /// The replies reach hyper's parser and our handling: a reply read
    /// whole has its status, one over the cap or cut short none.
    #[test]
    fn http_seeds_are_read_as_replies() {
        let seed = |name: &str| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/http_response");
            super::http_response(&fs::read(dir.join(name)).unwrap())
        };
        assert_eq!(seed("content_length"), Some(200));
        assert_eq!(seed("chunked"), Some(200));
        assert_eq!(seed("to_end_of_stream"), Some(200));
        assert_eq!(seed("not_found"), Some(404));
        for cut_or_over in
            ["oversize_body", "oversize_declared", "cut_short", "head_only", "not_http"]
        {
            assert_eq!(seed(cut_or_over), None, "{cut_or_over}");
        }
    }

    #[test]
    fn netlink_corpus() {
        replay("netlink", super::netlink);
    }
}
