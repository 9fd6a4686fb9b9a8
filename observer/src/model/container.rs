//! The workload behind a packet, as events and findings carry it. Filled
//! by `identity` (from cgroup paths and runtime APIs); here only its shape
//! and the names views give it.
//!
//! Everything in it comes from a workload or its orchestrator (a pod's
//! labels, an image reference, a cgroup a container made), so a Container
//! is bounded: [`Container::bound`] cuts every string to its cap and keeps
//! the whole within `budget::IDENTITY_BYTES`, shedding labels (counted in
//! `labels_dropped`) before anything else.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    bounded::cap_bytes,
    budget::{CGROUP_PATH_BYTES, IDENTITY_BYTES},
};

/// Labels kept at most per pod.
pub const LABELS_MAX: usize = 16;
/// A label key longer than Kubernetes allows (a 253-byte DNS prefix, `/`,
/// a 63-byte name) is dropped, not cut: a cut key names another label.
pub const LABEL_KEY_BYTES: usize = 253 + 1 + 63;
/// A label value: Kubernetes' own limit; longer ones (from sources that do
/// not validate) are cut with a mark.
pub const LABEL_VALUE_BYTES: usize = 63;
/// Keys and values of the kept labels together.
pub const LABELS_BYTES: usize = 1 << 10;
/// A name: container, pod, namespace, ServiceAccount, Nomad job, group,
/// task and namespace, ECS task ARN. Kubernetes names are 63 or 253 bytes
/// at most; longer ones are cut with a mark.
pub const NAME_BYTES: usize = 128;
/// An image reference (registry, repository, tag and digest).
pub const IMAGE_BYTES: usize = 256;
/// Ids (container, pod, allocation) and the runtime name: the well-formed
/// ones are 64 bytes at most.
pub const ID_BYTES: usize = 64;
/// What one kept label costs beside its bytes: its key's and value's
/// String headers and its share of the map's node.
const LABEL_ENTRY_BYTES: usize = 64;

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
    /// The pod's labels, from the API server: the keys chosen
    /// (`--pod-labels`), within the caps above.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Chosen labels left out by the caps (count, bytes, key length).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub labels_dropped: u32,
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

fn is_zero(n: &u32) -> bool {
    *n == 0
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

    /// What it costs in memory, heap included, as `budget::IDENTITY_BYTES`
    /// counts it (the Arc's counts too).
    pub fn footprint(&self) -> usize {
        let s = |o: &Option<String>| o.as_ref().map_or(0, String::capacity);
        let nomad = self
            .nomad
            .as_ref()
            .map_or(0, |n| s(&n.alloc) + s(&n.job) + s(&n.group) + s(&n.task) + s(&n.namespace));
        let labels: usize =
            self.labels.iter().map(|(k, v)| k.capacity() + v.capacity() + LABEL_ENTRY_BYTES).sum();
        2 * size_of::<usize>()
            + size_of::<Self>()
            + [
                &self.id,
                &self.name,
                &self.runtime,
                &self.image,
                &self.pod,
                &self.namespace,
                &self.pod_uid,
                &self.service_account,
                &self.aws_identity,
                &self.ecs_task,
                &self.cgroup,
                &self.veth,
            ]
            .into_iter()
            .map(s)
            .sum::<usize>()
            + nomad
            + labels
    }

    /// Cut every string to its cap and the whole to `IDENTITY_BYTES`:
    /// labels go first (the last keys, counted in `labels_dropped`), then
    /// the longest strings are halved. Cheap when already bounded.
    pub fn bound(&mut self) {
        let cap = |o: &mut Option<String>, max: usize| {
            if let Some(v) = o.as_mut() {
                cap_bytes(v, max);
            }
        };
        for (o, max) in [
            (&mut self.id, ID_BYTES),
            (&mut self.runtime, ID_BYTES),
            (&mut self.pod_uid, ID_BYTES),
            (&mut self.aws_identity, ID_BYTES),
            (&mut self.name, NAME_BYTES),
            (&mut self.pod, NAME_BYTES),
            (&mut self.namespace, NAME_BYTES),
            (&mut self.service_account, NAME_BYTES),
            (&mut self.ecs_task, NAME_BYTES),
            (&mut self.veth, NAME_BYTES),
            (&mut self.image, IMAGE_BYTES),
            (&mut self.cgroup, CGROUP_PATH_BYTES),
        ] {
            cap(o, max);
        }
        if let Some(n) = self.nomad.as_mut() {
            cap(&mut n.alloc, ID_BYTES);
            for o in [&mut n.job, &mut n.group, &mut n.task, &mut n.namespace] {
                cap(o, NAME_BYTES);
            }
        }
        self.labels_dropped = self.labels_dropped.saturating_add(bound_labels(&mut self.labels));
        while self.footprint() > IDENTITY_BYTES {
            if self.labels.pop_last().is_some() {
                self.labels_dropped = self.labels_dropped.saturating_add(1);
                continue;
            }
            // No label left: halve the longest string (only a mix no
            // runtime makes gets here).
            let mut longest: Option<&mut String> = None;
            for v in self.strings_mut() {
                if longest.as_ref().is_none_or(|l| v.len() > l.len()) {
                    longest = Some(v);
                }
            }
            match longest {
                Some(v) if v.len() > 8 => {
                    let half = v.len() / 2;
                    cap_bytes(v, half);
                }
                _ => break,
            }
        }
    }

    fn strings_mut(&mut self) -> impl Iterator<Item = &mut String> {
        let nomad = self
            .nomad
            .as_mut()
            .map(|n| [&mut n.alloc, &mut n.job, &mut n.group, &mut n.task, &mut n.namespace]);
        [
            &mut self.id,
            &mut self.name,
            &mut self.runtime,
            &mut self.image,
            &mut self.pod,
            &mut self.namespace,
            &mut self.pod_uid,
            &mut self.service_account,
            &mut self.aws_identity,
            &mut self.ecs_task,
            &mut self.cgroup,
            &mut self.veth,
        ]
        .into_iter()
        .chain(nomad.into_iter().flatten())
        .filter_map(Option::as_mut)
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

/// Keep `labels` within the caps (count, key length, value length, total
/// bytes), in key order; how many were dropped. Values over the cap are cut
/// with a mark, not dropped.
pub fn bound_labels(labels: &mut BTreeMap<String, String>) -> u32 {
    let mut dropped = 0u32;
    let mut kept = BTreeMap::new();
    let mut bytes = 0;
    for (k, mut v) in std::mem::take(labels) {
        cap_bytes(&mut v, LABEL_VALUE_BYTES);
        let size = k.len() + v.len();
        if kept.len() >= LABELS_MAX || k.len() > LABEL_KEY_BYTES || bytes + size > LABELS_BYTES {
            dropped = dropped.saturating_add(1);
            continue;
        }
        bytes += size;
        kept.insert(k, v);
    }
    *labels = kept;
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_pod_with_a_mebibyte_of_labels_stays_within_the_budget() {
        // 1 MiB of labels (etcd admits 1.5 MiB objects), long values, long
        // names and image: what a hostile pod spec can carry.
        let labels: BTreeMap<String, String> =
            (0..16_384).map(|i| (format!("k{i:05}"), "v".repeat(60))).collect();
        assert!(labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() >= 1 << 20);
        let mut c = Container {
            id: Some("a".repeat(64)),
            name: Some("n".repeat(10_000)),
            runtime: Some("containerd".into()),
            image: Some("i".repeat(100_000)),
            pod: Some("p".repeat(10_000)),
            namespace: Some("s".repeat(10_000)),
            pod_uid: Some("0f4b2c7e-9a1d-4e3b-8c6a-5d2e1f0a9b8c".into()),
            labels,
            service_account: Some("a".repeat(10_000)),
            aws_identity: Some("irsa".into()),
            nomad: Some(Nomad {
                alloc: Some("x".repeat(1000)),
                job: Some("j".repeat(1000)),
                group: Some("g".repeat(1000)),
                task: Some("t".repeat(1000)),
                namespace: Some("m".repeat(1000)),
            }),
            ecs_task: Some("e".repeat(10_000)),
            cgroup: Some(format!("/{}", "c/".repeat(10_000))),
            cgroup_id: Some(7),
            veth: Some("v".repeat(1000)),
            ..Default::default()
        };
        c.bound();
        assert!(c.footprint() <= IDENTITY_BYTES, "{} bytes", c.footprint());
        assert!(c.labels_dropped > 16_000, "{}", c.labels_dropped);
        assert!(serde_json::to_string(&c).unwrap().len() < IDENTITY_BYTES);
        assert!(c.image.as_deref().unwrap().ends_with('…'));
        // Bounded again: nothing changes.
        let again = {
            let mut d = c.clone();
            d.bound();
            d
        };
        assert_eq!(again, c);

        // A pod of ordinary size keeps everything, and its labels.
        let mut c = Container {
            pod: Some("api-7f9c".into()),
            namespace: Some("payments".into()),
            image: Some("registry.example/api:1.42".into()),
            cgroup: Some("/kubepods.slice/x".into()),
            labels: BTreeMap::from([
                ("app".into(), "api".into()),
                ("app.kubernetes.io/name".into(), "api".into()),
            ]),
            ..Default::default()
        };
        let before = c.clone();
        c.bound();
        assert_eq!(c, before);
    }

    #[test]
    fn labels_are_capped_by_count_key_and_bytes_and_long_values_cut() {
        let mut l: BTreeMap<String, String> = BTreeMap::from([
            ("a".into(), "x".repeat(100)),
            (format!("{}/n", "p".repeat(400)), "v".into()),
        ]);
        assert_eq!(bound_labels(&mut l), 1, "the over-long key");
        assert_eq!(l["a"].len(), LABEL_VALUE_BYTES);
        assert!(l["a"].ends_with('…'));
        let mut l: BTreeMap<String, String> =
            (0..40).map(|i| (format!("k{i:02}"), "v".into())).collect();
        assert_eq!(bound_labels(&mut l), 24);
        assert_eq!(l.len(), LABELS_MAX);
        let mut l: BTreeMap<String, String> =
            (0..16).map(|i| (format!("{i:02}{}", "k".repeat(250)), "v".into())).collect();
        let dropped = bound_labels(&mut l);
        assert!(l.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= LABELS_BYTES);
        assert_eq!(dropped as usize + l.len(), 16);
    }
}
