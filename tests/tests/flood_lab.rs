//! One hostile workload cannot blind the observer, sink it or flood the
//! node's logs: a container floods the metadata address with UDP on every
//! port and a TCP connect storm to port 80 from 200 sockets for 20 s, while
//! a client one hop away hits the hop limit. Root only: `cargo xtask test`;
//! `cargo xtask bench` prints the same scenario's figures.
use imds_lab::flood_scenario;

/// What the observer may write for the whole run, and hold at its peak.
const MAX_LINES: usize = 10_000;
const MAX_RSS_KIB: u64 = 64 * 1024;

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_flooding_container_is_held_to_its_budget_and_the_others_are_still_seen() {
    let run = flood_scenario(20);
    assert!(run.lines < MAX_LINES, "{} lines on stdout", run.lines);
    assert!(run.peak_rss_kib < MAX_RSS_KIB, "peak RSS {} KiB", run.peak_rss_kib);
    let hop = run.client_finding.expect("the client's hop_limit_exceeded next to the flood");
    assert_eq!(hop["evidence"]["reply_ttl_at_host"], 1, "{hop}");
    assert!(hop["evidence"]["lost_replies"].as_u64().unwrap() >= 1, "{hop}");
    assert!(run.suppressed > 1000, "the flood's suppressed records: {}", run.suppressed);
    assert_eq!(run.client_suppressed, 0, "the client's own records were held back");
}
