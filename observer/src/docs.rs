//! The documentation checked against the code, so that a newcomer's first
//! commands run as written: every `imds-observer ...` and `kubectl ...`
//! example in README.md, docs/*.md and the `--help` texts parses with the
//! CLI and fits the shipped manifests (deploy/kubernetes); docs/events.md
//! documents every field the code can write, and nothing else.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use clap::{CommandFactory, error::ErrorKind};
use serde_json::Value;

use crate::{
    cli::Cli,
    diagnose::{
        Attempt, EndpointFailures, Evidence, Finding, FindingKind, FindingTag, Fix, Latency,
        OwnRole, Requests,
    },
    identity::{Container, Nomad},
    model::{Event, Kind, NodeInfo, Provisioner},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// README.md and every docs/*.md, by repository-relative path.
fn markdown_files() -> Vec<(String, String)> {
    let mut files = vec![("README.md".to_string(), read("README.md"))];
    let mut docs: Vec<_> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md"))
        .collect();
    docs.sort();
    files.extend(docs.into_iter().map(|n| (format!("docs/{n}"), read(&format!("docs/{n}")))));
    files
}

/// The bodies of fenced code blocks, with the fence's language.
fn code_blocks(md: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in md.lines() {
        match (line.trim_start().strip_prefix("```"), &mut open) {
            (Some(_), Some(_)) => blocks.push(open.take().unwrap()),
            (Some(lang), None) => open = Some((lang.trim().to_string(), String::new())),
            (None, Some((_, body))) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// Shell text to simple commands (words), the way sh splits them: quotes,
/// backslash-newline, comments, `|`, `;`, `&&`, redirections, and `$(...)`
/// (whose commands are returned too; the substitution is one word).
fn commands(text: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = text.replace("\\\n", " ").chars().collect();
    let mut out = Vec::new();
    split(&chars, &mut out);
    out
}

fn split(chars: &[char], out: &mut Vec<Vec<String>>) {
    let mut cmd: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut redirect = false;
    let mut i = 0;
    let end_word =
        |cmd: &mut Vec<String>, word: &mut String, in_word: &mut bool, redirect: &mut bool| {
            if *in_word {
                if !std::mem::take(redirect) {
                    cmd.push(std::mem::take(word));
                }
                word.clear();
                *in_word = false;
            }
        };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                let close =
                    chars[i + 1..].iter().position(|&c| c == '\'').expect("unclosed '") + i + 1;
                word.extend(&chars[i + 1..close]);
                in_word = true;
                i = close;
            }
            '"' => {
                i += 1;
                while chars[i] != '"' {
                    if chars[i] == '$' && chars.get(i + 1) == Some(&'(') {
                        i = substitution(chars, i, out);
                        word.push_str("SUBST");
                    } else {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        word.push(chars[i]);
                    }
                    i += 1;
                }
                in_word = true;
            }
            '$' if chars.get(i + 1) == Some(&'(') => {
                i = substitution(chars, i, out);
                word.push_str("SUBST");
                in_word = true;
            }
            '#' if !in_word => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '|' | ';' | '&' | '\n' => {
                end_word(&mut cmd, &mut word, &mut in_word, &mut redirect);
                if !cmd.is_empty() {
                    out.push(std::mem::take(&mut cmd));
                }
            }
            '>' | '<' => {
                end_word(&mut cmd, &mut word, &mut in_word, &mut redirect);
                // `2>&1` and `> file`: the target is no argument.
                if chars.get(i + 1) == Some(&'&') {
                    i += 2;
                } else {
                    redirect = true;
                }
                while chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
                    i += 1;
                }
            }
            c if c.is_whitespace() => end_word(&mut cmd, &mut word, &mut in_word, &mut redirect),
            '\\' => {
                i += 1;
                word.push(chars[i]);
                in_word = true;
            }
            c => {
                if c.is_ascii_digit() && !in_word && matches!(chars.get(i + 1), Some('>')) {
                    i += 1;
                    continue; // a file descriptor: 2>
                }
                word.push(c);
                in_word = true;
            }
        }
        i += 1;
    }
    end_word(&mut cmd, &mut word, &mut in_word, &mut redirect);
    if !cmd.is_empty() {
        out.push(cmd);
    }
}

/// Parse `$(...)` starting at `i` (the `$`); returns the index of its `)`.
fn substitution(chars: &[char], i: usize, out: &mut Vec<Vec<String>>) -> usize {
    let (mut depth, mut j, mut quote) = (0, i + 1, None);
    loop {
        match (chars[j], quote) {
            ('\'' | '"', None) => quote = Some(chars[j]),
            (c, Some(q)) if c == q => quote = None,
            ('(', None) => depth += 1,
            (')', None) => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        j += 1;
    }
    split(&chars[i + 2..j], out);
    j
}

/// `sudo`, `sudo -E` and `VAR=value` prefixes removed; the program by its
/// file name (`./target/release/imds-observer` is `imds-observer`).
fn program(words: &[String]) -> Option<(String, Vec<String>)> {
    let mut w = words.iter().peekable();
    while let Some(first) = w.peek() {
        if *first == "sudo" || (first.starts_with('-') && first.len() == 2) || first.contains('=') {
            w.next();
        } else {
            break;
        }
    }
    let prog = w.next()?;
    let name = prog.rsplit('/').next().unwrap().to_string();
    Some((name, w.cloned().collect()))
}

/// Every command line of the docs and help texts: (where, words).
fn examples() -> Vec<(String, Vec<String>)> {
    let mut all = Vec::new();
    for (file, md) in markdown_files() {
        for (lang, body) in code_blocks(&md) {
            if matches!(lang.as_str(), "sh" | "bash" | "console" | "shell" | "") {
                all.extend(commands(&body).into_iter().map(|c| (file.clone(), c)));
            }
        }
    }
    for (name, help) in help_examples() {
        for line in help {
            all.extend(commands(&line).into_iter().map(|c| (format!("{name} --help"), c)));
        }
    }
    all
}

/// The example lines of each subcommand's help (its `after_help`).
fn help_examples() -> Vec<(String, Vec<String>)> {
    let cmd = Cli::command();
    cmd.get_subcommands()
        .map(|s| {
            let text = s.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            let lines = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("imds-observer ") || l.starts_with("kubectl "))
                .map(String::from)
                .collect();
            (s.get_name().to_string(), lines)
        })
        .collect()
}

#[test]
fn shell_splitting() {
    let c = commands(
        "sudo ./target/release/imds-observer report --duration 60 # a comment\n\
         kubectl logs -n x -l a=b \\\n  --tail=-1 2>/dev/null | jq -cR 'fromjson? | .a' > out.jsonl\n\
         kubectl logs -f \"$(kubectl get pod -l a=b -o name)\"; echo done",
    );
    let words = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        c[0],
        words(&["sudo", "./target/release/imds-observer", "report", "--duration", "60"])
    );
    assert_eq!(c[1], words(&["kubectl", "logs", "-n", "x", "-l", "a=b", "--tail=-1"]));
    assert_eq!(c[2], words(&["jq", "-cR", "fromjson? | .a"]));
    assert_eq!(c[3], words(&["kubectl", "get", "pod", "-l", "a=b", "-o", "name"]));
    assert_eq!(c[4], words(&["kubectl", "logs", "-f", "SUBST"]));
    assert_eq!(c[5], words(&["echo", "done"]));
    assert_eq!(program(&c[0]).unwrap().0, "imds-observer");
}

#[test]
fn help_examples_keep_their_lines() {
    let mut cmd = Cli::command();
    cmd.build();
    for (name, lines) in help_examples() {
        let sub = cmd.find_subcommand_mut(&name).unwrap();
        for help in [sub.render_help().to_string(), sub.render_long_help().to_string()] {
            assert!(!lines.is_empty(), "{name} --help has no examples");
            for l in &lines {
                assert!(
                    help.lines().any(|h| h.trim() == l),
                    "{name} --help: {l:?} is not a line of its own:\n{help}"
                );
            }
        }
    }
}

/// What the shipped manifests say: the namespace, the pod labels, the names.
struct Manifests {
    namespace: String,
    /// `key=value` of the DaemonSet's pod template.
    pod_labels: BTreeSet<String>,
    daemonset: String,
    service_account: String,
}

/// `key: value` lines of a YAML file, in order, with their indentation.
fn yaml_lines(text: &str) -> Vec<(usize, String, String)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let indent = l.len() - l.trim_start().len();
            let (k, v) = l.trim().trim_start_matches("- ").split_once(':')?;
            Some((indent, k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

fn manifests() -> Manifests {
    let kustomize = yaml_lines(&read("deploy/kubernetes/kustomization.yaml"));
    let namespace = kustomize
        .iter()
        .find(|(i, k, _)| *i == 0 && k == "namespace")
        .expect("kustomization namespace")
        .2
        .clone();
    let ds = yaml_lines(&read("deploy/kubernetes/daemonset.yaml"));
    let name_of = |lines: &[(usize, String, String)]| {
        lines.iter().find(|(i, k, _)| *i == 2 && k == "name").unwrap().2.clone()
    };
    // The pod template's labels: the `labels:` after `template:`.
    let template = ds.iter().position(|(_, k, _)| k == "template").expect("pod template");
    let (li, _, _) = ds[template..].iter().find(|(_, k, _)| k == "labels").expect("pod labels");
    let start = template + ds[template..].iter().position(|(_, k, _)| k == "labels").unwrap() + 1;
    let pod_labels = ds[start..]
        .iter()
        .take_while(|(i, _, _)| i > li)
        .map(|(_, k, v)| format!("{k}={v}"))
        .collect();
    Manifests {
        namespace,
        pod_labels,
        daemonset: name_of(&ds),
        service_account: name_of(&yaml_lines(&read("deploy/kubernetes/serviceaccount.yaml"))),
    }
}

/// kubectl's flags that take a value, or not, before any subcommand.
const KUBECTL_GLOBAL: [(&str, bool); 5] = [
    ("-n", true),
    ("--namespace", true),
    ("--context", true),
    ("--as", true),
    ("--kubeconfig", true),
];

/// kubectl's flags used in the docs, per subcommand: (flag, takes a value).
/// A command using another flag fails here: check it exists, then add it.
fn kubectl_flags(sub: &str) -> Option<Vec<(&'static str, bool)>> {
    let own: &[(&str, bool)] = match sub {
        "logs" => &[
            ("-l", true),
            ("--selector", true),
            ("-f", false),
            ("--follow", false),
            ("--tail", true),
            ("--max-log-requests", true),
            ("-c", true),
            ("--container", true),
            ("--since", true),
            ("--timestamps", false),
            ("-p", false),
            ("--previous", false),
        ],
        "get" => &[
            ("-l", true),
            ("--selector", true),
            ("--field-selector", true),
            ("-o", true),
            ("--output", true),
            ("-w", false),
        ],
        "apply" => &[("-k", true), ("-f", true)],
        "describe" => &[("-l", true), ("--selector", true)],
        "rollout" => &[("--timeout", true)],
        "auth" | "annotate" | "create" | "label" => &[],
        "exec" => {
            &[("-i", false), ("-t", false), ("-it", false), ("-c", true), ("--container", true)]
        }
        _ => return None,
    };
    Some(KUBECTL_GLOBAL.iter().chain(own).copied().collect())
}

/// One kubectl command against the manifests; an error says what is wrong.
fn check_kubectl(args: &[String], m: &Manifests) -> Result<(), String> {
    // Flags (with their values) and positional words.
    let mut flags: BTreeMap<String, String> = BTreeMap::new();
    let mut positional: Vec<String> = Vec::new();
    let mut table = KUBECTL_GLOBAL.to_vec();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if !a.starts_with('-') || a == "-" {
            if positional.is_empty() {
                table = kubectl_flags(a)
                    .ok_or_else(|| format!("kubectl {a}: not a subcommand this test knows"))?;
            }
            positional.push(a.clone());
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let takes = table.iter().find(|(f, _)| *f == name).map(|(_, v)| *v).ok_or_else(|| {
            format!("kubectl {}: no flag {name}", positional.first().map_or("", |p| p.as_str()))
        })?;
        let value = match (takes, inline) {
            (true, Some(v)) => v,
            (true, None) => it.next().cloned().ok_or(format!("{name} needs a value"))?,
            (false, _) => String::new(),
        };
        flags.insert(name, value);
    }
    let flag = |names: &[&str]| names.iter().find_map(|n| flags.get(*n).cloned());
    let sub = positional.first().map(String::as_str).unwrap_or_default();
    let ns = flag(&["-n", "--namespace"]);
    // `describe pod NAME` of an application's pod (its Events) may be in
    // any namespace; the observer's own objects are in the manifests' one.
    // Nor is the ServiceAccount a fix annotates with a workload's role.
    let workload_pod = (sub == "describe"
        && matches!(positional.get(1).map(String::as_str), Some("pod" | "pods"))
        && positional.get(2).is_some_and(|p| !p.starts_with(&m.daemonset)))
        || (sub == "annotate"
            && matches!(positional.get(1).map(String::as_str), Some("serviceaccount" | "sa")));
    if let Some(ns) = &ns {
        if *ns != m.namespace && !workload_pod {
            return Err(format!("namespace {ns}, but the manifests use {}", m.namespace));
        }
    }
    if let Some(sel) = flag(&["-l", "--selector"]) {
        for term in sel.split(',') {
            if !m.pod_labels.contains(term) {
                return Err(format!(
                    "selector {term}: not a label of the DaemonSet's pods ({:?})",
                    m.pod_labels
                ));
            }
        }
    }
    match sub {
        "logs" | "get" | "exec" | "rollout" if ns.is_none() => {
            return Err(format!(
                "no -n {}: the observer's pods live in that namespace",
                m.namespace
            ));
        }
        "apply" => match (flag(&["-k"]), flag(&["-f"])) {
            (Some(dir), None) => {
                if !repo().join(&dir).join("kustomization.yaml").exists() {
                    return Err(format!("apply -k {dir}: no kustomization there"));
                }
            }
            // The manifests kept out of the kustomization (deploy/prometheus:
            // CRDs not every cluster has).
            (None, Some(file)) => {
                if !repo().join(&file).is_file() {
                    return Err(format!("apply -f {file}: no such file in the repository"));
                }
            }
            _ => return Err("kubectl apply needs one of -k DIR or -f FILE".into()),
        },
        "auth" => {
            if let Some(a) = flag(&["--as"]) {
                let want = format!("system:serviceaccount:{}:{}", m.namespace, m.service_account);
                if a.starts_with("system:serviceaccount:") && a != want {
                    return Err(format!("--as {a}, but the ServiceAccount is {want}"));
                }
            }
        }
        _ => {}
    }
    if sub == "rollout" {
        let target = positional.get(2).ok_or("rollout without a target")?;
        if *target != format!("daemonset/{}", m.daemonset)
            && *target != format!("ds/{}", m.daemonset)
        {
            return Err(format!("rollout {target}: the DaemonSet is daemonset/{}", m.daemonset));
        }
    }
    if sub == "logs" {
        if positional.iter().any(|p| p.starts_with("ds/") || p.starts_with("daemonset/")) {
            return Err("logs of ds/NAME follow one pod only: select the pods with -l".into());
        }
        if flags.contains_key("-l") || flags.contains_key("--selector") {
            if flag(&["--tail"]).as_deref() != Some("-1") {
                return Err("logs -l shows 10 lines per pod unless --tail=-1".into());
            }
            if flags.contains_key("-f") || flags.contains_key("--follow") {
                let n: u32 =
                    flag(&["--max-log-requests"]).and_then(|n| n.parse().ok()).unwrap_or(5);
                if n < 100 {
                    return Err(format!(
                        "logs -f -l follows at most {n} pods: raise --max-log-requests"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_example_command_runs_as_written() {
    let m = manifests();
    assert_eq!(m.namespace, "imds-observer");
    let mut failures = Vec::new();
    let (mut observer, mut kubectl) = (0, 0);
    for (at, words) in examples() {
        let Some((mut prog, mut args)) = program(&words) else { continue };
        // `docker run ... IMAGE ARGS`: the observer's image takes observer args.
        if matches!(prog.as_str(), "docker" | "podman") && args.first().is_some_and(|a| a == "run")
        {
            // The image, not a volume such as /run/imds-observer:/run/...
            if let Some(i) =
                args.iter().position(|a| a.contains("imds-observer:") && !a.starts_with('/'))
            {
                (prog, args) = ("imds-observer".into(), args[i + 1..].to_vec());
            }
        }
        let result = match prog.as_str() {
            "imds-observer" => {
                observer += 1;
                // `args` placeholders such as <command> are not commands.
                if args.iter().any(|a| a.starts_with('<')) {
                    continue;
                }
                let argv = std::iter::once("imds-observer".to_string()).chain(args.iter().cloned());
                match Cli::try_parse_env(argv) {
                    Ok(_) => Ok(()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                        ) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            "kubectl" => {
                kubectl += 1;
                check_kubectl(&args, &m)
            }
            _ => continue,
        };
        if let Err(e) = result {
            failures.push(format!("{at}: `{}`: {e}", words.join(" ")));
        }
    }
    assert!(failures.is_empty(), "examples that do not run as written:\n{}", failures.join("\n"));
    // The extraction finds what is there (README, docs/deploy.md, --help).
    assert!(
        observer >= 8 && kubectl >= 8,
        "only {observer} imds-observer and {kubectl} kubectl commands found"
    );
}

#[test]
fn kubectl_checks_catch_the_usual_mistakes() {
    let m = manifests();
    let check = |line: &str| check_kubectl(&commands(line)[0][1..], &m);
    let sel = "-l app.kubernetes.io/name=imds-observer";
    assert!(check(&format!("kubectl logs {sel} --tail=-1")).unwrap_err().contains("no -n"));
    assert!(
        check(&format!("kubectl logs -n imds-observer {sel}")).unwrap_err().contains("--tail=-1")
    );
    assert!(
        check(&format!("kubectl logs -n imds-observer -f {sel} --tail -1"))
            .unwrap_err()
            .contains("max-log-requests")
    );
    assert!(
        check("kubectl logs -n imds-observer -f ds/imds-observer").unwrap_err().contains("one pod")
    );
    assert!(
        check("kubectl logs -n kube-system -l app=x --tail=-1").unwrap_err().contains("namespace")
    );
    assert!(
        check("kubectl logs -n imds-observer -l app=x --tail=-1").unwrap_err().contains("selector")
    );
    assert!(
        check("kubectl logs -n imds-observer --no-such-flag x").unwrap_err().contains("no flag")
    );
    check(&format!("kubectl -n imds-observer logs -f {sel} --tail=-1 --max-log-requests=500"))
        .unwrap();
    // An application's pod (its Events) in its own namespace; the
    // observer's pods only in theirs.
    check("kubectl describe pod -n payments api-7f9c").unwrap();
    assert!(
        check("kubectl describe pod -n payments imds-observer-x7k2p")
            .unwrap_err()
            .contains("namespace")
    );
    assert!(
        check("kubectl describe pod -n payments api --sort-by x").unwrap_err().contains("no flag")
    );
    assert!(check("kubectl apply -k deploy/nomad").unwrap_err().contains("no kustomization"));
    assert!(
        check("kubectl apply -f deploy/prometheus/no-such.yaml")
            .unwrap_err()
            .contains("no such file")
    );
    assert!(check("kubectl apply -n imds-observer").unwrap_err().contains("-k DIR or -f FILE"));
    check("kubectl apply -n imds-observer -f deploy/prometheus/rules.yml").unwrap();
}

/// Dotted paths of every field in `v`; a list's elements share its path.
/// `labels` maps are leaves: their keys are the pods'.
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(p.clone());
                if k != "labels" {
                    paths(v, &p, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| paths(v, prefix, out)),
        _ => {}
    }
}

/// A line of each shape with every field set. The struct literals name every
/// field (no `..Default::default()`), so a new field does not compile until
/// it is added here, and then fails the test until it is documented.
fn every_field() -> Vec<Value> {
    let container = Container {
        id: Some("3f2a".into()),
        name: Some("web".into()),
        runtime: Some("containerd".into()),
        image: Some("shop/web:1".into()),
        pod: Some("web-7d9c4".into()),
        namespace: Some("shop".into()),
        pod_uid: Some("uid".into()),
        labels: [("app".to_string(), "web".to_string())].into(),
        labels_dropped: 1,
        service_account: Some("web".into()),
        aws_identity: Some("irsa".into()),
        nomad: Some(Nomad {
            alloc: Some("a".into()),
            job: Some("j".into()),
            group: Some("g".into()),
            task: Some("t".into()),
            namespace: Some("default".into()),
        }),
        ecs_task: Some("arn".into()),
        cgroup: Some("/docker/3f2a".into()),
        cgroup_id: Some(7),
        netns: Some(4026532000),
        veth: Some("veth1".into()),
        host: true,
    };
    let node_info = NodeInfo {
        ecs_cluster: Some("prod".into()),
        container_instance: Some("1f73d099b914411ca9ff81633b7741dd".into()),
        provisioner: Some(Provisioner::Karpenter),
        pool: Some("default".into()),
        instance_id: Some("i-0123456789abcdef0".into()),
        region: Some("eu-west-1".into()),
        zone: Some("eu-west-1b".into()),
        instance_type: Some("m7g.large".into()),
    };
    let event = Event {
        kind: Kind::Request,
        ts: humantime::parse_rfc3339("2026-11-26T20:54:43.931380Z").unwrap(),
        node: "n".into(),
        flow: Some(1),
        cgroup_id: Some(7),
        cgroup: Some("/docker/3f2a".into()),
        container: Some(container.clone().into()),
        pid: Some(1),
        comm: Some("node".into()),
        iface: Some("ens5".into()),
        src: "10.0.0.1:1".parse().ok(),
        dst: "169.254.169.254:80".parse().ok(),
        ttl: Some(64),
        proto: Some(crate::model::Proto::Tcp),
        tcp_flags: Some(crate::model::TcpFlags::SYN),
        seq: Some(1),
        ack: Some(1),
        len: Some(1),
        retransmit: Some(true),
        method: Some("PUT".into()),
        path: Some("/latest/api/token".into()),
        token_header: Some(false),
        token_ttl_header: Some(true),
        sdk: Some(crate::model::Sdk { name: "botocore", version: Some("1.43.11".into()) }),
        sdk_attempt: Some([1, 3]),
        status: Some(200),
        reason: Some("IP_INHDR".into()),
        location: Some("ip_forward".into()),
        via: Some("icmp_time_exceeded".into()),
        count: Some(1),
        outcome: Some(crate::model::Outcome::Lost),
        latency_ms: Some(1.5),
        waited_ms: Some(1000.0),
        host_egress_ttl: Some(63),
        reply_ttl: Some(1),
        delivered: Some(false),
        retransmits: Some(1),
        hops: Some(1),
        hop_limit: Some(1),
        summary: Some(Box::new(crate::model::Summary {
            interval_s: 60.0,
            requests: 1,
            token: 1,
            credentials: 1,
            other: 1,
            imdsv2: 1,
            latency_ms: Some(crate::model::Quantiles { p50: 1.0, p99: 2.0, max: 3.0 }),
        })),
        node_info: Some(Box::new(node_info.clone())),
        dropped: Some(Box::new(crate::model::DroppedLines::default())),
        // Never written.
        host: Some(crate::model::HostSide::default()),
    };
    let evidence = Evidence {
        imds_tokens: Some("required".into()),
        sdk: Some(crate::model::Sdk { name: "botocore", version: Some("1.43.11".into()) }),
        sdk_minimum: Some("1.34.41".into()),
        node_credentials: Some(1),
        reply_ttl_at_host: Some(1),
        forwarding_hops: Some(1),
        required_hop_limit: Some(2),
        node_hop_limit: Some(1),
        lost_replies: Some(1),
        drops: Some(1),
        icmp_time_exceeded: Some(1),
        seconds_lost: Some(1.0),
        failed_token_requests: Some(1),
        tokenless_requests: Some(1),
        status: Some(401),
        responses: Some(1),
        method: Some("GET".into()),
        path: Some("/".into()),
        paths: vec!["/".into()],
        token_ttl_header: Some(false),
        fetches: Some(crate::diagnose::Fetches {
            window_minutes: 10,
            tokens: 121,
            credentials: 242,
            threshold: 120,
        }),
        endpoints: vec![EndpointFailures {
            endpoint: "169.254.169.254:80".into(),
            refused: 1,
            timeouts: 1,
        }],
        drop_reasons: vec!["NETFILTER_DROP".into()],
        requests: Some(Requests {
            total: 1,
            token: 1,
            credentials: 1,
            other: 1,
            imdsv1: 1,
            imdsv2: 1,
        }),
        latency_ms: Some(Latency { count: 1, mean: 1.0, max: 1.0, p50: 1.0, p99: 1.0 }),
        lost_events: Some(1),
        suppressed_records: Some(1),
    };
    let finding = Finding {
        tag: FindingTag::Finding,
        ts: "2026-11-26T20:54:43.931380Z".into(),
        node: "n".into(),
        kind: FindingKind::HopLimitExceeded,
        container,
        summary: "s".into(),
        evidence,
        timeline: vec![Attempt {
            ts: "2026-11-26T20:54:43.931380Z".into(),
            method: Some("PUT".into()),
            path: Some("/latest/api/token".into()),
            dst: "169.254.169.254:80".parse().ok(),
            token: Some(false),
            outcome: "lost".into(),
            latency_ms: Some(1.0),
            reply_ttl_at_host: Some(1),
        }],
        fix: Some(Fix {
            command: "c".into(),
            launch_template: "l".into(),
            karpenter: "k".into(),
            eks_node_group: "e".into(),
            hop_limit: 2,
            get_instance_id: Some("g".into()),
            note: Some("n".into()),
            own_role: Some(OwnRole { pod_identity: "p".into(), irsa: "i".into() }),
        }),
        node_info: Some(node_info),
    };
    vec![serde_json::to_value(event).unwrap(), serde_json::to_value(finding).unwrap()]
}

/// The field paths docs/events.md documents: the backquoted names in the
/// first column of its tables headed `field`.
fn documented_fields() -> BTreeSet<String> {
    let md = read("docs/events.md");
    let mut out = BTreeSet::new();
    let mut in_fields = false;
    for line in md.lines() {
        let Some(row) = line.strip_prefix('|') else {
            in_fields = false;
            continue;
        };
        let first = row.split('|').next().unwrap().trim();
        if first == "field" {
            in_fields = true;
        } else if in_fields && !first.starts_with("---") {
            out.extend(first.split(',').map(|f| f.trim().trim_matches('`').to_string()));
        }
    }
    out
}

#[test]
fn events_md_documents_every_field_and_only_those() {
    let mut code = BTreeSet::new();
    for v in every_field() {
        paths(&v, "", &mut code);
    }
    let documented = documented_fields();
    let undocumented: Vec<_> = code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "fields the code writes that docs/events.md does not list: {undocumented:?}"
    );
    assert!(unknown.is_empty(), "fields docs/events.md lists that no type has: {unknown:?}");

    // Every type and finding kind is named.
    let md = read("docs/events.md");
    let kinds = [
        Kind::Request,
        Kind::Reply,
        Kind::HostIngress,
        Kind::HostEgress,
        Kind::Drop,
        Kind::LostEvents,
        Kind::Suppressed,
        Kind::Exchange,
        Kind::Summary,
        Kind::Node,
        Kind::OutputDropped,
    ];
    for k in kinds {
        // A new kind fails to compile here until it is listed above.
        match k {
            Kind::Request
            | Kind::Reply
            | Kind::HostIngress
            | Kind::HostEgress
            | Kind::Drop
            | Kind::LostEvents
            | Kind::Suppressed
            | Kind::Exchange
            | Kind::Summary
            | Kind::Node
            | Kind::OutputDropped => {}
        }
        let name = serde_json::to_value(k).unwrap();
        assert!(
            md.contains(&format!("`{}`", name.as_str().unwrap())),
            "type {name} is not in docs/events.md"
        );
    }
    for k in FindingKind::ALL {
        assert!(md.contains(&format!("`{k}`")), "finding kind {k} is not in docs/events.md");
    }

    // The examples are lines the code can write, with fields it has.
    let mut examples = 0;
    for (lang, body) in code_blocks(&md).into_iter().filter(|(l, _)| l == "json") {
        for line in body.lines() {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{lang} example {line}: {e}"));
            let as_event = serde_json::from_value::<Event>(v.clone()).is_ok();
            let as_finding = serde_json::from_value::<Finding>(v.clone()).is_ok();
            assert!(as_event || as_finding, "example is neither an event nor a finding: {line}");
            let mut p = BTreeSet::new();
            paths(&v, "", &mut p);
            let extra: Vec<_> = p.difference(&code).collect();
            assert!(extra.is_empty(), "example has fields no type has: {extra:?}: {line}");
            if v.get("cgroup").is_some() {
                assert!(v.get("container").is_some(), "`cgroup` comes with `container`: {line}");
            }
            examples += 1;
        }
    }
    assert!(examples >= 3, "docs/events.md shows example lines");
}

/// docs/configuration.md's flag tables: (section's commands, long flag,
/// variable or None for `—`), from rows whose first cell starts with a flag.
fn configuration_flags() -> Vec<(Vec<String>, String, Option<String>)> {
    let md = read("docs/configuration.md");
    let mut commands: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            commands = h
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| ["run", "report", "tui"].contains(w))
                .map(String::from)
                .collect();
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        if !line.starts_with("| `-") || cells.len() < 3 {
            continue;
        }
        // The first cell's backticked flags: `--json[=BOOL]`, `-o`, `--output FORMAT`.
        let longs: Vec<String> = cells[0]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|f| f.strip_prefix("--"))
            .map(|f| f.split([' ', '[', '=']).next().unwrap().to_string())
            .collect();
        let var = cells[1].trim().trim_matches('`');
        let var = (var != "—").then(|| var.to_string());
        for long in longs {
            out.push((commands.clone(), long, var.clone()));
        }
    }
    out
}

/// #26 item 8: every flag of run, report and tui is in docs/configuration.md
/// under a section naming the command, with its variable, and the docs name
/// no flag the command lacks.
#[test]
fn configuration_md_matches_the_help() {
    let documented = configuration_flags();
    assert!(documented.len() > 15, "the tables were not found: {documented:?}");
    let cmd = Cli::command();
    let mut wrong = Vec::new();
    for name in ["run", "report", "tui"] {
        let sub = cmd.find_subcommand(name).unwrap();
        let args: Vec<_> = sub.get_arguments().filter(|a| a.get_long().is_some()).collect();
        for a in &args {
            let long = a.get_long().unwrap();
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            let rows: Vec<_> = documented
                .iter()
                .filter(|(cmds, l, _)| cmds.iter().any(|c| c == name) && l == long)
                .collect();
            match rows.as_slice() {
                [] => wrong.push(format!("{name} --{long}: not in docs/configuration.md")),
                [(_, _, var)] if *var != env => {
                    wrong.push(format!("{name} --{long}: docs say {var:?}, --help {env:?}"))
                }
                [_] => {}
                _ => wrong.push(format!("{name} --{long}: documented twice")),
            }
        }
        for (_, long, _) in documented.iter().filter(|(cmds, _, _)| cmds.iter().any(|c| c == name))
        {
            if !args.iter().any(|a| a.get_long() == Some(long)) {
                wrong.push(format!("docs/configuration.md: {name} has no --{long}"));
            }
        }
    }
    assert!(wrong.is_empty(), "docs/configuration.md against --help:\n{}", wrong.join("\n"));
}

/// Every text file under deploy/, by repository-relative path.
fn deploy_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                let rel = path.strip_prefix(repo()).unwrap().display().to_string();
                out.push((rel, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("deploy"), &mut out);
    out.sort();
    out
}

/// #26: every fix command shipped (README.md, docs/, deploy/: the alerts'
/// text too) names the instance as the observer does, an `i-…` id or
/// `"$INSTANCE_ID"` with the line that sets it in the same file; never a
/// placeholder such as `<instance-id>`, which bash reads as a redirection.
#[test]
fn shipped_fix_commands_name_the_instance_as_valid_shell() {
    let sets_it = crate::diagnose::GET_INSTANCE_ID;
    let mut files = markdown_files();
    files.extend(deploy_files());
    assert!(files.iter().any(|(n, _)| n == "deploy/prometheus/rules.yml"), "{files:?}");
    let mut checked = 0;
    for (name, text) in &files {
        // Lines folded (YAML, markdown paragraphs) and `\` continuations
        // joined: a command reads as one line.
        let flat = text.replace("\\\n", " ").split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(!flat.contains("<instance-id>"), "{name} has <instance-id>");
        for (at, _) in flat.match_indices("modify-instance-metadata-options ") {
            let cmd = &flat[at..];
            let cmd = &cmd[..cmd.find('`').unwrap_or(cmd.len()).min(400)];
            let Some((_, rest)) = cmd.split_once("--instance-id ") else { continue };
            let id = rest.split([' ', ',']).next().unwrap().replace("\\\"", "\"");
            checked += 1;
            if id == crate::diagnose::INSTANCE_ID_VAR {
                assert!(flat.contains(sets_it), "{name}: {cmd}, without the line that sets it");
            } else {
                let hex = id.strip_prefix("i-").unwrap_or_default();
                assert!(
                    hex.len() >= 8 && hex.chars().all(|c| c.is_ascii_hexdigit()),
                    "{name}: {cmd}: --instance-id {id} is neither an id nor \"$INSTANCE_ID\""
                );
            }
        }
    }
    assert!(checked >= 5, "the commands were not found ({checked})");
}
