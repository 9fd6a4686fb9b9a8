//! Who is behind a packet: the cgroup (its path below the cgroup2 root), the
//! runtime's conventions in that path (runtime.rs), and names from the
//! runtime's API (docker.rs), the Kubernetes API server (kubernetes.rs, the
//! pods on this node) and the Nomad API (nomad.rs). Every lookup goes
//! through one never-blocking table (lookup.rs): a slow or broken source
//! never holds an event back. On cgroup v1 hosts, a container's host-side
//! veth names it when its cgroup2 cgroup does not (netns.rs).
pub mod cgroup;
pub mod docker;
pub mod ecs;
pub mod http;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod lookup;
pub mod netns;
pub mod nomad;
pub mod pods;
pub mod runtime;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt};
use tracing::{debug, info, warn};

use self::{
    cgroup::CgroupResolver,
    docker::{ContainerInfo, DockerClient},
    lookup::{Answer, Changes, Table},
    netns::NetnsNames,
    nomad::{AllocInfo, NomadClient},
    pods::PodInfo,
    runtime::parse_cgroup_path,
};
pub use crate::model::{Container, NETNS_KEY, NodeInfo, Nomad};

impl Container {
    /// The path named a workload: the test of `PathIdentity::is_workload`,
    /// on what `from_path` kept of it.
    pub fn is_workload(&self) -> bool {
        self.id.is_some()
            || self.runtime.as_deref().is_some_and(|r| r != runtime::runtimes::SYSTEMD)
            || self.pod_uid.is_some()
            || self.ecs_task.is_some()
            || self.nomad.is_some()
    }

    /// A cgroup that many processes share and that names no container: the
    /// root, or a host service's (where a runtime that manages only cgroup
    /// v1 leaves its containers in the unified hierarchy). Only the veth can
    /// tell containers apart there.
    pub fn is_shared_cgroup(&self) -> bool {
        !self.is_workload() && (self.host || self.cgroup.as_deref() == Some("/"))
    }

    /// What the cgroup path alone says.
    pub fn from_path(cgroup_id: u64, path: &str) -> Self {
        Self::from_parsed(cgroup_id, path, parse_cgroup_path(path))
    }

    fn from_parsed(cgroup_id: u64, path: &str, p: runtime::PathIdentity) -> Self {
        let nomad = (p.nomad_alloc.is_some() || p.nomad_task.is_some()).then(|| Nomad {
            alloc: p.nomad_alloc,
            task: p.nomad_task,
            ..Default::default()
        });
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
    /// labels that Kubernetes, Nomad and ECS put on containers. Those
    /// labels are whoever made the container's to write: they fill in only
    /// what the cgroup path does not say, never contradict it. Labels
    /// naming another pod than the path's (or any pod, in a Nomad task's
    /// path; or another allocation, or any, in a pod's path) are ignored.
    pub fn enrich(&mut self, info: &ContainerInfo) {
        let label = |k: &str| info.labels.get(k).filter(|v| !v.is_empty()).cloned();
        self.name =
            Some(label("io.kubernetes.container.name").unwrap_or_else(|| info.name.clone()));
        self.image = Some(info.image.clone()).filter(|i| !i.is_empty());
        let path_alloc = self.nomad.as_ref().and_then(|n| n.alloc.clone());
        let agrees = |label: Option<&String>, path: Option<&String>| match (label, path) {
            (Some(l), Some(p)) => l.eq_ignore_ascii_case(p),
            _ => true,
        };
        let pod_uid = label("io.kubernetes.pod.uid");
        if path_alloc.is_none() && agrees(pod_uid.as_ref(), self.pod_uid.as_ref()) {
            self.pod = self.pod.take().or(label("io.kubernetes.pod.name"));
            self.namespace = self.namespace.take().or(label("io.kubernetes.pod.namespace"));
            self.pod_uid = self.pod_uid.take().or(pod_uid);
        }
        // The ARN from the labels, when it ends in the path's task id.
        let arn = label("com.amazonaws.ecs.task-arn")
            .filter(|a| self.ecs_task.as_ref().is_none_or(|t| a.ends_with(&format!("/{t}"))));
        self.ecs_task = arn.or(self.ecs_task.take());
        let alloc = label("com.hashicorp.nomad.alloc_id");
        let nomad_ok = self.pod_uid.is_none() && agrees(alloc.as_ref(), path_alloc.as_ref());
        if nomad_ok && (alloc.is_some() || self.nomad.is_some()) {
            let n = self.nomad.get_or_insert_with(Nomad::default);
            n.alloc = n.alloc.take().or(alloc);
            n.job = n.job.take().or(label("com.hashicorp.nomad.job_name"));
            n.group = n.group.take().or(label("com.hashicorp.nomad.task_group_name"));
            n.task = n.task.take().or(label("com.hashicorp.nomad.task_name"));
        }
    }

    /// Add what the API server says about the pod: its name, namespace and
    /// labels, and the container's name and image from the pod's status
    /// where the runtime's API gave none (containerd and CRI-O nodes). Only
    /// when the pod's status lists this container's id: the key that found
    /// the pod (a cgroup path's UID, a runtime label, a mirror annotation)
    /// is not proof enough; the status is the kubelet's to write. False,
    /// and nothing added, otherwise.
    pub fn enrich_pod(&mut self, pod: &PodInfo) -> bool {
        let Some(c) = self.id.as_deref().and_then(|id| pod.container(id)) else {
            return false;
        };
        self.aws_identity = c.aws_identity.map(str::to_string);
        if self.name.is_none() && !c.name.is_empty() {
            self.name = Some(c.name.clone());
        }
        if self.image.is_none() && !c.image.is_empty() {
            self.image = Some(c.image.clone());
        }
        self.pod = Some(pod.name.clone()).filter(|n| !n.is_empty()).or(self.pod.take());
        self.namespace =
            Some(pod.namespace.clone()).filter(|n| !n.is_empty()).or(self.namespace.take());
        self.pod_uid = self.pod_uid.take().or_else(|| Some(pod.uid.clone()));
        self.labels = pod.labels.clone();
        self.labels_dropped = pod.labels_dropped;
        self.service_account = pod.service_account.clone();
        true
    }

    /// Add what the Nomad API says about the allocation: job, task group,
    /// namespace (labels the runtime already gave are kept).
    pub fn enrich_alloc(&mut self, alloc: &AllocInfo) {
        let n = self.nomad.get_or_insert_with(Nomad::default);
        n.alloc = n.alloc.take().or_else(|| Some(alloc.id.clone()));
        n.job = n.job.take().or_else(|| Some(alloc.job.clone()).filter(|j| !j.is_empty()));
        n.group = n.group.take().or_else(|| Some(alloc.group.clone()).filter(|g| !g.is_empty()));
        n.namespace =
            n.namespace.take().or_else(|| Some(alloc.namespace.clone()).filter(|s| !s.is_empty()));
    }
}

/// How long a failed lookup waits before it is asked again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
/// cgroups remembered at most (each a few hundred bytes).
const MAX_CACHED: usize = crate::model::budget::IDENTITIES;

/// One cgroup's identity, and whether lookups may still add to it.
struct Cached {
    /// Shared with every event that carries it: one allocation per
    /// workload, not per packet.
    container: Arc<Container>,
    /// Some lookup is pending: rebuild when a table changes.
    pending: bool,
    /// Some lookup failed: rebuild once it is due for a retry.
    retry_at: Option<Instant>,
}

/// cgroup id → Container, with names from the runtime's API socket, the
/// pods on this node and Nomad allocations when those are configured.
/// `identify` never blocks: a miss queues a lookup, and events go out with
/// what is known; once an answer arrives, the next event carries it.
pub struct Identities {
    cgroups: CgroupResolver,
    cache: HashMap<u64, Cached>,
    /// cgroup v1 hosts: container veths → their network namespace's container.
    veths: NetnsNames,
    /// Changes to any table below since the cache was last pruned.
    changes: Changes,
    seen_changes: u64,
    /// Docker Engine API (Docker, Podman): by container id.
    docker: Option<Table<ContainerInfo>>,
    /// The pods on this node: by pod UID.
    pods: Option<Table<Arc<PodInfo>>>,
    /// Nomad allocations: by allocation id.
    nomad: Option<Table<AllocInfo>>,
    /// What the cluster says of this node, and the change count last read.
    node: Option<(SharedNode, u64)>,
}

/// What the cluster said of this node last, with a change count (see
/// `kubernetes::watch_node`).
pub type SharedNode = Arc<std::sync::Mutex<(u64, Option<NodeInfo>)>>;

/// Ask `read` what this node is now and every `every` into `shared`, until
/// the task is dropped (`what` names the source in the log). Failing, it
/// says so once, with `without` (what the advice then lacks), and retries
/// with backoff (5 s doubling to 5 min).
pub async fn watch_node_info<F, Fut>(
    what: &str,
    every: Duration,
    without: &str,
    shared: SharedNode,
    mut read: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<NodeInfo, String>>,
{
    let mut backoff = Duration::from_secs(5);
    let mut failing = false;
    loop {
        match read().await {
            Ok(info) => {
                {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if s.1.as_ref() != Some(&info) {
                        info!(pool = ?info.pool, instance = ?info.instance_id, cluster = ?info.ecs_cluster, "{what}: this node");
                        *s = (s.0 + 1, Some(info));
                    }
                }
                failing = false;
                backoff = Duration::from_secs(5);
                tokio::time::sleep(every).await;
            }
            Err(e) => {
                if !failing {
                    warn!("{e}; {without} (retrying with backoff)");
                }
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

impl Identities {
    /// `sockets`: Docker-compatible API sockets to ask (the first that
    /// exists is used). Must be called inside a tokio runtime when sockets
    /// are given.
    pub fn new(root: PathBuf, sockets: &[PathBuf]) -> Self {
        let changes = Changes::default();
        let docker = sockets.iter().find(|s| s.exists()).map(|socket| {
            debug!(socket = %socket.display(), "naming containers through the runtime API");
            let client = DockerClient::new(socket.clone());
            Table::asking(
                &changes,
                "runtime API",
                "containers are named from cgroup paths",
                RETRY_AFTER,
                move |id| {
                    let client = client.clone();
                    async move { client.inspect(&id).await }
                },
            )
        });
        if docker.is_none() && !sockets.is_empty() {
            debug!("no runtime API socket: containers are named from their cgroup paths only");
        }
        Self {
            cgroups: CgroupResolver::new(root),
            cache: HashMap::new(),
            veths: NetnsNames::new(PathBuf::from("/proc")),
            changes,
            seen_changes: 0,
            docker,
            pods: None,
            nomad: None,
            node: None,
        }
    }

    /// Look Nomad allocations up through `client` (inside a tokio runtime).
    pub fn with_nomad(mut self, client: NomadClient, retry_after: Duration) -> Self {
        info!(addr = %client.addr(), "Nomad: naming allocations through the Nomad API");
        self.nomad = Some(Table::asking(
            &self.changes,
            "Nomad API",
            "Nomad jobs and groups are left out",
            retry_after,
            move |id| {
                let client = client.clone();
                async move { client.allocation(&id).await }
            },
        ));
        self
    }

    /// A pod table for a watch to fill (see `kubernetes.rs`).
    #[cfg_attr(not(any(feature = "kubernetes", test)), allow(dead_code))]
    pub fn with_pod_table(mut self) -> (Self, lookup::Writer<Arc<PodInfo>>) {
        let (table, writer) = Table::watched(&self.changes);
        self.pods = Some(table);
        (self, writer)
    }

    /// The pods on this node, when a watch keeps them (the Kubernetes
    /// lookup is on): another reader of the table `identify` uses.
    pub fn pod_table(&self) -> Option<Table<Arc<PodInfo>>> {
        self.pods.clone()
    }

    /// Every lookup the environment configures, beside the runtime socket:
    /// Nomad with `NOMAD_ADDR`; with the `kubernetes` feature, the pods on
    /// `node` when in a cluster or with `KUBECONFIG`. `node` is the node
    /// name as given (`--node-name`/`NODE_NAME`), not the host name guessed.
    pub fn with_env_lookups(mut self, node: Option<&str>) -> Self {
        let mut nomad_node = None;
        match NomadClient::from_env() {
            Ok(Some(client)) => {
                nomad_node = Some(client.clone());
                self = self.with_nomad(client, RETRY_AFTER);
            }
            Ok(None) => {}
            Err(e) => warn!("{e}; Nomad jobs and groups are left out"),
        }
        #[cfg(feature = "kubernetes")]
        if kubernetes::configured(|k| std::env::var(k).ok()) {
            match node.filter(|n| !n.is_empty()) {
                Some(node) => {
                    let (me, writer) = self.with_pod_table();
                    self = me;
                    let shared = SharedNode::default();
                    self.node = Some((shared.clone(), 0));
                    kubernetes::spawn_from_env(node.to_owned(), writer, shared);
                }
                None => warn!(
                    "Kubernetes: no node name (set NODE_NAME from the downward API, or --node-name); pod names are left out"
                ),
            }
        }
        // Kubernetes' Node object says more (who provisioned it): Nomad's
        // node, or the ECS container instance, only where no cluster does.
        if let (Some(client), None) = (nomad_node, &self.node) {
            let shared = SharedNode::default();
            self.node = Some((shared.clone(), 0));
            tokio::spawn(nomad::watch_node(client, shared));
        }
        if self.node.is_none() && ecs::configured(|k| std::env::var(k).ok()) {
            let shared = SharedNode::default();
            self.node = Some((shared.clone(), 0));
            tokio::spawn(ecs::watch_instance(shared));
        }
        #[cfg(not(feature = "kubernetes"))]
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            let _ = node;
            info!(
                "built without the kubernetes feature: pod names come from the runtime socket only"
            );
        }
        self
    }

    /// What the cluster says of this node, when that changed since the
    /// last call (and was ever said).
    pub fn node_news(&mut self) -> Option<NodeInfo> {
        let (shared, seen) = self.node.as_mut()?;
        let s = shared.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 == *seen {
            return None;
        }
        *seen = s.0;
        s.1.clone()
    }

    pub fn identify(&mut self, cgroup_id: u64) -> Option<Arc<Container>> {
        if cgroup_id == 0 {
            return None;
        }
        // An answer arrived since: rebuild what was waiting for one.
        let changes = self.changes.get();
        if changes != self.seen_changes {
            self.seen_changes = changes;
            self.cache.retain(|_, c| !c.pending);
        }
        if let Some(c) = self.cache.get(&cgroup_id) {
            if c.retry_at.is_none_or(|at| Instant::now() < at) {
                return Some(c.container.clone());
            }
        }
        let path = self.cgroups.resolve(cgroup_id)?;
        let cached = self.build(cgroup_id, &path);
        let c = cached.container.clone();
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(cgroup_id, cached);
        Some(c)
    }

    /// The cached container of `cgroup_id` is (or is not) a host process,
    /// as its network namespace says; the updated container.
    pub fn set_host(&mut self, cgroup_id: u64, host: bool) -> Option<Arc<Container>> {
        let c = &mut self.cache.get_mut(&cgroup_id)?.container;
        Arc::make_mut(c).host = host;
        Some(c.clone())
    }

    /// A cgroup2 cgroup the kernel reported as it was created.
    pub fn learn_cgroup(&mut self, cgroup_id: u64, path: &str) {
        self.cgroups.learn(cgroup_id, path);
    }

    /// The container veths the capture is attached to (cgroup v1 fallback).
    pub fn set_veths(&mut self, links: &[crate::sys::netlink::Link]) {
        self.veths.set_veths(links);
    }

    /// The container behind a host-side veth, named like `identify` does.
    pub fn identify_veth(&mut self, ifindex: u32) -> Option<Arc<Container>> {
        let c = self.veths.identify(ifindex)?;
        Some(self.complete(c).container)
    }

    /// The path's identity, with every answer the tables have now; none
    /// for a path in a delegated subtree (a rootless container's id is its
    /// owner's to choose: the host's runtime and API server know another
    /// container by it, if any).
    fn build(&self, cgroup_id: u64, path: &str) -> Cached {
        let p = parse_cgroup_path(path);
        if p.delegated {
            let mut c = Container::from_parsed(cgroup_id, path, p);
            c.bound();
            return Cached { container: Arc::new(c), pending: false, retry_at: None };
        }
        self.complete(Container::from_parsed(cgroup_id, path, p))
    }

    /// `c` with every answer the tables have now.
    fn complete(&self, mut c: Container) -> Cached {
        let path_pod_uid = c.pod_uid.clone();
        let mut pending = false;
        let mut retry_at: Option<Instant> = None;
        // What an answer leaves open: still pending, or failed until when.
        let mut note = |pending_now: bool, retry: Option<Instant>| {
            pending |= pending_now;
            if let Some(r) = retry {
                retry_at = Some(retry_at.map_or(r, |t| t.min(r)));
            }
        };
        if let (Some(t), Some(id)) = (&self.docker, c.id.clone()) {
            let a = t.get(&id);
            if let Answer::Found(info) = &a {
                c.enrich(info);
            }
            note(a.is_pending(), a.retry_at());
        }
        // After the runtime's labels, which may name the pod UID.
        let uid_from_path = path_pod_uid.is_some();
        if let (Some(t), Some(uid)) = (&self.pods, c.pod_uid.clone()) {
            let a = t.get(&uid);
            if let Answer::Found(pod) = &a {
                // A pod the runtime's labels named, whose status says
                // otherwise: the labels were not the pod's.
                if !c.enrich_pod(pod) && !uid_from_path {
                    (c.pod, c.namespace, c.pod_uid) = (None, None, None);
                }
            }
            note(a.is_pending(), a.retry_at());
        }
        let alloc = c
            .nomad
            .as_ref()
            .filter(|n| n.job.is_none() || n.group.is_none())
            .and_then(|n| n.alloc.clone());
        if let (Some(t), Some(alloc)) = (&self.nomad, alloc) {
            let a = t.get(&alloc);
            if let Answer::Found(info) = &a {
                c.enrich_alloc(info);
            }
            note(a.is_pending(), a.retry_at());
        }
        // Within budget::IDENTITY_BYTES, whatever the sources said.
        c.bound();
        Cached { container: Arc::new(c), pending, retry_at }
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
        assert!(!shared(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8d7f3c6e_2b1a_4c5d_9e8f_7a6b5c4d3e2f.slice"
        ));
        // A cgroup of its own, by no runtime's convention: still its own.
        assert!(!shared("/imdslab1/app"));
    }

    #[test]
    fn labels_name_pods_nomad_and_ecs() {
        let mut c = Container::from_path(7, &format!("/system.slice/docker-{ID}.scope"));
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("io.kubernetes.pod.name".into(), "api-7f9c".into());
        labels.insert("io.kubernetes.pod.namespace".into(), "payments".into());
        labels.insert("io.kubernetes.container.name".into(), "api".into());
        labels.insert("com.hashicorp.nomad.alloc_id".into(), "a1".into());
        labels.insert("com.hashicorp.nomad.job_name".into(), "web".into());
        labels.insert("com.hashicorp.nomad.task_group_name".into(), "g".into());
        labels.insert("com.hashicorp.nomad.task_name".into(), "t".into());
        labels.insert("com.amazonaws.ecs.task-arn".into(), "arn:aws:ecs:task/1".into());
        c.enrich(&ContainerInfo {
            id: ID.into(),
            name: "k8s_api_x".into(),
            image: "api:1.42".into(),
            labels,
        });
        assert_eq!(c.name.as_deref(), Some("api"));
        assert_eq!(c.image.as_deref(), Some("api:1.42"));
        assert_eq!(c.label(), "payments/api-7f9c");
        let n = c.nomad.as_ref().unwrap();
        assert_eq!(
            (n.alloc.as_deref(), n.job.as_deref(), n.group.as_deref(), n.task.as_deref()),
            (Some("a1"), Some("web"), Some("g"), Some("t"))
        );
        assert_eq!(c.ecs_task.as_deref(), Some("arn:aws:ecs:task/1"));
    }

    #[test]
    fn runtime_labels_never_name_another_pod_than_the_path() {
        const VICTIM: &str = "7d1e0c3a-2b4f-4a6e-9c8d-1e2f3a4b5c6d";
        let info = |labels: &[(&str, &str)]| ContainerInfo {
            id: ID.into(),
            name: "x".into(),
            image: "evil:1".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let forged = info(&[
            ("io.kubernetes.pod.uid", VICTIM),
            ("io.kubernetes.pod.name", "victim"),
            ("io.kubernetes.pod.namespace", "bank"),
            ("com.hashicorp.nomad.alloc_id", ALLOC),
            ("com.hashicorp.nomad.job_name", "victim-job"),
        ]);
        // In a pod's cgroup: the path's pod stays, no name from the labels,
        // no Nomad allocation.
        let mut c = Container::from_path(7, &kube_path());
        c.enrich(&forged);
        assert_eq!((c.pod_uid.as_deref(), c.pod.as_deref()), (Some(POD_UID), None));
        assert!(c.nomad.is_none(), "{c:?}");
        // Labels that agree with the path fill in its names.
        let mut c = Container::from_path(7, &kube_path());
        c.enrich(&info(&[("io.kubernetes.pod.uid", POD_UID), ("io.kubernetes.pod.name", "api")]));
        assert_eq!((c.pod_uid.as_deref(), c.pod.as_deref()), (Some(POD_UID), Some("api")));
        // In a Nomad task's cgroup: another allocation and any pod are not
        // taken.
        const OTHER: &str = "0a0b0c0d-1111-4222-8333-444455556666";
        let mut c = Container::from_path(8, &format!("/nomad.slice/share.slice/{OTHER}.t.scope"));
        c.enrich(&forged);
        let n = c.nomad.clone().unwrap();
        assert_eq!((n.alloc.as_deref(), n.job), (Some(OTHER), None));
        assert_eq!((c.pod_uid, c.pod), (None, None));
        // An ECS task ARN of another task than the path's.
        let task = "529630467358463ab6bbba4e73afe704";
        let mut c = Container::from_path(
            9,
            &format!("/ecstasks.slice/ecstasks-{task}.slice/docker-{ID}.scope"),
        );
        c.enrich(&info(&[("com.amazonaws.ecs.task-arn", "arn:aws:ecs:eu-west-1:1:task/c/ffff")]));
        assert_eq!(c.ecs_task.as_deref(), Some(task));
    }

    #[test]
    fn a_pod_names_a_container_only_when_its_status_lists_the_container() {
        let mut other = pod();
        other.containers[0].id = "f".repeat(64);
        let mut c = Container::from_path(7, &kube_path());
        assert!(!c.enrich_pod(&other));
        assert_eq!((c.pod.as_deref(), c.labels.len()), (None, 0), "{c:?}");
        assert!(c.enrich_pod(&pod()));
        assert_eq!(c.pod.as_deref(), Some("api-7f9c"));
        // No container id in the path (a pod-level cgroup): nothing to
        // confirm, no names.
        let mut c = Container::from_path(
            7,
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                POD_UID.replace('-', "_")
            ),
        );
        assert!(!c.enrich_pod(&pod()));
    }

    // --- Identities with lookups --------------------------------------

    use std::sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    const POD_UID: &str = "0f4b2c7e-9a1d-4e3b-8c6a-5d2e1f0a9b8c";
    const ALLOC: &str = "5c3f8f2e-1b2a-4d7e-9f10-2a3b4c5d6e7f";

    struct Tree(PathBuf);
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A directory tree standing in for the cgroup2 root (cgroup ids are
    /// directory inode numbers); the ids of `paths`.
    fn tree(paths: &[&str]) -> (Tree, Vec<u64>) {
        use std::os::unix::fs::MetadataExt;
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "imds-identities-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let ids = paths
            .iter()
            .map(|p| {
                let d = root.join(p.trim_start_matches('/'));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::metadata(&d).unwrap().ino()
            })
            .collect();
        (Tree(root), ids)
    }

    /// A fake Nomad agent: answers `status` (shared, changeable) after `delay`.
    async fn nomad(status: Arc<Mutex<u16>>, delay: Duration) -> NomadClient {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let status = status.clone();
                tokio::spawn(async move {
                    let mut b = [0u8; 4096];
                    let _ = s.read(&mut b).await;
                    tokio::time::sleep(delay).await;
                    let code = *status.lock().unwrap();
                    let body = if code == 200 {
                        format!(
                            r#"{{"ID":"{ALLOC}","Namespace":"batch","JobID":"billing","TaskGroup":"api","Job":{{"Name":"billing"}}}}"#
                        )
                    } else {
                        "No cluster leader".to_string()
                    };
                    let r = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(r.as_bytes()).await;
                });
            }
        });
        NomadClient::new(&format!("http://127.0.0.1:{port}"), &nomad::TlsSettings::default())
            .unwrap()
    }

    fn kube_path() -> String {
        format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            POD_UID.replace('-', "_")
        )
    }

    fn pod() -> PodInfo {
        PodInfo {
            uid: POD_UID.into(),
            name: "api-7f9c".into(),
            namespace: "payments".into(),
            labels: std::collections::BTreeMap::from([("app".to_string(), "api".to_string())]),
            labels_dropped: 0,
            containers: vec![pods::PodContainer {
                id: ID.into(),
                name: "api".into(),
                image: "api:1.42".into(),
                aws_identity: Some("irsa"),
            }],
            mirror_of: None,
            service_account: Some("api".into()),
        }
    }

    async fn eventually(
        ids: &mut Identities,
        cg: u64,
        within: Duration,
        f: impl Fn(&Container) -> bool,
    ) -> Arc<Container> {
        let t0 = Instant::now();
        loop {
            let c = ids.identify(cg).unwrap();
            if f(&c) {
                return c;
            }
            assert!(t0.elapsed() < within, "not within {within:?}: {c:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn identify_never_waits_and_picks_answers_up_when_they_come() {
        let nomad_path = format!("/nomad.slice/share.slice/{ALLOC}.server.scope");
        let (t, ids) = tree(&[&kube_path(), &nomad_path]);
        let (kube_cg, nomad_cg) = (ids[0], ids[1]);
        // Nomad answers only after 300 ms.
        let client = nomad(Arc::new(Mutex::new(200)), Duration::from_millis(300)).await;
        let (mut ids, pods) =
            Identities::new(t.0.clone(), &[]).with_nomad(client, RETRY_AFTER).with_pod_table();

        let t0 = Instant::now();
        let n = ids.identify(nomad_cg).unwrap();
        let k = ids.identify(kube_cg).unwrap();
        assert!(t0.elapsed() < Duration::from_millis(200), "identify waited {:?}", t0.elapsed());
        let nm = n.nomad.as_ref().unwrap();
        assert_eq!(
            (nm.alloc.as_deref(), nm.task.as_deref(), nm.job.as_deref()),
            (Some(ALLOC), Some("server"), None)
        );
        assert_eq!(
            (k.pod_uid.as_deref(), k.pod.as_deref(), k.name.as_deref()),
            (Some(POD_UID), None, None)
        );
        assert!(
            serde_json::to_value(&k).unwrap().get("labels").is_none(),
            "labels omitted when empty"
        );

        // The watch lists the pod: the next identify carries it.
        pods.found(POD_UID.into(), Arc::new(pod()));
        let k = ids.identify(kube_cg).unwrap();
        assert_eq!(
            (k.pod.as_deref(), k.namespace.as_deref()),
            (Some("api-7f9c"), Some("payments"))
        );
        assert_eq!((k.name.as_deref(), k.image.as_deref()), (Some("api"), Some("api:1.42")));
        assert_eq!(k.label(), "payments/api-7f9c");
        let json = serde_json::to_value(&k).unwrap();
        assert_eq!(json["labels"]["app"], "api");

        let n = eventually(&mut ids, nomad_cg, Duration::from_secs(3), |c| {
            c.nomad.as_ref().unwrap().job.is_some()
        })
        .await;
        let nm = n.nomad.clone().unwrap();
        assert_eq!(
            (nm.job.as_deref(), nm.group.as_deref(), nm.namespace.as_deref()),
            (Some("billing"), Some("api"), Some("batch"))
        );
        assert_eq!(nm.task.as_deref(), Some("server"), "the task still comes from the path");

        // Deleted pod: the cached identity is kept (events of a dying
        // container still name it) until the cgroup is looked up again.
        pods.remove(POD_UID);
        assert_eq!(ids.identify(kube_cg).unwrap().pod.as_deref(), Some("api-7f9c"));
    }

    #[tokio::test]
    async fn forged_names_do_not_make_a_container_another_pods() {
        // A user's delegated cgroup named after the pod, holding a
        // container of the pod's id; and a kubepods container whose pod the
        // table knows by a key whose status does not list it.
        let user =
            format!("/user.slice/user-1000.slice/user@1000.service/app.slice{}", kube_path());
        let stranger = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
            POD_UID.replace('-', "_"),
            "e".repeat(64)
        );
        let (t, cgs) = tree(&[&user, &stranger, &kube_path()]);
        let (mut ids, pods) = Identities::new(t.0.clone(), &[]).with_pod_table();
        pods.found(POD_UID.into(), Arc::new(pod()));
        let u = ids.identify(cgs[0]).unwrap();
        assert_eq!((u.pod_uid.as_deref(), u.pod.as_deref()), (None, None), "{u:?}");
        let s = ids.identify(cgs[1]).unwrap();
        assert_eq!((s.pod.as_deref(), s.labels.len()), (None, 0), "{s:?}");
        let k = ids.identify(cgs[2]).unwrap();
        assert_eq!(k.pod.as_deref(), Some("api-7f9c"));
    }

    #[tokio::test]
    async fn identities_stay_within_the_budget() {
        let (t, cgs) = tree(&[&kube_path()]);
        let (mut ids, pods) = Identities::new(t.0.clone(), &[]).with_pod_table();
        let mut big = pod();
        big.name = "p".repeat(100_000);
        big.containers[0].image = "i".repeat(100_000);
        big.labels = (0..20_000).map(|i| (format!("k{i:05}"), "v".repeat(60))).collect();
        pods.found(POD_UID.into(), Arc::new(big));
        let c = ids.identify(cgs[0]).unwrap();
        assert!(c.footprint() <= crate::model::budget::IDENTITY_BYTES, "{}", c.footprint());
        assert!(c.pod.as_deref().unwrap().ends_with('…'));
    }

    #[tokio::test]
    async fn failed_lookups_are_retried_after_the_delay() {
        let nomad_path = format!("/nomad.slice/share.slice/{ALLOC}.server.scope");
        let (t, cgs) = tree(&[&nomad_path]);
        let cg = cgs[0];
        let status = Arc::new(Mutex::new(500));
        let client = nomad(status.clone(), Duration::ZERO).await;
        let mut ids =
            Identities::new(t.0.clone(), &[]).with_nomad(client, Duration::from_millis(300));
        ids.identify(cg);
        // The failure arrives; nothing more is asked until the delay passes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ids.identify(cg).unwrap().nomad.clone().unwrap().job, None);
        *status.lock().unwrap() = 200;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ids.identify(cg).unwrap().nomad.clone().unwrap().job, None, "retried too early");
        let c = eventually(&mut ids, cg, Duration::from_secs(3), |c| {
            c.nomad.as_ref().unwrap().job.is_some()
        })
        .await;
        assert_eq!(c.nomad.as_ref().unwrap().job.as_deref(), Some("billing"));
    }
}
