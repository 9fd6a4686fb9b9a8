//! Runs fake-imds and sdk-client on loopback (no root needed). Loopback
//! delivers even hop-limit-1 replies, so losing the token reply is simulated
//! with a small in-test server that never answers PUTs.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;

const TOKEN_PATH: &str = "/latest/api/token";
const ROLE_PATH: &str = "/latest/meta-data/iam/security-credentials/";
const MARKERS: [&str; 2] = ["FAKETOKEN", "FAKESECRET"];

fn assert_no_secrets(what: &str, text: &str) {
    for marker in MARKERS {
        assert!(!text.contains(marker), "{what} leaks a {marker} value:\n{text}");
    }
}

struct FakeImds {
    child: Child,
    addr: SocketAddr,
    log: JoinHandle<String>,
}

impl FakeImds {
    fn start(extra_args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-imds"))
            .args(["--listen", "127.0.0.1:0", "--hop-limit", "1"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fake-imds");

        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log = thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap();
                if let Some(rest) = line.strip_prefix("fake-imds: listening on ") {
                    let addr: SocketAddr = rest.split(' ').next().unwrap().parse().unwrap();
                    let _ = tx.send(addr);
                }
                log.push_str(&line);
                log.push('\n');
            }
            log
        });

        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready, "ready\n", "fake-imds did not start");
        let addr = rx.recv_timeout(Duration::from_secs(5)).expect("listening address");
        FakeImds { child, addr, log }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and returns its request log.
    fn finish(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let log = self.log.join().unwrap();
        assert_no_secrets("fake-imds log", &log);
        log
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP connection that can carry several requests.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Conn(BufReader::new(stream))
    }

    fn send(&mut self, raw: &str) {
        self.0.get_mut().write_all(raw.as_bytes()).unwrap();
    }

    fn response(&mut self) -> Response {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect(&line);
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.0.read_line(&mut line).unwrap();
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut resp = Response { status, headers, body: String::new() };
        let len: usize = resp.header("content-length").unwrap().parse().unwrap();
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).unwrap();
        resp.body = String::from_utf8(body).unwrap();
        resp
    }

    fn request(&mut self, raw: &str) -> Response {
        self.send(raw);
        self.response()
    }

    fn is_closed_by_peer(&mut self) -> bool {
        matches!(self.0.read(&mut [0u8; 1]), Ok(0))
    }
}

fn put_token(addr: SocketAddr, path: &str, ttl: Option<&str>) -> Response {
    let ttl = ttl.map(|t| format!("X-aws-ec2-metadata-token-ttl-seconds: {t}\r\n"));
    Conn::open(addr).request(&format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\n{}Content-Length: 0\r\n\r\n",
        ttl.unwrap_or_default()
    ))
}

fn new_token(addr: SocketAddr) -> String {
    let resp = put_token(addr, TOKEN_PATH, Some("60"));
    assert_eq!(resp.status, 200);
    resp.body
}

fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    let token = token.map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"));
    Conn::open(addr)
        .request(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n{}\r\n", token.unwrap_or_default()))
}

#[test]
fn token_put_statuses() {
    let imds = FakeImds::start(&[]);
    let addr = imds.addr;

    assert_eq!(put_token(addr, TOKEN_PATH, None).status, 400, "missing TTL header");
    for bad in ["0", "21601", "abc", "", "-5", "+5"] {
        assert_eq!(put_token(addr, TOKEN_PATH, Some(bad)).status, 400, "TTL {bad:?}");
    }
    assert_eq!(put_token(addr, "/2021-01-01/api/token", Some("60")).status, 403);
    assert_eq!(put_token(addr, "/latest/api/other", Some("60")).status, 404);

    let resp = put_token(addr, TOKEN_PATH, Some("21600"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(resp.header("x-aws-ec2-metadata-token-ttl-seconds"), Some("21600"));
    assert_eq!(resp.body.len(), 56);
    assert!(resp.body.starts_with("FAKETOKEN"));
    assert_ne!(resp.body, new_token(addr), "tokens must differ");

    let log = imds.finish();
    assert!(log.contains("PUT /latest/api/token 200 ttl=1"), "{log}");
    assert!(log.contains("PUT /2021-01-01/api/token 403"), "{log}");
}

#[test]
fn gets_with_optional_tokens() {
    let imds = FakeImds::start(&[]);
    let addr = imds.addr;

    let role = get(addr, ROLE_PATH, None);
    assert_eq!((role.status, role.body.as_str()), (200, "imds-lab-role"));

    let creds = get(addr, &format!("{ROLE_PATH}imds-lab-role"), None);
    assert_eq!(creds.status, 200);
    let doc: Value = serde_json::from_str(&creds.body).unwrap();
    assert_eq!(doc["Code"], "Success");
    assert_eq!(doc["Type"], "AWS-HMAC");
    assert!(doc["AccessKeyId"].as_str().unwrap().starts_with("ASIAFAKE"));
    for key in ["AccessKeyId", "SecretAccessKey", "Token"] {
        assert!(doc[key].as_str().unwrap().contains("FAKESECRET"), "{key}");
    }
    for key in ["LastUpdated", "Expiration"] {
        assert!(doc[key].as_str().unwrap().ends_with('Z'), "{key}");
    }

    let id = get(addr, "/latest/meta-data/instance-id", None);
    assert_eq!((id.status, id.body.as_str()), (200, "i-0123456789abcdef0"));

    for path in [
        "/latest/meta-data/no-such-thing",
        "/latest/meta-data/iam/security-credentials-extended/",
        "/latest/meta-data/iam/security-credentials/other-role",
        "/latest/user-data",
    ] {
        assert_eq!(get(addr, path, None).status, 404, "{path}");
    }

    let token = new_token(addr);
    assert_eq!(get(addr, ROLE_PATH, Some(&token)).status, 200);
    assert_eq!(get(addr, ROLE_PATH, Some("FAKETOKENnot-issued")).status, 401);
    imds.finish();
}

#[test]
fn gets_with_required_tokens() {
    let imds = FakeImds::start(&["--tokens", "required", "--role", "web"]);
    let addr = imds.addr;

    assert_eq!(get(addr, ROLE_PATH, None).status, 401);
    assert_eq!(get(addr, "/latest/meta-data/instance-id", None).status, 401);
    assert_eq!(get(addr, ROLE_PATH, Some("FAKETOKENnot-issued")).status, 401);

    let token = new_token(addr);
    let role = get(addr, ROLE_PATH, Some(&token));
    assert_eq!((role.status, role.body.as_str()), (200, "web"));
    assert_eq!(get(addr, &format!("{ROLE_PATH}web"), Some(&token)).status, 200);
    assert_eq!(get(addr, "/latest/meta-data/nope", Some(&token)).status, 404);
    imds.finish();
}

#[test]
fn keep_alive_split_and_pipelined_requests() {
    let imds = FakeImds::start(&["--tokens", "required"]);
    let mut conn = Conn::open(imds.addr);

    // A request split across several reads.
    conn.send("PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-meta");
    thread::sleep(Duration::from_millis(50));
    conn.send("data-token-ttl-seconds: 60\r\nContent-Length: 0\r\n");
    thread::sleep(Duration::from_millis(50));
    conn.send("\r\n");
    let put = conn.response();
    assert_eq!(put.status, 200);
    assert_eq!(put.header("connection"), Some("keep-alive"));
    let token = put.body;

    // The same connection carries the next request.
    let get_role =
        format!("GET {ROLE_PATH} HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n");
    assert_eq!(conn.request(&get_role).status, 200);

    // Two requests in one write, the second asking to close.
    let get_id_close = format!(
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\
         X-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
    );
    conn.send(&(get_role + &get_id_close));
    assert_eq!(conn.response().status, 200);
    let last = conn.response();
    assert_eq!((last.status, last.body.as_str()), (200, "i-0123456789abcdef0"));
    assert_eq!(last.header("connection"), Some("close"));
    assert!(conn.is_closed_by_peer());

    let log = imds.finish();
    let peers: HashSet<_> = log
        .lines()
        .filter(|l| l.contains(" GET ") || l.contains(" PUT "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(peers.len(), 1, "all four requests on one connection:\n{log}");
}

#[test]
fn malformed_request_gets_400_and_close() {
    let imds = FakeImds::start(&[]);
    let mut conn = Conn::open(imds.addr);
    assert_eq!(conn.request("NONSENSE\r\n\r\n").status, 400);
    assert!(conn.is_closed_by_peer());
    imds.finish();
}

struct Timeline {
    lines: Vec<Value>,
    exit: i32,
}

impl Timeline {
    fn steps(&self) -> Vec<(String, String, String, Option<u64>)> {
        self.lines
            .iter()
            .map(|l| {
                (
                    l["method"].as_str().unwrap().to_string(),
                    l["path"].as_str().unwrap().to_string(),
                    l["outcome"].as_str().unwrap().to_string(),
                    l["status"].as_u64(),
                )
            })
            .collect()
    }
}

fn step(
    method: &str,
    path: &str,
    outcome: &str,
    status: Option<u64>,
) -> (String, String, String, Option<u64>) {
    (method.into(), path.into(), outcome.into(), status)
}

fn parse_output(out: Output) -> Timeline {
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_no_secrets("sdk-client stdout", &stdout);
    assert_no_secrets("sdk-client stderr", &stderr);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for l in &lines {
        assert!(l["t"].as_f64().unwrap() > 1.0e9, "{l}");
        assert!(l["ms"].as_f64().unwrap() >= 0.0, "{l}");
    }
    Timeline { lines, exit: out.status.code().unwrap() }
}

fn sdk_client(endpoint: &str, profile: &str, timeout_ms: u64) -> Timeline {
    let out = Command::new(env!("CARGO_BIN_EXE_sdk-client"))
        .args(["--endpoint", endpoint, "--profile", profile])
        .args(["--timeout-ms", &timeout_ms.to_string()])
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .output()
        .unwrap();
    parse_output(out)
}

#[test]
fn sdk_client_profiles_get_credentials() {
    let imds = FakeImds::start(&[]);
    let creds = format!("{ROLE_PATH}imds-lab-role");
    let v2 = vec![
        step("PUT", TOKEN_PATH, "ok", Some(200)),
        step("GET", ROLE_PATH, "ok", Some(200)),
        step("GET", &creds, "ok", Some(200)),
    ];
    for profile in ["js-v2", "botocore", "rust", "token-only"] {
        let run = sdk_client(&imds.endpoint(), profile, 1000);
        assert_eq!((profile, run.exit), (profile, 0));
        assert_eq!(run.steps(), v2, "{profile}");
    }
    let run = sdk_client(&imds.endpoint(), "v1-only", 1000);
    assert_eq!(run.exit, 0);
    assert_eq!(run.steps(), v2[1..]);

    // The endpoint can come from the environment, as for the real SDKs.
    let out = Command::new(env!("CARGO_BIN_EXE_sdk-client"))
        .args(["--profile", "v1-only"])
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
        .output()
        .unwrap();
    assert_eq!(parse_output(out).exit, 0);

    // Token GETs reuse the PUT's kept-alive connection, so the fake must have
    // restored a normal TTL for them.
    let log = imds.finish();
    let peer = |l: &str| l.split(' ').next().unwrap().to_string();
    let put_peers: Vec<_> = log.lines().filter(|l| l.contains("ttl=1")).map(peer).collect();
    assert_eq!(put_peers.len(), 4, "{log}");
    for p in put_peers {
        let gets = log.lines().filter(|l| l.starts_with(&format!("{p} GET "))).count();
        assert_eq!(gets, 2, "{p}:\n{log}");
    }
}

#[test]
fn sdk_client_against_required_tokens() {
    let imds = FakeImds::start(&["--tokens", "required"]);
    let run = sdk_client(&imds.endpoint(), "v1-only", 1000);
    assert_eq!(run.exit, 3);
    assert_eq!(run.steps(), vec![step("GET", ROLE_PATH, "ok", Some(401))]);
    assert_eq!(sdk_client(&imds.endpoint(), "botocore", 1000).exit, 0);
    imds.finish();
}

/// Answers GETs with fake credentials but never answers a token PUT, as a
/// client behind one hop too many sees it.
fn start_put_blackhole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || serve_blackhole(stream));
        }
    });
    addr
}

fn serve_blackhole(stream: TcpStream) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let path = request_line.split(' ').nth(1).unwrap_or_default();
        if request_line.starts_with("PUT ") {
            // Hold the connection until the client gives up.
            let _ = reader.read_to_end(&mut Vec::new());
            return;
        }
        let body = if path == ROLE_PATH {
            "lab-role".to_string()
        } else {
            serde_json::json!({
                "Code": "Success",
                "AccessKeyId": "ASIAFAKESECRET000000",
                "SecretAccessKey": "fakeFAKESECRET",
                "Token": "fakeFAKESECRET",
            })
            .to_string()
        };
        let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if reader.get_mut().write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn sdk_client_profiles_when_token_reply_is_lost() {
    let endpoint = format!("http://{}", start_put_blackhole());
    let timeout = 200;
    let put_timeout = step("PUT", TOKEN_PATH, "timeout", None);
    let v1 = vec![
        step("GET", ROLE_PATH, "ok", Some(200)),
        step("GET", &format!("{ROLE_PATH}lab-role"), "ok", Some(200)),
    ];

    let started = Instant::now();
    let run = sdk_client(&endpoint, "js-v2", timeout);
    assert_eq!(run.exit, 0);
    let mut expected = vec![put_timeout.clone(); 4];
    expected.extend(v1.clone());
    assert_eq!(run.steps(), expected);
    assert!(started.elapsed() >= Duration::from_millis(4 * timeout));
    for put in &run.lines[..4] {
        assert!(put["ms"].as_f64().unwrap() >= timeout as f64 * 0.9, "{put}");
    }
    // Attempts are spaced by at least the timeout plus a backoff of at most 2^n*100 ms.
    let t: Vec<f64> = run.lines.iter().map(|l| l["t"].as_f64().unwrap()).collect();
    for n in 0..3 {
        let gap = t[n + 1] - t[n];
        let max_backoff = f64::from(1u32 << n) * 0.1;
        assert!(gap >= 0.18 && gap <= 0.2 + max_backoff + 0.2, "gap {n}: {gap}");
    }

    let run = sdk_client(&endpoint, "botocore", timeout);
    assert_eq!(run.exit, 0);
    let mut expected = vec![put_timeout.clone()];
    expected.extend(v1.clone());
    assert_eq!(run.steps(), expected);

    for profile in ["rust", "token-only"] {
        let run = sdk_client(&endpoint, profile, timeout);
        assert_eq!(run.exit, 3, "{profile}");
        assert_eq!(run.steps(), vec![put_timeout.clone()], "{profile}");
    }

    let run = sdk_client(&endpoint, "v1-only", timeout);
    assert_eq!(run.exit, 0);
    assert_eq!(run.steps(), v1);
}

#[test]
fn sdk_client_reports_refused_connections() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // The listener is gone: nothing accepts on this port any more.
    let run = sdk_client(&format!("http://{addr}"), "rust", 1000);
    assert_eq!(run.exit, 3);
    assert_eq!(run.steps(), vec![step("PUT", TOKEN_PATH, "refused", None)]);
}
