//! What the identity keeps of a Kubernetes pod: a compact record, never the
//! Pod object (a pod's JSON is tens of KiB with managed fields and specs; a
//! record is its name, namespace, labels and one line per container).
//! Filled by the pod watch in `kubernetes.rs` (cargo feature `kubernetes`).
//!
//! A pod's labels are the pod's author's to make (etcd admits a 1.5 MiB
//! object): the record keeps only the keys chosen (`--pod-labels`, a short
//! allow-list by default), within the caps of `model::container`.

use std::{collections::BTreeMap, sync::OnceLock};

use crate::model::container::bound_labels;

/// The pod label keys kept by default: the ones operators group workloads
/// by (the recommended `app.kubernetes.io/*` labels, the older `app` and
/// `k8s-app`, and `team`). Docs: docs/configuration.md, `--pod-labels`.
pub const DEFAULT_POD_LABELS: &[&str] = &[
    "app",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "k8s-app",
    "team",
];

/// Which pod label keys an identity keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelKeys {
    /// These keys (none: no labels).
    Only(Vec<String>),
    /// Any key (`*`), still within the caps: the first in key order.
    All,
}

impl Default for LabelKeys {
    fn default() -> Self {
        LabelKeys::Only(DEFAULT_POD_LABELS.iter().map(|k| k.to_string()).collect())
    }
}

impl LabelKeys {
    /// From `--pod-labels` values: `*` is every key, empty values are
    /// none (`--pod-labels ''` keeps no label).
    pub fn parse(values: &[String]) -> Self {
        let keys: Vec<String> =
            values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned).collect();
        if keys.iter().any(|k| k == "*") {
            return LabelKeys::All;
        }
        LabelKeys::Only(keys)
    }

    /// The chosen labels of `labels`, within the caps; and how many chosen
    /// ones the caps left out.
    pub fn select(&self, labels: &BTreeMap<String, String>) -> (BTreeMap<String, String>, u32) {
        let mut kept: BTreeMap<String, String> = match self {
            // Not a clone of the whole map: at most a few more than the
            // cap are copied before counting the rest.
            LabelKeys::All => labels
                .iter()
                .take(4 * crate::model::container::LABELS_MAX)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            LabelKeys::Only(keys) => keys
                .iter()
                .filter_map(|k| labels.get_key_value(k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let skipped = labels.len().saturating_sub(kept.len());
        let mut dropped = bound_labels(&mut kept);
        if matches!(self, LabelKeys::All) {
            dropped = dropped.saturating_add(u32::try_from(skipped).unwrap_or(u32::MAX));
        }
        (kept, dropped)
    }
}

static POD_LABELS: OnceLock<LabelKeys> = OnceLock::new();

/// Choose the label keys every pod record keeps, once, at start (main,
/// from `--pod-labels`); a later call changes nothing. Unset: the default.
pub fn set_pod_labels(keys: LabelKeys) {
    let _ = POD_LABELS.set(keys);
}

/// The label keys pod records keep.
pub fn pod_labels() -> &'static LabelKeys {
    POD_LABELS.get_or_init(LabelKeys::default)
}

/// One pod on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The chosen keys only, within the caps (`LabelKeys::select`).
    pub labels: BTreeMap<String, String>,
    /// Chosen labels the caps left out.
    pub labels_dropped: u32,
    /// Containers with a runtime id (from `status.containerStatuses`, init
    /// and ephemeral ones included).
    pub containers: Vec<PodContainer>,
    /// A static pod's mirror: the UID the kubelet uses on the node (and so
    /// in cgroup paths), from the `kubernetes.io/config.mirror` annotation.
    pub mirror_of: Option<String>,
    /// `spec.serviceAccountName`.
    pub service_account: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodContainer {
    /// Runtime container id without its `containerd://` (etc.) prefix.
    pub id: String,
    pub name: String,
    pub image: String,
    /// The AWS identity its spec gives it (`model::Container::aws_identity`).
    pub aws_identity: Option<&'static str>,
}

/// What a container's environment variable names say of its AWS identity:
/// EKS Pod Identity, else IRSA (both variables), else none. Names only: the
/// values are never read.
pub fn aws_identity<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let (mut role, mut token, mut full_uri) = (false, false, false);
    names.by_ref().for_each(|n| match n {
        "AWS_ROLE_ARN" => role = true,
        "AWS_WEB_IDENTITY_TOKEN_FILE" => token = true,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI" => full_uri = true,
        _ => {}
    });
    if full_uri {
        Some("pod_identity")
    } else if role && token {
        Some("irsa")
    } else {
        None
    }
}

impl PodInfo {
    pub fn container(&self, id: &str) -> Option<&PodContainer> {
        self.containers.iter().find(|c| c.id == id)
    }

    /// The keys a cgroup path may know this pod by.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.uid.as_str()).chain(self.mirror_of.as_deref())
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
#[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
pub fn runtime_container_id(s: &str) -> Option<&str> {
    let (_, id) = s.split_once("://")?;
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aws_identity_is_told_by_variable_names() {
        let of = |n: &[&str]| aws_identity(n.iter().copied());
        assert_eq!(of(&["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"]), Some("irsa"));
        assert_eq!(of(&["AWS_CONTAINER_CREDENTIALS_FULL_URI"]), Some("pod_identity"));
        assert_eq!(
            of(&[
                "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI"
            ]),
            Some("pod_identity")
        );
        // Half of IRSA is not IRSA; a look-alike is nothing.
        assert_eq!(of(&["AWS_ROLE_ARN"]), None);
        assert_eq!(of(&["aws_role_arn", "AWS_WEB_IDENTITY_TOKEN_FILE"]), None);
        assert_eq!(of(&[]), None);
    }

    #[test]
    fn only_the_chosen_label_keys_are_kept_within_the_caps() {
        let labels: BTreeMap<String, String> = [
            ("app", "api"),
            ("team", "payments"),
            ("pod-template-hash", "7f9c"),
            ("secret-ish", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (kept, dropped) = LabelKeys::default().select(&labels);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["app", "team"]);
        assert_eq!(dropped, 0, "keys not chosen are not counted as dropped");
        let only = LabelKeys::parse(&["pod-template-hash".into()]);
        assert_eq!(only.select(&labels).0.keys().collect::<Vec<_>>(), ["pod-template-hash"]);
        assert_eq!(LabelKeys::parse(&["".into()]).select(&labels), (BTreeMap::new(), 0));
        assert_eq!(LabelKeys::parse(&[" * ".into()]), LabelKeys::All);
        assert_eq!(LabelKeys::All.select(&labels).0.len(), 4);

        // A pod with ten thousand labels: every key, capped.
        let many: BTreeMap<String, String> =
            (0..10_000).map(|i| (format!("k{i:05}"), "v".repeat(63))).collect();
        let (kept, dropped) = LabelKeys::All.select(&many);
        assert!(kept.len() <= crate::model::container::LABELS_MAX);
        assert_eq!(kept.len() + dropped as usize, 10_000);
    }

    #[test]
    fn container_ids_lose_their_runtime_prefix() {
        assert_eq!(runtime_container_id("containerd://abc"), Some("abc"));
        assert_eq!(runtime_container_id("cri-o://abc"), Some("abc"));
        assert_eq!(runtime_container_id("docker://abc"), Some("abc"));
        assert_eq!(runtime_container_id("abc"), None);
        assert_eq!(runtime_container_id("containerd://"), None);
    }
}
