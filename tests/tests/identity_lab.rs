//! Lab tests of identity: findings name the workload behind the traffic,
//! with real podman containers. Root only: `cargo xtask test`.
use std::time::Duration;

use imds_lab::{Attach, Lab, LabOpts, Podman, Value, findings_for};

/// An IMDSv2 token PUT with busybox nc (the reply never comes at hop limit
/// 1), then a tokenless GET.
const TOKEN_THEN_V1: &str = "printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\
X-aws-ec2-metadata-token-ttl-seconds: 21600\\r\\nConnection: close\\r\\n\\r\\n' | timeout 2 nc 169.254.169.254 80; \
timeout 5 wget -q -O /dev/null http://169.254.169.254/latest/meta-data/iam/security-credentials/; true";

/// Past the engine's timeouts.
const SETTLE: Duration = Duration::from_millis(1500);

fn hop_finding<'a>(events: &'a [Value], id: &str) -> &'a Value {
    events
        .iter()
        .filter(|e| e["type"] == "finding" && e["kind"] == "hop_limit_exceeded" && e["container"]["id"] == id)
        .last()
        .unwrap_or_else(|| {
            let found: Vec<_> = events.iter().filter(|e| e["type"] == "finding").collect();
            panic!("no hop_limit_exceeded for container {id}: {found:#?}")
        })
}

#[test]
#[ignore = "lab: needs root and podman; run `cargo xtask test`"]
fn podman_container_is_named_through_the_api() {
    let lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let mut podman = Podman::new(&lab, true);
    let obs = lab.observer(&["--runtime-socket", podman.socket.to_str().unwrap()]);
    let id = podman.run("imds-lab-payments", TOKEN_THEN_V1);
    let events = obs.finish(SETTLE);

    let f = hop_finding(&events, &id);
    let c = &f["container"];
    assert_eq!(c["runtime"], "podman");
    assert_eq!(c["name"], "imds-lab-payments");
    assert!(c["image"].as_str().unwrap().contains("imds-lab-busybox"), "{c}");
    assert_eq!(c["cgroup"], format!("/libpod_parent/libpod-{id}"));
    assert!(c.get("host").is_none());
    // Behind podman's NAT bridge: one forwarding hop.
    assert_eq!(f["evidence"]["forwarding_hops"], 1);
    // The packets carry the same identity.
    let req = events.iter().find(|e| e["type"] == "request" && e["container"]["id"] == id.as_str()).expect("request");
    assert_eq!(req["container"]["runtime"], "podman");
}

#[test]
#[ignore = "lab: needs root and podman; run `cargo xtask test`"]
fn podman_container_without_the_api_is_named_by_its_cgroup() {
    let lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let mut podman = Podman::new(&lab, false);
    let missing = std::env::temp_dir().join("imds-lab-no-such.sock");
    let obs = lab.observer(&["--runtime-socket", missing.to_str().unwrap()]);
    let id = podman.run("imds-lab-noapi", TOKEN_THEN_V1);
    let events = obs.finish(SETTLE);
    let c = &hop_finding(&events, &id)["container"];
    assert_eq!(c["runtime"], "podman");
    assert_eq!(c["id"], id.as_str());
    assert!(c.get("name").is_none() && c.get("image").is_none(), "{c}");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn host_process_is_identified_as_host() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let h = lab.host_process("node-agent");
    let c = lab.add_container("app", Attach::Routed);
    let obs = lab.observer(&[]);
    assert_eq!(h.sdk("token-only", "http://169.254.169.254").code, 0);
    assert_eq!(c.sdk("v1-only", "http://169.254.169.254").code, 0);
    let events = obs.finish(SETTLE);
    let hf = findings_for(&events, &h.cgroup_rel());
    assert!(!hf.is_empty() && hf.iter().all(|f| f["container"]["host"] == true), "{hf:#?}");
    let cf = findings_for(&events, &c.cgroup_rel());
    assert!(!cf.is_empty() && cf.iter().all(|f| f["container"].get("host").is_none()), "{cf:#?}");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn churn_of_200_containers_is_attributed_and_memory_stays_flat() {
    let mut lab = Lab::new(LabOpts { hop_limit: 2, ..Default::default() });
    let obs = lab.observer(&[]);
    let mut ran = Vec::new(); // (cgroup path, client pid)
    let mut rss_warm = 0;
    for i in 0..200 {
        let c = lab.add_container(&format!("c{i}"), Attach::Routed);
        let run = c.sdk("v1-only", "http://169.254.169.254");
        assert_eq!(run.code, 0, "container {i}: {:?}", run.lines);
        ran.push((c.cgroup_rel(), run.pid));
        lab.remove(c);
        if i == 19 {
            std::thread::sleep(Duration::from_millis(300));
            rss_warm = obs.rss_kib();
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_end = obs.rss_kib();
    println!("observer RSS after 20 containers: {rss_warm} KiB; after 200: {rss_end} KiB");
    let events = obs.stop();

    let requests: Vec<&Value> = events.iter().filter(|e| e["type"] == "request").collect();
    for (cgroup, pid) in &ran {
        let mine: Vec<_> = requests.iter().filter(|e| e["pid"] == *pid).collect();
        assert!(!mine.is_empty(), "no request from pid {pid} ({cgroup})");
        for e in mine {
            assert_eq!(e["cgroup"], cgroup.as_str(), "pid {pid} attributed to the wrong cgroup: {e}");
        }
    }
    // Flat: 180 more containers (and gone) cost less than 8 MiB.
    assert!(rss_end < rss_warm + 8 * 1024, "RSS grew from {rss_warm} to {rss_end} KiB");
}
