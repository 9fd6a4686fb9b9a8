//! Lab tests of the observer as the fleet runs it: the container image as
//! the node agent with the DaemonSet's user and capabilities (read from
//! deploy/kubernetes/daemonset.yaml), under podman and under runc with the
//! OCI spec a Kubernetes runtime writes for it, and Prometheus metrics.
//! Root only: `cargo xtask test` (which builds the static binary first).
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use imds_lab::{
    Attach, Lab, LabOpts, Observer, Podman, Value, build_local_image, release_binary, sh,
};

const IMAGE: &str = "localhost/imds-observer:lab";
/// The agent's arguments: every packet, until stopped.
const PACKETS: [&str; 3] = ["run", "--events", "packets"];
/// An agent expected to refuse to start (it would stop after a second).
const BRIEF: [&str; 3] = ["run", "--duration", "1"];

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

/// The DaemonSet's container as deployed: its securityContext and the
/// host directories it mounts, read from deploy/kubernetes/daemonset.yaml
/// (by python3's PyYAML, as the manifest checks read it), so the lab runs
/// what the manifest says.
struct AsDeployed {
    uid: u64,
    gid: u64,
    /// `capabilities.add`, Kubernetes' spelling (BPF, ...); `drop` is ALL.
    caps: Vec<String>,
    no_new_privs: bool,
    read_only_root: bool,
    /// (hostPath, mountPath, readOnly) of each volume mount.
    mounts: Vec<(String, String, bool)>,
}

impl AsDeployed {
    fn read() -> AsDeployed {
        let file =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml");
        let out = Command::new("python3")
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            ])
            .arg(&file)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "python3 with PyYAML: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ds: Value = serde_json::from_slice(&out.stdout).unwrap();
        let pod = &ds["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        let strs = |v: &Value| -> Vec<String> {
            v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
        };
        let mounts = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let v = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]);
                let host = v.unwrap()["hostPath"]["path"].as_str().expect("a hostPath");
                (
                    host.to_string(),
                    m["mountPath"].as_str().unwrap().to_string(),
                    m["readOnly"] == true,
                )
            })
            .collect();
        AsDeployed {
            uid: sc["runAsUser"].as_u64().expect("runAsUser"),
            gid: sc["runAsGroup"].as_u64().expect("runAsGroup"),
            caps: strs(&sc["capabilities"]["add"]),
            no_new_privs: sc["allowPrivilegeEscalation"] == false,
            read_only_root: sc["readOnlyRootFilesystem"] == true,
            mounts,
        }
    }

    /// The capabilities as a /proc/PID/status mask, `except` some.
    fn mask(&self, except: &[&str]) -> String {
        let bit = |c: &str| match c {
            "NET_ADMIN" => 12,
            "SYS_PTRACE" => 19,
            "SYS_ADMIN" => 21,
            "SYS_RESOURCE" => 24,
            "SYSLOG" => 34,
            "PERFMON" => 38,
            "BPF" => 39,
            other => panic!("a capability the lab does not know: {other}"),
        };
        let m = self
            .caps
            .iter()
            .filter(|c| !except.contains(&c.as_str()))
            .fold(0u64, |m, c| m | 1 << bit(c));
        format!("{m:016x}")
    }
}

/// The host directory the kubelet makes for a `DirectoryOrCreate` hostPath:
/// root's, 0755. Removed on drop.
struct KubeletDir(PathBuf);

impl KubeletDir {
    fn new(name: &str) -> KubeletDir {
        let dir = std::env::temp_dir().join(format!("imds-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        KubeletDir(dir)
    }
}

impl Drop for KubeletDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A line of /proc/PID/status, the tabs between its values made spaces.
fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} in {status}"));
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a Kubernetes node runs it with: the user, the capabilities and the
/// host namespaces of the manifest, the right ones in the right sets.
fn assert_runs_as_deployed(pid: u32, d: &AsDeployed, nnp: bool) {
    assert_eq!(status_field(pid, "Uid:"), format!("{0} {0} {0} {0}", d.uid));
    assert_eq!(status_field(pid, "Gid:"), format!("{0} {0} {0} {0}", d.gid));
    // CAP_SYSLOG given up once /proc/kallsyms was read; nothing beyond
    // the manifest's, however many the binary's file capabilities name.
    assert_eq!(status_field(pid, "CapEff:"), d.mask(&["SYSLOG"]));
    assert_eq!(status_field(pid, "CapPrm:"), d.mask(&["SYSLOG"]));
    assert_eq!(status_field(pid, "CapBnd:"), d.mask(&[]));
    // From the file, not ambient: file capabilities clear the ambient set.
    assert_eq!(status_field(pid, "CapAmb:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), if nnp { "1" } else { "0" });
}

/// The hop-limit finding for `c` and the replies' drops, located (with
/// CAP_SYSLOG, from the file, before it was given up).
fn assert_diagnoses(obs: &Observer, c: &imds_lab::Container) {
    let f = obs.wait_for("the finding", Duration::from_secs(10), |e| {
        e["type"] == "finding"
            && e["kind"] == "hop_limit_exceeded"
            && e["container"]["cgroup"] == c.cgroup_rel().as_str()
    });
    assert_eq!(f["evidence"]["reply_ttl_at_host"], 1, "{f}");
    assert!(
        obs.events().iter().any(|e| e["type"] == "drop" && e["location"] == "ip_forward"),
        "no drop located in ip_forward:\n{}",
        obs.raw()
    );
}

/// Run `cmd`, an observer that refuses to start (exit 2), to its end: its
/// stderr.
fn refused(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

/// `podman run` of the image as the node agent in the lab's host netns:
/// the manifest's user, `caps` added to an otherwise empty set, no new
/// privileges where the manifest forbids escalation, and the lock's
/// directory from `lock`.
fn podman_run(
    lab: &Lab,
    d: &AsDeployed,
    caps: &[&str],
    lock: &Path,
    name: &str,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", lab.host))
        .args(["podman", "--runtime", "runc", "run", "--rm", "--name", name, "--network", "host"])
        .args(["--user", &format!("{}:{}", d.uid, d.gid), "--cap-drop", "ALL"])
        .args(["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=30000:30000"]);
    for c in caps {
        cmd.args(["--cap-add", c]);
    }
    if d.no_new_privs {
        cmd.args(["--security-opt", "no-new-privileges"]);
    }
    // Podman's default seccomp profile allows bpf(2) only with CAP_SYS_ADMIN
    // (docs/deploy.md); mounts are read-only, as in the DaemonSet.
    cmd.args(["--security-opt", "seccomp=unconfined", "--read-only"])
        .args([
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "-v",
            "/sys/kernel/btf:/sys/kernel/btf:ro",
            "-v",
            &format!("{}:/run/imds-observer", lock.display()),
        ])
        .args(["-e", "NODE_NAME=lab-node", IMAGE])
        .args(args);
    cmd
}

/// Removes a podman container by name on drop (a test that panics leaves
/// none running).
struct PodmanName(String);

impl Drop for PodmanName {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &self.0]).output();
    }
}

#[test]
#[ignore = "lab: needs root and podman; run `cargo xtask test`"]
fn image_runs_as_the_agent_with_documented_privileges() {
    build_local_image("amd64", IMAGE).unwrap();
    let d = AsDeployed::read();
    let caps: Vec<&str> = d.caps.iter().map(String::as_str).collect();
    let lock = KubeletDir::new("podman-lock");
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let c = lab.add_container("app", Attach::Routed);
    let name = PodmanName(format!("imds-agent-{}", std::process::id()));
    let agent = Observer::spawn(podman_run(&lab, &d, &caps, &lock.0, &name.0, &PACKETS));
    let pid: u32 =
        sh(&["podman", "inspect", "--format", "{{.State.Pid}}", &name.0]).trim().parse().unwrap();
    // Podman makes a non-root user's added capabilities ambient; the
    // binary's file capabilities take their place (the kernel clears the
    // ambient set for them).
    assert_runs_as_deployed(pid, &d, d.no_new_privs);
    c.sdk("js-v2", "http://169.254.169.254");
    assert_diagnoses(&agent, &c);
    let stderr = agent.stderr.lock().unwrap().join("\n");
    assert!(!stderr.contains("abstract socket"), "the lock directory was not used: {stderr}");
    agent.stop();

    // Each capability is needed, and the error names the one missing.
    for (missing, keep) in [
        ("CAP_PERFMON", ["BPF", "NET_ADMIN"]),
        ("CAP_NET_ADMIN", ["BPF", "PERFMON"]),
        ("CAP_BPF", ["PERFMON", "NET_ADMIN"]),
    ] {
        let name = PodmanName(format!("imds-agent-{}-{missing}", std::process::id()));
        let err = refused(podman_run(&lab, &d, &keep, &lock.0, &name.0, &BRIEF));
        assert!(err.contains(&format!("missing capabilities: {missing}.")), "{err}");
    }
}

/// The image's root filesystem as a container runtime mounts it (podman's
/// storage, writable above the image: runc makes its mount points there).
struct Rootfs {
    name: String,
    path: PathBuf,
}

impl Rootfs {
    fn of(image: &str) -> Rootfs {
        let name = format!("imds-rootfs-{}", std::process::id());
        let _ = Command::new("podman").args(["rm", "-f", &name]).output();
        sh(&["podman", "create", "--name", &name, image]);
        let path = PathBuf::from(sh(&["podman", "mount", &name]).trim());
        Rootfs { name, path }
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["umount", &self.name]).output();
        let _ = Command::new("podman").args(["rm", "-f", &self.name]).output();
    }
}

/// How a runtime sets a non-root container's capabilities before exec.
#[derive(Clone, Copy)]
enum Runtime {
    /// containerd and CRI-O: the added capabilities in the bounding,
    /// effective and permitted sets; none inheritable or ambient.
    Cri,
    /// Docker Engine (and cri-dockerd): in the bounding set only.
    DockerEngine,
}

/// A container runc runs in the lab's host netns from an OCI spec shaped
/// as a Kubernetes runtime writes it for the DaemonSet's container: its
/// user, capabilities (`caps`, set as `runtime` sets them), no_new_privs,
/// read-only root and host mounts (the lock's from `lock`), the host
/// network and no other host namespace. The default seccomp profile is
/// left out, as podman's is above. Deleted on drop.
struct Runc {
    id: String,
    bundle: PathBuf,
}

impl Runc {
    fn new(
        rootfs: &Rootfs,
        d: &AsDeployed,
        caps: &[&str],
        runtime: Runtime,
        lock: &Path,
        args: &[&str],
    ) -> Runc {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("imds-cri-{}-{n}", std::process::id());
        let bundle = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir(&bundle).unwrap();
        sh(&["runc", "spec", "--bundle", bundle.to_str().unwrap()]);
        let config = bundle.join("config.json");
        let mut spec: Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        spec["root"] = serde_json::json!({"path": rootfs.path, "readonly": d.read_only_root});
        let caps: Vec<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
        let p = &mut spec["process"];
        p["terminal"] = false.into();
        p["user"] = serde_json::json!({"uid": d.uid, "gid": d.gid});
        // The image's entrypoint, then the container's arguments.
        p["args"] = std::iter::once("/imds-observer").chain(args.iter().copied()).collect();
        p["env"] = serde_json::json!(["NODE_NAME=lab-node", "RUST_LOG=info"]);
        p["capabilities"] = match runtime {
            Runtime::Cri => {
                serde_json::json!({"bounding": caps, "effective": caps, "permitted": caps})
            }
            Runtime::DockerEngine => serde_json::json!({"bounding": caps}),
        };
        p["noNewPrivileges"] = d.no_new_privs.into();
        // Containers may not raise rlimits here (machine notes).
        p.as_object_mut().unwrap().remove("rlimits");
        // hostNetwork: no network namespace of its own (runc runs in the
        // lab's host netns); hostPID false: a PID namespace of its own.
        let ns = spec["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        assert!(ns.iter().any(|n| n["type"] == "pid"));
        let mounts = spec["mounts"].as_array_mut().unwrap();
        mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
        for (host, path, ro) in &d.mounts {
            let source = if path == "/run/imds-observer" { lock.to_str().unwrap() } else { host };
            mounts.push(serde_json::json!({
                "destination": path, "type": "bind", "source": source,
                "options": ["rbind", if *ro { "ro" } else { "rw" }]
            }));
        }
        std::fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        Runc { id, bundle }
    }

    /// `runc run` in the lab's host netns; its stdio are the observer's.
    fn command(&self, lab: &Lab) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", lab.host))
            .args(["runc", "run", "--bundle"])
            .arg(&self.bundle)
            .arg(&self.id);
        cmd
    }

    /// The observer's pid on the host.
    fn pid(&self) -> u32 {
        let state: Value = serde_json::from_str(&sh(&["runc", "state", &self.id])).unwrap();
        state["pid"].as_u64().unwrap() as u32
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.id]).output();
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// An image, removed when dropped (the test passing or not).
struct Image(&'static str);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["image", "umount", self.0]).output();
        let _ = Command::new("podman").args(["rmi", "-f", self.0]).output();
    }
}

#[test]
#[ignore = "lab: needs root and podman; run `cargo xtask test`"]
fn arm64_image_is_built_from_the_static_aarch64_binary() {
    // The cross-built binary (`cargo xtask release`): a static aarch64 ELF,
    // nothing for a Graviton node to load at run time.
    let bin = release_binary("arm64");
    let what = sh(&["file", "-b", bin.to_str().unwrap()]);
    assert!(what.contains("ELF 64-bit LSB") && what.contains("ARM aarch64"), "{what}");
    assert!(what.contains("statically linked") || what.contains("static-pie linked"), "{what}");
    // Containerfile.local for linux/arm64 on this (amd64) host: the
    // manifest says arm64, and the image holds that binary with the
    // image's file capabilities.
    let image = Image("localhost/imds-observer:lab-arm64");
    build_local_image("arm64", image.0).unwrap();
    let platform =
        sh(&["podman", "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", image.0]);
    assert_eq!(platform.trim(), "linux/arm64");
    let root = PathBuf::from(sh(&["podman", "image", "mount", image.0]).trim());
    let inside = root.join("imds-observer");
    assert_eq!(std::fs::read(&inside).unwrap(), std::fs::read(&bin).unwrap(), "the staged binary");
    let getcap = sh(&["getcap", inside.to_str().unwrap()]);
    let d = AsDeployed::read();
    for c in &d.caps {
        assert!(getcap.contains(&format!("cap_{}", c.to_lowercase())), "{getcap}");
    }
}

#[test]
#[ignore = "lab: needs root, podman and runc; run `cargo xtask test`"]
fn image_runs_under_the_daemonsets_security_context_as_containerd_runs_it() {
    build_local_image("amd64", IMAGE).unwrap();
    let d = AsDeployed::read();
    let caps: Vec<&str> = d.caps.iter().map(String::as_str).collect();
    let rootfs = Rootfs::of(IMAGE);
    // The image's binary: permitted file capabilities, no effective bit.
    let getcap = sh(&["getcap", rootfs.path.join("imds-observer").to_str().unwrap()]);
    for c in &d.caps {
        assert!(getcap.contains(&format!("cap_{}", c.to_lowercase())), "{getcap}");
    }
    assert!(getcap.trim_end().ends_with("=p"), "{getcap}");
    // The lock's hostPath as the kubelet makes it: root's, 0755.
    let lock = KubeletDir::new("cri-lock");
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let c = lab.add_container("app", Attach::Routed);

    let agent = Runc::new(&rootfs, &d, &caps, Runtime::Cri, &lock.0, &PACKETS);
    let obs = Observer::spawn(agent.command(&lab));
    assert_runs_as_deployed(agent.pid(), &d, d.no_new_privs);
    // One observer per node: a second pod's is refused, on the lock of the
    // directory (the observer cannot create a file in the kubelet's).
    let err = refused(Runc::new(&rootfs, &d, &caps, Runtime::Cri, &lock.0, &BRIEF).command(&lab));
    assert!(err.contains("already running") && err.contains("lock /run/imds-observer)"), "{err}");
    assert_eq!(std::fs::read_dir(&lock.0).unwrap().count(), 0, "nothing written to the host");
    c.sdk("js-v2", "http://169.254.169.254");
    assert_diagnoses(&obs, &c);
    obs.stop();

    // A capability the manifest does not add is named.
    let fewer: Vec<&str> = caps.iter().copied().filter(|c| *c != "NET_ADMIN").collect();
    let err = refused(Runc::new(&rootfs, &d, &fewer, Runtime::Cri, &lock.0, &BRIEF).command(&lab));
    assert!(
        err.contains("missing capabilities: CAP_NET_ADMIN.") && !err.contains("bounding"),
        "{err}"
    );

    // Docker Engine's way (bounding set only): under no_new_privs the file
    // capabilities grant nothing, and the observer says why.
    let docker = AsDeployed { no_new_privs: true, ..AsDeployed::read() };
    let err = refused(
        Runc::new(&rootfs, &docker, &caps, Runtime::DockerEngine, &lock.0, &BRIEF).command(&lab),
    );
    assert!(err.contains("missing capabilities: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN."), "{err}");
    assert!(
        err.contains("no_new_privs kept") && err.contains("allowPrivilegeEscalation: true"),
        "{err}"
    );
    // And without no_new_privs it runs.
    let docker = AsDeployed { no_new_privs: false, ..AsDeployed::read() };
    let agent = Runc::new(&rootfs, &docker, &caps, Runtime::DockerEngine, &lock.0, &PACKETS);
    let obs = Observer::spawn(agent.command(&lab));
    assert_runs_as_deployed(agent.pid(), &docker, false);
    obs.stop();
}
