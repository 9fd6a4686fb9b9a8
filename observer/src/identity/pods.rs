//! What the identity keeps of a Kubernetes pod: a compact record, never the
//! Pod object (a pod's JSON is tens of KiB with managed fields and specs; a
//! record is its name, namespace, labels and one line per container).
//! Filled by the pod watch in `kubernetes.rs` (cargo feature `kubernetes`).

use std::collections::BTreeMap;

/// One pod on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
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
    fn container_ids_lose_their_runtime_prefix() {
        assert_eq!(runtime_container_id("containerd://abc"), Some("abc"));
        assert_eq!(runtime_container_id("cri-o://abc"), Some("abc"));
        assert_eq!(runtime_container_id("docker://abc"), Some("abc"));
        assert_eq!(runtime_container_id("abc"), None);
        assert_eq!(runtime_container_id("containerd://"), None);
    }
}
