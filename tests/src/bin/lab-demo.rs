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
    let get = |k: &str| e.get(k).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
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
    println!("building the lab: cloud netns (fake IMDS on 169.254.169.254, hop limit 1) <- host netns <- container netns");
    let mut lab = Lab::new(LabOpts { hop_limit: 1, ..Default::default() });
    let app = lab.add_container("app", Attach::Routed);
    let obs = lab.observer(&[]);
    println!("observer running in the host netns; container cgroup {}\n", app.cgroup_rel());

    println!("the container's client (like the AWS SDK for JavaScript v2) fetches credentials:");
    let out = app
        .command(&bin("sdk-client"), &["--profile", "js-v2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run sdk-client");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_default();
        println!("  {} {:<50} {} ({} ms)", v["method"].as_str().unwrap_or(""), v["path"].as_str().unwrap_or(""), v["outcome"], v["ms"]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let events = obs.stop();

    println!("\nwhat imds-observer saw ({} events; the token PUTs and their replies):", events.len());
    let put_flows: Vec<&Value> = of_type(&events, "request")
        .into_iter()
        .filter(|e| e["method"] == "PUT")
        .map(|e| &e["flow"])
        .collect();
    for e in &events {
        let interesting = put_flows.contains(&&e["flow"])
            && (e.get("method").is_some() || e.get("status").is_some() || e["type"] == "drop");
        if interesting {
            println!("  {}", short(e));
        }
    }
    let drops = of_type(&events, "drop").iter().filter(|d| d.get("via").is_none()).count();
    let lost = put_flows.len();
    println!(
        "\n{lost} token PUTs left the container; their replies reached the host with TTL 1 and the kernel dropped them \
         {drops} times in ip_forward (reason IP_INHDR): the container is one forwarding hop away and needs hop limit 2."
    );
    println!("fix: aws ec2 modify-instance-metadata-options --instance-id <id> --http-put-response-hop-limit 2 --http-endpoint enabled");

    let path = std::env::temp_dir().join("imds-observer-demo.jsonl");
    if let Ok(mut f) = std::fs::File::create(&path) {
        for e in &events {
            let _ = writeln!(f, "{e}");
        }
        println!("\nall events as JSON lines: {}", path.display());
    }
    drop(lab);
    println!("lab removed.");
    if lost == 0 || drops == 0 {
        eprintln!("demo: the failure was not observed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
