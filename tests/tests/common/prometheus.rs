//! What the Prometheus tests share: deploy/prometheus/rules.yml and the
//! Grafana dashboard as JSON, the metric names an expression uses, and
//! the dashboard's queries with their template variables filled in.
//! Included with `#[path]` by prometheus_rules.rs (offline checks) and
//! prometheus_lab.rs (a real Prometheus), so both read the same queries.
//!
//! YAML is read by python3's PyYAML (kubernetes-validate brings it; the
//! deploy-manifest checks use it too): no YAML crate in the lab.
#![allow(dead_code)] // each test binary uses its own part

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The prefix every alert's runbook_url starts with: docs/deploy.md on
/// the repository's default branch, then a heading's anchor.
pub const RUNBOOK_BASE: &str =
    "https://github.com/imds-observer/imds-observer/blob/main/docs/deploy.md#";

/// The job name the rules and the dashboard select.
pub const JOB: &str = "imds-observer";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The one YAML document of `path`, as JSON.
pub fn yaml(path: &Path) -> Value {
    const SCRIPT: &str =
        "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    assert!(
        out.status.success(),
        "reading {} needs python3 with PyYAML (`cargo xtask setup` installs it): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

pub fn rules_path() -> PathBuf {
    repo().join("deploy/prometheus/rules.yml")
}

/// rules.yml's `groups`.
pub fn rule_groups() -> Value {
    yaml(&rules_path())["groups"].clone()
}

/// Every alerting rule of rules.yml.
pub fn alerts() -> Vec<Value> {
    let groups = rule_groups();
    let rules: Vec<Value> = groups
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect();
    assert!(rules.iter().all(|r| r.get("alert").is_some()), "only alerting rules");
    rules
}

pub fn dashboard() -> Value {
    let path = repo().join("deploy/grafana/imds-observer.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (panel title, query) of every target of every panel, rows' nested
/// panels included, as written (with template variables).
pub fn panel_queries(dash: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| panic!("no expr: {t}"));
                out.push((p["title"].as_str().unwrap_or("").to_string(), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// A dashboard query as Grafana sends it: `$node` (or `${node}`) is the
/// chosen node, or the "All" value `.*`; `$__rate_interval` is `1m`
/// (four scrapes at Grafana's default 15 s; the lab scrapes every second).
pub fn substitute(expr: &str, node: &str) -> String {
    let out = expr
        .replace("${node}", node)
        .replace("$node", node)
        .replace("${__rate_interval}", "1m")
        .replace("$__rate_interval", "1m");
    assert!(!out.contains('$'), "a template variable left in {out}");
    out
}

/// The metric names an expression reads: identifiers outside label
/// matchers (`{...}`), strings, durations (`[...]`) and the label lists
/// of by/on/without/ignoring/group_left/group_right, that are not PromQL
/// keywords or functions. Enough for the expressions in this repository.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const WORDS: [&str; 23] = [
        "sum",
        "max",
        "min",
        "avg",
        "count",
        "group",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "rate",
        "increase",
        "absent",
        "max_over_time",
        "topk",
        "histogram_quantile",
    ];
    const LABEL_LISTS: [&str; 6] = ["by", "on", "without", "ignoring", "group_left", "group_right"];
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut braces = 0usize;
    // For each open parenthesis: does it hold a label list?
    let mut parens: Vec<bool> = Vec::new();
    let mut last_word = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i + 1 < chars.len() && ident(chars[i + 1]) {
                i += 1;
            }
            let word: String = chars[start..=i].iter().collect();
            let in_label_list = parens.last().copied().unwrap_or(false);
            if braces == 0 && !in_label_list && !WORDS.contains(&word.as_str()) {
                names.insert(word.clone());
            }
            last_word = word;
            i += 1;
            continue;
        } else if c.is_ascii_digit() {
            // A number or a duration (10m): never a name.
            while i + 1 < chars.len() && ident(chars[i + 1]) {
                i += 1;
            }
        } else if c == '{' {
            braces += 1;
        } else if c == '}' {
            braces = braces.saturating_sub(1);
        } else if c == '(' {
            parens.push(LABEL_LISTS.contains(&last_word.as_str()));
        } else if c == ')' {
            parens.pop();
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
        i += 1;
    }
    names
}
