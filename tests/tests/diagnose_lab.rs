//! Lab tests of the diagnosis: the findings the observer writes for what
//! containers really did, with the lab's SDK stand-in and with real SDKs
//! (botocore, the AWS SDK for Rust). Root only: `cargo xtask test`.
mod common;

use std::{path::Path, time::Duration};

use common::assert_fields_documented;
use imds_lab::{
    Attach, ClientRun, Container, Lab, LabOpts, Tokens, Value, bin, bin_dir, findings_for,
};

const IMDS: &str = "http://169.254.169.254";

/// Past the engine's timeouts.
const SETTLE: Duration = Duration::from_millis(1500);

/// The latest line of each finding kind for the container.
fn latest<'a>(events: &'a [Value], c: &Container, kind: &str) -> Option<&'a Value> {
    findings_for(events, &c.cgroup_rel()).into_iter().rfind(|f| f["kind"] == kind)
}

fn kinds(events: &[Value], c: &Container) -> Vec<String> {
    let mut k: Vec<String> = findings_for(events, &c.cgroup_rel())
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect();
    k.dedup();
    k
}

/// Unix seconds of an RFC 3339 timestamp as the observer writes them.
fn unix(ts: &Value) -> f64 {
    let s = ts.as_str().expect("ts");
    let out = std::process::Command::new("date").args(["-u", "-d", s, "+%s.%N"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("date parses ts")
}

/// The timeline matches what the client itself did: same attempts, in
/// order, within 250 ms of the client's own send times (taken before its
/// connect; the kernel matrix's guests are emulated, the arm64 one on
/// another architecture beside the host lab, and slow to get from there to
/// the SYN). Attempts are 1 s apart, so each still matches only its own.
fn assert_timeline_matches(finding: &Value, client: &ClientRun) {
    let timeline = finding["timeline"].as_array().expect("timeline");
    assert_eq!(
        timeline.len(),
        client.lines.len(),
        "timeline {timeline:#?}\nclient {:#?}",
        client.lines
    );
    for (seen, did) in timeline.iter().zip(&client.lines) {
        assert_eq!(seen["method"], did["method"]);
        assert_eq!(seen["path"], did["path"]);
        let dt = (unix(&seen["ts"]) - did["t"].as_f64().unwrap()).abs();
        assert!(dt < 0.25, "attempt at {} seen {dt:.3}s off the client's own time", seen["ts"]);
        match did["outcome"].as_str().unwrap() {
            "timeout" => assert_eq!(seen["outcome"], "lost", "{seen}"),
            "ok" => assert_eq!(
                seen["outcome"],
                if did["status"] == 200 { "ok".into() } else { did["status"].to_string() }
            ),
            other => panic!("unexpected client outcome {other}"),
        }
    }
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn hop_limit_1_sdk_like_client_gets_hop_limit_exceeded_and_fallback() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let c = lab.add_container("js", Attach::Routed);
    let obs = lab.observer_as_deployed(&["--instance-id", "i-0123456789abcdef0"]);
    let client = c.sdk("js-v2", IMDS);
    assert_eq!(
        client.lines.iter().filter(|l| l["method"] == "PUT").count(),
        4,
        "{:?}",
        client.lines
    );
    let events = obs.finish(SETTLE);
    assert_fields_documented(&events);

    let f = latest(&events, &c, "hop_limit_exceeded")
        .unwrap_or_else(|| panic!("no hop_limit_exceeded: {:?}", kinds(&events, &c)));
    let ev = &f["evidence"];
    assert_eq!(ev["reply_ttl_at_host"], 1);
    assert_eq!(ev["forwarding_hops"], 1);
    assert_eq!(ev["required_hop_limit"], 2);
    assert_eq!(ev["lost_replies"], 4);
    assert!(ev["drops"].as_u64().unwrap() >= 4, "{ev}");
    assert!(ev["seconds_lost"].as_f64().unwrap() > 3.0, "{ev}");
    assert_timeline_matches(f, &client);
    let cmd = f["fix"]["command"].as_str().unwrap();
    assert_eq!(
        cmd,
        "aws ec2 modify-instance-metadata-options --instance-id i-0123456789abcdef0 --http-put-response-hop-limit 2 --http-endpoint enabled"
    );
    assert!(f["fix"]["karpenter"].as_str().unwrap().contains("httpPutResponseHopLimit: 2"));

    let fb = latest(&events, &c, "imdsv1_fallback").expect("imdsv1_fallback");
    assert!(fb["summary"].as_str().unwrap().contains("SSRF"), "{fb}");

    // As deployed, no packet is written: one `exchange` per lost token
    // reply (the server's retransmissions folded in), with its evidence.
    assert!(events.iter().all(|e| e["type"] != "request" && e["type"] != "drop"));
    let lost: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "exchange" && e["cgroup"] == c.cgroup_rel().as_str())
        .filter(|e| e["method"] == "PUT")
        .collect();
    assert_eq!(lost.len(), 4, "{lost:#?}");
    for x in &lost {
        assert_eq!(x["outcome"], "lost", "{x}");
        assert_eq!(x["reply_ttl"], 1, "{x}");
        assert_eq!(x["delivered"], false, "{x}");
        assert_eq!(x["hop_limit"], 1, "{x}");
        assert!(x["reason"].is_string() || x["location"] == "ip_forward", "the drop: {x}");
    }

    // The first verdict went out before the client's first 1 s timeout.
    let first = findings_for(&events, &c.cgroup_rel())
        .into_iter()
        .find(|f| f["kind"] == "hop_limit_exceeded")
        .unwrap();
    let first_put = client.lines[0]["t"].as_f64().unwrap();
    let at = unix(&first["ts"]);
    assert!(
        at < first_put + 1.0,
        "first hop_limit_exceeded at +{:.3}s, after the client's timeout",
        at - first_put
    );
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn healthy_traffic_for_30_s_is_summed_up_with_no_exchange_line() {
    let mut lab = Lab::new(LabOpts { hop_limit: 2, ..Default::default() });
    let c = lab.add_container("svc", Attach::Routed);
    let obs = lab.observer_as_deployed(&[]);
    let t0 = std::time::Instant::now();
    let mut requests = 0;
    while t0.elapsed() < Duration::from_secs(30) {
        let run = c.sdk("js-v2", IMDS);
        assert_eq!(run.code, 0, "{:?}", run.lines);
        requests += run.lines.len() as u64;
        std::thread::sleep(Duration::from_millis(500));
    }
    let events = obs.finish(SETTLE);
    assert_fields_documented(&events);
    let mine: Vec<&Value> =
        events.iter().filter(|e| e["cgroup"] == c.cgroup_rel().as_str()).collect();
    let exchanges = mine.iter().filter(|e| e["type"] == "exchange").count();
    assert_eq!(exchanges, 0, "healthy requests get no line of their own: {mine:#?}");
    let summaries: Vec<&&Value> = mine.iter().filter(|e| e["type"] == "summary").collect();
    assert!(!summaries.is_empty(), "a summary at least when the run ends");
    let summed: u64 = summaries.iter().map(|s| s["summary"]["requests"].as_u64().unwrap()).sum();
    assert_eq!(summed, requests, "{summaries:#?}");
    assert!(summaries.iter().all(|s| s["hops"] == 1 && s["hop_limit"] == 2), "{summaries:#?}");
    assert_eq!(kinds(&events, &c), ["healthy"]);
    // A few lines for the whole run, not a dozen per request.
    assert!(events.len() <= 5, "{} lines for {requests} requests", events.len());
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn two_forwarding_hops_need_hop_limit_3() {
    let mut lab = Lab::new(LabOpts { hop_limit: 2, ..Default::default() });
    let c = lab.add_container("far", Attach::Router);
    let obs = lab.observer_as_deployed(&[]);
    c.sdk("botocore", IMDS);
    let events = obs.finish(SETTLE);
    let f = latest(&events, &c, "hop_limit_exceeded")
        .unwrap_or_else(|| panic!("{:?}", kinds(&events, &c)));
    assert_eq!(f["evidence"]["reply_ttl_at_host"], 2);
    assert_eq!(f["evidence"]["forwarding_hops"], 2);
    assert_eq!(f["evidence"]["required_hop_limit"], 3);
    drop(lab);

    // The same container at hop limit 3: healthy.
    let mut lab = Lab::new(LabOpts { hop_limit: 3, ..Default::default() });
    let c = lab.add_container("far", Attach::Router);
    let obs = lab.observer_as_deployed(&[]);
    let run = c.sdk("botocore", IMDS);
    assert_eq!(run.lines[0]["status"], 200);
    let events = obs.finish(SETTLE);
    assert_eq!(kinds(&events, &c), vec!["healthy"], "{events:#?}");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn tokenless_container_on_a_hop_limit_1_host_is_at_risk() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let host = lab.host_process("agent");
    let c = lab.add_container("legacy", Attach::Routed);
    let obs = lab.observer_as_deployed(&[]);
    // A host process's token request shows the node's hop limit (1)...
    assert_eq!(host.sdk("token-only", IMDS).code, 0);
    // ...and this container, one hop away, has only used IMDSv1 so far.
    assert_eq!(c.sdk("v1-only", IMDS).code, 0);
    let events = obs.finish(SETTLE);
    let f = latest(&events, &c, "at_risk").unwrap_or_else(|| panic!("{:?}", kinds(&events, &c)));
    assert_eq!(f["evidence"]["forwarding_hops"], 1);
    assert_eq!(f["evidence"]["node_hop_limit"], 1);
    assert!(latest(&events, &c, "hop_limit_exceeded").is_none());
    assert_eq!(kinds(&events, &host).last().map(String::as_str), Some("healthy"));
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn credential_storm_for_a_client_that_fetches_per_call_not_for_one_that_caches() {
    let mut lab = Lab::new(LabOpts { hop_limit: 2, ..Default::default() });
    let storm = lab.add_container("storm", Attach::Routed);
    let cached = lab.add_container("cached", Attach::Routed);
    let obs = lab.observer_as_deployed(&[]);
    // Real botocore, 5 calls a second: a new session per call (a token and
    // the role's credentials fetched each time) for 30 s, beside a service
    // that keeps its session for 2 minutes.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/botocore_client.py");
    let run = |c: &Container, how: &str, secs: &str| {
        c.client(
            Path::new("python3"),
            &[script.to_str().unwrap(), how, secs, "5"],
            &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS)],
        )
    };
    let (s, k) = std::thread::scope(|t| {
        let s = t.spawn(|| run(&storm, "per-call", "30"));
        let k = t.spawn(|| run(&cached, "cached", "120"));
        (s.join().unwrap(), k.join().unwrap())
    });
    for r in [&s, &k] {
        assert_eq!(r.code, 0, "{:?}", r.lines);
        assert!(r.lines[0]["calls"].as_u64().unwrap() > 100, "{:?}", r.lines);
    }
    let events = obs.finish(SETTLE);
    assert_fields_documented(&events);

    let f = latest(&events, &storm, "credential_storm")
        .unwrap_or_else(|| panic!("no credential_storm: {:?}", kinds(&events, &storm)));
    let fetches = &f["evidence"]["fetches"];
    assert_eq!(fetches["window_minutes"], 10);
    assert_eq!(fetches["threshold"], 120);
    // Two credential requests a call (the role's name, then its credentials).
    assert!(fetches["credentials"].as_u64().unwrap() > 120, "{fetches}");
    assert!(fetches["tokens"].as_u64().unwrap() > 60, "{fetches}");
    assert_eq!(f["evidence"]["sdk"].as_str().map(|s| s.split('/').next()), Some(Some("botocore")));
    assert!(f["summary"].as_str().unwrap().contains("boto3 Session"), "{f}");
    // Said once: the counts grow with every call, the finding does not repeat.
    let lines = findings_for(&events, &storm.cgroup_rel())
        .iter()
        .filter(|f| f["kind"] == "credential_storm")
        .count();
    assert_eq!(lines, 1, "{:?}", kinds(&events, &storm));

    // The caching service: a token and its credentials once, then nothing
    // to see but its health.
    let kinds_cached = kinds(&events, &cached);
    assert!(!kinds_cached.iter().any(|k| k == "credential_storm"), "{kinds_cached:?}");
    assert!(kinds_cached.iter().all(|k| k == "healthy"), "{kinds_cached:?}");
    let healthy = latest(&events, &cached, "healthy").expect("healthy");
    assert!(healthy["evidence"]["requests"]["credentials"].as_u64().unwrap() <= 4, "{healthy}");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn botocore_one_put_then_tokenless_gets() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let c = lab.add_container("boto", Attach::Routed);
    let obs = lab.observer_as_deployed(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/botocore_client.py");
    let run = c.client(
        Path::new("python3"),
        &[script.to_str().unwrap()],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS)],
    );
    assert_eq!(run.code, 0, "botocore fell back to IMDSv1 and got credentials: {:?}", run.lines);
    let took = run.lines[0]["t_end"].as_f64().unwrap() - run.lines[0]["t_start"].as_f64().unwrap();
    assert!((1.0..2.0).contains(&took), "botocore waited {took:.2}s (one 1 s token timeout)");
    let events = obs.finish(SETTLE);

    let f = latest(&events, &c, "hop_limit_exceeded")
        .unwrap_or_else(|| panic!("{:?}", kinds(&events, &c)));
    let t = f["timeline"].as_array().unwrap();
    assert_eq!(t[0]["method"], "PUT");
    assert_eq!(t[0]["outcome"], "lost");
    assert!(t.len() >= 3, "{t:#?}");
    for a in &t[1..] {
        assert_eq!(a["method"], "GET", "exactly one PUT: {t:#?}");
        assert_eq!(a["token"], false);
        assert_eq!(a["outcome"], "ok");
    }
    assert!(t[1..].iter().any(|a| a["path"] == "/latest/meta-data/iam/security-credentials/"));
    assert!(latest(&events, &c, "imdsv1_fallback").is_some());
    // Issue #24: the SDK and its version, from its own User-Agent, and
    // what it does at the limit.
    let version = run.lines[0]["botocore"].as_str().unwrap();
    assert_eq!(f["evidence"]["sdk"], format!("botocore/{version}"));
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains("botocore waits 1 s for the token once per process"), "{summary}");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn aws_sdk_for_rust_one_put_then_fails_without_fallback() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let c = lab.add_container("rust", Attach::Routed);
    let obs = lab.observer_as_deployed(&[]);
    let run = c.client(
        &bin_dir().join("aws-sdk-rust-client"),
        &[],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS)],
    );
    assert_eq!(run.code, 3, "the SDK for Rust has no IMDSv1 fallback: {:?}", run.lines);
    let events = obs.finish(SETTLE);

    let f = latest(&events, &c, "hop_limit_exceeded")
        .unwrap_or_else(|| panic!("{:?}", kinds(&events, &c)));
    let t = f["timeline"].as_array().unwrap();
    assert_eq!(t.len(), 1, "one PUT, nothing after: {t:#?}");
    assert_eq!((t[0]["method"].as_str(), t[0]["outcome"].as_str()), (Some("PUT"), Some("lost")));
    assert!(latest(&events, &c, "imdsv1_fallback").is_none(), "no fallback happened");
    // Issue #24: named from its User-Agent (aws-runtime's version).
    let sdk = f["evidence"]["sdk"].as_str().unwrap_or_default();
    let v = sdk.strip_prefix("aws-sdk-rust/").unwrap_or_else(|| panic!("sdk {sdk:?}"));
    assert!(v.split('.').all(|p| p.parse::<u32>().is_ok()), "{sdk}");
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains("the SDK for Rust has no IMDSv1 fallback"), "{summary}");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn tokens_required_401_is_explained_by_the_hop_limit() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, tokens: Tokens::Required });
    let c = lab.add_container("strict", Attach::Routed);
    let obs = lab.observer_as_deployed(&[]);
    let run = c.sdk("botocore", IMDS);
    assert!(run.lines.iter().any(|l| l["status"] == 401), "{:?}", run.lines);
    let events = obs.finish(SETTLE);
    assert_fields_documented(&events);
    assert!(latest(&events, &c, "hop_limit_exceeded").is_some(), "{:?}", kinds(&events, &c));
    let f =
        latest(&events, &c, "token_rejected").unwrap_or_else(|| panic!("{:?}", kinds(&events, &c)));
    assert_eq!(f["evidence"]["status"], 401);
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains("hop limit"), "401 not tied to the hop limit: {summary}");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn nothing_on_the_ecs_endpoint_is_unreachable_not_hop_limit() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let c = lab.add_container("ecs", Attach::Routed);
    let obs = lab.observer_as_deployed(&[]);
    let run = c.sdk("v1-only", "http://169.254.170.2");
    assert_eq!(run.lines[0]["outcome"], "refused");
    let events = obs.finish(SETTLE);
    assert_fields_documented(&events);
    let f =
        latest(&events, &c, "unreachable").unwrap_or_else(|| panic!("{:?}", kinds(&events, &c)));
    assert!(!f["summary"].as_str().unwrap().to_lowercase().contains("hop limit"), "{f}");
    assert!(f.get("fix").is_none() || !f["fix"].to_string().contains("hop-limit"));
    assert!(latest(&events, &c, "hop_limit_exceeded").is_none());
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn report_exit_codes_and_replay_match_live() {
    // Failing host: live report exits 1; the recording replays to the same findings.
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let c = lab.add_container("app", Attach::Routed);
    let live = lab.observer_cmd(&["report", "--duration", "8", "--json", "--alongside"]);
    // A recording at each level of `run --events`, side by side.
    let levels = ["problems", "exchanges", "packets"];
    let recs: Vec<_> = levels
        .iter()
        .map(|l| lab.observer_as_deployed(&["--duration", "8", "--alongside", "--events", l]))
        .collect();
    c.sdk("botocore", IMDS);
    let (code, live_out) = live.wait(Duration::from_secs(15));
    assert_eq!(code, 1, "{live_out}");
    let (mut replays, mut recordings) = (Vec::new(), Vec::new());
    for (level, rec) in levels.iter().zip(recs) {
        let (_, recording) = rec.wait(Duration::from_secs(15));
        let types: std::collections::BTreeSet<String> = recording
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| v["type"].as_str().unwrap_or("").to_string())
            .collect();
        let packets = types.contains("request") || types.contains("host_ingress");
        assert_eq!(packets, *level == "packets", "{level}: {types:?}");
        assert_eq!(types.contains("exchange"), *level != "packets", "{level}: {types:?}");
        let file = std::env::temp_dir()
            .join(format!("imds-lab-recording-{level}-{}.jsonl", std::process::id()));
        std::fs::write(&file, &recording).unwrap();
        let replay = std::process::Command::new(bin("imds-observer"))
            .args(["report", "--json", "--from", file.to_str().unwrap()])
            .output()
            .unwrap();
        std::fs::remove_file(&file).ok();
        assert_eq!(replay.status.code(), Some(1), "{level}");
        replays.push((level, String::from_utf8_lossy(&replay.stdout).into_owned()));
        recordings.push(recording);
    }
    // What a node writes by default.
    let recording = &recordings[0];
    let key = |text: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|f| f["container"]["cgroup"] == c.cgroup_rel().as_str())
            .map(|f| {
                format!(
                    "{} {} {}",
                    f["kind"],
                    f["evidence"]["forwarding_hops"],
                    f["evidence"]["required_hop_limit"]
                )
            })
            .collect();
        v.sort();
        v
    };
    let live_keys = key(&live_out);
    assert!(live_keys.iter().any(|k| k.starts_with("\"hop_limit_exceeded\" 1 2")), "{live_keys:?}");
    for (level, replay) in &replays {
        assert_eq!(live_keys, key(replay), "the replay of `--events {level}` differs from live");
    }

    // The table names the finding and the fix.
    let table = std::process::Command::new(bin("imds-observer"))
        .args(["report", "--from", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(recording.as_bytes()).unwrap();
            ch.wait_with_output().unwrap()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("hop_limit_exceeded") && text.contains("--http-put-response-hop-limit 2"),
        "{text}"
    );
    drop(lab);

    // Healthy host: exit 0.
    let mut lab = Lab::new(LabOpts { hop_limit: 2, ..Default::default() });
    let c = lab.add_container("app", Attach::Routed);
    let live = lab.observer_cmd(&["report", "--duration", "3"]);
    assert_eq!(c.sdk("token-only", IMDS).code, 0);
    let (code, out) = live.wait(Duration::from_secs(15));
    assert_eq!(code, 0, "{out}");

    // Usage error: exit 2.
    let bad = std::process::Command::new(bin("imds-observer"))
        .args(["report", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let no_source =
        std::process::Command::new(bin("imds-observer")).args(["report"]).output().unwrap();
    assert_eq!(no_source.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_source.stderr).contains("--duration"));
}
