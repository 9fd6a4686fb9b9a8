//! The lab: one machine, no route to any real network. A "cloud" netns runs
//! the fake IMDS; a "host" netns (forwarding on) is its only neighbour;
//! containers sit behind the host on routed veths, on a bridge with
//! masquerade NAT (as Docker's default network), or behind a router netns
//! (one more forwarding hop). Each container process runs in its own cgroup
//! v2 child. Everything is named `imdslab<pid>…` and removed on drop, also
//! when a test panics.
//!
//! Addresses: 198.18.0.0/15 (reserved for benchmarking, never routed) and
//! fd00:18::/32; the metadata addresses exist only inside the cloud netns.
pub mod fleet;

use std::{
    fs,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub use serde_json::Value;

pub const IMDS_V4: &str = "169.254.169.254";
pub const IMDS_V6: &str = "fd00:ec2::254";
pub const ECS_CREDS: &str = "169.254.170.2";

/// Run a command; panic with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out =
        Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like `sh`, ignoring failure (cleanup).
fn sh_quiet(args: &[&str]) {
    let _ =
        Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}
extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Directory holding this build's binaries (target/<profile>).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A binary built in this workspace: `imds-observer`, `fake-imds`, `sdk-client`.
/// `IMDS_OBSERVER_BIN` overrides the observer's path.
pub fn bin(name: &str) -> PathBuf {
    if name == "imds-observer" {
        if let Ok(p) = std::env::var("IMDS_OBSERVER_BIN") {
            return p.into();
        }
    }
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo xtask test` (it builds everything first)",
        p.display()
    );
    p
}

/// The observer as the image ships it: `IMDS_OBSERVER_BIN`, else the static
/// release build `cargo xtask test` makes.
pub fn shipped_observer_bin() -> PathBuf {
    if let Ok(p) = std::env::var("IMDS_OBSERVER_BIN") {
        return p.into();
    }
    let p = bin_dir().parent().unwrap().join("x86_64-unknown-linux-musl/release/imds-observer");
    assert!(p.exists(), "{} is not built: run `cargo xtask test`", p.display());
    p
}

/// The running kernel passes a drop reason to skb:kfree_skb (5.17+). The
/// lab may read the version; the observer reads the tracepoint's BTF.
pub fn kernel_has_drop_reasons() -> bool {
    kernel_version() >= (5, 17)
}

/// tc programs attach as TCX links (6.6+); before, as netlink filters.
pub fn kernel_has_tcx() -> bool {
    kernel_version() >= (6, 6)
}

fn kernel_version() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v =
        release.trim().split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0))
}

/// The cgroup v2 mount (pure cgroup2 hosts: /sys/fs/cgroup; hybrid: unified).
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut found = Vec::new();
    for line in mounts.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                found.push(PathBuf::from(mp));
            }
        }
    }
    found
        .iter()
        .find(|p| p == &Path::new("/sys/fs/cgroup"))
        .or(found.first())
        .cloned()
        .expect("no cgroup2 mount on this machine")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokens {
    Optional,
    Required,
}

pub struct LabOpts {
    pub hop_limit: u8,
    pub tokens: Tokens,
}

impl Default for LabOpts {
    fn default() -> Self {
        Self { hop_limit: 1, tokens: Tokens::Optional }
    }
}

pub struct ClientRun {
    pub pid: u32,
    pub code: i32,
    pub lines: Vec<Value>,
}

/// How a container reaches the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// Its own veth, routed by the host (one forwarding hop).
    Routed,
    /// A veth on the host's bridge, masqueraded to the uplink (one hop, NAT).
    Bridge,
    /// Behind a router netns behind the host (two forwarding hops).
    Router,
}

pub struct Container {
    pub name: String,
    pub netns: String,
    pub cgroup: PathBuf,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// A cgroup joined before `cgroup` (the cgroup2 root, for a container
    /// that only has a cgroup v1 cgroup of its own).
    pub first_cgroup: Option<PathBuf>,
}

impl Container {
    /// Path of its cgroup below the cgroup2 root, as the observer reports it.
    pub fn cgroup_rel(&self) -> String {
        let root = cgroup2_root();
        format!("/{}", self.cgroup.strip_prefix(&root).unwrap().display())
    }

    pub fn cgroup_id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&self.cgroup).unwrap().ino()
    }

    /// A command run inside the container's netns and cgroup.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        match &self.first_cgroup {
            None => netns_cgroup_command(&self.netns, Some(&self.cgroup), program, args),
            Some(first) => {
                let mut inner =
                    vec!["sh", "-c", "echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"", "sh"];
                let cg = self.cgroup.to_str().unwrap();
                inner.push(cg);
                inner.push(program.to_str().unwrap());
                inner.extend_from_slice(args);
                netns_cgroup_command(&self.netns, Some(first), Path::new("sh"), &inner[1..])
            }
        }
    }

    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        self.command(program, args).output().expect("spawn in container")
    }

    /// Run a lab client (sdk-client, a real SDK) to completion; its pid, exit
    /// code and the JSON lines it printed (its own view of its attempts).
    pub fn client(&self, program: &Path, args: &[&str], env: &[(&str, &str)]) -> ClientRun {
        let mut cmd = self.command(program, args);
        cmd.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("start client");
        let pid = child.id();
        let out = child.wait_with_output().expect("wait for client");
        ClientRun {
            pid,
            code: out.status.code().unwrap_or(-1),
            lines: String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        }
    }

    /// The lab's SDK stand-in with one of its profiles (js-v2, botocore,
    /// rust, v1-only, token-only) against `endpoint`.
    pub fn sdk(&self, profile: &str, endpoint: &str) -> ClientRun {
        self.client(&bin("sdk-client"), &["--profile", profile, "--endpoint", endpoint], &[])
    }
}

/// `nsenter --net` rather than `ip netns exec`: the latter remounts /sys,
/// hiding the cgroup tree from the process.
fn netns_cgroup_command(
    netns: &str,
    cgroup: Option<&Path>,
    program: &Path,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}")).arg("--");
    if let Some(cg) = cgroup {
        // Join the cgroup before exec, so the first packet is already in it.
        cmd.args(["sh", "-c", "echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"", "sh"]);
        cmd.arg(cg);
    }
    cmd.arg(program).args(args);
    cmd
}

pub struct Lab {
    pub id: String,
    pub cloud: String,
    pub host: String,
    pub opts: LabOpts,
    cgroup_parent: PathBuf,
    netns: Vec<String>,
    containers: usize,
    bridge: bool,
    children: Vec<Child>,
    /// cgroups this lab made in the cgroup v1 hierarchy.
    v1_cgroups: Vec<PathBuf>,
}

impl Lab {
    /// Cloud + host netns, the fake IMDS listening, no containers yet.
    pub fn new(opts: LabOpts) -> Lab {
        assert!(is_root(), "lab tests need root (run `cargo xtask test`)");
        let id = format!("imdslab{}", std::process::id() % 100_000);
        let mut lab = Lab {
            cloud: format!("{id}-cloud"),
            host: format!("{id}-host"),
            cgroup_parent: cgroup2_root().join(&id),
            id,
            opts,
            netns: Vec::new(),
            containers: 0,
            bridge: false,
            children: Vec::new(),
            v1_cgroups: Vec::new(),
        };
        lab.cleanup(); // a previous run of this pid, killed hard
        lab.add_netns(&lab.cloud.clone());
        lab.add_netns(&lab.host.clone());
        fs::create_dir_all(&lab.cgroup_parent).expect("create lab cgroup");
        let (cloud, host) = (lab.cloud.clone(), lab.host.clone());

        sh(&[
            "ip", "-n", &host, "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0",
            "netns", &cloud,
        ]);
        for (ns, dev, v4, v6) in [
            (&cloud, "eth0", "198.18.0.1/24", "fd00:18::1/64"),
            (&host, "uplink0", "198.18.0.2/24", "fd00:18::2/64"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for a in [IMDS_V4, ECS_CREDS, "169.254.170.23"] {
            sh(&["ip", "-n", &cloud, "addr", "add", &format!("{a}/32"), "dev", "eth0"]);
        }
        for a in [IMDS_V6, "fd00:ec2::23"] {
            sh(&["ip", "-n", &cloud, "addr", "add", &format!("{a}/128"), "dev", "eth0", "nodad"]);
        }
        sh(&["ip", "-n", &cloud, "route", "add", "default", "via", "198.18.0.2"]);
        sh(&["ip", "-n", &cloud, "-6", "route", "add", "default", "via", "fd00:18::2"]);
        sh(&["ip", "-n", &host, "route", "add", "default", "via", "198.18.0.1"]);
        sh(&["ip", "-n", &host, "-6", "route", "add", "default", "via", "fd00:18::1"]);
        lab.forwarding(&host.clone());

        // The fake IMDS, with the hop limit on its token replies.
        let hop = lab.opts.hop_limit.to_string();
        let tokens = match lab.opts.tokens {
            Tokens::Optional => "optional",
            Tokens::Required => "required",
        };
        let mut imds = netns_cgroup_command(
            &cloud,
            None,
            &bin("fake-imds"),
            &[
                "--listen",
                "169.254.169.254:80",
                "--listen",
                "[fd00:ec2::254]:80",
                "--hop-limit",
                &hop,
                "--tokens",
                tokens,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fake-imds");
        let mut ready = String::new();
        BufReader::new(imds.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "fake-imds did not start");
        lab.children.push(imds);
        lab
    }

    fn add_netns(&mut self, name: &str) {
        sh(&["ip", "netns", "add", name]);
        self.netns.push(name.to_string());
        // No duplicate address detection: a tentative link-local address
        // stalls neighbour discovery for the first second or two.
        sh(&[
            "ip",
            "netns",
            "exec",
            name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
    }

    fn forwarding(&self, ns: &str) {
        sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    }

    fn new_cgroup(&self, name: &str) -> PathBuf {
        let cg = self.cgroup_parent.join(name);
        fs::create_dir_all(&cg).expect("create container cgroup");
        cg
    }

    /// A cgroup at `rel` below the lab's cgroup (parents created), for a
    /// path that follows a runtime's convention, e.g.
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
    /// Put a container in it with `c.cgroup = lab.cgroup_at(...)`; removed
    /// with the lab.
    pub fn cgroup_at(&self, rel: &str) -> PathBuf {
        self.new_cgroup(rel.trim_start_matches('/'))
    }

    /// Start a helper (a fake API server, say) in the host netns; its first
    /// line on stdout (e.g. `ready <port>`). Killed with the lab.
    pub fn start_in_host(&mut self, program: &Path, args: &[&str]) -> String {
        let mut child = netns_cgroup_command(&self.host, None, program, args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        self.children.push(child);
        line.trim().to_string()
    }

    /// The fake Kubernetes API server and Nomad agent (bin
    /// fake-orchestrator) on the lab host's loopback, serving `config` (its
    /// keys: pods, allocs, kube_token, nomad_token, events_forbidden, and
    /// containers: then a fake Docker API at `docker_socket` too), and a
    /// kubeconfig that reaches it with `config["kube_token"]`.
    pub fn fake_orchestrator(&mut self, config: Value) -> Orchestrator {
        let dir = std::env::temp_dir().join(format!("{}-orchestrator", self.id));
        fs::create_dir_all(&dir).unwrap();
        let mut o = Orchestrator {
            log: dir.join("requests.log"),
            kubeconfig: dir.join("kubeconfig"),
            nomad_addr: String::new(),
            docker_socket: dir.join("docker.sock"),
            dir,
        };
        let mut config = config;
        if config["containers"].is_array() {
            config["docker_socket"] = o.docker_socket.to_str().unwrap().into();
        }
        let config_file = o.dir.join("orchestrator.json");
        fs::write(&config_file, config.to_string()).unwrap();
        let ready = self.start_in_host(
            &bin("fake-orchestrator"),
            &["--config", config_file.to_str().unwrap(), "--log", o.log.to_str().unwrap()],
        );
        let ports: Vec<&str> = ready
            .strip_prefix("ready ")
            .expect("fake-orchestrator's ready line")
            .split(' ')
            .collect();
        let token = config["kube_token"].as_str().unwrap_or_default();
        fs::write(
            &o.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: lab\n\
                 clusters:\n- name: lab\n  cluster:\n    server: http://127.0.0.1:{}\n\
                 users:\n- name: lab\n  user:\n    token: {token}\n\
                 contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n",
                ports[0]
            ),
        )
        .unwrap();
        o.nomad_addr = format!("http://127.0.0.1:{}", ports[1]);
        o
    }

    /// A container in a pod's cgroup, named as containerd names it under the
    /// systemd cgroup driver.
    pub fn add_pod_container(&mut self, name: &str, pod_uid: &str, cid: &str) -> Container {
        let mut c = self.add_container(name, Attach::Bridge);
        let _ = fs::remove_dir(&c.cgroup);
        c.cgroup = self.cgroup_at(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
            pod_uid.replace('-', "_")
        ));
        c
    }

    /// A container netns wired to the host as `attach` says.
    pub fn add_container(&mut self, name: &str, attach: Attach) -> Container {
        self.containers += 1;
        let n = self.containers as u8;
        let netns = format!("{}-{name}", self.id);
        self.add_netns(&netns);
        let host = self.host.clone();
        let (v4, v6);
        match attach {
            Attach::Routed => {
                let hv = format!("veth{n}");
                sh(&[
                    "ip", "-n", &host, "link", "add", &hv, "type", "veth", "peer", "name", "eth0",
                    "netns", &netns,
                ]);
                sh(&[
                    "ip",
                    "-n",
                    &host,
                    "addr",
                    "add",
                    &format!("198.18.{}.1/24", 10 + n),
                    "dev",
                    &hv,
                ]);
                sh(&[
                    "ip",
                    "-n",
                    &host,
                    "addr",
                    "add",
                    &format!("fd00:18:{n}::1/64"),
                    "dev",
                    &hv,
                    "nodad",
                ]);
                sh(&["ip", "-n", &host, "link", "set", &hv, "up"]);
                v4 = Ipv4Addr::new(198, 18, 10 + n, 2);
                v6 = format!("fd00:18:{n}::2").parse().unwrap();
                self.container_side(
                    &netns,
                    v4,
                    v6,
                    &format!("198.18.{}.1", 10 + n),
                    &format!("fd00:18:{n}::1"),
                    24,
                );
            }
            Attach::Bridge => {
                self.ensure_bridge();
                let hv = format!("veth{n}");
                sh(&[
                    "ip", "-n", &host, "link", "add", &hv, "type", "veth", "peer", "name", "eth0",
                    "netns", &netns,
                ]);
                sh(&["ip", "-n", &host, "link", "set", &hv, "master", "br0", "up"]);
                v4 = Ipv4Addr::new(198, 18, 100, 1 + n);
                v6 = format!("fd00:18:100::{}", 1 + n).parse().unwrap();
                self.container_side(&netns, v4, v6, "198.18.100.1", "fd00:18:100::1", 24);
            }
            Attach::Router => {
                // host --(198.18.(50+n).0/24)-- router --(198.18.(60+n).0/24)-- container
                let router = format!("{}-rt{n}", self.id);
                self.add_netns(&router);
                self.forwarding(&router);
                let hv = format!("vr{n}");
                sh(&[
                    "ip", "-n", &host, "link", "add", &hv, "type", "veth", "peer", "name", "up0",
                    "netns", &router,
                ]);
                sh(&[
                    "ip",
                    "-n",
                    &host,
                    "addr",
                    "add",
                    &format!("198.18.{}.1/24", 50 + n),
                    "dev",
                    &hv,
                ]);
                sh(&[
                    "ip",
                    "-n",
                    &host,
                    "addr",
                    "add",
                    &format!("fd00:18:5{n}::1/64"),
                    "dev",
                    &hv,
                    "nodad",
                ]);
                sh(&["ip", "-n", &host, "link", "set", &hv, "up"]);
                sh(&[
                    "ip",
                    "-n",
                    &router,
                    "addr",
                    "add",
                    &format!("198.18.{}.2/24", 50 + n),
                    "dev",
                    "up0",
                ]);
                sh(&[
                    "ip",
                    "-n",
                    &router,
                    "addr",
                    "add",
                    &format!("fd00:18:5{n}::2/64"),
                    "dev",
                    "up0",
                    "nodad",
                ]);
                sh(&["ip", "-n", &router, "link", "set", "up0", "up"]);
                sh(&["ip", "-n", &router, "link", "set", "lo", "up"]);
                sh(&[
                    "ip",
                    "-n",
                    &router,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("198.18.{}.1", 50 + n),
                ]);
                sh(&[
                    "ip",
                    "-n",
                    &router,
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("fd00:18:5{n}::1"),
                ]);
                sh(&[
                    "ip", "-n", &router, "link", "add", "down0", "type", "veth", "peer", "name",
                    "eth0", "netns", &netns,
                ]);
                sh(&[
                    "ip",
                    "-n",
                    &router,
                    "addr",
                    "add",
                    &format!("198.18.{}.1/24", 60 + n),
                    "dev",
                    "down0",
                ]);
                sh(&[
                    "ip",
                    "-n",
                    &router,
                    "addr",
                    "add",
                    &format!("fd00:18:6{n}::1/64"),
                    "dev",
                    "down0",
                    "nodad",
                ]);
                sh(&["ip", "-n", &router, "link", "set", "down0", "up"]);
                sh(&[
                    "ip",
                    "-n",
                    &host,
                    "route",
                    "add",
                    &format!("198.18.{}.0/24", 60 + n),
                    "via",
                    &format!("198.18.{}.2", 50 + n),
                ]);
                sh(&[
                    "ip",
                    "-n",
                    &host,
                    "-6",
                    "route",
                    "add",
                    &format!("fd00:18:6{n}::/64"),
                    "via",
                    &format!("fd00:18:5{n}::2"),
                ]);
                v4 = Ipv4Addr::new(198, 18, 60 + n, 2);
                v6 = format!("fd00:18:6{n}::2").parse().unwrap();
                self.container_side(
                    &netns,
                    v4,
                    v6,
                    &format!("198.18.{}.1", 60 + n),
                    &format!("fd00:18:6{n}::1"),
                    24,
                );
            }
        }
        // Resolve the neighbours on the path now (container, host, cloud),
        // so that a test's first SYN is not held up by neighbour discovery:
        // a closed port on the cloud's own (non-metadata) address.
        sh_quiet(&[
            "nsenter",
            &format!("--net=/run/netns/{netns}"),
            "bash",
            "-c",
            "timeout 3 bash -c 'exec 3<>/dev/tcp/198.18.0.1/9'; timeout 3 bash -c 'exec 3<>/dev/tcp/fd00:18::1/9'",
        ]);
        Container {
            name: name.to_string(),
            cgroup: self.new_cgroup(name),
            netns,
            v4,
            v6,
            first_cgroup: None,
        }
    }

    /// A container as on a cgroup v1 host (Docker on Amazon Linux 2): its
    /// processes sit in the cgroup2 root, in no cgroup2 cgroup of their own,
    /// and in `/docker/<id>` of a cgroup v1 hierarchy (a named one the lab
    /// mounts, so no controller is taken from the machine). `id` must be
    /// unique to this lab.
    pub fn add_v1_container(&mut self, name: &str, attach: Attach, id: &str) -> Container {
        let mut c = self.add_container(name, attach);
        remove_cgroup_tree(&c.cgroup);
        let v1 = self.v1_hierarchy();
        c.cgroup = v1.join("docker").join(id);
        fs::create_dir_all(&c.cgroup).expect("create v1 cgroup");
        self.v1_cgroups.push(c.cgroup.clone());
        c.first_cgroup = Some(cgroup2_root());
        c
    }

    /// The lab's mount of the cgroup v1 hierarchy, on first use. One named
    /// hierarchy serves every lab: once a cgroup was made in it, the kernel
    /// keeps a hierarchy after its last umount, and a name per lab would
    /// leave one behind per run.
    fn v1_hierarchy(&mut self) -> PathBuf {
        let mp = self.v1_mount();
        if !mp.join("cgroup.procs").exists() {
            fs::create_dir_all(&mp).expect("v1 mountpoint");
            sh(&[
                "mount",
                "-t",
                "cgroup",
                "-o",
                "none,name=imdslab",
                "cgroup",
                mp.to_str().unwrap(),
            ]);
        }
        mp
    }

    fn v1_mount(&self) -> PathBuf {
        PathBuf::from(format!("/run/{}-cgroup-v1", self.id))
    }
    fn container_side(
        &self,
        netns: &str,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
        gw4: &str,
        gw6: &str,
        plen: u8,
    ) {
        sh(&["ip", "-n", netns, "addr", "add", &format!("{v4}/{plen}"), "dev", "eth0"]);
        sh(&["ip", "-n", netns, "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        sh(&["ip", "-n", netns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", netns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", netns, "route", "add", "default", "via", gw4]);
        sh(&["ip", "-n", netns, "-6", "route", "add", "default", "via", gw6]);
    }

    fn ensure_bridge(&mut self) {
        if self.bridge {
            return;
        }
        let host = self.host.clone();
        // A MAC of its own, as Docker gives docker0: otherwise the bridge
        // takes its lowest port's, which changes as containers are added,
        // and containers that resolved the gateway earlier send to a MAC
        // the bridge no longer has (dropped: OTHERHOST).
        sh(&[
            "ip",
            "-n",
            &host,
            "link",
            "add",
            "br0",
            "address",
            "02:42:c6:12:64:01",
            "type",
            "bridge",
        ]);
        sh(&["ip", "-n", &host, "addr", "add", "198.18.100.1/24", "dev", "br0"]);
        sh(&["ip", "-n", &host, "addr", "add", "fd00:18:100::1/64", "dev", "br0", "nodad"]);
        sh(&["ip", "-n", &host, "link", "set", "br0", "up"]);
        // Docker's default network: masquerade what leaves by the uplink.
        for (tool, net) in [("iptables", "198.18.100.0/24"), ("ip6tables", "fd00:18:100::/64")] {
            sh(&[
                "ip",
                "netns",
                "exec",
                &host,
                tool,
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                net,
                "-o",
                "uplink0",
                "-j",
                "MASQUERADE",
            ]);
        }
        self.bridge = true;
    }

    /// Stop and remove a container: its processes, netns and cgroup.
    pub fn remove(&mut self, c: Container) {
        if c.netns != self.host {
            sh_quiet(&["ip", "netns", "del", &c.netns]);
            self.netns.retain(|n| n != &c.netns);
        }
        remove_cgroup_tree(&c.cgroup);
    }

    /// A process in the host netns (host networking), in its own cgroup.
    pub fn host_process(&mut self, name: &str) -> Container {
        Container {
            name: name.to_string(),
            netns: self.host.clone(),
            cgroup: self.new_cgroup(name),
            v4: Ipv4Addr::new(198, 18, 0, 2),
            v6: "fd00:18::2".parse().unwrap(),
            first_cgroup: None,
        }
    }

    /// A plain peer netns on the host's side (not a metadata endpoint) with a
    /// TCP and UDP echo responder, for "other traffic makes no event".
    pub fn add_peer(&mut self) -> IpAddr {
        let c = self.add_container("peer", Attach::Routed);
        let child = netns_cgroup_command(&c.netns, None, Path::new("sh"), &["-c", "sleep 600"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        IpAddr::V4(c.v4)
    }

    /// `GET path` from 127.0.0.1:`port` in the host netns (the observer's
    /// metrics and probes): the whole response, head and body.
    pub fn http_get(&self, port: u16, path: &str) -> String {
        self.http_get_at("127.0.0.1", port, path, 5)
    }

    /// `GET path` from the host netns to `addr`:`port`, waiting at most
    /// `secs` seconds for the answer (a probe's timeout).
    pub fn http_get_at(&self, addr: &str, port: u16, path: &str, secs: u32) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/{addr}/{port} && printf 'GET {path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout {secs} cat <&3"
        );
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host))
            .args(["bash", "-c", &script])
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start the observer in the host netns and wait until it captures,
    /// writing every packet (`--events packets`): what most lab tests look
    /// at, hook by hook.
    pub fn observer(&self, extra: &[&str]) -> Observer {
        self.observer_with_env(extra, &[])
    }

    /// `observer` with more environment (KUBECONFIG, NOMAD_ADDR, ...).
    pub fn observer_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Observer {
        let mut args = vec!["run", "--events", "packets"];
        args.extend_from_slice(extra);
        Observer::start(&self.host, &args, env)
    }

    /// The observer as deployed: `run` with its default output (findings,
    /// exchanges that went wrong, summaries).
    pub fn observer_as_deployed(&self, extra: &[&str]) -> Observer {
        self.observer_as_deployed_with_env(extra, &[])
    }

    pub fn observer_as_deployed_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Observer {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        Observer::start(&self.host, &args, env)
    }

    /// `observer` (all packets), started through `wrapper` (a program and
    /// its arguments, which then runs the observer's binary and `extra`:
    /// e.g. setpriv dropping root).
    pub fn observer_through(&self, wrapper: &[&str], extra: &[&str]) -> Observer {
        let observer = bin("imds-observer");
        let mut args: Vec<&str> = wrapper[1..].to_vec();
        args.extend([observer.to_str().unwrap(), "run", "--events", "packets"]);
        args.extend_from_slice(extra);
        Observer::start_bin(Path::new(wrapper[0]), &self.host, &args, &[])
    }

    /// `observer`, with the binary the image ships (the static release
    /// build): for what memory and speed are measured on. `extra` says the
    /// `--events` level (default: problems).
    pub fn shipped_observer(&self, extra: &[&str]) -> Observer {
        self.shipped_observer_with_env(extra, &[])
    }

    pub fn shipped_observer_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Observer {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        Observer::start_bin(&shipped_observer_bin(), &self.host, &args, env)
    }

    /// Any observer command (`report ...`) in the host netns, once capturing.
    pub fn observer_cmd(&self, args: &[&str]) -> Observer {
        Observer::start(&self.host, args, &[])
    }

    fn cleanup(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        // Every netns of this lab, also those of a run killed before.
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        for line in String::from_utf8_lossy(&listed).lines() {
            let ns = line.split_whitespace().next().unwrap_or("");
            if ns.starts_with(&format!("{}-", self.id)) {
                // Processes left in it would keep it alive.
                sh_quiet(&["ip", "netns", "pids", ns]);
                if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        sh_quiet(&["kill", "-9", pid]);
                    }
                }
                sh_quiet(&["ip", "netns", "del", ns]);
            }
        }
        self.netns.clear();
        remove_cgroup_tree(&self.cgroup_parent);
        let v1 = self.v1_mount();
        if v1.join("cgroup.procs").exists() {
            for cg in self.v1_cgroups.drain(..) {
                remove_cgroup_tree(&cg);
            }
            // Shared with other labs: removed only once empty.
            let _ = fs::remove_dir(v1.join("docker"));
            sh_quiet(&["umount", v1.to_str().unwrap()]);
        }
        let _ = fs::remove_dir(&v1);
    }
}

/// Kill what is left in a cgroup subtree, then remove it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                sh_quiet(&["kill", "-9", pid]);
            }
        }
        if fs::remove_dir(dir).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What `Lab::fake_orchestrator` started; its files go with it, its process
/// with the lab.
pub struct Orchestrator {
    pub dir: PathBuf,
    /// A line per request it answered.
    pub log: PathBuf,
    pub kubeconfig: PathBuf,
    /// The fake Nomad agent, for NOMAD_ADDR.
    pub nomad_addr: String,
    /// The fake Docker API, for --runtime-socket (when `containers` is
    /// configured).
    pub docker_socket: PathBuf,
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running pod as the API server lists it: on `node`, its one container
/// `api` under containerd with id `cid`.
pub fn pod_json(node: &str, uid: &str, name: &str, cid: &str, labels: Value) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "payments", "uid": uid, "resourceVersion": "42",
            "labels": labels,
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-02T09:14:07Z"}
        },
        "spec": {"nodeName": node, "containers": [{"name": "api", "image": "registry.example/api:1.42"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "api", "image": "registry.example/api:1.42", "imageID": "registry.example/api@sha256:0d4e",
            "containerID": format!("containerd://{cid}"), "ready": true, "restartCount": 0
        }]}
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A running `imds-observer run` and the JSON lines it wrote so far.
pub struct Observer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// While set, nobody reads its stdout (a stalled log pipe).
    stdout_paused: Arc<AtomicBool>,
}

impl Observer {
    fn start(host_netns: &str, args: &[&str], env: &[(&str, &str)]) -> Observer {
        Observer::start_bin(&bin("imds-observer"), host_netns, args, env)
    }

    fn start_bin(
        program: &Path,
        host_netns: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Observer {
        let mut cmd = netns_cgroup_command(host_netns, None, program, args);
        cmd.env("NODE_NAME", "lab-node")
            .envs(env.iter().copied())
            .env("RUST_LOG", std::env::var("LAB_RUST_LOG").unwrap_or("info".into()));
        Observer::spawn(cmd)
    }

    /// Start `cmd`, an observer however it is wrapped (a container runtime
    /// that passes its stdio through and forwards signals), and wait until
    /// it is capturing.
    pub fn spawn(mut cmd: Command) -> Observer {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start imds-observer");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout_paused = Arc::new(AtomicBool::new(false));
        let (l, out, paused) = (lines.clone(), child.stdout.take().unwrap(), stdout_paused.clone());
        thread::spawn(move || {
            let mut out = BufReader::new(out);
            let mut line = String::new();
            loop {
                while paused.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(10));
                }
                line.clear();
                match out.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        l.lock().unwrap().push(line.trim_end_matches(['\n', '\r']).to_string())
                    }
                }
            }
        });
        let (e, err) = (stderr.clone(), child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                e.lock().unwrap().push(line);
            }
        });
        let obs = Observer { child, lines, stderr, stdout_paused };
        let t0 = Instant::now();
        loop {
            if obs.stderr.lock().unwrap().iter().any(|l| l.contains("capturing")) {
                return obs;
            }
            if let Some(l) =
                obs.stderr.lock().unwrap().iter().find(|l| l.contains("imds-observer:"))
            {
                panic!("observer failed: {l}");
            }
            // Seconds on a host; an emulated arm64 guest running beside the
            // host lab (CI) took over 30 s to verify and attach.
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "observer did not start: {:?}",
                obs.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop (true) or resume (false) reading its stdout, as a stalled log
    /// driver would: once the pipe is full, its writes block.
    pub fn pause_stdout(&self, paused: bool) {
        self.stdout_paused.store(paused, Ordering::Relaxed);
    }

    /// Resident memory now, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("observer VmRSS")
    }

    /// The events written so far, parsed.
    pub fn events(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).expect("observer wrote a line that is not JSON"))
            .collect()
    }

    /// Raw stdout so far.
    /// The observer's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the observer is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Lines and bytes (newlines included) written to stdout so far.
    pub fn output_size(&self) -> (u64, u64) {
        let lines = self.lines.lock().unwrap();
        (lines.len() as u64, lines.iter().map(|l| l.len() as u64 + 1).sum())
    }

    pub fn raw(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Wait until `pred` holds for some event (or time out).
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.events().into_iter().find(|e| pred(e)) {
                return v;
            }
            assert!(
                t0.elapsed() < timeout,
                "no {what} within {timeout:?}; events:\n{}",
                self.raw()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until a line of its log contains `what` (or time out).
    pub fn wait_stderr(&self, what: &str, timeout: Duration) {
        let t0 = Instant::now();
        while !self.stderr.lock().unwrap().iter().any(|l| l.contains(what)) {
            assert!(
                t0.elapsed() < timeout,
                "no `{what}` in the log within {timeout:?}: {:#?}",
                self.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for it to exit by itself (--duration); its exit code and stdout.
    pub fn wait(mut self, timeout: Duration) -> (i32, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for observer") {
                break st;
            }
            assert!(t0.elapsed() < timeout, "observer still running after {timeout:?}");
            thread::sleep(Duration::from_millis(20));
        };
        thread::sleep(Duration::from_millis(100)); // let the readers finish
        (status.code().unwrap_or(-1), self.raw())
    }

    /// Let the last packets (and the engine's timeouts, `settle`) pass,
    /// check that no token or credential reached stdout or stderr (the fake
    /// IMDS marks every one), then stop: everything it wrote.
    pub fn finish(self, settle: Duration) -> Vec<Value> {
        thread::sleep(settle);
        let stderr = self.stderr.lock().unwrap().join("\n");
        let stdout = self.raw();
        for marker in ["FAKETOKEN", "FAKESECRET"] {
            assert!(!stdout.contains(marker), "a secret reached the observer's stdout");
            assert!(!stderr.contains(marker), "a secret reached the observer's stderr");
        }
        self.stop()
    }

    /// SIGINT, wait for exit, and return everything it wrote.
    pub fn stop(self) -> Vec<Value> {
        self.signal("INT")
    }

    /// Send `sig` (INT, TERM, KILL), wait for exit, return what it wrote.
    pub fn signal(mut self, sig: &str) -> Vec<Value> {
        sh_quiet(&["kill", &format!("-{sig}"), &self.child.id().to_string()]);
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(10), "observer did not exit on SIG{sig}");
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(100)); // let the readers finish
        if sig == "KILL" {
            return Vec::new(); // its last line may be cut short
        }
        self.events()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `finding` lines about the container whose cgroup path is `cgroup`.
pub fn findings_for<'a>(events: &'a [Value], cgroup: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == "finding" && e["container"]["cgroup"] == cgroup).collect()
}

/// Events of `kind` ("request", "drop", ...).
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The architectures the images are built for: (podman's and Kubernetes'
/// name, Rust's target).
pub const ARCHES: [(&str, &str); 2] =
    [("amd64", "x86_64-unknown-linux-musl"), ("arm64", "aarch64-unknown-linux-musl")];

/// The static release binary for `arch` ("amd64", "arm64"), as `cargo
/// xtask release` (and `cargo xtask test`) builds it.
pub fn release_binary(arch: &str) -> PathBuf {
    let (_, target) = ARCHES.iter().find(|(a, _)| *a == arch).expect("amd64 or arm64");
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(format!("target/{target}/release/imds-observer"))
}

/// The local image (Containerfile.local) for `arch` as `tag`, built as its
/// header says: the static release binary staged in target/image/<arch>
/// with the published image's file capabilities, then `podman build
/// --platform linux/<arch>`. The header's `install` and `setcap` lines run
/// as written, from the repository root, with its ARCH and TARGET, so the
/// documented steps are the ones tested.
pub fn build_local_image(arch: &str, tag: &str) -> Result<(), String> {
    let (_, target) =
        ARCHES.iter().find(|(a, _)| *a == arch).ok_or_else(|| format!("no {arch} build"))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let file = root.join("Containerfile.local");
    let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let steps: Vec<&str> = text
        .lines()
        .map_while(|l| l.strip_prefix('#'))
        .filter_map(|l| l.strip_prefix("   "))
        .map(str::trim)
        .filter(|c| c.starts_with("install ") || c.starts_with("setcap "))
        .collect();
    if steps.len() != 3 {
        return Err(format!(
            "Containerfile.local's header: expected install, install, setcap: {steps:?}"
        ));
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.current_dir(root).output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    for step in steps {
        run(Command::new("sh").args(["-c", step]).env("ARCH", arch).env("TARGET", target))?;
    }
    run(Command::new("podman")
        .args(["build", "-q", "--platform", &format!("linux/{arch}"), "-t", tag, "-f"])
        .arg(&file)
        .arg(root))
}

/// Real containers: podman (with runc; crun refuses hybrid cgroups) run in
/// the lab's host netns, so its bridge and NAT live there. Containers run a
/// busybox image built locally (no registry is reachable).
pub struct Podman {
    host: String,
    pub socket: PathBuf,
    service: Option<Child>,
    names: Vec<String>,
}

pub const BUSYBOX_IMAGE: &str = "localhost/imds-lab-busybox:1";

impl Podman {
    /// `api`: also serve the Docker-compatible API (`podman system service`).
    pub fn new(lab: &Lab, api: bool) -> Podman {
        let socket = std::env::temp_dir().join(format!("{}-podman.sock", lab.id));
        let _ = fs::remove_file(&socket);
        let mut p = Podman {
            host: lab.host.clone(),
            socket: socket.clone(),
            service: None,
            names: Vec::new(),
        };
        p.ensure_image();
        if api {
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", p.host))
                .args(["podman", "system", "service", "--time=0"])
                .arg(format!("unix://{}", socket.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start podman system service");
            p.service = Some(child);
            let t0 = Instant::now();
            while !socket.exists() {
                assert!(t0.elapsed() < Duration::from_secs(20), "podman API socket did not appear");
                thread::sleep(Duration::from_millis(50));
            }
        }
        p
    }

    fn ensure_image(&self) {
        if Command::new("podman")
            .args(["image", "exists", BUSYBOX_IMAGE])
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
        let root = std::env::temp_dir().join(format!("imds-lab-rootfs-{}", std::process::id()));
        let bin = root.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
        for tool in ["sh", "nc", "printf", "wget", "sleep", "cat", "timeout"] {
            std::os::unix::fs::symlink("busybox", bin.join(tool)).unwrap();
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Command::new("podman")
            .args(["import", "-", BUSYBOX_IMAGE])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        let tar_ok = tar.wait().map(|s| s.success()).unwrap_or(false);
        let _ = fs::remove_dir_all(&root);
        assert!(tar_ok, "tar of the busybox rootfs failed");
        assert!(out.status.success(), "podman import: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Run `script` in a new container named `name` (on podman's default
    /// bridge with NAT) to completion; returns its full id.
    pub fn run(&mut self, name: &str, script: &str) -> String {
        self.names.push(name.to_string());
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host))
            .args(["podman", "--runtime", "runc", "run", "-d", "--name", name])
            .args(["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=30000:30000"])
            .args([BUSYBOX_IMAGE, "sh", "-c", script])
            .output()
            .expect("podman run");
        assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let wait = Command::new("podman").args(["wait", name]).output().expect("podman wait");
        assert!(wait.status.success(), "podman wait: {}", String::from_utf8_lossy(&wait.stderr));
        id
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for n in &self.names {
            sh_quiet(&["podman", "rm", "-f", n]);
        }
        if let Some(mut s) = self.service.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = fs::remove_file(&self.socket);
    }
}

/// What the flood scenario measured.
pub struct FloodRun {
    /// Lines the observer wrote to stdout, for the whole run.
    pub lines: usize,
    pub peak_rss_kib: u64,
    /// Records of the flooding container its budgets held back, as
    /// reported: its cgroup's, and its interface's (`iface`: only the
    /// flood's packets come in by a veth and are dropped here).
    pub suppressed: u64,
    /// Records of the client next to it held back (there should be none).
    pub client_suppressed: u64,
    /// Records the ring could not take (`lost_events`).
    pub lost: u64,
    /// Packets the flood sent, as it counted them.
    pub sent: u64,
    /// The client's latest hop_limit_exceeded finding.
    pub client_finding: Option<Value>,
    pub seconds: u64,
}

/// How the flood's container floods.
#[derive(Clone, Copy, Debug)]
pub enum Flood {
    /// UDP to random ports, and 200 TCP connects to port 80 every 50 ms,
    /// from its own address.
    Connects,
    /// TTL-1 SYNs to port 80 from a raw socket, each from a new forged
    /// source address: the host drops every one in ip_forward.
    ForgedSyns,
}

/// One container floods the metadata address for `seconds` on a
/// hop-limit-1 host, while a js-v2 client one hop away fetches
/// credentials; the observer is the shipped binary. For the flood lab
/// tests and the bench.
pub fn flood_scenario(seconds: u64, flood_by: Flood) -> FloodRun {
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let flood = lab.add_container("flood", Attach::Routed);
    let client = lab.add_container("client", Attach::Routed);
    let obs = lab.shipped_observer(&[]);
    let script = match flood_by {
        Flood::Connects => format!(
            "import random, socket, time\n\
             end = time.time() + {seconds}\n\
             u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             n = 0\n\
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
             \x20   n += 600\n\
             \x20   time.sleep(0.05)\n\
             \x20   for s in socks: s.close()\n\
             print(n)\n"
        ),
        // IPPROTO_RAW: the header is ours (the kernel fills in the length
        // and checksum); sources in 10.128.0.0/9, none of them the lab's.
        Flood::ForgedSyns => format!(
            "import random, socket, struct, time\n\
             end = time.time() + {seconds}\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
             dst = socket.inet_aton('{IMDS_V4}')\n\
             tcp = struct.pack('!HHIIBBHHH', 40000, 80, 1, 0, 5 << 4, 0x02, 64240, 0, 0)\n\
             n = 0\n\
             while time.time() < end:\n\
             \x20   for _ in range(1000):\n\
             \x20       src = struct.pack('!I', 0x0a800000 | random.getrandbits(23))\n\
             \x20       ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, 0, 0, 1, 6, 0, src, dst)\n\
             \x20       s.sendto(ip + tcp, ('{IMDS_V4}', 0))\n\
             \x20       n += 1\n\
             print(n)\n"
        ),
    };
    let storm = thread::scope(|s| {
        let storm = s.spawn(|| flood.run(Path::new("python3"), &["-c", &script]));
        // The client starts once the flood is on.
        thread::sleep(Duration::from_secs(3.min(seconds)));
        let run = client.sdk("js-v2", &format!("http://{IMDS_V4}"));
        assert!(run.lines.iter().any(|l| l["method"] == "PUT"), "{:?}", run.lines);
        storm.join().unwrap()
    });
    assert!(storm.status.success(), "{}", String::from_utf8_lossy(&storm.stderr));
    let sent = String::from_utf8_lossy(&storm.stdout).trim().parse().unwrap_or(0);
    thread::sleep(Duration::from_millis(1500));
    let peak_rss_kib = obs.peak_rss_kib();
    let events = obs.stop();
    let count = |pick: &dyn Fn(&Value) -> bool| -> u64 {
        events
            .iter()
            .filter(|e| e["type"] == "suppressed" && pick(e))
            .filter_map(|e| e["count"].as_u64())
            .sum()
    };
    let (flood_cg, client_cg) = (flood.cgroup_rel(), client.cgroup_rel());
    FloodRun {
        lines: events.len(),
        peak_rss_kib,
        suppressed: count(&|e| e["cgroup"] == flood_cg.as_str() || e["iface"].is_string()),
        client_suppressed: count(&|e| e["cgroup"] == client_cg.as_str()),
        lost: of_type(&events, "lost_events").iter().filter_map(|e| e["count"].as_u64()).sum(),
        sent,
        client_finding: findings_for(&events, &client.cgroup_rel())
            .into_iter()
            .rfind(|f| f["kind"] == "hop_limit_exceeded")
            .cloned(),
        seconds,
    }
}
