//! `cargo xtask bench`: figures, not assertions. In the lab (root):
//! - the agent's idle CPU and memory, and its CPU per metadata request
//!   under load from many containers;
//! - the eBPF programs' cost per packet on non-metadata traffic (what every
//!   packet of a host pays), from the kernel's own run-time statistics,
//!   against empty programs on the same hooks (the floor), and the
//!   throughput with nothing, the empty programs, and the observer attached;
//! - the container image's size, when the static binary is built;
//! - a container flooding the metadata address: lines, peak memory, and
//!   what its budget held back.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use imds_lab::{
    Attach, Container, Flood, IMDS_V4, Lab, LabOpts, Observer, cgroup2_root, kernel_has_tcx, sh,
};

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

/// What each of our packet hooks (`HOOKS` order) cost so far, from the
/// observer's own /metrics (it reads the kernel's per-program statistics
/// when kernel.bpf_stats_enabled=1).
fn bpf_stats(lab: &Lab, port: u16) -> Vec<Cost> {
    let text = lab.http_get(port, "/metrics");
    let value = |prefix: &str, prog: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix) && l.contains(&format!("program=\"{prog}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    HOOKS
        .iter()
        .map(|(p, _)| {
            let ns = value("imds_observer_bpf_program_run_time_seconds_total", p) * 1e9;
            (ns as u64, value("imds_observer_bpf_program_runs_total", p) as u64)
        })
        .collect()
}

/// Idle: the shipped observer with nothing to see. At work: `CLIENTS`
/// containers each fetching documents at each of `RATES` a second (a TCP
/// connection, a GET and its reply each), for `LOAD_SECS`, with the
/// observer at each `--events` level: 100, 1,000 and 5,000 requests a
/// second in all, or as far as the load generator reaches.
const CLIENTS: usize = 50;
const RATES: [u32; 3] = [2, 20, 100];
const LEVELS: [&str; 3] = ["problems", "exchanges", "packets"];
const LOAD_SECS: u32 = 10;

fn at_rest_and_at_work(lab: &mut Lab) {
    let clients: Vec<Container> =
        (0..CLIENTS).map(|i| lab.add_container(&format!("load{i}"), Attach::Routed)).collect();
    let obs: Observer = lab.shipped_observer(&[]);
    let pid = obs.pid();
    std::thread::sleep(Duration::from_secs(2));
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let idle_cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    println!(
        "agent idle (shipped binary): {:.2}% of a core, RSS {} KiB (start-up peak {} KiB)",
        idle_cpu * 100.0,
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "VmHWM:")
    );
    drop(obs);

    println!(
        "agent at work: {CLIENTS} containers, each a TCP connection, a GET and its reply per \
         request, hop limit 2 (all healthy), {LOAD_SECS} s per rate"
    );
    println!(
        "  {:<9} {:>9} {:>8} {:>10} {:>7} {:>11} {:>11} {:>10} {:>5}",
        "--events",
        "requests",
        "req/s",
        "µs CPU/req",
        "% core",
        "lines/req",
        "bytes/req",
        "suppressed",
        "lost"
    );
    for level in LEVELS {
        let obs: Observer = lab.shipped_observer(&["--events", level]);
        std::thread::sleep(Duration::from_secs(1));
        for rate in RATES {
            let w = load(&obs, &clients, rate);
            let per = |x: f64| x / w.requests.max(1) as f64;
            println!(
                "  {level:<9} {:>9} {:>8.0} {:>10.1} {:>7.1} {:>11.3} {:>11.1} {:>10} {:>5}",
                w.requests,
                w.requests as f64 / w.secs,
                per(w.cpu) * 1e6,
                w.cpu / w.secs * 100.0,
                per(w.lines as f64),
                per(w.bytes as f64),
                w.suppressed,
                w.lost,
            );
        }
    }
    for c in clients {
        lab.remove(c);
    }
}

/// What one load step cost the observer.
struct Work {
    requests: u64,
    secs: f64,
    /// Observer CPU seconds.
    cpu: f64,
    /// stdout lines and bytes written meanwhile.
    lines: u64,
    bytes: u64,
    /// Records budgets held back, and records the ring lost, meanwhile.
    suppressed: u64,
    lost: u64,
}

/// `CLIENTS` containers fetching `rate` documents a second each for
/// `LOAD_SECS`.
fn load(obs: &Observer, clients: &[Container], rate: u32) -> Work {
    // bash's own /dev/tcp and `read -t` as the pause: no process per
    // request. As an SDK does: one token, then GETs that carry it (a
    // healthy IMDSv2 client; a tokenless GET is an `exchange` line). Each
    // request in one write, as SDKs send it (bash's printf with a format
    // writes piece by piece, and the headers would miss the first segment).
    let script = format!(
        "exec 9<> <(:); n=0; end=$((SECONDS + {LOAD_SECS}))\n\
         exec 3<>/dev/tcp/{IMDS_V4}/80\n\
         put=$'PUT /latest/api/token HTTP/1.1\\r\\nHost: {IMDS_V4}\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 300\\r\\nConnection: close\\r\\n\\r\\n'\n\
         printf '%s' \"$put\" >&3\n\
         tok=$(cat <&3); tok=${{tok##*$'\\n'}}; exec 3<&-\n\
         get=\"GET /latest/meta-data/instance-id HTTP/1.1\"$'\\r\\n'\"Host: {IMDS_V4}\"$'\\r\\n'\"X-aws-ec2-metadata-token: $tok\"$'\\r\\nConnection: close\\r\\n\\r\\n'\n\
         while [ $SECONDS -lt $end ]; do\n\
         \x20 if exec 3<>/dev/tcp/{IMDS_V4}/80; then\n\
         \x20   printf '%s' \"$get\" >&3\n\
         \x20   while read -r -u 3 _; do :; done; exec 3<&-; n=$((n + 1))\n\
         \x20 fi\n\
         \x20 read -r -t {pause} -u 9\n\
         done\n\
         echo $n",
        pause = 1.0 / f64::from(rate)
    );
    let count = |kind: &str| -> u64 {
        obs.events().iter().filter(|e| e["type"] == kind).filter_map(|e| e["count"].as_u64()).sum()
    };
    let (c0, s0, l0, t0) =
        (cpu_seconds(obs.pid()), count("suppressed"), count("lost_events"), Instant::now());
    let out0 = obs.output_size();
    let requests: u64 = std::thread::scope(|s| {
        let runs: Vec<_> = clients
            .iter()
            .map(|c| s.spawn(|| c.run(Path::new("bash"), &["-c", &script])))
            .collect();
        runs.into_iter()
            .map(|r| String::from_utf8_lossy(&r.join().unwrap().stdout).trim().parse().unwrap_or(0))
            .sum()
    });
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500)); // the last records drained
    let out = obs.output_size();
    Work {
        requests,
        secs,
        cpu: cpu_seconds(obs.pid()) - c0,
        lines: out.0 - out0.0,
        bytes: out.1 - out0.1,
        suppressed: count("suppressed") - s0,
        lost: count("lost_events") - l0,
    }
}

/// Our packet hooks, each with the empty program the floor attaches there.
const HOOKS: [(&str, &str); 4] = [
    ("cgroup_egress", "empty_egress"),
    ("cgroup_ingress", "empty_ingress"),
    ("imds_tc_egress", "imds_floor_out"),
    ("imds_tc_ingress", "imds_floor_in"),
];
const ROUNDS: usize = 4;
const BULK_SECS: u32 = 4;

/// (run time ns, runs) of a program, as the kernel counts them
/// (kernel.bpf_stats_enabled=1).
type Cost = (u64, u64);

/// What non-metadata traffic costs: bulk TCP from a container to the
/// cloud's own address, through every packet hook. Throughput with nothing
/// attached, with the empty programs, and with the observer; and the cost
/// per run of ours against the empty ones with both attached, so that both
/// see the same packets under the same conditions (a shared VM's per-run
/// figures wander between rounds). Rounds alternate the order of the
/// settings and which of the two programs on a hook runs first.
fn floor_table(lab: &Lab, client: &Container) {
    let (mut nothing, mut empty, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    let mut costs: Vec<(Vec<Cost>, Vec<Cost>)> = Vec::new(); // (empty, ours)
    for round in 0..ROUNDS {
        for phase in 0..4 {
            match (round + phase) % 4 {
                0 => nothing.push(bulk(lab, client)),
                1 => empty.push(with_empty_programs(lab, || bulk(lab, client)).0),
                2 => ours.push(with_observer(lab, || bulk(lab, client)).0),
                _ if round % 2 == 0 => {
                    let ((_, o), e) =
                        with_empty_programs(lab, || with_observer(lab, || bulk(lab, client)));
                    costs.push((e, o));
                }
                _ => {
                    let ((_, e), o) =
                        with_observer(lab, || with_empty_programs(lab, || bulk(lab, client)));
                    costs.push((e, o));
                }
            }
        }
    }
    println!(
        "eBPF cost per non-metadata packet: bulk TCP (iperf3) from a container to a \
         non-metadata address through every packet hook, {ROUNDS} rounds of {BULK_SECS} s, \
         median; kernel {}, {} CPUs",
        sh(&["uname", "-r"]).trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  {:<16} {:>13} {:>13} {:>7}", "hook", "empty (floor)", "imds-observer", "ratio");
    for (i, (hook, _)) in HOOKS.iter().enumerate() {
        let per_run = |c: &Cost| c.0 as f64 / c.1.max(1) as f64;
        let e = median(costs.iter().map(|(e, _)| per_run(&e[i])).collect());
        let o = median(costs.iter().map(|(_, o)| per_run(&o[i])).collect());
        println!("  {hook:<16} {:>10.0} ns {:>10.0} ns {:>6.2}×", e, o, o / e.max(1.0));
    }
    // Median, and the rounds' range: a shared VM's throughput wanders.
    let gbit = |v: Vec<f64>| {
        let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        (median(v) / 1e9, format!("{:.1}–{:.1}", lo / 1e9, hi / 1e9))
    };
    let (n, e, o) = (gbit(nothing), gbit(empty), gbit(ours));
    println!(
        "  throughput (Gbit/s, median and range): nothing attached {:.2} ({}), empty programs \
         {:.2} ({}), imds-observer {:.2} ({}): {:.3} of the empty programs'",
        n.0,
        n.1,
        e.0,
        e.1,
        o.0,
        o.1,
        o.0 / e.0
    );
}

/// The shipped observer running while `f` runs: its result, and what the
/// observer's packet programs cost meanwhile (from its own /metrics).
fn with_observer<T>(lab: &Lab, f: impl FnOnce() -> T) -> (T, Vec<Cost>) {
    let obs = lab.shipped_observer(&["--metrics-addr", "127.0.0.1:19110"]);
    std::thread::sleep(Duration::from_millis(1100)); // stats are read once a second
    let before = bpf_stats(lab, 19110);
    let t = f();
    std::thread::sleep(Duration::from_millis(1100));
    let after = bpf_stats(lab, 19110);
    drop(obs);
    (t, growth(&before, &after))
}

/// Per hook, what the counters grew by.
fn growth(before: &[Cost], after: &[Cost]) -> Vec<Cost> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// iperf3 for `BULK_SECS` from the container to the cloud's 198.18.0.1
/// (not a metadata address): bits per second received.
fn bulk(lab: &Lab, client: &Container) -> f64 {
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.cloud, "iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let out = client.run(
        Path::new("iperf3"),
        &["-c", "198.18.0.1", "-p", "5201", "-t", &BULK_SECS.to_string(), "-J"],
    );
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0)
}

/// The empty programs of the observer's own object, attached where the
/// observer attaches its own (the cgroup2 root; tc on the lab's uplink, in
/// the host netns), while `f` runs: its result and what each cost.
fn with_empty_programs<T: Send>(lab: &Lab, f: impl FnOnce() -> T + Send) -> (T, Vec<Cost>) {
    use aya::programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SchedClassifier, TcAttachType,
    };
    use imds_observer::capture::{self, attach};
    std::thread::scope(|s| {
        s.spawn(|| {
            // tc attaches by interface name, in this thread's netns.
            let ns = fs::File::open(format!("/run/netns/{}", lab.host)).expect("host netns");
            // SAFETY: setns on a valid fd; it changes this thread's netns only.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let mut ebpf = aya::Ebpf::load(capture::object()).expect("load the eBPF object");
            let root = fs::File::open(cgroup2_root()).expect("cgroup2 root");
            for (name, ty) in [
                ("empty_egress", CgroupSkbAttachType::Egress),
                ("empty_ingress", CgroupSkbAttachType::Ingress),
            ] {
                let p: &mut CgroupSkb = ebpf.program_mut(name).unwrap().try_into().unwrap();
                p.load().expect(name);
                p.attach(&root, ty, CgroupAttachMode::Single).expect(name);
            }
            let mode = attach::TcMode { tcx: kernel_has_tcx(), clean_leftovers: false };
            for (name, ty) in
                [("imds_floor_out", TcAttachType::Egress), ("imds_floor_in", TcAttachType::Ingress)]
            {
                let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
                p.load().expect(name);
                attach::tc_attach(p, name, "uplink0", ty, mode).expect(name);
            }
            let costs = |ebpf: &aya::Ebpf| -> Vec<Cost> {
                HOOKS
                    .iter()
                    .map(|(_, name)| {
                        let info = ebpf.program(name).unwrap().info().expect(name);
                        (info.run_time().as_nanos() as u64, info.run_count())
                    })
                    .collect()
            };
            let before = costs(&ebpf);
            let t = f();
            let after = costs(&ebpf);
            // Dropped here, in the host netns: the tc links detach there.
            drop(ebpf);
            (t, growth(&before, &after))
        })
        .join()
        .expect("empty programs")
    })
}

fn main() {
    let mut lab = Lab::new(LabOpts { hop_limit: 2, ..Default::default() });
    // `lab-bench work`: only the agent at work (for profiling it).
    if std::env::args().nth(1).as_deref() == Some("work") {
        at_rest_and_at_work(&mut lab);
        return;
    }
    let client = lab.add_container("client", Attach::Routed);
    sh(&["sysctl", "-qw", "kernel.bpf_stats_enabled=1"]);
    at_rest_and_at_work(&mut lab);
    floor_table(&lab, &client);
    sh(&["sysctl", "-qw", "kernel.bpf_stats_enabled=0"]);

    // The image.
    let musl = imds_lab::release_binary("amd64");
    if musl.exists() {
        if imds_lab::build_local_image("amd64", "localhost/imds-observer:bench").is_ok() {
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

    // A hostile workload: the flood lab tests' scenarios, measured.
    drop(lab);
    for (flood_by, what) in [
        (Flood::Connects, "UDP on random ports + 200 TCP connects to port 80 every 50 ms"),
        (Flood::ForgedSyns, "TTL-1 SYNs to port 80 from forged sources, raw socket"),
    ] {
        let f = imds_lab::flood_scenario(20, flood_by);
        println!(
            "flood ({} s, one container: {what}, {} packets; a js-v2 client beside it): {} stdout \
             lines, peak RSS {} KiB (shipped binary), {} of the flood's records held back by its \
             budgets, {} of the client's, {} lost; the client's hop_limit_exceeded {}",
            f.seconds,
            f.sent,
            f.lines,
            f.peak_rss_kib,
            f.suppressed,
            f.client_suppressed,
            f.lost,
            if f.client_finding.is_some() { "found" } else { "MISSING" }
        );
    }
}
