//! One hostile workload cannot blind the observer, sink it or flood the
//! node's logs: a container floods the metadata address for 20 s, while a
//! client one hop away hits the hop limit; either with its own address (UDP
//! on every port and a TCP connect storm to port 80 from 200 sockets), or
//! with TTL-1 SYNs each from a new forged source, which the host drops and
//! which only the interface they came in by can hold to a budget. Root
//! only: `cargo xtask test`; `cargo xtask bench` prints the same scenarios'
//! figures.
use imds_lab::{Flood, FloodRun, Lab, LabOpts, flood_scenario};

/// What the observer may write for the whole run, and hold at its peak.
const MAX_LINES: usize = 10_000;
const MAX_RSS_KIB: u64 = 64 * 1024;

fn held(run: &FloodRun) {
    eprintln!(
        "{} packets sent, {} lines, peak RSS {} KiB, {} of the flood's records held back, {} lost",
        run.sent, run.lines, run.peak_rss_kib, run.suppressed, run.lost
    );
    assert!(run.lines < MAX_LINES, "{} lines on stdout", run.lines);
    assert!(run.peak_rss_kib < MAX_RSS_KIB, "peak RSS {} KiB", run.peak_rss_kib);
    assert_eq!(run.lost, 0, "records lost to a full ring");
    let hop =
        run.client_finding.as_ref().expect("the client's hop_limit_exceeded next to the flood");
    assert_eq!(hop["evidence"]["reply_ttl_at_host"], 1, "{hop}");
    assert_eq!(hop["evidence"]["forwarding_hops"], 1, "{hop}");
    assert!(hop["evidence"]["lost_replies"].as_u64().unwrap() >= 1, "{hop}");
    assert!(run.suppressed > 1000, "the flood's suppressed records: {}", run.suppressed);
    assert_eq!(run.client_suppressed, 0, "the client's own records were held back");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_flooding_container_is_held_to_its_budget_and_the_others_are_still_seen() {
    held(&flood_scenario(20, Flood::Connects));
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn forged_sources_do_not_reset_the_budget() {
    let run = flood_scenario(20, Flood::ForgedSyns);
    // Each packet a new source: without a key the sender cannot forge,
    // each would get a fresh budget.
    assert!(run.sent > 50_000, "the flood sent {} packets", run.sent);
    held(&run);
}

/// A workload allowed to make cgroups (a CI runner, a nested runtime)
/// makes thousands at once: their cgroup_mkdir records take from one
/// node-wide budget (1,000 at once, 200 a second), and what it held back
/// is said.
#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_cgroup_storm_is_held_to_its_node_wide_budget() {
    let lab = Lab::new(LabOpts::default());
    let obs = lab.observer(&[]);
    let parent = lab.cgroup_at("storm");
    for i in 0..3000 {
        std::fs::create_dir(parent.join(format!("c{i}"))).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let held: u64 = obs
        .events()
        .iter()
        .filter(|e| e["type"] == "suppressed" && e["via"] == "cgroup_mkdir")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    assert!((1000..3000).contains(&held), "{held} cgroup_mkdir records held back");
    obs.stop();
}
