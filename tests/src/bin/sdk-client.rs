//! Stand-in for an AWS SDK's IMDS credential provider, speaking raw HTTP/1.1.
//!
//! Each profile mimics how one SDK reacts when the IMDSv2 token reply is lost
//! (see shared/design/imds-hop-limit.md). Prints one JSON line per request to
//! stdout; never prints a token or credential value, only statuses and lengths.
//!
//! Usage: sdk-client [--endpoint URL] [--profile js-v2|botocore|rust|v1-only|token-only]
//!                   [--timeout-ms 1000]
//! Exit status: 0 credentials obtained, 3 not obtained, 2 bad usage.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs},
    process::ExitCode,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

const USAGE: &str = "usage: sdk-client [--endpoint http://169.254.169.254 | http://[fd00:ec2::254]] \
                     [--profile js-v2|botocore|rust|v1-only|token-only] [--timeout-ms 1000]";
const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

const TOKEN_PATH: &str = "/latest/api/token";
const ROLE_PATH: &str = "/latest/meta-data/iam/security-credentials/";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const TOKEN_TTL: &str = "21600";
const MAX_REPLY: usize = 1024 * 1024;

const EXIT_NO_CREDENTIALS: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    JsV2,
    Botocore,
    Rust,
    V1Only,
    TokenOnly,
}

impl Profile {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "js-v2" => Profile::JsV2,
            "botocore" => Profile::Botocore,
            "rust" => Profile::Rust,
            "v1-only" => Profile::V1Only,
            "token-only" => Profile::TokenOnly,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Profile::JsV2 => "js-v2",
            Profile::Botocore => "botocore",
            Profile::Rust => "rust",
            Profile::V1Only => "v1-only",
            Profile::TokenOnly => "token-only",
        }
    }

    /// Token PUTs before giving up on IMDSv2 (0: IMDSv1 only).
    fn token_attempts(self) -> u32 {
        match self {
            Profile::JsV2 => 4,
            Profile::Botocore | Profile::Rust | Profile::TokenOnly => 1,
            Profile::V1Only => 0,
        }
    }

    /// Whether tokenless GETs follow when no token could be had.
    fn falls_back_to_v1(self) -> bool {
        matches!(self, Profile::JsV2 | Profile::Botocore | Profile::V1Only)
    }
}

#[derive(Debug)]
struct Args {
    endpoint: String,
    profile: Profile,
    timeout: Duration,
}

fn parse_args(
    mut args: impl Iterator<Item = String>,
    env_endpoint: Option<String>,
) -> Result<Args, String> {
    let mut endpoint = env_endpoint.filter(|e| !e.is_empty());
    let mut profile = Profile::Botocore;
    let mut timeout = Duration::from_secs(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoint" => endpoint = Some(value()?),
            "--profile" => {
                let v = value()?;
                profile = Profile::parse(&v).ok_or_else(|| format!("unknown profile {v}"))?;
            }
            "--timeout-ms" => {
                let v = value()?;
                match v.parse::<u64>() {
                    Ok(ms @ 1..) => timeout = Duration::from_millis(ms),
                    _ => return Err(format!("--timeout-ms {v}: expected a positive integer")),
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let endpoint = endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    Ok(Args { endpoint, profile, timeout })
}

#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    /// `host[:port]` as written in the URL, for the Host header.
    authority: String,
    host: String,
    port: u16,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("endpoint {url}: only http:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) =
                v6.split_once(']').ok_or_else(|| format!("endpoint {url}: unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("endpoint {url}: no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| format!("endpoint {url}: bad port"))?,
        };
        Ok(Endpoint { authority: authority.to_string(), host: host.to_string(), port })
    }

    fn resolve(&self) -> io::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "endpoint has no address"))
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

/// Small deterministic PRNG (xorshift64*) so backoff is reproducible.
struct Rng(u64);

impl Rng {
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn outcome_of(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout",
        io::ErrorKind::ConnectionRefused => "refused",
        _ => "error",
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::ErrorKind::TimedOut.into())
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one reply; the bool says whether the connection may be reused.
fn read_reply(stream: &mut TcpStream, deadline: Instant) -> io::Result<(Reply, bool)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut read_more = |stream: &mut TcpStream, buf: &mut Vec<u8>| -> io::Result<usize> {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let n = stream.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    };

    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REPLY {
            return Err(invalid("reply head too large"));
        }
        if read_more(stream, &mut buf)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| invalid("malformed status line"))?;
    let mut content_length = None;
    let mut keep_alive = version == "HTTP/1.1";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = Some(value.parse::<usize>().map_err(|_| invalid("bad length"))?)
            }
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            "transfer-encoding" => return Err(invalid("chunked replies are not supported")),
            _ => {}
        }
    }

    let body_start = head_end + 4;
    match content_length {
        Some(len) if len > MAX_REPLY => return Err(invalid("reply too large")),
        Some(len) => {
            while buf.len() < body_start + len {
                if read_more(stream, &mut buf)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            buf.truncate(body_start + len);
        }
        None => {
            // Body runs to the end of the connection.
            keep_alive = false;
            while buf.len() <= MAX_REPLY && read_more(stream, &mut buf)? > 0 {}
        }
    }
    Ok((Reply { status, body: buf.split_off(body_start) }, keep_alive))
}

struct Client {
    addr: SocketAddr,
    host_header: String,
    user_agent: String,
    timeout: Duration,
    /// Kept-alive connection from the previous request, as SDK HTTP pools do.
    conn: Option<TcpStream>,
}

impl Client {
    /// Sends one request and prints its timeline line. `None` when no HTTP
    /// reply arrived in time.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        fresh_connection: bool,
    ) -> Option<Reply> {
        // Taken before connecting: the handshake is part of the attempt.
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let start = Instant::now();
        if fresh_connection {
            self.conn = None;
        }
        let result = self.exchange(method, path, headers, start + self.timeout);
        let ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let (outcome, status, body_len) = match &result {
            Ok(r) => ("ok", Some(r.status), Some(r.body.len())),
            Err(e) => (outcome_of(e), None, None),
        };
        let line = json!({
            "t": t,
            "method": method,
            "path": path,
            "outcome": outcome,
            "status": status,
            "ms": ms,
            "body_len": body_len,
        });
        println!("{line}");
        match &result {
            Err(_) if outcome == "timeout" => {
                eprintln!("sdk-client: {method} {path}: no reply within {ms} ms")
            }
            Err(e) => eprintln!("sdk-client: {method} {path}: {e}"),
            Ok(_) => {}
        }
        result.ok()
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        deadline: Instant,
    ) -> io::Result<Reply> {
        let mut stream = match self.conn.take() {
            Some(s) => s,
            None => TcpStream::connect_timeout(&self.addr, remaining(deadline)?)?,
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nAccept: */*\r\n",
            self.host_header, self.user_agent
        );
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "PUT" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        stream.set_write_timeout(Some(remaining(deadline)?))?;
        stream.write_all(req.as_bytes())?;
        let (reply, keep_alive) = read_reply(&mut stream, deadline)?;
        if keep_alive {
            self.conn = Some(stream);
        }
        Ok(reply)
    }
}

enum TokenResult {
    Token(String),
    /// IMDSv2 unavailable (timeouts, refused, 403/404/405): IMDSv1 may follow.
    Unavailable,
    /// The service rejected the request itself (e.g. 400): give up.
    Rejected,
}

fn fetch_token(client: &mut Client, profile: Profile, rng: &mut Rng) -> TokenResult {
    for attempt in 0..profile.token_attempts() {
        if attempt > 0 {
            // JS SDK v2: random * 2^retry * 100 ms.
            let ms = rng.next_f64() * f64::from(1u32 << (attempt - 1)) * 100.0;
            thread::sleep(Duration::from_secs_f64(ms / 1000.0));
        }
        // SDKs open a new connection per token attempt after a timeout.
        match client.request("PUT", TOKEN_PATH, &[(TTL_HEADER, TOKEN_TTL)], true) {
            Some(r) if r.status == 200 => {
                let token = String::from_utf8_lossy(&r.body).trim().to_string();
                if token.is_empty() || token.contains(['\r', '\n']) {
                    return TokenResult::Rejected;
                }
                return TokenResult::Token(token);
            }
            Some(r) if matches!(r.status, 403..=405) => return TokenResult::Unavailable,
            Some(r) if r.status >= 500 => {}
            Some(_) => return TokenResult::Rejected,
            None => {}
        }
    }
    TokenResult::Unavailable
}

/// Lengths of the credential fields, if the document is a usable one.
fn credential_lengths(body: &[u8]) -> Option<[usize; 3]> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    if doc.get("Code")?.as_str()? != "Success" {
        return None;
    }
    let len = |key: &str| doc.get(key)?.as_str().map(str::len).filter(|&n| n > 0);
    Some([len("AccessKeyId")?, len("SecretAccessKey")?, len("Token")?])
}

/// Runs the profile's credential fetch; true when credentials were obtained.
fn fetch_credentials(client: &mut Client, profile: Profile) -> bool {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let token = match fetch_token(client, profile, &mut rng) {
        TokenResult::Token(t) => Some(t),
        TokenResult::Unavailable if profile.falls_back_to_v1() => None,
        TokenResult::Unavailable | TokenResult::Rejected => {
            eprintln!("sdk-client: no IMDSv2 token; profile {} stops here", profile.name());
            return false;
        }
    };
    let auth: Vec<(&str, &str)> = token.as_deref().map(|t| (TOKEN_HEADER, t)).into_iter().collect();

    let role = match client.request("GET", ROLE_PATH, &auth, false) {
        Some(r) if r.status == 200 => {
            String::from_utf8_lossy(&r.body).lines().next().unwrap_or_default().trim().to_string()
        }
        _ => return false,
    };
    if role.is_empty() {
        eprintln!("sdk-client: no role attached");
        return false;
    }
    let lengths = match client.request("GET", &format!("{ROLE_PATH}{role}"), &auth, false) {
        Some(r) if r.status == 200 => credential_lengths(&r.body),
        _ => return false,
    };
    match lengths {
        Some([key_id, secret, session]) => {
            eprintln!(
                "sdk-client: credentials obtained via IMDSv{} (lengths: key id {key_id}, \
                 secret {secret}, session token {session})",
                if token.is_some() { 2 } else { 1 }
            );
            true
        }
        None => {
            eprintln!("sdk-client: credentials document unusable");
            false
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1), std::env::var(ENDPOINT_ENV).ok()) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("sdk-client: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let endpoint = match Endpoint::parse(&args.endpoint) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sdk-client: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = match endpoint.resolve() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sdk-client: resolving {}: {e}", endpoint.host);
            return ExitCode::from(EXIT_NO_CREDENTIALS);
        }
    };
    let mut client = Client {
        addr,
        host_header: endpoint.authority,
        user_agent: format!("imds-lab-sdk-client/0.1 ({})", args.profile.name()),
        timeout: args.timeout,
        conn: None,
    };
    if fetch_credentials(&mut client, args.profile) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO_CREDENTIALS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split_whitespace().map(String::from)
    }

    #[test]
    fn parses_endpoints() {
        let e = Endpoint::parse("http://169.254.169.254").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("169.254.169.254", 80, "169.254.169.254")
        );
        let e = Endpoint::parse("http://[fd00:ec2::254]/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("fd00:ec2::254", 80));
        assert_eq!(e.resolve().unwrap(), "[fd00:ec2::254]:80".parse().unwrap());
        let e = Endpoint::parse("http://127.0.0.1:8080/latest").unwrap();
        assert_eq!((e.port, e.authority.as_str()), (8080, "127.0.0.1:8080"));
        assert!(Endpoint::parse("https://169.254.169.254").is_err());
        assert!(Endpoint::parse("http://[fd00::1").is_err());
        assert!(Endpoint::parse("http://host:notaport").is_err());
    }

    #[test]
    fn parses_arguments_and_env_default() {
        let a = parse_args(args(""), None).unwrap();
        assert_eq!(a.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(a.profile, Profile::Botocore);
        assert_eq!(a.timeout, Duration::from_secs(1));
        let a =
            parse_args(args("--profile js-v2 --timeout-ms 250"), Some("http://10.0.0.1".into()))
                .unwrap();
        assert_eq!(a.endpoint, "http://10.0.0.1");
        assert_eq!(a.profile, Profile::JsV2);
        assert_eq!(a.timeout, Duration::from_millis(250));
        let a =
            parse_args(args("--endpoint http://[::1]:81"), Some("http://10.0.0.1".into())).unwrap();
        assert_eq!(a.endpoint, "http://[::1]:81");
        assert!(parse_args(args("--profile go"), None).is_err());
        assert!(parse_args(args("--timeout-ms 0"), None).is_err());
    }

    #[test]
    fn backoff_is_deterministic_and_in_range() {
        let mut a = Rng(1);
        let mut b = Rng(1);
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn checks_credential_documents() {
        let ok = br#"{"Code":"Success","AccessKeyId":"a","SecretAccessKey":"bb","Token":"ccc"}"#;
        assert_eq!(credential_lengths(ok), Some([1, 2, 3]));
        assert_eq!(credential_lengths(br#"{"Code":"Failure"}"#), None);
        assert_eq!(credential_lengths(b"not json"), None);
    }
}
