//! Issue #24's matrix: the advice fits the node and the workload. The fake
//! API server serves a Node object (Karpenter, an EKS managed node group,
//! eksctl, or none of them, each with its providerID) and pods with and
//! without IRSA's or Pod Identity's variables; IMDS requires tokens or not;
//! the clients are real botocore (credentials, or only its region), the
//! real AWS SDK for Rust, and the SDK stand-in (JS v2). Every cell checks
//! the verdict, the first fix offered (with the real namespace,
//! ServiceAccount and instance id), and the SDK named from the real
//! clients' User-Agent. No cell on a node that blocks pods by design offers
//! a hop-limit raise first; no output anywhere offers hostNetwork. Root
//! only: `cargo xtask test`.
mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use imds_lab::{
    Container, Lab, LabOpts, Observer, Orchestrator, Tokens, Value, bin_dir, findings_for, pod_json,
};
use serde_json::json;

const IMDS: &str = "http://169.254.169.254";
const KUBE_TOKEN: &str = "lab-kube-token-matrix";
const INSTANCE: &str = "i-0fedcba9876543210";
const WAIT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, Debug, PartialEq)]
enum NodeKind {
    Karpenter,
    NodeGroup,
    Eksctl,
    None,
}

impl NodeKind {
    fn labels(self) -> Value {
        match self {
            NodeKind::Karpenter => json!({"karpenter.sh/nodepool": "general"}),
            NodeKind::NodeGroup => json!({"eks.amazonaws.com/nodegroup": "ng-1"}),
            NodeKind::Eksctl => json!({"alpha.eksctl.io/nodegroup-name": "ng-eksctl"}),
            NodeKind::None => json!({}),
        }
    }

    /// What each sets: hop limit 1 on purpose, except eksctl's default 2
    /// (eksctl sets 1 only with disablePodIMDS).
    fn hop_limit(self) -> u8 {
        if self == NodeKind::Eksctl { 2 } else { 1 }
    }

    fn blocks_pods(self) -> bool {
        matches!(self, NodeKind::Karpenter | NodeKind::NodeGroup)
    }
}

/// One workload of the matrix: its pod, what its spec says of its role,
/// and the client it runs.
#[derive(Clone, Copy, Debug)]
struct Workload {
    name: &'static str,
    /// IRSA's or Pod Identity's variable names in its spec.
    identity: Option<&'static str>,
    client: Client,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    /// The SDK stand-in's JavaScript v2 profile (credentials).
    JsV2,
    /// Real botocore, credentials.
    Botocore,
    /// Real botocore, its region only.
    BotocoreRegion,
    /// The real AWS SDK for Rust (credentials).
    Rust,
}

const WORKLOADS: [Workload; 6] = [
    Workload { name: "plain-js", identity: None, client: Client::JsV2 },
    Workload { name: "plain-boto", identity: None, client: Client::Botocore },
    Workload { name: "plain-rust", identity: None, client: Client::Rust },
    Workload { name: "region-boto", identity: None, client: Client::BotocoreRegion },
    Workload { name: "irsa-boto", identity: Some("irsa"), client: Client::Botocore },
    Workload { name: "podid-js", identity: Some("pod_identity"), client: Client::JsV2 },
];

fn uid(i: usize) -> String {
    format!("4a9e2c1d-7b3f-4e8a-9d6c-2f1e0b3a5c{i:02x}")
}

fn cid(i: usize) -> String {
    format!("{:064x}", 0xc0ffee00 + i)
}

fn pod(i: usize, w: &Workload) -> Value {
    let mut p = pod_json("lab-node", &uid(i), w.name, &cid(i), json!({"app": w.name}));
    p["spec"]["serviceAccountName"] = json!(format!("sa-{}", w.name));
    let env = match w.identity {
        Some("irsa") => json!([
            {"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/matrix-canary"},
            {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
        ]),
        Some(_) => json!([
            {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
            {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"},
        ]),
        None => json!([]),
    };
    p["spec"]["containers"][0]["env"] = env;
    p
}

/// The client's exit code (0: it got what it asked for) and last line.
fn run_client(c: &Container, client: Client) -> (i32, Value) {
    let boto = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/botocore_client.py");
    let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS)];
    let run = match client {
        Client::JsV2 => c.sdk("js-v2", IMDS),
        Client::Botocore => c.client(Path::new("python3"), &[boto.to_str().unwrap()], &env),
        Client::BotocoreRegion => {
            c.client(Path::new("python3"), &[boto.to_str().unwrap(), "region"], &env)
        }
        Client::Rust => c.client(&bin_dir().join("aws-sdk-rust-client"), &[], &env),
    };
    (run.code, run.lines.last().cloned().unwrap_or(Value::Null))
}

fn start_observer(lab: &Lab, api: &Orchestrator) -> Observer {
    let missing_socket = api.dir.join("no-runtime.sock");
    let obs = lab.observer_with_env(
        &["--runtime-socket", missing_socket.to_str().unwrap()],
        &[("KUBECONFIG", api.kubeconfig.to_str().unwrap())],
    );
    obs.wait_stderr("pods on this node listed", WAIT);
    let t0 = Instant::now();
    while !obs.events().iter().any(|e| e["type"] == "node") {
        assert!(t0.elapsed() < WAIT, "no node line");
        std::thread::sleep(Duration::from_millis(100));
    }
    obs
}

/// One lab: `node` × `tokens`, all workloads at once.
fn cell_row(node: NodeKind, tokens: Tokens) {
    let mut lab = Lab::new(LabOpts { hop_limit: node.hop_limit(), tokens });
    let mut n = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "lab-node", "labels": node.labels()},
        "spec": {"providerID": format!("aws:///eu-west-1a/{INSTANCE}")},
    });
    n["metadata"]["labels"]["topology.kubernetes.io/region"] = json!("eu-west-1");
    let pods: Vec<Value> = WORKLOADS.iter().enumerate().map(|(i, w)| pod(i, w)).collect();
    let api = lab.fake_orchestrator(json!({"pods": pods, "nodes": [n], "kube_token": KUBE_TOKEN}));
    let containers: Vec<Container> = WORKLOADS
        .iter()
        .enumerate()
        .map(|(i, w)| lab.add_pod_container(w.name, &uid(i), &cid(i)))
        .collect();
    let obs = start_observer(&lab, &api);
    let runs: Vec<(i32, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = containers
            .iter()
            .zip(WORKLOADS)
            .map(|(c, w)| s.spawn(move || run_client(c, w.client)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stdout = obs.finish(SETTLE);
    common::assert_fields_documented(&stdout);
    let text: String = stdout.iter().map(|l| l.to_string()).collect();
    assert!(!text.contains("hostNetwork"), "{node:?}/{tokens:?}: hostNetwork offered");
    assert!(!text.contains("matrix-canary") && !text.contains("111122223333"), "an env value");
    assert!(!text.contains("FAKETOKEN") && !text.contains("FAKESECRET"), "a token or secret");
    // Of the User-Agent, only the SDK's name and version: not the rest of
    // the header (the language, OS and runtime the real clients send).
    for rest in ["Python/", "Linux/", "lang/rust", "api/imds", "os/linux"] {
        assert!(!text.contains(rest), "{node:?}/{tokens:?}: a header value ({rest}) in the output");
    }

    for ((c, w), (code, run)) in containers.iter().zip(WORKLOADS).zip(&runs) {
        let at = format!("{node:?}/{tokens:?}/{}", w.name);
        let found = findings_for(&stdout, &c.cgroup_rel());
        let latest = |kind: &str| found.iter().rev().find(|f| f["kind"] == kind).copied();
        let has = |kind: &str| latest(kind).is_some();
        let kinds: Vec<&str> = found.iter().map(|f| f["kind"].as_str().unwrap()).collect();
        // The SDK, named from the real clients' own User-Agent.
        let main = found
            .iter()
            .rev()
            .find(|f| f["evidence"]["sdk"].is_string())
            .map(|f| f["evidence"]["sdk"].as_str().unwrap().to_string());
        match w.client {
            Client::Botocore | Client::BotocoreRegion => {
                let v = run["botocore"].as_str().unwrap_or_else(|| panic!("{at}: {run}"));
                if !found.is_empty() && !has("healthy") {
                    assert_eq!(main.as_deref(), Some(format!("botocore/{v}").as_str()), "{at}");
                }
            }
            Client::Rust if !found.is_empty() && !has("healthy") => {
                let sdk = main.unwrap_or_default();
                assert!(sdk.starts_with("aws-sdk-rust/"), "{at}: {sdk:?} {found:#?}");
            }
            _ => {}
        }
        let wants_creds = w.client != Client::BotocoreRegion;
        let got_creds = *code == 0 && wants_creds;

        if node.hop_limit() == 2 {
            // eksctl's default: every client gets through. A workload with
            // a role of its own that took the node's is a leak; the rest
            // are healthy.
            assert_eq!(*code, 0, "{at}: {run}");
            if w.identity.is_some() {
                let leak = latest("node_role_leak").unwrap_or_else(|| panic!("{at}: {kinds:?}"));
                assert!(leak.get("fix").is_none(), "{at}: {leak}");
                let sa = format!("ServiceAccount payments/sa-{}", w.name);
                assert!(leak["summary"].as_str().unwrap().contains(&sa), "{at}: {leak}");
            } else {
                assert_eq!(kinds.last().copied(), Some("healthy"), "{at}: {kinds:?}");
            }
            continue;
        }

        // Hop limit 1: every client's token reply dies on the way.
        let verdict = if node.blocks_pods() { "node_role_blocked" } else { "hop_limit_exceeded" };
        let other = if node.blocks_pods() { "hop_limit_exceeded" } else { "node_role_blocked" };
        let f = latest(verdict).unwrap_or_else(|| panic!("{at}: no {verdict} in {kinds:?}"));
        assert!(!has(other), "{at}: {kinds:?}");
        let summary = f["summary"].as_str().unwrap();
        if !wants_creds {
            // Only its region: told so, and no hop-limit fix at all.
            assert!(f.get("fix").is_none(), "{at}: {f}");
            assert!(summary.contains("AWS_REGION"), "{at}: {summary}");
            assert!(!summary.contains("Raise the hop limit"), "{at}: {summary}");
        } else if node.blocks_pods() {
            // A role of its own first, for its real namespace and
            // ServiceAccount; the hop limit only as the last resort.
            let own = &f["fix"]["own_role"];
            assert_eq!(
                own["pod_identity"],
                format!(
                    "aws eks create-pod-identity-association --cluster \"$CLUSTER\" --namespace payments \
                     --service-account sa-{} --role-arn \"$ROLE_ARN\"",
                    w.name
                ),
                "{at}"
            );
            assert!(f["fix"]["note"].as_str().unwrap().starts_with("last resort"), "{at}: {f}");
            assert!(!summary.contains("Raise the hop limit"), "{at}: {summary}");
            if let Some(id) = w.identity {
                let id = if id == "irsa" { "IRSA" } else { "EKS Pod Identity" };
                assert!(summary.contains(&format!("configured for {id}")), "{at}: {summary}");
            }
        } else {
            // No word that the block is deliberate: the quick fix, then
            // the lasting one.
            assert!(
                summary.contains("Raise the hop limit to 2 (the quick fix)"),
                "{at}: {summary}"
            );
            assert!(summary.contains("EKS Pod Identity or IRSA for its ServiceAccount"), "{at}");
        }
        if let Some(cmd) = f["fix"]["command"].as_str() {
            assert!(cmd.contains(&format!("--instance-id {INSTANCE} ")), "{at}: {cmd}");
        }
        for f in &found {
            let s = f["summary"].as_str().unwrap();
            if node.blocks_pods() {
                assert!(!s.contains("Raise the hop limit"), "{at}: {}: {s}", f["kind"]);
            }
        }
        // The node's role in the hands of a workload with its own: a leak,
        // whichever node; never without one.
        assert_eq!(has("node_role_leak"), got_creds && w.identity.is_some(), "{at}: {kinds:?}");
        // What the SDK does at the limit, where it is known.
        match w.client {
            Client::Rust => assert!(summary.contains("no IMDSv1 fallback"), "{at}: {summary}"),
            Client::Botocore => assert!(summary.contains("botocore waits 1 s"), "{at}: {summary}"),
            _ => {}
        }
    }
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn karpenter_node() {
    cell_row(NodeKind::Karpenter, Tokens::Required);
    cell_row(NodeKind::Karpenter, Tokens::Optional);
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn eks_node_group() {
    cell_row(NodeKind::NodeGroup, Tokens::Required);
    cell_row(NodeKind::NodeGroup, Tokens::Optional);
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn eksctl_node_at_hop_limit_2() {
    cell_row(NodeKind::Eksctl, Tokens::Required);
    cell_row(NodeKind::Eksctl, Tokens::Optional);
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn node_that_says_nothing_of_its_design() {
    cell_row(NodeKind::None, Tokens::Required);
    cell_row(NodeKind::None, Tokens::Optional);
}
