//! One hostile workload cannot blind the observer, sink it or flood the
//! node's logs: a container floods the metadata address with UDP on every
//! port and a TCP connect storm to port 80 from 200 sockets for 20 s, while
//! a client one hop away hits the hop limit. Root only: `cargo xtask test`.
use std::time::Duration;

use imds_lab::{Attach, IMDS_V4, Lab, LabOpts, Value, findings_for};

/// What the observer may write for the whole run, and hold at its peak.
const MAX_LINES: usize = 10_000;
const MAX_RSS_KIB: u64 = 64 * 1024;

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn a_flooding_container_is_held_to_its_budget_and_the_others_are_still_seen() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let flood = lab.add_container("flood", Attach::Routed);
    let sdk = lab.add_container("sdk", Attach::Routed);
    // Memory is measured on the binary the image ships.
    let obs = lab.shipped_observer(&[]);
    let script = format!(
        "import random, socket, time\n\
         end = time.time() + 20\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         while time.time() < end:\n\
         \x20   socks = []\n\
         \x20   for _ in range(200):\n\
         \x20       s = socket.socket()\n\
         \x20       s.setblocking(False)\n\
         \x20       try: s.connect(('{IMDS_V4}', 80))\n\
         \x20       except BlockingIOError: pass\n\
         \x20       socks.append(s)\n\
         \x20   for port in random.sample(range(1, 65536), 400):\n\
         \x20       try: u.sendto(b'x' * 32, ('{IMDS_V4}', port))\n\
         \x20       except OSError: pass\n\
         \x20   time.sleep(0.05)\n\
         \x20   for s in socks: s.close()\n"
    );
    let storm = {
        let flood = &flood;
        std::thread::scope(|s| {
            let storm =
                s.spawn(move || flood.run(std::path::Path::new("python3"), &["-c", &script]));
            // The client starts once the flood is on.
            std::thread::sleep(Duration::from_secs(3));
            let run = sdk.sdk("js-v2", &format!("http://{IMDS_V4}"));
            assert!(run.lines.iter().any(|l| l["method"] == "PUT"), "{:?}", run.lines);
            storm.join().unwrap()
        })
    };
    assert!(storm.status.success(), "{}", String::from_utf8_lossy(&storm.stderr));
    std::thread::sleep(Duration::from_millis(1500));
    let peak = obs.peak_rss_kib();
    let events = obs.stop();

    assert!(events.len() < MAX_LINES, "{} lines on stdout", events.len());
    assert!(peak < MAX_RSS_KIB, "peak RSS {peak} KiB");
    let hop = findings_for(&events, &sdk.cgroup_rel())
        .into_iter()
        .rfind(|f| f["kind"] == "hop_limit_exceeded")
        .unwrap_or_else(|| panic!("no hop_limit_exceeded for the client next to the flood"));
    assert_eq!(hop["evidence"]["reply_ttl_at_host"], 1, "{hop}");
    assert!(hop["evidence"]["lost_replies"].as_u64().unwrap() >= 1, "{hop}");
    let suppressed: u64 = events
        .iter()
        .filter(|e| e["type"] == "suppressed" && e["cgroup"] == flood.cgroup_rel().as_str())
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert!(suppressed > 1000, "the flood's suppressed records: {suppressed}");
    assert!(
        !events
            .iter()
            .any(|e: &Value| e["type"] == "suppressed" && e["cgroup"] == sdk.cgroup_rel().as_str()),
        "the client's own records were held back"
    );
    println!(
        "flood: {} lines, peak RSS {} KiB, {suppressed} records held back",
        events.len(),
        peak
    );
}
