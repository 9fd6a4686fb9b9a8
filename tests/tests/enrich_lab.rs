//! Lab test of the names the orchestrators' APIs give: a process in a
//! kubepods cgroup (containerd's convention) and one in a Nomad allocation's
//! cgroup, both behind the lab's NAT bridge with hop limit 1, while the
//! observer reads a fake Kubernetes API server (through KUBECONFIG) and a
//! fake Nomad agent (NOMAD_ADDR, NOMAD_TOKEN), both on the lab host's
//! loopback. Root only: `cargo xtask test`.
mod common;

use std::time::Duration;

use imds_lab::{Attach, Lab, LabOpts, Value, findings_for, pod_json};
use serde_json::json;

const IMDS: &str = "http://169.254.169.254";
/// Past the engine's timeouts.
const SETTLE: Duration = Duration::from_millis(1500);

const POD_UID: &str = "4a9e2c1d-7b3f-4e8a-9d6c-2f1e0b3a5c7d";
const CID: &str = "c0ffee5fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
const ALLOC: &str = "9f1e2d3c-4b5a-4697-8887-a6b5c4d3e2f1";
const KUBE_TOKEN: &str = "lab-kube-token-8c1f0d";
const NOMAD_TOKEN: &str = "lab-nomad-token-2b7e4a";

fn alloc() -> Value {
    json!({
        "ID": ALLOC, "Namespace": "batch", "Name": "billing.api[0]", "JobID": "billing", "TaskGroup": "api",
        "Job": {"ID": "billing", "Name": "billing", "Namespace": "batch", "Type": "service"},
        "DesiredStatus": "run", "ClientStatus": "running"
    })
}

fn last_hop_finding<'a>(events: &'a [Value], cgroup: &str) -> &'a Value {
    findings_for(events, cgroup)
        .into_iter()
        .rfind(|f| f["kind"] == "hop_limit_exceeded")
        .unwrap_or_else(|| {
            panic!("no hop_limit_exceeded for {cgroup}: {:#?}", findings_for(events, cgroup))
        })
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn findings_name_pods_and_nomad_allocations_from_their_apis() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });

    // The fake API server and Nomad agent, on the lab host's loopback. A
    // pod on another node, with the same container id, must not name it.
    let labels = json!({"app": "api", "team": "payments"});
    let fake = lab.fake_orchestrator(json!({
        "pods": [
            pod_json("lab-node", POD_UID, "api-7f9c", CID, labels.clone()),
            pod_json("other-node", "0000aaaa-0000-4000-8000-000000000000", "elsewhere", CID, labels),
        ],
        "allocs": [alloc()],
        "kube_token": KUBE_TOKEN,
        "nomad_token": NOMAD_TOKEN,
    }));

    // A pod's container under containerd with the systemd cgroup driver,
    // and an exec-driver Nomad task, both behind the NAT bridge.
    let kube = lab.add_pod_container("kpod", POD_UID, CID);
    let mut task = lab.add_container("ntask", Attach::Bridge);
    let _ = std::fs::remove_dir(&task.cgroup);
    task.cgroup = lab.cgroup_at(&format!("nomad.slice/share.slice/{ALLOC}.fetcher.scope"));

    let missing_socket = fake.dir.join("no-runtime.sock");
    let obs = lab.observer_with_env(
        &["--runtime-socket", missing_socket.to_str().unwrap()],
        &[
            ("KUBECONFIG", fake.kubeconfig.to_str().unwrap()),
            ("NOMAD_ADDR", &fake.nomad_addr),
            ("NOMAD_TOKEN", NOMAD_TOKEN),
        ],
    );
    // The pod list is in before any traffic (the watch starts with the
    // observer; the Nomad lookup happens at the task's first packet).
    obs.wait_stderr("pods on this node listed", Duration::from_secs(20));

    let kr = kube.sdk("botocore", IMDS);
    let nr = task.sdk("botocore", IMDS);
    assert!(
        !kr.lines.is_empty() && !nr.lines.is_empty(),
        "clients ran: {:?} {:?}",
        kr.lines,
        nr.lines
    );
    let stderr = obs.stderr.clone();
    let events = obs.finish(SETTLE);
    common::assert_fields_documented(&events);

    // The pod: names from the API server, container name and image from
    // the pod's status (no runtime socket here).
    let f = last_hop_finding(&events, &kube.cgroup_rel());
    let c = &f["container"];
    assert_eq!(c["runtime"], "containerd", "{c}");
    assert_eq!(c["id"], CID, "{c}");
    assert_eq!(c["pod_uid"], POD_UID, "{c}");
    assert_eq!(c["pod"], "api-7f9c", "{c}");
    assert_eq!(c["namespace"], "payments", "{c}");
    assert_eq!(c["labels"], json!({"app": "api", "team": "payments"}), "{c}");
    assert_eq!(c["name"], "api", "{c}");
    assert_eq!(c["image"], "registry.example/api:1.42", "{c}");
    assert_eq!(f["evidence"]["forwarding_hops"], 1, "{f}");
    // Packets carry it too.
    assert!(
        events.iter().any(|e| e["type"] == "request" && e["container"]["pod"] == "api-7f9c"),
        "no request event names the pod"
    );

    // The Nomad task: job, group and namespace from the Nomad API, task
    // and allocation from the cgroup path.
    let f = last_hop_finding(&events, &task.cgroup_rel());
    let c = &f["container"];
    assert_eq!(c["runtime"], "nomad", "{c}");
    assert_eq!(
        c["nomad"],
        json!({"alloc": ALLOC, "job": "billing", "group": "api", "task": "fetcher", "namespace": "batch"}),
        "{c}"
    );
    assert!(c.get("labels").is_none(), "no pod labels on a Nomad task: {c}");

    // What the fakes saw: only this node's pods and its own Node, with the
    // kubeconfig's credentials; the allocation with the Nomad token.
    let seen = std::fs::read_to_string(&fake.log).unwrap();
    let kube_lines: Vec<&str> = seen.lines().filter(|l| l.starts_with("kube ")).collect();
    assert!(kube_lines.iter().any(|l| l.contains("watch=true")), "{seen}");
    for l in &kube_lines {
        let own_node = *l == "kube /api/v1/nodes/lab-node authorized=true";
        assert!(
            own_node
                || (l.contains("fieldSelector=spec.nodeName%3Dlab-node")
                    && l.ends_with("authorized=true")),
            "{l}"
        );
    }
    let nomad_lines: Vec<&str> = seen.lines().filter(|l| l.starts_with("nomad ")).collect();
    assert_eq!(
        nomad_lines,
        vec![format!("nomad /v1/allocation/{ALLOC} authorized=true")],
        "one lookup, cached: {seen}"
    );

    // Tokens never reach the logs or the event stream.
    let stderr = stderr.lock().unwrap().join("\n");
    let stdout: String = events.iter().map(|e| e.to_string()).collect();
    for token in [KUBE_TOKEN, NOMAD_TOKEN] {
        assert!(!stderr.contains(token) && !stdout.contains(token), "{token} leaked");
    }
}
