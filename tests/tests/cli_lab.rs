//! The observer as an operator meets it: clear one-line errors for what is
//! wrong on the host, and nothing left attached after it exits.
use std::process::Command;

use imds_lab::{Attach, Lab, LabOpts, bin, kernel_has_drop_reasons, kernel_has_tcx, sh};

/// Names of the loaded BPF programs, from the kernel's own view (bpftool).
fn loaded_programs() -> String {
    sh(&["bpftool", "prog", "show"])
}

/// Our programs as this kernel runs them: skb:kfree_skb without a reason
/// argument (before 5.17) is the `kfree_skb_plain` variant.
fn our_programs() -> [&'static str; 7] {
    let kfree_skb = if kernel_has_drop_reasons() { "kfree_skb" } else { "kfree_skb_plain" };
    ["cgroup_egress", "cgroup_ingress", "connect4", "connect6", "tc_ingress", "tc_egress", kfree_skb]
}

/// The tc filters on the lab host's uplink (kernels without TCX).
fn uplink_filters(lab: &Lab) -> String {
    ["ingress", "egress"].map(|dir| sh(&["tc", "-n", &lab.host, "filter", "show", "dev", "uplink0", dir])).join("")
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn sigint_detaches_every_program() {
    let mut lab = Lab::new(LabOpts::default());
    let _c = lab.add_container("app", Attach::Routed);
    let obs = lab.observer(&[]);
    let running = loaded_programs();
    for p in our_programs() {
        assert!(running.contains(&format!("name {p} ")), "{p} not loaded while running:\n{running}");
    }
    // Each program is attached by a link; tc ones only with TCX (6.6+),
    // before that by netlink filters on the uplink.
    let links = sh(&["bpftool", "link", "show"]);
    for line in running.lines().filter(|l| our_programs().iter().any(|p| l.contains(&format!("name {p} ")))) {
        if !kernel_has_tcx() && line.contains(" name tc_") {
            continue;
        }
        let id = line.split(':').next().unwrap();
        assert!(links.contains(&format!("prog {id} ")), "program {line} has no link:\n{links}");
    }
    if !kernel_has_tcx() {
        let filters = uplink_filters(&lab);
        assert!(filters.contains("tc_ingress") && filters.contains("tc_egress"), "no netlink filters: {filters}");
    }
    obs.stop();
    let after = loaded_programs();
    for p in our_programs() {
        assert!(!after.contains(&format!("name {p} ")), "{p} still loaded after exit:\n{after}");
    }
    let qdiscs = sh(&["tc", "-n", &lab.host, "qdisc", "show", "dev", "uplink0"]);
    if kernel_has_tcx() {
        // TCX needs no qdisc, and the observer made none.
        assert!(!qdiscs.contains("clsact"), "a clsact qdisc was left behind: {qdiscs}");
    } else {
        // The qdisc stays (it may be shared); our filters do not.
        let filters = uplink_filters(&lab);
        assert!(!filters.contains("tc_"), "filters left behind: {filters}");
    }
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

    // A kernel without BTF (here: pointed elsewhere) is named, with what it needs.
    let (code, err) = run_observer(&["run", "--duration", "1", "--kernel-btf", "/nonexistent/vmlinux"], false);
    assert_eq!(code, 2, "{err}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(err.contains(&format!("kernel {} has no BTF at /nonexistent/vmlinux", release.trim())), "{err}");
    assert!(err.contains("CONFIG_DEBUG_INFO_BTF=y"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

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
    our_programs().iter().map(|p| (*p, progs.matches(&format!("name {p} ")).count())).collect()
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
    let mut lab = Lab::new(LabOpts::default());
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
    // The second instance took only its own programs with it: the first
    // still sees the uplink (before TCX, a start that removed "leftover"
    // filters by name blinded it).
    let c = lab.add_container("app", Attach::Routed);
    assert_eq!(c.sdk("v1-only", "http://169.254.169.254").code, 0);
    first.wait_for("the uplink still watched", std::time::Duration::from_secs(5), |e| e["type"] == "host_ingress");
    assert!(program_counts().iter().all(|(_, n)| *n == 1), "{:?}", program_counts());
    first.stop();
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn startup_says_what_this_kernel_lacks() {
    let lab = Lab::new(LabOpts::default());
    let obs = lab.observer(&[]);
    let err = obs.stderr.lock().unwrap().join("\n");
    assert_eq!(err.contains("gives no drop reason"), !kernel_has_drop_reasons(), "{err}");
    assert_eq!(err.contains("no TCX"), !kernel_has_tcx(), "{err}");
    obs.stop();
}

/// Kernels without skb:kfree_skb's reason (5.10) only: given the BTF of a
/// kernel that has it (`IMDS_LAB_NEWER_BTF`, the matrix host's), the
/// observer picks the variant that reads the reason, and the verifier
/// refuses it. The error shows the verifier's own last lines. `cargo xtask
/// test` runs it in the 5.10 guest and skips it elsewhere.
#[test]
#[ignore = "lab: needs root and a kernel without drop reasons; run `cargo xtask test`"]
fn old_kernel_verifier_rejection_shows_its_last_lines() {
    assert!(!kernel_has_drop_reasons(), "this test needs a kernel without kfree_skb reasons (5.10)");
    let btf = std::env::var("IMDS_LAB_NEWER_BTF").expect("IMDS_LAB_NEWER_BTF: a newer kernel's BTF");
    let (code, err) = run_observer(&["run", "--duration", "1", "--kernel-btf", &btf], false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("loading kfree_skb: the kernel's verifier rejected it"), "{err}");
    let (_, tail) = err.split_once("its last lines:").expect("the verifier's lines");
    assert!(tail.contains("kfree_skb"), "the verifier's own words: {err}");
    assert!(tail.lines().filter(|l| l.starts_with("  ")).count() >= 2, "{err}");
}
