//! Lab tests of the observer as the fleet runs it: the container image as
//! the node agent with the documented privileges, and Prometheus metrics.
//! Root only: `cargo xtask test` (which builds the static binary first).
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use imds_lab::{Attach, Lab, LabOpts, Podman, sh};

const IMAGE: &str = "localhost/imds-observer:lab";

#[test]
#[ignore = "lab: needs root; run `cargo xtask test`"]
fn metrics_show_lost_replies_findings_and_hop_limit_by_workload_name() {
    let lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let mut podman = Podman::new(&lab, true);
    let obs = lab.observer(&[
        "--metrics-addr",
        "127.0.0.1:19109",
        "--runtime-socket",
        podman.socket.to_str().unwrap(),
    ]);
    assert!(
        lab.http_get(19109, "/readyz").starts_with("HTTP/1.1 200"),
        "not ready while capturing"
    );
    assert!(lab.http_get(19109, "/healthz").starts_with("HTTP/1.1 200"));
    let id = podman.run(
        "checkout-api",
        "printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\
X-aws-ec2-metadata-token-ttl-seconds: 21600\\r\\n\\r\\n' | timeout 2 nc 169.254.169.254 80; true",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let scrape = lab.http_get(19109, "/metrics");
    obs.stop();

    let line = |prefix: &str| scrape.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
    let lost = line("imds_observer_replies_lost_total{node=\"lab-node\",workload=\"checkout-api\"")
        .unwrap_or_else(|| panic!("no lost replies for the workload:\n{scrape}"));
    let n: f64 = lost.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{lost}");
    assert!(
        line("imds_observer_findings{node=\"lab-node\",workload=\"checkout-api\",namespace=\"\",kind=\"hop_limit_exceeded\"} 1")
            .is_some(),
        "{scrape}"
    );
    assert!(line("imds_observer_hop_limit{node=\"lab-node\"} 1").is_some(), "{scrape}");
    assert!(
        line("imds_observer_drops_total{node=\"lab-node\",reason=\"IP_INHDR\"}").is_some(),
        "{scrape}"
    );
    // Workload names, never ids.
    assert!(!scrape.contains(&id[..12]), "a container id leaked into a label");
}

/// `podman run` of the observer image as the node agent in the lab's host
/// netns, with `caps` added to an otherwise empty set.
fn run_image(lab: &Lab, caps: &[&str], args: &[&str]) -> std::process::Child {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", lab.host))
        .args([
            "podman",
            "--runtime",
            "runc",
            "run",
            "--rm",
            "--network",
            "host",
            "--cap-drop",
            "ALL",
        ])
        .args(["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=30000:30000"]);
    for c in caps {
        cmd.args(["--cap-add", c]);
    }
    // Podman's default seccomp profile allows bpf(2) only with CAP_SYS_ADMIN
    // (docs/deploy.md); mounts are read-only, as in the DaemonSet.
    cmd.args(["--security-opt", "seccomp=unconfined", "--read-only"])
        .args([
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "-v",
            "/sys/kernel/btf:/sys/kernel/btf:ro",
        ])
        .args(["-e", "NODE_NAME=lab-node", IMAGE])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("podman run the image")
}

#[test]
#[ignore = "lab: needs root and podman; run `cargo xtask test`"]
fn image_runs_as_the_agent_with_documented_privileges() {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/release/imds-observer");
    assert!(bin.exists(), "the static binary is not built: run `cargo xtask test`");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    sh(&[
        "podman",
        "build",
        "-q",
        "-t",
        IMAGE,
        "-f",
        root.join("Containerfile.local").to_str().unwrap(),
        root.to_str().unwrap(),
    ]);

    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let c = lab.add_container("app", Attach::Routed);
    let agent = run_image(
        &lab,
        &["BPF", "PERFMON", "NET_ADMIN", "SYSLOG"],
        &["run", "--events", "packets", "--duration", "6"],
    );
    std::thread::sleep(Duration::from_secs(2)); // the agent attaches
    c.sdk("botocore", "http://169.254.169.254");
    let out = agent.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "agent failed: {}", String::from_utf8_lossy(&out.stderr));
    let finding = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|f| {
            f["type"] == "finding"
                && f["kind"] == "hop_limit_exceeded"
                && f["container"]["cgroup"] == c.cgroup_rel().as_str()
        });
    assert!(finding.is_some(), "no hop-limit finding on the image's stdout:\n{stdout}");
    // With CAP_SYSLOG (given up after the read) the drops are located.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(r#""type":"drop""#) && l.contains(r#""location":"ip_forward""#)),
        "no drop located in ip_forward on the image's stdout:\n{stdout}"
    );

    // Each capability is needed, and the error names the one missing.
    for (missing, keep) in [
        ("CAP_PERFMON", ["BPF", "NET_ADMIN"]),
        ("CAP_NET_ADMIN", ["BPF", "PERFMON"]),
        ("CAP_BPF", ["PERFMON", "NET_ADMIN"]),
    ] {
        let out = run_image(&lab, &keep, &["run", "--duration", "1"]).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&format!("missing capabilities: {missing}.")), "{err}");
    }
}
