//! A fleet's stream, generated (never checked in whole): 100 EKS-named
//! nodes (`ip-10-0-N-M.us-west-2.compute.internal`) in two node groups,
//! one pod of 3 containers each, every container's first IMDSv2 token reply
//! lost at hop limit 1 (one forwarding hop). Built from the first exchange
//! of `recordings/hop-limit-1.jsonl` (a real capture), renamed per node and
//! container. Most nodes say their instance (a `node` event with the
//! providerID's id); the last [`UNNAMED`] do not, so their fix must read
//! `"$INSTANCE_ID"`.
use std::{fmt::Write, path::Path};

use serde_json::{Value, json};

pub const NODES: usize = 100;
pub const CONTAINERS: [&str; 3] = ["api", "istio-proxy", "log-shipper"];
/// Nodes without a `node` event (no instance id known).
pub const UNNAMED: usize = 4;
pub const DOMAIN: &str = ".us-west-2.compute.internal";

/// Node `i`'s name: many share their first octets, as EKS names do.
pub fn node(i: usize) -> String {
    format!("ip-10-0-{}-{}{DOMAIN}", 1 + i / 40, 17 + i % 40)
}

/// Node `i`'s instance id (17 hex digits, as EC2 gives them), when known.
pub fn instance_id(i: usize) -> Option<String> {
    (i < NODES - UNNAMED).then(|| format!("i-0{:016x}", 0xabc1234def500000u64 + i as u64 * 7919))
}

/// Node `i`'s node group.
pub fn pool(i: usize) -> &'static str {
    if i.is_multiple_of(2) { "ng-general" } else { "ng-batch" }
}

/// Pod of node `i`: one Deployment, pods differing in their hashes only.
pub fn pod(i: usize) -> String {
    format!("checkout-7f9c5d6b8-{:05x}", 0x1a2b3 + i * 977)
}

/// The stream as JSON lines.
pub fn stream() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings");
    let recording = std::fs::read_to_string(dir.join("hop-limit-1.jsonl")).expect("recording");
    // The first exchange: up to the first finding the live observer wrote.
    let template: Vec<Value> = recording
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .take_while(|v| v["type"] != "finding")
        .collect();
    let mut out = String::new();
    for i in 0..NODES {
        let name = node(i);
        if let Some(id) = instance_id(i) {
            let ev = json!({
                "type": "node", "ts": template[0]["ts"], "node": name,
                "node_info": {"pool": pool(i), "instance_id": id,
                              "region": "us-west-2", "zone": "us-west-2a"},
            });
            writeln!(out, "{ev}").unwrap();
        }
        for (c, ctr) in CONTAINERS.iter().enumerate() {
            let cg = 20_000 + c as u64;
            let path = format!("/kubepods.slice/pod{i}/cri-containerd-{c}.scope");
            let who = json!({
                "cgroup": path, "cgroup_id": cg, "namespace": "shop", "pod": pod(i),
                "name": ctr, "runtime": "containerd",
            });
            for t in &template {
                let mut v = t.clone();
                v["node"] = json!(name);
                if v.get("cgroup_id").is_some() {
                    v["cgroup_id"] = json!(cg);
                    v["cgroup"] = json!(path);
                    v["container"] = who.clone();
                }
                if let Some(f) = v["flow"].as_u64() {
                    v["flow"] = json!(f + 1_000_000 * c as u64);
                }
                // Each container its own address (flows key on them too).
                for k in ["src", "dst"] {
                    if let Some(a) = v[k].as_str() {
                        v[k] = json!(a.replace("198.18.11.2", &format!("198.18.11.{}", 2 + c)));
                    }
                }
                writeln!(out, "{v}").unwrap();
            }
        }
    }
    out
}
