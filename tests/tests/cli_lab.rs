//! The observer as an operator meets it: clear one-line errors for what is
//! wrong on the host, and nothing left attached after it exits.
use std::process::Command;

use imds_lab::{Attach, Lab, LabOpts, bin, kernel_has_drop_reasons, kernel_has_tcx, sh};

/// A child process killed when the test ends, failing or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Names of the loaded BPF programs, from the kernel's own view (bpftool).
fn loaded_programs() -> String {
    sh(&["bpftool", "prog", "show"])
}

/// Our programs as this kernel runs them: skb:kfree_skb without a reason
/// argument (before 5.17) is the `kfree_skb_plain` variant.
fn our_programs() -> [&'static str; 7] {
    let kfree_skb = if kernel_has_drop_reasons() { "kfree_skb" } else { "kfree_skb_plain" };
    [
        "cgroup_egress",
        "cgroup_ingress",
        "connect4",
        "connect6",
        "imds_tc_ingress",
        "imds_tc_egress",
        kfree_skb,
    ]
}

/// The tc filters on the lab host's uplink (kernels without TCX).
fn uplink_filters(lab: &Lab) -> String {
    ["ingress", "egress"]
        .map(|dir| sh(&["tc", "-n", &lab.host, "filter", "show", "dev", "uplink0", dir]))
        .join("")
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn sigint_detaches_every_program() {
    let mut lab = Lab::new(LabOpts::default());
    let _c = lab.add_container("app", Attach::Routed);
    let obs = lab.observer(&[]);
    let running = loaded_programs();
    for p in our_programs() {
        assert!(
            running.contains(&format!("name {p} ")),
            "{p} not loaded while running:\n{running}"
        );
    }
    // Each program is attached by a link; tc ones only with TCX (6.6+),
    // before that by netlink filters on the uplink.
    let links = sh(&["bpftool", "link", "show"]);
    for line in
        running.lines().filter(|l| our_programs().iter().any(|p| l.contains(&format!("name {p} "))))
    {
        if !kernel_has_tcx() && line.contains(" name imds_tc_") {
            continue;
        }
        let id = line.split(':').next().unwrap();
        assert!(links.contains(&format!("prog {id} ")), "program {line} has no link:\n{links}");
    }
    if !kernel_has_tcx() {
        let filters = uplink_filters(&lab);
        assert!(
            filters.contains("imds_tc_ingress") && filters.contains("imds_tc_egress"),
            "no netlink filters: {filters}"
        );
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
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]);
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

    let (code, err) =
        run_observer(&["run", "--duration", "1", "--cgroup-root", "/nonexistent/cgroup"], false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cgroup-root /nonexistent/cgroup: no such directory"), "{err}");

    let (code, err) = run_observer(&["run", "--duration", "1"], true);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing capabilities: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"), "{err}");

    // A kernel without BTF (here: pointed elsewhere) is named, with what it needs.
    let (code, err) =
        run_observer(&["run", "--duration", "1", "--kernel-btf", "/nonexistent/vmlinux"], false);
    assert_eq!(code, 2, "{err}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        err.contains(&format!("kernel {} has no BTF at /nonexistent/vmlinux", release.trim())),
        "{err}"
    );
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
    assert!(
        program_counts().iter().all(|(_, n)| *n == 1),
        "duplicates after restart: {:?}",
        program_counts()
    );
    assert_eq!(c.sdk("v1-only", "http://169.254.169.254").code, 0);
    second.wait_for("a request after restart", std::time::Duration::from_secs(5), |e| {
        e["type"] == "request"
    });
    let t0 = std::time::Instant::now();
    second.signal("TERM");
    assert!(t0.elapsed() < std::time::Duration::from_secs(2), "SIGTERM took {:?}", t0.elapsed());
    assert!(
        program_counts().iter().all(|(_, n)| *n == 0),
        "left attached after SIGTERM: {:?}",
        program_counts()
    );
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn second_instance_is_refused_unless_alongside() {
    let mut lab = Lab::new(LabOpts::default());
    // A process on the host network binds the abstract socket name the
    // lock once was: it must not keep the observer from starting.
    let mut squatter = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host))
        .args([
            "python3",
            "-c",
            "import socket, time\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.bind('\\0imds-observer.lock')\n\
             print('bound', flush=True)\n\
             time.sleep(120)\n",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut bound = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(squatter.stdout.take().unwrap()),
        &mut bound,
    )
    .unwrap();
    let squatter = KillOnDrop(squatter);
    assert_eq!(bound.trim(), "bound");
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
    first.wait_for("the uplink still watched", std::time::Duration::from_secs(5), |e| {
        e["type"] == "host_ingress"
    });
    assert!(program_counts().iter().all(|(_, n)| *n == 1), "{:?}", program_counts());
    first.stop();
    drop(squatter);
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
    assert!(
        !kernel_has_drop_reasons(),
        "this test needs a kernel without kfree_skb reasons (5.10)"
    );
    let btf =
        std::env::var("IMDS_LAB_NEWER_BTF").expect("IMDS_LAB_NEWER_BTF: a newer kernel's BTF");
    let (code, err) = run_observer(&["run", "--duration", "1", "--kernel-btf", &btf], false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("loading kfree_skb: the kernel's verifier rejected it"), "{err}");
    let (_, tail) = err.split_once("its last lines:").expect("the verifier's lines");
    assert!(tail.contains("kfree_skb"), "the verifier's own words: {err}");
    assert!(tail.lines().filter(|l| l.starts_with("  ")).count() >= 2, "{err}");
}

// Plain tests (no root): `report --from` and the command line, run as a user
// would, with the built binary.

/// `imds-observer ARGS` with `env` (and none of the observer's variables
/// from this process), `stdin` fed in: (exit code, stdout, stderr).
fn observer_plain(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> (i32, String, String) {
    use std::{io::Write, process::Stdio};
    let mut cmd = Command::new(bin("imds-observer"));
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("IMDS_OBSERVER_") || k == "NODE_NAME") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied()).env("RUST_LOG", "warn");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run imds-observer");
    // A refusal may exit before reading stdin: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// A container's token PUT whose reply dies at the host (hop limit 1, one
/// hop behind the uplink), as `imds-observer run` writes it.
fn recording() -> String {
    let ev = |kind: &str, ms: u32, extra: serde_json::Value| {
        let mut e = serde_json::json!({
            "type": kind, "ts": format!("2026-11-26T20:54:00.{ms:03}000Z"), "node": "ip-10-0-1-17",
            "flow": 11, "cgroup_id": 1108, "cgroup": "/docker/3f2a9c1b7d4e", "proto": "tcp",
            "container": {"runtime": "docker", "id": "3f2a9c1b7d4e", "cgroup": "/docker/3f2a9c1b7d4e", "cgroup_id": 1108},
        });
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        format!("{e}\n")
    };
    let out = serde_json::json!({"src": "172.17.0.2:41644", "dst": "169.254.169.254:80", "pid": 42, "comm": "python3"});
    let back = serde_json::json!({"src": "169.254.169.254:80", "dst": "172.17.0.2:41644"});
    let with = |base: &serde_json::Value, extra: serde_json::Value| {
        let mut b = base.clone();
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let put = serde_json::json!({"method": "PUT", "path": "/latest/api/token", "token_header": false, "token_ttl_header": true});
    [
        ev("request", 0, with(&out, serde_json::json!({"ttl": 64, "tcp_flags": "SYN", "seq": 1000, "ack": 0, "len": 0}))),
        ev("host_egress", 0, with(&out, serde_json::json!({"iface": "ens5", "ttl": 63, "tcp_flags": "SYN", "seq": 1000, "ack": 0, "len": 0}))),
        ev("host_ingress", 1, with(&back, serde_json::json!({"iface": "ens5", "ttl": 64, "tcp_flags": "SYN|ACK", "seq": 5000, "ack": 1001, "len": 0}))),
        ev("reply", 1, with(&back, serde_json::json!({"ttl": 63, "tcp_flags": "SYN|ACK", "seq": 5000, "ack": 1001, "len": 0, "pid": 42}))),
        ev("request", 2, with(&with(&out, put.clone()), serde_json::json!({"ttl": 64, "tcp_flags": "PSH|ACK", "seq": 1001, "ack": 5001, "len": 120}))),
        ev("host_egress", 2, with(&with(&out, put), serde_json::json!({"iface": "ens5", "ttl": 63, "tcp_flags": "PSH|ACK", "seq": 1001, "ack": 5001, "len": 120}))),
        ev("host_ingress", 3, with(&back, serde_json::json!({"iface": "ens5", "ttl": 1, "tcp_flags": "PSH|ACK", "seq": 5001, "ack": 1121, "len": 56, "status": 200}))),
        ev("drop", 3, with(&back, serde_json::json!({"ttl": 1, "tcp_flags": "PSH|ACK", "seq": 5001, "ack": 1121, "len": 56, "reason": "IP_INHDR"}))),
    ]
    .concat()
}

fn temp_file(name: &str, content: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("imds-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn report_from_a_recording_finds_the_failure() {
    let (code, out, err) = observer_plain(&["report", "--from", "-"], &[], recording().as_bytes());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("hop_limit_exceeded"), "{out}");
}

#[test]
fn report_refuses_input_with_no_event() {
    // 100 KB of binary garbage (newlines included, as in any binary file).
    let garbage: Vec<u8> =
        (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (code, out, err) = observer_plain(&["report", "--from", "-"], &[], &garbage);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("stdin: no event to diagnose in") && err.contains("not JSON"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // `report --json` output (findings only) fed back.
    let (code, findings, err) =
        observer_plain(&["report", "--from", "-", "--json"], &[], recording().as_bytes());
    assert_eq!(code, 1, "{err}");
    assert!(findings.contains("\"type\":\"finding\""), "{findings}");
    let file = temp_file("findings.jsonl", findings.as_bytes());
    let (code, out, err) = observer_plain(&["report", "--from", file.to_str().unwrap()], &[], b"");
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(&format!("{}: no event to diagnose", file.display())), "{err}");
    assert!(err.contains("1 finding line (report reads the events `run` writes"), "{err}");
    let _ = std::fs::remove_file(file);

    // A single truncated line.
    let line = recording().lines().next().unwrap().to_string();
    let (code, out, err) =
        observer_plain(&["report", "--from", "-"], &[], &line.as_bytes()[..line.len() / 2]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no event to diagnose in 1 line: 1 not JSON"), "{err}");

    // Nothing at all (`kubectl logs` in the wrong namespace prints nothing).
    let (code, _, err) = observer_plain(&["report", "--from", "-"], &[], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("stdin: no event to diagnose: the input is empty"), "{err}");
}

#[test]
fn report_says_what_it_skipped() {
    let input = format!("a log line on stderr\n{}{{\"type\":\"finding\"}}\n", recording());
    let (code, _, err) = observer_plain(&["report", "--from", "-"], &[], input.as_bytes());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("stdin: 1 line skipped: 1 not JSON"), "{err}");
    // Beside events, finding lines are expected: `run` writes both.
    assert!(!err.contains("finding"), "{err}");
}

#[test]
fn report_names_the_path_it_cannot_read() {
    let dir = std::env::temp_dir();
    let (code, _, err) = observer_plain(&["report", "--from", dir.to_str().unwrap()], &[], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("reading {}: ", dir.display())), "{err}");
    let (code, _, err) = observer_plain(&["report", "--from", "/nonexistent/node.jsonl"], &[], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("opening /nonexistent/node.jsonl: "), "{err}");
}

#[test]
fn variables_shared_with_run_do_not_conflict_with_from() {
    let file = temp_file("rec.jsonl", recording().as_bytes());
    let path = file.to_str().unwrap();
    // From the environment (set for `run`), they do not apply and are left.
    let env = [
        ("IMDS_OBSERVER_DURATION", "5"),
        ("IMDS_OBSERVER_CGROUP_ROOT", "/nonexistent"),
        ("IMDS_OBSERVER_IFACES", "nosuch0"),
        ("NODE_NAME", "ip-10-0-9-9"),
    ];
    let (code, out, err) = observer_plain(&["report", "--from", path], &env, b"");
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("hop_limit_exceeded"), "{out}");
    // Typed, they are refused: nothing is captured.
    for flag in [
        &["--duration", "5"][..],
        &["--cgroup-root", "/nonexistent"],
        &["--endpoint", "169.254.169.254"],
        &["--iface", "eth0"],
        &["--runtime-socket", "/run/docker.sock"],
        &["--alongside"],
    ] {
        let args = [&["report", "--from", path][..], flag].concat();
        let (code, _, err) = observer_plain(&args, &[], b"");
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(&format!("{} cannot be used with --from", flag[0])),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = observer_plain(&["tui", "--from", path, "--iface", "eth0"], &[], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--iface cannot be used with --from"), "{err}");
    // #26 item 8: the one that slipped through before.
    let (code, _, err) = observer_plain(
        &["report", "--from", path, "--kernel-btf", "/sys/kernel/btf/vmlinux"],
        &[],
        b"",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--kernel-btf cannot be used with --from"), "{err}");
    // #26 item 8: invalid capture variables are not read with --from, as
    // the docs say; without --from they are still errors.
    let invalid = [
        ("IMDS_OBSERVER_ENDPOINTS", "not-an-endpoint"),
        ("IMDS_OBSERVER_ALONGSIDE", "perhaps"),
        ("IMDS_OBSERVER_DURATION", "forever"),
        ("IMDS_OBSERVER_KERNEL_BTF", ""),
    ];
    let (code, out, err) = observer_plain(&["report", "--from", path], &invalid, b"");
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("hop_limit_exceeded"), "{out}");
    let (code, _, err) = observer_plain(&["report", "--duration", "1"], &invalid[..1], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("IMDS_OBSERVER_ENDPOINTS"), "{err}");
    let _ = std::fs::remove_file(file);
}

/// #26 item 7: `report | head`: no "Broken pipe", the verdict's status.
#[test]
fn report_into_a_closed_pipe_keeps_the_verdict() {
    use std::{io::Write, process::Stdio};
    for format in ["table", "json"] {
        let mut child = Command::new(bin("imds-observer"))
            .args(["report", "--from", "-", "-o", format])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before a byte is written (report reads all of
        // stdin first).
        drop(child.stdout.take());
        child.stdin.take().unwrap().write_all(recording().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format}: {err}");
        assert!(!err.to_lowercase().contains("broken pipe"), "{format}: {err}");
    }
}

/// A pseudo-terminal: (controller, terminal) file descriptors.
fn pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut c, mut t) = (-1, -1);
    let r = unsafe {
        libc::openpty(&mut c, &mut t, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    unsafe { (std::os::fd::OwnedFd::from_raw_fd(c), std::os::fd::OwnedFd::from_raw_fd(t)) }
}

/// #26 item 6: `--from -` with a terminal on stdin is refused at once with
/// a hint, by report and by the TUI (whose keys the terminal gives).
#[test]
fn terminal_on_stdin_is_refused_with_a_hint() {
    use std::process::Stdio;
    for command in ["report", "tui"] {
        let (_controller, tty) = pty();
        let mut child = KillOnDrop(
            Command::new(bin("imds-observer"))
                .args([command, "--from", "-"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::from(tty.try_clone().unwrap()))
                .stdout(Stdio::from(tty))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{command} --from - waits on the terminal"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{command}: {err}");
        assert!(err.contains("stdin is a terminal"), "{command}: {err}");
        assert!(err.contains(&format!("| imds-observer {command} --from -")), "{command}: {err}");
    }
}

/// #26 item 9: the forms people type, accepted or refused with the form
/// that works.
#[test]
fn typed_forms_are_taken_or_answered_with_the_right_one() {
    let rec = recording();
    // `--json=false`, as the variable takes it; `--format json`, `-o json`.
    let (code, out, err) =
        observer_plain(&["report", "--from", "-", "--json=false"], &[], rec.as_bytes());
    assert_eq!(code, 1, "{err}");
    assert!(!out.contains("\"type\":\"finding\""), "{out}");
    for args in [&["--format", "json"][..], &["-o", "json"]] {
        let all = [&["report", "--from", "-"][..], args].concat();
        let (code, out, err) = observer_plain(&all, &[], rec.as_bytes());
        assert_eq!(code, 1, "{all:?}: {err}");
        assert!(out.contains("\"type\":\"finding\""), "{all:?}: {out}");
    }
    // Errors with a way forward.
    for (args, hint) in [
        (&["run", "--metrics-addr", ":9109"][..], "0.0.0.0:9109"),
        (&["run", "--metrics-addr", "9109"], "0.0.0.0:9109"),
        (&["run", "--duration", "ten"], "5m"),
        (&["run", "--metrics-grace", "ten"], "5m"),
        (&["report", "--duration", "0"], "--from FILE|-"),
        (&["run", "--duration", "0"], "leave --duration out"),
    ] {
        let (code, _, err) = observer_plain(args, &[], b"");
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(hint), "{args:?}: {err}");
    }
    // kubectl logs --prefix --timestamps: read as the events they carry.
    let prefixed: String = rec
        .lines()
        .map(|l| format!("[pod/imds-observer-x7k2p/observer] 2026-11-26T20:54:01.000000001Z {l}\n"))
        .collect();
    let (code, out, err) = observer_plain(&["report", "--from", "-"], &[], prefixed.as_bytes());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("hop_limit_exceeded") && !err.contains("skipped"), "{out}{err}");
}

/// #26 item 10: completions, man pages and --version from the binary.
#[test]
fn completions_man_page_and_version() {
    let (code, out, err) = observer_plain(&["completions", "bash"], &[], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("complete -F") && out.contains("--metrics-addr"), "{out}");
    let (code, out, err) = observer_plain(&["man", "report"], &[], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".TH") && out.contains("Exit status"), "{out}");
    let (code, out, err) = observer_plain(&["--version"], &[], b"");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("imds-observer ")
            && out.contains("commit ")
            && out.contains("eBPF object sha256:")
            && out.contains("target ")
            && out.contains("features: "),
        "{out}"
    );
}

#[test]
fn boolean_variables_take_the_usual_spellings() {
    let rec = recording();
    for v in ["1", "true", "TRUE", "yes", "on", "On"] {
        let (code, out, err) = observer_plain(
            &["report", "--from", "-"],
            &[("IMDS_OBSERVER_JSON", v)],
            rec.as_bytes(),
        );
        assert_eq!(code, 1, "IMDS_OBSERVER_JSON={v}: {err}");
        assert!(out.starts_with("{\"type\":\"finding\""), "IMDS_OBSERVER_JSON={v}: {out}");
    }
    for v in ["0", "false", "no", "off", "OFF"] {
        let (code, out, err) = observer_plain(
            &["report", "--from", "-"],
            &[("IMDS_OBSERVER_JSON", v)],
            rec.as_bytes(),
        );
        assert_eq!(code, 1, "IMDS_OBSERVER_JSON={v}: {err}");
        assert!(!out.starts_with('{'), "IMDS_OBSERVER_JSON={v}: a table, not JSON: {out}");
    }
    // A bad value names the variable it came from.
    let (code, _, err) = observer_plain(
        &["report", "--from", "-"],
        &[("IMDS_OBSERVER_JSON", "maybe")],
        rec.as_bytes(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'maybe' in IMDS_OBSERVER_JSON (for --json)"), "{err}");
    assert!(err.contains("1/0, true/false, yes/no or on/off"), "{err}");
    let (code, _, err) = observer_plain(&["run"], &[("IMDS_OBSERVER_ALONGSIDE", "2")], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("IMDS_OBSERVER_ALONGSIDE"), "{err}");
    let (code, _, err) = observer_plain(&["run", "--duration", "x"], &[], b"");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("'--duration <DURATION>'") && !err.contains("IMDS_OBSERVER_DURATION="),
        "typed: {err}"
    );
    let (code, _, err) = observer_plain(&["run"], &[("IMDS_OBSERVER_DURATION", "soon")], b"");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid value 'soon' in IMDS_OBSERVER_DURATION (for --duration)"),
        "{err}"
    );
}

/// A recording `cargo xtask demo` made before the typed-event change (hop
/// limit 1, one forwarding hop, tokens optional) replays to the findings
/// `report --json` gave then. A change to these findings is a change to the
/// diagnosis: update the expected file in the same commit, and say why.
#[test]
fn a_recording_from_an_earlier_version_replays_to_the_same_findings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings");
    let recording = dir.join("hop-limit-1.jsonl");
    let (code, out, err) =
        observer_plain(&["report", "--from", recording.to_str().unwrap(), "--json"], &[], b"");
    assert_eq!(code, 1, "{err}");
    let parse = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let expected = parse(&std::fs::read_to_string(dir.join("hop-limit-1.report.json")).unwrap());
    let got = parse(&out);
    let kinds =
        |v: &[serde_json::Value]| v.iter().map(|f| f["kind"].to_string()).collect::<Vec<_>>();
    assert_eq!(kinds(&got), kinds(&expected));
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e, "finding {} changed", e["kind"]);
    }
}

/// The raw_exec job's start, read from deploy/nomad/imds-observer-exec.nomad.hcl
/// (the command, then its arguments up to "--"): uid/gid 65534 with
/// CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYSLOG ambient, nothing
/// else, no new privileges.
fn as_the_raw_exec_job() -> Vec<String> {
    let job = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/nomad/imds-observer-exec.nomad.hcl"),
    )
    .unwrap();
    let quoted = |l: &str| l.trim().trim_end_matches(',').trim_matches('"').to_string();
    let command = job.lines().find_map(|l| l.trim().strip_prefix("command = ")).unwrap();
    let args = job.lines().skip_while(|l| !l.trim().starts_with("args = [")).skip(1);
    let mut out = vec![quoted(command)];
    for a in args.map(quoted) {
        out.push(a.clone());
        if a == "--" {
            return out;
        }
    }
    panic!("no \"--\" in the raw_exec job's args: {out:?}")
}

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn runs_as_nobody_with_three_ambient_capabilities_and_diagnoses() {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let c = lab.add_container("js", Attach::Routed);
    let wrapper = as_the_raw_exec_job();
    assert_eq!(wrapper[0], "/usr/bin/setpriv", "{wrapper:?}");
    let obs = lab.observer_through(&wrapper.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", obs.pid())).unwrap();
    let field =
        |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim().to_string();
    assert!(field("Uid:").starts_with("65534"), "{status}");
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39): nothing else;
    // CAP_SYSLOG (34) given up once /proc/kallsyms was read.
    assert_eq!(field("CapEff:"), "000000c000001000", "{status}");
    assert_eq!(field("CapPrm:"), "000000c000001000", "{status}");
    let run = c.sdk("js-v2", "http://169.254.169.254");
    assert!(run.lines.iter().any(|l| l["method"] == "PUT"), "{:?}", run.lines);
    let f = obs.wait_for("the finding", std::time::Duration::from_secs(10), |e| {
        e["type"] == "finding" && e["kind"] == "hop_limit_exceeded"
    });
    assert_eq!(f["evidence"]["reply_ttl_at_host"], 1, "{f}");
    assert_eq!(f["evidence"]["forwarding_hops"], 1, "{f}");
    // The kernel's drops, named where they happened (kallsyms was read
    // with CAP_SYSLOG before it went).
    assert!(
        obs.events().iter().any(|e| e["type"] == "drop" && e["location"] == "ip_forward"),
        "the replies' drops, located"
    );
    obs.stop();
}

/// #26 item 10: `report --node`: the report and the verdict are about the
/// nodes asked for; a name that matches nothing is an error, not a pass.
#[test]
fn report_filters_by_node() {
    let rec = recording();
    let (code, out, err) =
        observer_plain(&["report", "--from", "-", "--node", "ip-10-0-1-17"], &[], rec.as_bytes());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("hop_limit_exceeded"), "{out}");
    let (code, out, err) =
        observer_plain(&["report", "--from", "-", "--node", "ip-10-0-9-9"], &[], rec.as_bytes());
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no container matches --node ip-10-0-9-9"), "{err}");
}
