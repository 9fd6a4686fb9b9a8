//! The HTTP/1.1 client for the lookups that name containers: one GET per
//! connection with `Connection: close`, over a unix socket (the Docker
//! Engine API, a Nomad agent's socket), TCP, or TLS over TCP (rustls, for a
//! Nomad agent behind https).
//!
//! hyper's client connection speaks the HTTP: it writes the request, parses
//! and validates the response head and frames the body (`Content-Length`,
//! `Transfer-Encoding: chunked`, or the end of the stream). This module
//! picks the transport, bounds the exchange and says what went wrong.
//!
//! Nothing the peer does can hang or crash the caller: the whole exchange
//! (connect, TLS handshake, request, whole body) is bounded by one timeout,
//! the body by a byte limit (hyper bounds the head, at about 400 KiB), and
//! every failure is an [`Error`].

use std::{
    error::Error as _,
    fmt, io,
    net::SocketAddr,
    path::PathBuf,
    pin::{Pin, pin},
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::Duration,
};

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::{
    Uri,
    body::{Body, Bytes},
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
};

/// Replies whose body is larger than this are refused by default. A Docker
/// inspect reply is a few KiB, a Nomad allocation (with its whole job)
/// rarely more than a few hundred; the bound only stops a broken or hostile
/// peer.
pub const MAX_REPLY: usize = 4 << 20;

/// Where to connect.
#[derive(Clone)]
pub enum Transport {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
        server_name: ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    },
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Unix(p) => write!(f, "unix:{}", p.display()),
            Transport::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Transport::Tls { host, port, server_name, .. } => {
                write!(f, "tls:{host}:{port} (server name {})", server_name.to_str())
            }
        }
    }
}

/// One reply: the status and the decoded body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One GET: the target (path and query) and extra request headers.
pub struct Request<'a> {
    pub host: &'a str,
    pub target: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub timeout: Duration,
    pub max_reply: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect: no socket there, connection refused, permission,
    /// name resolution.
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// The TLS handshake failed (certificate not trusted, wrong name, ...).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// The exchange did not finish within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Reading or writing failed after connecting.
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
    /// The reply is not well-formed HTTP (or was cut short).
    #[error("invalid HTTP reply: {0}")]
    Protocol(String),
    /// The reply's body exceeds the byte limit.
    #[error("reply larger than {0} bytes")]
    TooLarge(usize),
    /// A request header would not be a single valid header line.
    #[error("header {0} contains a line break")]
    BadHeader(&'static str),
}

/// One GET, bounded by `req.timeout` as a whole.
pub async fn get(transport: &Transport, req: &Request<'_>) -> Result<Reply, Error> {
    let request = build(req)?;
    let exchange = connect_and_exchange(transport, request, req.max_reply);
    match tokio::time::timeout(req.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(req.timeout)),
    }
}

/// The request, checked before anything is sent: a header that would not be
/// one valid header line (a token with a line break) is refused, and never
/// echoed in the error.
pub(crate) fn build(req: &Request<'_>) -> Result<hyper::Request<Empty<Bytes>>, Error> {
    let mut extra = Vec::with_capacity(req.headers.len());
    for (name, value) in req.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::BadHeader("name"))?;
        let value = HeaderValue::from_str(value).map_err(|_| Error::BadHeader("value"))?;
        extra.push((name, value));
    }
    let host = HeaderValue::from_str(req.host).map_err(|_| Error::BadHeader("Host or target"))?;
    let uri: Uri = req.target.parse().map_err(|_| Error::BadHeader("Host or target"))?;
    let mut request = hyper::Request::new(Empty::new());
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(header::HOST, host);
    headers.insert(header::USER_AGENT, HeaderValue::from_static("imds-observer"));
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    // One request per connection: hyper closes it once the reply is read.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    for (name, value) in extra {
        headers.append(name, value);
    }
    Ok(request)
}

async fn connect_and_exchange(
    transport: &Transport,
    request: hyper::Request<Empty<Bytes>>,
    max: usize,
) -> Result<Reply, Error> {
    match transport {
        Transport::Unix(path) => {
            let s = UnixStream::connect(path).await.map_err(Error::Connect)?;
            exchange(s, request, max).await
        }
        Transport::Tcp { host, port } => {
            let s = tcp(host, *port).await?;
            exchange(s, request, max).await
        }
        Transport::Tls { host, port, server_name, config } => {
            let s = tcp(host, *port).await?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let s = connector.connect(server_name.clone(), s).await.map_err(Error::Tls)?;
            exchange(s, request, max).await
        }
    }
}

async fn tcp(host: &str, port: u16) -> Result<TcpStream, Error> {
    // A literal address needs no resolver; a name goes through the
    // system's (getaddrinfo on a blocking thread).
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await,
        Err(_) => TcpStream::connect((host, port)).await,
    }
    .map_err(Error::Connect)
}

/// Send the request on `stream`, read the reply (its body at most `max`
/// bytes). The connection is driven here, not on a task of its own, so that
/// the caller's timeout drops it with everything else.
pub(crate) async fn exchange<S>(
    stream: S,
    request: hyper::Request<Empty<Bytes>>,
    max: usize,
) -> Result<Reply, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Start::default();
    let io = TokioIo::new(Recorded { inner: stream, start: start.clone() });
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // "Host", "X-Nomad-Token" as written, not lowercased.
        .title_case_headers(true)
        .handshake(io)
        .await
        .map_err(|e| head_error(&e, &start))?;
    let reply = async {
        let response = sender.send_request(request).await.map_err(|e| head_error(&e, &start))?;
        let status = response.status().as_u16();
        // A declared length over the limit is refused before reading it.
        if response.body().size_hint().lower() > max as u64 {
            return Err(Error::TooLarge(max));
        }
        let body = Limited::new(response.into_body(), max);
        let body = body.collect().await.map_err(|e| body_error(e, max))?;
        Ok(Reply { status, body: body.to_bytes().into() })
    };
    let (mut conn, mut reply) = (pin!(conn), pin!(reply));
    tokio::select! {
        biased;
        r = &mut reply => r,
        c = &mut conn => match c {
            // Closed once the reply is in; the body may still be buffered.
            Ok(()) => reply.await,
            Err(e) => Err(head_error(&e, &start)),
        },
    }
}

/// A failure of the connection or of the response head.
fn head_error(e: &hyper::Error, start: &Start) -> Error {
    if let Some(io) = io_cause(e) {
        return Error::Io(owned(io));
    }
    let seen = start.0.lock().map(|s| s.clone()).unwrap_or_default();
    let detail = if e.is_incomplete_message() && seen.is_empty() {
        "empty reply".to_string()
    } else if e.is_incomplete_message() {
        format!("reply ends inside its header: {}", snippet(&seen))
    } else if e.is_parse() && !b"HTTP/".starts_with(&seen[..seen.len().min(5)]) {
        format!("not an HTTP response: {}", snippet(&seen))
    } else if e.is_parse() {
        format!("{} in {}", chain(e), snippet(&seen))
    } else {
        chain(e)
    };
    Error::Protocol(detail)
}

/// A failure while reading the body: over the limit, framing broken or cut
/// short (hyper's decoder says which), or the connection's.
fn body_error(e: Box<dyn std::error::Error + Send + Sync>, max: usize) -> Error {
    if e.is::<LengthLimitError>() {
        return Error::TooLarge(max);
    }
    let Some(io) = e.downcast_ref::<hyper::Error>().and_then(io_cause) else {
        return Error::Protocol(chain(e.as_ref()));
    };
    match io.kind() {
        io::ErrorKind::UnexpectedEof => Error::Protocol(format!("body cut short: {io}")),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            Error::Protocol(format!("bad body framing: {io}"))
        }
        _ => Error::Io(owned(io)),
    }
}

fn io_cause(e: &hyper::Error) -> Option<&io::Error> {
    e.source()?.downcast_ref::<io::Error>()
}

/// An owned copy of an I/O error that hyper only lends.
fn owned(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// An error and its causes, in words.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The first bytes of the reply, for error messages: hyper's errors name the
/// fault, not what the peer sent.
#[derive(Clone, Default)]
struct Start(Arc<Mutex<Vec<u8>>>);

const START: usize = 60;

/// The stream, keeping the [`Start`] of what it reads.
struct Recorded<S> {
    inner: S,
    start: Start,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match ready!(Pin::new(&mut self.inner).poll_read(cx, buf)) {
            Ok(()) => {}
            // TLS peers that close without close_notify: the end of the
            // stream, as for plain TCP (the framing still has to hold).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
            Err(e) => return Poll::Ready(Err(e)),
        }
        let read = &buf.filled()[before..];
        if let Ok(mut start) = self.start.0.lock() {
            let room = START.saturating_sub(start.len());
            start.extend_from_slice(&read[..read.len().min(room)]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The start of `b`, quoted, for error messages.
pub(crate) fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(60)]);
    format!("{:?}", s.as_ref())
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A fake HTTP peer for the clients' tests (docker.rs over a unix socket,
/// nomad.rs over TCP): reads one request head, records it, answers as told.
/// It writes its replies by hand, as a broken or hostile peer would.
#[cfg(test)]
pub mod fake {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tokio::{
        io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
        net::TcpListener,
    };

    /// A fake peer on 127.0.0.1 answering every connection with `what`: its
    /// port, and the requests it saw.
    pub async fn listen(what: Serve) -> (u16, Seen) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Seen::default();
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(handle(s, what.clone(), s2.clone()));
            }
        });
        (port, seen)
    }

    #[derive(Clone)]
    pub enum Serve {
        /// Write these bytes, then close.
        Reply(Vec<u8>),
        /// Write these bytes and keep the connection open.
        ReplyAndHold(Vec<u8>),
        /// A 200 head with no framing, then this many bytes.
        Flood(usize),
        /// Never answer, keep the connection open.
        Silent,
    }

    /// The request heads seen.
    pub type Seen = Arc<Mutex<Vec<String>>>;

    pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    pub async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, what: Serve, seen: Seen) {
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while find(&req, b"\r\n\r\n").is_none() {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        seen.lock().unwrap().push(String::from_utf8_lossy(&req).into_owned());
        match what {
            Serve::Reply(bytes) => {
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
            }
            Serve::ReplyAndHold(bytes) => {
                let _ = s.write_all(&bytes).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Serve::Flood(n) => {
                let _ =
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n").await;
                let block = vec![b' '; 64 << 10];
                let mut sent = 0;
                while sent < n {
                    if s.write_all(&block).await.is_err() {
                        return;
                    }
                    sent += block.len();
                }
            }
            Serve::Silent => tokio::time::sleep(Duration::from_secs(30)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::{
        fake::{self, Seen, Serve, find},
        *,
    };

    /// A fake peer on 127.0.0.1 answering every connection with `what`.
    async fn serve(what: Serve) -> (Transport, Seen) {
        let (port, seen) = fake::listen(what).await;
        (Transport::Tcp { host: "127.0.0.1".into(), port }, seen)
    }

    async fn chunked(body: &[u8]) -> Result<Reply, Error> {
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        reply.extend_from_slice(body);
        let (t, _) = serve(Serve::Reply(reply)).await;
        let timeout = Duration::from_secs(2);
        let req = Request { host: "h", target: "/", headers: &[], timeout, max_reply: MAX_REPLY };
        get(&t, &req).await
    }

    #[tokio::test]
    async fn chunk_decoder() {
        // The chunked bodies the hand-written decoder was tested with, now
        // decoded by hyper: a body, trailers skipped, cut short, sizes that
        // overflow or that the stream does not hold.
        assert_eq!(chunked(b"3\r\nabc\r\n0\r\n\r\n").await.unwrap().body, b"abc");
        assert_eq!(chunked(b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n").await.unwrap().body, b"abc");
        for cut in [&b"3\r\nab"[..], b"0\r\n", b"fffffffffffffffffffff\r\n", b"ffffffffff\r\n"] {
            let err = chunked(cut).await.unwrap_err();
            assert!(matches!(err, Error::Protocol(_)), "{cut:?}: {err:?}");
        }
    }

    /// A TLS stream whose peer closed without close_notify: its end is an
    /// `UnexpectedEof` error rather than a read of 0 bytes.
    struct NoCloseNotify(tokio::io::DuplexStream);

    impl AsyncRead for NoCloseNotify {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for NoCloseNotify {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn end_without_close_notify_ends_the_body() {
        let reply = |r: &'static [u8]| async move {
            let (ours, theirs) = tokio::io::duplex(64 << 10);
            tokio::spawn(fake::handle(theirs, Serve::Reply(r.to_vec()), Seen::default()));
            let timeout = Duration::ZERO; // not used: exchange() has no timeout of its own
            let req = Request { host: "h", target: "/", headers: &[], timeout, max_reply: 0 };
            exchange(NoCloseNotify(ours), build(&req).unwrap(), MAX_REPLY).await
        };
        // Framed by the end of the stream: the whole body.
        let got = reply(b"HTTP/1.1 200 OK\r\n\r\n{}").await.unwrap();
        assert_eq!((got.status, got.body.as_slice()), (200, &b"{}"[..]));
        // Framed by its length: still cut short.
        let err = reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").await.unwrap_err();
        assert!(matches!(&err, Error::Protocol(d) if d.contains("cut short")), "{err:?}");
    }

    #[tokio::test]
    async fn endless_head_is_refused() {
        let mut reply = b"HTTP/1.1 200 OK\r\n".to_vec();
        reply.extend(b"X-Filler: yes\r\n".repeat(64 << 10));
        let (t, _) = serve(Serve::ReplyAndHold(reply)).await;
        let timeout = Duration::from_secs(5);
        let req = Request { host: "h", target: "/", headers: &[], timeout, max_reply: MAX_REPLY };
        let err = get(&t, &req).await.unwrap_err();
        assert!(matches!(&err, Error::Protocol(d) if d.contains("head is too large")), "{err:?}");
    }

    #[tokio::test]
    async fn header_injection_is_refused_before_connecting() {
        // Nothing listens on this socket: an attempt to connect would fail
        // with Connect, not BadHeader.
        let t = Transport::Unix("/nonexistent/imds-observer-test.sock".into());
        for headers in [&[("X-Nomad-Token", "a\r\nHost: evil")][..], &[("X:Y", "v")][..]] {
            let req = Request {
                host: "h",
                target: "/",
                headers,
                timeout: Duration::from_secs(1),
                max_reply: MAX_REPLY,
            };
            let err = get(&t, &req).await.unwrap_err();
            assert!(matches!(err, Error::BadHeader(_)), "{err:?}");
            // The value itself never appears in the error.
            assert!(!err.to_string().contains("evil"), "{err}");
        }
        let req = Request {
            host: "h",
            target: "/a b",
            headers: &[],
            timeout: Duration::from_secs(1),
            max_reply: MAX_REPLY,
        };
        assert!(matches!(get(&t, &req).await.unwrap_err(), Error::BadHeader(_)));
    }

    #[tokio::test]
    async fn tcp_exchange_with_headers() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut b).await.unwrap();
                assert!(n > 0);
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
            String::from_utf8(req).unwrap()
        });
        let t = Transport::Tcp { host: "127.0.0.1".into(), port };
        let req = Request {
            host: "127.0.0.1:4646",
            target: "/v1/x?y=1",
            headers: &[("X-Test", "yes")],
            timeout: Duration::from_secs(2),
            max_reply: MAX_REPLY,
        };
        let reply = get(&t, &req).await.unwrap();
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"{}"[..]));
        let seen = server.await.unwrap();
        assert!(seen.starts_with("GET /v1/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:4646\r\n"), "{seen}");
        assert!(seen.contains("\r\nX-Test: yes\r\n"), "{seen}");
        assert!(seen.contains("\r\nConnection: close\r\n"), "{seen}");
        assert!(seen.contains("\r\nUser-Agent: imds-observer\r\n"), "{seen}");
        assert!(seen.contains("\r\nAccept: application/json\r\n"), "{seen}");
    }
}
