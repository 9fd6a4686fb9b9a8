// Builds the eBPF programs (observer-ebpf's binary) with the nightly
// toolchain and bpf-linker, for embedding with `include_bytes_aligned!`.
// `cargo xtask setup` installs what this needs. Also sets what `--version`
// shows (cli.rs): the git commit, the eBPF object's hash, the target and the
// features.
use std::path::{Path, PathBuf};

#[path = "build/commit.rs"]
mod commit;
#[path = "build/object_hash.rs"]
mod object_hash;
#[path = "build/toolchain.rs"]
mod toolchain;

fn main() -> anyhow::Result<()> {
    version_info();
    // The fuzz targets (cargo-fuzz builds with `--cfg fuzzing`) never load
    // the programs: an empty object spares their build the eBPF toolchain.
    let object = PathBuf::from(std::env::var("OUT_DIR")?).join("observer-ebpf");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        std::fs::write(&object, [])?;
    } else {
        // The object's debug info and BTF name source files: without this,
        // by absolute paths (the checkout's, OUT_DIR's, cargo's registry),
        // so the same source built in another directory gave another
        // object, and another hash. Cargo's trim-paths (nightly, as this
        // build is) makes them relative; aya-build's cargo inherits these.
        std::env::set_var("CARGO_UNSTABLE_TRIM_PATHS", "true");
        std::env::set_var("CARGO_PROFILE_RELEASE_TRIM_PATHS", "all");
        let pkg = aya_build::Package {
            name: "observer-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf"),
            ..Default::default()
        };
        aya_build::build_ebpf([pkg], aya_build::Toolchain::Custom(&ebpf_toolchain()?))?;
    }
    // The object as embedded (capture::object), hashed for `--version`.
    let hash = object_hash::object_hash(&std::fs::read(&object)?);
    println!("cargo:rustc-env=IMDS_OBSERVER_EBPF_HASH={hash}");
    Ok(())
}

/// The toolchain that builds the eBPF object: the dated nightly pinned in
/// observer-ebpf/rust-toolchain.toml (`cargo xtask setup` installs it), so
/// that a rebuild gets the same compiler and LLVM, and so the same object.
fn ebpf_toolchain() -> anyhow::Result<String> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={file}");
    toolchain::pinned(Path::new(file))
}

/// IMDS_OBSERVER_COMMIT/_TARGET/_FEATURES for `--version`. The commit is
/// decided in build/commit.rs ("unknown" without a checkout of its own; a
/// packager can set IMDS_OBSERVER_COMMIT instead).
fn version_info() {
    println!("cargo:rerun-if-env-changed=IMDS_OBSERVER_COMMIT");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| commit::git("git", Path::new(root), args);
    let packaged = std::env::var("IMDS_OBSERVER_COMMIT").ok();
    let commit = commit::commit(packaged.as_deref(), Path::new(root), &git);
    if commit::own_checkout(Path::new(root), &git) {
        // A new commit (or checkout) changes HEAD or the ref it names.
        for file in ["HEAD", "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--git-path", file]) {
                println!("cargo:rerun-if-changed={}", abs(root, &p));
            }
        }
        let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
        if let Some(p) = head_ref.and_then(|r| git(&["rev-parse", "--git-path", &r])) {
            println!("cargo:rerun-if-changed={}", abs(root, &p));
        }
    }
    println!("cargo:rustc-env=IMDS_OBSERVER_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=IMDS_OBSERVER_TARGET={target}");
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| {
            k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase().replace('_', "-"))
        })
        .filter(|f| f != "default")
        .collect();
    features.sort();
    let features = if features.is_empty() { "none".to_string() } else { features.join(",") };
    println!("cargo:rustc-env=IMDS_OBSERVER_FEATURES={features}");
}

/// git prints paths relative to the directory it ran in.
fn abs(root: &str, p: &str) -> String {
    if p.starts_with('/') { p.to_string() } else { format!("{root}/{p}") }
}
