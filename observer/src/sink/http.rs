//! The `--metrics-addr` HTTP server: `GET /metrics`, `/healthz`, `/readyz`.
//!
//! HTTP/1.1 by hyper's server connection (`hyper::server::conn::http1`) on
//! our own accept loop. The contract:
//!
//! - One request per connection: keep-alive is off and every answer says
//!   `Connection: close` (a scrape every 15 s or more gains nothing from
//!   keep-alive, and a slot is then held for a request, never by a client
//!   idling between scrapes).
//! - The request head is capped at 8 KiB (hyper answers 431) and must
//!   arrive within 2 s (we answer 408 and close); a malformed head gets
//!   hyper's 400. A connection is closed after 12 s whatever it does (2 s
//!   for the head, 10 s to take the answer), so an idle or slow client
//!   cannot hold a slot longer than that.
//! - At most 64 connections at once from anyone, and at most 8 from one
//!   peer address (more are closed unanswered); 8 more slots are kept for
//!   connections from the host itself (a peer whose address is the very
//!   address it connected to: the kubelet probing a hostNetwork pod at the
//!   node's address, a local curl). Pods that open connections and idle
//!   cannot starve the kubelet's probes: 8 of them with 8 connections each
//!   take the 64, not the reserve. Nothing from outside the host can take
//!   the reserve: the kernel drops packets from elsewhere that bear one of
//!   its own addresses, and a handshake needs the reply back. Processes on
//!   the host (hostNetwork pods among them) share it with the kubelet.
//! - The server runs on a thread and runtime of its own: it answers while
//!   the capture loop is busy or stdout stalls.
//! - The encoded metrics are reused for a second: a scrape flood costs one
//!   encoding a second, not one per request.
//! - `GET` and `HEAD` only (405 with `Allow: GET, HEAD` otherwise).
//! - The status line carries the request's version: `HTTP/1.0` for an
//!   HTTP/1.0 request (hyper answers in the client's version).
//! - `/metrics`: OpenMetrics text when the client accepts it (Prometheus
//!   does), else Prometheus text 0.0.4.
//! - `/healthz`: 200 `ok` while the capture loop drains the ring (and
//!   before capture is attached); 503 with the reason once the last drain
//!   is older than [`WEDGED_AFTER`] (the loop drains every 50 ms): a wedged
//!   loop gets the pod restarted by its liveness probe.
//! - `/readyz`: 200 once capture is attached (the `ready` flag), else 503.
//! - anything else: 404.
use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ACCEPT, ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};
use tracing::{debug, error, warn};

use super::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

/// Largest request head accepted (hyper's `max_buf_size`; 8 KiB is also
/// the smallest it allows).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;
/// Connections beyond `MAX_CONNECTIONS` only the host itself may hold (its
/// probes).
pub const HOST_SLOTS: usize = 8;
/// Connections one peer address may hold at once.
pub const MAX_PER_PEER: usize = 8;
/// `/healthz` fails once the capture loop has not drained the ring for this
/// long (200 of its 50 ms drain periods; the ring overflows long before
/// under load). With the DaemonSet's liveness probe (every 20 s, 3
/// failures) a wedged loop is restarted within 70 s.
pub const WEDGED_AFTER: Duration = Duration::from_secs(10);

/// The capture loop's health as the probes see it: attached yet (readiness),
/// and when it last drained the ring (liveness).
pub struct Health {
    start: Instant,
    ready: AtomicBool,
    /// Milliseconds from `start` to the last drain, plus one (0: none yet).
    last_drain: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self { start: Instant::now(), ready: AtomicBool::new(false), last_drain: AtomicU64::new(0) }
    }
}

impl Health {
    /// Capture is attached: ready, and drained as of now.
    pub fn attached(&self) {
        self.drained();
        self.ready.store(true, Ordering::Release);
    }

    /// The loop drained the ring just now.
    pub fn drained(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_drain.store(ms + 1, Ordering::Release);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// How long ago the loop last drained the ring, when longer than
    /// `WEDGED_AFTER`; None while it drains (or before its first drain).
    pub fn wedged(&self) -> Option<Duration> {
        let last = self.last_drain.load(Ordering::Acquire).checked_sub(1)?;
        let age = self.start.elapsed().saturating_sub(Duration::from_millis(last));
        (age > WEDGED_AFTER).then_some(age)
    }
}

/// A connection from the host itself: its peer address is the address it
/// connected to (what the kernel picks as source for a local destination).
fn from_this_host(peer: IpAddr, local: IpAddr) -> bool {
    peer.to_canonical() == local.to_canonical()
}
/// How long an encoding of the metrics is served again.
const ENCODED_FOR: Duration = Duration::from_secs(1);

/// Connections held, per peer address (entries leave at zero: at most
/// MAX_CONNECTIONS of them).
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

impl Peers {
    fn enter(&self, ip: IpAddr) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= MAX_PER_PEER {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// The latest encoding of the metrics, per format (OpenMetrics, Prometheus).
#[derive(Default)]
struct Encoded(Mutex<[Option<(Instant, Bytes)>; 2]>);

impl Encoded {
    fn get(&self, openmetrics: bool, state: &Mutex<Metrics>) -> Bytes {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[usize::from(openmetrics)];
        if let Some((at, body)) = slot.as_ref() {
            if at.elapsed() < ENCODED_FOR {
                return body.clone();
            }
        }
        let m = state.lock().unwrap_or_else(|e| e.into_inner());
        let body = Bytes::from(if openmetrics { m.encode() } else { m.encode_prometheus() });
        *slot = Some((Instant::now(), body.clone()));
        body
    }
}

/// What a client that did not finish its head in time gets before the
/// close (hyper closes without a word).
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A bound listener: bind first (a bad `--metrics-addr` fails at startup),
/// then [`Server::run`].
pub struct Server {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    read_timeout: Duration,
}

impl Server {
    /// Bind `addr`; the error names the flag and the address, e.g.
    /// "--metrics-addr 0.0.0.0:9109: address in use".
    pub fn bind(addr: SocketAddr) -> io::Result<Server> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
        // Served by tokio, on whichever runtime `run` is called from.
        listener.set_nonblocking(true)?;
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

    /// Serve on a thread of its own (and its own runtime), for the life of
    /// the process.
    pub fn spawn(self, state: Arc<Mutex<Metrics>>, health: Arc<Health>) -> io::Result<()> {
        thread::Builder::new().name("http".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match rt {
                Ok(rt) => {
                    if let Err(e) = rt.block_on(self.run(state, health)) {
                        error!("metrics server stopped: {e}");
                    }
                }
                Err(e) => error!("metrics server thread: {e}"),
            }
        })?;
        Ok(())
    }

    /// Serve until the task is dropped. Connection errors are the client's
    /// problem, never the server's: this only returns if accepting fails
    /// for good (it does not).
    pub async fn run(self, state: Arc<Mutex<Metrics>>, health: Arc<Health>) -> io::Result<()> {
        let listener = TcpListener::from_std(self.listener)?;
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.read_timeout)
            .max_buf_size(MAX_REQUEST)
            .keep_alive(false)
            // A client may shut down its sending side once the request is out.
            .half_close(true)
            .title_case_headers(true);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let host_slots = Arc::new(Semaphore::new(HOST_SLOTS));
        let peers = Arc::new(Peers::default());
        let encoded = Arc::new(Encoded::default());
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!("metrics server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !peers.enter(peer.ip()) {
                debug!(%peer, "metrics server: too many connections from this peer; closing");
                continue;
            }
            let this_host =
                stream.local_addr().is_ok_and(|local| from_this_host(peer.ip(), local.ip()));
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) if this_host => match host_slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        peers.leave(peer.ip());
                        debug!(%peer, "metrics server: too many connections; closing");
                        continue;
                    }
                },
                Err(_) => {
                    peers.leave(peer.ip());
                    debug!(%peer, "metrics server: too many connections; closing");
                    continue;
                }
            };
            let (http, state, health) = (http.clone(), state.clone(), health.clone());
            let (peers, encoded) = (peers.clone(), encoded.clone());
            let deadline = self.read_timeout + WRITE_TIMEOUT;
            tokio::spawn(async move {
                let served = handle(stream, peer, &http, &state, &health, &encoded);
                if timeout(deadline, served).await.is_err() {
                    debug!(%peer, "metrics server: connection open after {deadline:?}; closed");
                }
                peers.leave(peer.ip());
                drop(permit);
            });
        }
    }
}

fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    let what = match e.kind() {
        io::ErrorKind::AddrInUse => {
            "address in use (another imds-observer, or another exporter, listens there)".into()
        }
        io::ErrorKind::AddrNotAvailable => {
            "address not available (not an address of this host)".into()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".into()
        }
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("--metrics-addr {addr}: {what}"))
}

/// Bind `addr` and serve `/metrics`, `/healthz` and `/readyz` on it (the
/// one-call form of `Server::bind` + `Server::run`).
#[allow(dead_code)] // `run` binds first, to fail before capture starts
pub async fn serve(
    addr: SocketAddr,
    state: Arc<Mutex<Metrics>>,
    health: Arc<Health>,
) -> io::Result<()> {
    Server::bind(addr)?.run(state, health).await
}

/// One connection, one request. Errors are logged, not returned: they are
/// the client's.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    http: &http1::Builder,
    state: &Mutex<Metrics>,
    health: &Health,
    encoded: &Encoded,
) {
    let answered_error = AtomicBool::new(false);
    let service = service_fn(|req| {
        let resp = respond(&req, state, health, encoded);
        if resp.status().is_client_error() || resp.status().is_server_error() {
            answered_error.store(true, Ordering::Relaxed);
        }
        std::future::ready(Ok::<_, Infallible>(resp))
    });
    // hyper borrows the stream, so that it is still ours below.
    let served = http.serve_connection(TokioIo::new(&mut stream), service).await;
    let failed = match served {
        Ok(()) => answered_error.load(Ordering::Relaxed),
        Err(e) if e.is_timeout() => {
            // The head did not arrive in time; nothing was written yet.
            debug!(%peer, "metrics server: {e}");
            let _ = stream.write_all(REQUEST_TIMEOUT).await;
            let _ = stream.shutdown().await;
            true
        }
        Err(e) => {
            // A bad head (hyper answered 400 or 431 and shut down), or the
            // client went away.
            debug!(%peer, "metrics server: {e}");
            true
        }
    };
    if failed {
        // Read what the client still sends for a moment, so that closing
        // with unread data (an RST) does not destroy the answer before the
        // client reads it.
        let mut sink = [0u8; 4096];
        let _ = timeout(Duration::from_millis(500), async {
            let mut left: usize = 64 * 1024;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    answer(status, "text/plain; charset=utf-8", body)
}

/// The answer to one request (hyper leaves out the body for `HEAD`).
fn respond(
    req: &Request<Incoming>,
    state: &Mutex<Metrics>,
    health: &Health,
    encoded: &Encoded,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/healthz" => match health.wedged() {
            None => text(StatusCode::OK, "ok\n"),
            Some(age) => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!(
                    "wedged: the capture loop last drained the ring {:.1} s ago (more than {} s)\n",
                    age.as_secs_f64(),
                    WEDGED_AFTER.as_secs()
                ),
            ),
        },
        "/readyz" if health.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: capture is not attached\n"),
        _ => {
            const OPENMETRICS: &[u8] = b"application/openmetrics-text";
            let openmetrics = req
                .headers()
                .get_all(ACCEPT)
                .iter()
                .any(|v| v.as_bytes().windows(OPENMETRICS.len()).any(|w| w == OPENMETRICS));
            let body = encoded.get(openmetrics, state);
            let content_type =
                if openmetrics { OPENMETRICS_CONTENT_TYPE } else { PROMETHEUS_CONTENT_TYPE };
            answer(StatusCode::OK, content_type, body)
        }
    }
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
    fn start(read_timeout: Duration) -> (SocketAddr, Arc<Mutex<Metrics>>, Arc<Health>) {
        start_with(read_timeout, Health::default())
    }

    fn start_with(
        read_timeout: Duration,
        health: Health,
    ) -> (SocketAddr, Arc<Mutex<Metrics>>, Arc<Health>) {
        let state = Arc::new(Mutex::new(Metrics::default()));
        let health = Arc::new(health);
        let server =
            Server::bind("127.0.0.1:0".parse().unwrap()).unwrap().with_read_timeout(read_timeout);
        let addr = server.local_addr();
        server.spawn(state.clone(), health.clone()).unwrap();
        (addr, state, health)
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
        let (addr, state, health) = start(READ_TIMEOUT);
        {
            let mut m = state.lock().unwrap();
            let mut ev =
                Event::new(Kind::LostEvents, std::time::SystemTime::now(), "node-a".into());
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
            head.contains(
                "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
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
            assert!(
                body.contains(&format!("# TYPE imds_observer_{family} ")),
                "{family} missing:\n{body}"
            );
        }
        assert!(
            body.lines().any(|l| l == r#"imds_observer_events_lost_total{node="node-a"} 5"#),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));
        // curl: Prometheus text 0.0.4.
        let (status, head, body) = get(addr, "/metrics?x=1");
        assert_eq!(status, 200);
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(body.contains("# TYPE imds_observer_events_lost_total counter"), "{body}");
        // HEAD: the head only.
        let (status, head, body) = send(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!((status, body.as_str()), (200, ""), "{head}");

        assert_eq!(get(addr, "/healthz"), (200, get(addr, "/healthz").1, "ok\n".into()));
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (503, "not ready: capture is not attached\n"));
        health.attached();
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (200, "ready\n"));
        assert_eq!(get(addr, "/nope").0, 404);
        assert_eq!(get(addr, "/metrics/x").0, 404);
        let (status, head, _) =
            send(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
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
            let first = Server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = first.local_addr();
            assert_ne!(addr.port(), 0);
            let e = Server::bind(addr).err().expect("second bind fails");
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("--metrics-addr {addr}: address in use")), "{msg}");
            // Not an address of this host.
            let e = Server::bind("192.0.2.1:9109".parse().unwrap()).err().expect("foreign address");
            assert!(
                e.to_string().starts_with("--metrics-addr 192.0.2.1:9109: address not available"),
                "{e}"
            );
            // serve() reports the same.
            let state = Arc::new(Mutex::new(Metrics::default()));
            let e = serve(addr, state, Arc::new(Health::default())).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        });
    }

    /// Idle connections from one address cannot starve the probes: the
    /// kubelet (another address) is answered while 100 are held open.
    #[test]
    fn healthz_answers_while_idle_clients_hold_connections() {
        let (addr, _state, _ready) = start(Duration::from_secs(10));
        let idle: Vec<StdStream> = (0..100).filter_map(|_| StdStream::connect(addr).ok()).collect();
        assert!(!idle.is_empty());
        std::thread::sleep(Duration::from_millis(200));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (status, body) = rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut s = sock.connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .expect("answered in time")
                .unwrap();
            let text = String::from_utf8(out).unwrap();
            let status = text.split(' ').nth(1).unwrap_or("").to_string();
            (status, text)
        });
        assert_eq!(status, "200", "{body}");
        // The 9th and later connections of the idle peer were closed at once.
        let closed = idle
            .iter()
            .filter(|s| {
                let mut s = *s;
                s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                matches!(s.read(&mut [0u8; 1]), Ok(0))
            })
            .count();
        assert_eq!(closed, idle.len() - MAX_PER_PEER, "held: {}", idle.len() - closed);
    }

    /// A connection to `addr` from `ip` (an address of loopback).
    fn connect_from(ip: &str, addr: SocketAddr) -> StdStream {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let s = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            sock.connect(addr).await.unwrap().into_std().unwrap()
        });
        s.set_nonblocking(false).unwrap();
        s
    }

    /// Closed without an answer (or reset), within a second.
    fn refused(mut s: &StdStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        match s.read(&mut [0u8; 1]) {
            Ok(0) => true,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    /// 8 peers holding 8 idle connections each take every slot anyone may
    /// have; the host's own probe (from the address it connects to) still
    /// gets one of the slots kept for it.
    #[test]
    fn peers_holding_every_slot_leave_the_host_its_probes() {
        let (addr, _, _) = start(Duration::from_secs(10));
        let held: Vec<StdStream> = (2..=9)
            .flat_map(|p| (0..MAX_PER_PEER).map(move |_| format!("127.0.0.{p}")))
            .map(|ip| connect_from(&ip, addr))
            .collect();
        assert_eq!(held.len(), MAX_CONNECTIONS);
        std::thread::sleep(Duration::from_millis(200));
        // Every slot for anyone is taken: a ninth peer is turned away.
        assert!(refused(&connect_from("127.0.0.10", addr)), "the 64 slots are not all held");
        // The host itself is answered, as often as it asks.
        for _ in 0..HOST_SLOTS + 2 {
            let (status, _, body) = get(addr, "/healthz");
            assert_eq!((status, body.as_str()), (200, "ok\n"));
        }
        // And it may hold the slots kept for it, no more.
        let mine: Vec<StdStream> =
            (0..HOST_SLOTS).map(|_| connect_from("127.0.0.1", addr)).collect();
        std::thread::sleep(Duration::from_millis(200));
        assert!(mine.iter().all(|s| !refused(s)), "the host's connections are held");
        assert!(refused(&connect_from("127.0.0.1", addr)), "beyond the kept slots");
        drop(held);
    }

    #[test]
    fn only_the_address_connected_to_is_the_host() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(from_this_host(ip("10.0.1.17"), ip("10.0.1.17")));
        assert!(from_this_host(ip("::ffff:10.0.1.17"), ip("10.0.1.17")));
        assert!(from_this_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(!from_this_host(ip("10.0.1.18"), ip("10.0.1.17")));
        assert!(!from_this_host(ip("127.0.0.2"), ip("127.0.0.1")));
    }

    /// /healthz tells a wedged loop (no drain for `WEDGED_AFTER`) with the
    /// reason; it is fine before the first drain and again once the loop
    /// drains.
    #[test]
    fn healthz_fails_with_the_reason_when_the_loop_stops_draining() {
        let Some(start) = Instant::now().checked_sub(Duration::from_secs(30)) else { return };
        let health = Health { start, ..Health::default() };
        assert_eq!(health.wedged(), None, "before the first drain");
        // Drained once, 30 s ago.
        health.last_drain.store(1, Ordering::Release);
        health.ready.store(true, Ordering::Release);
        let (addr, _, health) = start_with(READ_TIMEOUT, health);
        let (status, _, body) = get(addr, "/healthz");
        assert_eq!(status, 503, "{body}");
        assert!(
            body.starts_with("wedged: the capture loop last drained the ring 3")
                && body.ends_with(" s ago (more than 10 s)\n"),
            "{body}"
        );
        health.drained();
        assert_eq!(get(addr, "/healthz").0, 200);
    }
}
