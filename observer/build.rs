// Builds the eBPF programs (observer-ebpf's binary) with the nightly
// toolchain and bpf-linker, for embedding with `include_bytes_aligned!`.
// `cargo xtask setup` installs what this needs.
fn main() -> anyhow::Result<()> {
    // The fuzz targets (cargo-fuzz builds with `--cfg fuzzing`) never load
    // the programs: an empty object spares their build the eBPF toolchain.
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("observer-ebpf");
        std::fs::write(out, [])?;
        return Ok(());
    }
    let pkg = aya_build::Package {
        name: "observer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Nightly)
}
