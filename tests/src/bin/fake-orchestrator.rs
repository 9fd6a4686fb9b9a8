//! A fake Kubernetes API server and a fake Nomad agent for the lab, on
//! 127.0.0.1 of whatever network namespace it is started in (the lab's
//! host, where the observer runs):
//!
//! - `GET /api/v1/pods?fieldSelector=spec.nodeName%3D<node>...`: a PodList
//!   of the configured pods on that node; with `watch=true`, a chunked
//!   stream that stays open (no further events). `Authorization: Bearer
//!   <kube_token>` is required (401 otherwise).
//! - `POST /apis/events.k8s.io/v1/namespaces/<ns>/events`: keeps the Event
//!   in memory by name (201, the Event back); `PATCH .../events/<name>`: a
//!   JSON merge patch onto the kept Event (200, the Event; 404 for a name
//!   never created). With `"events_forbidden": true` both answer 403 with
//!   the Status the API server sends when RBAC lacks the grant.
//! - `GET /api/v1/nodes/<name>`: the configured Node of that name, 404
//!   for others (the Status an API server sends).
//! - `GET /v1/allocation/<id>`: the configured allocation, 404 for others;
//!   `X-Nomad-Token: <nomad_token>` is required (403 otherwise). With
//!   `"nomad_node": <Node>`, also `GET /v1/agent/self` (its `ID` as the
//!   client's node id) and `GET /v1/node/<that id>`: that Node.
//! - With `"docker_socket": PATH`, a fake Docker Engine API on that unix
//!   socket: `GET /containers/<id>/json` (any version prefix) answers the
//!   configured container whose `Id` it is (`{"Id", "Name", "Config":
//!   {"Image", "Labels"}}`, as the Engine does), 404 for others. Logged as
//!   `docker <target>`.
//!
//! `fake-orchestrator --config FILE --log FILE`; the config is JSON
//! `{"pods": [<Pod>...], "nodes": [<Node>...], "allocs": [<Allocation>...], "kube_token": "...",
//! "nomad_token": "...", "events_forbidden": false, "docker_socket": "...", "containers": [...]}`. Prints `ready <kube
//! port> <nomad port>` once listening, and appends each request's line and
//! whether it carried the right credentials to the log file: `kube <target>
//! authorized=<bool>` for pods, `events <METHOD> <path> status=<code>
//! <the Event as kept, JSON>` for Events (`{}` when refused), `nomad
//! <target> authorized=<bool>`.
use std::{
    collections::HashMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use serde_json::{Value, json};

struct Config {
    pods: Vec<Value>,
    nodes: Vec<Value>,
    allocs: Vec<Value>,
    nomad_node: Value,
    containers: Vec<Value>,
    kube_token: String,
    nomad_token: String,
    events_forbidden: bool,
    /// Events created, by namespace and name.
    events: Mutex<HashMap<(String, String), Value>>,
    log: Mutex<std::fs::File>,
}

/// One request as read.
struct Request<'a> {
    method: &'a str,
    target: &'a str,
    headers: &'a [String],
    body: &'a [u8],
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        let i = args.iter().position(|a| a == name).unwrap_or_else(|| panic!("{name} is required"));
        args[i + 1].clone()
    };
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(arg("--config")).expect("read --config"))
            .expect("--config is JSON");
    let cfg = Arc::new(Config {
        pods: raw["pods"].as_array().cloned().unwrap_or_default(),
        nodes: raw["nodes"].as_array().cloned().unwrap_or_default(),
        allocs: raw["allocs"].as_array().cloned().unwrap_or_default(),
        nomad_node: raw["nomad_node"].clone(),
        containers: raw["containers"].as_array().cloned().unwrap_or_default(),
        kube_token: raw["kube_token"].as_str().unwrap_or_default().to_string(),
        nomad_token: raw["nomad_token"].as_str().unwrap_or_default().to_string(),
        events_forbidden: raw["events_forbidden"].as_bool().unwrap_or(false),
        events: Mutex::new(HashMap::new()),
        log: Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(arg("--log"))
                .expect("open --log"),
        ),
    });
    let kube = TcpListener::bind("127.0.0.1:0").expect("bind");
    let nomad = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("ready {} {}", kube.local_addr().unwrap().port(), nomad.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    if let Some(path) = raw["docker_socket"].as_str() {
        let _ = std::fs::remove_file(path);
        let docker = UnixListener::bind(path).expect("bind the docker socket");
        let c = cfg.clone();
        thread::spawn(move || serve(docker.incoming(), c, docker_api));
    }
    let c = cfg.clone();
    thread::spawn(move || serve(kube.incoming(), c, kube_api));
    serve(nomad.incoming(), cfg, nomad_api);
}

/// A connection either listener gives.
trait Conn: Read + Write + Send + Sized + 'static {
    fn clone_conn(&self) -> io::Result<Self>;
    fn timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Conn for TcpStream {
    fn clone_conn(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Conn for UnixStream {
    fn clone_conn(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

fn serve<S: Conn>(
    incoming: impl Iterator<Item = io::Result<S>>,
    cfg: Arc<Config>,
    handler: fn(&Config, &Request, &mut S),
) {
    for s in incoming.flatten() {
        let cfg = cfg.clone();
        thread::spawn(move || {
            let _ = s.timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(s.clone_conn().expect("clone stream"));
            let mut s = s;
            // Requests on a kept-alive connection, one after another.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let mut headers = Vec::new();
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 {
                        return;
                    }
                    let h = h.trim_end().to_string();
                    if h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    headers.push(h);
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let mut words = line.split_whitespace();
                let method = words.next().unwrap_or_default().to_string();
                let target = words.next().unwrap_or_default().to_string();
                let req =
                    Request { method: &method, target: &target, headers: &headers, body: &body };
                handler(&cfg, &req, &mut s);
            }
        });
    }
}

fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| {
        let (n, v) = h.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn log(cfg: &Config, line: String) {
    let mut f = cfg.log.lock().unwrap();
    let _ = writeln!(f, "{line}");
}

fn reply(s: &mut impl Write, status: &str, body: &str) {
    let r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(r.as_bytes());
}

fn kube_api(cfg: &Config, req: &Request, s: &mut TcpStream) {
    let (target, headers) = (req.target, req.headers);
    let authorized =
        header(headers, "authorization") == Some(&format!("Bearer {}", cfg.kube_token));
    if target.starts_with("/apis/events.k8s.io/") && authorized {
        return events_api(cfg, req, s);
    }
    log(cfg, format!("kube {target} authorized={authorized}"));
    if !authorized {
        let st = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401});
        return reply(s, "401 Unauthorized", &st.to_string());
    }
    if let Some(name) = target.strip_prefix("/api/v1/nodes/") {
        let name = name.split('?').next().unwrap_or_default();
        return match cfg.nodes.iter().find(|n| n["metadata"]["name"] == name) {
            Some(n) => reply(s, "200 OK", &n.to_string()),
            None => {
                let st = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("nodes \"{name}\" not found"), "reason": "NotFound", "code": 404});
                reply(s, "404 Not Found", &st.to_string())
            }
        };
    }
    let Some(query) = target.strip_prefix("/api/v1/pods?") else {
        return reply(s, "404 Not Found", r#"{"kind":"Status","code":404}"#);
    };
    let node = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fieldSelector="))
        .and_then(|v| v.replace("%3D", "=").strip_prefix("spec.nodeName=").map(str::to_string));
    let pods: Vec<&Value> = cfg
        .pods
        .iter()
        .filter(|p| node.is_none() || p["spec"]["nodeName"].as_str() == node.as_deref())
        .collect();
    if query.split('&').any(|kv| kv == "watch=true") {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        let _ = s.flush();
        // Nothing changes: hold the watch open until the observer leaves.
        let mut b = [0u8; 1];
        let _ = s.timeout(None);
        let _ = s.read(&mut b);
        return;
    }
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "100"}, "items": pods});
    reply(s, "200 OK", &list.to_string());
}

/// `/apis/events.k8s.io/v1/namespaces/<ns>/events[/<name>]`: create and
/// patch, kept in memory; every request logged with the Event it left.
fn events_api(cfg: &Config, req: &Request, s: &mut TcpStream) {
    let path = req.target.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // apis events.k8s.io v1 namespaces <ns> events [<name>]
    let (ns, name) = match parts.as_slice() {
        ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"] => (*ns, None),
        ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name] => (*ns, Some(*name)),
        _ => return reply(s, "404 Not Found", r#"{"kind":"Status","code":404}"#),
    };
    let body: Value = serde_json::from_slice(req.body).unwrap_or(Value::Null);
    let (status, kept) = if cfg.events_forbidden {
        let st = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("events.events.k8s.io is forbidden: User \"system:serviceaccount:imds-observer:imds-observer\" cannot create resource \"events\" in API group \"events.k8s.io\" in the namespace \"{ns}\""),
            "reason": "Forbidden", "details": {"group": "events.k8s.io", "kind": "events"}, "code": 403});
        reply(s, "403 Forbidden", &st.to_string());
        (403, json!({}))
    } else {
        let mut events = cfg.events.lock().unwrap();
        match (req.method, name) {
            ("POST", None) => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let mut ev = body.clone();
                ev["metadata"]["uid"] = json!(format!("fake-{}", events.len() + 1));
                ev["metadata"]["resourceVersion"] = json!("1");
                events.insert((ns.to_string(), name), ev.clone());
                reply(s, "201 Created", &ev.to_string());
                (201, ev)
            }
            ("PATCH", Some(name)) => match events.get_mut(&(ns.to_string(), name.to_string())) {
                Some(ev) => {
                    json_patch::merge(ev, &body);
                    reply(s, "200 OK", &ev.to_string());
                    (200, ev.clone())
                }
                None => {
                    reply(
                        s,
                        "404 Not Found",
                        r#"{"kind":"Status","code":404,"reason":"NotFound"}"#,
                    );
                    (404, json!({}))
                }
            },
            _ => {
                reply(s, "405 Method Not Allowed", r#"{"kind":"Status","code":405}"#);
                (405, json!({}))
            }
        }
    };
    log(cfg, format!("events {} {path} status={status} {kept}", req.method));
}

fn nomad_api(cfg: &Config, req: &Request, s: &mut TcpStream) {
    let (target, headers) = (req.target, req.headers);
    let authorized = header(headers, "x-nomad-token") == Some(cfg.nomad_token.as_str());
    log(cfg, format!("nomad {target} authorized={authorized}"));
    if !authorized {
        return reply(s, "403 Forbidden", "Permission denied");
    }
    let path = target.split('?').next().unwrap_or_default();
    let node = &cfg.nomad_node;
    if path == "/v1/agent/self" && !node.is_null() {
        let agent = json!({"config": {}, "stats": {"client": {"node_id": node["ID"]}}});
        return reply(s, "200 OK", &agent.to_string());
    }
    if let Some(id) = path.strip_prefix("/v1/node/") {
        return match node["ID"].as_str() {
            Some(n) if n == id => reply(s, "200 OK", &node.to_string()),
            _ => reply(s, "404 Not Found", "node not found"),
        };
    }
    let id = path.strip_prefix("/v1/allocation/").unwrap_or_default();
    match cfg.allocs.iter().find(|a| a["ID"] == id) {
        Some(a) => reply(s, "200 OK", &a.to_string()),
        None => reply(s, "404 Not Found", "alloc not found"),
    }
}

/// `GET [/v<version>]/containers/<id>/json`: the configured container.
fn docker_api(cfg: &Config, req: &Request, s: &mut UnixStream) {
    log(cfg, format!("docker {}", req.target));
    let path = req.target.split('?').next().unwrap_or_default();
    let id = path
        .rsplit_once("/containers/")
        .and_then(|(_, rest)| rest.strip_suffix("/json"))
        .unwrap_or_default();
    match cfg.containers.iter().find(|c| c["Id"] == id) {
        Some(c) => reply(s, "200 OK", &c.to_string()),
        None => reply(
            s,
            "404 Not Found",
            &json!({"message": format!("No such container: {id}")}).to_string(),
        ),
    }
}
