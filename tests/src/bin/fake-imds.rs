//! Fake AWS instance metadata service (IMDS) for the lab.
//!
//! Serves IMDSv2 tokens and fake role credentials. The 200 reply to
//! `PUT /latest/api/token` leaves with the configured IP TTL / IPv6 hop limit,
//! the way EC2 applies `HttpPutResponseHopLimit`. Every secret it hands out
//! carries a marker (`FAKETOKEN`, `FAKESECRET`) so tests can prove none leaks.
//!
//! Usage: fake-imds --listen ADDR:PORT [--listen ...] --hop-limit N
//!                  [--tokens optional|required] [--role NAME]

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use socket2::SockRef;

const USAGE: &str = "usage: fake-imds --listen ADDR:PORT [--listen ...] --hop-limit N \
                     [--tokens optional|required] [--role NAME]";

const NORMAL_TTL: u32 = 64;
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// Lets connection threads of vanished clients end eventually.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_TOKEN_TTL: u64 = 21_600;
const CREDENTIAL_LIFETIME: u64 = 6 * 3600;

const TOKEN_PATH: &str = "/latest/api/token";
const META_PREFIX: &str = "/latest/meta-data/";
const INSTANCE_ID: &str = "i-0123456789abcdef0";
const REGION: &str = "eu-west-1";
const ZONE: &str = "eu-west-1a";
const TOKEN_LEN: usize = 56;
const TOKEN_PREFIX: &str = "FAKETOKEN";
const SECRET_MARKER: &str = "FAKESECRET";

/// Lower-case, as headers are matched after lower-casing their names.
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#[derive(Debug)]
struct Config {
    listen: Vec<SocketAddr>,
    hop_limit: u32,
    tokens_required: bool,
    role: String,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
    let mut listen = Vec::new();
    let mut hop_limit = None;
    let mut tokens_required = false;
    let mut role = String::from("imds-lab-role");
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                let addr = v
                    .parse()
                    .map_err(|_| format!("--listen {v}: expected ADDR:PORT or [V6ADDR]:PORT"))?;
                listen.push(addr);
            }
            "--hop-limit" => {
                let v = value()?;
                match v.parse::<u32>() {
                    Ok(n @ 1..=255) => hop_limit = Some(n),
                    _ => return Err(format!("--hop-limit {v}: expected 1..255")),
                }
            }
            "--tokens" => {
                tokens_required = match value()?.as_str() {
                    "optional" => false,
                    "required" => true,
                    other => {
                        return Err(format!("--tokens {other}: expected optional or required"));
                    }
                }
            }
            "--role" => {
                role = value()?;
                if role.is_empty() || role.contains(['/', '\r', '\n']) {
                    return Err(format!("--role {role:?}: not a valid role name"));
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if listen.is_empty() {
        return Err("at least one --listen is required".into());
    }
    let hop_limit = hop_limit.ok_or("--hop-limit is required")?;
    Ok(Config { listen, hop_limit, tokens_required, role })
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("fake-imds: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };

    let mut listeners = Vec::new();
    for addr in &config.listen {
        match TcpListener::bind(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("fake-imds: bind {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let server = Arc::new(Server::new(config));
    let mut handles = Vec::new();
    for listener in listeners {
        if let Ok(addr) = listener.local_addr() {
            // Tests that bind port 0 learn the real port from this line.
            eprintln!(
                "fake-imds: listening on {addr} (hop limit {}, tokens {})",
                server.config.hop_limit,
                if server.config.tokens_required { "required" } else { "optional" }
            );
        }
        let server = Arc::clone(&server);
        handles.push(thread::spawn(move || accept_loop(&listener, &server)));
    }

    println!("ready");
    let _ = io::stdout().flush();
    for h in handles {
        let _ = h.join();
    }
    ExitCode::SUCCESS
}

fn accept_loop(listener: &TcpListener, server: &Arc<Server>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let server = Arc::clone(server);
                thread::spawn(move || server.serve(stream, peer));
            }
            Err(e) => {
                eprintln!("fake-imds: accept: {e}");
                // Avoid spinning on persistent errors such as EMFILE.
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    http10: bool,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        match conn.as_deref() {
            Some(v) if v.split(',').any(|t| t.trim() == "close") => true,
            Some(v) if v.split(',').any(|t| t.trim() == "keep-alive") => false,
            _ => self.http10,
        }
    }
}

fn bad_request(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request, possibly spread over several reads. `buf` carries bytes
/// already received (pipelined requests) between calls. `Ok(None)` means the
/// client closed the connection between requests.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad_request("request head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };

    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad_request("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_request("malformed request line"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(bad_request("unsupported HTTP version")),
    };
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| bad_request("malformed header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let req = Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or_default().to_string(),
        http10,
        headers,
    };
    if req.header("transfer-encoding").is_some() {
        return Err(bad_request("chunked bodies are not supported"));
    }
    let body_len = match req.header("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| bad_request("bad Content-Length"))?,
    };
    if body_len > MAX_BODY {
        return Err(bad_request("body too large"));
    }

    // The body is never used, but must be consumed to find the next request.
    let total = head_end + 4 + body_len;
    while buf.len() < total {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..total);
    Ok(Some(req))
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    extra_headers: Vec<(&'static str, String)>,
    /// Send with the configured hop limit (the token reply only).
    hop_limited: bool,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: String) -> Self {
        Response { status, content_type, body, extra_headers: Vec::new(), hop_limited: false }
    }

    fn text(body: impl Into<String>) -> Self {
        Self::new(200, "text/plain", body.into())
    }

    fn error(status: u16) -> Self {
        Self::new(status, "text/html", String::new())
    }

    fn to_bytes(&self, close: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Unknown",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nServer: EC2ws\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.extra_headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(if close { "Connection: close\r\n" } else { "Connection: keep-alive\r\n" });
        out.push_str("\r\n");
        out.push_str(&self.body);
        out.into_bytes()
    }
}

/// Sets the unicast TTL (IPv4) or hop limit (IPv6) of replies on `stream`.
fn set_reply_ttl(stream: &TcpStream, ttl: u32) -> io::Result<()> {
    match stream.peer_addr()? {
        SocketAddr::V4(_) => stream.set_ttl(ttl),
        // IPv4 peers on a dual-stack socket still go out as IPv4.
        SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some() => stream.set_ttl(ttl),
        SocketAddr::V6(_) => SockRef::from(stream).set_unicast_hops_v6(ttl),
    }
}

struct Server {
    config: Config,
    tokens: Mutex<HashMap<String, Instant>>,
    counter: AtomicU64,
    /// Randomly keyed per process: makes tokens unpredictable across runs.
    hasher: RandomState,
    started: u64,
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
}

impl Server {
    fn new(config: Config) -> Self {
        let mut server = Server {
            config,
            tokens: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            hasher: RandomState::new(),
            started: unix_now(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: String::new(),
        };
        // Same lengths as real AWS values, with the marker tests grep for.
        server.access_key_id =
            format!("ASIA{SECRET_MARKER}{}", server.random_chars(6).to_uppercase());
        server.secret_access_key = format!("fake{SECRET_MARKER}{}", server.random_chars(26));
        server.session_token = format!("fake{SECRET_MARKER}{}", server.random_chars(300));
        server
    }

    /// Random-looking characters from time, a counter and the per-process key.
    fn random_chars(&self, len: usize) -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut out = String::with_capacity(len + 10);
        let mut block = 0u64;
        while out.len() < len {
            let mut h = self.hasher.hash_one((nanos, n, block));
            for _ in 0..10 {
                out.push(ALPHABET[(h & 63) as usize] as char);
                h >>= 6;
            }
            block += 1;
        }
        out.truncate(len);
        out
    }

    fn serve(&self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
        let mut buf = Vec::new();
        let mut ttl_lowered = false;
        loop {
            let req = match read_request(&mut stream, &mut buf) {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    eprintln!("{peer} - - 400 ({e})");
                    let _ = stream.write_all(&Response::error(400).to_bytes(true));
                    return;
                }
                Err(_) => return,
            };

            // Restore the TTL only once the client has sent another request,
            // i.e. has received the token reply. Restoring right after writing
            // it would let TCP retransmit a dropped token reply with a normal
            // TTL and deliver it after all, unlike real IMDS.
            if ttl_lowered {
                if let Err(e) = set_reply_ttl(&stream, NORMAL_TTL) {
                    eprintln!("fake-imds: {peer}: restoring TTL: {e}");
                    return;
                }
                ttl_lowered = false;
            }

            let resp = self.handle(&req);
            let mut note = String::new();
            if resp.hop_limited {
                if let Err(e) = set_reply_ttl(&stream, self.config.hop_limit) {
                    eprintln!("fake-imds: {peer}: setting hop limit: {e}");
                    return;
                }
                ttl_lowered = true;
                note = format!(" ttl={}", self.config.hop_limit);
            }
            eprintln!("{peer} {} {} {}{note}", req.method, req.path, resp.status);

            let close = req.wants_close();
            // One write so that the reply leaves in as few segments as possible.
            if stream.write_all(&resp.to_bytes(close)).is_err() || close {
                return;
            }
        }
    }

    fn handle(&self, req: &Request) -> Response {
        match req.method.as_str() {
            "PUT" => self.put(req),
            "GET" => self.get(req),
            _ => {
                let mut resp = Response::error(405);
                resp.extra_headers.push(("Allow", "GET, PUT".into()));
                resp
            }
        }
    }

    fn put(&self, req: &Request) -> Response {
        if req.path != TOKEN_PATH {
            // Versioned token paths exist but are refused, as on EC2.
            return Response::error(if req.path.ends_with("/api/token") { 403 } else { 404 });
        }
        let Some(ttl_text) = req.header(TTL_HEADER) else {
            return Response::error(400);
        };
        let ttl = match ttl_text.parse::<u64>() {
            Ok(t @ 1..=MAX_TOKEN_TTL) if ttl_text.bytes().all(|b| b.is_ascii_digit()) => t,
            _ => return Response::error(400),
        };

        let token = format!("{TOKEN_PREFIX}{}", self.random_chars(TOKEN_LEN - TOKEN_PREFIX.len()));
        let now = Instant::now();
        {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.retain(|_, expiry| *expiry > now);
            tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        }

        let mut resp = Response::text(token);
        // The Rust SDK reads the token lifetime from this header.
        resp.extra_headers.push(("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string()));
        resp.hop_limited = true;
        resp
    }

    fn token_valid(&self, token: &str) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(token).is_some_and(|expiry| *expiry > Instant::now())
    }

    fn get(&self, req: &Request) -> Response {
        let authorized = match req.header(TOKEN_HEADER) {
            // A token that is present must be valid, even in optional mode.
            Some(token) => self.token_valid(token),
            None => !self.config.tokens_required,
        };
        if !authorized {
            return Response::error(401);
        }

        let Some(rest) = req.path.strip_prefix(META_PREFIX) else {
            return Response::error(404);
        };
        match rest {
            "" => Response::text("iam/\ninstance-id"),
            "instance-id" => Response::text(INSTANCE_ID),
            // Where the instance runs: what SDKs read for a region.
            "placement/availability-zone" | "placement/availability-zone/" => Response::text(ZONE),
            "placement/region" | "placement/region/" => Response::text(REGION),
            "iam/" => Response::text("security-credentials/"),
            "iam/security-credentials" | "iam/security-credentials/" => {
                Response::text(self.config.role.as_str())
            }
            _ => match rest.strip_prefix("iam/security-credentials/") {
                Some(role) if role == self.config.role => {
                    Response::new(200, "text/plain", self.credentials_json())
                }
                _ => Response::error(404),
            },
        }
    }

    fn credentials_json(&self) -> String {
        let doc = serde_json::json!({
            "Code": "Success",
            "LastUpdated": iso8601(self.started),
            "Type": "AWS-HMAC",
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": iso8601(self.started + CREDENTIAL_LIFETIME),
        });
        serde_json::to_string_pretty(&doc).expect("serialising a JSON value cannot fail")
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (Hinnant's civil-from-days).
fn iso8601(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split_whitespace().map(String::from)
    }

    #[test]
    fn parses_arguments() {
        let c = parse_args(args(
            "--listen 169.254.169.254:80 --listen [fd00:ec2::254]:80 --hop-limit 1 \
             --tokens required --role web",
        ))
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(c.listen[1].is_ipv6());
        assert_eq!(c.hop_limit, 1);
        assert!(c.tokens_required);
        assert_eq!(c.role, "web");

        assert!(parse_args(args("--listen 127.0.0.1:0")).is_err());
        assert!(parse_args(args("--hop-limit 1")).is_err());
        assert!(parse_args(args("--listen 127.0.0.1:0 --hop-limit 0")).is_err());
        assert!(parse_args(args("--listen 127.0.0.1:0 --hop-limit 1 --tokens maybe")).is_err());
        assert!(parse_args(args("--listen fd00::1:80 --hop-limit 1")).is_err());
    }

    #[test]
    fn formats_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn tokens_and_secrets_carry_markers() {
        let s = Server::new(parse_args(args("--listen 127.0.0.1:0 --hop-limit 1")).unwrap());
        let a = s.random_chars(47);
        let b = s.random_chars(47);
        assert_eq!(a.len(), 47);
        assert_ne!(a, b);
        assert_eq!(s.access_key_id.len(), 20);
        assert_eq!(s.secret_access_key.len(), 40);
        let json: serde_json::Value = serde_json::from_str(&s.credentials_json()).unwrap();
        for key in ["AccessKeyId", "SecretAccessKey", "Token"] {
            assert!(json[key].as_str().unwrap().contains(SECRET_MARKER), "{key}");
        }
    }
}
