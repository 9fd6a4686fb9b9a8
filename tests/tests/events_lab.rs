//! Lab test of the Kubernetes Events the observer creates on an affected
//! pod: the real observer, real capture of hop-limit-1 failures, and the
//! lab's fake API server (fake-orchestrator, through KUBECONFIG) on the lab
//! host's loopback, which keeps the Events it is sent. Checks that a finding
//! becomes one Warning Event on the right Pod, that repeats update its
//! series instead of creating Events, that containers which are not this
//! node's pods get none, that a 403 names the missing RBAC once while
//! capture goes on, and that `--no-pod-events` turns them off. Root only:
//! `cargo xtask test`.
mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use imds_lab::{
    Attach, Container, Lab, LabOpts, Observer, Orchestrator, Value, findings_for, pod_json,
};
use serde_json::json;

const IMDS: &str = "http://169.254.169.254";
/// Past the engine's timeouts.
const SETTLE: Duration = Duration::from_millis(1500);
/// For the observer to say it is ready, or what it could not do.
const WAIT: Duration = Duration::from_secs(20);

const POD_UID: &str = "4a9e2c1d-7b3f-4e8a-9d6c-2f1e0b3a5c7d";
const CID: &str = "c0ffee5fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
/// A pod the API server lists on another node.
const AWAY_UID: &str = "0000aaaa-0000-4000-8000-000000000000";
const AWAY_CID: &str = "a7a7a75fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
const KUBE_TOKEN: &str = "lab-kube-token-5e9d1a";
const RBAC_LINE: &str = "cannot create events.k8s.io/v1 Events in payments (HTTP 403";

/// The fake API server listing `POD_UID` on this node and `AWAY_UID` on
/// another.
fn fake_api(lab: &mut Lab, events_forbidden: bool) -> Orchestrator {
    let labels = json!({"app": "api"});
    lab.fake_orchestrator(json!({
        "pods": [
            pod_json("lab-node", POD_UID, "api-7f9c", CID, labels.clone()),
            pod_json("other-node", AWAY_UID, "elsewhere", AWAY_CID, labels),
        ],
        "kube_token": KUBE_TOKEN,
        "events_forbidden": events_forbidden,
    }))
}

fn start_observer(lab: &Lab, api: &Orchestrator, extra: &[&str]) -> Observer {
    let missing_socket = api.dir.join("no-runtime.sock");
    let mut args = vec!["--runtime-socket", missing_socket.to_str().unwrap()];
    args.extend_from_slice(extra);
    let obs = lab.observer_with_env(&args, &[("KUBECONFIG", api.kubeconfig.to_str().unwrap())]);
    obs.wait_stderr("pods on this node listed", WAIT);
    obs
}

/// One Events request the fake saw: method, path, status, the Event kept.
struct Seen {
    method: String,
    path: String,
    status: u16,
    event: Value,
}

fn events_seen(api: &Orchestrator) -> Vec<Seen> {
    let text = std::fs::read_to_string(&api.log).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("events "))
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let method = parts.next().unwrap().to_string();
            let path = parts.next().unwrap().to_string();
            let status = parts.next().unwrap().strip_prefix("status=").unwrap().parse().unwrap();
            let event = serde_json::from_str(parts.next().unwrap()).unwrap();
            Seen { method, path, status, event }
        })
        .collect()
}

fn kinds_for<'a>(events: &'a [Value], c: &Container, kind: &str) -> Vec<&'a Value> {
    findings_for(events, &c.cgroup_rel()).into_iter().filter(|f| f["kind"] == kind).collect()
}

/// Findings that get an Event, per reason.
const REASONS: [(&str, &str); 4] = [
    ("hop_limit_exceeded", "IMDSHopLimitExceeded"),
    ("imdsv1_fallback", "IMDSv1Fallback"),
    ("token_rejected", "IMDSTokenRejected"),
    ("at_risk", "IMDSAtRisk"),
];

fn with_events(events: &[Value], c: &Container) -> usize {
    REASONS.iter().map(|(k, _)| kinds_for(events, c, k).len()).sum()
}

/// The `pod Events` totals the observer logs at exit: `key=value` fields.
fn totals(stderr: &[String]) -> Value {
    let line = stderr
        .iter()
        .find(|l| l.contains("pod Events") && l.contains("sent="))
        .unwrap_or_else(|| panic!("no pod Events totals: {stderr:#?}"));
    let mut out = serde_json::Map::new();
    for w in line.split_whitespace() {
        if let Some((k, v)) = w.split_once('=') {
            if let Ok(n) = v.parse::<u64>() {
                out.insert(k.to_string(), json!(n));
            }
        }
    }
    Value::Object(out)
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_finding_is_one_event_on_its_pod_and_repeats_are_its_series() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let api = fake_api(&mut lab, false);
    let kpod = lab.add_pod_container("kpod", POD_UID, CID);
    // Named by its cgroup path as a pod, but the API lists it on another node.
    let away = lab.add_pod_container("away", AWAY_UID, AWAY_CID);
    // Not in a pod at all.
    let plain = lab.add_container("plain", Attach::Routed);
    let obs = start_observer(&lab, &api, &[]);
    obs.wait_stderr("findings on this node's pods become Events there", WAIT);

    for c in [&away, &plain] {
        let r = c.sdk("botocore", IMDS);
        assert!(!r.lines.is_empty(), "client ran: {:?}", r.lines);
    }
    // The js-v2 client's four token PUTs a run are four lost replies: each
    // changes the finding, a repeat for the Event. Ten at least.
    let mut runs = 0;
    while kinds_for(&obs.events(), &kpod, "hop_limit_exceeded").len() < 10 {
        assert!(runs < 6, "fewer than 10 hop_limit_exceeded findings after {runs} runs");
        let r = kpod.sdk("js-v2", IMDS);
        assert!(!r.lines.is_empty(), "client ran: {:?}", r.lines);
        runs += 1;
    }
    std::thread::sleep(SETTLE);

    // Every finding with an Event reached the fake: the series counts
    // add up to the findings on stdout.
    let t0 = Instant::now();
    let (events, seen) = loop {
        let events = obs.events();
        let seen = events_seen(&api);
        let counted: u64 = seen
            .iter()
            .filter(|s| s.method == "POST")
            .map(|s| {
                let last = seen
                    .iter()
                    .rfind(|x| x.event["metadata"]["name"] == s.event["metadata"]["name"]);
                last.unwrap().event["series"]["count"].as_u64().unwrap_or(1)
            })
            .sum();
        if counted as usize == with_events(&events, &kpod) {
            break (events, seen);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "series counts add up to {counted}, findings: {}; stderr: {:#?}",
            with_events(&events, &kpod),
            obs.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = obs.stderr.clone();
    let stdout = obs.finish(Duration::ZERO);
    common::assert_fields_documented(&stdout);

    // The other two were diagnosed too: their missing Events mean something.
    for c in [&away, &plain] {
        assert!(!kinds_for(&events, c, "hop_limit_exceeded").is_empty(), "{}", c.cgroup_rel());
    }
    eprintln!(
        "{} requests to the fake ({} runs of the client); findings with an Event: {} on the pod, {} on the others",
        seen.len(),
        runs,
        with_events(&events, &kpod),
        with_events(&events, &away) + with_events(&events, &plain)
    );
    assert!(seen.iter().all(|s| s.status == 201 || s.status == 200), "refused requests");
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    for p in &posts {
        assert_eq!(p.path, "/apis/events.k8s.io/v1/namespaces/payments/events");
        assert_eq!(p.event["regarding"]["uid"], POD_UID, "an Event on another pod: {}", p.event);
    }
    // One Event per reason the pod's findings had, no more.
    for (kind, reason) in REASONS {
        let n = posts.iter().filter(|p| p.event["reason"] == reason).count();
        let had = !kinds_for(&events, &kpod, kind).is_empty();
        assert_eq!(n, usize::from(had), "{reason}: {n} Events");
    }

    let hop: Vec<&Value> = kinds_for(&events, &kpod, "hop_limit_exceeded");
    let post = posts.iter().find(|p| p.event["reason"] == "IMDSHopLimitExceeded").unwrap();
    let e = &post.event;
    let name = e["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("api-7f9c."), "{name}");
    assert_eq!(e["metadata"]["namespace"], "payments");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["action"], "Diagnose");
    assert_eq!(e["reportingController"], "imds-observer");
    assert_eq!(e["reportingInstance"], "lab-node");
    assert_eq!(
        e["regarding"],
        json!({"apiVersion": "v1", "kind": "Pod", "name": "api-7f9c", "namespace": "payments", "uid": POD_UID})
    );
    assert!(e.get("series").is_none(), "a new Event has no series: {e}");
    // The note: the container, the first finding's summary, the fix; the
    // lab's node name holds no instance id, so the fix first sets it on the
    // node, both commands whole.
    let note = e["note"].as_str().unwrap();
    let summary = hop[0]["summary"].as_str().unwrap();
    let fix = &hop[0]["fix"];
    assert!(
        note.starts_with(&format!(
            "Container api: {summary} Fix, on the node: {}; {}",
            fix["get_instance_id"].as_str().unwrap(),
            fix["command"].as_str().unwrap()
        )),
        "{note}"
    );
    assert!(note.len() <= 1024, "{}", note.len());
    // Repeats: PATCHes of that one Event, the count up by one each time.
    let patches: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "PATCH" && s.path.ends_with(&format!("/events/{name}")))
        .collect();
    assert_eq!(patches.len(), hop.len() - 1, "one PATCH per repeat");
    let counts: Vec<u64> =
        patches.iter().map(|p| p.event["series"]["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, (2..=hop.len() as u64).collect::<Vec<_>>());
    assert!(hop.len() >= 10);
    assert!(patches.iter().all(|p| p.event["series"]["lastObservedTime"].is_string()));

    // The totals at exit: what was sent, and the other two counted as not
    // this node's pods.
    let stderr = stderr.lock().unwrap().clone();
    let t = totals(&stderr);
    assert_eq!(t["sent"], seen.len() as u64, "{t}");
    assert_eq!(
        t["not_a_pod"],
        (with_events(&events, &away) + with_events(&events, &plain)) as u64,
        "{t}"
    );
    for k in ["rate_limited", "queue_full", "off", "failed", "forbidden"] {
        assert_eq!(t[k], 0, "{k}: {t}");
    }
    let log = std::fs::read_to_string(&api.log).unwrap();
    assert!(!log.contains(KUBE_TOKEN) && !stderr.join("\n").contains(KUBE_TOKEN));
    assert!(!stdout.is_empty());
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn forbidden_events_name_the_rbac_once_and_capture_goes_on() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let api = fake_api(&mut lab, true);
    let kpod = lab.add_pod_container("kpod", POD_UID, CID);
    let obs = start_observer(&lab, &api, &["--metrics-addr", "127.0.0.1:19112"]);

    let r = kpod.sdk("js-v2", IMDS);
    assert!(!r.lines.is_empty(), "client ran: {:?}", r.lines);
    obs.wait_stderr(RBAC_LINE, WAIT);
    let after_first = kinds_for(&obs.events(), &kpod, "hop_limit_exceeded").len();
    let r = kpod.sdk("js-v2", IMDS);
    assert!(!r.lines.is_empty(), "client ran: {:?}", r.lines);
    // The metrics count what became of the findings (updated each second).
    std::thread::sleep(Duration::from_millis(1200));
    let scrape = lab.http_get(19112, "/metrics");
    let stderr = obs.stderr.clone();
    let events = obs.finish(SETTLE);
    assert!(
        scrape.contains(r#"imds_observer_pod_events_total{result="forbidden"} 1"#)
            && scrape.contains(r#"imds_observer_pod_events_total{result="sent"} 0"#),
        "{scrape}"
    );

    // Capture went on: the second run was diagnosed too.
    let hop = kinds_for(&events, &kpod, "hop_limit_exceeded").len();
    assert!(after_first >= 1 && hop > after_first, "{after_first} then {hop}");
    let stderr = stderr.lock().unwrap().clone();
    let rbac: Vec<&String> = stderr.iter().filter(|l| l.contains(RBAC_LINE)).collect();
    assert_eq!(rbac.len(), 1, "{rbac:#?}");
    assert!(
        rbac[0].contains(
            "the ClusterRole needs create and patch on events in API group events.k8s.io (deploy/kubernetes/rbac.yaml); pod Events are off for 10m"
        ),
        "{}",
        rbac[0]
    );
    // Asked once; off after that.
    let seen = events_seen(&api);
    assert_eq!(seen.len(), 1, "one request, then off");
    assert_eq!((seen[0].method.as_str(), seen[0].status), ("POST", 403));
    let t = totals(&stderr);
    assert_eq!(t["forbidden"], 1, "{t}");
    assert_eq!(t["sent"], 0, "{t}");
    assert_eq!(t["off"], with_events(&events, &kpod) as u64 - 1, "{t}");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn no_pod_events_creates_none() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let api = fake_api(&mut lab, false);
    let kpod = lab.add_pod_container("kpod", POD_UID, CID);
    let obs = start_observer(&lab, &api, &["--no-pod-events"]);
    let r = kpod.sdk("botocore", IMDS);
    assert!(!r.lines.is_empty(), "client ran: {:?}", r.lines);
    let stderr = obs.stderr.clone();
    let events = obs.finish(SETTLE);
    let hop = kinds_for(&events, &kpod, "hop_limit_exceeded");
    assert!(!hop.is_empty());
    assert_eq!(hop[0]["container"]["pod"], "api-7f9c", "the pod is known");
    assert!(events_seen(&api).is_empty());
    let stderr = stderr.lock().unwrap();
    assert!(!stderr.iter().any(|l| l.contains("pod Events") || l.contains("become Events")));
}

/// Issue #24: on a node Karpenter made, hop limit 1 keeps pods from the
/// node's role by design. A pod without a role of its own that asks for
/// credentials (the JS SDK v2 stand-in) is told to get one, for its real
/// namespace and ServiceAccount, with the instance from the Node's
/// providerID; never first to raise the hop limit, nowhere hostNetwork; its
/// Event says the same.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn on_a_karpenter_node_the_pod_is_told_to_get_a_role_of_its_own() {
    const INSTANCE: &str = "i-0fedcba9876543210";
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let mut pod = pod_json("lab-node", POD_UID, "api-7f9c", CID, json!({"app": "api"}));
    pod["spec"]["serviceAccountName"] = json!("checkout");
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "lab-node", "labels": {
            "karpenter.sh/nodepool": "general",
            "topology.kubernetes.io/region": "eu-west-1",
            "node.kubernetes.io/instance-type": "m7g.large",
        }},
        "spec": {"providerID": format!("aws:///eu-west-1a/{INSTANCE}")},
    });
    let api = lab.fake_orchestrator(json!({
        "pods": [pod], "nodes": [node], "kube_token": KUBE_TOKEN,
    }));
    let kpod = lab.add_pod_container("kpod", POD_UID, CID);
    let obs = start_observer(&lab, &api, &[]);
    obs.wait_stderr("Kubernetes: this node", WAIT);
    // The `node` line goes out at the next tick; the client after it.
    let t0 = Instant::now();
    while !obs.events().iter().any(|e| e["type"] == "node") {
        assert!(t0.elapsed() < WAIT, "no node line");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = kpod.sdk("js-v2", IMDS);
    assert!(r.lines.iter().any(|l| l["method"] == "PUT"), "client ran: {:?}", r.lines);
    std::thread::sleep(SETTLE);
    let t0 = Instant::now();
    while !events_seen(&api).iter().any(|s| s.event["reason"] == "IMDSNodeRoleBlocked") {
        assert!(t0.elapsed() < Duration::from_secs(15), "no IMDSNodeRoleBlocked Event");
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = obs.events();
    let stdout = obs.finish(Duration::ZERO);
    common::assert_fields_documented(&stdout);

    let node_line = events.iter().find(|e| e["type"] == "node").unwrap();
    assert_eq!(
        node_line["node_info"],
        json!({"provisioner": "karpenter", "pool": "general", "instance_id": INSTANCE,
               "region": "eu-west-1", "zone": "eu-west-1a", "instance_type": "m7g.large"})
    );
    let blocked = kinds_for(&events, &kpod, "node_role_blocked");
    assert!(!blocked.is_empty(), "{:#?}", findings_for(&events, &kpod.cgroup_rel()));
    assert!(kinds_for(&events, &kpod, "hop_limit_exceeded").is_empty());
    let f = blocked.last().unwrap();
    assert_eq!(f["container"]["service_account"], "checkout");
    assert!(f["container"].get("aws_identity").is_none(), "{f}");
    let own = &f["fix"]["own_role"];
    assert_eq!(
        own["pod_identity"],
        "aws eks create-pod-identity-association --cluster \"$CLUSTER\" --namespace payments \
         --service-account checkout --role-arn \"$ROLE_ARN\""
    );
    assert!(own["irsa"].as_str().unwrap().contains("-n payments checkout"), "{own}");
    assert!(f["fix"]["command"].as_str().unwrap().contains(&format!("--instance-id {INSTANCE} ")));
    assert!(f["fix"]["note"].as_str().unwrap().starts_with("last resort"), "{f}");
    for f in findings_for(&events, &kpod.cgroup_rel()) {
        let s = f["summary"].as_str().unwrap();
        assert!(!s.contains("Raise the hop limit"), "{}: {s}", f["kind"]);
    }
    assert!(!stdout.iter().any(|l| l.to_string().contains("hostNetwork")));

    // The pod's Event: the new reason, its own role first.
    let seen = events_seen(&api);
    let post = seen
        .iter()
        .find(|s| s.method == "POST" && s.event["reason"] == "IMDSNodeRoleBlocked")
        .unwrap();
    let note = post.event["note"].as_str().unwrap();
    assert!(
        note.contains(
            "): EKS Pod Identity: aws eks create-pod-identity-association --cluster \"$CLUSTER\""
        ),
        "{note}"
    );
    assert!(!note.contains("hostNetwork") && note.len() <= 1024, "{note}");
    assert!(!seen.iter().any(|s| s.event["reason"] == "IMDSHopLimitExceeded"));
}

/// Issue #24: a pod whose spec sets IRSA's variables, running real
/// botocore that takes the node's role from IMDS anyway (its chain has no
/// web identity: the client clears the variables, as an override would).
/// The finding is node_role_leak, naming botocore and its version from the
/// User-Agent and the table's minimum, with no hop-limit fix; the pod gets
/// an IMDSNodeRoleLeak Event; no variable value appears anywhere.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_pod_with_irsa_that_takes_the_nodes_role_is_told_why() {
    const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/lab-canary-role";
    let mut lab = Lab::new(LabOpts { hop_limit: 2, ..Default::default() });
    let mut pod = pod_json("lab-node", POD_UID, "api-7f9c", CID, json!({"app": "api"}));
    pod["spec"]["serviceAccountName"] = json!("checkout");
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "AWS_ROLE_ARN", "value": ROLE_ARN},
        {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
    ]);
    let api = lab.fake_orchestrator(json!({"pods": [pod], "kube_token": KUBE_TOKEN}));
    let kpod = lab.add_pod_container("kpod", POD_UID, CID);
    let obs = start_observer(&lab, &api, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/botocore_client.py");
    let run = kpod.client(
        Path::new("python3"),
        &[script.to_str().unwrap()],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS)],
    );
    assert_eq!(run.code, 0, "botocore got the node's credentials: {:?}", run.lines);
    let version = run.lines[0]["botocore"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    while !events_seen(&api).iter().any(|s| s.event["reason"] == "IMDSNodeRoleLeak") {
        assert!(t0.elapsed() < Duration::from_secs(15), "no IMDSNodeRoleLeak Event");
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = obs.events();
    let stdout = obs.finish(Duration::ZERO);
    common::assert_fields_documented(&stdout);

    let leak = kinds_for(&events, &kpod, "node_role_leak");
    let f =
        leak.last().unwrap_or_else(|| panic!("{:#?}", findings_for(&events, &kpod.cgroup_rel())));
    assert_eq!(f["container"]["aws_identity"], "irsa");
    assert_eq!(f["evidence"]["sdk"], format!("botocore/{version}"));
    assert_eq!(f["evidence"]["sdk_minimum"], "1.12.200");
    assert!(f["evidence"]["node_credentials"].as_u64().unwrap() >= 1, "{f}");
    assert!(f.get("fix").is_none(), "no hop-limit fix: {f}");
    let summary = f["summary"].as_str().unwrap();
    for want in [
        "configured for IRSA (ServiceAccount payments/checkout)",
        &format!("its SDK, botocore/{version}, supports IRSA (since 1.12.200)"),
    ] {
        assert!(summary.contains(want), "{want:?} not in {summary}");
    }
    let note = events_seen(&api)
        .into_iter()
        .find(|s| s.method == "POST" && s.event["reason"] == "IMDSNodeRoleLeak")
        .unwrap()
        .event["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(note.contains("node's IAM role credentials"), "{note}");
    // Names only: the role ARN never leaves the API's answer.
    let all = stdout.iter().map(|l| l.to_string()).collect::<String>() + &note;
    assert!(!all.contains("lab-canary-role") && !all.contains("111122223333"));
}
