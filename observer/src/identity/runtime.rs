//! What a cgroup v2 path says about the workload in it: the container runtime
//! and container id, the Kubernetes pod UID and QoS class, the Nomad
//! allocation and task, the ECS task, or the systemd unit of a host process.
//!
//! Only the path is read here (no file system, no runtime API): the runtime
//! APIs add names and labels later (see `docker.rs`). Every convention below
//! cites where its shape comes from; the parser is lenient about everything
//! else, so a path of an unknown shape, a truncated one or one with an id that
//! is not hex gives a default or partial identity and never panics.
//!
//! # Conventions
//!
//! Container scopes (systemd cgroup driver): the OCI runtime (runc, crun) is
//! handed `linux.cgroupsPath = "<slice>:<prefix>:<id>"` and creates the
//! transient unit `<prefix>-<id>.scope` in `<slice>`
//! (runc `libcontainer/cgroups/systemd/common.go`, `getUnitName`).
//! - Docker: moby `daemon/oci_linux.go` (`WithCgroups`) uses prefix `docker`
//!   and, with the systemd driver, the default parent `system.slice`
//!   (`user.slice` rootless): `/system.slice/docker-<id>.scope`. With the
//!   cgroupfs driver the default parent is `/docker`: `/docker/<id>`.
//! - containerd CRI plugin: prefix `cri-containerd` (`getCgroupsPath` in
//!   `internal/cri/server/helpers_linux.go`, `pkg/cri/...` before 2.0):
//!   `.../kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope`; with the
//!   cgroupfs driver the bare id under the pod: `/kubepods/<qos>/pod<uid>/<id>`.
//!   nerdctl (containerd without CRI) uses prefix `nerdctl`
//!   (nerdctl `pkg/cmd/container/create_linux.go`): `nerdctl-<id>.scope`.
//! - CRI-O: `crio-<id>.scope`, and the container's monitor `crio-conmon-<id>.scope`
//!   (cri-o `internal/config/cgmgr/systemd.go`); cgroupfs driver `crio-<id>`
//!   and `<parent>/crio-conmon-<id>` (`internal/config/cgmgr/cgroupfs.go`).
//!   conmon is not the container: it runs on the host, in the pod's cgroup
//!   (or `system.slice` with `conmon_cgroup = "system.slice"`).
//! - Podman: `libpod-<id>.scope` in `machine.slice` (rootful) or in the user's
//!   `user@<uid>.service/user.slice` (rootless), conmon in
//!   `libpod-conmon-<id>.scope` (podman `getOCICgroupPath` in
//!   `libpod/container_internal_linux.go`: `<slice>:libpod:<id>` for systemd,
//!   `<parent>/libpod-<id>` for cgroupfs; `libpod/runtime_ctr.go` sets the
//!   default parents; `libpod/oci_conmon_linux.go` places conmon). With
//!   `cgroup_manager = "cgroupfs"` the parent is `/libpod_parent`:
//!   `/libpod_parent/libpod-<id>`, and conmon goes to `/libpod_parent/conmon`.
//!   Pods add `machine-libpod_pod_<podid>.slice`. crun may add a
//!   `container` child cgroup below the scope.
//!
//! Kubernetes (kubelet `pkg/kubelet/cm/cgroup_manager_linux.go`,
//! `ToSystemd`/`ToCgroupfs`, and `pkg/kubelet/cm/qos_container_manager_linux.go`;
//! doc "Configuring a cgroup driver"): pod cgroups are
//! `/kubepods/<qos>/pod<uid>` for burstable and besteffort pods and
//! `/kubepods/pod<uid>` for guaranteed ones (no QoS level) with the cgroupfs
//! driver; the systemd driver turns each level into a nested slice,
//! `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice`, with
//! the UID's `-` escaped as `_` (a `-` in a slice name means nesting). kind
//! and other nested setups prefix the root (`kubelet.slice/kubelet-kubepods.slice/...`).
//! A containerd configured for cgroupfs under a systemd-driver kubelet leaves
//! the unconverted `<slice>:<prefix>:<id>` string as one path component; that
//! is recognised too.
//!
//! Nomad (`client/lib/cgroupslib`, `editor.go` `pathCG2`/`scopeCG1` and
//! `partition.go`): exec, raw_exec and java tasks run in
//! `/nomad.slice/share.slice/<alloc-uuid>.<task>.scope` (tasks with reserved
//! cores: `reserve.slice`) on cgroup v2 (Nomad 1.7+), in
//! `/nomad/<alloc-uuid>.<task>` (and `/nomad/{share,reserve}/...` for cpuset)
//! on cgroup v1. Docker-driver tasks are plain Docker containers: Nomad 1.7+
//! no longer sets a cgroup parent (`drivers/docker/driver.go`: "do not set
//! cgroup parent anymore"), so they sit in `system.slice/docker-<id>.scope`;
//! older Nomad put them in `nomad.slice/docker-<id>.scope`. Their allocation
//! and task come from the `com.hashicorp.nomad.*` labels through the Docker API.
//!
//! ECS on EC2 (amazon-ecs-agent): cgroup v1 tasks get `/ecs/<task-id>`
//! (`agent/config/config_unix.go`, `DefaultTaskCgroupV1Prefix = "/ecs"`) and
//! Docker puts each container at `/ecs/<task-id>/<container-id>`; cgroup v2
//! tasks get the systemd slice `ecstasks-<task-id>.slice` below
//! `ecstasks.slice` (`DefaultTaskCgroupV2Prefix = "ecstasks"`,
//! `agent/api/task/task_linux.go` `buildCgroupV2Root`, whose comment shows
//! `/sys/fs/cgroup/ecstasks.slice/ecstasks-<id>.slice/docker-<id>.scope`).
//! ECS containers are Docker containers, so their runtime is `docker` and the
//! task is in [`PathIdentity::ecs_task`].
//!
//! Delegated subtrees: a user's systemd manager (`user@<uid>.service`,
//! below `user.slice`) owns its subtree and may make any cgroup in it,
//! `kubepods-...-pod<uid>.slice` or `nomad.slice/<alloc>.<task>.scope`
//! included; so may an LXC container (`lxc.payload.<name>`). Below such a level, kubepods,
//! Nomad and ECS levels are not read (the path names no pod, allocation or
//! task), and a container id there (rootless Podman, rootless Docker) is
//! not one the host's runtime socket or the API server can vouch for
//! ([`PathIdentity::delegated`]).
//!
//! Host processes: systemd units (`/system.slice/<name>.service`,
//! `/init.scope`), user sessions (`/user.slice/user-<uid>.slice/session-<n>.scope`)
//! and the root cgroup `/` (systemd.special(7), "Control group hierarchy" in
//! systemd.unit(5)).

use serde::{Deserialize, Serialize};

/// Runtime names used in [`PathIdentity::runtime`].
pub mod runtimes {
    pub const DOCKER: &str = "docker";
    pub const CONTAINERD: &str = "containerd";
    pub const CRIO: &str = "cri-o";
    pub const PODMAN: &str = "podman";
    pub const NOMAD: &str = "nomad";
    pub const SYSTEMD: &str = "systemd";
}

/// What a cgroup path says about its workload. Absent fields are omitted when
/// serialised; `host` only when true.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathIdentity {
    /// "docker", "containerd", "cri-o", "podman", "nomad" (exec/raw_exec/java
    /// tasks), or "systemd" for host processes in a systemd unit or slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Container id, always the full 64 hex digits. `None` for a runtime's
    /// monitor process (conmon) and for ids that are not 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Kubernetes pod UID, with dashes (the systemd driver's `_` undone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// "guaranteed" | "burstable" | "besteffort".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs_task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nomad_alloc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nomad_task: Option<String>,
    /// The innermost systemd unit of a host process (levels inside a
    /// container are not read), e.g. "sshd.service", "session-3.scope".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    /// Not a container: a systemd service, a user session, the root cgroup.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
    /// Below a level delegated to a user, a VM or a system container (see
    /// the module docs): what the path names there is its owner's making.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delegated: bool,
}

impl PathIdentity {
    /// Whether the path named any workload (container, pod, task) at all.
    pub fn is_workload(&self) -> bool {
        self.id.is_some()
            || self.runtime.as_deref().is_some_and(|r| r != runtimes::SYSTEMD)
            || self.pod_uid.is_some()
            || self.ecs_task.is_some()
            || self.nomad_alloc.is_some()
    }
}

/// Container-scope prefixes, longest (conmon) first so that
/// `libpod-conmon-<id>` is not read as container `conmon-<id>`.
/// (prefix, runtime, is the runtime's monitor rather than the container)
const SCOPE_PREFIXES: &[(&str, &str, bool)] = &[
    ("cri-containerd-", runtimes::CONTAINERD, false),
    ("crio-conmon-", runtimes::CRIO, true),
    ("crio-", runtimes::CRIO, false),
    ("libpod-conmon-", runtimes::PODMAN, true),
    ("libpod-", runtimes::PODMAN, false),
    ("docker-", runtimes::DOCKER, false),
    ("nerdctl-", runtimes::CONTAINERD, false),
];

/// Prefixes in the `<slice>:<prefix>:<id>` form (runc's systemd cgroupsPath).
const COLON_PREFIXES: &[(&str, &str)] = &[
    ("cri-containerd", runtimes::CONTAINERD),
    ("crio", runtimes::CRIO),
    ("libpod", runtimes::PODMAN),
    ("docker", runtimes::DOCKER),
    ("nerdctl", runtimes::CONTAINERD),
];

/// systemd unit suffixes that own cgroups (slices are handled apart).
const UNIT_SUFFIXES: &[&str] = &[".service", ".scope", ".socket", ".mount", ".swap"];

/// Parse a cgroup v2 path relative to the cgroup2 root, e.g.
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
/// A leading `/` is optional. When containers nest (kind, docker-in-docker),
/// the outermost one wins: the levels below a container are made by
/// whatever runs in it, and a workload that can create its own cgroups
/// could otherwise name itself after a victim (`.../docker-<victim>.scope`).
pub fn parse_cgroup_path(path: &str) -> PathIdentity {
    let path = path.trim_end_matches(['\n', '\r']);
    if path.is_empty() {
        // Not the root ("/"): nothing is known.
        return PathIdentity::default();
    }
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let mut out = PathIdentity::default();
    let mut kube = false; // inside a kubepods hierarchy
    let mut nomad = false; // inside nomad.slice or /nomad
    let mut workload_seen = false;

    for (i, &c) in comps.iter().enumerate() {
        // Below the first container (or Nomad task): the container's own.
        if out.id.is_some() || out.nomad_alloc.is_some() {
            break;
        }
        let parent = if i > 0 { Some(comps[i - 1]) } else { None };
        let mut workload = false;
        if !kube && !nomad && is_delegation(c) {
            out.delegated = true;
        }
        let own = !out.delegated;

        // Kubernetes levels.
        if own && (c == "kubepods" || (c.ends_with(".slice") && c.contains("kubepods"))) {
            kube = true;
        }
        if kube {
            if let Some((qos, uid)) = kube_level(c) {
                if qos.is_some() {
                    out.qos = qos;
                }
                if uid.is_some() {
                    out.pod_uid = uid;
                    workload = true;
                }
            }
        }

        // Nomad.
        if own && (c == "nomad.slice" || (i == 0 && c == "nomad")) {
            nomad = true;
        } else if nomad {
            if let Some((alloc, task)) = nomad_scope(c) {
                out.nomad_alloc = Some(alloc);
                out.nomad_task = Some(task);
                out.runtime = Some(runtimes::NOMAD.into());
                out.id = None;
                workload = true;
            }
        }

        // ECS task levels.
        if let Some(task) = c.strip_prefix("ecstasks-").and_then(|s| s.strip_suffix(".slice")) {
            if own && is_task_id(task) {
                out.ecs_task = Some(task.to_owned());
                workload = true;
            }
        } else if i == 1 && parent == Some("ecs") && is_task_id(c) {
            out.ecs_task = Some(c.to_owned());
            workload = true;
        }

        // Containers.
        if let Some((runtime, id)) = container_component(c, parent) {
            out.runtime =
                runtime.map(str::to_owned).or(out.runtime.take().filter(|r| r != runtimes::NOMAD));
            out.id = id;
            workload = true;
        } else if let Some((slice, prefix, id)) = split3(c, ':') {
            // `<slice>:<prefix>:<id>` left unconverted (see module docs).
            if let Some(&(_, runtime)) = COLON_PREFIXES.iter().find(|(p, _)| *p == prefix) {
                if let Some((qos, uid)) = kube_level(slice).filter(|_| own) {
                    out.qos = qos.or(out.qos.take());
                    out.pod_uid = uid.or(out.pod_uid.take());
                }
                out.runtime = Some(runtime.into());
                out.id = is_container_id(id).then(|| id.to_owned());
                workload = true;
            }
        }

        if workload {
            workload_seen = true;
            out.systemd_unit = None;
        } else if UNIT_SUFFIXES.iter().any(|s| c.len() > s.len() && c.ends_with(s)) {
            out.systemd_unit = Some(c.to_owned());
        }
    }

    if out.pod_uid.is_some() && out.qos.is_none() {
        out.qos = Some("guaranteed".into());
    }
    // ECS containers are Docker containers (the agent drives Docker).
    if out.ecs_task.is_some() && out.id.is_some() && out.runtime.is_none() {
        out.runtime = Some(runtimes::DOCKER.into());
    }
    if !workload_seen && !out.is_workload() {
        let systemd = comps
            .iter()
            .any(|c| c.ends_with(".slice") || UNIT_SUFFIXES.iter().any(|s| c.ends_with(s)));
        let first_is_host =
            matches!(comps.first().copied(), Some("system.slice" | "user.slice" | "init.scope"));
        if comps.is_empty() || out.systemd_unit.is_some() || first_is_host {
            out.host = true;
            if systemd {
                out.runtime = Some(runtimes::SYSTEMD.into());
            }
        }
    }
    out
}

/// A level `c` of a path hands what is below it to someone other than
/// the host's own managers (module docs, "Delegated subtrees").
fn is_delegation(c: &str) -> bool {
    (c.starts_with("user@") && c.ends_with(".service")) || c.starts_with("lxc.payload.")
}

/// A container (or its monitor) named by one path component: the runtime (if
/// the component says) and the id (if it is 64 hex digits).
#[allow(clippy::type_complexity)]
fn container_component(
    c: &str,
    parent: Option<&str>,
) -> Option<(Option<&'static str>, Option<String>)> {
    // `<prefix>-<id>.scope` (systemd driver): the prefix alone names the
    // runtime even when the id is malformed (a partial identity).
    if let Some(base) = c.strip_suffix(".scope") {
        for &(prefix, runtime, monitor) in SCOPE_PREFIXES {
            if let Some(id) = base.strip_prefix(prefix) {
                let id = (!monitor && is_container_id(id)).then(|| id.to_owned());
                return Some((Some(runtime), id));
            }
        }
        return None;
    }
    // Bare cgroupfs names: only with a well-formed id, since `crio-foo` or
    // `libpod-bar` without `.scope` could be anything.
    for &(prefix, runtime, monitor) in SCOPE_PREFIXES {
        if let Some(id) = c.strip_prefix(prefix) {
            if is_container_id(id) && (prefix == "crio-" || prefix == "libpod-" || monitor) {
                return Some((Some(runtime), (!monitor).then(|| id.to_owned())));
            }
        }
    }
    // podman's cgroupfs conmon cgroup.
    if c == "conmon" && parent == Some("libpod_parent") {
        return Some((Some(runtimes::PODMAN), None));
    }
    // A bare id: `/docker/<id>` is Docker; under a kubepods pod or an ECS
    // task it is whichever runtime the node uses (filled in later).
    if is_container_id(c) {
        let runtime = (parent == Some("docker")).then_some(runtimes::DOCKER);
        return Some((runtime, Some(c.to_owned())));
    }
    None
}

/// QoS class and pod UID from one level of the kubepods hierarchy, either
/// driver: `burstable`, `pod<uid>`, `kubepods-besteffort.slice`,
/// `kubepods-burstable-pod<uid_with_underscores>.slice`.
fn kube_level(c: &str) -> Option<(Option<String>, Option<String>)> {
    let (segments, systemd): (Vec<&str>, bool) = match c.strip_suffix(".slice") {
        Some(stem) => (stem.split('-').collect(), true),
        None => (vec![c], false),
    };
    let mut qos = None;
    let mut uid = None;
    for s in &segments {
        match *s {
            "burstable" | "besteffort" => qos = Some((*s).to_owned()),
            _ => {
                if let Some(raw) = s.strip_prefix("pod") {
                    let normal = if systemd { raw.replace('_', "-") } else { raw.to_owned() };
                    if is_pod_uid(&normal) {
                        uid = Some(normal.to_ascii_lowercase());
                    }
                }
            }
        }
    }
    (qos.is_some() || uid.is_some()).then_some((qos, uid))
}

/// `<alloc-uuid>.<task>` or `<alloc-uuid>.<task>.scope`. The allocation id is
/// a 36-character UUID, so a task name may itself contain dots.
fn nomad_scope(c: &str) -> Option<(String, String)> {
    let base = c.strip_suffix(".scope").unwrap_or(c);
    let alloc = base.get(..36)?;
    let task = base.get(36..)?.strip_prefix('.')?;
    (is_uuid(alloc) && !task.is_empty()).then(|| (alloc.to_owned(), task.to_owned()))
}

/// `a`, `b`, `c` of `a<sep>b<sep>c` with none empty.
fn split3(c: &str, sep: char) -> Option<(&str, &str, &str)> {
    let mut it = c.splitn(3, sep);
    let (a, b, z) = (it.next()?, it.next()?, it.next()?);
    (!a.is_empty() && !b.is_empty() && !z.is_empty()).then_some((a, b, z))
}

/// Docker, containerd, CRI-O and Podman ids are 32 random bytes in hex.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A UUID (API-created pods) or 32 hex digits (static pods: the kubelet uses
/// an MD5 of the manifest).
fn is_pod_uid(s: &str) -> bool {
    is_uuid(s) || (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &x)| {
            if matches!(i, 8 | 13 | 18 | 23) { x == b'-' } else { x.is_ascii_hexdigit() }
        })
}

/// ECS task ids: 32 hex digits (new ARN format) or a UUID (old format).
fn is_task_id(s: &str) -> bool {
    is_uuid(s) || (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real ids, as the runtimes print them (64 hex digits).
    const ID: &str = "8d1c3e5fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12";
    const ID2: &str = "3f2a9c1b04de5b0f6a53c1e2d3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f3a";
    const POD: &str = "0f4b2c7e-9a1d-4e3b-8c6a-5d2e1f0a9b8c";
    const POD_ESC: &str = "0f4b2c7e_9a1d_4e3b_8c6a_5d2e1f0a9b8c";
    const ALLOC: &str = "2a3d1b3c-6e5f-4f7a-9c8b-0d1e2f3a4b5c";
    const ECS_TASK: &str = "529630467358463ab6bbba4e73afe704";

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn container(runtime: &str, id: &str) -> PathIdentity {
        PathIdentity { runtime: s(runtime), id: s(id), ..Default::default() }
    }

    // --- Docker ---------------------------------------------------------

    #[test]
    fn docker_systemd_driver() {
        let p = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(parse_cgroup_path(&p), container("docker", ID));
    }

    #[test]
    fn docker_cgroupfs_driver() {
        assert_eq!(parse_cgroup_path(&format!("/docker/{ID}")), container("docker", ID));
    }

    #[test]
    fn docker_rootless_systemd() {
        let p =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope");
        let want = PathIdentity { delegated: true, ..container("docker", ID) };
        assert_eq!(parse_cgroup_path(&p), want);
    }

    #[test]
    fn dockerd_itself_is_a_host_process() {
        let got = parse_cgroup_path("/system.slice/docker.service");
        assert!(got.host);
        assert_eq!(got.systemd_unit.as_deref(), Some("docker.service"));
        assert_eq!(got.id, None);
    }

    // --- containerd -----------------------------------------------------

    #[test]
    fn kubernetes_containerd_systemd_burstable() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_ESC}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            PathIdentity {
                runtime: s("containerd"),
                id: s(ID),
                pod_uid: s(POD),
                qos: s("burstable"),
                ..Default::default()
            }
        );
    }

    #[test]
    fn kubernetes_systemd_besteffort_and_guaranteed() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_ESC}.slice/cri-containerd-{ID}.scope"
        );
        let got = parse_cgroup_path(&p);
        assert_eq!((got.qos.as_deref(), got.pod_uid.as_deref()), (Some("besteffort"), Some(POD)));

        // Guaranteed pods have no QoS level.
        let p = format!("/kubepods.slice/kubepods-pod{POD_ESC}.slice/cri-containerd-{ID}.scope");
        let got = parse_cgroup_path(&p);
        assert_eq!(got.qos.as_deref(), Some("guaranteed"));
        assert_eq!(got.pod_uid.as_deref(), Some(POD));
        assert_eq!(got.id.as_deref(), Some(ID));
        assert!(!got.host);
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let got = parse_cgroup_path(&format!("/kubepods/burstable/pod{POD}/{ID}"));
        assert_eq!(
            got,
            PathIdentity { id: s(ID), pod_uid: s(POD), qos: s("burstable"), ..Default::default() }
        );
        let got = parse_cgroup_path(&format!("/kubepods/besteffort/pod{POD}/{ID}"));
        assert_eq!(got.qos.as_deref(), Some("besteffort"));
        // Guaranteed: the pod sits directly under /kubepods.
        let got = parse_cgroup_path(&format!("/kubepods/pod{POD}/{ID}"));
        assert_eq!(
            got,
            PathIdentity { id: s(ID), pod_uid: s(POD), qos: s("guaranteed"), ..Default::default() }
        );
    }

    #[test]
    fn kubernetes_static_pod_uid_is_32_hex() {
        let uid = "6f6c8b1fa0a1f2b5e7e8c9d0e1f2a3b4";
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse_cgroup_path(&p).pod_uid.as_deref(), Some(uid));
    }

    #[test]
    fn kubernetes_pod_level_cgroup_without_container() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_ESC}.slice"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            PathIdentity { pod_uid: s(POD), qos: s("burstable"), ..Default::default() }
        );
    }

    #[test]
    fn kubernetes_dockershim_systemd() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_ESC}.slice/docker-{ID}.scope"
        );
        let got = parse_cgroup_path(&p);
        assert_eq!((got.runtime.as_deref(), got.id.as_deref()), (Some("docker"), Some(ID)));
    }

    #[test]
    fn kind_node_nested_in_docker_the_outer_container_names_it() {
        // kind runs the kubelet with cgroupRoot /kubelet inside a node
        // container: what runs there is the node container's, as the host
        // sees it (its pods are named inside the kind cluster).
        let p = format!(
            "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_ESC}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            PathIdentity { runtime: s("docker"), id: s(ID2), ..Default::default() }
        );
    }

    #[test]
    fn a_container_cannot_name_itself_after_another() {
        // A workload that can make cgroups below its own (cgroupns, a
        // delegated subtree) makes one named after a victim container, or a
        // victim pod: it is still itself.
        for inner in [
            format!("docker-{ID}.scope"),
            format!("kubepods-besteffort-pod{POD_ESC}.slice/cri-containerd-{ID}.scope"),
            ID.to_string(),
            format!("nomad.slice/{ID}.web.scope"),
        ] {
            let p = format!("/system.slice/docker-{ID2}.scope/{inner}");
            let got = parse_cgroup_path(&p);
            assert_eq!((got.id.as_deref(), got.pod_uid.as_deref()), (Some(ID2), None), "{p}");
        }
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_ESC}.slice/cri-containerd-{ID2}.scope/docker-{ID}.scope"
        );
        assert_eq!(parse_cgroup_path(&p).id.as_deref(), Some(ID2));
    }

    #[test]
    fn a_users_delegated_cgroup_names_no_pod_allocation_or_task() {
        // A user's systemd manager owns its subtree: the user can make a
        // cgroup named after any pod, allocation or ECS task.
        let user = "/user.slice/user-1000.slice/user@1000.service/app.slice";
        for inner in [
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_ESC}.slice/cri-containerd-{ID}.scope"
            ),
            format!("kubepods/burstable/pod{POD}/{ID}"),
            format!("kubepods-burstable-pod{POD_ESC}.slice:cri-containerd:{ID}"),
            format!("nomad.slice/share.slice/{ALLOC}.redis.scope"),
            format!("ecstasks.slice/ecstasks-{ECS_TASK}.slice/docker-{ID}.scope"),
        ] {
            let got = parse_cgroup_path(&format!("{user}/{inner}"));
            assert_eq!((got.pod_uid, got.nomad_alloc, got.ecs_task), (None, None, None), "{inner}");
            assert!(got.delegated, "{inner}");
        }
        let got = parse_cgroup_path(&format!("/lxc.payload.c1/kubepods/burstable/pod{POD}/{ID}"));
        assert_eq!(got.pod_uid, None);
        assert!(got.delegated);
        // The host's own kubepods, also below a plain level of the host's
        // (kubelet --cgroup-root, the lab's own cgroup), are read.
        for root in ["", "/kubelet.slice", "/imdslab1"] {
            let got = parse_cgroup_path(&format!(
                "{root}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_ESC}.slice/cri-containerd-{ID}.scope"
            ));
            assert_eq!(got.pod_uid.as_deref(), Some(POD), "{root}");
            assert!(!got.delegated);
        }
        // Rootless containers keep their runtime and id (marked delegated:
        // the host's runtime socket does not know them).
        let got = parse_cgroup_path(&format!("{user}/docker-{ID}.scope"));
        assert_eq!((got.runtime.as_deref(), got.id.as_deref()), (Some("docker"), Some(ID)));
        assert!(got.delegated);
    }

    #[test]
    fn containerd_cgroupfs_with_systemd_style_parent() {
        // containerd with SystemdCgroup=false under a systemd-driver kubelet.
        let p = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{POD_ESC}.slice:cri-containerd:{ID}"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            PathIdentity {
                runtime: s("containerd"),
                id: s(ID),
                pod_uid: s(POD),
                qos: s("burstable"),
                ..Default::default()
            }
        );
    }

    #[test]
    fn nerdctl_is_containerd() {
        let p = format!("/system.slice/nerdctl-{ID}.scope");
        assert_eq!(parse_cgroup_path(&p), container("containerd", ID));
    }

    // --- CRI-O ----------------------------------------------------------

    #[test]
    fn crio_systemd() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_ESC}.slice/crio-{ID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            PathIdentity {
                runtime: s("cri-o"),
                id: s(ID),
                pod_uid: s(POD),
                qos: s("burstable"),
                ..Default::default()
            }
        );
        // crun's `container` child cgroup below the scope.
        let got = parse_cgroup_path(&format!("{p}/container"));
        assert_eq!(got.id.as_deref(), Some(ID));
    }

    #[test]
    fn crio_conmon_is_not_the_container() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_ESC}.slice/crio-conmon-{ID}.scope"
        );
        let got = parse_cgroup_path(&p);
        assert_eq!(got.runtime.as_deref(), Some("cri-o"));
        assert_eq!(got.id, None);
        assert_eq!(got.pod_uid.as_deref(), Some(POD));
        assert!(!got.host);
    }

    #[test]
    fn crio_cgroupfs() {
        let got = parse_cgroup_path(&format!("/kubepods/burstable/pod{POD}/crio-{ID}"));
        assert_eq!(
            got,
            PathIdentity {
                runtime: s("cri-o"),
                id: s(ID),
                pod_uid: s(POD),
                qos: s("burstable"),
                ..Default::default()
            }
        );
        let got = parse_cgroup_path(&format!("/kubepods/burstable/pod{POD}/crio-conmon-{ID}"));
        assert_eq!((got.runtime.as_deref(), got.id.as_deref()), (Some("cri-o"), None));
    }

    // --- Podman ---------------------------------------------------------

    #[test]
    fn podman_on_this_machine_cgroupfs_hybrid() {
        // podman with runc and cgroup_manager=cgroupfs on a hybrid-cgroup
        // host: the unified hierarchy holds /libpod_parent/libpod-<id>.
        let p = format!("/libpod_parent/libpod-{ID}");
        assert_eq!(parse_cgroup_path(&p), container("podman", ID));
    }

    #[test]
    fn podman_cgroupfs_conmon() {
        let got = parse_cgroup_path("/libpod_parent/conmon");
        assert_eq!(got, PathIdentity { runtime: s("podman"), ..Default::default() });
    }

    #[test]
    fn podman_systemd_rootful_and_conmon() {
        assert_eq!(
            parse_cgroup_path(&format!("/machine.slice/libpod-{ID}.scope")),
            container("podman", ID)
        );
        assert_eq!(
            parse_cgroup_path(&format!("/machine.slice/libpod-{ID}.scope/container")),
            container("podman", ID)
        );
        let got = parse_cgroup_path(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        assert_eq!(got, PathIdentity { runtime: s("podman"), ..Default::default() });
    }

    #[test]
    fn podman_pod_and_rootless() {
        let p = format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope");
        assert_eq!(parse_cgroup_path(&p), container("podman", ID));
        let p =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        let want = PathIdentity { delegated: true, ..container("podman", ID) };
        assert_eq!(parse_cgroup_path(&p), want);
    }

    // --- Nomad ----------------------------------------------------------

    #[test]
    fn nomad_exec_share_and_reserve() {
        let want = PathIdentity {
            runtime: s("nomad"),
            nomad_alloc: s(ALLOC),
            nomad_task: s("redis"),
            ..Default::default()
        };
        assert_eq!(
            parse_cgroup_path(&format!("/nomad.slice/share.slice/{ALLOC}.redis.scope")),
            want
        );
        assert_eq!(
            parse_cgroup_path(&format!("/nomad.slice/reserve.slice/{ALLOC}.redis.scope")),
            want
        );
        // cgroup v1 shape, for completeness.
        assert_eq!(parse_cgroup_path(&format!("/nomad/{ALLOC}.redis")), want);
    }

    #[test]
    fn nomad_task_names_may_contain_dots() {
        let got = parse_cgroup_path(&format!("/nomad.slice/share.slice/{ALLOC}.web.v2.scope"));
        assert_eq!(got.nomad_task.as_deref(), Some("web.v2"));
    }

    #[test]
    fn nomad_docker_driver_is_a_docker_container() {
        // Nomad 1.7+: no cgroup parent, Docker's default.
        assert_eq!(
            parse_cgroup_path(&format!("/system.slice/docker-{ID}.scope")),
            container("docker", ID)
        );
        // Older Nomad on cgroup v2: cgroup parent nomad.slice.
        assert_eq!(
            parse_cgroup_path(&format!("/nomad.slice/docker-{ID}.scope")),
            container("docker", ID)
        );
    }

    #[test]
    fn nomad_slice_alone_is_not_a_task() {
        let got = parse_cgroup_path("/nomad.slice/share.slice");
        assert_eq!(got.nomad_alloc, None);
        assert!(!got.host);
        assert!(!got.is_workload());
    }

    // --- ECS ------------------------------------------------------------

    #[test]
    fn ecs_cgroupfs() {
        let got = parse_cgroup_path(&format!("/ecs/{ECS_TASK}/{ID}"));
        assert_eq!(
            got,
            PathIdentity {
                runtime: s("docker"),
                id: s(ID),
                ecs_task: s(ECS_TASK),
                ..Default::default()
            }
        );
        // Old-format (UUID) task ids.
        let got = parse_cgroup_path(&format!("/ecs/{ALLOC}/{ID}"));
        assert_eq!(got.ecs_task.as_deref(), Some(ALLOC));
    }

    #[test]
    fn ecs_systemd_cgroup_v2() {
        let p = format!("/ecstasks.slice/ecstasks-{ECS_TASK}.slice/docker-{ID}.scope");
        assert_eq!(
            parse_cgroup_path(&p),
            PathIdentity {
                runtime: s("docker"),
                id: s(ID),
                ecs_task: s(ECS_TASK),
                ..Default::default()
            }
        );
        // The task slice itself.
        let got = parse_cgroup_path(&format!("/ecstasks.slice/ecstasks-{ECS_TASK}.slice"));
        assert_eq!(got, PathIdentity { ecs_task: s(ECS_TASK), ..Default::default() });
    }

    #[test]
    fn ecs_agent_service_is_host() {
        let got = parse_cgroup_path("/system.slice/ecs.service");
        assert!(got.host);
        assert_eq!(got.ecs_task, None);
    }

    // --- Host -----------------------------------------------------------

    #[test]
    fn systemd_services_are_host() {
        for unit in
            ["sshd.service", "kubelet.service", "containerd.service", "systemd-resolved.service"]
        {
            let got = parse_cgroup_path(&format!("/system.slice/{unit}"));
            assert_eq!(
                got,
                PathIdentity {
                    runtime: s("systemd"),
                    systemd_unit: s(unit),
                    host: true,
                    ..Default::default()
                },
                "{unit}"
            );
        }
        // Templated and escaped unit names are kept verbatim.
        let got = parse_cgroup_path("/system.slice/system-getty.slice/getty@tty1.service");
        assert_eq!(got.systemd_unit.as_deref(), Some("getty@tty1.service"));
        let got = parse_cgroup_path(r"/system.slice/system-systemd\x2dfsck.slice");
        assert!(got.host);
    }

    #[test]
    fn user_sessions_are_host() {
        let got = parse_cgroup_path("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(
            got,
            PathIdentity {
                runtime: s("systemd"),
                systemd_unit: s("session-3.scope"),
                host: true,
                ..Default::default()
            }
        );
        let got = parse_cgroup_path(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service",
        );
        assert_eq!(got.systemd_unit.as_deref(), Some("dbus.service"));
        assert!(got.host);
        assert!(parse_cgroup_path("/user.slice").host);
    }

    #[test]
    fn root_and_init_are_host() {
        assert_eq!(parse_cgroup_path("/"), PathIdentity { host: true, ..Default::default() });
        assert_eq!(parse_cgroup_path("//"), PathIdentity { host: true, ..Default::default() });
        let got = parse_cgroup_path("/init.scope");
        assert!(got.host);
        assert_eq!(got.systemd_unit.as_deref(), Some("init.scope"));
    }

    #[test]
    fn unknown_paths_are_neither_host_nor_container() {
        for p in ["/process_api/2aa333298574e081c3dcd350025787e5", "/lxc.payload.web", "/custom"] {
            let got = parse_cgroup_path(p);
            let delegated = p.starts_with("/lxc.payload.");
            assert_eq!(got, PathIdentity { delegated, ..Default::default() }, "{p}");
        }
    }

    // --- Odd input ------------------------------------------------------

    #[test]
    fn empty_and_relative_paths() {
        assert_eq!(parse_cgroup_path(""), PathIdentity::default());
        assert_eq!(parse_cgroup_path("\n"), PathIdentity::default());
        assert_eq!(parse_cgroup_path(&format!("/docker/{ID}\n")), container("docker", ID));
        // No leading slash: parsed the same.
        assert_eq!(
            parse_cgroup_path(&format!("system.slice/docker-{ID}.scope")),
            container("docker", ID)
        );
        assert_eq!(
            parse_cgroup_path(&format!("libpod_parent/libpod-{ID}")),
            container("podman", ID)
        );
    }

    #[test]
    fn malformed_ids_give_partial_identities() {
        // Short, non-hex, empty and over-long ids in a runtime scope: the
        // runtime is known, the id is not.
        for bad in [
            "3f2a9c1b04de",
            "zz1c3e5fb1a4a2b2dba0c6a3f70d8a77a1e2a7aa2f2f2e8e7b3f4c6c1d9e0f12",
            "",
            &format!("{ID}0"),
        ] {
            let got = parse_cgroup_path(&format!("/system.slice/docker-{bad}.scope"));
            assert_eq!(got, PathIdentity { runtime: s("docker"), ..Default::default() }, "{bad}");
        }
        // Bare names need a well-formed id.
        assert_eq!(parse_cgroup_path("/libpod_parent/libpod-abc"), PathIdentity::default());
        assert_eq!(parse_cgroup_path("/docker/not-an-id"), PathIdentity::default());
    }

    #[test]
    fn truncated_paths_give_what_they_have() {
        let got = parse_cgroup_path(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f4b2c7e_9a1d",
        );
        assert_eq!(got, PathIdentity { qos: s("burstable"), ..Default::default() });
        let got = parse_cgroup_path(&format!("/kubepods/burstable/pod{POD}/{}", &ID[..20]));
        assert_eq!(
            got,
            PathIdentity { pod_uid: s(POD), qos: s("burstable"), ..Default::default() }
        );
        let got = parse_cgroup_path(&format!("/nomad.slice/share.slice/{}", &ALLOC[..20]));
        assert_eq!(got.nomad_alloc, None);
        assert_eq!(parse_cgroup_path("/ecstasks.slice/ecstasks-5296.slice").ecs_task, None);
    }

    #[test]
    fn weird_unicode_never_panics() {
        let inputs = [
            "/ü/ñ/…",
            "/nomad.slice/share.slice/ééééééééééééééééééééééééééééééééééééé.task.scope",
            "/nomad/2a3d1b3c-6e5f-4f7a-9c8b-0d1e2f3a4b5ç.x",
            "/kubepods.slice/kubepods-pod🦀.slice/cri-containerd-🦀.scope",
            "/system.slice/docker-\u{0}.scope",
            "/ecs/ü/ü",
            "::::/:a:/a::b/:::",
            "/kubepods.slice:cri-containerd:",
            "/.scope/.service/.slice",
            "/libpod_parent/libpod-conmon-",
            "\u{feff}/\u{202e}docker-x.scope",
        ];
        for p in inputs {
            let got = parse_cgroup_path(p);
            assert_eq!(got.id, None, "{p}");
            assert_eq!(got.pod_uid, None, "{p}");
            assert_eq!(got.nomad_alloc, None, "{p}");
        }
        let long = "a/".repeat(100_000);
        assert!(!parse_cgroup_path(&long).host);
    }

    #[test]
    fn serialises_without_absent_fields() {
        let got = parse_cgroup_path(&format!("/libpod_parent/libpod-{ID}"));
        let json = serde_json::to_string(&got).unwrap();
        assert_eq!(json, format!(r#"{{"runtime":"podman","id":"{ID}"}}"#));
        let host = serde_json::to_string(&parse_cgroup_path("/system.slice/sshd.service")).unwrap();
        assert_eq!(host, r#"{"runtime":"systemd","systemd_unit":"sshd.service","host":true}"#);
        let back: PathIdentity = serde_json::from_str(&json).unwrap();
        assert_eq!(back, got);
    }
}
