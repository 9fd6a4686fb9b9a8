//! The fuzz stage (`cargo xtask fuzz`; `cargo xtask test` runs it beside
//! the host lab, or after the unit tests with `--unit`): builds the targets of fuzz/ with nightly and cargo-fuzz
//! (installed on first use), and runs each for a bounded time
//! from a scratch copy of its seed corpus (fuzz/corpus/<target>/, kept in
//! the repo and never written: what libFuzzer adds stays in fuzz/target/).
//! Fails on any crash, hang or memory blow-up, printing the reproducer
//! libFuzzer wrote to fuzz/artifacts/<target>/ and the command that
//! replays it.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{apt_install, beside::Beside, cargo_home, nightly, root_dir, run};

/// The targets (fuzz/fuzz_targets/*.rs), run two at a time on CI's two
/// cores in this order: the slowest per input (the pipeline, a tokio
/// runtime per reply) paired with the fastest.
pub const TARGETS: [&str; 4] = ["decode_record", "netlink", "http_response", "json_line"];

/// cargo-fuzz pinned: 0.13.1 builds with the stable toolchain these
/// machines have (about 35 s, once) and drives nightly's libFuzzer flags.
const CARGO_FUZZ: &str = "0.13.1";

/// Flags of every build and run: nightly is only for the sanitizer
/// coverage; no ASan (the observer's parsing is safe Rust: ASan would only
/// slow the build and each execution), but overflow checks and debug
/// assertions on, as in a test build.
const BUILD_FLAGS: [&str; 3] = ["--sanitizer", "none", "--debug-assertions"];

/// cargo for the fuzz crate: the pinned nightly, and none of the outer cargo's
/// settings (toolchain, target dir) leaking into cargo-fuzz's build.
fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root_dir())
        .arg(format!("+{}", nightly().expect("the pinned nightly")))
        .arg("fuzz");
    for var in ["CARGO", "RUSTC", "RUSTUP_TOOLCHAIN", "RUSTFLAGS", "CARGO_TARGET_DIR"] {
        c.env_remove(var);
    }
    c
}

/// cargo-fuzz, unless this version is there (only the fuzz stage needs it).
fn install() -> Result<()> {
    let bin = cargo_home().join("bin/cargo-fuzz");
    let have = Command::new(&bin).arg("--version").output();
    if have.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ)) {
        return Ok(());
    }
    eprintln!("installing cargo-fuzz {CARGO_FUZZ} (about 35 s, once)");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ]))
}

/// The fuzz stage as a child (`cargo xtask fuzz`) at the lowest CPU
/// priority, its output in a log: `cargo xtask test` runs it beside the
/// host lab, whose timing a nice-19 build and fuzzers do not disturb.
pub fn beside(seconds: u64) -> Result<Beside> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["fuzz", "--seconds", &seconds.to_string()]);
    Beside::start("the fuzz stage", &cmd, "fuzz-stage.log")
}

/// Its log's lines worth showing when it passed.
pub fn shown(line: &str) -> bool {
    line.starts_with("fuzz ")
}

/// What one run did.
struct Outcome {
    target: &'static str,
    ok: bool,
    log: PathBuf,
}

/// Build the targets, then run each for `seconds`, two at a time
/// (nightly comes from `setup`).
pub fn fuzz(seconds: u64) -> Result<()> {
    let t0 = Instant::now();
    install()?;
    // libfuzzer-sys compiles libFuzzer, which is C++.
    apt_install(&[("c++", "g++")])?;
    run(cargo_fuzz().arg("build").args(BUILD_FLAGS))?;
    let t_build = t0.elapsed();
    let work = root_dir().join("fuzz/target/xtask");
    let mut outcomes = Vec::new();
    for pair in TARGETS.chunks(2) {
        let mut running = Vec::new();
        for &target in pair {
            running.push((target, start(target, seconds, &work)?));
        }
        for (target, (mut child, log)) in running {
            let ok = child.wait()?.success();
            outcomes.push(Outcome { target, ok, log });
        }
    }
    let mut failed = Vec::new();
    for o in &outcomes {
        let text = fs::read_to_string(&o.log).unwrap_or_default();
        println!("fuzz {}: {}", o.target, summary(&text));
        if !o.ok {
            failed.push(o.target);
            report_crash(o.target, &text, &o.log);
        }
    }
    println!("fuzz stage: build {:.0?}, runs {:.0?}", t_build, t0.elapsed() - t_build);
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Start `target` on a fresh copy of its seeds; its output goes to a log.
fn start(target: &str, seconds: u64, work: &Path) -> Result<(std::process::Child, PathBuf)> {
    let seeds = root_dir().join("fuzz/corpus").join(target);
    let corpus = work.join("corpus").join(target);
    let _ = fs::remove_dir_all(&corpus);
    fs::create_dir_all(&corpus)?;
    for e in fs::read_dir(&seeds).with_context(|| format!("{}", seeds.display()))? {
        let e = e?;
        fs::copy(e.path(), corpus.join(e.file_name()))?;
    }
    let log = work.join(format!("{target}.log"));
    let mut cmd = cargo_fuzz();
    cmd.args(["run", target])
        .args(BUILD_FLAGS)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes 10 s is a hang (the slowest seed takes a
        // millisecond); the process stays well below CI's memory.
        .args(["-timeout=10", "-rss_limit_mb=1024", "-print_final_stats=1"])
        .stdout(Stdio::from(fs::File::create(&log)?))
        .stderr(Stdio::from(fs::File::options().append(true).open(&log)?));
    eprintln!("+ {cmd:?}");
    Ok((cmd.spawn().with_context(|| format!("running {cmd:?}"))?, log))
}

/// "N execs, cov C, corpus K" from libFuzzer's closing lines.
fn summary(log: &str) -> String {
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| {
                l.strip_prefix(name)?.trim().strip_prefix(':').map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".into())
    };
    // The last status line: "#123 DONE   cov: 456 ft: 789 corp: 12/3kb ...".
    let last = log.lines().rev().find(|l| l.starts_with('#') && l.contains("cov:"));
    let field = |name: &str| {
        last.and_then(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == name)?;
            w.next().map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
    };
    format!(
        "{} execs ({}/s), coverage {} edges {} features, corpus {}, peak {} MB",
        stat("stat::number_of_executed_units"),
        stat("stat::average_exec_per_sec"),
        field("cov:"),
        field("ft:"),
        field("corp:"),
        stat("stat::peak_rss_mb"),
    )
}

/// The input libFuzzer kept of a failure: "... Test unit written to
/// <dir>/crash-<sha1>" (also leak-, timeout-, oom-).
fn artifact(log: &str) -> Option<String> {
    log.lines().find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim().into()))
}

fn report_crash(target: &str, log: &str, log_path: &Path) {
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    eprintln!("---- {target}: last lines of {} ----", log_path.display());
    for l in tail.iter().rev() {
        eprintln!("{l}");
    }
    match artifact(log) {
        Some(a) => {
            let path = root_dir().join(&a);
            eprintln!("{target}: reproducer {}", path.display());
            eprintln!(
                "reproduce: cargo +{} fuzz run {target} {} {}",
                nightly().unwrap_or_else(|_| "nightly".into()),
                BUILD_FLAGS.join(" "),
                path.display()
            );
        }
        None => eprintln!("{target}: failed without a reproducer (see the log above)"),
    }
}

#[cfg(test)]
mod tests {
    /// The closing lines of a libFuzzer run that found a crash.
    const LOG: &str = "\
#1599966\tREDUCE cov: 2223 ft: 5195 corp: 1091/1062Kb lim: 4096 exec/s: 25396 rss: 73Mb L: 1265/3621 MS: 1 EraseBytes-
thread '<unnamed>' (5069) panicked at observer/src/sys/netlink.rs:130:68:
attempt to negate with overflow
==5069== ERROR: libFuzzer: deadly signal
artifact_prefix='/w/fuzz/artifacts/netlink/'; Test unit written to /w/fuzz/artifacts/netlink/crash-e15d
stat::number_of_executed_units: 1602774
stat::average_exec_per_sec:     25440
stat::peak_rss_mb:              117
";

    #[test]
    fn reads_what_ran_and_the_reproducer() {
        assert_eq!(
            super::summary(LOG),
            "1602774 execs (25440/s), coverage 2223 edges 5195 features, corpus 1091/1062Kb, peak 117 MB"
        );
        assert_eq!(super::artifact(LOG).as_deref(), Some("/w/fuzz/artifacts/netlink/crash-e15d"));
        assert_eq!(super::artifact("Done 12 runs in 1 second(s)"), None);
    }
}
