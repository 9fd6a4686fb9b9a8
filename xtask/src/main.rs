//! `cargo xtask setup | test | manifests | demo`: the project's own build
//! chain, so that a fresh clone needs nothing but these commands.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod beside;
mod fuzz;
// The pinned nightly, read as observer/build.rs reads it.
#[path = "../../observer/build/toolchain.rs"]
mod toolchain;
mod vm;

use beside::Beside;
use fuzz::fuzz;

/// Seconds each fuzz target runs in `cargo xtask test` (and by default in
/// `cargo xtask fuzz`): two at a time, 4 targets, a minute of runs. With
/// installing cargo-fuzz and the nightly build, about 4 minutes on a fresh
/// machine (2 cores), hidden beside the host lab.
const FUZZ_SECONDS: u64 = 30;

#[derive(Parser)]
#[command(about = "Build chain, tests and demo for imds-observer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build needs: the nightly pinned in
    /// observer-ebpf/rust-toolchain.toml with rust-src, and bpf-linker built
    /// against its own LLVM. Idempotent; quick when done.
    Setup,
    /// Regenerate what the Helm chart renders (deploy/kubernetes/, the
    /// PodMonitor and PrometheusRule of deploy/prometheus/), through Helm's
    /// engine (helm-python-sdk).
    Manifests {
        /// Only compare: fail, showing the difference, where a file is stale.
        #[arg(long)]
        check: bool,
    },
    /// Setup, unit tests, then the lab tests (root; real kernel, one at a time).
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit: bool,
        /// Skip the kernel matrix (the lab in 5.10, 6.1 and 6.12 amd64 guests
        /// and a 6.1 arm64 one).
        #[arg(long)]
        no_matrix: bool,
        /// Passed to the lab test binary (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
    /// Boot one kernel of the matrix (5.10, 6.1, 6.12, 6.1-arm64) under
    /// qemu and run lab tests in it (root). Without a filter, the matrix's
    /// scenarios.
    Vm {
        /// Which kernel.
        kernel: String,
        /// Test names to run (exact), default: the matrix's scenarios.
        tests: Vec<String>,
    },
    /// Setup, build, then run the lab with hop limit 1: a container client
    /// that behaves like an AWS SDK, the observer watching. Needs root.
    Demo,
    /// Build the static release binaries of both images: amd64 and arm64
    /// (Graviton), cross-compiled (target/<triple>/release/imds-observer).
    Release,
    /// Print figures: the agent's idle and per-request cost, eBPF cost per
    /// packet, image size (lab, root), and the TUI rendering benchmark.
    Bench,
    /// The fuzz stage alone (no root): build the cargo-fuzz targets with
    /// nightly and run each from the seed corpus (fuzz/corpus/), two at a
    /// time; fails on any crash, naming the reproducer.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = FUZZ_SECONDS)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Manifests { check } => manifests(check),
        Cmd::Test { unit, no_matrix, filter } => test(unit, !no_matrix, &filter),
        Cmd::Vm { kernel, tests } => vm_one(&kernel, &tests),
        Cmd::Demo => demo(),
        Cmd::Release => release(),
        Cmd::Bench => bench(),
        Cmd::Fuzz { seconds } => setup().and_then(|()| fuzz(seconds)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root_dir());
    c
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
    })
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false)
}

/// The dated nightly that builds the eBPF object (-Z build-std=core), also
/// used for rustfmt and the fuzz targets: observer-ebpf/rust-toolchain.toml.
fn nightly() -> Result<String> {
    toolchain::pinned(&root_dir().join("observer-ebpf/rust-toolchain.toml"))
}

fn setup() -> Result<()> {
    let nightly = nightly()?;
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(&format!("{nightly}-"))) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &nightly,
            "--profile",
            "minimal",
        ]))?;
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &nightly,
    ]))?;
    // rust-src for the eBPF build; rustfmt for the format check (rustfmt.toml
    // uses nightly's import grouping).
    for comp in ["rust-src", "rustfmt"] {
        if !comps.lines().any(|l| l.starts_with(comp)) {
            run(Command::new("rustup").args(["component", "add", comp, "--toolchain", &nightly]))?;
        }
    }
    // clippy for the lint gate, on the toolchain that builds the observer.
    let stable = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if !stable.lines().any(|l| l.starts_with("clippy")) {
        run(Command::new("rustup").args(["component", "add", "clippy"]))?;
    }
    // The container images hold a static binary, for amd64 and arm64.
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    for t in [MUSL, MUSL_ARM64] {
        if !targets.lines().any(|l| l == t) {
            run(Command::new("rustup").args(["target", "add", t]))?;
        }
    }
    cross_compiler()?;
    install_bpf_linker()
}

const MUSL: &str = "x86_64-unknown-linux-musl";
/// Graviton's: .cargo/config.toml names its C compiler and linker.
const MUSL_ARM64: &str = "aarch64-unknown-linux-musl";
const ARM64_GCC: &str = "aarch64-linux-gnu-gcc";

/// The arm64 build's C compiler and linker (.cargo/config.toml), with the
/// libc headers ring's C includes: Debian's cross toolchain on an x86_64
/// host (on an arm64 host, the native gcc has the same name). Installed as
/// root; otherwise setup goes on, and only the arm64 build says what to
/// install.
fn cross_compiler() -> Result<()> {
    if on_path(ARM64_GCC) || !is_root() || !on_path("apt-get") {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The static release binaries of both images (amd64, arm64), with the
/// `kubernetes` feature named even though it is a default.
fn build_release(target: &str) -> Result<PathBuf> {
    if target == MUSL_ARM64 && !on_path(ARM64_GCC) {
        bail!(
            "the arm64 build needs {ARM64_GCC}: `sudo cargo xtask setup`, or apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
        );
    }
    run(cargo().args(release_args(target)))?;
    Ok(release_binary(target))
}

fn release_args(target: &str) -> [&str; 7] {
    ["build", "--release", "--target", target, "-p", "imds-observer", "--features=kubernetes"]
}

fn release_binary(target: &str) -> PathBuf {
    root_dir().join(format!("target/{target}/release/imds-observer"))
}

/// `cargo xtask release`: both architectures' static binaries, and what
/// each is.
fn release() -> Result<()> {
    setup()?;
    for target in [MUSL, MUSL_ARM64] {
        let bin = build_release(target)?;
        let size = std::fs::metadata(&bin)?.len();
        println!("{target}: {} ({:.1} MB)", bin.display(), size as f64 / 1e6);
    }
    println!("package either with Containerfile.local (its header says how)");
    Ok(())
}

/// bpf-linker must use the same LLVM major as rustc. No prebuilt one can be
/// fetched here, so build it against the pinned nightly's own libLLVM.
fn install_bpf_linker() -> Result<()> {
    let nightly = format!("+{}", nightly()?);
    let vv = output(Command::new("rustc").args([&nightly, "-vV"]))?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .with_context(|| format!("rustc {nightly} -vV names no LLVM version"))?
        .trim()
        .to_string();
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    let bin = cargo_home().join("bin/bpf-linker");
    let stamp = cargo_home().join(format!("imds-observer/bpf-linker-llvm-{llvm}"));
    if bin.exists()
        && stamp.exists()
        && Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let sysroot =
        PathBuf::from(output(Command::new("rustc").args([&nightly, "--print", "sysroot"]))?.trim());
    let libdir = sysroot.join("lib");
    let lib = std::fs::read_dir(&libdir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", libdir.display()))?;
    // A prefix whose lib/ has libLLVM.so (to link) and the soname (for the
    // rpath at run time), both pointing at nightly's library.
    let prefix = cargo_home().join(format!("imds-observer/llvm-{llvm}"));
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&lib), &link)?;
    }
    eprintln!("building bpf-linker 0.13.0 against nightly's LLVM {llvm} (about 90 s, once)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--locked",
            "--force",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--root")
        .arg(cargo_home())
        .env("LLVM_PREFIX", &prefix))?;
    run(Command::new(&bin).arg("--version"))?;
    std::fs::write(&stamp, "")?;
    Ok(())
}

/// What the lab needs from Debian (ip, nsenter, iptables for masquerade NAT,
/// bpftool for the kernel's view of attachments) and from PyPI (botocore).
fn lab_packages() -> Result<()> {
    let need = [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("iptables", "iptables"),
        ("bpftool", "bpftool"),
        ("python3", "python3"),
        ("bash", "bash"),
        ("tmux", "tmux"),
        // Real containers: podman with runc (crun refuses hybrid cgroups),
        // a busybox rootfs imported as the image (no registry here).
        ("podman", "podman"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
        // The local image's binary gets the published image's file
        // capabilities (Containerfile.local).
        ("setcap", "libcap2-bin"),
        // promtool checks and unit-tests deploy/prometheus/rules.yml; the
        // prometheus lab test runs a real Prometheus (the package's own
        // service is not used).
        ("promtool", "prometheus"),
        // What the cross-built arm64 binary is (the arm64 image's test).
        ("file", "file"),
    ];
    apt_install(&need)?;
    // A real SDK for the lab's client tests.
    pip_install("botocore", &["botocore"])
}

/// Install the Debian packages whose commands (`(command, package)`) are
/// missing.
fn apt_install(need: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> =
        need.iter().filter(|(cmd, _)| !on_path(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || !on_path("apt-get") {
        bail!("the lab needs {}: install them", missing.join(", "));
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Install PyPI packages unless `module` imports already.
fn pip_install(module: &str, packages: &[&str]) -> Result<()> {
    if Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    // Debian's own python refuses pip installs unless told (PEP 668).
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--root-user-action=ignore"])
        .args(packages)
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1"))
}

/// helm-python-sdk: Helm's Go engine as a shared library in its wheel
/// (x86_64 manylinux), so the chart renders and lints with no helm binary.
fn pip_helm() -> Result<()> {
    pip_install("helm_python", &["helm-python-sdk==0.2.2"])
}

/// `cargo xtask manifests [--check]`: deploy/helm/render.py does the work,
/// the same script the manifest tests check with.
fn manifests(check: bool) -> Result<()> {
    pip_helm()?;
    pip_install("yaml", &["PyYAML"])?;
    let mut cmd = Command::new("python3");
    cmd.current_dir(root_dir()).args(["deploy/helm/render.py", "manifests"]);
    if check {
        cmd.arg("--check");
    }
    run(&mut cmd)
}

fn on_path(cmd: &str) -> bool {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(cmd).is_file())
}

/// Binaries the lab starts: build them before its tests.
const LAB_BINS: [&str; 6] = ["build", "--bins", "-p", "imds-observer", "-p", "imds-lab"];

fn test(unit_only: bool, matrix: bool, filter: &[String]) -> Result<()> {
    setup()?;
    // The arm64 image's binary (the lab builds its image) and the arm64
    // guest's test binaries: cross builds of their own, beside the checks
    // and unit tests below, which leave CPU idle between their builds.
    let arm64 = if unit_only || !is_root() {
        None
    } else {
        if !on_path(ARM64_GCC) {
            bail!(
                "the arm64 build needs {ARM64_GCC}: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
            );
        }
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = release_args(MUSL_ARM64).join(" ");
        let guest_tests: Vec<String> =
            ARM64_TESTS.iter().map(|(t, _)| format!("--test {t}")).collect();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "\"$0\" {release} && \"$0\" test --release -p imds-lab --no-run --target {MUSL_ARM64} {}",
                guest_tests.join(" ")
            ))
            .arg(cargo);
        Some(Beside::start("the arm64 builds", &cmd, "arm64-build.log")?)
    };
    // The deploy-manifest checks validate offline against the Kubernetes
    // schemas kubernetes-validate ships, and parse the Nomad jobs.
    pip_install(
        "kubernetes_validate, hcl2",
        &["kubernetes-validate==1.37.0", "python-hcl2==8.1.4"],
    )?;
    // The chart is rendered and linted by Helm's own engine, offline.
    pip_helm()?;
    // The alert rules' checks (plain tests) run promtool, from Debian's
    // prometheus package; without root, they say how to install it.
    if is_root() {
        apt_install(&[("promtool", "prometheus")])?;
    }
    // The format and lint gate: CI keeps what rustfmt.toml and clippy say.
    let nightly = format!("+{}", nightly()?);
    run(Command::new("cargo")
        .current_dir(root_dir())
        .args([&nightly, "fmt", "--all", "--", "--check"]))
    .with_context(|| format!("the code is not formatted: run `cargo {nightly} fmt --all`"))?;
    // The fuzz crate is a workspace of its own: `--all` does not reach it.
    run(Command::new("cargo").current_dir(root_dir()).args([
        &nightly,
        "fmt",
        "--all",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--",
        "--check",
    ]))
    .with_context(|| format!("the fuzz crate is not formatted: run `cargo {nightly} fmt --all --manifest-path fuzz/Cargo.toml`"))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // Some plain tests start the binaries (the TUI in tmux, the lab's helpers).
    run(cargo().args(LAB_BINS))?;
    let mut total = Tally::default();
    // Unit tests: pure logic, no root. Lab tests are #[ignore]d here.
    total += run_tests(cargo().args(["test", "--workspace", "--no-fail-fast"]))?;
    // The build without the kubernetes feature (no kube, no hyper) keeps
    // compiling: the Nomad and Docker lookups do not depend on it.
    run(cargo().args(["check", "-p", "imds-observer", "--no-default-features"]))?;
    if unit_only {
        fuzz(FUZZ_SECONDS)?;
    } else {
        if !is_root() {
            bail!(
                "the lab tests need root (eBPF, namespaces, cgroups): run `sudo -E cargo xtask test`, or `cargo xtask test --unit`"
            );
        }
        lab_packages()?;
        run(cargo().args(["build", "--bins", "-p", "aws-sdk-rust-client"]))?;
        // The image test puts this binary in a scratch image: the published
        // image's build, pod lookups included.
        build_release(MUSL)?;
        if let Some(b) = arm64 {
            b.wait(|l| l.contains("Finished"))?;
        }
        let guests = if matrix { kernel_matrix()? } else { Vec::new() };
        // The host lab mostly waits (client timeouts, settling): the kernel
        // matrix's guests (niced, `vm::boot`) and the fuzz stage (niced
        // more) run beside it, on the CPU it leaves. The guests are kernels
        // of their own: they share no namespace, cgroup or qdisc with the
        // host lab.
        let matrix_run = std::thread::spawn(move || run_guests(&guests));
        let fuzzing = fuzz::beside(FUZZ_SECONDS);
        let host = run_tests(
            cargo()
                .args([
                    "test",
                    "-p",
                    "imds-lab",
                    "--tests",
                    "--no-fail-fast",
                    "--",
                    "--ignored",
                    "--test-threads=1",
                ])
                // Tests for kernels without drop reasons: the matrix's 5.10 runs them.
                .args(["--skip", OLD_KERNEL_TESTS])
                .args(filter),
        );
        let fuzzed = fuzzing.and_then(|f| f.wait(fuzz::shown));
        // Whatever the host lab did, the guests finish (their qemu reaped).
        let guests =
            matrix_run.join().map_err(|_| anyhow::anyhow!("the matrix's thread panicked"))?;
        total += host?;
        fuzzed?;
        total += guests?;
    }
    // One closing line for the whole run, unit and lab together.
    println!("xtask: {} passed, {} failed", total.passed, total.failed);
    if total.failed > 0 {
        bail!("{} tests failed", total.failed);
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// A guest ran fewer tests than its script names (`--exact` runs none
    /// of a renamed or deleted test, silently): each missing one fails.
    fn expect_ran(&mut self, named: u64, kernel: &str) {
        let ran = self.passed + self.failed;
        if ran < named {
            eprintln!(
                "kernel {kernel}: {ran} of the {named} matrix tests ran: a name in MATRIX_TESTS matches no test"
            );
            self.failed += named - ran;
        }
    }

    /// Count a libtest summary line:
    /// "test result: ok. 12 passed; 0 failed; 3 ignored; ...".
    fn count(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else { continue };
            let n: u64 = n.parse().unwrap_or(0);
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.passed += o.passed;
        self.failed += o.failed;
    }
}

/// Run `cargo test`, passing its output through, and count what it ran.
fn run_tests(cmd: &mut Command) -> Result<Tally> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut tally = Tally::default();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        tally.count(&line);
    }
    let st = child.wait()?;
    if !st.success() && tally.failed == 0 {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(tally)
}

/// The lab tests every kernel of the matrix runs: hop limit 1 and 2, IPv6,
/// the diagnosis with its evidence as deployed (the uplinks folded into the
/// records of delivered and of dropped replies), detach on exit and restart, and the
/// start-up errors. (test binary, exact test names)
const MATRIX_TESTS: &[(&str, &[&str])] = &[
    (
        "capture_lab",
        &[
            "hop_limit_1_routed_container_loses_the_token_reply",
            "hop_limit_2_delivers_the_token_reply",
            "ipv6_endpoint_hop_limit_1_is_dropped_too",
        ],
    ),
    (
        "diagnose_lab",
        &[
            "hop_limit_1_sdk_like_client_gets_hop_limit_exceeded_and_fallback",
            "tokenless_container_on_a_hop_limit_1_host_is_at_risk",
        ],
    ),
    (
        "cli_lab",
        &[
            "sigint_detaches_every_program",
            "sigkill_then_restart_leaves_no_duplicates_and_sigterm_detaches",
            "second_instance_is_refused_unless_alongside",
            "clear_errors_for_what_is_wrong",
            "startup_says_what_this_kernel_lacks",
        ],
    ),
];

/// What the arm64 guest (emulated, several times slower) runs: the
/// diagnosis at hop limit 1 and 2, on the observer's own output, and
/// detach on SIGTERM.
const ARM64_TESTS: &[(&str, &[&str])] = &[
    (
        "capture_lab",
        &[
            "hop_limit_1_routed_container_loses_the_token_reply",
            "hop_limit_2_delivers_the_token_reply",
        ],
    ),
    ("diagnose_lab", &["hop_limit_1_sdk_like_client_gets_hop_limit_exceeded_and_fallback"]),
    ("cli_lab", &["sigkill_then_restart_leaves_no_duplicates_and_sigterm_detaches"]),
];

/// Lab tests (name prefix) only kernels without drop reasons (5.10) run.
const OLD_KERNEL_TESTS: &str = "old_kernel_";

/// A guest this long is hung (a run takes a few minutes under TCG, more
/// beside the host lab).
const GUEST_LIMIT: Duration = Duration::from_secs(25 * 60);

/// The lab test binaries `targets` for `arch` (for arm64 cross-built,
/// static, and in release: they share the release observer's build, not a
/// second debug one of every crate), built, by target name.
fn lab_test_binaries(targets: &[&str], arch: vm::Arch) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args(["test", "-p", "imds-lab", "--no-run", "--message-format=json", "-q"]);
    for t in targets {
        cmd.args(["--test", t]);
    }
    if arch != vm::Arch::Amd64 {
        cmd.args(["--release", "--target", arch.musl()]);
    }
    let out = output(&mut cmd)?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(bins)
}

/// The guest script: each test binary with its tests, then the status.
fn matrix_script(tests: &[(&str, Vec<String>)], arch: vm::Arch) -> Result<String> {
    let targets: Vec<&str> = tests.iter().map(|(t, _)| *t).collect();
    let bins = lab_test_binaries(&targets, arch)?;
    // The release build users run (the image's static binary).
    let observer = release_binary(arch.musl());
    // A newer kernel's BTF (this machine's), for the tests of old kernels.
    let btf = vm::host_btf()?;
    let mut script = format!(
        "export IMDS_OBSERVER_BIN='{}' IMDS_LAB_NEWER_BTF='{}'\nrc=0\n",
        observer.display(),
        btf.display()
    );
    for (target, names) in tests {
        if names.is_empty() {
            continue;
        }
        let exe = bins
            .iter()
            .find(|(n, _)| n == target)
            .with_context(|| format!("no test binary {target}"))?;
        script += &format!(
            "'{}' --ignored --test-threads=1 --color never --exact {} || rc=1\n",
            exe.1.display(),
            names.join(" ")
        );
    }
    script += "finish $rc
";
    Ok(script)
}

/// How many tests a guest's script names.
fn scenarios(tests: &[(&str, Vec<String>)]) -> u64 {
    tests.iter().map(|(_, names)| names.len() as u64).sum()
}

/// The matrix's tests for kernel `k`; kernels without drop reasons also
/// run the `old_kernel_` tests.
fn matrix_tests(k: &vm::Unpacked) -> Vec<(&'static str, Vec<String>)> {
    let named = match k.arch {
        vm::Arch::Amd64 => MATRIX_TESTS,
        vm::Arch::Arm64 => ARM64_TESTS,
    };
    let mut tests: Vec<_> = named
        .iter()
        .map(|(t, names)| (*t, names.iter().map(|n| n.to_string()).collect()))
        .collect();
    if !k.has_drop_reasons() {
        tests.push((
            "cli_lab",
            vec!["old_kernel_verifier_rejection_shows_its_last_lines".to_string()],
        ));
    }
    tests
}

/// Every kernel of the matrix, fetched, with its guest's script (the test
/// binaries built): what `run_guests` boots.
fn kernel_matrix() -> Result<Vec<(vm::Unpacked, String)>> {
    vm::packages()?;
    vm::kernels()?
        .into_iter()
        .map(|k| {
            let script = matrix_script(&matrix_tests(&k), k.arch)?;
            Ok((k, script))
        })
        .collect()
}

/// Boot every kernel of the matrix and run the matrix's lab tests in each.
fn run_guests(guests: &[(vm::Unpacked, String)]) -> Result<Tally> {
    // The guests run side by side: most of a lab test is waiting (client
    // timeouts, settling), so they share the two cores well, and the
    // matrix takes about as long as its slowest kernel.
    let results: Vec<Result<Tally>> = std::thread::scope(|s| {
        let runs: Vec<_> = guests
            .iter()
            .map(|(k, script)| {
                s.spawn(move || {
                    let t0 = std::time::Instant::now();
                    let mut t = vm::boot(k, script, GUEST_LIMIT)?;
                    t.expect_ran(scenarios(&matrix_tests(k)), &k.release);
                    eprintln!(
                        "kernel {}: {} passed, {} failed in {:.0?}",
                        k.release,
                        t.passed,
                        t.failed,
                        t0.elapsed()
                    );
                    Ok(t)
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a guest's thread panicked"))))
            .collect()
    });
    let mut total = Tally::default();
    for r in results {
        total += r?;
    }
    Ok(total)
}

/// `cargo xtask vm KERNEL [TEST…]`: one guest, for working on one kernel.
fn vm_one(kernel: &str, tests: &[String]) -> Result<()> {
    setup()?;
    if !is_root() {
        bail!(
            "the guests run the lab as root and need root to start virtiofsd: run `sudo -E cargo xtask vm {kernel}`"
        );
    }
    lab_packages()?;
    vm::packages()?;
    run(cargo().args(LAB_BINS))?;
    let k = vm::kernel(kernel)?;
    build_release(k.arch.musl())?;
    let selected = if tests.is_empty() {
        matrix_tests(&k)
    } else {
        // Each name goes to whichever binary has it (the others print 0 passed).
        MATRIX_TESTS
            .iter()
            .map(|(t, _)| *t)
            .chain(["capture_lab", "diagnose_lab", "cli_lab", "identity_lab"])
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|t| (t, tests.to_vec()))
            .collect()
    };
    let mut t = vm::boot(&k, &matrix_script(&selected, k.arch)?, GUEST_LIMIT)?;
    t.expect_ran(
        if tests.is_empty() { scenarios(&selected) } else { tests.len() as u64 },
        &k.release,
    );
    println!("xtask: {} passed, {} failed", t.passed, t.failed);
    if t.failed > 0 {
        bail!("{} tests failed on {}", t.failed, k.release);
    }
    Ok(())
}

fn demo() -> Result<()> {
    setup()?;
    if !is_root() {
        bail!(
            "the demo builds network namespaces and loads eBPF programs: run `sudo -E cargo xtask demo`"
        );
    }
    lab_packages()?;
    run(cargo().args(LAB_BINS))?;
    run(cargo().args(["run", "--quiet", "-p", "imds-lab", "--bin", "lab-demo"]))
}

fn bench() -> Result<()> {
    setup()?;
    if !is_root() {
        bail!(
            "the lab benchmark loads eBPF programs and builds namespaces: run `sudo -E cargo xtask bench`"
        );
    }
    lab_packages()?;
    // Bulk traffic for the per-packet cost and the throughput.
    apt_install(&[("iperf3", "iperf3")])?;
    run(cargo().args(LAB_BINS))?;
    build_release(MUSL)?;
    run(cargo().args(["run", "--quiet", "-p", "imds-lab", "--bin", "lab-bench"]))?;
    run(cargo().args(["bench", "-p", "imds-observer"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #30: the eBPF object's nightly is a dated one (a plain `nightly`
    /// would be whatever the machine has), and the file says it plainly.
    #[test]
    fn the_ebpf_nightly_is_pinned_by_date() {
        let pinned = nightly().unwrap();
        let date = pinned.strip_prefix("nightly-").unwrap_or_else(|| panic!("{pinned}"));
        let parts: Vec<&str> = date.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [4, 2, 2], "{pinned}");
        assert!(parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())), "{pinned}");
        // rust-src for -Z build-std=core.
        let file =
            std::fs::read_to_string(root_dir().join("observer-ebpf/rust-toolchain.toml")).unwrap();
        assert!(file.contains("\"rust-src\""), "{file}");
    }

    /// A guest that ran fewer tests than it was given names (a test
    /// renamed or deleted) fails for each, and every name in the matrix is
    /// a test of its binary today.
    #[test]
    fn the_matrix_runs_every_test_it_names() {
        let mut t = Tally::default();
        t.count("test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 7 filtered out");
        t.expect_ran(3, "5.10");
        assert_eq!((t.passed, t.failed), (2, 1));
        let mut t = Tally { passed: 3, failed: 0 };
        t.expect_ran(3, "5.10");
        assert_eq!(t.failed, 0);
        for (binary, names) in MATRIX_TESTS.iter().chain(ARM64_TESTS) {
            let path = root_dir().join(format!("tests/tests/{binary}.rs"));
            let src = std::fs::read_to_string(&path).unwrap();
            for name in *names {
                assert!(src.contains(&format!("fn {name}()")), "{name} is no test of {binary}");
            }
        }
        assert!(
            std::fs::read_to_string(root_dir().join("tests/tests/cli_lab.rs"))
                .unwrap()
                .contains("fn old_kernel_verifier_rejection_shows_its_last_lines()")
        );
    }

    #[test]
    fn channel_is_read_from_the_toolchain_file() {
        assert_eq!(
            toolchain::channel("[toolchain]\nchannel = \"nightly-2026-05-20\"\n").as_deref(),
            Some("nightly-2026-05-20")
        );
        assert_eq!(toolchain::channel("[toolchain]\nchannel = \"\"\n"), None);
        assert_eq!(toolchain::channel("[toolchain]\n"), None);
    }
}
