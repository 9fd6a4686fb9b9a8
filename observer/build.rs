// Builds the eBPF programs (observer-ebpf's binary) with the nightly
// toolchain and bpf-linker, for embedding with `include_bytes_aligned!`.
// `cargo xtask setup` installs what this needs.
fn main() -> anyhow::Result<()> {
    let pkg = aya_build::Package {
        name: "observer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Nightly)
}
