//! The observer's outputs under pressure, in the lab (issue 25, items 3
//! and 5): a log pipe that stops reading stdout must not stop capture,
//! diagnosis, `/metrics` or `/healthz`, and what could not be written is
//! said afterwards; peers holding every HTTP slot they may must not starve
//! the kubelet's probe. Root only: `cargo xtask test`.
use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use imds_lab::{Attach, Container, Lab, LabOpts, Value, findings_for, sh};

const IMDS: &str = "http://169.254.169.254";
/// The kubelet's probe timeout in the DaemonSet (timeoutSeconds: 2).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Processes started for a test, killed when it ends (also on failure).
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` from the host netns as the kubelet does: the status (0 when
/// no answer came) and how long it took, the probe timeout at most.
fn probe(lab: &Lab, addr: &str, port: u16, path: &str) -> (u16, Duration, String) {
    let t0 = Instant::now();
    let answer = lab.http_get_at(addr, port, path, PROBE_TIMEOUT.as_secs() as u32);
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, t0.elapsed(), answer)
}

fn metric(scrape: &str, prefix: &str) -> Option<f64> {
    scrape.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Healthy GETs from `c` as fast as bash goes, until killed: with
/// `--events packets`, a dozen lines each.
fn load(c: &Container) -> Child {
    let script = "while :; do exec 3<>/dev/tcp/169.254.169.254/80 || continue; \
                  printf 'GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nConnection: close\\r\\n\\r\\n' >&3; \
                  cat <&3 >/dev/null; exec 3>&-; done";
    c.command(Path::new("bash"), &["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start load")
}

/// (c) A reader that stops reading stdout for 25 s while a JS-v2-like
/// client in a routed container hits hop limit 1 and other containers
/// keep the output busy: `/healthz` answers 200 within the probe timeout
/// throughout, the victim's finding reaches `/metrics` during the stall
/// and stdout after it, and an `output_dropped` line says what was
/// dropped.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_stalled_stdout_blocks_neither_probes_nor_findings_and_drops_are_said() {
    const PORT: u16 = 19131;
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let victim = lab.add_container("victim", Attach::Routed);
    let busy: Vec<Container> =
        (0..4).map(|i| lab.add_container(&format!("busy{i}"), Attach::Routed)).collect();
    let obs = lab.observer(&["--metrics-addr", &format!("127.0.0.1:{PORT}")]);
    let _loads = Kids(busy.iter().map(load).collect());
    thread::sleep(Duration::from_secs(1));
    assert!(!obs.events().is_empty(), "the load makes lines");

    obs.pause_stdout(true);
    let stall = Instant::now();
    let (probes, during) = thread::scope(|scope| {
        let client = scope.spawn(|| victim.sdk("js-v2", IMDS));
        let mut probes = 0;
        let mut finding_in_metrics = None;
        let mut dropped_in_metrics = 0.0;
        while stall.elapsed() < Duration::from_secs(25) {
            let (status, took, answer) = probe(&lab, "127.0.0.1", PORT, "/healthz");
            assert!(
                status == 200 && took < PROBE_TIMEOUT,
                "/healthz during the stall, {:?} in: {status} after {took:?}: {answer}",
                stall.elapsed()
            );
            probes += 1;
            let scrape = lab.http_get_at("127.0.0.1", PORT, "/metrics", 2);
            if finding_in_metrics.is_none()
                && scrape.lines().any(|l| {
                    l.starts_with("imds_observer_findings{")
                        && l.contains("workload=\"victim\"")
                        && l.contains("kind=\"hop_limit_exceeded\"")
                        && l.ends_with(" 1")
                })
            {
                finding_in_metrics = Some(stall.elapsed());
            }
            if let Some(n) =
                metric(&scrape, "imds_observer_output_dropped_lines_total{kind=\"packet\"}")
            {
                dropped_in_metrics = n;
            }
            thread::sleep(Duration::from_millis(800));
        }
        let during =
            finding_in_metrics.expect("the victim's finding reached /metrics during the stall");
        assert!(probes >= 15, "{probes} probes");
        assert!(dropped_in_metrics > 0.0, "the stall filled the queue: packet lines were dropped");
        let run = client.join().unwrap();
        assert!(run.lines.iter().any(|l| l["method"] == "PUT"), "client ran: {:?}", run.lines);
        (probes, during)
    });

    obs.pause_stdout(false);
    let notice = obs.wait_for("output_dropped line", Duration::from_secs(15), |e| {
        e["type"] == "output_dropped"
    });
    let count = notice["count"].as_u64().expect("count");
    let packets = notice["dropped"]["packet"].as_u64().unwrap_or(0);
    assert!(count > 0 && packets > 0, "{notice}");
    assert_eq!(
        notice["dropped"]["finding"].as_u64().unwrap_or(0),
        0,
        "no finding dropped: {notice}"
    );
    let sum: u64 = notice["dropped"].as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert_eq!(sum, count, "{notice}");
    obs.wait_for("the victim's finding on stdout", Duration::from_secs(15), |e| {
        e["type"] == "finding"
            && e["kind"] == "hop_limit_exceeded"
            && e["container"]["cgroup"] == victim.cgroup_rel().as_str()
    });
    drop(_loads);
    let events = obs.stop();
    assert!(!findings_for(&events, &victim.cgroup_rel()).is_empty());
    eprintln!(
        "{probes} probes answered; the finding in /metrics {during:?} into the stall; \
         {count} lines dropped ({packets} packets)"
    );
}

/// Hold `n` connections to `addr`:`port` from `c` (reopened as the server
/// closes them), until killed.
fn hold(c: &Container, addr: Ipv4Addr, port: u16, n: usize) -> Child {
    let script = format!(
        r#"
import select, socket, time
held = []
while True:
    while len(held) < {n}:
        try:
            held.append(socket.create_connection(("{addr}", {port}), timeout=1))
        except OSError:
            time.sleep(0.05)
    readable, _, _ = select.select(held, [], [], 0.2)
    for s in readable:
        held.remove(s)
        s.close()
"#
    );
    c.command(Path::new("python3"), &["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3")
}

/// Connections held to `port` in the host netns, by peers other than the
/// host itself.
fn held_by_peers(lab: &Lab, port: u16) -> usize {
    let out = sh(&[
        "nsenter",
        &format!("--net=/run/netns/{}", lab.host),
        "ss",
        "-Htn",
        "state",
        "established",
        &format!("( sport = :{port} )"),
    ]);
    out.lines().filter(|l| !l.contains("127.0.0.1") && !l.contains("198.18.0.2")).count()
}

/// (d) 8 peers holding 8 connections each (every slot a peer may take)
/// to the observer's HTTP port: the kubelet's probe, from the node's own
/// address, is still answered within its timeout.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn peers_holding_every_slot_do_not_starve_the_probe() {
    const PORT: u16 = 19132;
    let mut lab = Lab::new(LabOpts::default());
    let peers: Vec<Container> =
        (0..8).map(|i| lab.add_container(&format!("peer{i}"), Attach::Routed)).collect();
    let obs = lab.observer_as_deployed(&["--metrics-addr", &format!("0.0.0.0:{PORT}")]);
    let _holders = Kids(
        peers
            .iter()
            .map(|p| {
                // The host's side of the peer's veth: x.y.z.1 for x.y.z.2.
                let [a, b, c, _] = p.v4.octets();
                hold(p, Ipv4Addr::new(a, b, c, 1), PORT, 8)
            })
            .collect(),
    );
    let t0 = Instant::now();
    while held_by_peers(&lab, PORT) < 64 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the peers hold {} connections, not 64",
            held_by_peers(&lab, PORT)
        );
        thread::sleep(Duration::from_millis(100));
    }
    // The kubelet probes the pod's address, the node's own with
    // hostNetwork (here the uplink's 198.18.0.2); a local probe too.
    for i in 0..10 {
        for addr in ["198.18.0.2", "127.0.0.1"] {
            let held = held_by_peers(&lab, PORT);
            let (status, took, answer) = probe(&lab, addr, PORT, "/healthz");
            assert!(
                status == 200 && took < PROBE_TIMEOUT,
                "probe {i} to {addr} with {held} connections held by peers: {status} after {took:?}: {answer}"
            );
        }
        thread::sleep(Duration::from_millis(300));
    }
    // And the peers held their slots meanwhile (they reconnect as the
    // server closes idle connections after 2 s).
    let t0 = Instant::now();
    while held_by_peers(&lab, PORT) < 64 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the peers no longer hold their 64");
        thread::sleep(Duration::from_millis(50));
    }
    drop(_holders);
    obs.stop();
}
