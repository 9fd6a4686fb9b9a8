//! A minimal Docker Engine API client over a unix socket: container name,
//! image and labels by container id. Works with Docker and with Podman's
//! Docker-compatible service (`podman system service`), which serve the same
//! `GET /containers/{id}/json` ("ContainerInspect" in the Engine API
//! reference; Podman's compat handler mirrors it).
//!
//! HTTP/1.1 is the shared client (`http.rs`, on hyper): one GET per
//! connection, the whole exchange (connect, write, read) bounded by one
//! timeout, the reply's body by [`MAX_REPLY`] bytes, and every failure is a
//! [`DockerError`] that names the socket.

use std::{collections::BTreeMap, io, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use super::http::MAX_REPLY;
use super::http::{self, snippet, truncate};

/// Default bound on one whole request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The well-known socket paths, in the order to try them: Docker's, then
/// rootful Podman's (`podman.socket` / `podman system service`), then
/// Docker's under `/run` for hosts where `/var/run` is not a link to it.
pub fn default_sockets() -> Vec<PathBuf> {
    ["/var/run/docker.sock", "/run/podman/podman.sock", "/run/docker.sock"]
        .into_iter()
        .map(PathBuf::from)
        .collect()
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

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The id would not be a safe path segment (only `[A-Za-z0-9_.-]`).
    #[error("invalid container id {:?}", truncate(.0, 80))]
    InvalidId(String),
    /// Could not connect: no socket there, connection refused, permission.
    #[error("cannot connect to container runtime socket {}: {source}", .socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    /// The exchange did not finish within the timeout.
    #[error("container runtime at {} did not answer within {after:?}", .socket.display())]
    Timeout { socket: PathBuf, after: Duration },
    /// Reading or writing failed after connecting.
    #[error("i/o error talking to container runtime at {}: {source}", .socket.display())]
    Io { socket: PathBuf, source: io::Error },
    /// The reply is not well-formed HTTP (or was cut short).
    #[error("container runtime at {} sent an invalid HTTP reply: {detail}", .socket.display())]
    Protocol { socket: PathBuf, detail: String },
    /// The reply exceeds [`MAX_REPLY`].
    #[error("container runtime at {} sent a reply larger than {limit} bytes", .socket.display())]
    TooLarge { socket: PathBuf, limit: usize },
    /// An HTTP status other than 200 and 404, with the daemon's message.
    #[error("container runtime at {} answered HTTP {code}: {message}", .socket.display())]
    Status { socket: PathBuf, code: u16, message: String },
    /// The body is not the JSON of a container.
    #[error("container runtime at {} sent invalid container JSON: {source}", .socket.display())]
    Json { socket: PathBuf, source: serde_json::Error },
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
        if id.is_empty()
            || id.len() > 256
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(DockerError::InvalidId(id.to_owned()));
        }
        let reply = self.get(&format!("/containers/{id}/json")).await?;
        self.inspect_reply(reply)
    }

    /// What an inspect reply says: the container, None for 404, else why
    /// not. Pure, apart from the exchange (the fuzz target drives it).
    pub(crate) fn inspect_reply(
        &self,
        reply: http::Reply,
    ) -> Result<Option<ContainerInfo>, DockerError> {
        match reply.status {
            200 => {}
            404 => return Ok(None),
            code => {
                return Err(DockerError::Status {
                    socket: self.socket.clone(),
                    code,
                    message: error_message(&reply.body),
                });
            }
        }
        let raw: RawInspect = serde_json::from_slice(&reply.body)
            .map_err(|source| DockerError::Json { socket: self.socket.clone(), source })?;
        let config = raw.config.unwrap_or_default();
        Ok(Some(ContainerInfo {
            id: raw.id,
            name: raw
                .name
                .map(|n| n.strip_prefix('/').map(str::to_owned).unwrap_or(n))
                .unwrap_or_default(),
            image: config.image.unwrap_or_default(),
            labels: config.labels.unwrap_or_default(),
        }))
    }

    /// One GET, bounded by the timeout as a whole.
    async fn get(&self, target: &str) -> Result<http::Reply, DockerError> {
        let req = http::Request {
            host: "docker",
            target,
            headers: &[],
            timeout: self.timeout,
            max_reply: MAX_REPLY,
        };
        let socket = self.socket.clone();
        http::get(&http::Transport::Unix(self.socket.clone()), &req).await.map_err(|e| match e {
            http::Error::Connect(source) => DockerError::Connect { socket, source },
            http::Error::Timeout(after) => DockerError::Timeout { socket, after },
            http::Error::Io(source) | http::Error::Tls(source) => {
                DockerError::Io { socket, source }
            }
            http::Error::TooLarge(limit) => DockerError::TooLarge { socket, limit },
            http::Error::Protocol(detail) => DockerError::Protocol { socket, detail },
            e @ http::Error::BadHeader(_) => {
                DockerError::Protocol { socket, detail: e.to_string() }
            }
        })
    }
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
    use std::{
        sync::atomic::{AtomicU32, Ordering},
        time::Instant,
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::UnixListener,
    };

    use super::*;
    use crate::identity::http::fake::{self, Seen, Serve};

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

    /// A server on a fresh socket. Returns the socket and the requests seen.
    async fn serve(dir: &TempDir, what: Serve) -> (PathBuf, Seen) {
        let path = dir.0.join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Seen::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(fake::handle(s, what.clone(), seen2.clone()));
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
            &format!(
                "Api-Version: 1.45\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ),
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
        ContainerInfo {
            id: ID.into(),
            name: "payments-api".into(),
            image: "api:1.42".into(),
            labels,
        }
    }

    /// The reply handling alone, as the fuzz target drives it.
    #[test]
    fn inspect_reply_by_status() {
        let c = DockerClient::new("/nonexistent.sock".into());
        let reply = |status, body: &str| http::Reply { status, body: body.as_bytes().to_vec() };
        assert_eq!(c.inspect_reply(reply(200, &inspect_json())).unwrap(), Some(want_info()));
        assert_eq!(c.inspect_reply(reply(404, "")).unwrap(), None);
        let err = c.inspect_reply(reply(500, r#"{"message":"boom"}"#)).unwrap_err();
        assert!(
            matches!(&err, DockerError::Status { code: 500, message, .. } if message == "boom")
        );
        assert!(matches!(c.inspect_reply(reply(200, "{")), Err(DockerError::Json { .. })));
    }

    #[tokio::test]
    async fn inspect_content_length() {
        let d = tempdir();
        let (path, seen) = serve(&d, Serve::Reply(with_length("200 OK", &inspect_json()))).await;
        let got = client(&path).inspect(ID).await.unwrap();
        assert_eq!(got, Some(want_info()));
        let req = seen.lock().unwrap()[0].clone();
        assert!(req.starts_with(&format!("GET /containers/{ID}/json HTTP/1.1\r\n")), "{req}");
        assert!(req.contains("\r\nHost: docker\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    }

    #[tokio::test]
    async fn content_length_does_not_wait_for_close() {
        let d = tempdir();
        let (path, _) =
            serve(&d, Serve::ReplyAndHold(with_length("200 OK", &inspect_json()))).await;
        assert_eq!(client(&path).inspect(ID).await.unwrap(), Some(want_info()));
    }

    #[tokio::test]
    async fn inspect_chunked() {
        let d = tempdir();
        // Odd chunk sizes so that chunks split UTF-8 and JSON tokens.
        let (path, _) =
            serve(&d, Serve::ReplyAndHold(chunked(&inspect_json(), &[1, 7, 300, 4096]))).await;
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
        let (path, _) =
            serve(&d, Serve::Reply(with_length("500 Internal Server Error", body))).await;
        let err = client(&path).inspect(ID).await.unwrap_err();
        assert!(matches!(err, DockerError::Status { code: 500, .. }), "{err:?}");
        assert!(err.to_string().contains("HTTP 500: server is shutting down"), "{err}");
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error() {
        let d = tempdir();
        let (path, _) = serve(
            &d,
            Serve::ReplyAndHold(b"\x16\x03\x01\x02\x00garbage that is not http".to_vec()),
        )
        .await;
        let err = client(&path).inspect(ID).await.unwrap_err();
        assert!(matches!(err, DockerError::Protocol { .. }), "{err:?}");
        assert!(err.to_string().contains("not an HTTP response"), "{err}");
    }

    #[tokio::test]
    async fn malformed_replies_are_protocol_errors() {
        // The details past the first two are hyper's words (the
        // hand-written parser said "bad status line", "bad Content-Length",
        // "bad header line", "bad chunk size", "CRLF").
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "empty reply"),
            (b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(), "ends inside its header"),
            (b"HTTP/1.1 abc OK\r\n\r\n".to_vec(), "invalid HTTP status-code"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(), "invalid content-length"),
            (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n".to_vec(), "invalid HTTP header"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}".to_vec(), "body cut short"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), "chunk size"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}".to_vec(),
                "body cut short",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n".to_vec(),
                "chunk body CR",
            ),
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
        for body in
            ["{\"Id\": ", "[1,2,3]", "null", "{\"Id\":\"x\",\"Config\":{\"Labels\":{\"a\":1}}}"]
        {
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
        let err = DockerClient::new(path)
            .with_timeout(Duration::from_millis(300))
            .inspect(ID)
            .await
            .unwrap_err();
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
        assert!(
            msg.contains("cannot connect to container runtime socket") && msg.contains("nope.sock"),
            "{msg}"
        );
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
        assert!(seen.lock().unwrap().is_empty());
        // Names are fine.
        assert!(client(&path).inspect("payments-api_1.v2").await.is_ok());
    }

    #[test]
    fn default_socket_order() {
        assert_eq!(
            default_sockets(),
            ["/var/run/docker.sock", "/run/podman/podman.sock", "/run/docker.sock"]
                .map(PathBuf::from)
                .to_vec()
        );
        assert_eq!(DockerClient::new("/x".into()).timeout(), Duration::from_secs(2));
    }
}
