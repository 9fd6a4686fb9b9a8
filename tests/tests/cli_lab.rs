//! The observer as an operator meets it: clear one-line errors for what is
//! wrong on the host, and nothing left attached after it exits.
use std::process::Command;

use imds_lab::{Attach, Lab, LabOpts, bin, sh};

/// Names of the loaded BPF programs, from the kernel's own view (bpftool).
fn loaded_programs() -> String {
    sh(&["bpftool", "prog", "show"])
}

const OUR_PROGRAMS: [&str; 7] =
    ["cgroup_egress", "cgroup_ingress", "connect4", "connect6", "tc_ingress", "tc_egress", "kfree_skb"];

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn sigint_detaches_every_program() {
    let mut lab = Lab::new(LabOpts::default());
    let _c = lab.add_container("app", Attach::Routed);
    let obs = lab.observer(&[]);
    let running = loaded_programs();
    for p in OUR_PROGRAMS {
        assert!(running.contains(p), "{p} not loaded while running:\n{running}");
    }
    // Each program is attached by a link (TCX for tc on kernels >= 6.6).
    let links = sh(&["bpftool", "link", "show"]);
    for line in running.lines().filter(|l| OUR_PROGRAMS.iter().any(|p| l.contains(&format!("name {p} ")))) {
        let id = line.split(':').next().unwrap();
        assert!(links.contains(&format!("prog {id} ")), "program {line} has no link:\n{links}");
    }
    obs.stop();
    let after = loaded_programs();
    for p in OUR_PROGRAMS {
        assert!(!after.contains(p), "{p} still loaded after exit:\n{after}");
    }
    // TCX needs no qdisc, and the observer made none.
    let qdiscs = sh(&["tc", "-n", &lab.host, "qdisc", "show", "dev", "uplink0"]);
    assert!(!qdiscs.contains("clsact"), "a clsact qdisc was left behind: {qdiscs}");
}

fn run_observer(args: &[&str], as_nobody: bool) -> (i32, String) {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]);
        c.arg(bin("imds-observer"));
        c
    } else {
        Command::new(bin("imds-observer"))
    };
    let out = cmd.args(args).output().expect("run imds-observer");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn clear_errors_for_what_is_wrong() {
    let (code, err) = run_observer(&["run", "--duration", "1", "--iface", "nosuch0"], false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"nosuch0\" does not exist"), "{err}");

    let (code, err) = run_observer(&["run", "--duration", "1", "--cgroup-root", "/nonexistent/cgroup"], false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cgroup-root /nonexistent/cgroup: no such directory"), "{err}");

    let (code, err) = run_observer(&["run", "--duration", "1"], true);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing capabilities: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"), "{err}");

    let (code, err) = run_observer(&["run", "--no-such-flag"], false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unexpected argument '--no-such-flag'"), "{err}");

    // Each error is one line, prefixed with the program's name.
    let (_, err) = run_observer(&["run", "--iface", "nosuch0"], false);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("imds-observer: "), "{err}");
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn demo_shows_the_failure() {
    // `cargo xtask demo` runs this binary; it exits non-zero unless the
    // observer saw the token replies die in ip_forward and said so.
    let out = Command::new(bin("lab-demo")).output().expect("run lab-demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("reason=IP_INHDR"), "{text}");
    assert!(text.contains("hop_limit_exceeded") && text.contains("imdsv1_fallback"), "{text}");
    assert!(text.contains("--http-put-response-hop-limit 2"), "{text}");
    assert!(!text.contains("FAKETOKEN") && !text.contains("FAKESECRET"));
}

/// How many of each of our programs the kernel has loaded.
fn program_counts() -> Vec<(&'static str, usize)> {
    let progs = loaded_programs();
    OUR_PROGRAMS.iter().map(|p| (*p, progs.matches(&format!("name {p} ")).count())).collect()
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn sigkill_then_restart_leaves_no_duplicates_and_sigterm_detaches() {
    let mut lab = Lab::new(LabOpts::default());
    let c = lab.add_container("app", Attach::Routed);
    let first = lab.observer(&[]);
    assert!(program_counts().iter().all(|(_, n)| *n == 1), "{:?}", program_counts());
    first.signal("KILL");

    // The kernel released the killed instance's links with its fds; the
    // next start attaches once, and events still flow.
    let second = lab.observer(&[]);
    assert!(program_counts().iter().all(|(_, n)| *n == 1), "duplicates after restart: {:?}", program_counts());
    assert_eq!(c.sdk("v1-only", "http://169.254.169.254").code, 0);
    second.wait_for("a request after restart", std::time::Duration::from_secs(5), |e| e["type"] == "request");
    let t0 = std::time::Instant::now();
    second.signal("TERM");
    assert!(t0.elapsed() < std::time::Duration::from_secs(2), "SIGTERM took {:?}", t0.elapsed());
    assert!(program_counts().iter().all(|(_, n)| *n == 0), "left attached after SIGTERM: {:?}", program_counts());
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn second_instance_is_refused_unless_alongside() {
    let lab = Lab::new(LabOpts::default());
    let first = lab.observer(&[]);
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host))
        .arg(bin("imds-observer"))
        .args(["run", "--duration", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another imds-observer is already running"), "{err}");
    assert!(err.contains("--alongside"), "{err}");
    let along = lab.observer(&["--alongside"]);
    assert!(program_counts().iter().all(|(_, n)| *n == 2), "{:?}", program_counts());
    along.stop();
    first.stop();
}
