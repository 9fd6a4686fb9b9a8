// The pinned nightly of the eBPF build, read from
// observer-ebpf/rust-toolchain.toml by build.rs and by xtask (both include
// this file): one place names the date.

/// The `channel = "..."` of a rust-toolchain.toml's text.
pub fn channel(toml: &str) -> Option<String> {
    toml.lines()
        .find_map(|l| l.trim().strip_prefix("channel = \""))
        .and_then(|v| v.strip_suffix('"'))
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

/// The pinned toolchain, from the file at `path`.
pub fn pinned(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    channel(&text).ok_or_else(|| anyhow::anyhow!("{}: no channel = \"...\"", path.display()))
}
