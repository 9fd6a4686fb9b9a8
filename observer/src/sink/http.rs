//! The `--metrics-addr` HTTP server: `GET /metrics`, `/healthz`, `/readyz`.
//!
//! Minimal HTTP/1.1 by hand: one request per connection (`Connection:
//! close`), request head capped at 8 KiB and read within 2 s, at most 64
//! connections at once (more are closed unanswered). `GET` and `HEAD` only.
//!
//! - `/metrics`: OpenMetrics text when the client accepts it (Prometheus
//!   does), else Prometheus text 0.0.4.
//! - `/healthz`: 200 `ok` while the process runs.
//! - `/readyz`: 200 once capture is attached (the `ready` flag), else 503.
//! - anything else: 404.
use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};
use tracing::{debug, warn};

use super::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

/// Largest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;

/// A bound listener: bind first (a bad `--metrics-addr` fails at startup),
/// then [`Server::run`].
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    read_timeout: Duration,
}

impl Server {
    /// Bind `addr`; the error names the flag and the address, e.g.
    /// "--metrics-addr 0.0.0.0:9109: address in use".
    pub async fn bind(addr: SocketAddr) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await.map_err(|e| bind_error(addr, e))?;
        let addr = listener.local_addr()?;
        Ok(Server { listener, addr, read_timeout: READ_TIMEOUT })
    }

    /// The address bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Change the time a client has to send its request.
    #[cfg(test)]
    pub fn with_read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = t;
        self
    }

    /// Serve until the task is dropped. Connection errors are the client's
    /// problem, never the server's: this only returns if accepting fails
    /// for good (it does not).
    pub async fn run(self, state: Arc<Mutex<Metrics>>, ready: Arc<AtomicBool>) -> io::Result<()> {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!("metrics server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "metrics server: too many connections; closing");
                continue;
            };
            let (state, ready, read_timeout) = (state.clone(), ready.clone(), self.read_timeout);
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &state, &ready, read_timeout).await {
                    debug!(%peer, "metrics server: {e}");
                }
                drop(permit);
            });
        }
    }
}

fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    let what = match e.kind() {
        io::ErrorKind::AddrInUse => "address in use (another imds-observer, or another exporter, listens there)".into(),
        io::ErrorKind::AddrNotAvailable => "address not available (not an address of this host)".into(),
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".into(),
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("--metrics-addr {addr}: {what}"))
}

/// Bind `addr` and serve `/metrics`, `/healthz` and `/readyz` on it (the
/// one-call form of `Server::bind` + `Server::run`).
#[allow(dead_code)] // `run` binds first, to fail before capture starts
pub async fn serve(addr: SocketAddr, state: Arc<Mutex<Metrics>>, ready: Arc<AtomicBool>) -> io::Result<()> {
    Server::bind(addr).await?.run(state, ready).await
}

enum Head {
    /// The head's length (through the blank line).
    Complete(usize),
    TooLarge,
    /// The client closed before finishing its request.
    Closed,
}

async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Head> {
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(Head::Complete(end));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(Head::TooLarge);
        }
        let want = (MAX_REQUEST + 1 - buf.len()).min(chunk.len());
        let n = s.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.as_bytes().to_vec(), allow: false }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn handle(
    mut s: TcpStream,
    state: &Mutex<Metrics>,
    ready: &AtomicBool,
    read_timeout: Duration,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let (resp, head_only) = match timeout(read_timeout, read_head(&mut s, &mut buf)).await {
        Err(_) => (Response::text(408, "request timeout\n"), false),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => (Response::text(431, "request too large\n"), false),
        Ok(Ok(Head::Complete(n))) => route(&buf[..n], state, ready),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    if resp.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&resp.body);
    }
    let written = match timeout(WRITE_TIMEOUT, async {
        s.write_all(&bytes).await?;
        s.shutdown().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "writing the response timed out")),
    };
    if resp.status >= 400 && written.is_ok() {
        // Read what the client still sends for a moment, so that closing
        // with unread data (an RST) does not destroy the answer before the
        // client reads it.
        let mut sink = [0u8; 4096];
        let _ = timeout(Duration::from_millis(500), async {
            let mut left: usize = 64 * 1024;
            while left > 0 {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }
    written
}

/// The response, and whether to send the head only (HEAD).
fn route(head: &[u8], state: &Mutex<Metrics>, ready: &AtomicBool) -> (Response, bool) {
    let Ok(head) = std::str::from_utf8(head) else {
        return (Response::text(400, "bad request\n"), false);
    };
    let mut lines = head.lines();
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Response::text(400, "bad request\n"), false);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return (Response::text(400, "bad request\n"), false);
    }
    let head_only = method == "HEAD";
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return (Response::text(404, "not found\n"), head_only);
    }
    if method != "GET" && !head_only {
        let mut r = Response::text(405, "method not allowed\n");
        r.allow = true;
        return (r, false);
    }
    let resp = match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" if ready.load(Ordering::Acquire) => Response::text(200, "ready\n"),
        "/readyz" => Response::text(503, "not ready: capture is not attached\n"),
        _ => {
            let openmetrics = lines.any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
                })
            });
            let m = state.lock().unwrap_or_else(|e| e.into_inner());
            let (body, content_type) = if openmetrics {
                (m.encode(), OPENMETRICS_CONTENT_TYPE)
            } else {
                (m.encode_prometheus(), PROMETHEUS_CONTENT_TYPE)
            };
            Response { status: 200, content_type, body: body.into_bytes(), allow: false }
        }
    };
    (resp, head_only)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream as StdStream,
    };

    use super::*;
    use crate::model::{Event, Kind};

    /// A server on 127.0.0.1:0, on a thread of its own (the client below
    /// blocks).
    fn start(read_timeout: Duration) -> (SocketAddr, Arc<Mutex<Metrics>>, Arc<AtomicBool>) {
        let state = Arc::new(Mutex::new(Metrics::default()));
        let ready = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, r) = (state.clone(), ready.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let server =
                    Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap().with_read_timeout(read_timeout);
                tx.send(server.local_addr()).unwrap();
                server.run(s, r).await
            })
        });
        (rx.recv().unwrap(), state, ready)
    }

    /// Send `raw`, read until the server closes: (status, headers, body).
    fn send(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(raw);
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head.to_string(), body.to_string())
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        send(addr, format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
    }

    #[test]
    fn metrics_server_health_and_readiness() {
        let (addr, state, ready) = start(READ_TIMEOUT);
        {
            let mut m = state.lock().unwrap();
            let mut ev = Event::new(Kind::LostEvents, std::time::SystemTime::now(), "node-a".into());
            ev.count = Some(5);
            m.observe(&crate::diagnose::Diagnoser::default(), &ev);
        }
        // What Prometheus asks for.
        let (status, head, body) = send(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\r\n",
        );
        assert_eq!(status, 200, "{head}");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())), "{head}");
        for family in [
            "requests",
            "replies_lost",
            "drops",
            "findings",
            "hop_limit",
            "forwarding_hops",
            "events_lost",
            "series_capped",
        ] {
            assert!(body.contains(&format!("# TYPE imds_observer_{family} ")), "{family} missing:\n{body}");
        }
        assert!(body.lines().any(|l| l == r#"imds_observer_events_lost_total{node="node-a"} 5"#), "{body}");
        assert!(body.ends_with("# EOF\n"));
        // curl: Prometheus text 0.0.4.
        let (status, head, body) = get(addr, "/metrics?x=1");
        assert_eq!(status, 200);
        assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
        assert!(body.contains("# TYPE imds_observer_events_lost_total counter"), "{body}");
        // HEAD: the head only.
        let (status, head, body) = send(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!((status, body.as_str()), (200, ""), "{head}");

        assert_eq!(get(addr, "/healthz"), (200, get(addr, "/healthz").1, "ok\n".into()));
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (503, "not ready: capture is not attached\n"));
        ready.store(true, Ordering::Release);
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (200, "ready\n"));
        assert_eq!(get(addr, "/nope").0, 404);
        assert_eq!(get(addr, "/metrics/x").0, 404);
        let (status, head, _) = send(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(status, 405);
        assert!(head.contains("\r\nAllow: GET, HEAD"), "{head}");
        // HTTP/1.0 clients and bare-LF heads work too.
        assert_eq!(send(addr, b"GET /healthz HTTP/1.0\n\n").0, 200);
    }

    #[test]
    fn metrics_server_survives_bad_clients() {
        let (addr, _, _) = start(Duration::from_millis(300));
        // A head over 8 KiB.
        let big = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(MAX_REQUEST));
        assert_eq!(send(addr, big.as_bytes()).0, 431);
        // Endless garbage without a blank line.
        assert_eq!(send(addr, &vec![b'x'; 64 * 1024]).0, 431);
        // Garbage heads.
        assert_eq!(send(addr, b"\x00\x01\x02\xff\r\n\r\n").0, 400);
        assert_eq!(send(addr, b"GET\r\n\r\n").0, 400);
        assert_eq!(send(addr, b"GET /metrics HTTP/1.1 extra\r\n\r\n").0, 400);
        assert_eq!(send(addr, b"GET metrics SPDY/3\r\n\r\n").0, 400);
        // Too slow: answered 408 after the read timeout.
        let t = std::time::Instant::now();
        assert_eq!(send(addr, b"GET /metr").0, 408);
        assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
        // Connect and leave.
        drop(StdStream::connect(addr).unwrap());
        let mut half = StdStream::connect(addr).unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        half.shutdown(std::net::Shutdown::Both).unwrap();
        // Still serving.
        assert_eq!(get(addr, "/healthz").0, 200);
        assert_eq!(get(addr, "/metrics").0, 200);
    }

    #[test]
    fn metrics_addr_bind_errors_name_the_flag() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let first = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = first.local_addr();
            assert_ne!(addr.port(), 0);
            let e = Server::bind(addr).await.err().expect("second bind fails");
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("--metrics-addr {addr}: address in use")), "{msg}");
            // Not an address of this host.
            let e = Server::bind("192.0.2.1:9109".parse().unwrap()).await.err().expect("foreign address");
            assert!(e.to_string().starts_with("--metrics-addr 192.0.2.1:9109: address not available"), "{e}");
            // serve() reports the same.
            let state = Arc::new(Mutex::new(Metrics::default()));
            let e = serve(addr, state, Arc::new(AtomicBool::new(true))).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        });
    }
}
