//! Who is behind a packet: the cgroup (its path below the cgroup2 root), the
//! runtime's conventions in that path (runtime.rs), and names from the
//! runtime's API (docker.rs, behind a cache: a slow or broken socket never
//! holds an event back). On cgroup v1 hosts, a container's host-side veth
//! names it when its cgroup2 cgroup does not (netns.rs).
pub mod cgroup;
pub mod docker;
pub mod netns;
pub mod runtime;

#[cfg(test)]
use std::collections::BTreeMap;
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use self::{cgroup::CgroupResolver, docker::DockerClient, netns::NetnsNames, runtime::parse_cgroup_path};

/// The workload behind a cgroup, as events and findings carry it. Absent
/// fields are omitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Container {
    /// Container id (64 hex) from the cgroup path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// docker, containerd, cri-o, podman, nomad, systemd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nomad: Option<Nomad>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs_task: Option<String>,
    /// Path below the cgroup2 root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Attributed through its host-side veth (cgroup v1 hosts): the inode of
    /// its network namespace, and the veth's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub veth: Option<String>,
    /// A host process (systemd service, session, root cgroup), not a container.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nomad {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// Tags a workload key that is a network namespace's inode (a container
/// named by its veth) rather than a cgroup id, so the two never collide.
pub const NETNS_KEY: u64 = 1 << 63;

impl Container {
    /// What tells this workload apart on its node: its cgroup id, or for a
    /// container named by its veth, its network namespace.
    pub fn key(&self) -> Option<u64> {
        self.cgroup_id.or(self.netns.map(|n| n | NETNS_KEY))
    }

    /// A short human label: name, pod, short id, else the cgroup path.
    pub fn label(&self) -> String {
        if let (Some(ns), Some(pod)) = (&self.namespace, &self.pod) {
            return format!("{ns}/{pod}");
        }
        if let Some(n) = &self.name {
            return n.clone();
        }
        if let (Some(rt), Some(id)) = (&self.runtime, &self.id) {
            return format!("{rt}:{}", &id[..id.len().min(12)]);
        }
        match (&self.cgroup, self.cgroup_id) {
            (Some(p), _) => p.clone(),
            (None, Some(id)) => format!("cgroup {id}"),
            (None, None) => "?".into(),
        }
    }

    /// The path names a container (a runtime's convention matched).
    pub fn is_container(&self) -> bool {
        self.id.is_some() || self.pod_uid.is_some() || (self.runtime.is_some() && !self.host)
    }

    /// A cgroup that many processes share and that names no container: the
    /// root, or a host service's (where a runtime that manages only cgroup
    /// v1 leaves its containers in the unified hierarchy). Only the veth can
    /// tell containers apart there.
    pub fn is_shared_cgroup(&self) -> bool {
        !self.is_container() && (self.host || self.cgroup.as_deref() == Some("/"))
    }

    /// What the cgroup path alone says.
    pub fn from_path(cgroup_id: u64, path: &str) -> Self {
        let p = parse_cgroup_path(path);
        let nomad = (p.nomad_alloc.is_some() || p.nomad_task.is_some())
            .then(|| Nomad { alloc: p.nomad_alloc, task: p.nomad_task, ..Default::default() });
        Container {
            id: p.id,
            runtime: p.runtime,
            pod_uid: p.pod_uid,
            nomad,
            ecs_task: p.ecs_task,
            cgroup: Some(path.to_string()),
            cgroup_id: Some(cgroup_id),
            host: p.host,
            name: p.systemd_unit.filter(|_| p.host),
            ..Default::default()
        }
    }

    /// Add what the runtime's API said: name, image, and the orchestrator
    /// labels that Kubernetes, Nomad and ECS put on containers.
    pub fn enrich(&mut self, info: &docker::ContainerInfo) {
        let label = |k: &str| info.labels.get(k).filter(|v| !v.is_empty()).cloned();
        self.name = Some(label("io.kubernetes.container.name").unwrap_or_else(|| info.name.clone()));
        self.image = Some(info.image.clone()).filter(|i| !i.is_empty());
        self.pod = label("io.kubernetes.pod.name").or(self.pod.take());
        self.namespace = label("io.kubernetes.pod.namespace").or(self.namespace.take());
        self.pod_uid = label("io.kubernetes.pod.uid").or(self.pod_uid.take());
        self.ecs_task = label("com.amazonaws.ecs.task-arn").or(self.ecs_task.take());
        let alloc = label("com.hashicorp.nomad.alloc_id");
        if alloc.is_some() || self.nomad.is_some() {
            let n = self.nomad.get_or_insert_with(Nomad::default);
            n.alloc = alloc.or(n.alloc.take());
            n.job = label("com.hashicorp.nomad.job_name").or(n.job.take());
            n.group = label("com.hashicorp.nomad.task_group_name").or(n.group.take());
            n.task = label("com.hashicorp.nomad.task_name").or(n.task.take());
        }
    }
}

/// Runtime API answers, by container id.
#[derive(Clone)]
enum Lookup {
    Pending,
    Found(docker::ContainerInfo),
    /// Not known to the runtime (another runtime's container).
    Unknown,
    /// The socket failed; retry after this.
    Failed(Instant),
}

const RETRY_AFTER: Duration = Duration::from_secs(30);
const MAX_LOOKUPS: usize = 16_384;

/// cgroup id → Container, with names from the runtime's API when a socket
/// is there. `identify` never blocks: a miss queues a lookup, and events go
/// out with what is known.
pub struct Identities {
    cgroups: CgroupResolver,
    cache: HashMap<u64, Container>,
    veths: NetnsNames,
    lookups: Arc<Mutex<HashMap<String, Lookup>>>,
    ask: Option<mpsc::UnboundedSender<String>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    seen_generation: u64,
}

impl Identities {
    /// `sockets`: Docker-compatible API sockets to ask (the first that
    /// exists is used). Must be called inside a tokio runtime when sockets
    /// are given.
    pub fn new(root: PathBuf, sockets: &[PathBuf]) -> Self {
        let lookups = Arc::new(Mutex::new(HashMap::new()));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ask = sockets.iter().find(|s| s.exists()).map(|socket| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(lookup_task(DockerClient::new(socket.clone()), rx, lookups.clone(), generation.clone()));
            debug!(socket = %socket.display(), "naming containers through the runtime API");
            tx
        });
        if ask.is_none() && !sockets.is_empty() {
            debug!("no runtime API socket: containers are named from their cgroup paths only");
        }
        Self {
            cgroups: CgroupResolver::new(root),
            cache: HashMap::new(),
            veths: NetnsNames::new(PathBuf::from("/proc")),
            lookups,
            ask,
            generation,
            seen_generation: 0,
        }
    }

    pub fn identify(&mut self, cgroup_id: u64) -> Option<Container> {
        if cgroup_id == 0 {
            return None;
        }
        // A lookup finished since: forget what was built without it.
        let g = self.generation.load(std::sync::atomic::Ordering::Acquire);
        if g != self.seen_generation {
            self.seen_generation = g;
            self.cache.retain(|_, c| c.id.is_none() || c.name.is_some());
        }
        if let Some(c) = self.cache.get(&cgroup_id) {
            if c.id.is_none() || c.name.is_some() || !self.retry_due(c.id.as_deref().unwrap_or_default()) {
                return Some(c.clone());
            }
        }
        let path = self.cgroups.resolve(cgroup_id)?;
        let mut c = Container::from_path(cgroup_id, &path);
        self.enrich(&mut c);
        if self.cache.len() >= MAX_LOOKUPS {
            self.cache.clear();
        }
        self.cache.insert(cgroup_id, c.clone());
        Some(c)
    }

    /// A cgroup2 cgroup the kernel reported as it was created.
    pub fn learn_cgroup(&mut self, cgroup_id: u64, path: &str) {
        self.cgroups.learn(cgroup_id, path);
    }

    /// The container veths the capture is attached to (cgroup v1 fallback).
    pub fn set_veths(&mut self, links: &[crate::capture::netlink::Link]) {
        self.veths.set_veths(links);
    }

    /// The container behind a host-side veth, named like `identify` does.
    pub fn identify_veth(&mut self, ifindex: u32) -> Option<Container> {
        let mut c = self.veths.identify(ifindex)?;
        self.enrich(&mut c);
        Some(c)
    }

    /// Names from the runtime's API, when it has answered.
    fn enrich(&mut self, c: &mut Container) {
        if let Some(id) = c.id.clone() {
            if let Some(Lookup::Found(info)) = self.lookup(&id) {
                c.enrich(&info);
            }
        }
    }

    fn retry_due(&self, id: &str) -> bool {
        matches!(self.lookups.lock().unwrap().get(id), Some(Lookup::Failed(at)) if at.elapsed() > RETRY_AFTER)
    }

    fn lookup(&mut self, id: &str) -> Option<Lookup> {
        let ask = self.ask.as_ref()?;
        let mut l = self.lookups.lock().unwrap();
        match l.get(id) {
            Some(Lookup::Failed(at)) if at.elapsed() > RETRY_AFTER => {}
            Some(v) => return Some(v.clone()),
            None => {}
        }
        if l.len() >= MAX_LOOKUPS {
            l.retain(|_, v| matches!(v, Lookup::Found(_)));
        }
        l.insert(id.to_string(), Lookup::Pending);
        let _ = ask.send(id.to_string());
        Some(Lookup::Pending)
    }
}

async fn lookup_task(
    client: DockerClient,
    mut rx: mpsc::UnboundedReceiver<String>,
    lookups: Arc<Mutex<HashMap<String, Lookup>>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut warned = false;
    while let Some(id) = rx.recv().await {
        let result = match client.inspect(&id).await {
            Ok(Some(info)) => Lookup::Found(info),
            Ok(None) => Lookup::Unknown,
            Err(e) => {
                if !warned {
                    warn!("runtime API: {e}; naming containers from cgroup paths until it answers");
                    warned = true;
                }
                Lookup::Failed(Instant::now())
            }
        };
        lookups.lock().unwrap().insert(id, result);
        generation.fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c0d1e4b5a6978877665544332211009988776655443322110099887766a";

    #[test]
    fn path_alone_gives_runtime_and_id() {
        let c = Container::from_path(7, &format!("/libpod_parent/libpod-{ID}"));
        assert_eq!(c.runtime.as_deref(), Some("podman"));
        assert_eq!(c.id.as_deref(), Some(ID));
        assert_eq!(c.cgroup_id, Some(7));
        assert!(!c.host);
        assert_eq!(c.label(), "podman:3f2a9c0d1e4b");
    }

    #[test]
    fn host_service_is_host() {
        let c = Container::from_path(9, "/system.slice/kubelet.service");
        assert!(c.host);
        assert_eq!(c.label(), "kubelet.service");
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["host"], true);
        let c = Container::from_path(1, "/libpod_parent/libpod-abc");
        assert!(serde_json::to_value(&c).unwrap().get("host").is_none(), "host omitted when false");
    }

    #[test]
    fn shared_cgroups_name_no_one() {
        let shared = |p: &str| Container::from_path(1, p).is_shared_cgroup();
        assert!(shared("/"), "the root");
        // dockerd with the cgroupfs driver on a hybrid host leaves its
        // containers in its own unified cgroup.
        assert!(shared("/system.slice/containerd.service"));
        assert!(!shared(&format!("/system.slice/docker-{ID}.scope")));
        assert!(!shared("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8d7f3c6e_2b1a_4c5d_9e8f_7a6b5c4d3e2f.slice"));
        // A cgroup of its own, by no runtime's convention: still its own.
        assert!(!shared("/imdslab1/app"));
    }

    #[test]
    fn labels_name_pods_nomad_and_ecs() {
        let mut c = Container::from_path(7, &format!("/system.slice/docker-{ID}.scope"));
        let mut labels = BTreeMap::new();
        labels.insert("io.kubernetes.pod.name".into(), "api-7f9c".into());
        labels.insert("io.kubernetes.pod.namespace".into(), "payments".into());
        labels.insert("io.kubernetes.container.name".into(), "api".into());
        labels.insert("com.hashicorp.nomad.alloc_id".into(), "a1".into());
        labels.insert("com.hashicorp.nomad.job_name".into(), "web".into());
        labels.insert("com.hashicorp.nomad.task_group_name".into(), "g".into());
        labels.insert("com.hashicorp.nomad.task_name".into(), "t".into());
        labels.insert("com.amazonaws.ecs.task-arn".into(), "arn:aws:ecs:task/1".into());
        c.enrich(&docker::ContainerInfo { id: ID.into(), name: "k8s_api_x".into(), image: "api:1.42".into(), labels });
        assert_eq!(c.name.as_deref(), Some("api"));
        assert_eq!(c.image.as_deref(), Some("api:1.42"));
        assert_eq!(c.label(), "payments/api-7f9c");
        let n = c.nomad.as_ref().unwrap();
        assert_eq!((n.alloc.as_deref(), n.job.as_deref(), n.group.as_deref(), n.task.as_deref()), (Some("a1"), Some("web"), Some("g"), Some("t")));
        assert_eq!(c.ecs_task.as_deref(), Some("arn:aws:ecs:task/1"));
    }
}
