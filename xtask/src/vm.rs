//! The kernel matrix: Debian's cloud kernels for the kernels the fleet runs
//! (5.10: Amazon Linux 2, 6.1: AL2023/Bottlerocket/Debian 12, 6.12), booted
//! under qemu, each running the lab's test binaries as root.
//!
//! The guest's root is this machine's own root, shared read-only over
//! virtiofs, with tmpfs where the lab writes (`GUEST_TMPFS`): the guest
//! runs the very binaries and tools the host lab runs, on its own kernel.
//! A checkout below one of those directories (a clone in /tmp) is carried
//! over the tmpfs, so any checkout path works. The guest's kernel modules
//! come from the kernel package.
//!
//! An arm64 guest (Graviton's architecture, emulated) cannot run this
//! machine's binaries: its root is assembled once from Debian's arm64
//! packages (target/vm/rootfs-arm64: busybox, bash, coreutils, iproute2,
//! bpftool, kmod, util-linux and their libraries), shared over the same
//! virtiofs, with the checkout bound in at its own path; the observer and
//! the lab's test binaries are cross-built for aarch64 (musl, static).
//!
//! Kernels and packages are fetched with `apt-get download` through a
//! private apt state (target/vm/apt-*), never installed on this machine,
//! and kept in target/vm.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Tally, output, run};

/// One kernel of the matrix: its architecture, the Debian suites that
/// carry it and the package that depends on its current build (resolved
/// through apt, since security updates retire exact versions).
pub struct Kernel {
    pub name: &'static str,
    pub arch: Arch,
    suites: &'static [&'static str],
    meta: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    Amd64,
    /// Emulated (TCG): Graviton's architecture.
    Arm64,
}

impl Arch {
    /// Debian's (and Kubernetes') name.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Rust's static target for the guest's binaries.
    pub fn musl(self) -> &'static str {
        match self {
            Arch::Amd64 => crate::MUSL,
            Arch::Arm64 => crate::MUSL_ARM64,
        }
    }
}

pub const MATRIX: &[Kernel] = &[
    Kernel {
        name: "5.10",
        arch: Arch::Amd64,
        suites: &["bullseye", "bullseye-security"],
        meta: "linux-image-cloud-amd64",
    },
    Kernel {
        name: "6.1",
        arch: Arch::Amd64,
        suites: &["bookworm", "bookworm-security"],
        meta: "linux-image-cloud-amd64",
    },
    Kernel {
        name: "6.12",
        arch: Arch::Amd64,
        suites: &["bookworm", "bookworm-security"],
        meta: "linux-image-6.12-cloud-amd64",
    },
    // Amazon Linux 2023's kernel line on Graviton.
    Kernel {
        name: "6.1-arm64",
        arch: Arch::Arm64,
        suites: &["bookworm", "bookworm-security"],
        meta: "linux-image-cloud-arm64",
    },
];

/// A kernel unpacked and ready to boot.
pub struct Unpacked {
    pub release: String,
    pub arch: Arch,
    vmlinuz: PathBuf,
    /// The root of the extracted package (lib/modules/<release> below it).
    root: PathBuf,
}

fn vm_dir() -> PathBuf {
    crate::root_dir().join("target/vm")
}

/// apt-get/apt-cache with a private state for `suites` and `arch`, so the
/// machine's own sources, lists and installed packages are never touched
/// (the state's empty dpkg status: a download resolves every dependency).
fn apt(tool: &str, state: &Path, arch: Arch) -> Command {
    let mut c = Command::new(tool);
    for (k, v) in [
        ("Dir::Etc::SourceList", state.join("sources.list")),
        ("Dir::Etc::SourceParts", state.join("sources.list.d")),
        ("Dir::State::Lists", state.join("lists")),
        ("Dir::State::status", state.join("status")),
        ("Dir::Cache", state.join("cache")),
    ] {
        c.arg("-o").arg(format!("{k}={}", v.display()));
    }
    c.arg("-o").arg(format!("APT::Architecture={}", arch.deb()));
    c.arg("-o").arg(format!("APT::Architectures={}", arch.deb()));
    c.args(["-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root", "-qq"]);
    c
}

/// The private apt state for `suites` (updated once) and `arch`.
fn apt_state(suites: &[&str], arch: Arch) -> Result<PathBuf> {
    let state = match arch {
        Arch::Amd64 => vm_dir().join(format!("apt-{}", suites[0])),
        a => vm_dir().join(format!("apt-{}-{}", suites[0], a.deb())),
    };
    fs::create_dir_all(state.join("lists/partial"))?;
    fs::create_dir_all(state.join("cache/archives/partial"))?;
    fs::create_dir_all(state.join("sources.list.d"))?;
    if !state.join("status").exists() {
        fs::write(state.join("status"), "")?;
    }
    let mirror = debian_mirror();
    let security = mirror.replace("/debian", "/debian-security");
    let mut list = String::new();
    for s in suites {
        let base = if s.ends_with("-security") { &security } else { &mirror };
        list += &format!(
            "deb [arch={} signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {base} {s} main\n",
            arch.deb()
        );
    }
    fs::write(state.join("sources.list"), list)?;
    if !state.join("updated").exists() {
        run(apt("apt-get", &state, arch).arg("update"))?;
        fs::write(state.join("updated"), "")?;
    }
    Ok(state)
}

/// The Debian archive this machine's apt already uses (its first active
/// `URIs:` or `deb` line).
fn debian_mirror() -> String {
    let mut text = String::new();
    for f in ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"] {
        text += &fs::read_to_string(f).unwrap_or_default();
        text.push('\n');
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("URIs:").or_else(|| l.strip_prefix("deb ")))
        .flat_map(str::split_whitespace)
        .find(|w| w.starts_with("http") && w.contains("debian") && !w.contains("security"))
        .unwrap_or("http://deb.debian.org/debian")
        .trim_end_matches('/')
        .to_string()
}

fn fetch(k: &Kernel) -> Result<Unpacked> {
    let dir = vm_dir().join(format!("kernel-{}", k.name));
    let done = dir.join("release");
    if let Ok(release) = fs::read_to_string(&done) {
        let release = release.trim().to_string();
        return Ok(Unpacked {
            vmlinuz: dir.join(format!("root/boot/vmlinuz-{release}")),
            root: dir.join("root"),
            release,
            arch: k.arch,
        });
    }
    let state = apt_state(k.suites, k.arch)?;
    let deps = output(apt("apt-cache", &state, k.arch).args([
        "depends",
        "--no-recommends",
        "--no-suggests",
        k.meta,
    ]))?;
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| {
            p.starts_with("linux-image-")
                && p.ends_with(&format!("-cloud-{}", k.arch.deb()))
                && p != &k.meta
        })
        .with_context(|| format!("{} names no kernel package:\n{deps}", k.meta))?
        .to_string();
    eprintln!("kernel {}: {pkg}", k.name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    run(apt("apt-get", &state, k.arch).arg("download").arg(&pkg).current_dir(&dir))?;
    let deb = fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("root")))?;
    fs::remove_file(&deb)?;
    let release = pkg.trim_start_matches("linux-image-").to_string();
    let root = dir.join("root");
    // Debian 13+ packages put modules below usr/lib; bookworm and older below lib.
    run(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    fs::write(&done, &release)?;
    Ok(Unpacked {
        vmlinuz: root.join(format!("boot/vmlinuz-{release}")),
        root,
        release,
        arch: k.arch,
    })
}

/// The module files to insert, in order, for `name` (e.g. "virtiofs") and
/// what it depends on; empty when it is built in.
fn module_chain(k: &Unpacked, name: &str) -> Vec<PathBuf> {
    let base = k.root.join(format!("lib/modules/{}", k.release));
    let dep = fs::read_to_string(base.join("modules.dep")).unwrap_or_default();
    let Some(line) = dep.lines().find(|l| {
        let file = l.split(':').next().unwrap_or("");
        Path::new(file).file_name().and_then(|n| n.to_str()).and_then(|n| n.split('.').next())
            == Some(name)
    }) else {
        return Vec::new();
    };
    let (file, deps) = line.split_once(':').unwrap_or((line, ""));
    // modules.dep lists a module's dependencies deepest last: insert those first.
    deps.split_whitespace().rev().chain([file]).map(|f| base.join(f)).collect()
}

/// Directories of the shared root that the guest covers with a tmpfs (the
/// lab writes there; the host's own contents must not leak in).
const GUEST_TMPFS: &[&str] = &["/tmp", "/run", "/var/tmp", "/var/lib"];

/// Of `dirs` (absolute, canonical), those a tmpfs of `GUEST_TMPFS` would
/// hide, without any that lies inside another: init carries them over.
fn hidden_in_guest(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut hidden: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| GUEST_TMPFS.iter().any(|t| d.starts_with(t) && d.as_path() != Path::new(t)))
        .cloned()
        .collect();
    hidden.sort();
    hidden.dedup();
    let all = hidden.clone();
    hidden.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    hidden
}

/// What the guest must see of this machine: the checkout (test binaries,
/// the run script, the kernels) and a target directory kept elsewhere.
fn guest_needs() -> Vec<PathBuf> {
    let mut dirs = vec![crate::root_dir()];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t));
    }
    dirs.iter().filter_map(|d| fs::canonicalize(d).ok()).collect()
}

/// /env of the initramfs: the run script, the kernel's files, the guest's
/// root and what to bind into it, the tmpfs mounts and what to carry over
/// them, where the script writes, as shell assignments (any path works,
/// spaces included; none goes through the kernel command line).
fn guest_env(runner: &Path, kroot: &Path, root: &Path, arch: Arch) -> String {
    let lines =
        |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n");
    let bind = if root == Path::new("/") { Vec::new() } else { guest_needs() };
    format!(
        "export imds_run={} imds_kroot={}\nexport imds_root={} imds_bind={}\nexport imds_tmpfs={} imds_carry={}\nexport imds_out={}\n",
        shell_quote(&runner.display().to_string()),
        shell_quote(&kroot.display().to_string()),
        shell_quote(&root.display().to_string()),
        shell_quote(&lines(&bind)),
        shell_quote(&GUEST_TMPFS.join("\n")),
        shell_quote(&lines(&hidden_in_guest(&guest_needs()))),
        match arch {
            Arch::Amd64 => "/dev/ttyS1",
            // The virt board has one UART (the kernel's console): a virtio console.
            Arch::Arm64 => "/dev/hvc0",
        }
    )
}

/// What an arm64 guest's root holds: the shells and tools of the run
/// script and of the lab (ip, tc, nsenter, bpftool, modprobe, GNU date),
/// with their libraries; busybox for every other command.
const ARM64_PACKAGES: &[&str] =
    &["busybox-static", "bash", "coreutils", "iproute2", "bpftool", "kmod", "util-linux"];

/// The root of `arch`'s guests, as a path in this machine's tree (which
/// virtiofs shares whole): `/` itself for amd64, or for arm64 a root
/// assembled from Debian's arm64 packages, once, with a mount point for
/// each directory bound in from this machine (`guest_needs`).
fn guest_root(arch: Arch) -> Result<PathBuf> {
    if arch == Arch::Amd64 {
        return Ok(PathBuf::from("/"));
    }
    let root = vm_dir().join(format!("rootfs-{}", arch.deb()));
    // Assembled from this list; another list assembles it anew.
    let done = vm_dir().join(format!("rootfs-{}.assembled", arch.deb()));
    if fs::read_to_string(&done).ok().as_deref() != Some(&ARM64_PACKAGES.join(" ")) {
        assemble_root(&root, arch)?;
        fs::write(&done, ARM64_PACKAGES.join(" "))?;
    }
    for d in guest_needs() {
        fs::create_dir_all(root.join(d.strip_prefix("/").unwrap_or(&d)))?;
    }
    Ok(fs::canonicalize(root)?)
}

fn assemble_root(root: &Path, arch: Arch) -> Result<()> {
    eprintln!("assembling the {} guests' root from Debian's packages (once)", arch.deb());
    let state = apt_state(&["bookworm", "bookworm-security"], arch)?;
    let debs = vm_dir().join(format!("rootfs-{}-debs", arch.deb()));
    let _ = fs::remove_dir_all(root);
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(debs.join("partial"))?;
    run(apt("apt-get", &state, arch)
        .arg("-o")
        .arg(format!("Dir::Cache::archives={}", debs.display()))
        .args(["install", "--download-only", "--no-install-recommends", "-y"])
        .args(ARM64_PACKAGES))?;
    for e in fs::read_dir(&debs)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&p).arg(root))?;
        }
    }
    fs::remove_dir_all(&debs)?;
    for d in ["proc", "sys", "dev", "tmp", "run", "var/tmp", "var/lib", "root", "etc", "bin"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    // Debian builds busybox-static alike for both architectures: this
    // machine's lists the applets.
    let applets = output(Command::new(host_busybox()?).arg("--list"))?;
    for a in applets.lines().map(str::trim).filter(|a| !a.is_empty() && !a.contains('/')) {
        let have = ["bin", "sbin", "usr/bin", "usr/sbin"]
            .iter()
            .any(|d| root.join(d).join(a).symlink_metadata().is_ok());
        if !have {
            std::os::unix::fs::symlink("/bin/busybox", root.join("bin").join(a))?;
        }
    }
    Ok(())
}

fn host_busybox() -> Result<&'static str> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static is not installed")
}

/// A tiny initramfs: static busybox, our init and its /env, and the
/// modules needed to mount the virtiofs root (fuse, virtiofs) where they
/// are not built in.
fn initramfs(k: &Unpacked, env: &str, root: &Path) -> Result<PathBuf> {
    let dir = vm_dir().join(format!("initramfs-{}", k.release));
    let out = vm_dir().join(format!("initramfs-{}.cpio", k.release));
    let _ = fs::remove_dir_all(&dir);
    for d in ["bin", "modules", "proc", "sys", "dev", "newroot"] {
        fs::create_dir_all(dir.join(d))?;
    }
    // The guest's own architecture's busybox.
    let busybox = match k.arch {
        Arch::Amd64 => PathBuf::from(host_busybox()?),
        Arch::Arm64 => root.join("bin/busybox"),
    };
    fs::copy(busybox, dir.join("bin/busybox"))?;
    fs::write(dir.join("init"), include_str!("../vm/init"))?;
    set_exec(&dir.join("init"))?;
    fs::write(dir.join("env"), env)?;
    let mut seen = Vec::new();
    let mut wanted = vec!["virtio_pci", "virtiofs", "virtio_fs"];
    if k.arch == Arch::Arm64 {
        wanted.push("virtio_console");
    }
    for m in wanted {
        for src in module_chain(k, m) {
            if seen.contains(&src) {
                continue;
            }
            let stem = src
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('.').next())
                .unwrap_or("m");
            let dst = dir.join(format!("modules/{:02}-{stem}.ko", seen.len()));
            if src.extension().is_some_and(|e| e == "xz") {
                let data = Command::new("xz").arg("-dc").arg(&src).output()?;
                fs::write(&dst, data.stdout)?;
            } else {
                fs::copy(&src, &dst)?;
            }
            seen.push(src);
        }
    }
    let files = output(Command::new("find").arg(".").current_dir(&dir))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&out)?)
        .spawn()
        .context("cpio (apt-get install cpio)")?;
    cpio.stdin.take().unwrap().write_all(files.as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("cpio failed");
    }
    Ok(out)
}

fn set_exec(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Software emulation unless the CPU can really virtualise (this kind of
/// machine's /dev/kvm is kvm_pvm, which fails on these guests).
///
/// One host thread runs both guest CPUs in turn. With a thread per guest
/// CPU (thread=multi), QEMU 7.2 let a CPU run a stale int3 while the other
/// patched a static key (attaching a cgroup program flips one), and 6.12
/// died with "Fatal exception in interrupt" in ip6_finish_output on CI.
/// The guests mostly wait on client timeouts, so this costs little.
fn accel() -> &'static str {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let vmx = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    if vmx && Path::new("/dev/kvm").exists() { "kvm" } else { "tcg,thread=single" }
}

/// Kills its process (and waits) when dropped, failing or not.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boot `k` and run `script` (bash, as root, in the guest, from the repo's
/// directory). Its output streams to ours line by line; test results in it
/// are tallied. Fails if the guest does not finish within `limit`.
pub fn boot(k: &Unpacked, script: &str, limit: Duration) -> Result<Tally> {
    let vm = vm_dir();
    let tag = k.release.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let runner = vm.join(format!("run-{tag}.sh"));
    fs::write(
        &runner,
        format!(
            "{}\ncd {}\n{script}\n",
            include_str!("../vm/guest-setup.sh"),
            shell_quote(&crate::root_dir().display().to_string())
        ),
    )?;
    set_exec(&runner)?;
    let runner = fs::canonicalize(&runner)?;
    let root = guest_root(k.arch)?;
    let env = guest_env(&runner, &fs::canonicalize(&k.root)?, &root, k.arch);
    let initrd = initramfs(k, &env, &root)?;
    let sock = vm.join(format!("virtiofs-{tag}.sock"));
    let console = vm.join(format!("console-{tag}.log"));
    let _ = fs::remove_file(&sock);
    let virtiofsd = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("no virtiofsd (apt-get install qemu-system-x86)")?;
    let _fsd = Reaped(
        Command::new(virtiofsd)
            .arg(format!("--socket-path={}", sock.display()))
            .args(["-o", "source=/", "-o", "cache=auto", "-o", "sandbox=chroot"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(vm.join(format!("virtiofsd-{tag}.log")))?)
            .spawn()
            .context("starting virtiofsd")?,
    );
    let t0 = Instant::now();
    while !sock.exists() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("virtiofsd did not create {}", sock.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let mem = "2G";
    let (qemu_bin, console_tty, package) = match k.arch {
        Arch::Amd64 => ("qemu-system-x86_64", "ttyS0", "qemu-system-x86"),
        Arch::Arm64 => ("qemu-system-aarch64", "ttyAMA0", "qemu-system-arm"),
    };
    // Below the host lab beside which `cargo xtask test` runs the guests
    // (they take what it leaves), above the fuzz stage there (nice 19,
    // bounded by time, not by work).
    let mut qemu = Command::new("nice");
    qemu.args(["-n", "15", qemu_bin]);
    match k.arch {
        Arch::Amd64 => qemu.args(["-accel", accel(), "-cpu", "max"]),
        // Emulated: pointer authentication with QEMU's own cheap hash
        // instead of the architected one, which costs TCG dearly.
        Arch::Arm64 => {
            qemu.args(["-M", "virt", "-accel", "tcg,thread=single", "-cpu", "max,pauth-impdef=on"])
        }
    };
    qemu.args(["-m", mem, "-smp", "2"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-numa",
            "node,memdev=mem",
        ])
        .args(["-chardev", &format!("socket,id=fs,path={}", sock.display())])
        .args(["-device", "vhost-user-fs-pci,chardev=fs,tag=hostroot"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        // no_timer_check: a guest starved of CPU at boot (four side by side
        // beside the host lab) fails the IO-APIC timer check and panics.
        .arg(format!("console={console_tty} panic=-1 quiet no_timer_check"))
        // The kernel's console to a file; the script's output (ttyS1, or a
        // virtio console on arm64's one-UART board) to us.
        .args(["-serial", &format!("file:{}", console.display())]);
    match k.arch {
        Arch::Amd64 => qemu.args(["-serial", "stdio"]),
        Arch::Arm64 => qemu.args([
            "-device",
            "virtio-serial-pci",
            "-chardev",
            "stdio,id=out",
            "-device",
            "virtconsole,chardev=out",
        ]),
    };
    qemu.stdin(Stdio::null()).stdout(Stdio::piped());
    eprintln!("+ {qemu:?}");
    let mut child =
        Reaped(qemu.spawn().with_context(|| format!("{qemu_bin} (apt-get install {package})"))?);
    let (tx, rx) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut tally = Tally::default();
    let mut exit = None;
    let deadline = Instant::now() + limit;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                println!("[{}] {line}", k.release);
                tally.count(line);
                if let Some(rc) = line.strip_prefix("vm-exit: ") {
                    exit = rc.trim().parse::<i32>().ok();
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                print_tail(&console);
                bail!("kernel {}: the guest did not finish within {limit:?}", k.release);
            }
        }
    }
    let _ = child.0.wait();
    match exit {
        Some(0) => Ok(tally),
        Some(rc) if tally.failed > 0 => {
            eprintln!("kernel {}: guest script exited {rc}", k.release);
            Ok(tally)
        }
        other => {
            // init's own word on why it could not start the script.
            let text = fs::read_to_string(&console).unwrap_or_default();
            if let Some(why) = text.lines().find_map(|l| l.trim().strip_prefix("init: ")) {
                bail!("kernel {}: the guest did not start: {why}", k.release);
            }
            print_tail(&console);
            bail!("kernel {}: the guest script ended with {other:?} (console above)", k.release)
        }
    }
}

/// The guest's console from its first oops (what died, and how) or, when it
/// did not oops, its last lines.
fn print_tail(console: &Path) {
    let text = fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = oops_start(&lines).unwrap_or(lines.len().saturating_sub(40));
    let to = lines.len().min(from + 120);
    eprintln!("--- {} (lines {}–{to} of {}):", console.display(), from + 1, lines.len());
    for l in &lines[from..to] {
        eprintln!("{l}");
    }
}

/// Where the kernel's first report of a fault starts.
fn oops_start(lines: &[&str]) -> Option<usize> {
    const MARKS: &[&str] =
        &["cut here ]", "BUG:", "Oops:", "int3:", "general protection", "Kernel panic"];
    lines.iter().position(|l| MARKS.iter().any(|m| l.contains(m)))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Unpacked {
    /// skb:kfree_skb passes a drop reason from 5.17 on: of the matrix, all
    /// but 5.10.
    pub fn has_drop_reasons(&self) -> bool {
        !self.release.starts_with("5.10.")
    }
}

/// A copy of this machine's kernel BTF where the guests can read it.
pub fn host_btf() -> Result<PathBuf> {
    let dst = vm_dir().join("btf-host");
    fs::create_dir_all(vm_dir())?;
    fs::copy("/sys/kernel/btf/vmlinux", &dst).context("copying /sys/kernel/btf/vmlinux")?;
    Ok(dst)
}

/// Fetch (cached) every kernel of the matrix.
pub fn kernels() -> Result<Vec<Unpacked>> {
    MATRIX.iter().map(fetch).collect()
}

pub fn kernel(name: &str) -> Result<Unpacked> {
    let k = MATRIX.iter().find(|k| k.name == name).with_context(|| {
        format!(
            "no kernel {name} in the matrix ({})",
            MATRIX.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        )
    })?;
    fetch(k)
}

/// Debian packages the matrix needs on the host.
pub fn packages() -> Result<()> {
    crate::apt_install(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("cpio", "cpio"),
        ("depmod", "kmod"),
        ("xz", "xz-utils"),
        ("busybox", "busybox-static"),
    ])
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{hidden_in_guest, oops_start};

    #[test]
    fn a_checkout_below_a_guest_tmpfs_is_carried_over_it() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(hidden_in_guest(&[p("/tmp/clone")]), [p("/tmp/clone")]);
        assert_eq!(hidden_in_guest(&[p("/var/tmp/x/y")]), [p("/var/tmp/x/y")]);
        // A target directory inside the checkout rides along with it.
        assert_eq!(hidden_in_guest(&[p("/tmp/c"), p("/tmp/c/target")]), [p("/tmp/c")]);
        // Visible anyway: nothing to carry. Not a prefix by bytes: /tmpfoo.
        assert!(hidden_in_guest(&[p("/work/main"), p("/tmpfoo/x"), p("/runner")]).is_empty());
        assert_eq!(hidden_in_guest(&[p("/work/main"), p("/run/user/0/t")]), [p("/run/user/0/t")]);
    }

    #[test]
    fn the_console_is_shown_from_the_oops() {
        let console = [
            "[    1.0] virtio-fs: ok",
            "[   69.5] int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[   69.5] RIP: 0010:ip6_finish_output+0x21/0x330",
            "[   69.6] Kernel panic - not syncing: Fatal exception in interrupt",
        ];
        assert_eq!(oops_start(&console), Some(1));
        assert_eq!(oops_start(&console[..1]), None);
        assert_eq!(oops_start(&["panic=-1 in a command line"]), None);
    }
}
