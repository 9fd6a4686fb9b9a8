//! `cargo xtask bench`: figures, not assertions. In the lab (root):
//! - the agent's idle CPU and memory, and its CPU per metadata request;
//! - the eBPF programs' cost per packet on non-metadata traffic (what every
//!   packet of a host pays), from the kernel's own run-time statistics;
//! - the container image's size, when the static binary is built;
//! - a container flooding the metadata address: lines, peak memory, and
//!   what its budget held back.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use imds_lab::{Attach, Lab, LabOpts, Observer, bin, sh};

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ
}

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (program, run time ns, runs) from the observer's own /metrics (it reads
/// the kernel's per-program statistics when kernel.bpf_stats_enabled=1).
fn bpf_stats(lab: &Lab, port: u16) -> Vec<(String, u64, u64)> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    );
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host))
        .args(["bash", "-c", &script])
        .output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let value = |prefix: &str, prog: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix) && l.contains(&format!("program=\"{prog}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    ["cgroup_egress", "cgroup_ingress", "tc_ingress", "tc_egress", "kfree_skb"]
        .iter()
        .map(|p| {
            let ns = value("imds_observer_bpf_program_run_time_seconds_total", p) * 1e9;
            (p.to_string(), ns as u64, value("imds_observer_bpf_program_runs_total", p) as u64)
        })
        .collect()
}

fn main() {
    let mut lab = Lab::new(LabOpts { hop_limit: 2, ..Default::default() });
    let client = lab.add_container("client", Attach::Routed);
    let peer = lab.add_container("peer", Attach::Routed);
    sh(&["sysctl", "-qw", "kernel.bpf_stats_enabled=1"]);
    let obs: Observer = lab.observer(&["--metrics-addr", "127.0.0.1:19110"]);
    let pid = obs.pid();
    std::thread::sleep(Duration::from_secs(1));

    // Idle.
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let idle_cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    println!(
        "agent idle: {:.2}% of a core, RSS {} KiB (peak {} KiB)",
        idle_cpu * 100.0,
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "VmHWM:")
    );

    // Metadata requests: CPU per request (each is a few packets, events and
    // a diagnosis update).
    let n = 300;
    let c0 = cpu_seconds(pid);
    for _ in 0..n {
        client.sdk("token-only", "http://169.254.169.254");
    }
    std::thread::sleep(Duration::from_millis(500));
    let per = (cpu_seconds(pid) - c0) / f64::from(n);
    println!(
        "agent under metadata load: {:.0} µs CPU per credential fetch (token PUT + 2 GETs), RSS {} KiB",
        per * 1e6,
        status_kib(pid, "VmRSS:")
    );

    // Non-metadata traffic: what every packet of the host pays.
    std::thread::sleep(Duration::from_millis(1100)); // the observer reads stats once a second
    let before = bpf_stats(&lab, 19110);
    let mut server = peer
        .command(
            &bin("fake-imds"),
            &["--listen", &format!("{}:8080", peer.v4), "--hop-limit", "64"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("peer server");
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..200 {
        client.sdk("v1-only", &format!("http://{}:8080", peer.v4));
    }
    let _ = server.kill();
    let _ = server.wait();
    std::thread::sleep(Duration::from_millis(1100));
    let after = bpf_stats(&lab, 19110);
    sh(&["sysctl", "-qw", "kernel.bpf_stats_enabled=0"]);
    for (name, rt, rc) in &after {
        if let Some((_, rt0, rc0)) = before.iter().find(|(n, ..)| n == name) {
            let (drt, drc) = (rt - rt0, rc - rc0);
            if drc > 0 {
                println!(
                    "eBPF {name:<15} non-metadata packets: {drc:>6} runs, {:>5.0} ns per run",
                    drt as f64 / drc as f64
                );
            }
        }
    }
    drop(obs);

    // The image.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let musl = root.join("target/x86_64-unknown-linux-musl/release/imds-observer");
    if musl.exists() {
        let built = Command::new("podman")
            .args(["build", "-q", "-t", "localhost/imds-observer:bench", "-f"])
            .arg(root.join("Containerfile.local"))
            .arg(&root)
            .output();
        if built.is_ok_and(|o| o.status.success()) {
            let size = sh(&[
                "podman",
                "image",
                "inspect",
                "--format",
                "{{.Size}}",
                "localhost/imds-observer:bench",
            ]);
            let bytes: f64 = size.trim().parse().unwrap_or(0.0);
            // The published image (Containerfile) strips the binary;
            // Containerfile.local copies it as built.
            let stripped = std::env::temp_dir().join("imds-observer-bench-stripped");
            let mb = |p: &Path| fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
            let stripped_mb =
                match Command::new("strip").arg("-o").arg(&stripped).arg(&musl).status() {
                    Ok(s) if s.success() => format!("{:.1} MB", mb(&stripped)),
                    _ => "not measured (no strip)".into(),
                };
            let _ = fs::remove_file(&stripped);
            println!(
                "image (Containerfile.local, unstripped): {:.1} MB; static binary {:.1} MB, stripped as the published image has it: {stripped_mb}",
                bytes / 1e6,
                mb(&musl)
            );
            let _ = Command::new("podman").args(["rmi", "localhost/imds-observer:bench"]).output();
        }
    } else {
        println!(
            "image: not measured (build the static binary: cargo build --release --target x86_64-unknown-linux-musl -p imds-observer)"
        );
    }

    // A hostile workload: the flood lab test's scenario, measured.
    drop(lab);
    let f = imds_lab::flood_scenario(20);
    println!(
        "flood ({} s, one container: UDP on random ports + 200 TCP connects to port 80 every 50 ms; \
         a js-v2 client beside it): {} stdout lines, peak RSS {} KiB (shipped binary), {} of the \
         flood's records held back by its budget, {} of the client's; the client's \
         hop_limit_exceeded {}",
        f.seconds,
        f.lines,
        f.peak_rss_kib,
        f.suppressed,
        f.client_suppressed,
        if f.client_finding.is_some() { "found" } else { "MISSING" }
    );
}
