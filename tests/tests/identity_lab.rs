//! Lab tests of identity: findings name the workload behind the traffic,
//! with real podman containers. Root only: `cargo xtask test`.
mod common;

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
        .rfind(|e| {
            e["type"] == "finding"
                && e["kind"] == "hop_limit_exceeded"
                && e["container"]["id"] == id
        })
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
    common::assert_fields_documented(&events);

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
    let req = events
        .iter()
        .find(|e| e["type"] == "request" && e["container"]["id"] == id.as_str())
        .expect("request");
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
    common::assert_fields_documented(&events);
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
            assert_eq!(
                e["cgroup"],
                cgroup.as_str(),
                "pid {pid} attributed to the wrong cgroup: {e}"
            );
        }
    }
    // Flat: 180 more containers (and gone) cost less than 8 MiB, beside
    // stdout's queue, which a packets-level run fills in bursts and which
    // has a budget of its own (sink::output::QUEUE_BYTES).
    let queue_kib = (imds_observer::sink::output::QUEUE_BYTES / 1024) as u64;
    assert!(rss_end < rss_warm + 8 * 1024 + queue_kib, "RSS grew from {rss_warm} to {rss_end} KiB");
}

/// A cgroup v1 host (Docker on Amazon Linux 2): the container's processes
/// are in no cgroup2 cgroup of their own, so the socket's cgroup names
/// nothing; the container's host-side veth does. One container exists
/// before the observer starts, one only after (its veth appears later).
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn cgroup_v1_container_is_named_through_its_veth() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    // Unique to this run (the lab's v1 hierarchy is shared): hex digits.
    let pid = std::process::id();
    let ids =
        [format!("{:0>64}", format!("c1a55e7{pid}")), format!("{:0>64}", format!("1a7e4{pid}"))];
    let before = lab.add_v1_container("v1-before", Attach::Bridge, &ids[0]);
    let obs = lab.observer(&[]);
    let after = lab.add_v1_container("v1-after", Attach::Bridge, &ids[1]);
    let runs = [&before, &after].map(|c| c.sdk("js-v2", "http://169.254.169.254"));
    let events = obs.finish(SETTLE);
    common::assert_fields_documented(&events);

    for ((c, id), run) in [&before, &after].into_iter().zip(&ids).zip(&runs) {
        let f = hop_finding(&events, id);
        let who = &f["container"];
        assert_eq!(who["runtime"], "docker", "{who}");
        assert_eq!(who["cgroup"], format!("/docker/{id}"), "the v1 path, from /proc/<pid>/cgroup");
        assert!(
            who["veth"].as_str().is_some_and(|v| v.starts_with("veth")),
            "named through its veth: {who}"
        );
        assert!(who["netns"].as_u64().is_some(), "{who}");
        assert!(who.get("cgroup_id").is_none(), "no cgroup2 cgroup of its own: {who}");
        assert!(who.get("host").is_none(), "{who}");
        assert_eq!(f["evidence"]["forwarding_hops"], 1);

        // Every packet the client sent is attributed to it, the very first
        // one too (it waited for the veth).
        let requests: Vec<&Value> =
            events.iter().filter(|e| e["type"] == "request" && e["pid"] == run.pid).collect();
        assert!(requests.len() >= 3, "{} requests from {}", requests.len(), c.name);
        for r in &requests {
            assert_eq!(r["container"]["id"], id.as_str(), "{r}");
        }
    }
    let a = hop_finding(&events, &ids[0])["container"]["netns"].clone();
    let b = hop_finding(&events, &ids[1])["container"]["netns"].clone();
    assert_ne!(a, b, "two containers, two findings");
}

/// The same as deployed: the connect stands for the socket's SYN, and that
/// SYN waits for the veth like the packets do, so no finding and no count
/// goes to the unnamed root cgroup; each container's finding and its lost
/// attempts are its own.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn cgroup_v1_container_is_named_through_its_veth_as_deployed() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let pid = std::process::id();
    let id = format!("{:0>64}", format!("de910ed{pid}"));
    let c = lab.add_v1_container("v1-deployed", Attach::Bridge, &id);
    let obs = lab.observer_as_deployed(&[]);
    let run = c.sdk("js-v2", "http://169.254.169.254");
    let events = obs.finish(SETTLE);
    common::assert_fields_documented(&events);
    let f = hop_finding(&events, &id);
    assert!(f["container"]["veth"].as_str().is_some_and(|v| v.starts_with("veth")), "{f}");
    assert_eq!(f["evidence"]["forwarding_hops"], 1, "{f}");
    let puts = run.lines.iter().filter(|l| l["method"] == "PUT").count() as u64;
    assert_eq!(f["evidence"]["lost_replies"], puts, "{f}");
    // Every exchange line is the container's, none an unnamed cgroup's.
    let lines: Vec<&Value> = events.iter().filter(|e| e["type"] == "exchange").collect();
    assert!(!lines.is_empty());
    for x in &lines {
        assert_eq!(x["container"]["id"], id.as_str(), "{x}");
    }
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "finding")
            .all(|e| e["container"]["id"] == id.as_str()),
        "{events:#?}"
    );
}
