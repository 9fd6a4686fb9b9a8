//! The cgroup v1 fallback's hook points: tc ingress (`imds_tc_veth`) on each
//! container's host-side veth, kept in step with the links as they come and
//! go (a netlink subscription, so a new container's veth is attached before
//! its process starts).
//!
//! The syncing runs on a thread of its own: listing links and attaching
//! both take the kernel's RTNL lock, which container churn (netns deletion)
//! holds for tens of milliseconds. The event loop must not wait on it: a
//! short-lived container's cgroup can be gone before its events are named.
//!
//! Only on hosts with cgroup v1 hierarchies (older Amazon Linux 2 nodes,
//! hybrid systemd): there a container's processes may sit in no cgroup2
//! cgroup of their own, and the veth is what tells containers apart. On pure
//! cgroup2 hosts the socket's cgroup already does, and no veth is touched.
use std::{
    collections::HashMap,
    fs,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::sys::netlink::{self, Link, LinkEvents};

const PROGRAM: &str = "imds_tc_veth";

/// Whether this kernel has cgroup v1 hierarchies mounted: `/proc/self/cgroup`
/// lists one line per hierarchy, `0::` being the cgroup2 one. The file lists
/// every hierarchy of the kernel whatever the mount namespace.
pub fn has_v1_hierarchies(proc_self_cgroup: &str) -> bool {
    proc_self_cgroup.lines().any(|l| !l.is_empty() && !l.starts_with("0::"))
}

/// The links that are a container's host-side veth: a veth whose peer lives
/// in another network namespace, and not an uplink.
pub fn container_veths<'a>(links: &'a [Link], uplinks: &[String]) -> Vec<&'a Link> {
    links
        .iter()
        .filter(|l| {
            l.kind.as_deref() == Some("veth")
                && l.peer_netnsid.is_some()
                && !uplinks.contains(&l.name)
        })
        .collect()
}

fn program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    Ok(ebpf.program_mut(PROGRAM).context(PROGRAM)?.try_into()?)
}

pub struct Veths {
    uplinks: Vec<String>,
    mode: super::attach::TcMode,
    attached: HashMap<u32, (Link, SchedClassifierLinkId)>,
    warned: bool,
}

impl Veths {
    /// None on hosts without cgroup v1 (nothing to fall back from).
    pub fn new(uplinks: &[String], mode: super::attach::TcMode) -> Result<Option<Self>> {
        let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if !has_v1_hierarchies(&cgroups) {
            return Ok(None);
        }
        info!(
            "cgroup v1 hierarchies present: containers are also told apart by their host-side veth"
        );
        Ok(Some(Self { uplinks: uplinks.to_vec(), mode, attached: HashMap::new(), warned: false }))
    }

    /// Attach to new container veths, forget vanished ones. Failures on one
    /// veth (it went away meanwhile) are logged, never fatal.
    pub fn sync(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let links = netlink::links().context("listing links (netlink)")?;
        let want: HashMap<u32, &Link> =
            container_veths(&links, &self.uplinks).into_iter().map(|l| (l.ifindex, l)).collect();
        let prog = program(ebpf)?;
        let gone: Vec<u32> = self
            .attached
            .iter()
            .filter(|(i, (l, _))| {
                want.get(i).is_none_or(|w| w.name != l.name || w.peer_netnsid != l.peer_netnsid)
            })
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            let (link, id) = self.attached.remove(&i).expect("listed");
            // The kernel already detached it with the device; this frees the fd.
            let _ = prog.detach(id);
            debug!(veth = %link.name, "veth gone");
        }
        for (i, link) in want {
            if self.attached.contains_key(&i) {
                continue;
            }
            match super::attach::tc_attach(
                prog,
                PROGRAM,
                &link.name,
                TcAttachType::Ingress,
                self.mode,
            ) {
                Ok(id) => {
                    debug!(veth = %link.name, ifindex = i, nsid = ?link.peer_netnsid, "veth attached");
                    self.attached.insert(i, (link.clone(), id));
                }
                Err(e) if !self.warned => {
                    warn!(veth = %link.name, "{e:#}");
                    self.warned = true;
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// The veths attached now, by ifindex.
    pub fn links(&self) -> Vec<Link> {
        let mut links: Vec<Link> = self.attached.values().map(|(l, _)| l.clone()).collect();
        links.sort_by_key(|l| l.ifindex);
        links
    }
}

/// The thread that keeps the veths attached; it publishes the veths
/// attached now. Dropping it stops the thread (before the programs go).
pub struct VethWorker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the worker looks at its stop flag while no link changes.
const POLL: Duration = Duration::from_millis(100);

impl VethWorker {
    /// Sync once now (so the veths that exist are attached before capture
    /// is reported ready), then follow link changes on a thread.
    pub fn start(
        mut veths: Veths,
        ebpf: Arc<Mutex<Ebpf>>,
    ) -> Result<(Self, watch::Receiver<Vec<Link>>)> {
        // Subscribed before the first listing: no change falls in between.
        let events = LinkEvents::subscribe().context("subscribing to link changes (netlink)")?;
        {
            let mut ebpf = ebpf.lock().unwrap_or_else(|e| e.into_inner());
            program(&mut ebpf)?.load().with_context(|| format!("loading {PROGRAM}"))?;
            veths.sync(&mut ebpf)?;
        }
        let (tx, rx) = watch::channel(veths.links());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("veths".into()).spawn(move || {
            let mut last_error = String::new();
            while !stopping.load(Ordering::Relaxed) {
                if !events.wait(POLL) {
                    continue;
                }
                match veths.sync(&mut ebpf.lock().unwrap_or_else(|e| e.into_inner())) {
                    Ok(()) => last_error.clear(),
                    // Once per distinct failure, not once per link change.
                    Err(e) if format!("{e:#}") != last_error => {
                        last_error = format!("{e:#}");
                        warn!("veth fallback: {last_error}");
                    }
                    Err(_) => {}
                }
                let now = veths.links();
                tx.send_if_modified(|old| {
                    let changed = *old != now;
                    *old = now;
                    changed
                });
            }
        })?;
        Ok((Self { stop, thread: Some(thread) }, rx))
    }
}

impl Drop for VethWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_hierarchies_from_proc_cgroup() {
        // Hybrid systemd (v1 controllers + the unified hierarchy).
        assert!(has_v1_hierarchies("12:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n"));
        // Legacy only (Amazon Linux 2 with systemd 219).
        assert!(has_v1_hierarchies("11:cpuset:/\n1:name=systemd:/\n"));
        // Pure cgroup2.
        assert!(!has_v1_hierarchies("0::/system.slice/kubelet.service\n"));
        assert!(!has_v1_hierarchies(""));
    }

    #[test]
    fn only_container_veths_that_are_not_uplinks() {
        let l = |i, name: &str, kind: Option<&str>, nsid| Link {
            ifindex: i,
            name: name.into(),
            kind: kind.map(Into::into),
            peer_netnsid: nsid,
        };
        let links = [
            l(1, "lo", None, None),
            l(2, "eth0", None, None),
            l(3, "docker0", Some("bridge"), None),
            l(4, "veth1c2d", Some("veth"), Some(0)),
            // Both ends in this namespace: not a container's.
            l(5, "vethA", Some("veth"), None),
            // The lab's (or a VM's) uplink can be a veth too.
            l(6, "uplink0", Some("veth"), Some(1)),
            l(7, "eni3f.1", Some("vlan"), Some(2)),
        ];
        let names: Vec<&str> =
            container_veths(&links, &["uplink0".into()]).iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["veth1c2d"]);
    }
}
