//! The workload behind a packet, as events and findings carry it. Filled
//! by `identity` (from cgroup paths and runtime APIs); here only its shape
//! and the names views give it.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// The pod's labels, from the API server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The pod's ServiceAccount, from the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The AWS identity its spec gives it, by the variables' presence (never
    /// their values): "irsa" (`AWS_ROLE_ARN` and
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`) or "pod_identity"
    /// (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_identity: Option<String>,
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
    /// The job's Nomad namespace, from the Nomad API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
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

    /// The label views show (`report`, the TUI): `namespace/pod/container`
    /// for a pod's container, else [`Container::label`]. The same string
    /// everywhere, so a row in a ticket is found in the TUI.
    pub fn workload_label(&self) -> String {
        match (&self.namespace, &self.pod, self.name.as_deref().filter(|n| !n.is_empty())) {
            (Some(ns), Some(pod), Some(name)) => format!("{ns}/{pod}/{name}"),
            _ => self.label(),
        }
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
            // Ids come from streams too: cut by characters, never inside one.
            return format!("{rt}:{}", id.chars().take(12).collect::<String>());
        }
        match (&self.cgroup, self.cgroup_id) {
            (Some(p), _) => p.clone(),
            (None, Some(id)) => format!("cgroup {id}"),
            (None, None) => "?".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Container;

    #[test]
    fn a_label_never_cuts_inside_a_character() {
        // Ids come from streams too (`report --from`): any UTF-8 at all.
        let c = Container {
            runtime: Some("docker".into()),
            id: Some("ééééééééééééééé".into()),
            ..Default::default()
        };
        assert_eq!(c.label(), "docker:éééééééééééé");
    }
}
