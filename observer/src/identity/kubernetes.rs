//! The pods on this node, from the Kubernetes API server: one list+watch
//! (kube-runtime's watcher, field selector `spec.nodeName=<node>`) keeps a
//! table of compact [`PodInfo`] records by pod UID, which `identify` reads
//! without waiting.
//!
//! On when the observer runs in a cluster (`KUBERNETES_SERVICE_HOST`, the
//! ServiceAccount token) or `KUBECONFIG` is set, and the node name is given
//! (`NODE_NAME` / `--node-name`). The API server being away, slow, refusing
//! (401, 403) or sending garbage never holds an event back: the watcher
//! retries with backoff (0.8 s doubling to 30 s), the first failure of an
//! outage is logged once, and events go out with what the cgroup path and
//! the runtime socket say meanwhile.

use std::{
    borrow::Cow,
    collections::HashMap,
    pin::pin,
    sync::{Arc, Mutex},
};

use futures_util::StreamExt;
use k8s_openapi::{
    ClusterResourceScope, NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::{
    NodeInfo, SharedNode,
    lookup::Writer,
    pods::{PodContainer, PodInfo, aws_identity, runtime_container_id},
};
use crate::model::{
    bounded::capped,
    container::{ID_BYTES, IMAGE_BYTES, NAME_BYTES},
};

/// The annotation a mirror pod carries: the static pod's UID on the node.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The parts of a Pod read here. Parsing into this rather than the full
/// `k8s_openapi` Pod skips the rest of the object (volumes, probes,
/// affinity, ...) without building it, keeps the parser small in the
/// binary, and tolerates fields this code does not need being absent.
#[derive(Clone, Debug, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodSpec>,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Option<Vec<SpecContainer>>,
    #[serde(default)]
    pub init_containers: Option<Vec<SpecContainer>>,
    #[serde(default)]
    pub service_account_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SpecContainer {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: Option<String>,
    /// Names only: `EnvName` has no field for a value, so none is parsed
    /// or kept.
    #[serde(default)]
    pub env: Option<Vec<EnvName>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct EnvName {
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
}

/// `kube::Resource` for a core/v1 type of ours that holds its `metadata`:
/// kind, plural and scope are all that differ.
macro_rules! core_v1 {
    ($ty:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

core_v1!(Pod, "Pod", "pods", NamespaceResourceScope);

/// The parts of a Node read here: its labels and `spec.providerID`
/// (model::NodeInfo says what of them).
#[derive(Clone, Debug, Deserialize)]
pub struct Node {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<NodeSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct NodeSpec {
    #[serde(default, rename = "providerID")]
    pub provider_id: Option<String>,
}

core_v1!(Node, "Node", "nodes", ClusterResourceScope);

impl Node {
    pub fn info(&self) -> NodeInfo {
        let labels = self.metadata.labels.clone().unwrap_or_default();
        NodeInfo::from_node(&labels, self.spec.as_ref().and_then(|s| s.provider_id.as_deref()))
    }
}

/// How often the Node is read again: labels and the provider id change
/// rarely, and one `get` costs the API server little.
const NODE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Read this node's Node object now and every `NODE_EVERY` into `shared`,
/// until the task is dropped. Needs `get` on nodes (deploy/kubernetes's
/// ClusterRole); refused or failing, it says so once and retries with
/// backoff (5 s doubling to 5 min): the advice then does without it.
pub async fn watch_node(client: Client, node: String, shared: SharedNode) {
    let api: Api<Node> = Api::all(client);
    let mut backoff = std::time::Duration::from_secs(5);
    let mut failing = false;
    loop {
        match api.get(&node).await {
            Ok(n) => {
                let info = n.info();
                {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if s.1.as_ref() != Some(&info) {
                        info!(node = %node, provisioner = ?info.provisioner, pool = ?info.pool, instance = ?info.instance_id, "Kubernetes: this node");
                        *s = (s.0 + 1, Some(info));
                    }
                }
                failing = false;
                backoff = std::time::Duration::from_secs(5);
                tokio::time::sleep(NODE_EVERY).await;
            }
            Err(e) => {
                let msg = describe_node_error(&e, &node);
                if !failing {
                    warn!(
                        "Kubernetes API: {msg}; advice does without who provisioned the node (retrying with backoff)"
                    );
                }
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(300));
            }
        }
    }
}

/// Whether the environment asks for pod lookups: in a cluster, or with a
/// kubeconfig named by `KUBECONFIG`.
pub fn configured(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
    set("KUBERNETES_SERVICE_HOST") || set("KUBECONFIG")
}

/// How the watch is doing (for logs and tests).
#[derive(Clone, Debug, Default)]
pub struct WatchState {
    /// A full list has arrived at least once.
    pub synced: bool,
    /// Pods on the node after the last event.
    pub pods: usize,
    /// The last failure, as logged.
    pub last_error: Option<String>,
    pub failures: u64,
}

pub type SharedState = Arc<Mutex<WatchState>>;

/// Infer the client configuration (kubeconfig, else in-cluster), watch
/// this node's pods and read its Node object, on tasks of their own.
pub fn spawn_from_env(
    node: String,
    writer: Writer<Arc<PodInfo>>,
    shared_node: SharedNode,
) -> SharedState {
    let state = SharedState::default();
    let st = state.clone();
    tokio::spawn(async move {
        match client_from_env().await {
            Ok((client, url)) => {
                info!(api_server = %url, node = %node, "Kubernetes: watching this node's pods");
                tokio::spawn(watch_node(client.clone(), node.clone(), shared_node));
                watch(client, node, writer, st).await;
            }
            Err(e) => {
                warn!("Kubernetes: {e}; pod names are left out");
                st.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(e);
            }
        }
    });
    state
}

/// A client from the inferred configuration (kubeconfig, else in-cluster),
/// and the API server's URL; the error says which step failed.
pub async fn client_from_env() -> Result<(Client, String), String> {
    let config =
        kube::Config::infer().await.map_err(|e| format!("no usable client configuration ({e})"))?;
    let url = config.cluster_url.to_string();
    let client = client(config).map_err(|e| format!("cannot build a client for {url}: {e}"))?;
    Ok((client, url))
}

/// A client for `config`, with rustls on ring.
pub fn client(config: kube::Config) -> Result<Client, kube::Error> {
    // kube's TLS uses the process-wide rustls provider; ring is the one
    // built in. Installing it twice is harmless (the second is refused).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_from(config)
}

/// Watch the pods on `node` into `writer` until the task is dropped.
pub async fn watch(client: Client, node: String, writer: Writer<Arc<PodInfo>>, state: SharedState) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = pin!(watcher::watcher(api, cfg).default_backoff());
    let mut buffer: HashMap<String, Arc<PodInfo>> = HashMap::new();
    let mut live: HashMap<String, Arc<PodInfo>> = HashMap::new();
    let mut failing = false;
    let set = |f: &dyn Fn(&mut WatchState)| f(&mut state.lock().unwrap_or_else(|e| e.into_inner()));
    while let Some(item) = stream.next().await {
        let ok = item.is_ok();
        match item {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(pod)) => {
                if let Some(p) = pod_info(&pod) {
                    buffer.insert(p.uid.clone(), Arc::new(p));
                }
            }
            Ok(Event::InitDone) => {
                live = std::mem::take(&mut buffer);
                writer.replace_all(by_key(&live));
                let n = live.len();
                let first = !state.lock().unwrap_or_else(|e| e.into_inner()).synced;
                if first || failing {
                    info!(node = %node, pods = n, "Kubernetes: pods on this node listed");
                } else {
                    debug!(node = %node, pods = n, "Kubernetes: pods relisted");
                }
                set(&|s| {
                    s.synced = true;
                    s.pods = n;
                });
            }
            Ok(Event::Apply(pod)) => {
                if let Some(p) = pod_info(&pod) {
                    let p = Arc::new(p);
                    let old = live.insert(p.uid.clone(), p.clone());
                    // A mirror annotation that changed leaves no stale key.
                    let keys: Vec<String> = old
                        .iter()
                        .flat_map(|o| o.keys())
                        .chain(p.keys())
                        .map(str::to_owned)
                        .collect();
                    refresh(&writer, &live, keys);
                    set(&|s| s.pods = live.len());
                }
            }
            Ok(Event::Delete(pod)) => {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                let old = live.remove(uid);
                let keys: Vec<String> = old
                    .iter()
                    .map(|p| (**p).clone())
                    .chain(pod_info(&pod))
                    .flat_map(|p| p.keys().map(str::to_owned).collect::<Vec<_>>())
                    .collect();
                refresh(&writer, &live, keys);
                set(&|s| s.pods = live.len());
            }
            Err(e) => {
                let msg = describe(&e, &node);
                if !failing {
                    warn!(
                        "Kubernetes API: {msg}; pod names are left out until it answers (retrying with backoff)"
                    );
                } else {
                    debug!("Kubernetes API: {msg}");
                }
                failing = true;
                set(&|s| {
                    s.last_error = Some(msg.clone());
                    s.failures += 1;
                });
            }
        }
        if ok && failing {
            info!("Kubernetes API answers again");
            failing = false;
        }
    }
}

/// Every key of every pod (UID, and a mirror pod's static UID), each to
/// the pod that owns it (`owner_of`).
fn by_key(pods: &HashMap<String, Arc<PodInfo>>) -> HashMap<String, Arc<PodInfo>> {
    let mut out = HashMap::with_capacity(pods.len());
    for k in pods.values().flat_map(|p| p.keys()) {
        if !out.contains_key(k) {
            if let Some(p) = owner_of(pods, k) {
                out.insert(k.to_owned(), p);
            }
        }
    }
    out
}

/// The pod a cgroup path's pod key names: the pod whose own UID it is,
/// whatever another pod's mirror annotation claims; else the mirror pod
/// that claims it (of several, the lowest UID: the same answer every time).
/// Whose container it is, the pod's status still has to confirm
/// (`Container::enrich_pod`).
fn owner_of(pods: &HashMap<String, Arc<PodInfo>>, key: &str) -> Option<Arc<PodInfo>> {
    if let Some(p) = pods.get(key) {
        return Some(p.clone());
    }
    pods.values()
        .filter(|p| p.mirror_of.as_deref() == Some(key))
        .min_by(|a, b| a.uid.cmp(&b.uid))
        .cloned()
}

/// Point each of `keys` at its owner now, or remove it when none is left.
fn refresh(writer: &Writer<Arc<PodInfo>>, live: &HashMap<String, Arc<PodInfo>>, keys: Vec<String>) {
    for k in keys {
        match owner_of(live, &k) {
            Some(p) => writer.found(k, p),
            None => writer.remove(&k),
        }
    }
}

/// A failure in words, naming what RBAC is missing when that is the cause.
/// A failed `get` of the Node, with what to do about it.
fn describe_node_error(e: &kube::Error, node: &str) -> String {
    match e {
        kube::Error::Api(s) => {
            let message = super::http::truncate(s.message.trim(), 300);
            match s.code {
                403 => format!(
                    "reading Node {node} forbidden (HTTP 403: {message}): the observer's ServiceAccount needs get on nodes (ClusterRole in deploy/kubernetes/rbac.yaml)"
                ),
                code => format!("reading Node {node} failed (HTTP {code}: {message})"),
            }
        }
        e => format!("reading Node {node}: {e}"),
    }
}

fn describe(e: &watcher::Error, node: &str) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(s),
        _ => None,
    };
    let Some(s) = status else { return e.to_string() };
    let message = super::http::truncate(s.message.trim(), 300);
    match s.code {
        403 => format!(
            "pods list/watch on node {node} forbidden (HTTP 403: {message}): the observer's ServiceAccount needs \
             get, list and watch on pods (ClusterRole in deploy/kubernetes/rbac.yaml)"
        ),
        401 => format!(
            "unauthorized (HTTP 401: {message}): the API server rejected the observer's credentials"
        ),
        code => format!("pods list/watch on node {node} failed (HTTP {code}: {message})"),
    }
}

/// The compact record of a pod; `None` without a UID.
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let m = &pod.metadata;
    let uid = m.uid.clone().filter(|u| !u.is_empty())?;
    let spec_of = |name: &str| {
        let spec = pod.spec.as_ref()?;
        spec.containers
            .iter()
            .flatten()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
    };
    let mut containers = Vec::new();
    if let Some(st) = &pod.status {
        let all = st
            .container_statuses
            .iter()
            .flatten()
            .chain(st.init_container_statuses.iter().flatten())
            .chain(st.ephemeral_container_statuses.iter().flatten());
        for cs in all.take(MAX_POD_CONTAINERS) {
            if let Some(c) = container(cs, spec_of(&cs.name)) {
                containers.push(c);
            }
        }
    }
    let (labels, labels_dropped) =
        super::pods::pod_labels().select(m.labels.as_ref().unwrap_or(&Default::default()));
    Some(PodInfo {
        uid,
        name: capped(m.name.as_deref().unwrap_or_default(), NAME_BYTES),
        namespace: capped(m.namespace.as_deref().unwrap_or_default(), NAME_BYTES),
        labels,
        labels_dropped,
        containers,
        mirror_of: mirror_of(m),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|s| !s.is_empty())
            .map(|s| capped(s, NAME_BYTES)),
    })
}

/// Containers kept per pod record: more than any pod runs (init and
/// ephemeral ones included); a pod that lists more is named by the first.
const MAX_POD_CONTAINERS: usize = 64;

/// The static pod's UID a mirror pod stands for: only on a pod the Node
/// owns (the kubelet makes mirror pods with an ownerReference to its Node),
/// and only a value shaped like a pod UID. Any pod's author can write the
/// annotation; who a container is still takes its pod's status
/// (`Container::enrich_pod`), and a key that is another pod's own UID
/// stays that pod's (`owner_of`).
fn mirror_of(m: &ObjectMeta) -> Option<String> {
    let by_node =
        m.owner_references.iter().flatten().any(|o| o.kind == "Node" && o.api_version == "v1");
    let v = m.annotations.as_ref()?.get(MIRROR_ANNOTATION)?;
    let uid_like =
        (v.len() == 32 || v.len() == 36) && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (by_node && uid_like).then(|| v.to_ascii_lowercase())
}

fn container(cs: &ContainerStatus, spec: Option<&SpecContainer>) -> Option<PodContainer> {
    let id = runtime_container_id(cs.container_id.as_deref()?)?.to_owned();
    // The status names the image as the runtime resolved it; some runtimes
    // give only a digest there, and then the spec's reference says more.
    let image = if cs.image.is_empty() || cs.image.starts_with("sha256:") {
        spec.and_then(|s| s.image.clone()).unwrap_or_else(|| cs.image.clone())
    } else {
        cs.image.clone()
    };
    let env = spec.and_then(|s| s.env.as_deref()).unwrap_or_default();
    let aws_identity = aws_identity(env.iter().map(|e| e.name.as_str()));
    // Ids are 64 hex digits; one far longer names no container a path can.
    (id.len() <= 2 * ID_BYTES).then_some(())?;
    Some(PodContainer {
        id,
        name: capped(&cs.name, NAME_BYTES),
        image: capped(&image, IMAGE_BYTES),
        aws_identity,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, Instant};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::broadcast,
    };

    use super::*;
    use crate::identity::{
        http::fake::find,
        lookup::{Answer, Changes, Table},
    };

    pub const UID_A: &str = "0f4b2c7e-9a1d-4e3b-8c6a-5d2e1f0a9b8c";
    pub const UID_B: &str = "7d1e0c3a-2b4f-4a6e-9c8d-1e2f3a4b5c6d";
    pub const CID_A: &str = "8d1c3e5fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
    pub const CID_B: &str = "3f2a9c0d1e4b5a6978877665544332211009988776655443322110099887766a";

    /// A pod as the API server sends it (trimmed), on node `node-a`.
    pub fn pod_json(uid: &str, name: &str, cid: &str, rv: u32) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"payments","uid":"{uid}","resourceVersion":"{rv}",
"labels":{{"app":"{name}","team":"payments"}},"annotations":{{"kubernetes.io/psp":"eks.privileged"}},
"managedFields":[{{"manager":"kubelet","operation":"Update","apiVersion":"v1","time":"2024-05-02T09:14:07Z","fieldsType":"FieldsV1","fieldsV1":{{}}}}]}},
"spec":{{"nodeName":"node-a","containers":[{{"name":"api","image":"registry.example/{name}:1.42"}},{{"name":"envoy","image":"envoy:1.30"}}],
"initContainers":[{{"name":"init","image":"busybox:1.36"}}]}},
"status":{{"phase":"Running","podIP":"10.0.1.33",
"initContainerStatuses":[{{"name":"init","image":"docker.io/library/busybox:1.36","imageID":"docker.io/library/busybox@sha256:aa","containerID":"containerd://{cid}00","ready":true,"restartCount":0}}],
"containerStatuses":[{{"name":"api","image":"registry.example/{name}:1.42","imageID":"registry.example/{name}@sha256:bb","containerID":"containerd://{cid}","ready":true,"restartCount":0}},
{{"name":"envoy","image":"sha256:4f0a1d6bd4c25b4ff4a0b3a6a0c2b9b8e7f3b1c2d3e4f5a6b7c8d9e0f1a2b3c4","imageID":"","ready":false,"restartCount":0}}]}}}}"#
        )
        // One line: watch events are JSON lines.
        .replace('\n', "")
    }

    /// What the fake API server answers to the list.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum ListMode {
        Ok,
        Forbidden,
        Garbage,
    }

    /// A fake API server on 127.0.0.1 speaking enough of list+watch for
    /// kube's watcher: `GET /api/v1/pods` (a PodList of `pods`) and the
    /// same with `watch=true` (a chunked stream of the events sent on the
    /// returned channel, as JSON lines).
    pub struct FakeApi {
        pub port: u16,
        pub events: broadcast::Sender<String>,
        pub requests: Arc<Mutex<Vec<String>>>,
        pub mode: Arc<Mutex<ListMode>>,
    }

    pub async fn fake_api(pods: Vec<String>, mode: ListMode) -> FakeApi {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (events, _) = broadcast::channel::<String>(64);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(mode));
        let (tx, reqs, m) = (events.clone(), requests.clone(), mode.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (tx, reqs, m, pods) = (tx.clone(), reqs.clone(), m.clone(), pods.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut b = [0u8; 4096];
                    while find(&req, b"\r\n\r\n").is_none() {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&req).into_owned();
                    reqs.lock().unwrap().push(head.clone());
                    let target = head.split(' ').nth(1).unwrap_or_default().to_string();
                    if !target.starts_with("/api/v1/pods") {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                        return;
                    }
                    if target.contains("watch=true") {
                        // Subscribe before answering, so no event sent after
                        // the list is missed.
                        let mut rx = tx.subscribe();
                        let h = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                        if s.write_all(h.as_bytes()).await.is_err() {
                            return;
                        }
                        while let Ok(line) = rx.recv().await {
                            let line = format!("{line}\n");
                            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                            if s.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    let mode = *m.lock().unwrap();
                    let (status, body) = match mode {
                        ListMode::Ok => (
                            "200 OK",
                            format!(
                                r#"{{"apiVersion":"v1","kind":"PodList","metadata":{{"resourceVersion":"10"}},"items":[{}]}}"#,
                                pods.join(",")
                            ),
                        ),
                        ListMode::Forbidden => (
                            "403 Forbidden",
                            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:imds-observer:imds-observer\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#
                                .to_string(),
                        ),
                        ListMode::Garbage => ("200 OK", "<html>this is not the API server</html>".to_string()),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        FakeApi { port, events, requests, mode }
    }

    fn start(api: &FakeApi) -> (Table<Arc<PodInfo>>, SharedState) {
        let changes = Changes::default();
        let (table, writer) = Table::watched(&changes);
        let config = kube::Config::new(format!("http://127.0.0.1:{}", api.port).parse().unwrap());
        let state = SharedState::default();
        tokio::spawn(watch(client(config).unwrap(), "node-a".into(), writer, state.clone()));
        (table, state)
    }

    async fn until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn found(t: &Table<Arc<PodInfo>>, uid: &str) -> Option<Arc<PodInfo>> {
        match t.get(uid) {
            Answer::Found(p) => Some(p),
            _ => None,
        }
    }

    #[tokio::test]
    async fn lists_then_follows_adds_and_deletes_on_this_node_only() {
        let api = fake_api(vec![pod_json(UID_A, "api-7f9c", CID_A, 9)], ListMode::Ok).await;
        let (table, state) = start(&api);
        until("pod A listed", Duration::from_secs(10), || found(&table, UID_A).is_some()).await;
        let a = found(&table, UID_A).unwrap();
        assert_eq!((a.name.as_str(), a.namespace.as_str()), ("api-7f9c", "payments"));
        assert_eq!(a.labels.get("app").map(String::as_str), Some("api-7f9c"));
        assert_eq!(a.labels.len(), 2, "labels only, not annotations");
        let c = a.container(CID_A).expect("container by id");
        assert_eq!((c.name.as_str(), c.image.as_str()), ("api", "registry.example/api-7f9c:1.42"));
        assert_eq!(a.container(&format!("{CID_A}00")).map(|c| c.name.as_str()), Some("init"));
        assert_eq!(a.containers.len(), 2, "envoy has no container id yet");
        assert!(state.lock().unwrap().synced);
        // Only this node's pods were asked for, by list and by watch.
        until("watch started", Duration::from_secs(5), || {
            api.requests.lock().unwrap().iter().any(|r| r.contains("watch=true"))
        })
        .await;
        for r in api.requests.lock().unwrap().iter() {
            assert!(r.contains("fieldSelector=spec.nodeName%3Dnode-a"), "{r}");
        }

        // A pod started after the list.
        let added =
            format!(r#"{{"type":"ADDED","object":{}}}"#, pod_json(UID_B, "worker-1", CID_B, 11));
        api.events.send(added).unwrap();
        until("pod B added", Duration::from_secs(5), || found(&table, UID_B).is_some()).await;
        assert_eq!(
            found(&table, UID_B).unwrap().container(CID_B).unwrap().image,
            "registry.example/worker-1:1.42"
        );

        // Pod A deleted.
        let deleted =
            format!(r#"{{"type":"DELETED","object":{}}}"#, pod_json(UID_A, "api-7f9c", CID_A, 12));
        api.events.send(deleted).unwrap();
        until("pod A deleted", Duration::from_secs(5), || found(&table, UID_A).is_none()).await;
        assert_eq!(table.get(UID_A), Answer::Pending);
        assert!(found(&table, UID_B).is_some());
        assert_eq!(state.lock().unwrap().pods, 1);
        assert_eq!(state.lock().unwrap().failures, 0);
    }

    #[tokio::test]
    async fn forbidden_names_the_missing_rbac_retries_and_recovers() {
        let api = fake_api(vec![pod_json(UID_A, "api-7f9c", CID_A, 9)], ListMode::Forbidden).await;
        let (table, state) = start(&api);
        until("two failed lists (a retry)", Duration::from_secs(10), || {
            state.lock().unwrap().failures >= 2
        })
        .await;
        let err = state.lock().unwrap().last_error.clone().unwrap();
        assert!(err.contains("pods list/watch on node node-a forbidden (HTTP 403"), "{err}");
        assert!(err.contains("get, list and watch on pods"), "{err}");
        assert_eq!(table.get(UID_A), Answer::Pending);
        assert!(!state.lock().unwrap().synced);
        // RBAC fixed: the next retry lists.
        *api.mode.lock().unwrap() = ListMode::Ok;
        until("listed after the fix", Duration::from_secs(15), || found(&table, UID_A).is_some())
            .await;
        assert!(state.lock().unwrap().synced);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_crash() {
        let api = fake_api(vec![], ListMode::Garbage).await;
        let (table, state) = start(&api);
        until("a failed list", Duration::from_secs(10), || state.lock().unwrap().failures >= 1)
            .await;
        assert!(state.lock().unwrap().last_error.is_some());
        assert!(!state.lock().unwrap().synced);
        assert_eq!(table.get(UID_A), Answer::Pending);
    }

    #[test]
    fn pod_record_is_compact_and_prefers_the_spec_image_over_a_digest() {
        let mut pod: Pod = serde_json::from_str(&pod_json(UID_A, "api", CID_A, 1)).unwrap();
        // envoy gets an id; its status image is a bare digest.
        let st = pod.status.as_mut().unwrap().container_statuses.as_mut().unwrap();
        st[1].container_id = Some(format!("cri-o://{CID_B}"));
        let p = pod_info(&pod).unwrap();
        assert_eq!(p.container(CID_B).unwrap().image, "envoy:1.30");
        assert_eq!(p.mirror_of, None);
        // A mirror pod is also known by the static pod's UID: only when
        // the Node owns it, as the kubelet makes mirror pods.
        pod.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(MIRROR_ANNOTATION.into(), "6f6c8b1fa0a1f2b5e7e8c9d0e1f2a3b4".into());
        assert_eq!(pod_info(&pod).unwrap().keys().collect::<Vec<_>>(), vec![UID_A]);
        pod.metadata.owner_references = Some(vec![owner("Node")]);
        let p = pod_info(&pod).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), vec![UID_A, "6f6c8b1fa0a1f2b5e7e8c9d0e1f2a3b4"]);
        // Owned by a ReplicaSet, or a value that is no pod UID: no key.
        pod.metadata.owner_references = Some(vec![owner("ReplicaSet")]);
        assert_eq!(pod_info(&pod).unwrap().mirror_of, None);
        pod.metadata.owner_references = Some(vec![owner("Node")]);
        pod.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(MIRROR_ANNOTATION.into(), "x".repeat(4096));
        assert_eq!(pod_info(&pod).unwrap().mirror_of, None);
        pod.metadata.uid = None;
        assert_eq!(pod_info(&pod), None);
    }

    fn owner(kind: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: if kind == "Node" { "v1".into() } else { "apps/v1".into() },
            kind: kind.into(),
            name: "node-a".into(),
            uid: "9d0c5f0e-1111-4222-8333-444455556666".into(),
            ..Default::default()
        }
    }

    fn pod_with(uid: &str, mirror_of: Option<&str>) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            mirror_of: mirror_of.map(str::to_owned),
            ..Default::default()
        })
    }

    #[test]
    fn a_mirror_claim_never_displaces_a_pods_own_key() {
        // The victim's own UID, claimed as a mirror key by another pod.
        let victim = pod_with(UID_A, None);
        let claimant = pod_with(UID_B, Some(UID_A));
        let mut live: HashMap<String, Arc<PodInfo>> = HashMap::new();
        live.insert(UID_B.into(), claimant.clone());
        live.insert(UID_A.into(), victim.clone());
        let keys = by_key(&live);
        assert_eq!(keys[UID_A].uid, UID_A, "the victim keeps its key");
        assert_eq!(keys[UID_B].uid, UID_B);

        // The same through the watch's updates, in either order, and the
        // claimant's deletion leaves the victim's key in place.
        let changes = Changes::default();
        let (table, writer) = Table::<Arc<PodInfo>>::watched(&changes);
        let mut live = HashMap::new();
        for p in [victim.clone(), claimant.clone()] {
            live.insert(p.uid.clone(), p.clone());
            refresh(&writer, &live, p.keys().map(str::to_owned).collect());
        }
        assert_eq!(found(&table, UID_A).unwrap().uid, UID_A);
        live.remove(UID_B);
        refresh(&writer, &live, claimant.keys().map(str::to_owned).collect());
        assert_eq!(found(&table, UID_A).unwrap().uid, UID_A);
        assert!(found(&table, UID_B).is_none());

        // A static pod's key (no pod's own UID) goes to its mirror, and
        // when the mirror goes, to no one.
        const STATIC: &str = "6f6c8b1fa0a1f2b5e7e8c9d0e1f2a3b4";
        let mirror = pod_with(UID_B, Some(STATIC));
        live.insert(UID_B.into(), mirror.clone());
        refresh(&writer, &live, mirror.keys().map(str::to_owned).collect());
        assert_eq!(found(&table, STATIC).unwrap().uid, UID_B);
        live.remove(UID_B);
        refresh(&writer, &live, mirror.keys().map(str::to_owned).collect());
        assert!(found(&table, STATIC).is_none());
    }

    #[test]
    fn configured_in_cluster_or_with_kubeconfig() {
        assert!(!configured(|_| None));
        assert!(configured(|k| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.100.0.1".to_string())));
        assert!(configured(|k| (k == "KUBECONFIG").then(|| "/etc/kubeconfig".to_string())));
        assert!(!configured(|k| (k == "KUBECONFIG").then(|| " ".to_string())));
    }
}
