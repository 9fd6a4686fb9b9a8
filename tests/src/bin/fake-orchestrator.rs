//! A fake Kubernetes API server and a fake Nomad agent for the lab, on
//! 127.0.0.1 of whatever network namespace it is started in (the lab's
//! host, where the observer runs):
//!
//! - `GET /api/v1/pods?fieldSelector=spec.nodeName%3D<node>...`: a PodList
//!   of the configured pods on that node; with `watch=true`, a chunked
//!   stream that stays open (no further events). `Authorization: Bearer
//!   <kube_token>` is required (401 otherwise).
//! - `GET /v1/allocation/<id>`: the configured allocation, 404 for others;
//!   `X-Nomad-Token: <nomad_token>` is required (403 otherwise).
//!
//! `fake-orchestrator --config FILE --log FILE`; the config is JSON
//! `{"pods": [<Pod>...], "allocs": [<Allocation>...], "kube_token": "...",
//! "nomad_token": "..."}`. Prints `ready <kube port> <nomad port>` once
//! listening, and appends each request's line and whether it carried the
//! right credentials to the log file.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use serde_json::{Value, json};

struct Config {
    pods: Vec<Value>,
    allocs: Vec<Value>,
    kube_token: String,
    nomad_token: String,
    log: Mutex<std::fs::File>,
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
        allocs: raw["allocs"].as_array().cloned().unwrap_or_default(),
        kube_token: raw["kube_token"].as_str().unwrap_or_default().to_string(),
        nomad_token: raw["nomad_token"].as_str().unwrap_or_default().to_string(),
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
    let c = cfg.clone();
    thread::spawn(move || serve(kube, c, kube_api));
    serve(nomad, cfg, nomad_api);
}

fn serve(l: TcpListener, cfg: Arc<Config>, handler: fn(&Config, &str, &[String], &mut TcpStream)) {
    for s in l.incoming().flatten() {
        let cfg = cfg.clone();
        thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
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
                let target = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                handler(&cfg, &target, &headers, &mut s);
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

fn reply(s: &mut TcpStream, status: &str, body: &str) {
    let r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(r.as_bytes());
}

fn kube_api(cfg: &Config, target: &str, headers: &[String], s: &mut TcpStream) {
    let authorized =
        header(headers, "authorization") == Some(&format!("Bearer {}", cfg.kube_token));
    log(cfg, format!("kube {target} authorized={authorized}"));
    if !authorized {
        let st = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401});
        return reply(s, "401 Unauthorized", &st.to_string());
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
        let _ = s.set_read_timeout(None);
        let _ = s.read(&mut b);
        return;
    }
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "100"}, "items": pods});
    reply(s, "200 OK", &list.to_string());
}

fn nomad_api(cfg: &Config, target: &str, headers: &[String], s: &mut TcpStream) {
    let authorized = header(headers, "x-nomad-token") == Some(cfg.nomad_token.as_str());
    log(cfg, format!("nomad {target} authorized={authorized}"));
    if !authorized {
        return reply(s, "403 Forbidden", "Permission denied");
    }
    let id = target
        .strip_prefix("/v1/allocation/")
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    match cfg.allocs.iter().find(|a| a["ID"] == id) {
        Some(a) => reply(s, "200 OK", &a.to_string()),
        None => reply(s, "404 Not Found", "alloc not found"),
    }
}
