//! `cargo xtask demo`: the hop-limit failure, reproduced and observed on this
//! machine. Builds the lab with hop limit 1, runs a container client that
//! behaves like the AWS SDK for JavaScript v2 (token PUT, 1 s timeout, three
//! retries, then IMDSv1), watches it with imds-observer, shows what the
//! observer saw, and tears everything down.
use std::{
    io::Write,
    process::{ExitCode, Stdio},
    time::Duration,
};

use imds_lab::{Attach, Lab, LabOpts, Value, bin, of_type};

fn short(e: &Value) -> String {
    let get =
        |k: &str| e.get(k).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
    let mut s = format!("{:<12} {:<27} ttl={:<3}", get("type"), get("ts"), get("ttl"));
    for k in ["method", "path", "status", "reason", "via", "iface"] {
        if e.get(k).is_some() {
            s += &format!(" {k}={}", get(k));
        }
    }
    s
}

fn main() -> ExitCode {
    println!("imds-observer demo: a container one hop behind a host whose IMDS hop limit is 1\n");
    println!(
        "building the lab: cloud netns (fake IMDS on 169.254.169.254, hop limit 1) <- host netns <- container netns"
    );
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let app = lab.add_container("app", Attach::Routed);
    let obs = lab.observer(&[]);
    println!("observer running in the host netns; container cgroup {}\n", app.cgroup_rel());

    println!("the container's client (like the AWS SDK for JavaScript v2) fetches credentials:");
    let out = app
        .command(&bin("sdk-client"), &["--profile", "js-v2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .expect("run sdk-client");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_default();
        println!(
            "  {} {:<50} {} ({} ms)",
            v["method"].as_str().unwrap_or(""),
            v["path"].as_str().unwrap_or(""),
            v["outcome"],
            v["ms"]
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let events = obs.stop();

    println!("\nwhat imds-observer saw ({} events), for the first token PUT:", events.len());
    let first_put = of_type(&events, "request")
        .into_iter()
        .find(|e| e["method"] == "PUT")
        .map(|e| e["flow"].clone());
    for e in events.iter().filter(|e| first_put.as_ref() == Some(&e["flow"])).take(14) {
        if e.get("method").is_some() || e.get("status").is_some() || e["type"] == "drop" {
            println!("  {}", short(e));
        }
    }
    let drops = of_type(&events, "drop").iter().filter(|d| d.get("via").is_none()).count();
    let verdicts = of_type(&events, "finding").len();

    // The same stream, read back by `imds-observer report`.
    println!("\n$ imds-observer report --from <the stream above>\n");
    let mut report = std::process::Command::new(bin("imds-observer"))
        .args(["report", "--from", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run imds-observer report");
    {
        let mut stdin = report.stdin.take().unwrap();
        for e in &events {
            let _ = writeln!(stdin, "{e}");
        }
    }
    let code = report.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-1);
    println!("(report exit status {code}: 1 means a container needs attention)");

    let path = std::env::temp_dir().join("imds-observer-demo.jsonl");
    if let Ok(mut f) = std::fs::File::create(&path) {
        for e in &events {
            let _ = writeln!(f, "{e}");
        }
        println!("\nall events as JSON lines: {}", path.display());
    }
    drop(lab);
    println!("lab removed.");
    if drops == 0 || verdicts == 0 || code != 1 {
        eprintln!("demo: the failure was not observed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
