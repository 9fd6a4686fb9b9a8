//! The verdict matrix: every client the lab has (the SDK stand-in's
//! profiles, botocore, the AWS SDK for Rust) × tokens optional / required ×
//! hop limit 1 / 2, one hop behind the host. Per cell: the exact set of
//! finding kinds at the end, no IMDSv1 alarm where IMDS requires tokens,
//! and `seconds_lost` within 0.3 s of what the client itself measured.
//! Root only: `cargo xtask test`.
mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::assert_fields_documented;
use imds_lab::{Attach, ClientRun, Container, Lab, LabOpts, Tokens, Value, bin, bin_dir};

const IMDS: &str = "http://169.254.169.254";
/// Past the engine's timeouts.
const SETTLE: Duration = Duration::from_millis(1500);
/// How far `seconds_lost` may be from the client's own measure.
const WAIT_TOLERANCE: f64 = 0.3;

#[derive(Clone, Copy, Debug)]
enum Client {
    /// The lab's SDK stand-in with a profile.
    StandIn(&'static str),
    /// botocore itself (python3).
    Botocore,
    /// The AWS SDK for Rust itself.
    RustSdk,
}

const CLIENTS: [Client; 7] = [
    Client::StandIn("js-v2"),
    Client::StandIn("botocore"),
    Client::StandIn("rust"),
    Client::StandIn("v1-only"),
    Client::StandIn("token-only"),
    Client::Botocore,
    Client::RustSdk,
];

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::StandIn(p) => p,
            Client::Botocore => "real-botocore",
            Client::RustSdk => "real-rust-sdk",
        }
    }

    fn run(self, c: &Container) -> ClientRun {
        let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS)];
        match self {
            Client::StandIn(p) => c.sdk(p, IMDS),
            Client::Botocore => {
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/botocore_client.py");
                c.client(Path::new("python3"), &[script.to_str().unwrap()], &env)
            }
            Client::RustSdk => c.client(&bin_dir().join("aws-sdk-rust-client"), &[], &env),
        }
    }

    /// What it tries: a token first, and whether it falls back to tokenless
    /// requests when no token comes.
    fn asks_token(self) -> bool {
        !matches!(self, Client::StandIn("v1-only"))
    }

    fn falls_back(self) -> bool {
        matches!(self, Client::StandIn("js-v2" | "botocore" | "v1-only") | Client::Botocore)
    }

    /// The finding kinds that must hold at the end of its run.
    fn expected(self, hop_limit: u8, tokens: Tokens) -> BTreeSet<&'static str> {
        let required = matches!(tokens, Tokens::Required);
        let mut k = BTreeSet::new();
        if hop_limit == 1 && self.asks_token() {
            k.insert("hop_limit_exceeded");
            if self.falls_back() {
                // Refused (401): nothing exposed, the hop limit explains it.
                // Answered: IMDSv1 exposure.
                k.insert(if required { "token_rejected" } else { "imdsv1_fallback" });
            }
        } else if !self.asks_token() {
            if required {
                k.insert("token_rejected");
            }
            // A tokenless client on a hop-limit-1 node breaks once it asks
            // for a token.
            if hop_limit == 1 {
                k.insert("at_risk");
            }
            if !required && hop_limit == 2 {
                k.insert("healthy");
            }
        } else {
            k.insert("healthy");
        }
        k
    }

    /// How long the client itself waited for token replies that never
    /// came: from its first timed-out token request to its next attempt, or
    /// to the end of its last timed-out one when it gave up.
    fn own_wait(self, run: &ClientRun) -> Option<f64> {
        match self {
            Client::StandIn(_) => {
                let l = &run.lines;
                let first = l.iter().position(|a| a["outcome"] == "timeout")?;
                let last = l.iter().rposition(|a| a["outcome"] == "timeout")?;
                let t = |a: &Value| a["t"].as_f64().unwrap();
                let end = match l.get(last + 1) {
                    Some(next) => t(next),
                    None => t(&l[last]) + l[last]["ms"].as_f64().unwrap() / 1000.0,
                };
                Some(end - t(&l[first]))
            }
            // One token request, then the fallback or the end: the whole
            // run but for the few milliseconds of what came after.
            Client::Botocore | Client::RustSdk => {
                let l = run.lines.first()?;
                Some(l["t_end"].as_f64()? - l["t_start"].as_f64()?)
            }
        }
    }
}

/// The findings `report` gives for the recording, for one container.
fn final_findings(events: &[Value], c: &Container) -> Vec<Value> {
    let file: PathBuf =
        std::env::temp_dir().join(format!("imds-matrix-{}-{}.jsonl", std::process::id(), c.name));
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let out = Command::new(bin("imds-observer"))
        .args(["report", "--json", "--from", file.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_file(&file).ok();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|f| f["container"]["cgroup"] == c.cgroup_rel().as_str())
        .collect()
}

fn cell(hop_limit: u8, tokens: Tokens) -> Vec<String> {
    let label = format!("hop limit {hop_limit}, tokens {tokens:?}");
    let mut lab = Lab::new(LabOpts { hop_limit, tokens });
    let containers: Vec<(Client, Container)> =
        CLIENTS.iter().map(|&cl| (cl, lab.add_container(cl.name(), Attach::Routed))).collect();
    let obs = lab.observer_as_deployed(&[]);
    // Side by side: each in its own container, as on a node.
    let runs: Vec<ClientRun> = std::thread::scope(|s| {
        let handles: Vec<_> = containers.iter().map(|(cl, c)| s.spawn(move || cl.run(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let events = obs.finish(SETTLE);
    assert_fields_documented(&events);

    let mut wrong = Vec::new();
    for ((cl, c), run) in containers.iter().zip(&runs) {
        let findings = final_findings(&events, c);
        let got: BTreeSet<&str> = findings.iter().map(|f| f["kind"].as_str().unwrap()).collect();
        let want = cl.expected(hop_limit, tokens);
        if got != want {
            wrong.push(format!("{label}, {}: findings {got:?}, expected {want:?}", cl.name()));
        }
        if matches!(tokens, Tokens::Required) {
            for f in &findings {
                let text = f.to_string();
                if text.contains("--http-tokens required") || text.contains("require IMDSv2") {
                    wrong.push(format!(
                        "{label}, {}: advises requiring tokens where IMDS already does: {f}",
                        cl.name()
                    ));
                }
            }
        }
        if let Some(hop) = findings.iter().find(|f| f["kind"] == "hop_limit_exceeded") {
            let lost = hop["evidence"]["seconds_lost"].as_f64().unwrap();
            match cl.own_wait(run) {
                Some(own) if (lost - own).abs() <= WAIT_TOLERANCE => {}
                own => wrong.push(format!(
                    "{label}, {}: seconds_lost {lost:.3}, the client measured {own:?}",
                    cl.name()
                )),
            }
        }
    }
    // A retransmitted request is folded into its exchange, never a new one.
    let mut seen = BTreeSet::new();
    for e in events.iter().filter(|e| e["type"] == "exchange" && e["method"].is_string()) {
        let key = (e["flow"].to_string(), e["ts"].to_string(), e["outcome"].to_string());
        assert!(seen.insert(key), "a second exchange line for one request: {e}");
    }
    wrong
}

#[test]
#[ignore = "lab: needs root, python3 with botocore and the SDK for Rust; run `cargo xtask test`"]
fn every_client_x_tokens_x_hop_limit_gets_the_right_verdict() {
    let mut wrong = Vec::new();
    for hop_limit in [1, 2] {
        for tokens in [Tokens::Optional, Tokens::Required] {
            wrong.extend(cell(hop_limit, tokens));
        }
    }
    assert!(wrong.is_empty(), "{} wrong cells:\n{}", wrong.len(), wrong.join("\n"));
}
