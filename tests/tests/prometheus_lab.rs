//! A real Prometheus against a real observer: on a hop-limit-1 lab, one
//! container fails the IMDSv2 token request (one forwarding hop) and a host
//! service gets its token (no forwarding hop: healthy, as a hostNetwork pod
//! would). Prometheus (Debian's 2.42) scrapes the observer every second and
//! evaluates deploy/prometheus/rules.yml every second. Then every panel
//! query of the Grafana dashboard (template variables filled in, once with
//! "All" and once with the node) and every alert expression evaluates
//! without error through the HTTP API, the hop-limit alert fires for the
//! failing workload and none for the healthy one, and every metric they
//! read exists (the flood counter may not: no flood here). Root only:
//! `cargo xtask test`.
//!
//! The observer's cgroup hooks see every process of the machine, so other
//! labs running at the same time show up as other workloads (and may flood,
//! or fill the ring): assertions about workloads are about this lab's two.
//!
//! Prometheus runs in the lab's host netns on its loopback, with its own
//! config and storage in a temporary directory; a guard kills it and removes
//! the directory, also when the test fails.
#[path = "common/prometheus.rs"]
mod prometheus;

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use imds_lab::{Attach, Lab, LabOpts, Value};
use prometheus::{JOB, alerts, dashboard, metric_names, panel_queries, rule_groups, substitute};

const IMDS: &str = "http://169.254.169.254";
const OBSERVER: &str = "127.0.0.1:9109";
const PROMETHEUS: &str = "127.0.0.1:9090";
/// Everything Prometheus must show, from its start.
const WAIT: Duration = Duration::from_secs(45);
/// The failing container's cgroup: Docker's convention, so its workload
/// label is `docker:<12 hex>` (no runtime socket: no name lookup).
const CID: &str = "5e1f0c3a9b7d2e4f6a8c0b1d3e5f7a9c1b3d5e7f9a0c2e4b6d8f0a1c3e5b7d9f";
const FAILING: &str = "docker:5e1f0c3a9b7d";
/// The healthy host service: named by its systemd unit.
const HEALTHY: &str = "imds-agent.service";

/// A Prometheus process and its directory; killed and removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    netns: String,
}

impl Prometheus {
    /// Start in `netns` with the rules of rules.yml, every `for` at 0s: a
    /// production `for` (5 to 15 minutes) is longer than this test may take,
    /// and promtool's unit tests (rules.test.yml) check the real ones.
    fn start(netns: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("imds-prometheus-lab-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).unwrap();
        let mut groups = rule_groups();
        for g in groups.as_array_mut().unwrap() {
            for r in g["rules"].as_array_mut().unwrap() {
                if r.get("for").is_some() {
                    r["for"] = "0s".into();
                }
            }
        }
        // JSON is YAML: Prometheus reads it as a rules file.
        fs::write(dir.join("rules.json"), serde_json::json!({ "groups": groups }).to_string())
            .unwrap();
        fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 rule_files:\n  - rules.json\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{OBSERVER}']\n"
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian's prometheus package)");
        Prometheus { child, dir, netns: netns.to_string() }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET each path (query string included) from inside the netns, in one
    /// python3 run: each answer's JSON (null when unreachable; a status and
    /// the start of the body when an error answer is not JSON, as while
    /// Prometheus starts).
    fn get(&self, paths: &[String]) -> Vec<Value> {
        const SCRIPT: &str = r#"
import json, sys, urllib.request, urllib.error
out = []
for p in json.load(sys.stdin):
    try:
        with urllib.request.urlopen("http://" + sys.argv[1] + p, timeout=5) as r:
            out.append(json.load(r))
    except urllib.error.HTTPError as e:
        # The API answers errors in JSON; while starting it may not.
        body = e.read()
        try:
            out.append(json.loads(body))
        except ValueError:
            out.append({"status": "http %d" % e.code, "body": body.decode("utf-8", "replace")[:200]})
    except Exception:
        out.append(None)
print(json.dumps(out))
"#;
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["python3", "-c", SCRIPT, PROMETHEUS])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let body = serde_json::to_string(paths).unwrap();
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "the API client failed");
        serde_json::from_slice(&out.stdout).expect("python printed JSON")
    }

    /// /api/v1/query for each expression.
    fn query(&self, exprs: &[String]) -> Vec<Value> {
        let paths: Vec<String> =
            exprs.iter().map(|e| format!("/api/v1/query?query={}", urlencode(e))).collect();
        self.get(&paths)
    }

    /// (alertname, workload) of the alerts in `state`, of this lab's
    /// workloads and of none (the observer's own).
    fn alerts(&self, state: &str) -> BTreeSet<(String, String)> {
        let a = &self.get(&["/api/v1/alerts".to_string()])[0];
        a["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["state"] == state)
            .filter(|x| mine(&x["labels"]))
            .map(|x| {
                let l = &x["labels"];
                (
                    l["alertname"].as_str().unwrap_or("").to_string(),
                    l["workload"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Labels of this lab's workloads, or of no workload.
fn mine(labels: &Value) -> bool {
    matches!(labels["workload"].as_str(), None | Some(FAILING) | Some(HEALTHY))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Wait until `ok` holds, at most until `deadline`.
fn until(what: &str, deadline: Instant, mut ok: impl FnMut() -> Result<(), String>) {
    loop {
        match ok() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The instant vector of a successful query.
fn vector<'a>(answer: &'a Value, expr: &str) -> &'a Vec<Value> {
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    assert_eq!(answer["data"]["resultType"], "vector", "{expr}");
    answer["data"]["result"].as_array().unwrap()
}

#[test]
#[ignore = "lab: needs root and prometheus; run `cargo xtask test`"]
fn real_prometheus_evaluates_every_panel_and_alert_and_fires_for_the_failing_workload_only() {
    let t0 = Instant::now();
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let mut failing = lab.add_container("js", Attach::Routed);
    let _ = fs::remove_dir(&failing.cgroup);
    failing.cgroup = lab.cgroup_at(&format!("system.slice/docker-{CID}.scope"));
    let mut healthy = lab.host_process("agent");
    let _ = fs::remove_dir(&healthy.cgroup);
    healthy.cgroup = lab.cgroup_at(&format!("system.slice/{HEALTHY}"));
    let no_socket = std::env::temp_dir().join(format!("{}-no-runtime.sock", lab.id));
    let obs = lab.observer(&[
        "--metrics-addr",
        OBSERVER,
        "--runtime-socket",
        no_socket.to_str().unwrap(),
    ]);
    let prom = Prometheus::start(&lab.host);
    let deadline = Instant::now() + WAIT;
    until("the observer's target is up", deadline, || {
        let r = prom.query(&[format!(r#"up{{job="{JOB}"}}"#)]);
        match r[0]["data"]["result"][0]["value"][1].as_str() {
            Some("1") => Ok(()),
            _ => Err(format!("{}\n{}", r[0], prom.log())),
        }
    });

    // The host service gets its token at once (healthy); the container's
    // token replies die at the host, and it falls back to IMDSv1.
    let h = healthy.sdk("token-only", IMDS);
    assert_eq!(h.code, 0, "{:?}", h.lines);
    let f = failing.sdk("js-v2", IMDS);
    assert_eq!(f.lines.iter().filter(|l| l["method"] == "PUT").count(), 4, "{:?}", f.lines);

    // The hop-limit alert fires for the failing workload, and no alert for
    // the healthy one; the fallback alert fires too (the client did fall
    // back); nothing else of ours (the observer is up and small). Lost
    // events are node-wide: another lab's flood may cause them.
    let want: BTreeSet<(String, String)> = [
        ("ImdsHopLimitExceeded".to_string(), FAILING.to_string()),
        ("ImdsV1Fallback".to_string(), FAILING.to_string()),
    ]
    .into();
    until("the alerts for the failing workload", deadline, || {
        let mut firing = prom.alerts("firing");
        firing.remove(&("ImdsObserverEventsLost".to_string(), String::new()));
        if firing == want { Ok(()) } else { Err(format!("firing {firing:?}, want {want:?}")) }
    });
    thread::sleep(Duration::from_secs(2)); // two more samples for rate()

    // Every alert's expression evaluates; for this lab's workloads only
    // the two above return series, none for the healthy one.
    let exprs: Vec<(String, String)> = alerts()
        .iter()
        .map(|a| (a["alert"].as_str().unwrap().into(), a["expr"].as_str().unwrap().into()))
        .collect();
    let answers = prom.query(&exprs.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>());
    for ((name, expr), answer) in exprs.iter().zip(&answers) {
        let series = vector(answer, expr);
        let ours: Vec<&str> = series
            .iter()
            .filter_map(|s| s["metric"]["workload"].as_str())
            .filter(|w| [FAILING, HEALTHY].contains(w))
            .collect();
        match name.as_str() {
            "ImdsHopLimitExceeded" | "ImdsV1Fallback" => {
                assert_eq!(ours, [FAILING], "{name}: {series:?}")
            }
            // Node-wide: another lab may fill the ring.
            "ImdsObserverEventsLost" => {}
            _ => assert!(series.iter().all(|s| !mine(&s["metric"])), "{name}: {series:?}"),
        }
    }

    // Every panel query, once for all nodes and once for this one.
    let dash = dashboard();
    let panels = panel_queries(&dash);
    let mut evaluated: Vec<(String, String, String)> = Vec::new();
    for (title, expr) in &panels {
        for node in [".*", "lab-node"] {
            evaluated.push((title.clone(), expr.clone(), substitute(expr, node)));
        }
    }
    let answers = prom.query(&evaluated.iter().map(|(_, _, q)| q.clone()).collect::<Vec<_>>());
    for ((title, _, q), answer) in evaluated.iter().zip(&answers) {
        let series = vector(answer, q);
        let value = |i: usize| -> f64 { series[i]["value"][1].as_str().unwrap().parse().unwrap() };
        let by = |label: &str, v: &str| series.iter().any(|s| s["metric"][label] == v);
        match title.as_str() {
            // Neither of ours floods (another lab may).
            "Records suppressed (floods)" => {
                assert!(!by("workload", FAILING) && !by("workload", HEALTHY), "{series:?}")
            }
            "Hop limit by node" => {
                assert_eq!(series.len(), 1, "{title}: {series:?}");
                assert_eq!(series[0]["metric"]["node"], "lab-node");
                assert_eq!(value(0), 1.0, "{title}");
            }
            "Workloads that need action" => {
                let kinds: BTreeSet<(String, String)> = series
                    .iter()
                    .filter(|s| mine(&s["metric"]))
                    .map(|s| {
                        (
                            s["metric"]["workload"].as_str().unwrap().to_string(),
                            s["metric"]["kind"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect();
                assert_eq!(
                    kinds,
                    [
                        (FAILING.to_string(), "hop_limit_exceeded".to_string()),
                        (FAILING.to_string(), "imdsv1_fallback".to_string())
                    ]
                    .into(),
                    "{title}"
                );
            }
            "Requests per workload"
            | "Forwarding hops per workload"
            | "Token and credential fetches per workload" => {
                assert!(by("workload", FAILING) && by("workload", HEALTHY), "{title}: {series:?}")
            }
            "Lost token replies per workload" => {
                assert!(by("workload", FAILING), "{title}: {series:?}");
                for (i, s) in series.iter().enumerate() {
                    if s["metric"]["workload"] == HEALTHY {
                        assert_eq!(value(i), 0.0, "{title}: the healthy one lost nothing");
                    }
                }
            }
            "Kernel drops by reason" => assert!(by("reason", "IP_INHDR"), "{title}: {series:?}"),
            // Both got answers (the failing one after falling back), so
            // both have latency series; a quantile of a histogram that
            // did not grow in the window is NaN.
            // The failing one waited on its lost token replies.
            "Seconds lost waiting per workload" => {
                assert!(by("workload", FAILING), "{title}: {series:?}");
            }
            "Metadata latency p99 per workload" => {
                assert!(by("workload", FAILING) && by("workload", HEALTHY), "{title}: {series:?}");
                assert!(by("kind", "token"), "{title}: the healthy one's token: {series:?}");
            }
            "Events lost (ring buffer full)" => {
                assert_eq!(series.len(), 1, "{title}: {series:?}");
                assert_eq!(series[0]["metric"]["node"], "lab-node", "{title}");
            }
            "Observer CPU" | "Observer memory" => {
                assert_eq!(series.len(), 1, "{title}: {series:?}");
                assert_eq!(series[0]["metric"]["node"], "lab-node", "{title}");
                assert!(value(0) > 0.0, "{title}: {series:?}");
                if title == "Observer memory" {
                    assert!(value(0) > 1e6, "{title}: {series:?}");
                }
            }
            "Observers up" => {
                assert_eq!(series.len(), 1, "{title}: {series:?}");
                assert_eq!(value(0), 1.0, "{title}");
            }
            other => panic!("a panel this test does not know: {other}: give it an assertion"),
        }
    }
    // Every panel of the dashboard file was among them.
    for p in dash["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap();
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                evaluated.iter().any(|(pt, e, _)| pt == title && e == expr),
                "{title}: {expr} not evaluated"
            );
        }
    }
    // The node variable lists this node.
    let nodes = prom.get(&[format!(
        "/api/v1/label/node/values?match[]={}",
        urlencode("imds_observer_events_lost_total")
    )]);
    assert_eq!(nodes[0]["data"], serde_json::json!(["lab-node"]), "{}", nodes[0]);

    // Every metric the rules and panels read exists (the flood counter
    // only with a flood): an invented name would evaluate to nothing,
    // without error.
    let mut names = BTreeSet::new();
    for (_, e) in &exprs {
        names.extend(metric_names(e));
    }
    for (_, e) in &panels {
        names.extend(metric_names(e));
    }
    let counts = prom
        .query(&names.iter().map(|n| format!(r#"count({{__name__="{n}"}})"#)).collect::<Vec<_>>());
    let missing: Vec<&String> = names
        .iter()
        .zip(&counts)
        // kube_node_info is kube-state-metrics' (not in the lab; promtool's
        // unit tests give ImdsObserverNodeUncovered its node list).
        .filter(|(n, _)| {
            !["imds_observer_suppressed_total", "kube_node_info"].contains(&n.as_str())
        })
        .filter(|(n, c)| vector(c, n).is_empty())
        .map(|(n, _)| n)
        .collect();
    assert!(missing.is_empty(), "metrics read but not there: {missing:?}");
    assert!(names.len() >= 10 && names.contains("process_cpu_seconds_total"), "{names:?}");

    drop(prom);
    obs.stop();
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
}
