//! What the programs need from the running kernel's BTF: `struct sk_buff`
//! offsets (Rust eBPF has no CO-RE relocations), drop-reason names (the
//! enum's numbers differ between kernels: resolve by name, never by number),
//! and which hooks the kernel has (read from its types, never from a
//! version string: distributions backport).
use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result, anyhow};
use btf_rs::{Btf, Struct, Type};
use observer_ebpf::{CgroupOffsets, SkbOffsets};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<Self> {
        let btf = Btf::from_file(path)
            .with_context(|| format!("parsing kernel BTF {}", path.display()))?;
        Ok(Self { btf })
    }

    /// Parameters of a tracepoint's BTF prototype (`btf_trace_<name>`),
    /// without the leading context pointer; None if the kernel has no such
    /// tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let ty = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?
            .into_iter()
            .next()?;
        for t in self.btf.chained_type_iter(ty.as_btf_type()?) {
            if let Type::FuncProto(p) = t {
                return Some(p.parameters.len().saturating_sub(1));
            }
        }
        None
    }

    /// skb:kfree_skb passes the drop reason (5.17+; not 5.10 or 5.15).
    pub fn kfree_skb_has_reason(&self) -> bool {
        self.tracepoint_args("kfree_skb").is_some_and(|n| n >= 3)
    }

    /// TCX: tc programs attach as links without a qdisc (6.6+).
    pub fn has_tcx(&self) -> bool {
        self.enum_has("bpf_attach_type", "BPF_TCX_INGRESS")
    }

    fn enum_has(&self, enum_name: &str, member: &str) -> bool {
        self.btf.resolve_types_by_name(enum_name).unwrap_or_default().iter().any(|t| match t {
            Type::Enum(e) => {
                e.members.iter().any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == member))
            }
            _ => false,
        })
    }

    fn struct_named(&self, name: &str) -> Result<Struct> {
        for t in self.btf.resolve_types_by_name(name).unwrap_or_default() {
            if let Type::Struct(s) = t {
                return Ok(s);
            }
        }
        Err(anyhow!("struct {name} not in kernel BTF"))
    }

    /// Byte offset of `name` in `st`, looking through anonymous members
    /// (sk_buff keeps its header offsets in an anonymous struct_group).
    fn member_offset(&self, st: &Struct, name: &str) -> Option<u32> {
        for m in &st.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if mname == name {
                return Some(m.bit_offset() / 8);
            }
            if mname.is_empty() {
                if let Ok(Type::Struct(inner) | Type::Union(inner)) =
                    self.btf.resolve_chained_type(m)
                {
                    if let Some(off) = self.member_offset(&inner, name) {
                        return Some(m.bit_offset() / 8 + off);
                    }
                }
            }
        }
        None
    }

    pub fn skb_offsets(&self) -> Result<SkbOffsets> {
        let skb = self.struct_named("sk_buff")?;
        let off = |f: &str| {
            self.member_offset(&skb, f).ok_or_else(|| anyhow!("sk_buff.{f} not in kernel BTF"))
        };
        Ok(SkbOffsets {
            head: off("head")?,
            network_header: off("network_header")?,
            tail: off("tail")?,
            // Only the drop budget's key: without it, drops are budgeted
            // by flow.
            skb_iif: self.member_offset(&skb, "skb_iif").unwrap_or(0),
        })
    }

    pub fn cgroup_offsets(&self) -> Result<CgroupOffsets> {
        let off = |st: &str, f: &str| -> Result<u32> {
            let s = self.struct_named(st)?;
            self.member_offset(&s, f).ok_or_else(|| anyhow!("{st}.{f} not in kernel BTF"))
        };
        Ok(CgroupOffsets {
            kn: off("cgroup", "kn")?,
            root: off("cgroup", "root")?,
            kn_id: off("kernfs_node", "id")?,
            hierarchy_id: off("cgroup_root", "hierarchy_id")?,
        })
    }

    /// `enum skb_drop_reason` value → name without the `SKB_DROP_REASON_` prefix.
    pub fn drop_reasons(&self) -> HashMap<u32, String> {
        let mut names = HashMap::new();
        for t in self.btf.resolve_types_by_name("skb_drop_reason").unwrap_or_default() {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    if let Ok(n) = self.btf.resolve_name(m) {
                        let n = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_string();
                        names.insert(m.val(), n);
                    }
                }
            }
        }
        names
    }
}
