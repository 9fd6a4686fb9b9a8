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
    collections::HashMap,
    pin::pin,
    sync::{Arc, Mutex},
};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use tracing::{debug, info, warn};

use super::{
    lookup::Writer,
    pods::{PodContainer, PodInfo, runtime_container_id},
};

/// The annotation a mirror pod carries: the static pod's UID on the node.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

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

/// Infer the client configuration (kubeconfig, else in-cluster) and watch
/// this node's pods, on a task of its own.
pub fn spawn_from_env(node: String, writer: Writer<Arc<PodInfo>>) -> SharedState {
    let state = SharedState::default();
    let st = state.clone();
    tokio::spawn(async move {
        let config = match kube::Config::infer().await {
            Ok(c) => c,
            Err(e) => {
                warn!("Kubernetes: no usable client configuration ({e}); pod names are left out");
                st.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(e.to_string());
                return;
            }
        };
        let url = config.cluster_url.to_string();
        match client(config) {
            Ok(client) => {
                info!(api_server = %url, node = %node, "Kubernetes: watching this node's pods");
                watch(client, node, writer, st).await;
            }
            Err(e) => {
                warn!("Kubernetes: cannot build a client for {url}: {e}; pod names are left out");
                st.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(e.to_string());
            }
        }
    });
    state
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
                    if let Some(old) = live.insert(p.uid.clone(), p.clone()) {
                        // A mirror annotation that changed leaves no stale key.
                        for k in old.keys().filter(|k| !p.keys().any(|n| n == *k)) {
                            writer.remove(k);
                        }
                    }
                    for k in p.keys() {
                        writer.found(k.to_owned(), p.clone());
                    }
                    set(&|s| s.pods = live.len());
                }
            }
            Ok(Event::Delete(pod)) => {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                let old = live.remove(uid);
                for p in old.iter().map(|p| (**p).clone()).chain(pod_info(&pod)) {
                    for k in p.keys() {
                        writer.remove(k);
                    }
                }
                set(&|s| s.pods = live.len());
            }
            Err(e) => {
                let msg = describe(&e, &node);
                if !failing {
                    warn!("Kubernetes API: {msg}; pod names are left out until it answers (retrying with backoff)");
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

/// Every key of every pod (UID, and a mirror pod's static UID).
fn by_key(pods: &HashMap<String, Arc<PodInfo>>) -> HashMap<String, Arc<PodInfo>> {
    let mut out = HashMap::with_capacity(pods.len());
    for p in pods.values() {
        for k in p.keys() {
            out.insert(k.to_owned(), p.clone());
        }
    }
    out
}

/// A failure in words, naming what RBAC is missing when that is the cause.
fn describe(e: &watcher::Error, node: &str) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(s),
        _ => None,
    };
    let Some(s) = status else { return e.to_string() };
    let message = super::http1::truncate(s.message.trim(), 300);
    match s.code {
        403 => format!(
            "pods list/watch on node {node} forbidden (HTTP 403: {message}): the observer's ServiceAccount needs \
             get, list and watch on pods (ClusterRole in deploy/kubernetes/rbac.yaml)"
        ),
        401 => format!("unauthorized (HTTP 401: {message}): the API server rejected the observer's credentials"),
        code => format!("pods list/watch on node {node} failed (HTTP {code}: {message})"),
    }
}

/// The compact record of a pod; `None` without a UID.
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let m = &pod.metadata;
    let uid = m.uid.clone().filter(|u| !u.is_empty())?;
    let spec_image = |name: &str| {
        let spec = pod.spec.as_ref()?;
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .and_then(|c| c.image.clone())
    };
    let mut containers = Vec::new();
    if let Some(st) = &pod.status {
        let all = st
            .container_statuses
            .iter()
            .flatten()
            .chain(st.init_container_statuses.iter().flatten())
            .chain(st.ephemeral_container_statuses.iter().flatten());
        for cs in all {
            if let Some(c) = container(cs, &spec_image) {
                containers.push(c);
            }
        }
    }
    Some(PodInfo {
        uid,
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone().unwrap_or_default(),
        labels: m.labels.clone().unwrap_or_default(),
        containers,
        mirror_of: m.annotations.as_ref().and_then(|a| a.get(MIRROR_ANNOTATION)).filter(|v| !v.is_empty()).cloned(),
    })
}

fn container(cs: &ContainerStatus, spec_image: &dyn Fn(&str) -> Option<String>) -> Option<PodContainer> {
    let id = runtime_container_id(cs.container_id.as_deref()?)?.to_owned();
    // The status names the image as the runtime resolved it; some runtimes
    // give only a digest there, and then the spec's reference says more.
    let image = if cs.image.is_empty() || cs.image.starts_with("sha256:") {
        spec_image(&cs.name).unwrap_or_else(|| cs.image.clone())
    } else {
        cs.image.clone()
    };
    Some(PodContainer { id, name: cs.name.clone(), image })
}
