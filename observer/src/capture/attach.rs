//! Attaching each program. The links live in the `Ebpf` object; dropping it
//! detaches them (TCX links on kernels >= 6.6 leave no qdisc behind).
use std::{collections::HashMap, fs::File, path::Path};

use anyhow::{Context, Result, anyhow};
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, LinkOrder,
        ProgramError, SchedClassifier, TcAttachType, tc,
        tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
};

/// Lines of a verifier log worth showing: its last ones say why.
const VERIFIER_LINES: usize = 8;

/// A load error a person can act on: the verifier's last lines (the whole
/// log, thousands of lines, goes to the debug log), not only the errno.
pub fn load_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = format!("{verifier_log:?}");
            tracing::debug!(program = name, "verifier log:\n{log}");
            let lines: Vec<&str> =
                log.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(VERIFIER_LINES)..].join("\n  ");
            anyhow!(
                "loading {name}: the kernel's verifier rejected it ({io_error}); its last lines:\n  {tail}\n\
                 This kernel is not one imds-observer was tested on: please report it with `uname -r`."
            )
        }
        e => anyhow!(e).context(format!("loading {name}")),
    }
}

/// cgroup_skb egress/ingress and connect4/connect6 at the cgroup v2 root:
/// one attachment sees every process on the host, in every netns.
pub fn cgroup_hooks(ebpf: &mut Ebpf, root: &Path) -> Result<()> {
    let cgroup =
        File::open(root).with_context(|| format!("opening cgroup root {}", root.display()))?;
    for (name, ty) in [
        ("cgroup_egress", CgroupSkbAttachType::Egress),
        ("cgroup_ingress", CgroupSkbAttachType::Ingress),
    ] {
        let prog: &mut CgroupSkb = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load().map_err(|e| load_error(name, e))?;
        prog.attach(&cgroup, ty, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", root.display()))?;
    }
    for name in ["connect4", "connect6"] {
        let prog: &mut CgroupSockAddr = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load().map_err(|e| load_error(name, e))?;
        prog.attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", root.display()))?;
    }
    Ok(())
}

/// How tc programs attach on this kernel.
#[derive(Clone, Copy, Debug)]
pub struct TcMode {
    /// TCX links (6.6+): no qdisc, detached by the kernel when we die.
    /// Without it, netlink filters on a clsact qdisc.
    pub tcx: bool,
    /// Netlink only: remove our programs' filters a killed observer left.
    /// Never while another instance runs (`--alongside`): they are its
    /// live filters.
    pub clean_leftovers: bool,
}

/// tc ingress/egress on each uplink. Returns ifindex → name.
pub fn tc(ebpf: &mut Ebpf, ifaces: &[String], mode: TcMode) -> Result<HashMap<u32, String>> {
    let mut names = HashMap::new();
    for (name, ty) in
        [("imds_tc_ingress", TcAttachType::Ingress), ("imds_tc_egress", TcAttachType::Egress)]
    {
        let prog: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load().map_err(|e| load_error(name, e))?;
        for iface in ifaces {
            tc_attach(prog, name, iface, ty, mode)?;
        }
    }
    for iface in ifaces {
        names.insert(super::preflight::ifindex(iface)?, iface.clone());
    }
    Ok(names)
}

/// Attach one tc program to `iface`.
pub fn tc_attach(
    prog: &mut SchedClassifier,
    name: &str,
    iface: &str,
    ty: TcAttachType,
    mode: TcMode,
) -> Result<SchedClassifierLinkId> {
    let opts = if mode.tcx {
        TcAttachOptions::TcxOrder(LinkOrder::default())
    } else {
        // No TCX: the program needs a clsact qdisc, and its netlink filter
        // outlives a SIGKILLed observer (fd-based links do not): remove
        // such leftovers by name first.
        let _ = tc::qdisc_add_clsact(iface);
        if mode.clean_leftovers {
            let _ = tc::qdisc_detach_program(iface, ty, name);
        }
        TcAttachOptions::Netlink(NlOptions::default())
    };
    prog.attach_with_options(iface, ty, opts)
        .with_context(|| format!("attaching {name} to {iface}"))
}

/// The BTF tracepoints: skb:kfree_skb (drops; `kfree_skb` or, on kernels
/// whose tracepoint has no reason, `kfree_skb_plain`) and
/// cgroup:cgroup_mkdir (cgroups named as they appear). They attach by type
/// ids of the running kernel's own BTF, whatever `--kernel-btf` says.
pub fn tracepoints(ebpf: &mut Ebpf, kfree_skb: &'static str) -> Result<()> {
    let btf = Btf::from_sys_fs().context("reading the running kernel's BTF")?;
    for (name, tracepoint) in [(kfree_skb, "kfree_skb"), ("cgroup_mkdir", "cgroup_mkdir")] {
        let prog: &mut BtfTracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load(tracepoint, &btf).map_err(|e| load_error(name, e))?;
        prog.attach().with_context(|| format!("attaching {name}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aya_obj::{Object, ProgramSection};

    /// Before TCX a killed observer's netlink filters outlive it and the
    /// next start removes them by program name: a generic name would take
    /// another agent's filters too. The kernel keeps 15 bytes of a name.
    #[test]
    fn tc_programs_have_names_of_our_own() {
        let obj = Object::parse(super::super::object()).unwrap();
        let tc: Vec<&String> = obj
            .programs
            .iter()
            .filter(|(_, p)| matches!(p.section, ProgramSection::SchedClassifier))
            .map(|(name, _)| name)
            .collect();
        assert!(tc.len() >= 3, "{tc:?}");
        for name in tc {
            assert!(name.starts_with("imds_") && name.len() <= 15, "{name}");
        }
    }
}
