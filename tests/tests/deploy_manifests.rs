//! The deployment files as CI can check them offline, with no cluster and no
//! root: the Kubernetes manifests against the Kubernetes schemas
//! (kubernetes-validate ships them), the Nomad jobs through an HCL2 parser
//! (python-hcl2), and the facts docs/deploy.md promises (host network,
//! NODE_NAME, a non-root user with the four capabilities, which the
//! image's binary carries as file capabilities, read-only mounts) asserted
//! on the parsed files.
//!
//! The Helm chart (deploy/helm/imds-observer) is rendered by Helm's own
//! engine, offline (deploy/helm/render.py through helm-python-sdk): the
//! kustomize manifests must be its default rendering, and each value set
//! below goes through the same schema validation and privilege assertions.
//!
//! Needs python3 with the PyPI packages kubernetes-validate (which brings
//! PyYAML), python-hcl2 and helm-python-sdk.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::Value;

/// Kubernetes versions to validate against: the oldest one the manifests
/// promise to work on, and the newest the pinned kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// The capabilities docs/deploy.md grants, in Kubernetes' spelling.
const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG"];

/// What docs/deploy.md's variants add to them: CAP_SYS_ADMIN for runtimes
/// that do not know BPF and PERFMON, CAP_SYS_RESOURCE for 5.8-5.10's
/// memlock limit, CAP_SYS_PTRACE for cgroup v1 naming.
const VARIANT_CAPABILITIES: [&str; 3] = ["SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE"];

/// The uid and gid the DaemonSet and the Nomad jobs run as (nobody).
const NOBODY: u64 = 65534;

const PIP_PACKAGES: &str = "kubernetes-validate python-hcl2 helm-python-sdk";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn kube_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Checked once: a missing package fails every test with the same message,
/// not with a Python traceback.
fn require_python() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECK.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import kubernetes_validate, hcl2, yaml, helm_python"])
            .output()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or_default()
                .to_string())
        }
    });
    if let Err(e) = r {
        panic!(
            "the deploy-manifest checks need python3 with the PyPI packages {PIP_PACKAGES} ({e}). \
             Run `cargo xtask setup`, or install them: \
             PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install {PIP_PACKAGES}"
        );
    }
}

/// Run a Python snippet with `args`; its stdout is JSON.
fn python_json(script: &str, args: &[&Path]) -> Value {
    require_python();
    let out =
        Command::new("python3").arg("-c").arg(script).args(args).output().expect("run python3");
    assert!(
        out.status.success(),
        "python3 failed on {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// Every YAML document of a file, as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, sys, yaml
with open(sys.argv[1]) as f:
    print(json.dumps([d for d in yaml.safe_load_all(f) if d is not None]))
"#;
    match python_json(SCRIPT, &[path]) {
        Value::Array(docs) => docs,
        v => panic!("{}: not a list of documents: {v}", path.display()),
    }
}

/// A Nomad job file parsed by python-hcl2, as JSON: string values without
/// their quotes and no parser metadata (`__is_block__`, comments), so the
/// shape is the same across python-hcl2 versions. A block is a list of its
/// bodies; a labelled block is a list of {label: body}.
fn hcl(path: &Path) -> Value {
    const SCRIPT: &str = r#"
import json, sys, hcl2
def unquote(s):
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s
def norm(v):
    if isinstance(v, dict):
        return {unquote(k): norm(x) for k, x in v.items() if not str(k).startswith("__")}
    if isinstance(v, list):
        return [norm(x) for x in v]
    return unquote(v)
with open(sys.argv[1]) as f:
    print(json.dumps(norm(hcl2.load(f))))
"#;
    python_json(SCRIPT, &[path])
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kube_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn is_kustomization(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "kustomization.yaml")
}

/// All Kubernetes objects of deploy/kubernetes (not the kustomization).
fn objects() -> Vec<Value> {
    yaml_files().iter().filter(|p| !is_kustomization(p)).flat_map(|p| yaml_docs(p)).collect()
}

fn object<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn strs(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Validate every object of `file` against each of KUBERNETES_VERSIONS'
/// schemas (strict: no field the schema does not know).
fn validate(file: &Path, what: &str) {
    let docs = yaml_docs(file).len();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .arg(file)
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // An unknown kind is only a WARN with exit status 0: require a
        // pass for every document, and nothing else.
        let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert!(
            out.status.success()
                && passed == docs
                && !text.contains("WARN")
                && !text.contains("ERROR"),
            "{what} against Kubernetes {version} (strict): {passed} of {docs} objects passed\n{text}"
        );
    }
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    require_python();
    let files: Vec<PathBuf> = yaml_files().into_iter().filter(|p| !is_kustomization(p)).collect();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    for file in &files {
        validate(file, &file.display().to_string());
    }
}

#[test]
fn kustomization_applies_every_manifest_in_one_namespace() {
    let k = &yaml_docs(&kube_dir().join("kustomization.yaml"))[0];
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(k["namespace"], "imds-observer");
    let listed = strs(&k["resources"]);
    let present: BTreeSet<String> = yaml_files()
        .iter()
        .filter(|p| !is_kustomization(p))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources vs the files in deploy/kubernetes");

    let objs = objects();
    assert_eq!(object(&objs, "Namespace")["metadata"]["name"], "imds-observer");
    for o in &objs {
        if !["Namespace", "ClusterRole", "ClusterRoleBinding"]
            .contains(&o["kind"].as_str().unwrap())
        {
            assert_eq!(
                o["metadata"]["namespace"], "imds-observer",
                "{} {}",
                o["kind"], o["metadata"]["name"]
            );
        }
    }
    // The image the kustomization pins is the one the DaemonSet names.
    let image = object(&objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    let pinned = &k["images"][0];
    assert_eq!(
        image,
        format!("{}:{}", pinned["name"].as_str().unwrap(), pinned["newTag"].as_str().unwrap())
    );
}

#[test]
fn daemonset_runs_on_the_host_network_with_only_the_documented_privileges() {
    assert_daemonset(&objects(), Variant::default());
}

/// What a value set changes in the DaemonSet's privileges and mounts.
#[derive(Clone, Copy, Default, Debug)]
struct Variant {
    /// runtime: docker, the one Docker socket mounted and
    /// allowPrivilegeEscalation true (Docker Engine's empty permitted set).
    docker: bool,
    /// metrics.enabled false: no port, no probes, no scrape annotations.
    no_metrics: bool,
}

/// The Docker socket as the chart mounts it (runtime: docker).
const DOCKER_SOCKET: &str = "/run/docker.sock";

/// The documented privileges and mounts of the one DaemonSet in `objs`.
fn assert_daemonset(objs: &[Value], variant: Variant) {
    let ds = object(objs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "the tc programs need the node's network namespace");
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_ne!(pod["hostPID"], true);
    assert_ne!(pod["hostIPC"], true);
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "the DaemonSet must tolerate every taint: {}",
        pod["tolerations"]
    );
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");

    if let Some(sa) = objs.iter().find(|o| o["kind"] == "ServiceAccount") {
        assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    }

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    let node_name: Vec<&Value> =
        c["env"].as_array().unwrap().iter().filter(|e| e["name"] == "NODE_NAME").collect();
    assert_eq!(node_name.len(), 1, "NODE_NAME set once");
    assert_eq!(
        node_name[0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "NODE_NAME from the downward API"
    );

    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "no privileged mode");
    // Not root: the capabilities come from the image's file capabilities,
    // which no_new_privs leaves alone where the runtime fills the permitted
    // set (containerd, CRI-O; the lab's image tests run both ways).
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], NOBODY);
    assert_eq!(sc["runAsGroup"], NOBODY);
    // Docker Engine (cri-dockerd) leaves a non-root container's permitted
    // set empty: only exec's file capabilities, no_new_privs off, give any.
    assert_eq!(sc["allowPrivilegeEscalation"], variant.docker, "{variant:?}");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert!(
        pod.get("securityContext").is_none_or(|p| p.get("runAsUser").is_none()),
        "the user is the container's, set once"
    );
    assert_eq!(strs(&sc["capabilities"]["drop"]), set(&["ALL"]));
    assert_eq!(
        strs(&sc["capabilities"]["add"]),
        set(&CAPABILITIES),
        "capabilities beyond docs/deploy.md's"
    );

    // Read-only host mounts, among them the host's cgroup2 tree over the
    // container's own; one writable, the instance lock's own directory.
    let mounts = c["volumeMounts"].as_array().unwrap();
    for m in mounts {
        if m["mountPath"] != "/run/imds-observer" {
            assert_eq!(m["readOnly"], true, "mount {} must be read-only", m["mountPath"]);
        }
        // The ServiceAccount token goes to /var/run/secrets/...: its mount
        // point cannot be made inside a read-only host mount.
        let path = m["mountPath"].as_str().unwrap();
        assert!(
            !["/var", "/var/run", "/var/run/secrets"].contains(&path.trim_end_matches('/')),
            "a read-only mount at {path} hides the ServiceAccount token's mount point"
        );
    }
    let host_path = |mount_path: &str| -> String {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("no mount at {mount_path}"));
        let v = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .expect("volume of the mount");
        v["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{} is not a hostPath", m["name"]))
            .to_string()
    };
    assert_eq!(host_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
    assert_eq!(host_path("/sys/kernel/btf"), "/sys/kernel/btf");
    assert_eq!(host_path("/run/imds-observer"), "/run/imds-observer");
    if variant.docker {
        assert_eq!(host_path(DOCKER_SOCKET), DOCKER_SOCKET);
    }
    // Nothing that holds runtime sockets: a socket is root on the node,
    // whatever the mount mode. Pods are named by the API server.
    for v in pod["volumes"].as_array().unwrap() {
        let Some(path) = v["hostPath"]["path"].as_str() else { continue };
        let path = path.trim_end_matches('/');
        assert!(
            !["/run", "/var/run", "/run/containerd", "/var/run/containerd", "/run/crio", "/"]
                .contains(&path),
            "hostPath {path} holds runtime sockets"
        );
        assert!(
            !path.ends_with(".sock") || v["hostPath"]["type"] == "Socket",
            "a socket mount must be hostPath type Socket: {v}"
        );
    }
    assert_eq!(
        mounts.len(),
        3 + usize::from(variant.docker),
        "only the cgroup tree, BTF and the lock's directory (and on Docker Engine nodes the \
         one socket) are mounted from the host: {mounts:?}"
    );
    assert!(
        c["resources"]["requests"].get("cpu").is_some()
            && c["resources"]["limits"].get("memory").is_some()
    );

    let argv: Vec<&str> =
        c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(argv.first(), Some(&"run"), "{argv:?}");
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    if variant.no_metrics {
        assert!(!argv.iter().any(|a| a.starts_with("--metrics-addr")), "{argv:?}");
        for key in ["ports", "livenessProbe", "readinessProbe"] {
            assert!(c.get(key).is_none(), "{key} without metrics: {c}");
        }
        assert!(ann.get("prometheus.io/scrape").is_none(), "{ann}");
        return;
    }
    // Metrics, probes and scrape annotations agree on one port.
    let addr = argv
        .iter()
        .position(|a| *a == "--metrics-addr")
        .map(|i| argv[i + 1])
        .expect("--metrics-addr");
    let port: u64 = addr.rsplit(':').next().unwrap().parse().unwrap();
    // On the node's address (from the downward API), not on every address
    // of the host network.
    assert_eq!(addr, format!("$(HOST_IP):{port}"), "{argv:?}");
    let host_ip: Vec<&Value> =
        c["env"].as_array().unwrap().iter().filter(|e| e["name"] == "HOST_IP").collect();
    assert_eq!(host_ip.len(), 1, "HOST_IP set once");
    assert_eq!(host_ip[0]["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], port);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], port);
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], port.to_string());
}

/// The `setcap` line of a Containerfile: the capability list and the
/// path it is applied to.
fn setcap_in(file: &str) -> (String, String) {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("setcap ")).collect();
    assert_eq!(lines.len(), 1, "{file}: one setcap line: {lines:?}");
    let words: Vec<&str> =
        lines[0].split_whitespace().skip_while(|w| *w != "setcap").skip(1).collect();
    assert!(words.len() >= 2, "{file}: {}", lines[0]);
    (words[0].to_string(), words[1].to_string())
}

#[test]
fn both_images_give_the_binary_the_capabilities_as_permitted_file_capabilities() {
    let (published, path) = setcap_in("Containerfile");
    let (local, staged) = setcap_in("Containerfile.local");
    assert_eq!(published, local, "the two images' file capabilities");
    // Permitted only: no effective bit (exec would fail wherever a runtime
    // grants fewer), nothing inheritable.
    let (list, flags) = published.split_once('=').expect("caps=flags");
    assert_eq!(flags, "p", "{published}");
    let listed: BTreeSet<String> = list.split(',').map(str::to_string).collect();
    let expected: BTreeSet<String> = CAPABILITIES
        .iter()
        .chain(&VARIANT_CAPABILITIES)
        .map(|c| format!("cap_{}", c.to_lowercase()))
        .collect();
    assert_eq!(listed, expected, "the DaemonSet's capabilities and the documented variants'");

    // Containerfile: set in the build stage after strip (which writes a
    // new file), on the file the final stage copies, by a COPY that keeps
    // the attribute (no --chown/--chmod).
    let text = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("Containerfile: no {s:?}"));
    assert!(at("strip /imds-observer") < at("setcap "), "setcap after strip");
    assert_eq!(path, "/imds-observer");
    let copies: Vec<&str> = text.lines().filter(|l| l.starts_with("COPY --from")).collect();
    assert_eq!(copies, ["COPY --from=build /imds-observer /imds-observer"]);
    assert!(at("COPY --from") > at("setcap "));

    // Containerfile.local: the staged copy (per architecture, picked by
    // the TARGETARCH --platform sets) is what it copies, and all its build
    // context admits.
    let text = std::fs::read_to_string(repo().join("Containerfile.local")).unwrap();
    assert_eq!(staged, "target/image/$ARCH/imds-observer");
    assert!(text.contains("\nARG TARGETARCH\n"), "{text}");
    assert!(
        text.contains("\nCOPY target/image/${TARGETARCH}/imds-observer /imds-observer\n"),
        "{text}"
    );
    let ignore =
        std::fs::read_to_string(repo().join("Containerfile.local.containerignore")).unwrap();
    let rules: Vec<&str> =
        ignore.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(rules, ["*", "!target/image/*/imds-observer"]);
}

#[test]
fn rbac_reads_pods_gets_nodes_and_creates_and_patches_events_only() {
    assert_rbac(&objects());
}

/// The ClusterRole's grants, and its binding to the pods' ServiceAccount.
fn assert_rbac(objs: &[Value]) {
    let role = object(objs, "ClusterRole");
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert_eq!(strs(&rules[0]["apiGroups"]), set(&[""]));
    assert_eq!(strs(&rules[0]["resources"]), set(&["pods"]));
    assert_eq!(strs(&rules[0]["verbs"]), set(&["get", "list", "watch"]));
    // Its own Node, by name: get, never list or watch.
    assert_eq!(strs(&rules[1]["apiGroups"]), set(&[""]));
    assert_eq!(strs(&rules[1]["resources"]), set(&["nodes"]));
    assert_eq!(strs(&rules[1]["verbs"]), set(&["get"]));
    // Pod Events: new ones, and their series; not core/v1 events.
    assert_eq!(strs(&rules[2]["apiGroups"]), set(&["events.k8s.io"]));
    assert_eq!(strs(&rules[2]["resources"]), set(&["events"]));
    assert_eq!(strs(&rules[2]["verbs"]), set(&["create", "patch"]));
    for r in rules {
        assert!(r.get("resourceNames").is_none() && r.get("nonResourceURLs").is_none(), "{r}");
    }
    let binding = object(objs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let sa = object(objs, "ServiceAccount");
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], sa["metadata"]["namespace"]);
}

/// `{label: body}` of the block list `v[name]` with that label.
fn labelled<'a>(v: &'a Value, name: &str, label: &str) -> &'a Value {
    v[name]
        .as_array()
        .unwrap_or_else(|| panic!("no {name} block in {v}"))
        .iter()
        .find_map(|b| b.get(label))
        .unwrap_or_else(|| panic!("no {name} \"{label}\""))
}

/// The only `name {}` block of `v`.
fn block<'a>(v: &'a Value, name: &str) -> &'a Value {
    let blocks = v[name].as_array().unwrap_or_else(|| panic!("no {name} block"));
    assert_eq!(blocks.len(), 1, "one {name} block");
    &blocks[0]
}

/// The `cpu.arch` values (amd64, arm64, 386, ...) a job's constraint on
/// it admits: `=` one value, or a `regexp` of alternatives, anchored.
fn nomad_arches(job: &Value) -> BTreeSet<String> {
    let constraints = job["constraint"].as_array().expect("constraint blocks");
    let arch: Vec<&Value> =
        constraints.iter().filter(|c| c["attribute"] == "${attr.cpu.arch}").collect();
    assert_eq!(arch.len(), 1, "one constraint on cpu.arch: {constraints:?}");
    let value = arch[0]["value"].as_str().unwrap();
    match arch[0]["operator"].as_str().unwrap_or("=") {
        "=" | "==" => set(&[value]),
        "regexp" => {
            let alts = value.strip_prefix("^(").and_then(|v| v.strip_suffix(")$"));
            let alts = alts.unwrap_or_else(|| panic!("an anchored ^(a|b)$: {value}"));
            alts.split('|').map(str::to_string).collect()
        }
        op => panic!("cpu.arch {op} {value}: not checked here"),
    }
}

/// The job, its group and its task, checked for what both jobs share.
fn nomad_task(file: &str) -> (Value, Value, Value) {
    let doc = hcl(&repo().join("deploy/nomad").join(file));
    let job = labelled(&doc, "job", "imds-observer").clone();
    assert_eq!(job["type"], "system", "{file}: one allocation per client");
    let group = labelled(&job, "group", "imds-observer").clone();
    let network = block(&group, "network");
    assert_eq!(network["mode"], "host", "{file}");
    let task = labelled(&group, "task", "imds-observer").clone();
    assert_eq!(block(&task, "env")["NODE_NAME"], "${node.unique.name}", "{file}");
    assert_eq!(nomad_arches(&job), set(&["amd64", "arm64"]), "{file}: Graviton clients too");

    let all: Vec<&str> = block(&task, "config")["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // The observer's own arguments (after a wrapper's `--`, if any).
    let args = all.iter().position(|a| *a == "--").map_or(&all[..], |i| &all[i + 2..]);
    assert_eq!(args.first(), Some(&"run"), "{file}: {args:?}");
    assert!(args.contains(&"--metrics-addr"), "{file}: {args:?}");

    let service = block(&task, "service");
    let port = service["port"].as_str().unwrap();
    assert!(
        labelled(network, "port", port).get("static").is_some(),
        "{file}: the metrics port is static"
    );
    let check = block(service, "check");
    assert_eq!(check["type"], "http", "{file}");
    assert_eq!(check["path"], "/healthz", "{file}");
    (job, group, task)
}

#[test]
fn nomad_docker_job_is_a_host_network_system_job_as_nobody_with_the_four_capabilities() {
    require_python();
    let (_, _, task) = nomad_task("imds-observer.nomad.hcl");
    assert_eq!(task["driver"], "docker");
    // Not root, as the DaemonSet: the image's file capabilities.
    assert_eq!(task["user"], NOBODY.to_string());
    let config = block(&task, "config");
    assert_eq!(config["network_mode"], "host");
    assert!(config["image"].as_str().unwrap().starts_with("ghcr.io/imds-observer/imds-observer:"));
    assert_ne!(
        config["privileged"], true,
        "privileged is the documented alternative, not the default"
    );
    assert_eq!(config["readonly_rootfs"], true);
    assert_eq!(strs(&config["cap_drop"]), set(&["all"]));
    let lower: Vec<String> = CAPABILITIES.iter().map(|c| c.to_lowercase()).collect();
    assert_eq!(strs(&config["cap_add"]), lower.iter().cloned().collect::<BTreeSet<_>>());
    let mounts = config["mount"].as_array().expect("mount blocks");
    for m in mounts {
        assert_eq!(m["type"], "bind");
        assert_eq!(m["readonly"], true, "mount {} must be read-only", m["target"]);
        // A runtime socket is root on the host: at most the one socket,
        // never the directory of them all.
        let source = m["source"].as_str().unwrap().trim_end_matches('/');
        assert!(!["/run", "/var/run", "/run/containerd", "/"].contains(&source), "{m}");
    }
    assert!(
        mounts.iter().any(|m| m["source"] == "/sys/fs/cgroup" && m["target"] == "/sys/fs/cgroup"),
        "the host's cgroup tree: {mounts:?}"
    );
    // The Docker socket is root on the host: an option, off by default.
    assert!(
        !mounts.iter().any(|m| m["source"].as_str().unwrap().ends_with(".sock")),
        "a runtime socket mounted by default: {mounts:?}"
    );
    assert_eq!(
        strs(&config["volumes"]),
        set(&["/run/imds-observer:/run/imds-observer"]),
        "the instance lock's directory, from the host"
    );
}

#[test]
fn nomad_raw_exec_job_runs_the_installed_binary() {
    require_python();
    let (_, _, task) = nomad_task("imds-observer-exec.nomad.hcl");
    assert_eq!(task["driver"], "raw_exec");
    // Root becomes nobody with only the DaemonSet's capabilities, ambient,
    // before the observer starts: the same start the lab runs
    // (cli_lab::runs_as_nobody_with_three_ambient_capabilities_and_diagnoses).
    let config = block(&task, "config");
    assert_eq!(config["command"], "/usr/bin/setpriv");
    let args: Vec<&str> =
        config["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let caps: Vec<String> = CAPABILITIES.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    let caps = format!("-all,{}", caps.join(","));
    let setpriv = &args[..args.iter().position(|a| *a == "--").unwrap()];
    assert_eq!(
        setpriv.iter().copied().collect::<BTreeSet<&str>>(),
        [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--bounding-set={caps}"),
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            "--no-new-privs",
        ]
        .into_iter()
        .collect::<BTreeSet<&str>>(),
        "{args:?}"
    );
    let rest = &args[args.iter().position(|a| *a == "--").unwrap() + 1..];
    assert_eq!(&rest[..2], ["/usr/local/bin/imds-observer", "run"]);
    assert!(
        task.get("artifact").is_none(),
        "the artifact block is an example and stays commented out"
    );
}

// The Helm chart, rendered by Helm's engine (deploy/helm/render.py).

fn chart_dir() -> PathBuf {
    repo().join("deploy/helm/imds-observer")
}

/// `deploy/helm/render.py ARGS`: its stdout (JSON for render, objects and
/// lint), or a panic with its stderr.
fn render_py(args: &[&str]) -> Result<String, String> {
    require_python();
    let out = Command::new("python3")
        .arg(repo().join("deploy/helm/render.py"))
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The chart's objects with `values` over its defaults.
fn chart_objects(values: &Value) -> Vec<Value> {
    let out = render_py(&["objects", &values.to_string()])
        .unwrap_or_else(|e| panic!("rendering the chart with {values}:\n{e}"));
    match serde_json::from_str(&out).expect("render.py printed JSON") {
        Value::Array(objs) => objs,
        v => panic!("not a list of objects: {v}"),
    }
}

/// The value sets CI renders: (name, values, what the DaemonSet looks like).
fn value_sets() -> Vec<(&'static str, Value, Variant)> {
    use serde_json::json;
    vec![
        ("default", json!({}), Variant::default()),
        ("no RBAC", json!({"rbac": {"create": false}}), Variant::default()),
        (
            "Docker socket",
            json!({"runtime": "docker"}),
            Variant { docker: true, no_metrics: false },
        ),
        (
            "metrics off",
            json!({"metrics": {"enabled": false}}),
            Variant { docker: false, no_metrics: true },
        ),
        ("amd64 only", json!({"architectures": ["amd64"]}), Variant::default()),
    ]
}

/// The kinds the Prometheus Operator defines: kubernetes-validate knows
/// only built-in ones.
fn is_operator_kind(o: &Value) -> bool {
    o["apiVersion"].as_str().is_some_and(|a| a.starts_with("monitoring.coreos.com/"))
}

/// Write `objs` (built-in kinds) as one multi-document file and validate it.
fn validate_objects(objs: &[Value], what: &str) {
    let docs: Vec<String> =
        objs.iter().filter(|o| !is_operator_kind(o)).map(|o| o.to_string()).collect();
    assert!(!docs.is_empty(), "{what}: nothing to validate");
    let slug: String =
        what.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let file = std::env::temp_dir().join(format!("imds-chart-{}-{slug}.yaml", std::process::id()));
    std::fs::write(&file, docs.join("\n---\n")).unwrap();
    let result = std::panic::catch_unwind(|| validate(&file, what));
    let _ = std::fs::remove_file(&file);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The arch values the DaemonSet's node affinity admits.
fn admitted_architectures(ds: &Value) -> BTreeSet<String> {
    let terms = &ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let exprs = terms[0]["matchExpressions"].as_array().expect("matchExpressions");
    let arch = exprs.iter().find(|e| e["key"] == "kubernetes.io/arch").expect("an arch term");
    assert_eq!(arch["operator"], "In");
    strs(&arch["values"])
}

#[test]
fn kustomize_manifests_are_the_chart_rendered_with_its_default_values() {
    // Also deploy/prometheus' PodMonitor and PrometheusRule.
    if let Err(e) = render_py(&["manifests", "--check"]) {
        panic!("{e}");
    }
}

#[test]
fn chart_value_sets_validate_against_the_kubernetes_schemas() {
    for (name, values, _) in value_sets() {
        validate_objects(&chart_objects(&values), &format!("the chart ({name})"));
    }
}

#[test]
fn chart_value_sets_keep_the_documented_privileges_and_mounts() {
    for (name, values, variant) in value_sets() {
        let objs = chart_objects(&values);
        let ds = object(&objs, "DaemonSet");
        let pod = &ds["spec"]["template"]["spec"];
        // On a full node the scheduler preempts for it, and the kubelet
        // evicts it last.
        assert_eq!(pod["priorityClassName"], "system-node-critical", "{name}");
        assert_daemonset(&objs, variant);
        let kinds: BTreeSet<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        if values["rbac"]["create"] == false {
            assert!(!kinds.contains("ClusterRole") && !kinds.contains("ClusterRoleBinding"));
            assert!(kinds.contains("ServiceAccount"), "{name}: {kinds:?}");
        } else {
            assert_rbac(&objs);
        }
        // Both architectures the images are built for (Graviton nodes
        // included), unless a values file narrows them.
        let want = match name {
            "amd64 only" => set(&["amd64"]),
            _ => set(&["amd64", "arm64"]),
        };
        assert_eq!(admitted_architectures(ds), want, "{name}");
        // Helm's own Namespace handling: only on request.
        assert!(!kinds.contains("Namespace"), "{name}");
        for o in &objs {
            if !["ClusterRole", "ClusterRoleBinding"].contains(&o["kind"].as_str().unwrap()) {
                assert_eq!(o["metadata"]["namespace"], "imds-observer", "{name}: {}", o["kind"]);
            }
        }
    }
}

#[test]
fn chart_lints_clean_with_every_value_set() {
    let mut sets = value_sets();
    sets.push(("monitoring", monitoring_values(), Variant::default()));
    for (name, values, _) in sets {
        let report: Value = serde_json::from_str(
            &render_py(&["lint", &values.to_string()]).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap();
        let warnings: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            .collect();
        assert!(
            warnings.is_empty() && report["errors"].as_array().unwrap().is_empty(),
            "helm lint --strict ({name}): {report}"
        );
    }
    // The lint sees the schema (values.schema.json): a value the chart does
    // not know, or a runtime it does not handle, is an error.
    for bad in [serde_json::json!({"runtime": "dockerd"}), serde_json::json!({"metric": {}})] {
        let report: Value =
            serde_json::from_str(&render_py(&["lint", &bad.to_string()]).unwrap()).unwrap();
        assert!(!report["errors"].as_array().unwrap().is_empty(), "{bad}: {report}");
    }
}

/// Every monitoring toggle on.
fn monitoring_values() -> Value {
    serde_json::json!({
        "podMonitor": {"enabled": true},
        "serviceMonitor": {"enabled": true},
        "prometheusRule": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"enabled": true},
    })
}

#[test]
fn chart_monitoring_toggles_ship_the_rules_and_the_dashboard() {
    let objs = chart_objects(&monitoring_values());
    validate_objects(&objs, "the chart (monitoring)");
    // One copy of each: the chart's files/ are symlinks to them.
    for (link, source) in [
        ("files/rules.yml", "deploy/prometheus/rules.yml"),
        ("files/imds-observer.json", "deploy/grafana/imds-observer.json"),
    ] {
        let path = chart_dir().join(link);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink(), "{link}: not a symlink");
        assert_eq!(
            std::fs::canonicalize(&path).unwrap(),
            std::fs::canonicalize(repo().join(source)).unwrap(),
            "{link}"
        );
    }
    let rule = object(&objs, "PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let rules = yaml_docs(&repo().join("deploy/prometheus/rules.yml")).remove(0);
    assert_eq!(rule["spec"], rules, "the PrometheusRule's spec is rules.yml");

    let dashboard = object(&objs, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(dashboard["data"]["imds-observer.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/imds-observer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json, file, "the ConfigMap carries deploy/grafana/imds-observer.json");

    // Both monitors select the DaemonSet's pods on its metrics port.
    let ds = object(&objs, "DaemonSet");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let service = object(&objs, "Service");
    assert_eq!(service["spec"]["clusterIP"], "None");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the Service selects {k}={v}");
    }
    for kind in ["PodMonitor", "ServiceMonitor"] {
        let m = object(&objs, kind);
        for (k, v) in m["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "{kind} selects {k}={v}");
        }
    }

    // Off by default, and no monitor for a DaemonSet without metrics.
    let kinds = |objs: &[Value]| -> BTreeSet<String> {
        objs.iter().map(|o| o["kind"].as_str().unwrap().to_string()).collect()
    };
    let default = kinds(&chart_objects(&serde_json::json!({})));
    assert_eq!(default, set(&["ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"]));
    let mut no_metrics = monitoring_values();
    no_metrics["metrics"] = serde_json::json!({"enabled": false});
    let off = kinds(&chart_objects(&no_metrics));
    for kind in ["PodMonitor", "ServiceMonitor", "Service"] {
        assert!(!off.contains(kind), "{kind} without metrics: {off:?}");
    }
}

/// `version = "..."` of a Cargo.toml's [package].
fn crate_version(manifest: &str) -> String {
    let text = std::fs::read_to_string(repo().join(manifest)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{manifest}: no version"))
        .to_string()
}

#[test]
fn chart_app_version_is_the_crates_and_the_image_tag() {
    let chart = &yaml_docs(&chart_dir().join("Chart.yaml"))[0];
    let version = crate_version("observer/Cargo.toml");
    assert_eq!(chart["appVersion"], version, "Chart.yaml appVersion vs observer/Cargo.toml");
    let objs = chart_objects(&serde_json::json!({}));
    let image = object(&objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(image.ends_with(&format!(":{version}")), "{image}");
    // A digest pins the image whatever the tag says.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let objs = chart_objects(&serde_json::json!({"image": {"digest": digest}}));
    let pinned = object(&objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(pinned, format!("ghcr.io/imds-observer/imds-observer@{digest}"));
}

#[test]
fn chart_values_are_each_documented() {
    // Every value (a key with no child keys) has a comment line right
    // above it or above one of the sections holding it.
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let key = |l: &str| -> Option<(usize, String)> {
        let t = l.trim_start();
        let name = t.split_once(':')?.0;
        (!t.starts_with('#')
            && !t.starts_with('-')
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| (l.len() - t.len(), name.to_string()))
    };
    // (indent, documented) of the sections above the current line.
    let mut stack: Vec<(usize, bool)> = Vec::new();
    let mut undocumented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((indent, name)) = key(line) else { continue };
        while stack.last().is_some_and(|(d, _)| *d >= indent) {
            stack.pop();
        }
        let commented = i > 0 && lines[i - 1].trim_start().starts_with('#');
        let documented = commented || stack.iter().any(|(_, d)| *d);
        let has_children = lines[i + 1..]
            .iter()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .and_then(|l| key(l))
            .is_some_and(|(d, _)| d > indent);
        if has_children {
            stack.push((indent, documented));
        } else if !documented {
            undocumented.push(name);
        }
    }
    assert!(undocumented.is_empty(), "values.yaml: no comment for {undocumented:?}");
}

#[test]
fn chart_passes_only_flags_the_observer_has() {
    // Every observer value set: each flag the DaemonSet then passes is one
    // `imds-observer run --help` lists.
    let values = serde_json::json!({"observer": {
        "events": "exchanges", "podEvents": false, "metricsGrace": "5m",
        "metricsMaxWorkloads": 100, "endpoints": ["169.254.169.254"],
        "interfaces": ["eth0"], "labelKeys": "app", "logLevel": "debug",
    }, "runtime": "docker"});
    let objs = chart_objects(&values);
    let c = &object(&objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> =
        c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let help =
        Command::new(imds_lab::bin("imds-observer")).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    // The help's flags, without their value placeholders.
    let known: BTreeSet<String> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect())
        .collect();
    let flags: Vec<&str> =
        args.iter().filter(|a| a.starts_with("--")).map(|a| a.split('=').next().unwrap()).collect();
    assert_eq!(flags.len(), 9, "{args:?}");
    for flag in flags {
        assert!(known.contains(flag), "{flag} is no flag of `imds-observer run`: {known:?}");
    }
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "RUST_LOG" && e["value"] == "debug"),
        "{c}"
    );
}

#[test]
fn helm_commands_in_the_docs_name_the_chart_and_values_it_has() {
    // Each `helm install|upgrade|template` line (with its `\` continuations)
    // of README.md and docs/deploy.md: the chart path exists, and its --set
    // values pass the chart's schema (unknown keys are errors there).
    let mut seen = 0;
    for doc in ["README.md", "docs/deploy.md"] {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap().replace("\\\n", " ");
        for line in text.lines() {
            let Some(at) = line.find("helm ") else { continue };
            let words: Vec<&str> =
                line[at..].split_whitespace().map(|w| w.trim_matches('`')).collect();
            if !["install", "upgrade", "template"].contains(&words[1]) {
                continue;
            }
            seen += 1;
            assert!(
                words.contains(&"deploy/helm/imds-observer"),
                "{doc}: {line}: not the chart's path"
            );
            let mut values = serde_json::json!({});
            for pair in words.windows(2).filter(|w| w[0] == "--set").map(|w| w[1]) {
                let (key, value) = pair.split_once('=').unwrap();
                let value = match value {
                    "true" | "false" => Value::Bool(value == "true"),
                    v => Value::String(v.to_string()),
                };
                let mut at = &mut values;
                for k in key.split('.') {
                    at = &mut at[k];
                }
                *at = value;
            }
            let report: Value =
                serde_json::from_str(&render_py(&["lint", &values.to_string()]).unwrap()).unwrap();
            assert!(report["errors"].as_array().unwrap().is_empty(), "{doc}: {line}: {report}");
        }
    }
    assert!(seen >= 3, "only {seen} helm commands found in the docs");
}
