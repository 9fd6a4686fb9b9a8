//! Command line. Every flag can also be set from the environment
//! (IMDS_OBSERVER_<FLAG>), as a DaemonSet or Nomad job prefers. Variables are
//! shared between commands, so a value from the environment that does not
//! apply (a duration with `--from`) is ignored; the same flag typed is refused.
//! Every value error says what would be accepted.
use std::{ffi::OsString, io, path::PathBuf, time::Duration};

use clap::{
    ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand,
    builder::BoolishValueParser,
    error::{ContextKind, ContextValue, ErrorKind},
    parser::ValueSource,
};

use crate::{capture, model::Endpoint};

#[derive(Parser, Debug)]
#[command(
    name = "imds-observer",
    version = VERSION,
    about = "Watch cloud-metadata (IMDS) traffic per container with eBPF, and say what is wrong",
    long_about = "Watch cloud-metadata (IMDS) traffic per container with eBPF.\n\n\
        On AWS the reply to the IMDSv2 token request leaves the metadata service with \
        IP TTL = the instance's hop limit (default 1). A container one forwarding hop \
        further away never gets it: the host drops it in ip_forward, the SDK times out \
        after 1 s, retries, and falls back to IMDSv1. imds-observer sees every packet a \
        container exchanges with a metadata endpoint (TTL at egress, TTL of the reply at \
        the host, whether the reply was delivered, the kernel's drop reason) and streams \
        it as JSON lines on stdout; logs go to stderr.\n\n\
        Needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN, on Linux 5.8+ with BTF."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `--version`: what a bug report needs, from build.rs (the commit is
/// "unknown" in a build without its git checkout, e.g. from a tarball; the
/// eBPF object's hash says which kernel programs it loads, whatever the
/// commit).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("IMDS_OBSERVER_COMMIT"),
    ", eBPF object ",
    env!("IMDS_OBSERVER_EBPF_HASH"),
    ", target ",
    env!("IMDS_OBSERVER_TARGET"),
    ", features: ",
    env!("IMDS_OBSERVER_FEATURES"),
    ")"
);

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Capture metadata traffic and stream events as JSON lines on stdout.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Observe for a while (or read a recording), then print what is wrong
    /// per container and how to fix it.
    ///
    /// Usable as a CI preflight or through `kubectl exec` (exit status
    /// below).
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Watch metadata traffic per container, live on this host or from a
    /// recorded/streamed JSON event stream.
    #[command(after_help = TUI_EXAMPLES)]
    Tui(TuiArgs),
    /// Print a shell completion script on stdout.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff) on stdout: the command's, or a subcommand's.
    #[command(after_help = MAN_EXAMPLES)]
    Man {
        /// The subcommand whose page to print (run, report, tui).
        command: Option<String>,
    },
}

// Examples as `after_help`: clap folds doc comments into one paragraph.
const RUN_EXAMPLES: &str = "\
Example:
  imds-observer run --duration 30 | jq -c 'select(.type == \"drop\")'";
// `report -h` shows this too: the exit status is what CI reads.
const REPORT_EXAMPLES: &str = "\
Exit status: 0 every container is healthy, 1 a finding needs action, 2 an error
(a bad flag or variable, an unreadable --from, a recording with no event in it).
A closed stdout (`| head`) keeps the verdict's status.

Examples:
  imds-observer report --duration 60
  imds-observer report --duration 5m -o json
  imds-observer report --from node.jsonl
  kubectl logs -n imds-observer -l app.kubernetes.io/name=imds-observer --tail=-1 | imds-observer report --from -";
const TUI_EXAMPLES: &str = "\
Examples:
  imds-observer tui
  kubectl logs -n imds-observer -l app.kubernetes.io/name=imds-observer -f --tail=-1 --max-log-requests=1000 | imds-observer tui --from -";
const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  imds-observer completions bash > /etc/bash_completion.d/imds-observer
  imds-observer completions zsh > ~/.zfunc/_imds-observer";
const MAN_EXAMPLES: &str = "\
Examples:
  imds-observer man > imds-observer.1
  imds-observer man report > imds-observer-report.1";

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Metadata endpoint to watch, as IP or IP:PORT ([IPv6]:PORT); the port
    /// is the service's TCP port, 80 when left out (repeatable; replaces the
    /// defaults). Only TCP to that port, and ICMP errors about it, is
    /// captured. Defaults: 169.254.169.254 (IMDS), 169.254.170.2 (ECS task
    /// credentials), 169.254.170.23 (EKS Pod Identity), fd00:ec2::254,
    /// fd00:ec2::23, all on port 80.
    #[arg(
        long = "endpoint",
        value_name = "IP[:PORT]",
        env = "IMDS_OBSERVER_ENDPOINTS",
        value_delimiter = ','
    )]
    pub endpoints: Vec<Endpoint>,

    /// Uplink interface for the tc hooks (repeatable). Default: the interfaces
    /// that route the endpoints in this network namespace.
    #[arg(
        long = "iface",
        value_name = "NAME",
        env = "IMDS_OBSERVER_IFACES",
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,

    /// cgroup v2 mount to attach the cgroup hooks to. Default: /sys/fs/cgroup
    /// when it is cgroup2, else the cgroup2 mount found in /proc/self/mountinfo
    /// (e.g. /sys/fs/cgroup/unified on hybrid hosts).
    #[arg(long, value_name = "PATH", env = "IMDS_OBSERVER_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,

    /// Docker Engine API socket to name containers by (Podman's `podman
    /// system service` socket works too). Repeatable, but only the first one
    /// that exists is used. Default: the first of /var/run/docker.sock,
    /// /run/podman/podman.sock, /run/docker.sock that exists. Without one,
    /// containers are named from their cgroup paths.
    #[arg(
        long = "runtime-socket",
        value_name = "PATH",
        env = "IMDS_OBSERVER_RUNTIME_SOCKETS",
        value_delimiter = ','
    )]
    pub runtime_sockets: Vec<PathBuf>,

    /// Kernel BTF to read struct offsets and the hooks' prototypes from
    /// (the programs still attach by the running kernel's own BTF). For
    /// testing, or a kernel that keeps a copy elsewhere.
    #[arg(long, value_name = "PATH", env = "IMDS_OBSERVER_KERNEL_BTF", default_value = capture::btf::VMLINUX)]
    pub kernel_btf: PathBuf,

    /// Run even if another imds-observer is running in this network
    /// namespace. Both then attach their programs and each reports every
    /// packet; meant for trying a new version beside the deployed one.
    #[arg(long, env = "IMDS_OBSERVER_ALONGSIDE", value_name = "BOOL", value_parser = BoolishValueParser::new(),
        action = ArgAction::Set, num_args = 0..=1, require_equals = true,
        default_missing_value = "true", default_value = "false",
        hide_default_value = true, hide_possible_values = true)]
    pub alongside: bool,

    /// Pod label keys to keep in each workload's identity (`container.labels`),
    /// comma-separated; `*` keeps any key, an empty value none. Whatever
    /// is chosen, at most 16 labels and 1 KiB are kept per pod, values cut
    /// at 63 bytes; the rest is counted in `container.labels_dropped`.
    /// Default: app, app.kubernetes.io/name, app.kubernetes.io/instance,
    /// app.kubernetes.io/component, app.kubernetes.io/part-of, k8s-app, team.
    #[arg(
        long = "pod-labels",
        value_name = "KEY,...",
        env = "IMDS_OBSERVER_POD_LABELS",
        value_delimiter = ','
    )]
    pub pod_labels: Option<Vec<String>>,

    /// Node name written on every event. Kubernetes sets NODE_NAME from the
    /// downward API; default: the host name.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
}

/// What `run` writes besides findings (`--events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventLevel {
    Problems,
    Exchanges,
    Packets,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Stop after this long: seconds (30, 0.5) or a duration (5m, 1h30m)
    /// (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "DURATION", env = "IMDS_OBSERVER_DURATION", value_parser = seconds)]
    pub duration: Option<f64>,

    /// EC2 instance id to put in the fix command (default: an i-... id
    /// found in the node name, or the Node's providerID; else the fix reads
    /// "$INSTANCE_ID" and says how to set it).
    #[arg(long, value_name = "ID", env = "IMDS_OBSERVER_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// What to write besides findings. `problems`: an `exchange` line for
    /// each request that went wrong (no reply delivered, a drop, a
    /// retransmission, a 4xx/5xx, no token) and for every request of a
    /// workload while a finding other than healthy holds for it, and a
    /// `summary` line per workload a minute for the rest: a few lines a
    /// minute for healthy traffic. `exchanges`: a line for every request.
    /// `packets`: every packet at every hook (for deep dives; costly).
    #[arg(
        long,
        value_name = "LEVEL",
        env = "IMDS_OBSERVER_EVENTS",
        value_enum,
        default_value_t = EventLevel::Problems
    )]
    pub events: EventLevel,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, and /healthz
    /// (200 while the capture loop runs) and /readyz (200 once capture is
    /// attached) for probes; e.g. 0.0.0.0:9109 (every address of the host),
    /// or the node's address alone (an IPv6 one with or without brackets).
    /// Off when absent.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        env = "IMDS_OBSERVER_METRICS_ADDR",
        value_parser = socket_addr
    )]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Drop the metric series of a workload not seen for this long:
    /// seconds (600) or a duration (10m).
    #[arg(
        long,
        value_name = "DURATION",
        env = "IMDS_OBSERVER_METRICS_GRACE",
        default_value = "10m",
        value_parser = duration
    )]
    pub metrics_grace: Duration,

    /// Workload series at most; further workloads are counted under
    /// workload="_other".
    #[arg(
        long,
        value_name = "N",
        env = "IMDS_OBSERVER_METRICS_MAX_WORKLOADS",
        default_value_t = 2000
    )]
    pub metrics_max_workloads: usize,

    /// Create no Kubernetes Events. By default, when the pod lookup is on
    /// (in a cluster or with KUBECONFIG, and a node name), a
    /// hop_limit_exceeded, node_role_blocked, imdsv1_fallback, token_rejected, node_role_leak or at_risk
    /// finding about a pod of this node is also a Warning Event on that pod
    /// (`kubectl describe pod`), repeats counted on the Event, at most 60
    /// requests a minute per node. Needs create and patch on events
    /// (events.k8s.io).
    #[arg(long, env = "IMDS_OBSERVER_NO_POD_EVENTS", value_name = "BOOL", value_parser = BoolishValueParser::new(),
        action = ArgAction::Set, num_args = 0..=1, require_equals = true,
        default_missing_value = "true", default_value = "false",
        hide_default_value = true, hide_possible_values = true)]
    pub no_pod_events: bool,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Observe live this long: seconds (60) or a duration (5m).
    #[arg(long, value_name = "DURATION", env = "IMDS_OBSERVER_DURATION", value_parser = report_seconds)]
    pub duration: Option<f64>,

    /// Read a recorded JSON event stream instead (a file, or - for stdin),
    /// e.g. the output of `imds-observer run` or of `kubectl logs`. Streams
    /// merged from several nodes are reported per node.
    #[arg(long, value_name = "FILE|-", env = "IMDS_OBSERVER_FROM")]
    pub from: Option<String>,

    /// Print the findings as JSON lines instead of a table (as -o json;
    /// --json=false for the table).
    #[arg(long, env = "IMDS_OBSERVER_JSON", value_name = "BOOL", value_parser = BoolishValueParser::new(),
        action = ArgAction::Set, num_args = 0..=1, require_equals = true,
        default_missing_value = "true", default_value = "false",
        hide_default_value = true, hide_possible_values = true)]
    pub json: bool,

    /// Output format, kubectl's way: json (as --json) or table; wins over
    /// --json and its variable.
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_enum, alias = "format")]
    pub output: Option<OutputFormat>,

    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// What `report` and `tui` share over a fleet's stream, the same flags with
/// the same meaning: which containers, and each node's instance id.
#[derive(Args, Debug, Default, Clone)]
pub struct FleetArgs {
    #[command(flatten)]
    pub only: Only,

    /// EC2 instance id for a node's fix command: NODE=ID (repeat, or
    /// comma-separated, one per node), or one bare ID for single-node input
    /// only. Unset, a node's id comes from its name (i-...) or its
    /// providerID, else the fix reads "$INSTANCE_ID" and says how to set it.
    #[arg(
        long,
        value_name = "NODE=ID|ID",
        env = "IMDS_OBSERVER_INSTANCE_ID",
        value_delimiter = ','
    )]
    pub instance_id: Vec<String>,
}

/// `--node/--namespace/--pod`: which containers `report` reports (and
/// judges by) and the TUI lists. Within a flag any value matches; all
/// flags given must match.
#[derive(Args, Debug, Default, Clone)]
pub struct Only {
    /// Only the containers of these nodes (repeatable, or commas).
    #[arg(long = "node", value_name = "NAME", value_delimiter = ',')]
    pub nodes: Vec<String>,

    /// Only the containers of pods in these namespaces (repeatable, or
    /// commas), as kubectl's -n.
    #[arg(short = 'n', long = "namespace", value_name = "NS", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Only the containers of pods whose name is, or starts with, one of
    /// these (repeatable, or commas): `--pod api` takes api-7d9f8c-x2x4q.
    #[arg(long = "pod", value_name = "NAME", value_delimiter = ',')]
    pub pods: Vec<String>,
}

impl Only {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.namespaces.is_empty() && self.pods.is_empty()
    }

    /// Whether `node`'s containers may be asked for (`--node`).
    pub fn keeps_node(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n == node)
    }

    /// Whether a container of `node` is one asked for.
    pub fn keeps(&self, node: &str, c: &crate::model::Container) -> bool {
        let any = |want: &[String], have: Option<&str>, prefix: bool| {
            want.is_empty()
                || have.is_some_and(|h| {
                    want.iter().any(|w| h == w || (prefix && h.starts_with(w.as_str())))
                })
        };
        self.keeps_node(node)
            && any(&self.namespaces, c.namespace.as_deref(), false)
            && any(&self.pods, c.pod.as_deref(), true)
    }

    /// "--node a --pod api", as typed.
    pub fn describe(&self) -> String {
        [("--node", &self.nodes), ("--namespace", &self.namespaces), ("--pod", &self.pods)]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(f, v)| format!("{f} {}", v.join(",")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `report -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

impl ReportArgs {
    /// JSON lines rather than the table: `-o` first, then `--json`.
    pub fn json_output(&self) -> bool {
        self.output.map_or(self.json, |o| o == OutputFormat::Json)
    }
}

#[derive(Args, Debug)]
pub struct TuiArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Read a JSON event stream instead of capturing (a file, or - for stdin,
    /// read as it is written). Streams from several nodes show a node column.
    #[arg(long, value_name = "FILE|-", env = "IMDS_OBSERVER_FROM")]
    pub from: Option<String>,

    #[command(flatten)]
    pub fleet: FleetArgs,
}

impl Cli {
    /// Parse the command line and the environment; on error, print it and
    /// exit 2.
    pub fn parse_env() -> Cli {
        Cli::try_parse_env(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// `Parser::try_parse_from`, plus: an invalid value taken from a
    /// variable names the variable, and with `--from` capture-only flags are
    /// refused when typed and ignored when they come from the environment.
    pub fn try_parse_env<I: IntoIterator<Item = T>, T: Into<OsString>>(
        args: I,
    ) -> Result<Cli, clap::Error> {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        // A recording is read: nothing is captured, so the capture's flags
        // do not apply. Their variables (shared with `run`) are not read at
        // all then, so that an invalid one cannot stop `report --from`: the
        // command line is parsed without them first, and if it names a
        // recording that parse is the one used.
        let mut quiet = Cli::command();
        for name in ["report", "tui"] {
            quiet = quiet.mut_subcommand(name, |mut s| {
                for id in CAPTURE_ONLY {
                    if s.get_arguments().any(|a| a.get_id() == id) {
                        s = s.mut_arg(id, |a| a.env(None));
                    }
                }
                s
            });
        }
        let (mut cmd, matches) = match quiet.try_get_matches_from_mut(&args) {
            Ok(m) if reads_recording(&m) => (quiet, m),
            _ => {
                let mut cmd = Cli::command();
                let m = cmd
                    .try_get_matches_from_mut(&args)
                    .map_err(|e| name_the_variable(&mut cmd, &args, e))?;
                (cmd, m)
            }
        };
        let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
        let Some((name, sub)) = matches.subcommand() else { return Ok(cli) };
        if !reads_recording(&matches) {
            return Ok(cli);
        }
        let sub_cmd = cmd.find_subcommand_mut(name).expect("parsed subcommand");
        for id in CAPTURE_ONLY {
            if typed(sub, id) {
                let flag = sub_cmd
                    .get_arguments()
                    .find(|a| a.get_id() == id)
                    .and_then(|a| a.get_long())
                    .unwrap_or(id);
                return Err(sub_cmd.error(
                    ErrorKind::ArgumentConflict,
                    format!("--{flag} cannot be used with --from: a recording is read, nothing is captured"),
                ));
            }
        }
        Ok(cli)
    }
}

/// What nothing captured makes meaningless (`--from`).
const CAPTURE_ONLY: [&str; 9] = [
    "duration",
    "endpoints",
    "ifaces",
    "cgroup_root",
    "runtime_sockets",
    "kernel_btf",
    "alongside",
    "node_name",
    "pod_labels",
];

/// `report --from` or `tui --from` (typed or from the variable).
fn reads_recording(m: &ArgMatches) -> bool {
    match m.subcommand() {
        Some(("report" | "tui", sub)) => sub.get_one::<String>("from").is_some(),
        _ => false,
    }
}

fn typed(m: &ArgMatches, id: &str) -> bool {
    m.try_contains_id(id).unwrap_or(false) && m.value_source(id) == Some(ValueSource::CommandLine)
}

/// clap names the flag of an invalid value even when the value came from
/// the environment; say which variable held it.
fn name_the_variable(cmd: &mut clap::Command, args: &[OsString], e: clap::Error) -> clap::Error {
    if !matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return e;
    }
    let (Some(ContextValue::String(shown)), Some(ContextValue::String(value))) =
        (e.get(ContextKind::InvalidArg), e.get(ContextKind::InvalidValue))
    else {
        return e;
    };
    let typed = |long: &str| {
        let flag = format!("--{long}");
        args.iter()
            .filter_map(|a| a.to_str())
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let Some(sub) =
        args.iter().skip(1).filter_map(|a| a.to_str()).find(|a| cmd.find_subcommand(a).is_some())
    else {
        return e;
    };
    let sub = sub.to_string();
    let from_env = cmd.find_subcommand(&sub).and_then(|s| {
        s.get_arguments()
            .find(|a| {
                a.get_long().is_some_and(|l| {
                    shown.split([' ', '[']).next() == Some(format!("--{l}").as_str()) && !typed(l)
                }) && a
                    .get_env()
                    .and_then(std::env::var_os)
                    .is_some_and(|v| v.to_str() == Some(value.as_str()))
            })
            .cloned()
    });
    let Some(arg) = from_env else { return e };
    let var = arg.get_env().unwrap_or_default().to_string_lossy().into_owned();
    let why = if arg.is_require_equals_set() {
        "use 1/0, true/false, yes/no or on/off".to_string()
    } else {
        std::error::Error::source(&e)
            .map(ToString::to_string)
            .unwrap_or_else(|| "not valid here".into())
    };
    let long = arg.get_long().unwrap_or_default();
    let cmd = cmd.find_subcommand_mut(&sub).expect("found above");
    cmd.error(
        ErrorKind::InvalidValue,
        format!("invalid value '{value}' in {var} (for --{long}): {why}"),
    )
}

/// Longest duration: a year. A longer run is "until stopped", which is
/// what leaving `--duration` out means.
const MAX_DURATION_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Every duration flag, one syntax: a bare number is seconds (`30`, `0.5`),
/// anything else a humantime duration (`5m`, `10s`, `1h30m`); at most a
/// year.
fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let secs = match t.parse::<f64>() {
        Ok(v) => v,
        Err(_) => humantime::parse_duration(t)
            .map_err(|e| {
                format!("{s}: {e}; expected seconds (30, 0.5) or a duration (10s, 5m, 1h30m)")
            })?
            .as_secs_f64(),
    };
    if !(secs.is_finite() && (0.0..=MAX_DURATION_SECS).contains(&secs)) {
        return Err(format!(
            "{s}: expected a duration from 0 to a year, as seconds (30, 0.5) or with a unit (10s, 5m, 1h30m)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `run --duration`: above 0.
fn seconds(s: &str) -> Result<f64, String> {
    match duration(s)? {
        d if d.is_zero() => Err(format!(
            "{s}: expected a duration above 0; leave --duration out to run until stopped"
        )),
        d => Ok(d.as_secs_f64()),
    }
}

/// `report --duration`: above 0; the way out of 0 is not run's.
fn report_seconds(s: &str) -> Result<f64, String> {
    match duration(s)? {
        d if d.is_zero() => Err(format!(
            "{s}: report observes for a time above 0 (e.g. --duration 60 or 5m); to read a \
             recording instead, use --from FILE|-"
        )),
        d => Ok(d.as_secs_f64()),
    }
}

/// `--metrics-addr`: `IP:PORT`, `[IPv6]:PORT`, or `IPv6:PORT` without
/// brackets (what `$(HOST_IP):9109` makes of an IPv6 node address in a
/// manifest): the part after the last colon is the port. `localhost:PORT`
/// is 127.0.0.1. A port alone (`9109`, `:9109`) is refused with the forms
/// that say which addresses to listen on: every one is a choice to make.
fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let forms = |port: &str| {
        format!(
            "0.0.0.0:{port} (every address of the host), 127.0.0.1:{port} (this host only) or \
             the node's address, $(HOST_IP):{port} in a manifest"
        )
    };
    let t = s.trim();
    let port_alone = t.strip_prefix(':').unwrap_or(t);
    if port_alone.parse::<u16>().is_ok() {
        return Err(format!(
            "{s}: a port alone; say which address to listen on: {}",
            forms(port_alone)
        ));
    }
    if let Ok(a) = t.parse() {
        return Ok(a);
    }
    let (ip, port) = t
        .rsplit_once(':')
        .ok_or_else(|| format!("{s}: expected ADDR:PORT, e.g. {}", forms("9109")))?;
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!(
            "{s}: {port:?} is not a port (1-65535); expected ADDR:PORT, e.g. {}",
            forms("9109")
        ));
    };
    if ip.eq_ignore_ascii_case("localhost") {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    match ip.parse::<std::net::Ipv6Addr>() {
        Ok(ip) => Ok((ip, port).into()),
        Err(_) => Err(format!(
            "{s}: {ip:?} is not an IP address (host names other than localhost are not \
             resolved); expected ADDR:PORT, e.g. {}",
            forms(&port.to_string())
        )),
    }
}

/// `--from -` with a terminal on stdin: nothing would ever arrive (and the
/// TUI would share the terminal with its key reader). The message says how
/// to feed a recording.
pub fn refuse_terminal_stdin(command: &str) -> String {
    format!(
        "--from -: stdin is a terminal, not an event stream; pipe one in (kubectl logs -n \
         imds-observer -l app.kubernetes.io/name=imds-observer --tail=-1 | imds-observer \
         {command} --from -) or name a file (--from node.jsonl)"
    )
}

/// Colours in the logs on stderr: only on a terminal, and not when
/// NO_COLOR is set to anything but the empty string (no-color.org).
pub fn log_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// `completions SHELL`: the script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "imds-observer", out);
}

/// `man [COMMAND]`: the roff page of the command or of a subcommand.
pub fn man_page(command: Option<&str>, out: &mut dyn io::Write) -> Result<(), String> {
    let mut cmd = Cli::command();
    cmd.build();
    let page = match command {
        None => cmd,
        Some(name) => {
            let sub = cmd.find_subcommand(name).cloned().ok_or_else(|| {
                let names: Vec<_> = cmd.get_subcommands().map(|s| s.get_name()).collect();
                format!("man {name}: no such command; one of {}", names.join(", "))
            })?;
            // clap takes a static name (without its `string` feature); a
            // one-shot command prints one page.
            sub.name(&*Box::leak(format!("imds-observer-{name}").into_boxed_str()))
        }
    };
    clap_mangen::Man::new(page).render(out).map_err(|e| format!("writing the man page: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addr_takes_the_node_address_of_either_family() {
        let ok = |s: &str| socket_addr(s).unwrap().to_string();
        assert_eq!(ok("0.0.0.0:9109"), "0.0.0.0:9109");
        assert_eq!(ok("10.0.1.17:9109"), "10.0.1.17:9109");
        assert_eq!(ok("[fd00::5]:9109"), "[fd00::5]:9109");
        assert_eq!(ok("fd00::5:9109"), "[fd00::5]:9109");
        assert_eq!(ok("localhost:9109"), "127.0.0.1:9109");
        for bad in ["", "9109", "10.0.1.17", "10.0.1.17:", "node:9109", ":9109", "fd00::5:99999"] {
            assert!(socket_addr(bad).is_err(), "{bad}");
        }
    }

    /// #26 item 9: each refusal names the forms that work.
    #[test]
    fn metrics_addr_errors_name_the_right_form() {
        for (bad, hint) in [
            ("9109", "0.0.0.0:9109"),
            (":9109", "0.0.0.0:9109"),
            ("node:9109", "not an IP address"),
            ("10.0.1.17", "ADDR:PORT"),
            ("10.0.1.17:x", "not a port"),
        ] {
            let e = socket_addr(bad).unwrap_err();
            assert!(e.contains(hint) && e.contains("127.0.0.1:"), "{bad}: {e}");
        }
    }

    #[test]
    fn pod_labels_take_a_list_any_or_none() {
        let keys = |args: &[&str]| {
            let cli =
                Cli::try_parse_env(["imds-observer", "run"].iter().chain(args).copied()).unwrap();
            let Command::Run(a) = cli.command else { panic!() };
            a.capture.pod_labels
        };
        assert_eq!(keys(&[]), None, "the default list");
        assert_eq!(keys(&["--pod-labels", "app,team"]), Some(vec!["app".into(), "team".into()]));
        assert_eq!(keys(&["--pod-labels", ""]), Some(vec![String::new()]), "none");
        assert_eq!(keys(&["--pod-labels", "*"]), Some(vec!["*".into()]));
    }

    #[test]
    fn durations_are_positive_finite_and_bounded() {
        assert_eq!(seconds("30"), Ok(30.0));
        assert_eq!(seconds("0.5"), Ok(0.5));
        for bad in ["inf", "NaN", "-1", "0", "0s", "1e30", "ten", "400days"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }

    /// #26 item 9: one syntax for every duration flag.
    #[test]
    fn every_duration_flag_takes_seconds_and_units() {
        for (flag, sub) in
            [("--duration", "run"), ("--duration", "report"), ("--metrics-grace", "run")]
        {
            for (v, secs) in [("10", 10.0), ("10s", 10.0), ("5m", 300.0), ("1.5", 1.5)] {
                let cli = Cli::try_parse_env(["imds-observer", sub, flag, v])
                    .unwrap_or_else(|e| panic!("{sub} {flag} {v}: {e}"));
                let got = match cli.command {
                    Command::Run(a) if flag == "--duration" => a.duration.unwrap(),
                    Command::Run(a) => a.metrics_grace.as_secs_f64(),
                    Command::Report(a) => a.duration.unwrap(),
                    _ => unreachable!(),
                };
                assert_eq!(got, secs, "{sub} {flag} {v}");
            }
        }
        let e = duration("ten").unwrap_err();
        assert!(e.contains("5m") && e.contains("30"), "{e}");
    }

    /// #26 item 8: `--duration 0` says what to do, per command.
    #[test]
    fn zero_duration_advice_fits_the_command() {
        assert!(seconds("0").unwrap_err().contains("leave --duration out"));
        let e = report_seconds("0").unwrap_err();
        assert!(e.contains("--from") && !e.contains("leave --duration out"), "{e}");
    }

    fn report(args: &[&str]) -> Result<ReportArgs, clap::Error> {
        let all = [&["imds-observer", "report"][..], args].concat();
        match Cli::try_parse_env(all)?.command {
            Command::Report(a) => Ok(a),
            _ => unreachable!(),
        }
    }

    /// #26 items 9 and 10: `--json=false` as the variable takes it; `-o`,
    /// and `--format` (a common guess) as its alias.
    #[test]
    fn output_format_flags() {
        assert!(report(&["--from", "x", "--json"]).unwrap().json_output());
        assert!(!report(&["--from", "x", "--json=false"]).unwrap().json_output());
        assert!(report(&["--from", "x", "--json=yes"]).unwrap().json_output());
        assert!(!report(&["--from", "x"]).unwrap().json_output());
        assert!(report(&["--from", "x", "-o", "json"]).unwrap().json_output());
        assert!(report(&["--from", "x", "--output=json"]).unwrap().json_output());
        assert!(report(&["--from", "x", "--format", "json"]).unwrap().json_output());
        assert!(!report(&["--from", "x", "--json", "-o", "table"]).unwrap().json_output());
        let e = report(&["--from", "x", "-o", "yaml"]).unwrap_err().to_string();
        assert!(e.contains("json") && e.contains("table"), "{e}");
        // `--json` still takes no separate value: the next word is not eaten.
        assert!(report(&["--json", "--from", "x"]).unwrap().json_output());
    }

    /// #26 item 8: every capture flag is refused typed with --from,
    /// `--kernel-btf` included.
    #[test]
    fn capture_flags_are_refused_with_from() {
        let e = report(&["--from", "x", "--kernel-btf", "/b"]).unwrap_err().to_string();
        assert!(e.contains("--kernel-btf cannot be used with --from"), "{e}");
    }

    /// #26 item 8: `report -h` (not only --help) shows the exit status.
    #[test]
    fn report_short_help_shows_the_exit_status() {
        let mut cmd = Cli::command();
        cmd.build();
        let help = cmd.find_subcommand_mut("report").unwrap().render_help().to_string();
        assert!(
            help.contains("Exit status: 0") && help.contains("1 a finding needs action"),
            "{help}"
        );
    }

    #[test]
    fn terminal_stdin_refusal_shows_a_pipe() {
        let m = refuse_terminal_stdin("tui");
        assert!(
            m.contains("| imds-observer tui --from -") && m.contains("--from node.jsonl"),
            "{m}"
        );
    }

    /// #26 item 10: kubectl-like filters on report.
    #[test]
    fn only_keeps_what_was_asked_for() {
        let c = |ns: &str, pod: &str| crate::model::Container {
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            ..Default::default()
        };
        let only = report(&["--from", "x", "--node", "a,b", "-n", "prod", "--pod", "api"])
            .unwrap()
            .fleet
            .only;
        assert!(only.keeps("a", &c("prod", "api-7d9f8c-x2x4q")));
        assert!(only.keeps("b", &c("prod", "api")));
        assert!(!only.keeps("c", &c("prod", "api")));
        assert!(!only.keeps("a", &c("dev", "api")));
        assert!(!only.keeps("a", &c("prod", "web")));
        assert!(!only.keeps("a", &crate::model::Container::default()), "no pod: not a match");
        assert_eq!(only.describe(), "--node a,b --namespace prod --pod api");
        assert!(Only::default().keeps("x", &crate::model::Container::default()));
    }

    /// #26: `report` and `tui` take the fleet's flags alike (one struct).
    #[test]
    fn report_and_tui_share_the_fleet_flags() {
        let args =
            ["--from", "x", "--node", "a", "-n", "prod", "--pod", "api", "--instance-id", "a=i-1"];
        let fleet = |sub: &str| {
            let all = [&["imds-observer", sub][..], &args].concat();
            match Cli::try_parse_env(all).unwrap().command {
                Command::Report(a) => a.fleet,
                Command::Tui(a) => a.fleet,
                _ => unreachable!(),
            }
        };
        let (r, t) = (fleet("report"), fleet("tui"));
        assert_eq!(format!("{r:?}"), format!("{t:?}"));
        assert_eq!(t.only.describe(), "--node a --namespace prod --pod api");
        assert_eq!(t.instance_id, ["a=i-1"]);
        let mut cmd = Cli::command();
        cmd.build();
        let help =
            |sub: &str| cmd.find_subcommand(sub).unwrap().clone().render_long_help().to_string();
        let (r, t) = (help("report"), help("tui"));
        for flag in
            ["--node <NAME>", "--namespace <NS>", "--pod <NAME>", "--instance-id <NODE=ID|ID>"]
        {
            let text = |h: &str| {
                h[h.find(flag).unwrap_or_else(|| panic!("{flag}: {h}"))..]
                    .split("\n\n")
                    .next()
                    .unwrap()
                    .to_string()
            };
            assert_eq!(text(&r), text(&t), "{flag}");
        }
    }

    /// #26 item 10: NO_COLOR set (not empty) turns colours off.
    #[test]
    fn no_color_is_honoured() {
        use std::ffi::OsStr;
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(false, None));
    }

    /// #26 item 10: completions for every shell clap knows, and man pages.
    #[test]
    fn completions_and_man_pages_generate() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let mut out = Vec::new();
            completions(*shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("imds-observer") && text.contains("metrics-addr"), "{shell}");
        }
        let mut out = Vec::new();
        man_page(None, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH imds-observer"), "{text}");
        assert!(text.contains("report"), "{text}");
        let mut out = Vec::new();
        man_page(Some("report"), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("imds\\-observer\\-report") && text.contains("from"), "{text}");
        assert!(man_page(Some("nosuch"), &mut Vec::new()).unwrap_err().contains("report"));
        // Through the command line too.
        assert!(matches!(
            Cli::try_parse_env(["imds-observer", "completions", "bash"]).unwrap().command,
            Command::Completions { .. }
        ));
    }

    /// #26 item 10, #30: --version says commit, eBPF object, target and
    /// features.
    #[test]
    fn version_names_commit_target_and_features() {
        let v = Cli::command().render_version().to_string();
        assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(v.contains("commit "), "{v}");
        let commit = env!("IMDS_OBSERVER_COMMIT");
        assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{commit}"
        );
        assert!(v.contains(&format!("target {}", env!("IMDS_OBSERVER_TARGET"))), "{v}");
        // The hash of the object this binary embeds and loads (build.rs
        // hashed the file; this hashes the bytes include_bytes! embedded).
        let hash = crate::build_object_hash::object_hash(crate::capture::object());
        assert!(v.contains(&format!("eBPF object {hash},")), "{v}");
        assert!(!crate::capture::object().is_empty(), "no eBPF object embedded");
        // The hash is the source's, not the checkout directory's: the
        // object names no absolute path (build.rs: trim-paths).
        let object = crate::capture::object();
        let checkout = env!("CARGO_MANIFEST_DIR").trim_end_matches("/observer");
        for path in [checkout, "/.cargo/registry/", "/.rustup/toolchains/"] {
            assert!(
                !object.windows(path.len()).any(|w| w == path.as_bytes()),
                "the eBPF object names {path}"
            );
        }
        assert!(env!("IMDS_OBSERVER_TARGET").contains("linux"), "{v}");
        #[cfg(feature = "kubernetes")]
        assert!(v.contains("features: kubernetes"), "{v}");
    }
}
