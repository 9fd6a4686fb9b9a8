//! The cgroup v1 fallback's naming: a container's host-side veth → the
//! network namespace at its other end (the veth's peer netns id, matched
//! against each namespace's id over netlink) → the processes in it → their
//! cgroups, whose v1 paths follow the same runtime conventions as cgroup2
//! ones (`/docker/<id>`, `/kubepods/<qos>/pod<uid>/<id>`, `/ecs/<task>/<id>`).
//!
//! Reads `/proc/<pid>/ns/net` (readlink and open: the same uid as the
//! process, or CAP_SYS_PTRACE) and `/proc/<pid>/cgroup` of the host's
//! processes, so the observer needs the host's PID namespace for this.
use std::{
    collections::{BTreeSet, HashMap},
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::debug;

use super::{Container, runtime::parse_cgroup_path};
use crate::sys::netlink::{self, Link};

/// A scan of /proc on a miss, at most this often.
const RESCAN: Duration = Duration::from_millis(200);

struct Netns {
    inode: u64,
    /// Processes in it, as of the last scan.
    pids: Vec<u32>,
}

pub struct NetnsNames {
    proc: PathBuf,
    /// Container veths: ifindex → (name, peer netns id).
    veths: HashMap<u32, (String, i32)>,
    /// Peer netns id → the namespace.
    by_nsid: HashMap<i32, Netns>,
    last_scan: Option<Instant>,
    /// ifindex → what its netns's processes say.
    cache: HashMap<u32, Container>,
}

impl NetnsNames {
    pub fn new(proc: PathBuf) -> Self {
        Self {
            proc,
            veths: HashMap::new(),
            by_nsid: HashMap::new(),
            last_scan: None,
            cache: HashMap::new(),
        }
    }

    /// The container veths attached now. A veth that was replaced (same
    /// ifindex, other name or peer) loses what was cached for it.
    pub fn set_veths(&mut self, links: &[Link]) {
        let veths: HashMap<u32, (String, i32)> = links
            .iter()
            .filter_map(|l| Some((l.ifindex, (l.name.clone(), l.peer_netnsid?))))
            .collect();
        self.cache.retain(|i, _| veths.get(i).is_some_and(|v| self.veths.get(i) == Some(v)));
        self.veths = veths;
    }

    /// The container behind the veth `ifindex`, if its namespace has a
    /// process whose cgroups say which.
    pub fn identify(&mut self, ifindex: u32) -> Option<Container> {
        if let Some(c) = self.cache.get(&ifindex) {
            return Some(c.clone());
        }
        let (name, nsid) = self.veths.get(&ifindex)?.clone();
        if !self.by_nsid.contains_key(&nsid) {
            self.scan();
        }
        let ns = self.by_nsid.get(&nsid)?;
        let texts: Vec<String> = ns
            .pids
            .iter()
            .filter_map(|p| fs::read_to_string(self.proc.join(format!("{p}/cgroup"))).ok())
            .collect();
        let Some(mut c) = container_of_netns(texts.iter().map(String::as_str)) else {
            // Its processes are gone: look again next time.
            self.by_nsid.remove(&nsid);
            return None;
        };
        c.netns = Some(ns.inode);
        c.veth = Some(name);
        self.cache.insert(ifindex, c.clone());
        Some(c)
    }

    /// Map every namespace with a netns id here to its processes.
    fn scan(&mut self) {
        if self.last_scan.is_some_and(|t| t.elapsed() < RESCAN) {
            return;
        }
        self.last_scan = Some(Instant::now());
        let own = netns_inode(&self.proc.join("self/ns/net"));
        let mut pids_by_inode: HashMap<u64, Vec<u32>> = HashMap::new();
        let Ok(entries) = fs::read_dir(&self.proc) else { return };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // Gone, a kernel thread, or not ours to read: skipped.
            let Some(inode) = netns_inode(&e.path().join("ns/net")) else { continue };
            if Some(inode) != own {
                pids_by_inode.entry(inode).or_default().push(pid);
            }
        }
        self.by_nsid.clear();
        for (inode, pids) in pids_by_inode {
            let Some(nsid) =
                pids.iter().find_map(|p| nsid_of(&self.proc.join(format!("{p}/ns/net"))))
            else {
                continue;
            };
            self.by_nsid.insert(nsid, Netns { inode, pids });
        }
        debug!(namespaces = self.by_nsid.len(), "network namespaces with an id here");
    }
}

/// "net:[4026532565]" → 4026532565.
fn netns_inode(link: &Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    parse_ns_link(target.to_str()?)
}

pub fn parse_ns_link(s: &str) -> Option<u64> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn nsid_of(ns: &Path) -> Option<i32> {
    let f = fs::File::open(ns).ok()?;
    netlink::nsid_of(f.as_fd()).ok().flatten()
}

/// The container a namespace's processes belong to, from their
/// `/proc/<pid>/cgroup`. Processes of one pod (the pause container and the
/// app containers share the netns) agree on the pod, not on the container:
/// then only what they share is kept. None when no process could be read.
pub fn container_of_netns<'a>(cgroup_files: impl Iterator<Item = &'a str>) -> Option<Container> {
    let mut found: Vec<Container> = cgroup_files.filter_map(container_of_process).collect();
    let distinct: BTreeSet<Option<&String>> = found.iter().map(|c| c.id.as_ref()).collect();
    if distinct.len() <= 1 {
        return found.pop();
    }
    // Keep the pod (or task) they share; drop the container they do not.
    let mut first = found.swap_remove(0);
    let all_same =
        |f: &dyn Fn(&Container) -> Option<&String>| found.iter().all(|c| f(c) == f(&first));
    let same_pod = all_same(&|c| c.pod_uid.as_ref());
    let same_ecs = all_same(&|c| c.ecs_task.as_ref());
    let same_runtime = all_same(&|c| c.runtime.as_ref());
    first.id = None;
    first.cgroup = None;
    if !same_pod {
        first.pod_uid = None;
    }
    if !same_ecs {
        first.ecs_task = None;
    }
    if !same_runtime {
        first.runtime = None;
    }
    first.nomad = None;
    Some(first)
}

/// One process's `/proc/<pid>/cgroup`: the first hierarchy whose path names
/// a container, the cgroup2 one first (a hybrid host may place containers in
/// either), then name=systemd, then the controllers in file order. None for
/// an empty file.
pub fn container_of_process(text: &str) -> Option<Container> {
    let mut paths: Vec<(u8, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rank = match controllers {
                "" => 0,
                "name=systemd" => 1,
                _ => 2,
            };
            Some((rank, path))
        })
        .collect();
    paths.sort_by_key(|(rank, _)| *rank);
    let first = paths.first()?.1;
    let path =
        paths.iter().map(|(_, p)| *p).find(|p| parse_cgroup_path(p).is_workload()).unwrap_or(first);
    let mut c = Container::from_path(0, path);
    c.cgroup_id = None;
    // A process in another network namespace is no host process, whatever
    // its cgroup (a container runtime that left it in a system slice).
    c.host = false;
    if c.runtime.is_none() && c.id.is_none() {
        c.name = None;
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4b5e7c3d2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d";
    const TASK: &str = "5c1a9e8b7d6f4e3a2b1c0d9e8f7a6b5c";
    const PAUSE: &str = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";

    #[test]
    fn ns_link() {
        assert_eq!(parse_ns_link("net:[4026532565]"), Some(4026532565));
        assert_eq!(parse_ns_link("mnt:[4026532565]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
    }

    /// Docker on Amazon Linux 2 (cgroupfs driver, cgroup v1 only).
    #[test]
    fn docker_on_cgroup_v1() {
        let text = format!(
            "11:pids:/docker/{ID}\n10:memory:/docker/{ID}\n4:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"
        );
        let c = container_of_process(&text).unwrap();
        assert_eq!((c.runtime.as_deref(), c.id.as_deref()), (Some("docker"), Some(ID)));
        assert_eq!(c.cgroup.as_deref(), Some(format!("/docker/{ID}").as_str()));
        assert_eq!(c.cgroup_id, None, "no cgroup2 id for a v1 path");
        assert!(!c.host);
    }

    /// Hybrid systemd: the unified hierarchy says nothing (root), the v1
    /// controllers do.
    #[test]
    fn hybrid_prefers_the_hierarchy_that_names_a_container() {
        let text = format!("12:memory:/ecs/{TASK}/{ID}\n1:name=systemd:/ecs/{TASK}/{ID}\n0::/\n");
        let c = container_of_process(&text).unwrap();
        assert_eq!(c.id.as_deref(), Some(ID));
        assert_eq!(c.ecs_task.as_deref(), Some(TASK));
        // And a container in cgroup2 on a hybrid host is taken from there.
        let text = format!("4:memory:/\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            container_of_process(&text).unwrap().cgroup.unwrap(),
            format!("/system.slice/docker-{ID}.scope")
        );
    }

    #[test]
    fn unknown_process_in_a_netns_is_not_host() {
        let c =
            container_of_process("1:name=systemd:/user.slice/user-0.slice/session-3.scope\n0::/\n")
                .unwrap();
        assert!(!c.host, "it is in another network namespace");
        assert_eq!(c.id, None);
        assert!(container_of_process("").is_none());
    }

    /// A Kubernetes pod on cgroup v1 (cgroupfs driver): the pause container
    /// and the app share the netns; the pod is what the veth names.
    #[test]
    fn a_pod_netns_names_the_pod() {
        let uid = "8d7f3c6e-2b1a-4c5d-9e8f-7a6b5c4d3e2f";
        let pause = format!("9:memory:/kubepods/burstable/pod{uid}/{PAUSE}\n");
        let app = format!("9:memory:/kubepods/burstable/pod{uid}/{ID}\n");
        let c = container_of_netns([pause.as_str(), app.as_str()].into_iter()).unwrap();
        assert_eq!(c.pod_uid.as_deref(), Some(uid));
        assert_eq!(c.id, None, "two containers share it");
        // One process: the container itself.
        let c = container_of_netns([app.as_str()].into_iter()).unwrap();
        assert_eq!(c.id.as_deref(), Some(ID));
        assert!(container_of_netns(std::iter::empty()).is_none());
    }
}
