//! Command line. Every flag can also be set from the environment
//! (IMDS_OBSERVER_<FLAG>), as a DaemonSet or Nomad job prefers. Variables are
//! shared between commands, so a value from the environment that does not
//! apply (a duration with `--from`) is ignored; the same flag typed is refused.
use std::{ffi::OsString, path::PathBuf};

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
    version,
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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Capture metadata traffic and stream events as JSON lines on stdout.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Observe for a while (or read a recording), then print what is wrong
    /// per container and how to fix it.
    ///
    /// Exit status: 0 when every container is healthy, 1 when any finding
    /// needs action, 2 on error, including a recording with no event in it;
    /// usable as a CI preflight or through `kubectl exec`.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Watch metadata traffic per container, live on this host or from a
    /// recorded/streamed JSON event stream.
    #[command(after_help = TUI_EXAMPLES)]
    Tui(TuiArgs),
}

// Examples as `after_help`: clap folds doc comments into one paragraph.
const RUN_EXAMPLES: &str = "\
Example:
  imds-observer run --duration 30 | jq -c 'select(.type == \"drop\")'";
const REPORT_EXAMPLES: &str = "\
Examples:
  imds-observer report --duration 60
  imds-observer report --from node.jsonl
  kubectl logs -n imds-observer -l app.kubernetes.io/name=imds-observer --tail=-1 | imds-observer report --from -";
const TUI_EXAMPLES: &str = "\
Examples:
  imds-observer tui
  kubectl logs -n imds-observer -l app.kubernetes.io/name=imds-observer -f --tail=-1 --max-log-requests=1000 | imds-observer tui --from -";

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
    #[arg(long, env = "IMDS_OBSERVER_ALONGSIDE", value_parser = BoolishValueParser::new())]
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

    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS", env = "IMDS_OBSERVER_DURATION", value_parser = seconds)]
    pub duration: Option<f64>,

    /// EC2 instance id to put in the fix command (default: `<instance-id>`,
    /// or an i-... id found in the node name).
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

    /// Drop the metric series of a workload not seen for this long.
    #[arg(
        long,
        value_name = "DURATION",
        env = "IMDS_OBSERVER_METRICS_GRACE",
        default_value = "10m",
        value_parser = humantime::parse_duration
    )]
    pub metrics_grace: std::time::Duration,

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
    /// hop_limit_exceeded, node_role_blocked, imdsv1_fallback, token_rejected or at_risk
    /// finding about a pod of this node is also a Warning Event on that pod
    /// (`kubectl describe pod`), repeats counted on the Event, at most 60
    /// requests a minute per node. Needs create and patch on events
    /// (events.k8s.io).
    #[arg(long, env = "IMDS_OBSERVER_NO_POD_EVENTS", value_parser = BoolishValueParser::new())]
    pub no_pod_events: bool,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Observe live for this many seconds.
    #[arg(long, value_name = "SECONDS", env = "IMDS_OBSERVER_DURATION", value_parser = seconds)]
    pub duration: Option<f64>,

    /// Read a recorded JSON event stream instead (a file, or - for stdin),
    /// e.g. the output of `imds-observer run` or of `kubectl logs`. Streams
    /// merged from several nodes are reported per node.
    #[arg(long, value_name = "FILE|-", env = "IMDS_OBSERVER_FROM")]
    pub from: Option<String>,

    /// Print the findings as JSON lines instead of a table.
    #[arg(long, env = "IMDS_OBSERVER_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,

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

#[derive(Args, Debug)]
pub struct TuiArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Read a JSON event stream instead of capturing (a file, or - for stdin,
    /// read as it is written). Streams from several nodes show a node column.
    #[arg(long, value_name = "FILE|-", env = "IMDS_OBSERVER_FROM")]
    pub from: Option<String>,

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
        let mut cmd = Cli::command();
        let matches = cmd
            .try_get_matches_from_mut(&args)
            .map_err(|e| name_the_variable(&mut cmd, &args, e))?;
        let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
        let Some((name, sub)) = matches.subcommand() else { return Ok(cli) };
        let from = match &cli.command {
            Command::Report(a) => a.from.is_some(),
            Command::Tui(a) => a.from.is_some(),
            Command::Run(_) => false,
        };
        if !from {
            return Ok(cli);
        }
        // A recording is read: nothing is captured, so these do not apply.
        // From the environment (shared with `run`) they are left unused.
        const CAPTURE_ONLY: [&str; 8] = [
            "duration",
            "endpoints",
            "ifaces",
            "cgroup_root",
            "runtime_sockets",
            "alongside",
            "node_name",
            "pod_labels",
        ];
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
                    shown.split(' ').next() == Some(format!("--{l}").as_str()) && !typed(l)
                }) && a
                    .get_env()
                    .and_then(std::env::var_os)
                    .is_some_and(|v| v.to_str() == Some(value.as_str()))
            })
            .cloned()
    });
    let Some(arg) = from_env else { return e };
    let var = arg.get_env().unwrap_or_default().to_string_lossy().into_owned();
    let why = if matches!(arg.get_action(), ArgAction::SetTrue) {
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

/// Longest `--duration`: a year. A longer run is "until stopped", which is
/// what leaving the flag out means.
const MAX_DURATION_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// `--duration`: positive seconds, finite, at most a year.
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s}: expected seconds, e.g. 30 or 0.5"))?;
    if !(v.is_finite() && v > 0.0 && v <= MAX_DURATION_SECS) {
        return Err(format!(
            "{s}: expected seconds above 0 and at most {MAX_DURATION_SECS} (a year); leave \
             --duration out to run until stopped"
        ));
    }
    Ok(v)
}

/// `--metrics-addr`: `IP:PORT`, `[IPv6]:PORT`, or `IPv6:PORT` without
/// brackets (what `$(HOST_IP):9109` makes of an IPv6 node address in a
/// manifest): the part after the last colon is the port.
fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let bad =
        || format!("{s}: expected ADDR:PORT, e.g. 0.0.0.0:9109, 10.0.1.17:9109 or [fd00::5]:9109");
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let (ip, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok((ip, port).into())
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command, seconds, socket_addr};

    #[test]
    fn metrics_addr_takes_the_node_address_of_either_family() {
        let ok = |s: &str| socket_addr(s).unwrap().to_string();
        assert_eq!(ok("0.0.0.0:9109"), "0.0.0.0:9109");
        assert_eq!(ok("10.0.1.17:9109"), "10.0.1.17:9109");
        assert_eq!(ok("[fd00::5]:9109"), "[fd00::5]:9109");
        assert_eq!(ok("fd00::5:9109"), "[fd00::5]:9109");
        for bad in ["", "9109", "10.0.1.17", "10.0.1.17:", "node:9109", ":9109", "fd00::5:99999"] {
            assert!(socket_addr(bad).is_err(), "{bad}");
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
        for bad in ["inf", "NaN", "-1", "0", "1e30", "ten"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
