//! Attaching each program. The links live in the `Ebpf` object; dropping it
//! detaches them (TCX links on kernels >= 6.6 leave no qdisc behind).
use std::{collections::HashMap, fs::File, path::Path};

use anyhow::{Context, Result, bail};
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SchedClassifier,
        TcAttachType, tc,
        tc::SchedClassifierLinkId,
    },
};

/// cgroup_skb egress/ingress and connect4/connect6 at the cgroup v2 root:
/// one attachment sees every process on the host, in every netns.
pub fn cgroup_hooks(ebpf: &mut Ebpf, root: &Path) -> Result<()> {
    let cgroup = File::open(root).with_context(|| format!("opening cgroup root {}", root.display()))?;
    for (name, ty) in [("cgroup_egress", CgroupSkbAttachType::Egress), ("cgroup_ingress", CgroupSkbAttachType::Ingress)] {
        let prog: &mut CgroupSkb = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(&cgroup, ty, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", root.display()))?;
    }
    for name in ["connect4", "connect6"] {
        let prog: &mut CgroupSockAddr = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", root.display()))?;
    }
    Ok(())
}

/// tc ingress/egress on each uplink. Returns ifindex → name.
pub fn tc(ebpf: &mut Ebpf, ifaces: &[String]) -> Result<HashMap<u32, String>> {
    let mut names = HashMap::new();
    for (name, ty) in [("tc_ingress", TcAttachType::Ingress), ("tc_egress", TcAttachType::Egress)] {
        let prog: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        for iface in ifaces {
            tc_attach(prog, name, iface, ty)?;
        }
    }
    for iface in ifaces {
        names.insert(super::preflight::ifindex(iface)?, iface.clone());
    }
    Ok(names)
}

/// Attach one tc program to `iface`.
pub fn tc_attach(prog: &mut SchedClassifier, name: &str, iface: &str, ty: TcAttachType) -> Result<SchedClassifierLinkId> {
    // Kernels before 6.6 have no TCX: the program needs a clsact qdisc, and
    // its netlink filter outlives a SIGKILLed observer (fd-based links do
    // not): remove such leftovers by name first.
    if !has_tcx() {
        let _ = tc::qdisc_add_clsact(iface);
        let _ = tc::qdisc_detach_program(iface, ty, name);
    }
    prog.attach(iface, ty).with_context(|| format!("attaching {name} to {iface}"))
}

/// TCX (kernel 6.6+) attaches without a qdisc; aya uses it when present.
fn has_tcx() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The BTF tracepoints: skb:kfree_skb (drop reasons) and
/// cgroup:cgroup_mkdir (cgroups named as they appear).
pub fn tracepoints(ebpf: &mut Ebpf) -> Result<()> {
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    for name in ["kfree_skb", "cgroup_mkdir"] {
        let prog: &mut BtfTracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
        if let Err(e) = prog.load(name, &btf) {
            bail!("loading {name}: {e:#}");
        }
        prog.attach().with_context(|| format!("attaching {name}"))?;
    }
    Ok(())
}
