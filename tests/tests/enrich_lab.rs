//! Lab test of the names the orchestrators' APIs give: a process in a
//! kubepods cgroup (containerd's convention) and one in a Nomad allocation's
//! cgroup, both behind the lab's NAT bridge with hop limit 1, while the
//! observer reads a fake Kubernetes API server (through KUBECONFIG) and a
//! fake Nomad agent (NOMAD_ADDR, NOMAD_TOKEN), both on the lab host's
//! loopback. Root only: `cargo xtask test`.
mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use imds_lab::{Attach, Lab, LabOpts, Value, bin, findings_for};
use serde_json::json;

const IMDS: &str = "http://169.254.169.254";
/// Past the engine's timeouts.
const SETTLE: Duration = Duration::from_millis(1500);

const POD_UID: &str = "4a9e2c1d-7b3f-4e8a-9d6c-2f1e0b3a5c7d";
const CID: &str = "c0ffee5fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
const ALLOC: &str = "9f1e2d3c-4b5a-4697-8887-a6b5c4d3e2f1";
const KUBE_TOKEN: &str = "lab-kube-token-8c1f0d";
const NOMAD_TOKEN: &str = "lab-nomad-token-2b7e4a";

/// The pod as the API server would list it: scheduled on the lab's node,
/// its container running under containerd with id `CID`.
fn pod(node: &str, uid: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "payments", "uid": uid, "resourceVersion": "42",
            "labels": {"app": "api", "team": "payments"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-02T09:14:07Z"}
        },
        "spec": {"nodeName": node, "containers": [{"name": "api", "image": "registry.example/api:1.42"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": "api", "image": "registry.example/api:1.42",
                "imageID": "registry.example/api@sha256:0d4e", "containerID": format!("containerd://{CID}"),
                "ready": true, "restartCount": 0
            }]
        }
    })
}

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

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn findings_name_pods_and_nomad_allocations_from_their_apis() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let dir = TempDir(std::env::temp_dir().join(format!("{}-enrich", lab.id)));
    std::fs::create_dir_all(&dir.0).unwrap();

    // The fake API server and Nomad agent, on the lab host's loopback. A
    // pod with the same UID on another node must not be what is listed.
    let config = dir.0.join("orchestrator.json");
    let cfg = json!({
        "pods": [pod("lab-node", POD_UID, "api-7f9c"), pod("other-node", "0000aaaa-0000-4000-8000-000000000000", "elsewhere")],
        "allocs": [alloc()],
        "kube_token": KUBE_TOKEN,
        "nomad_token": NOMAD_TOKEN,
    });
    std::fs::write(&config, cfg.to_string()).unwrap();
    let log = dir.0.join("requests.log");
    let ready = lab.start_in_host(
        &bin("fake-orchestrator"),
        &["--config", config.to_str().unwrap(), "--log", log.to_str().unwrap()],
    );
    let ports: Vec<&str> =
        ready.strip_prefix("ready ").expect("fake-orchestrator ready line").split(' ').collect();
    let (kube_port, nomad_port) = (ports[0], ports[1]);
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: lab\n\
             clusters:\n- name: lab\n  cluster:\n    server: http://127.0.0.1:{kube_port}\n\
             users:\n- name: lab\n  user:\n    token: {KUBE_TOKEN}\n\
             contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n"
        ),
    )
    .unwrap();

    // A pod's container under containerd with the systemd cgroup driver,
    // and an exec-driver Nomad task, both behind the NAT bridge.
    let mut kube = lab.add_container("kpod", Attach::Bridge);
    let _ = std::fs::remove_dir(&kube.cgroup);
    kube.cgroup = lab.cgroup_at(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
        POD_UID.replace('-', "_")
    ));
    let mut task = lab.add_container("ntask", Attach::Bridge);
    let _ = std::fs::remove_dir(&task.cgroup);
    task.cgroup = lab.cgroup_at(&format!("nomad.slice/share.slice/{ALLOC}.fetcher.scope"));

    let nomad_addr = format!("http://127.0.0.1:{nomad_port}");
    let missing_socket = dir.0.join("no-runtime.sock");
    let obs = lab.observer_with_env(
        &["--runtime-socket", missing_socket.to_str().unwrap()],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("NOMAD_ADDR", &nomad_addr),
            ("NOMAD_TOKEN", NOMAD_TOKEN),
        ],
    );
    // The pod list is in before any traffic (the watch starts with the
    // observer; the Nomad lookup happens at the task's first packet).
    let t0 = Instant::now();
    while !obs.stderr.lock().unwrap().iter().any(|l| l.contains("pods on this node listed")) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "pods never listed: {:#?}",
            obs.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

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

    // What the fakes saw: only this node's pods, with the kubeconfig's
    // credentials; the allocation with the Nomad token.
    let seen = std::fs::read_to_string(&log).unwrap();
    let kube_lines: Vec<&str> = seen.lines().filter(|l| l.starts_with("kube ")).collect();
    assert!(kube_lines.iter().any(|l| l.contains("watch=true")), "{seen}");
    for l in &kube_lines {
        assert!(
            l.contains("fieldSelector=spec.nodeName%3Dlab-node") && l.ends_with("authorized=true"),
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
