//! One hostile workload cannot blind the observer, sink it or flood the
//! node's logs: a container floods the metadata address for 20 s, while a
//! client one hop away hits the hop limit; either with its own address (UDP
//! on every port and a TCP connect storm to port 80 from 200 sockets), or
//! with TTL-1 SYNs each from a new forged source, which the host drops and
//! which only the interface they came in by can hold to a budget. Root
//! only: `cargo xtask test`; `cargo xtask bench` prints the same scenarios'
//! figures.
use imds_lab::{Flood, FloodRun, flood_scenario};

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
