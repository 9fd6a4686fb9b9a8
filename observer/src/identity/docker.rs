//! A minimal Docker Engine API client over a unix socket: container name,
//! image and labels by container id. Works with Docker and with Podman's
//! Docker-compatible service (`podman system service`), which serve the same
//! `GET /containers/{id}/json` ("ContainerInspect" in the Engine API
//! reference; Podman's compat handler mirrors it).
//!
//! HTTP/1.1 is written by hand: one GET per connection with
//! `Connection: close`, a body framed by `Content-Length`, by
//! `Transfer-Encoding: chunked`, or by the end of the stream. One request is
//! all this needs, so a client stack (hyper + hyperlocal) would add
//! dependencies without adding anything used here.
//!
//! Nothing the peer does can hang or crash the caller: the whole exchange
//! (connect, write, read) is bounded by one timeout, the reply by
//! [`MAX_REPLY`] bytes, and every failure is a [`DockerError`].

use std::{
    collections::BTreeMap,
    fmt, io,
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

/// Replies larger than this (head and body together) are refused. A real
/// inspect reply is a few KiB; the bound only stops a broken or hostile peer.
pub const MAX_REPLY: usize = 4 << 20;

/// Default bound on one whole request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The well-known socket paths, in the order to try them: Docker's, then
/// rootful Podman's (`podman.socket` / `podman system service`), then
/// Docker's under `/run` for hosts where `/var/run` is not a link to it.
pub fn default_sockets() -> Vec<PathBuf> {
    ["/var/run/docker.sock", "/run/podman/podman.sock", "/run/docker.sock"].into_iter().map(PathBuf::from).collect()
}

/// What the runtime says about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full id.
    pub id: String,
    /// Name without Docker's leading '/'.
    pub name: String,
    /// The image as the container was created from it (`Config.Image`, e.g.
    /// "api:1.42"), not the image id.
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug)]
pub enum DockerError {
    /// The id would not be a safe path segment (only `[A-Za-z0-9_.-]`).
    InvalidId(String),
    /// Could not connect: no socket there, connection refused, permission.
    Connect { socket: PathBuf, source: io::Error },
    /// The exchange did not finish within the timeout.
    Timeout { socket: PathBuf, after: Duration },
    /// Reading or writing failed after connecting.
    Io { socket: PathBuf, source: io::Error },
    /// The reply is not well-formed HTTP (or was cut short).
    Protocol { socket: PathBuf, detail: String },
    /// The reply exceeds [`MAX_REPLY`].
    TooLarge { socket: PathBuf, limit: usize },
    /// An HTTP status other than 200 and 404, with the daemon's message.
    Status { socket: PathBuf, code: u16, message: String },
    /// The body is not the JSON of a container.
    Json { socket: PathBuf, source: serde_json::Error },
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerError::InvalidId(id) => write!(f, "invalid container id {:?}", truncate(id, 80)),
            DockerError::Connect { socket, source } => {
                write!(f, "cannot connect to container runtime socket {}: {source}", socket.display())
            }
            DockerError::Timeout { socket, after } => {
                write!(f, "container runtime at {} did not answer within {after:?}", socket.display())
            }
            DockerError::Io { socket, source } => {
                write!(f, "i/o error talking to container runtime at {}: {source}", socket.display())
            }
            DockerError::Protocol { socket, detail } => {
                write!(f, "container runtime at {} sent an invalid HTTP reply: {detail}", socket.display())
            }
            DockerError::TooLarge { socket, limit } => {
                write!(f, "container runtime at {} sent a reply larger than {limit} bytes", socket.display())
            }
            DockerError::Status { socket, code, message } => {
                write!(f, "container runtime at {} answered HTTP {code}: {message}", socket.display())
            }
            DockerError::Json { socket, source } => {
                write!(f, "container runtime at {} sent invalid container JSON: {source}", socket.display())
            }
        }
    }
}

impl std::error::Error for DockerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DockerError::Connect { source, .. } | DockerError::Io { source, .. } => Some(source),
            DockerError::Json { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A client for one socket. Cheap; each call opens its own connection.
#[derive(Clone, Debug)]
pub struct DockerClient {
    socket: PathBuf,
    timeout: Duration,
}

impl DockerClient {
    /// A client for `socket` with the [`DEFAULT_TIMEOUT`] of 2 s.
    pub fn new(socket: PathBuf) -> Self {
        DockerClient { socket, timeout: DEFAULT_TIMEOUT }
    }

    #[cfg(test)]
    /// The same client with another bound on each whole request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }


    #[cfg(test)]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET /containers/<id>/json`. `Ok(None)` when the runtime does not know
    /// the container (404). `id` may be a full or short id or a name.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err(DockerError::InvalidId(id.to_owned()));
        }
        let reply = self.get(&format!("/containers/{id}/json")).await?;
        match reply.status {
            200 => {}
            404 => return Ok(None),
            code => {
                return Err(DockerError::Status {
                    socket: self.socket.clone(),
                    code,
                    message: error_message(&reply.body),
                })
            }
        }
        let raw: RawInspect = serde_json::from_slice(&reply.body)
            .map_err(|source| DockerError::Json { socket: self.socket.clone(), source })?;
        let config = raw.config.unwrap_or_default();
        Ok(Some(ContainerInfo {
            id: raw.id,
            name: raw.name.map(|n| n.strip_prefix('/').map(str::to_owned).unwrap_or(n)).unwrap_or_default(),
            image: config.image.unwrap_or_default(),
            labels: config.labels.unwrap_or_default(),
        }))
    }

    /// One GET, bounded by the timeout as a whole.
    async fn get(&self, target: &str) -> Result<Reply, DockerError> {
        match tokio::time::timeout(self.timeout, self.exchange(target)).await {
            Ok(r) => r,
            Err(_) => Err(DockerError::Timeout { socket: self.socket.clone(), after: self.timeout }),
        }
    }

    async fn exchange(&self, target: &str) -> Result<Reply, DockerError> {
        let socket = &self.socket;
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|source| DockerError::Connect { socket: socket.clone(), source })?;
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: imds-observer\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        let io_err = |source| DockerError::Io { socket: socket.clone(), source };
        stream.write_all(request.as_bytes()).await.map_err(io_err)?;

        let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
        let mut chunk = vec![0u8; 64 << 10];
        let mut head: Option<Head> = None;
        loop {
            let n = stream.read(&mut chunk).await.map_err(io_err)?;
            let eof = n == 0;
            if buf.len() + n > MAX_REPLY {
                return Err(DockerError::TooLarge { socket: socket.clone(), limit: MAX_REPLY });
            }
            buf.extend_from_slice(&chunk[..n]);
            if head.is_none() {
                match parse_head(&buf).map_err(|detail| self.protocol(detail))? {
                    Some(h) => {
                        if let Framing::Length(len) = h.framing {
                            if h.len.saturating_add(len) > MAX_REPLY {
                                return Err(DockerError::TooLarge { socket: socket.clone(), limit: MAX_REPLY });
                            }
                        }
                        head = Some(h);
                    }
                    None if eof && buf.is_empty() => return Err(self.protocol("empty reply".into())),
                    None if eof => {
                        return Err(self.protocol(format!("reply ends inside its header: {}", snippet(&buf))))
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
                        return Err(self.protocol(format!("body cut short: {} of {len} bytes", body.len())));
                    }
                }
                Framing::Chunked => {
                    // Decoding is tried only when the terminating chunk may
                    // have arrived, or at the end of the stream.
                    if eof || body.ends_with(b"0\r\n\r\n") {
                        match decode_chunked(body) {
                            Ok(Some(decoded)) => return Ok(Reply { status: h.status, body: decoded }),
                            Ok(None) if eof => return Err(self.protocol("chunked body cut short".into())),
                            Ok(None) => {}
                            Err(detail) => return Err(self.protocol(detail)),
                        }
                    }
                }
                Framing::Eof => {
                    if eof {
                        return Ok(Reply { status: h.status, body: body.to_vec() });
                    }
                }
            }
        }
    }

    fn protocol(&self, detail: String) -> DockerError {
        DockerError::Protocol { socket: self.socket.clone(), detail }
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: Vec<u8>,
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
fn decode_chunked(mut body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let Some(eol) = find(body, b"\r\n") else { return Ok(None) };
        let size_line = std::str::from_utf8(&body[..eol]).map_err(|_| "bad chunk size".to_string())?;
        // Chunk extensions (";name=value") are ignored.
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {:?}", truncate(size_line, 40)))?;
        if size > MAX_REPLY {
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The daemon's `{"message": "..."}`, or the start of the body.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Msg {
        message: String,
    }
    match serde_json::from_slice::<Msg>(body) {
        Ok(m) => truncate(&m.message, 200),
        Err(_) => snippet(body),
    }
}

fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(60)]);
    format!("{:?}", s.as_ref())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[derive(Deserialize)]
struct RawInspect {
    #[serde(rename = "Id", default)]
    id: String,
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Config", default)]
    config: Option<RawConfig>,
}

#[derive(Default, Deserialize)]
struct RawConfig {
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::{
            atomic::{AtomicU32, Ordering},
            Arc,
        },
        time::Instant,
    };
    use tokio::{net::UnixListener, sync::Mutex};

    const ID: &str = "8d1c3e5fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";

    /// `docker inspect` of a Kubernetes container (trimmed of volumes and
    /// most of HostConfig, otherwise as the daemon sends it).
    fn inspect_json() -> String {
        format!(
            r#"{{"Id":"{ID}","Created":"2024-05-02T09:14:07.123456789Z","Path":"/app/api","Args":["--port=8080"],
"State":{{"Status":"running","Running":true,"Paused":false,"Restarting":false,"OOMKilled":false,"Dead":false,"Pid":48213,"ExitCode":0,"Error":"","StartedAt":"2024-05-02T09:14:07.512Z","FinishedAt":"0001-01-01T00:00:00Z"}},
"Image":"sha256:4f0a1d6bd4c25b4ff4a0b3a6a0c2b9b8e7f3b1c2d3e4f5a6b7c8d9e0f1a2b3c4",
"ResolvConfPath":"/var/lib/docker/containers/{ID}/resolv.conf","HostnamePath":"/var/lib/docker/containers/{ID}/hostname",
"LogPath":"/var/lib/docker/containers/{ID}/{ID}-json.log","Name":"/payments-api","RestartCount":0,"Driver":"overlay2","Platform":"linux",
"HostConfig":{{"NetworkMode":"bridge","CgroupParent":"","Runtime":"runc","Memory":536870912}},
"Mounts":[],
"Config":{{"Hostname":"api-7f9c","Domainname":"","User":"1000","AttachStdin":false,"Tty":false,
"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","PORT=8080"],
"Cmd":["--port=8080"],"Image":"api:1.42","Volumes":null,"WorkingDir":"/app","Entrypoint":["/app/api"],"OnBuild":null,
"Labels":{{"io.kubernetes.container.name":"api","io.kubernetes.docker.type":"container","io.kubernetes.pod.name":"api-7f9c","io.kubernetes.pod.namespace":"payments","io.kubernetes.pod.uid":"0f4b2c7e-9a1d-4e3b-8c6a-5d2e1f0a9b8c","org.opencontainers.image.version":"1.42"}}}},
"NetworkSettings":{{"Bridge":"","SandboxID":"1b9c","Ports":{{}},"IPAddress":"172.17.0.3","Networks":{{"bridge":{{"IPAddress":"172.17.0.3","Gateway":"172.17.0.1"}}}}}}}}"#
        )
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "imds-docker-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// What the server does with each connection after reading the request.
    #[derive(Clone)]
    enum Serve {
        /// Write these bytes, then close.
        Reply(Vec<u8>),
        /// Write these bytes and keep the connection open.
        ReplyAndHold(Vec<u8>),
        /// Write this many bytes of body with no framing, then close.
        Flood(usize),
        /// Never answer, keep the connection open.
        Silent,
    }

    /// A server on a fresh socket. Returns the socket and the requests seen.
    async fn serve(dir: &TempDir, what: Serve) -> (PathBuf, Arc<Mutex<Vec<String>>>) {
        let path = dir.0.join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let what = what.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut b = [0u8; 1024];
                    while find(&req, b"\r\n\r\n").is_none() {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    seen.lock().await.push(String::from_utf8_lossy(&req).into_owned());
                    match what {
                        Serve::Reply(bytes) => {
                            let _ = s.write_all(&bytes).await;
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
                });
            }
        });
        (path, seen)
    }

    fn http(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut v = format!("HTTP/1.1 {status}\r\n{headers}\r\n").into_bytes();
        v.extend_from_slice(body);
        v
    }

    fn with_length(status: &str, body: &str) -> Vec<u8> {
        http(
            status,
            &format!("Api-Version: 1.45\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len()),
            body.as_bytes(),
        )
    }

    fn chunked(body: &str, sizes: &[usize]) -> Vec<u8> {
        let mut out =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut rest = body.as_bytes();
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            out.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            i += 1;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn client(path: &std::path::Path) -> DockerClient {
        DockerClient::new(path.to_path_buf()).with_timeout(Duration::from_millis(500))
    }

    fn want_info() -> ContainerInfo {
        let mut labels = BTreeMap::new();
        for (k, v) in [
            ("io.kubernetes.container.name", "api"),
            ("io.kubernetes.docker.type", "container"),
            ("io.kubernetes.pod.name", "api-7f9c"),
            ("io.kubernetes.pod.namespace", "payments"),
            ("io.kubernetes.pod.uid", "0f4b2c7e-9a1d-4e3b-8c6a-5d2e1f0a9b8c"),
            ("org.opencontainers.image.version", "1.42"),
        ] {
            labels.insert(k.to_owned(), v.to_owned());
        }
        ContainerInfo { id: ID.into(), name: "payments-api".into(), image: "api:1.42".into(), labels }
    }

    #[tokio::test]
    async fn inspect_content_length() {
        let d = tempdir();
        let (path, seen) = serve(&d, Serve::Reply(with_length("200 OK", &inspect_json()))).await;
        let got = client(&path).inspect(ID).await.unwrap();
        assert_eq!(got, Some(want_info()));
        let req = seen.lock().await[0].clone();
        assert!(req.starts_with(&format!("GET /containers/{ID}/json HTTP/1.1\r\n")), "{req}");
        assert!(req.contains("\r\nHost: docker\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    }

    #[tokio::test]
    async fn content_length_does_not_wait_for_close() {
        let d = tempdir();
        let (path, _) = serve(&d, Serve::ReplyAndHold(with_length("200 OK", &inspect_json()))).await;
        assert_eq!(client(&path).inspect(ID).await.unwrap(), Some(want_info()));
    }

    #[tokio::test]
    async fn inspect_chunked() {
        let d = tempdir();
        // Odd chunk sizes so that chunks split UTF-8 and JSON tokens.
        let (path, _) = serve(&d, Serve::ReplyAndHold(chunked(&inspect_json(), &[1, 7, 300, 4096]))).await;
        assert_eq!(client(&path).inspect(ID).await.unwrap(), Some(want_info()));
    }

    #[tokio::test]
    async fn body_to_end_of_stream() {
        let d = tempdir();
        let reply = http("200 OK", "Content-Type: application/json\r\n", inspect_json().as_bytes());
        let (path, _) = serve(&d, Serve::Reply(reply)).await;
        assert_eq!(client(&path).inspect(ID).await.unwrap(), Some(want_info()));
    }

    #[tokio::test]
    async fn podman_compat_reply() {
        // Podman's compat API: same shape; labels may be null.
        let d = tempdir();
        let body = format!(
            r#"{{"Id":"{ID}","Name":"web","Config":{{"Image":"docker.io/library/nginx:1.27","Labels":null}}}}"#
        );
        let (path, _) = serve(&d, Serve::Reply(with_length("200 OK", &body))).await;
        let got = client(&path).inspect(ID).await.unwrap().unwrap();
        assert_eq!(got.name, "web");
        assert_eq!(got.image, "docker.io/library/nginx:1.27");
        assert!(got.labels.is_empty());
    }

    #[tokio::test]
    async fn not_found_is_none() {
        let d = tempdir();
        let body = format!(r#"{{"message":"No such container: {ID}"}}"#);
        let (path, _) = serve(&d, Serve::Reply(with_length("404 Not Found", &body))).await;
        assert_eq!(client(&path).inspect(ID).await.unwrap(), None);
    }

    #[tokio::test]
    async fn server_error_carries_the_message() {
        let d = tempdir();
        let body = r#"{"message":"server is shutting down"}"#;
        let (path, _) = serve(&d, Serve::Reply(with_length("500 Internal Server Error", body))).await;
        let err = client(&path).inspect(ID).await.unwrap_err();
        assert!(matches!(err, DockerError::Status { code: 500, .. }), "{err:?}");
        assert!(err.to_string().contains("HTTP 500: server is shutting down"), "{err}");
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error() {
        let d = tempdir();
        let (path, _) = serve(&d, Serve::ReplyAndHold(b"\x16\x03\x01\x02\x00garbage that is not http".to_vec())).await;
        let err = client(&path).inspect(ID).await.unwrap_err();
        assert!(matches!(err, DockerError::Protocol { .. }), "{err:?}");
        assert!(err.to_string().contains("not an HTTP response"), "{err}");
    }

    #[tokio::test]
    async fn malformed_replies_are_protocol_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "empty reply"),
            (b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(), "ends inside its header"),
            (b"HTTP/1.1 abc OK\r\n\r\n".to_vec(), "bad status line"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(), "bad Content-Length"),
            (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n".to_vec(), "bad header line"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}".to_vec(), "cut short"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), "bad chunk size"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}".to_vec(), "chunked body cut short"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n".to_vec(), "CRLF"),
        ];
        for (reply, want) in cases {
            let d = tempdir();
            let (path, _) = serve(&d, Serve::Reply(reply.clone())).await;
            let err = client(&path).inspect(ID).await.unwrap_err();
            assert!(matches!(err, DockerError::Protocol { .. }), "{reply:?}: {err:?}");
            assert!(err.to_string().contains(want), "{reply:?}: {err}");
        }
    }

    #[tokio::test]
    async fn invalid_json_is_a_json_error() {
        for body in ["{\"Id\": ", "[1,2,3]", "null", "{\"Id\":\"x\",\"Config\":{\"Labels\":{\"a\":1}}}"] {
            let d = tempdir();
            let (path, _) = serve(&d, Serve::Reply(with_length("200 OK", body))).await;
            let err = client(&path).inspect(ID).await.unwrap_err();
            assert!(matches!(err, DockerError::Json { .. }), "{body}: {err:?}");
            assert!(err.to_string().contains("invalid container JSON"), "{err}");
        }
    }

    #[tokio::test]
    async fn huge_reply_is_refused() {
        let d = tempdir();
        let (path, _) = serve(&d, Serve::Flood(MAX_REPLY + (1 << 20))).await;
        let err = DockerClient::new(path).inspect(ID).await.unwrap_err();
        assert!(matches!(err, DockerError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("larger than 4194304 bytes"), "{err}");

        // A declared length over the limit is refused before reading it.
        let d = tempdir();
        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n{".to_vec();
        let (path, _) = serve(&d, Serve::ReplyAndHold(reply)).await;
        let err = client(&path).inspect(ID).await.unwrap_err();
        assert!(matches!(err, DockerError::TooLarge { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn silent_server_times_out_within_the_timeout() {
        let d = tempdir();
        let (path, _) = serve(&d, Serve::Silent).await;
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        let err = DockerClient::new(path).with_timeout(timeout).inspect(ID).await.unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, DockerError::Timeout { .. }), "{err:?}");
        // Generous slack for a loaded CI machine; a hang would take 30 s.
        assert!(took >= timeout && took < timeout + Duration::from_secs(1), "{took:?}");
        assert!(err.to_string().contains("did not answer within 300ms"), "{err}");
    }

    #[tokio::test]
    async fn slow_drip_times_out_too() {
        // A header that never ends, one byte at a time, is bounded as a whole.
        let d = tempdir();
        let path = d.0.join("drip.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            for _ in 0..1000 {
                if s.write_all(b"X").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let start = Instant::now();
        let err = DockerClient::new(path).with_timeout(Duration::from_millis(300)).inspect(ID).await.unwrap_err();
        assert!(matches!(err, DockerError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_millis(1300), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let d = tempdir();
        let path = d.0.join("nope.sock");
        let err = client(&path).inspect(ID).await.unwrap_err();
        assert!(
            matches!(&err, DockerError::Connect { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("cannot connect to container runtime socket") && msg.contains("nope.sock"), "{msg}");
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let d = tempdir();
        let path = d.0.join("stale.sock");
        drop(UnixListener::bind(&path).unwrap()); // the file stays, nobody listens
        let err = client(&path).inspect(ID).await.unwrap_err();
        assert!(
            matches!(&err, DockerError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn unsafe_ids_are_refused_without_a_request() {
        let d = tempdir();
        let (path, seen) = serve(&d, Serve::Reply(with_length("200 OK", "{}"))).await;
        for id in ["", "../../info", "a b", "x?all=1", "ü", "a\r\nHost: evil"] {
            let err = client(&path).inspect(id).await.unwrap_err();
            assert!(matches!(err, DockerError::InvalidId(_)), "{id:?}: {err:?}");
        }
        assert!(seen.lock().await.is_empty());
        // Names are fine.
        assert!(client(&path).inspect("payments-api_1.v2").await.is_ok());
    }

    #[test]
    fn default_socket_order() {
        assert_eq!(
            default_sockets(),
            ["/var/run/docker.sock", "/run/podman/podman.sock", "/run/docker.sock"].map(PathBuf::from).to_vec()
        );
        assert_eq!(DockerClient::new("/x".into()).timeout(), Duration::from_secs(2));
    }

    #[test]
    fn chunk_decoder() {
        assert_eq!(decode_chunked(b"3\r\nabc\r\n0\r\n\r\n"), Ok(Some(b"abc".to_vec())));
        assert_eq!(decode_chunked(b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"), Ok(Some(b"abc".to_vec())));
        assert_eq!(decode_chunked(b"3\r\nab"), Ok(None));
        assert_eq!(decode_chunked(b"0\r\n"), Ok(None));
        assert!(decode_chunked(b"fffffffffffffffffffff\r\n").is_err());
        assert!(decode_chunked(b"ffffffffff\r\n").is_err());
    }
}
