//! Lab test of the names the orchestrators' APIs give: a process in a
//! kubepods cgroup (containerd's convention) and one in a Nomad allocation's
//! cgroup, both behind the lab's NAT bridge with hop limit 1, while the
//! observer reads a fake Kubernetes API server (through KUBECONFIG) and a
//! fake Nomad agent (NOMAD_ADDR, NOMAD_TOKEN), both on the lab host's
//! loopback. Root only: `cargo xtask test`.
//!
//! Also what a pod's author cannot do through those names (#25): make every
//! line huge with a megabyte of labels, or have its container named as
//! another pod's with a forged mirror annotation or runtime labels.
mod common;

use std::{process::Stdio, time::Duration};

use imds_lab::{Attach, Lab, LabOpts, Value, bin, findings_for, pod_json};
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

/// A pod with about 1 MiB of labels (etcd admits 1.5 MiB objects) asking
/// IMDS in a burst: the lines stay few and small, the observer's memory
/// bounded, and `report --from` of what it wrote still names the pod.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_pod_with_a_mebibyte_of_labels_keeps_lines_and_memory_small() {
    const UID: &str = "5b0c3d2e-8a1f-4c6b-9e7d-3f2a1b0c9d8e";
    const CID: &str = "1abe15fbb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let mut labels = serde_json::Map::new();
    labels.insert("app".into(), json!("labelled"));
    for i in 0..14_000 {
        labels.insert(format!("bulk.example.com/k{i:05}"), json!("v".repeat(50)));
    }
    let labels = Value::Object(labels);
    assert!(labels.to_string().len() >= 1 << 20, "1 MiB of labels");
    let fake = lab.fake_orchestrator(json!({
        "pods": [pod_json("lab-node", UID, "labelled-7f9c", CID, labels)],
        "kube_token": KUBE_TOKEN,
    }));
    let pod = lab.add_pod_container("big", UID, CID);
    let missing_socket = fake.dir.join("no-runtime.sock");
    // The binary the image ships: what memory is measured on.
    let obs = lab.shipped_observer_with_env(
        &["--runtime-socket", missing_socket.to_str().unwrap()],
        &[("KUBECONFIG", fake.kubeconfig.to_str().unwrap())],
    );
    obs.wait_stderr("pods on this node listed", Duration::from_secs(30));

    // A burst: 16 clients at once, each its token attempts and fallbacks.
    let children: Vec<_> = (0..16)
        .map(|_| {
            pod.command(&bin("sdk-client"), &["--profile", "botocore", "--endpoint", IMDS])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a client")
        })
        .collect();
    for mut c in children {
        c.wait().expect("client");
    }
    std::thread::sleep(SETTLE);
    let peak_kib = obs.peak_rss_kib();
    let (lines, bytes) = obs.output_size();
    let raw = obs.raw();
    let events = obs.stop();
    println!("{lines} lines, {bytes} bytes, peak RSS {peak_kib} KiB");

    // Every line carries the identity at its bounded size: an event line
    // is under 4 KiB; a finding, with its timeline of attempts, under 16.
    for l in raw.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let max = if v["type"] == "finding" { 16 << 10 } else { 4 << 10 };
        assert!(l.len() < max, "a {} line of {} bytes", v["type"], l.len());
        assert!(v["container"].to_string().len() < 2 << 10, "{}", v["container"]);
    }
    assert!(lines < 2_000, "{lines} lines for 16 clients");
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    let f = last_hop_finding(&events, &pod.cgroup_rel());
    let c = &f["container"];
    assert_eq!(c["pod"], "labelled-7f9c", "{c}");
    assert_eq!(c["labels"], json!({"app": "labelled"}), "only the chosen keys: {c}");

    // `report --from` of what it wrote lists the pod.
    let recording = fake.dir.join("recording.jsonl");
    std::fs::write(&recording, format!("{raw}\n")).unwrap();
    let out = std::process::Command::new(bin("imds-observer"))
        .args(["report", "--from", recording.to_str().unwrap()])
        .env_clear()
        .output()
        .expect("run report");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a finding needs action: {report}");
    assert!(report.contains("payments/labelled-7f9c"), "{report}");
}

/// Who a container is cannot be claimed by another pod: a pod (owned by
/// the Node, as a mirror pod is) whose `kubernetes.io/config.mirror`
/// annotation names the victim's UID, containers whose runtime labels
/// (through the runtime socket) name the victim's pod, in the attacker's
/// pod and outside any pod, and a user's delegated cgroup named after the
/// victim's pod and container.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_forged_mirror_annotation_or_runtime_labels_do_not_change_whose_pod_it_is() {
    const VICTIM: &str = "2c4e6a8b-0d1f-4a3b-8c5d-7e9f0a1b2c3d";
    const ATTACKER: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
    const VICTIM_CID: &str = "a1c71d5fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
    const ATTACKER_CID: &str = "bad0001fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
    const LOOSE_CID: &str = "bad0002fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });

    let victim = pod_json("lab-node", VICTIM, "victim-api", VICTIM_CID, json!({"app": "victim"}));
    let mut attacker =
        pod_json("lab-node", ATTACKER, "attacker", ATTACKER_CID, json!({"app": "attacker"}));
    attacker["metadata"]["annotations"]["kubernetes.io/config.mirror"] = json!(VICTIM);
    attacker["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "v1", "kind": "Node", "name": "lab-node",
        "uid": "0d0e0f10-1112-4314-9516-171819202122", "controller": true
    }]);
    // The runtime's labels name the victim's pod, on the attacker's
    // container and on one in no pod at all.
    let forged = json!({
        "io.kubernetes.pod.uid": VICTIM,
        "io.kubernetes.pod.name": "victim-api",
        "io.kubernetes.pod.namespace": "payments",
        "io.kubernetes.container.name": "api",
    });
    let inspect = |id: &str, name: &str| json!({"Id": id, "Name": format!("/{name}"), "Config": {"Image": "evil:1", "Labels": forged}});
    let fake = lab.fake_orchestrator(json!({
        // The attacker first: a mirror claim must not win by order.
        "pods": [attacker, victim],
        "containers": [inspect(ATTACKER_CID, "attacker"), inspect(LOOSE_CID, "loose")],
        "kube_token": KUBE_TOKEN,
    }));
    let v = lab.add_pod_container("victim", VICTIM, VICTIM_CID);
    let a = lab.add_pod_container("attacker", ATTACKER, ATTACKER_CID);
    let mut loose = lab.add_container("loose", Attach::Bridge);
    let _ = std::fs::remove_dir(&loose.cgroup);
    loose.cgroup = lab.cgroup_at(&format!("system.slice/docker-{LOOSE_CID}.scope"));
    // A user's delegated cgroup, named like the victim's container.
    let mut delegated = lab.add_container("delegated", Attach::Bridge);
    let _ = std::fs::remove_dir(&delegated.cgroup);
    delegated.cgroup = lab.cgroup_at(&format!(
        "user.slice/user-1000.slice/user@1000.service/app.slice/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{VICTIM_CID}.scope",
        VICTIM.replace('-', "_")
    ));

    let obs = lab.observer_with_env(
        &["--runtime-socket", fake.docker_socket.to_str().unwrap()],
        &[("KUBECONFIG", fake.kubeconfig.to_str().unwrap())],
    );
    obs.wait_stderr("pods on this node listed", Duration::from_secs(20));
    for c in [&v, &a, &loose, &delegated] {
        let run = c.sdk("botocore", IMDS);
        assert!(!run.lines.is_empty(), "{} ran: {:?}", c.name, run.lines);
    }
    let events = obs.finish(SETTLE);
    common::assert_fields_documented(&events);

    let who =
        |c: &imds_lab::Container| last_hop_finding(&events, &c.cgroup_rel())["container"].clone();
    let (cv, ca, cl, cd) = (who(&v), who(&a), who(&loose), who(&delegated));
    assert_eq!(
        (&cv["pod"], &cv["pod_uid"], &cv["labels"]),
        (&json!("victim-api"), &json!(VICTIM), &json!({"app": "victim"})),
        "the victim is still itself: {cv}"
    );
    assert_eq!(
        (&ca["pod"], &ca["pod_uid"], &ca["labels"]),
        (&json!("attacker"), &json!(ATTACKER), &json!({"app": "attacker"})),
        "the attacker is its own pod: {ca}"
    );
    assert!(
        cl.get("pod").is_none() && cl.get("pod_uid").is_none() && cl.get("labels").is_none(),
        "a container in no pod is no pod's: {cl}"
    );
    assert_eq!(cl["runtime"], "docker", "{cl}");
    assert!(
        cd.get("pod").is_none() && cd.get("pod_uid").is_none() && cd.get("labels").is_none(),
        "a user's cgroup named after the victim's pod is not the victim: {cd}"
    );
    // No event at all names another cgroup as the victim's pod.
    for e in &events {
        let c = &e["container"];
        if c["pod_uid"] == VICTIM || c["pod"] == "victim-api" {
            assert_eq!(c["cgroup"], v.cgroup_rel(), "{e}");
        }
    }
    // The runtime socket was asked (the labels were read, and set aside).
    let seen = std::fs::read_to_string(&fake.log).unwrap();
    assert!(
        seen.contains(&format!("docker /containers/{ATTACKER_CID}/json"))
            || seen.contains(&format!("/containers/{ATTACKER_CID}/json")),
        "{seen}"
    );
}

/// Issue #24, Nomad: what Nomad says of this node (`/v1/agent/self`, then
/// `/v1/node/<id>`: its AWS fingerprint and pool) fills the instance id
/// into a Nomad task's fix, and the lasting fix is Nomad workload identity.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_nomad_nodes_fingerprint_names_its_instance_in_the_fix() {
    const NODE_ID: &str = "9d2c7a1e-55b0-4c3e-8f4a-0b1c2d3e4f50";
    const INSTANCE: &str = "i-0fedcba9876543210";
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let fake = lab.fake_orchestrator(json!({
        "allocs": [alloc()],
        "nomad_token": NOMAD_TOKEN,
        "nomad_node": {"ID": NODE_ID, "Name": "ip-10-0-1-17", "NodePool": "default",
            "Datacenter": "dc1", "Attributes": {
                "unique.platform.aws.instance-id": INSTANCE,
                "platform.aws.placement.availability-zone": "eu-west-1a",
                "platform.aws.instance-type": "m7g.large",
                "kernel.name": "linux"}},
    }));
    let mut task = lab.add_container("ntask", Attach::Bridge);
    let _ = std::fs::remove_dir(&task.cgroup);
    task.cgroup = lab.cgroup_at(&format!("nomad.slice/share.slice/{ALLOC}.fetcher.scope"));
    let missing_socket = fake.dir.join("no-runtime.sock");
    let obs = lab.observer_with_env(
        &["--runtime-socket", missing_socket.to_str().unwrap()],
        &[("NOMAD_ADDR", &fake.nomad_addr), ("NOMAD_TOKEN", NOMAD_TOKEN)],
    );
    obs.wait_stderr("Nomad: this node", Duration::from_secs(20));
    let t0 = std::time::Instant::now();
    while !obs.events().iter().any(|e| e["type"] == "node") {
        assert!(t0.elapsed() < Duration::from_secs(10), "no node line");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!task.sdk("js-v2", IMDS).lines.is_empty());
    let events = obs.finish(SETTLE);
    common::assert_fields_documented(&events);

    let node = events.iter().find(|e| e["type"] == "node").unwrap();
    assert_eq!(
        node["node_info"],
        json!({"pool": "default", "instance_id": INSTANCE, "zone": "eu-west-1a",
               "instance_type": "m7g.large"})
    );
    let f = last_hop_finding(&events, &task.cgroup_rel());
    let cmd = f["fix"]["command"].as_str().unwrap();
    assert!(cmd.contains(&format!("--instance-id {INSTANCE} ")), "{cmd}");
    assert!(f["fix"].get("get_instance_id").is_none(), "the id is known: {f}");
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains("(Nomad workload identity)"), "{summary}");
    let seen = std::fs::read_to_string(&fake.log).unwrap();
    for want in [
        "nomad /v1/agent/self authorized=true",
        &format!("nomad /v1/node/{NODE_ID} authorized=true"),
    ] {
        assert!(seen.lines().any(|l| l == want), "{want:?} not in {seen}");
    }
}
