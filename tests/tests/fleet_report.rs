//! `report --from` over a generated 100-node stream (imds_lab::fleet):
//! at 100 and 200 columns and as JSON, no two nodes or containers read
//! alike, nodes with the same fix share one block, each node's instance id
//! is in its own fix only, and every fix command is valid shell (`bash -n`).
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    process::{Command, Stdio},
};

use imds_lab::{bin, fleet};

fn report(args: &[&str], columns: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("imds-fleet-{}-{columns}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fleet.jsonl");
    std::fs::write(&path, fleet::stream()).unwrap();
    let mut cmd = Command::new(bin("imds-observer"));
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("IMDS_OBSERVER_")) {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["report", "--from", path.to_str().unwrap()])
        .args(args)
        .env("COLUMNS", columns)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run imds-observer");
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap())
}

/// `bash -n` on each command (continuation lines joined).
fn assert_shell(commands: &[String]) {
    assert!(!commands.is_empty());
    for c in commands {
        assert!(!c.contains('<'), "a placeholder bash reads as a redirection: {c}");
        let mut child = Command::new("bash")
            .arg("-n")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash");
        child.stdin.take().unwrap().write_all(format!("{c}\n").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "bash -n: {c}\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

fn check_text(columns: usize) {
    let (code, text) = report(&[], &columns.to_string());
    assert_eq!(code, 1, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("300 containers on 100 nodes"), "{}", lines[0]);
    // The domain every node shares, said once.
    assert_eq!(text.matches(fleet::DOMAIN).count(), 1, "{text}");
    // Every line fits, commands too: they break outside quotes with `\`
    // (joined again below, and checked with `bash -n`).
    for l in &lines {
        assert!(l.chars().count() <= columns, "too wide ({}): {l}", l.chars().count());
    }
    // The table: column cells by the header's positions.
    let h = lines.iter().position(|l| l.starts_with("NODE")).expect("a node column");
    let header = lines[h];
    let at = |name: &str| header.find(name).unwrap();
    let (cont, finding) = (at("CONTAINER"), at("FINDING"));
    let cell = |l: &str, a: usize, b: usize| -> String {
        l.chars().skip(a).take(b - a).collect::<String>().trim().to_string()
    };
    let mut node_cells = BTreeSet::new();
    let mut pairs = BTreeSet::new();
    let mut rows = 0;
    for l in lines[h + 1..].iter().take_while(|l| !l.is_empty()) {
        let (n, c) = (cell(l, 0, cont), cell(l, cont, finding));
        if c.is_empty() {
            continue;
        }
        rows += 1;
        node_cells.insert(n.clone());
        pairs.insert((n, c));
    }
    assert_eq!(rows, 300, "one row per container");
    assert_eq!(node_cells.len(), fleet::NODES, "nodes that read alike: {node_cells:?}");
    assert_eq!(pairs.len(), 300, "containers that read alike");
    for n in &node_cells {
        assert!(n.starts_with("ip-10-0-"), "{n}");
    }
    // Grouped fixes: one block per node group, one for the nodes without
    // a known id.
    let fix = &text[text.find("\nFix\n").expect("a fix section")..];
    let named = fleet::NODES - fleet::UNNAMED;
    assert!(fix.contains(&format!("[1] {} nodes of node group ng-general:", named / 2)), "{fix}");
    assert!(fix.contains(&format!("{} nodes of node group ng-batch:", named / 2)), "{fix}");
    assert_eq!(fix.matches("\n  [").count(), 3, "{fix}");
    assert_eq!(fix.matches("launch template:").count(), 3);
    // Each id once, under its own node's name.
    let mut current = String::new();
    let mut seen = BTreeMap::new();
    for l in fix.lines() {
        if let Some(n) = l.trim_start().strip_prefix("# ") {
            current = format!("{n}{}", fleet::DOMAIN);
        }
        for i in 0..fleet::NODES {
            if let Some(id) = fleet::instance_id(i) {
                if l.contains(&id) {
                    assert_eq!(current, fleet::node(i), "{id} under another node's name");
                    *seen.entry(id).or_insert(0) += 1;
                }
            }
        }
    }
    assert_eq!(seen.len(), named, "every known id in the fixes");
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    // The nodes without an id: "$INSTANCE_ID" and how to set it.
    assert!(fix.contains("\"$INSTANCE_ID\""), "{fix}");
    // Every command, continuations joined, is valid shell.
    let mut commands = Vec::new();
    let mut cur = String::new();
    for l in fix.lines() {
        let t = l.trim();
        let cont = !cur.is_empty();
        if cont || t.starts_with("aws ") || t.starts_with("INSTANCE_ID=") || t.starts_with("# ") {
            match t.strip_suffix('\\') {
                Some(head) => cur.push_str(head),
                None => {
                    cur.push_str(t);
                    commands.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    assert!(commands.iter().filter(|c| c.starts_with("aws ")).count() >= named);
    assert_shell(&commands);
}

#[test]
fn fleet_report_at_80_columns() {
    check_text(80);
}

#[test]
fn fleet_report_at_100_columns() {
    check_text(100);
}

#[test]
fn fleet_report_at_200_columns() {
    check_text(200);
}

#[test]
fn fleet_report_json_gives_each_node_its_own_id() {
    let (code, text) = report(&["--json"], "100");
    assert_eq!(code, 1);
    let findings: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(findings.len(), 300);
    let mut commands = Vec::new();
    let mut labels = BTreeSet::new();
    for f in &findings {
        let node = f["node"].as_str().unwrap();
        let i = (0..fleet::NODES).find(|&i| fleet::node(i) == node).expect("a fleet node");
        let cmd = f["fix"]["command"].as_str().expect("a fix").to_string();
        match fleet::instance_id(i) {
            Some(id) => {
                assert!(cmd.contains(&format!("--instance-id {id} ")), "{node}: {cmd}");
                assert!(f["fix"].get("get_instance_id").is_none());
            }
            None => {
                assert!(cmd.contains("--instance-id \"$INSTANCE_ID\" "), "{node}: {cmd}");
                let get = f["fix"]["get_instance_id"].as_str().unwrap();
                commands.push(get.to_string());
            }
        }
        // No other node's id.
        for j in (0..fleet::NODES).filter(|&j| j != i) {
            if let Some(other) = fleet::instance_id(j) {
                assert!(!cmd.contains(&other), "{node} has {other}");
            }
        }
        // The first finding says what is known, not "0.0 s".
        let summary = f["summary"].as_str().unwrap();
        assert!(!summary.contains("lost 0.0 s"), "{summary}");
        labels.insert((node.to_string(), f["container"]["name"].to_string()));
        commands.push(cmd);
    }
    assert_eq!(labels.len(), 300);
    assert_shell(&commands);
}
