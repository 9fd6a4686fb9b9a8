//! A minimal HTTP/1.1 client for the lookups that name containers: one GET
//! per connection with `Connection: close`, over a unix socket (the Docker
//! Engine API, a Nomad agent's socket), TCP, or TLS over TCP (rustls, for a
//! Nomad agent behind https). The body is framed by `Content-Length`, by
//! `Transfer-Encoding: chunked`, or by the end of the stream.
//!
//! One request at a time is all the lookups need, so a client stack (hyper,
//! connection pools, redirects, proxies) would add code without adding
//! anything used here.
//!
//! Nothing the peer does can hang or crash the caller: the whole exchange
//! (connect, TLS handshake, write, read) is bounded by one timeout, the reply
//! by a byte limit, and every failure is an [`Error`].

use std::{
    fmt, io,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

/// Replies larger than this (head and body together) are refused by
/// default. A Docker inspect reply is a few KiB, a Nomad allocation (with
/// its whole job) rarely more than a few hundred; the bound only stops a
/// broken or hostile peer.
pub const MAX_REPLY: usize = 4 << 20;

/// Where to connect.
#[derive(Clone)]
pub enum Transport {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
    Tls { host: String, port: u16, server_name: ServerName<'static>, config: Arc<rustls::ClientConfig> },
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

#[derive(Debug)]
pub enum Error {
    /// Could not connect: no socket there, connection refused, permission,
    /// name resolution.
    Connect(io::Error),
    /// The TLS handshake failed (certificate not trusted, wrong name, ...).
    Tls(io::Error),
    /// The exchange did not finish within the timeout.
    Timeout(Duration),
    /// Reading or writing failed after connecting.
    Io(io::Error),
    /// The reply is not well-formed HTTP (or was cut short).
    Protocol(String),
    /// The reply exceeds the byte limit.
    TooLarge(usize),
    /// A request header would not be a single header line.
    BadHeader(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "cannot connect: {e}"),
            Error::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            Error::Timeout(after) => write!(f, "no answer within {after:?}"),
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Protocol(d) => write!(f, "invalid HTTP reply: {d}"),
            Error::TooLarge(limit) => write!(f, "reply larger than {limit} bytes"),
            Error::BadHeader(name) => write!(f, "header {name} contains a line break"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(e) | Error::Tls(e) | Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// One GET, bounded by `req.timeout` as a whole.
pub async fn get(transport: &Transport, req: &Request<'_>) -> Result<Reply, Error> {
    for (name, value) in req.headers {
        if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
            return Err(Error::BadHeader(if name.contains(['\r', '\n', ':']) { "name" } else { "value" }));
        }
    }
    if req.host.contains(['\r', '\n']) || req.target.contains(['\r', '\n', ' ']) {
        return Err(Error::BadHeader("Host or target"));
    }
    match tokio::time::timeout(req.timeout, connect_and_exchange(transport, req)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(req.timeout)),
    }
}

async fn connect_and_exchange(transport: &Transport, req: &Request<'_>) -> Result<Reply, Error> {
    let mut head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: imds-observer\r\nAccept: application/json\r\nConnection: close\r\n",
        req.target, req.host
    );
    for (name, value) in req.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let request = head.into_bytes();
    match transport {
        Transport::Unix(path) => {
            let s = UnixStream::connect(path).await.map_err(Error::Connect)?;
            exchange(s, &request, req.max_reply).await
        }
        Transport::Tcp { host, port } => {
            let s = tcp(host, *port).await?;
            exchange(s, &request, req.max_reply).await
        }
        Transport::Tls { host, port, server_name, config } => {
            let s = tcp(host, *port).await?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let s = connector.connect(server_name.clone(), s).await.map_err(Error::Tls)?;
            exchange(s, &request, req.max_reply).await
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

/// Write the request, read the reply.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
    max: usize,
) -> Result<Reply, Error> {
    stream.write_all(request).await.map_err(Error::Io)?;
    stream.flush().await.map_err(Error::Io)?;

    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let mut head: Option<Head> = None;
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // TLS peers that close without close_notify: the end of the
            // stream, as for plain TCP (the framing still has to hold).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(Error::Io(e)),
        };
        let eof = n == 0;
        if buf.len() + n > max {
            return Err(Error::TooLarge(max));
        }
        buf.extend_from_slice(&chunk[..n]);
        if head.is_none() {
            match parse_head(&buf).map_err(Error::Protocol)? {
                Some(h) => {
                    if let Framing::Length(len) = h.framing {
                        if h.len.saturating_add(len) > max {
                            return Err(Error::TooLarge(max));
                        }
                    }
                    head = Some(h);
                }
                None if eof && buf.is_empty() => return Err(Error::Protocol("empty reply".into())),
                None if eof => {
                    return Err(Error::Protocol(format!("reply ends inside its header: {}", snippet(&buf))))
                }
                None => continue,
            }
        }
        let Some(h) = &head else { continue };
        let body = &buf[h.len..];
        match h.framing {
            Framing::Length(len) => {
                if body.len() >= len {
                    return Ok(Reply { status: h.status, body: body[..len].to_vec() });
                }
                if eof {
                    return Err(Error::Protocol(format!("body cut short: {} of {len} bytes", body.len())));
                }
            }
            Framing::Chunked => {
                // Decoding is tried only when the terminating chunk may have
                // arrived, or at the end of the stream.
                if eof || body.ends_with(b"0\r\n\r\n") {
                    match decode_chunked(body, max) {
                        Ok(Some(decoded)) => return Ok(Reply { status: h.status, body: decoded }),
                        Ok(None) if eof => return Err(Error::Protocol("chunked body cut short".into())),
                        Ok(None) => {}
                        Err(detail) => return Err(Error::Protocol(detail)),
                    }
                }
            }
            Framing::Eof => {
                if eof {
                    return Ok(Reply { status: h.status, body: body.to_vec() });
                }
            }
        }
        if eof {
            return Err(Error::Protocol("reply cut short".into()));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Eof,
}

#[derive(Debug)]
struct Head {
    status: u16,
    /// Bytes of the status line and headers, with the blank line.
    len: usize,
    framing: Framing,
}

/// The status line and headers, once all of them are in `buf`.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    // Reject garbage early rather than waiting for a blank line that will
    // never come.
    let probe = &buf[..buf.len().min(5)];
    if !b"HTTP/".starts_with(probe) {
        return Err(format!("not an HTTP response: {}", snippet(buf)));
    }
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 << 10 {
            return Err("header longer than 64 KiB".into());
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "header is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    // HTTP/1.1 200 OK
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("bad status line {:?}", truncate(status_line, 80)));
    }
    let status: u16 = code.parse().map_err(|_| format!("bad status line {:?}", truncate(status_line, 80)))?;
    let mut framing = Framing::Eof;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {:?}", truncate(line, 80)));
        };
        let value = value.trim();
        if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            if value.rsplit(',').next().is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked")) {
                framing = Framing::Chunked;
            }
        } else if name.trim().eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
            let len = value.parse::<usize>().map_err(|_| format!("bad Content-Length {:?}", truncate(value, 40)))?;
            framing = Framing::Length(len);
        }
    }
    // 1xx, 204 and 304 have no body.
    if status < 200 || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok(Some(Head { status, len: end + 4, framing }))
}

/// The decoded body, `None` if the last chunk has not arrived yet.
fn decode_chunked(mut body: &[u8], max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let Some(eol) = find(body, b"\r\n") else { return Ok(None) };
        let size_line = std::str::from_utf8(&body[..eol]).map_err(|_| "bad chunk size".to_string())?;
        // Chunk extensions (";name=value") are ignored.
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {:?}", truncate(size_line, 40)))?;
        if size > max {
            return Err(format!("chunk of {size} bytes"));
        }
        body = &body[eol + 2..];
        if size == 0 {
            // Trailer fields, then a blank line.
            loop {
                let Some(eol) = find(body, b"\r\n") else { return Ok(None) };
                if eol == 0 {
                    return Ok(Some(out));
                }
                body = &body[eol + 2..];
            }
        }
        if body.len() < size + 2 {
            return Ok(None);
        }
        if &body[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
#[cfg(test)]
pub mod fake {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

    pub async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, what: Serve, seen: Seen) {
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while super::find(&req, b"\r\n\r\n").is_none() {
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
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n").await;
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
    use super::*;

    #[test]
    fn chunk_decoder() {
        let max = MAX_REPLY;
        assert_eq!(decode_chunked(b"3\r\nabc\r\n0\r\n\r\n", max), Ok(Some(b"abc".to_vec())));
        assert_eq!(decode_chunked(b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", max), Ok(Some(b"abc".to_vec())));
        assert_eq!(decode_chunked(b"3\r\nab", max), Ok(None));
        assert_eq!(decode_chunked(b"0\r\n", max), Ok(None));
        assert!(decode_chunked(b"fffffffffffffffffffff\r\n", max).is_err());
        assert!(decode_chunked(b"ffffffffff\r\n", max).is_err());
    }

    #[tokio::test]
    async fn header_injection_is_refused_before_connecting() {
        // Nothing listens on this socket: an attempt to connect would fail
        // with Connect, not BadHeader.
        let t = Transport::Unix("/nonexistent/imds-observer-test.sock".into());
        for headers in [&[("X-Nomad-Token", "a\r\nHost: evil")][..], &[("X:Y", "v")][..]] {
            let req = Request { host: "h", target: "/", headers, timeout: Duration::from_secs(1), max_reply: MAX_REPLY };
            let err = get(&t, &req).await.unwrap_err();
            assert!(matches!(err, Error::BadHeader(_)), "{err:?}");
            // The value itself never appears in the error.
            assert!(!err.to_string().contains("evil"), "{err}");
        }
        let req = Request { host: "h", target: "/a b", headers: &[], timeout: Duration::from_secs(1), max_reply: MAX_REPLY };
        assert!(matches!(get(&t, &req).await.unwrap_err(), Error::BadHeader(_)));
    }

    #[tokio::test]
    async fn tcp_exchange_with_headers() {
        use tokio::net::TcpListener;
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
    }
}
