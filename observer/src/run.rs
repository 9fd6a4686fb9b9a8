//! `imds-observer run`: capture → pipeline → JSON lines, until a signal or
//! --duration.
use std::{
    io::{self, ErrorKind},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};
use tracing::{info, warn};

#[cfg(feature = "kubernetes")]
use crate::sink::pod_events;
use crate::{
    capture::{self, Capture, preflight, uplinks},
    cli::{self, CaptureArgs, EventLevel, ReportArgs, RunArgs},
    diagnose::{self, Diagnoser},
    identity::{Identities, cgroup, docker},
    model::{Endpoint, Event, Kind},
    pipeline::{self, KernelNames, Pipeline},
    sink::{
        Sink,
        http::{self, Health},
        json::{JsonLines, Stdout},
        metrics::{self, BpfProgramStats, Metrics, MetricsSink},
        output::{Dropped, Output},
        report,
    },
    sys::{
        self,
        clock::{Clock, mono_now_ns},
    },
};

pub fn node_name(flag: Option<String>) -> String {
    flag.filter(|n| !n.is_empty()).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    })
}

/// Resolve the capture flags against this host, with an error that says what
/// to do for each thing that is missing.
pub fn capture_config(args: &CaptureArgs) -> Result<capture::Config> {
    preflight::check_kernel(&args.kernel_btf)?;
    preflight::check_privileges()?;
    preflight::raise_memlock();
    let endpoints: Vec<Endpoint> = if args.endpoints.is_empty() {
        capture::DEFAULT_ENDPOINTS
            .iter()
            .map(|e| e.parse().expect("valid default endpoint"))
            .collect()
    } else {
        args.endpoints.clone()
    };
    let cgroup_root: PathBuf = match &args.cgroup_root {
        Some(p) => {
            if !p.is_dir() {
                bail!("--cgroup-root {}: no such directory", p.display());
            }
            p.clone()
        }
        None => cgroup::detect_cgroup2_root()?.context(
            "no cgroup v2 mount found: mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or pass --cgroup-root",
        )?,
    };
    // The cgroup2 root directory is inode 1; anything else is a subtree (a
    // container's own cgroup namespace, say) and sees only its processes.
    if std::fs::metadata(&cgroup_root).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok()
        != Some(1)
    {
        warn!(
            root = %cgroup_root.display(),
            "this is not the host's cgroup2 root: only processes below it are seen (mount the host's /sys/fs/cgroup)"
        );
    }
    let ifaces = if args.ifaces.is_empty() {
        let found = uplinks::uplinks_for(&endpoints.iter().map(|e| e.addr).collect::<Vec<_>>())
            .context("asking the kernel for the routes to the endpoints")?;
        if found.is_empty() {
            warn!(
                "no interface routes a metadata endpoint here; host-side (tc) capture is off. Name one with --iface"
            );
        }
        found
    } else {
        args.ifaces.clone()
    };
    for i in &ifaces {
        preflight::check_ethernet(i)?;
    }
    Ok(capture::Config {
        endpoints,
        cgroup_root,
        ifaces,
        kernel_btf: args.kernel_btf.clone(),
        sole_instance: !args.alongside,
        all_packets: false,
    })
}

/// What the capture loop does with each event; returns false to stop.
pub trait EventSink {
    fn event(&mut self, ev: Event) -> Result<bool>;
    /// Once a second (and once at the end), with the time.
    fn tick(&mut self, _now: SystemTime) -> Result<bool> {
        Ok(true)
    }
    /// The programs are attached: events flow from now on.
    fn attached(&mut self) {}
    /// The name lookups are set up (before the first event): sinks that
    /// read them (pod Events) take what they need.
    fn identities(&mut self, _node: &str, _ids: &Identities) {}
    /// Once a second, for sinks that report per-program BPF statistics:
    /// `read` asks the kernel.
    fn bpf_stats(&mut self, _read: &dyn Fn() -> Vec<BpfProgramStats>) {}
    /// Every matching packet, not only those the diagnosis reads: asked
    /// of the kernel at load time.
    fn all_packets(&self) -> bool {
        false
    }
    /// After each batch of events (one drain of the ring): the moment to
    /// write what was buffered.
    fn batch_done(&mut self) -> Result<bool> {
        Ok(true)
    }
    /// The ring was just drained: the loop is alive (`/healthz`).
    fn drained(&mut self) {}
}

/// Capture until SIGINT/SIGTERM, `deadline`, or the sink says stop; then
/// hand over what the kernel already has and detach.
pub async fn capture_loop(
    args: &CaptureArgs,
    deadline: Option<Instant>,
    sink: &mut impl EventSink,
) -> Result<()> {
    let mut cfg = capture_config(args)?;
    cfg.all_packets = sink.all_packets();
    let node = node_name(args.node_name.clone());
    let _lock = if args.alongside { None } else { Some(sys::instance_lock::take()?) };
    let mut cap = Capture::start(&cfg)?;
    if let Some(limits) = cap.kernel.limits() {
        warn!(kernel = %preflight::kernel_release(), "{limits}");
    }
    info!(
        cgroup_root = %cfg.cgroup_root.display(),
        uplinks = ?cfg.ifaces,
        endpoints = %cfg.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        "capturing"
    );
    sink.attached();
    let sockets = if args.runtime_sockets.is_empty() {
        docker::default_sockets()
    } else {
        args.runtime_sockets.clone()
    };
    // Names beyond the cgroup path: the runtime socket, and (from the
    // environment) Nomad and the pods on this node. The pod watch wants the
    // node name as the cluster knows it, not the host name guessed above.
    let identities = Identities::new(cfg.cgroup_root.clone(), &sockets)
        .with_env_lookups(args.node_name.as_deref());
    sink.identities(&node, &identities);
    let names = KernelNames {
        drop_reasons: cap.drop_reasons.clone(),
        locations: cap.locations.clone(),
        ifaces: cap.ifaces.iter().map(|(i, n)| (*i, n.as_str().into())).collect(),
    };
    let mut pipe = Pipeline::new(node.as_str().into(), Clock::now(), Some(identities), names);
    // Start-up's peak is over.
    sys::memory::return_freed();
    let mut veths = cap.veths();
    if let Some(v) = &veths {
        pipe.set_veths(&v.borrow());
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The kernel wakes us only when the ring fills up (observer_ebpf::WAKE_AT):
    // what it holds is taken this often.
    let mut drain = tokio::time::interval(Duration::from_millis(observer_ebpf::DRAIN_EVERY_MS));
    drain.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut lost_reported = 0u64;
    let mut dump = capture::record_dump::open()?;
    let mut recs = Vec::new();
    let mut events = Vec::new();

    let result: Result<()> = async {
        let mut go = true;
        while go {
            tokio::select! {
                r = cap.read(&mut recs) => {
                    r?;
                    sink.drained();
                }
                _ = drain.tick() => {
                    cap.drain(&mut recs);
                    sink.drained();
                }
                _ = sigint.recv() => go = false,
                _ = sigterm.recv() => go = false,
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => go = false,
                _ = tick.tick() => {
                    lost_reported = report_lost(&cap, &pipe, lost_reported, sink)?;
                    let now = SystemTime::now();
                    events.extend(pipe.suppressed_all(cap.suppressed(), now));
                    events.extend(pipe.node_event(now));
                    sink.bpf_stats(&|| cap.bpf_stats());
                    go = sink.tick(SystemTime::now())?;
                    sys::memory::return_freed();
                }
                r = async { veths.as_mut().unwrap().changed().await }, if veths.is_some() => match r {
                    Ok(()) => pipe.set_veths(&veths.as_mut().unwrap().borrow_and_update()),
                    Err(_) => veths = None,
                },
                _ = tokio::time::sleep(pipeline::VETH_WAIT), if pipe.holding() => {}
            }
            // What the kernel already handed over is still delivered.
            if !go {
                cap.drain(&mut recs);
            }
            if let Some(d) = dump.as_mut() {
                recs.iter().try_for_each(|rec| capture::record_dump::write(d, rec))?;
            }
            let now = if go { mono_now_ns() } else { u64::MAX };
            go &= take_batch(&mut recs, now, &mut pipe, &mut events, sink)?;
        }
        report_lost(&cap, &pipe, lost_reported, sink)?;
        Ok(())
    }
    .await;
    drop(cap); // detaches every program
    info!(
        malformed = pipe.skipped().malformed,
        unknown_records = pipe.skipped().unknown_hook,
        purged_at_close = pipe.skipped().purged,
        flows_evicted = pipe.flows_evicted(),
        "detached"
    );
    result
}

/// One drain of the ring: its records through the pipeline (held ones due
/// by `now_ns` included), each event into the sink, then the batch's end.
/// Leaves `recs` and `events` empty, their memory kept for the next batch.
/// False when the sink says stop.
pub fn take_batch(
    recs: &mut Vec<observer_ebpf::Record>,
    now_ns: u64,
    pipe: &mut Pipeline,
    events: &mut Vec<Event>,
    sink: &mut impl EventSink,
) -> Result<bool> {
    for rec in recs.drain(..) {
        pipe.process(&rec, events);
    }
    pipe.release_due(now_ns, events);
    let mut go = true;
    for ev in events.drain(..) {
        go &= sink.event(ev)?;
    }
    Ok(go && sink.batch_done()?)
}

fn report_lost(
    cap: &Capture,
    pipe: &Pipeline,
    reported: u64,
    sink: &mut impl EventSink,
) -> Result<u64> {
    let lost = cap.lost();
    if lost > reported {
        let mut ev = Event::new(Kind::LostEvents, SystemTime::now(), pipe.node().into());
        ev.count = Some(lost - reported);
        warn!(count = lost - reported, "events lost: the ring buffer was full");
        sink.event(ev)?;
    }
    Ok(lost)
}

fn deadline(duration: Option<f64>) -> Option<Instant> {
    duration.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)))
}

/// `run`'s loop: owns the Diagnoser, feeds it every event and the time,
/// and hands each sink what it decided.
pub struct Observe {
    diag: Diagnoser,
    sinks: Vec<Box<dyn Sink>>,
    /// Exchanges and summaries the Diagnoser handed over, to pass on.
    records: Vec<Event>,
    /// `--events packets`: the kernel hands over every packet.
    packets: bool,
    /// With --metrics-addr: what the server shows, and the loop's health
    /// and readiness.
    metrics: Option<(Arc<Mutex<Metrics>>, Arc<Health>)>,
    /// Lines stdout dropped, by kind (for the metric).
    output_dropped: Arc<Dropped>,
    /// Findings on pods become Events there, once the pod lookup is known
    /// to run (not with --no-pod-events).
    #[cfg(feature = "kubernetes")]
    pod_events_wanted: bool,
}

impl Observe {
    /// At `level`, with `out` as stdout (written by a thread of its own;
    /// no other sink yet).
    pub fn new(
        level: EventLevel,
        instance_id: Option<String>,
        out: Box<dyn io::Write + Send>,
    ) -> Result<Self> {
        let exchanges = match level {
            EventLevel::Problems => diagnose::Exchanges::Problems,
            EventLevel::Exchanges => diagnose::Exchanges::All,
            EventLevel::Packets => diagnose::Exchanges::None,
        };
        let diag =
            Diagnoser::new(diagnose::Config { instance_id, exchanges, ..Default::default() });
        let packets = level == EventLevel::Packets;
        let stdout =
            Stdout::new(Output::spawn(out).context("starting the stdout thread")?, packets);
        Ok(Self {
            diag,
            output_dropped: stdout.dropped(),
            sinks: vec![Box::new(stdout)],
            records: Vec::new(),
            packets,
            metrics: None,
            #[cfg(feature = "kubernetes")]
            pod_events_wanted: false,
        })
    }

    /// At the end of the run: what is still pending, summed up.
    pub fn finish(&mut self) -> Result<()> {
        self.diag.settle();
        self.diag.summaries(true, &mut self.records);
        if self.each(|_, _| Ok(()))? {
            self.each(|s, _| s.flush())?;
        }
        self.sinks.iter_mut().for_each(|s| s.finish());
        Ok(())
    }

    /// Hand each sink what `each` gives it, then the records decided
    /// meanwhile. False when stdout was closed (`| head`): the run ends
    /// quietly.
    fn each(
        &mut self,
        mut each: impl FnMut(&mut dyn Sink, &Diagnoser) -> io::Result<()>,
    ) -> Result<bool> {
        self.diag.drain(&mut self.records);
        let mut r = Ok(());
        for s in &mut self.sinks {
            r = r.and_then(|()| each(s.as_mut(), &self.diag));
            if !self.records.is_empty() {
                r = r.and_then(|()| s.records(&self.records));
            }
        }
        self.records.clear();
        match r {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
            r => Ok(r.map(|()| true)?),
        }
    }
}

impl EventSink for Observe {
    fn event(&mut self, ev: Event) -> Result<bool> {
        let findings = self.diag.observe(&ev);
        self.each(|s, diag| s.event(diag, &ev, &findings))
    }
    fn tick(&mut self, now: SystemTime) -> Result<bool> {
        let findings = self.diag.tick(now);
        self.diag.summaries(false, &mut self.records);
        Ok(self.each(|s, diag| s.tick(diag, now, &findings))? && self.batch_done()?)
    }
    fn batch_done(&mut self) -> Result<bool> {
        self.each(|s, _| s.flush())
    }
    fn all_packets(&self) -> bool {
        self.packets
    }
    fn attached(&mut self) {
        if let Some((_, health)) = &self.metrics {
            health.attached();
        }
    }
    fn drained(&mut self) {
        if let Some((_, health)) = &self.metrics {
            health.drained();
        }
    }
    fn identities(&mut self, node: &str, ids: &Identities) {
        #[cfg(feature = "kubernetes")]
        if std::mem::take(&mut self.pod_events_wanted) {
            // Only where the pod watch runs: it says which pods are this
            // node's, and the same client configuration reaches the API.
            if let Some(pods) = ids.pod_table() {
                info!(node = %node, "Kubernetes: findings on this node's pods become Events there");
                let cfg = pod_events::Config::new(node.to_owned());
                self.sinks.push(Box::new(pod_events::PodEventsSink {
                    events: pod_events::PodEvents::spawn_from_env(cfg, pods),
                    metrics: self.metrics.as_ref().map(|(m, _)| m.clone()),
                }));
            }
        }
        #[cfg(not(feature = "kubernetes"))]
        let _ = (node, ids);
    }
    fn bpf_stats(&mut self, read: &dyn Fn() -> Vec<BpfProgramStats>) {
        if let Some((m, _)) = &self.metrics {
            let stats = if metrics::bpf_stats_enabled() { read() } else { Vec::new() };
            m.lock().unwrap_or_else(|e| e.into_inner()).set_bpf_stats(stats);
        }
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    // Bound before anything else: a bad --metrics-addr fails at once.
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let server = http::Server::bind(addr)?;
            info!(addr = %server.local_addr(), "serving /metrics, /healthz, /readyz");
            let cfg = metrics::Config {
                grace: args.metrics_grace,
                max_workloads: args.metrics_max_workloads,
                process: true,
            };
            let mut m = Metrics::new(cfg);
            m.add_node(&node_name(args.capture.node_name.clone()));
            let state = Arc::new(Mutex::new(m));
            let health = Arc::new(Health::default());
            // On a thread of its own: probes and scrapes are answered
            // while the loop is busy, and say so when it is wedged.
            server.spawn(state.clone(), health.clone())?;
            Some((state, health))
        }
        None => None,
    };
    let mut observe = Observe::new(args.events, args.instance_id.clone(), Box::new(io::stdout()))?;
    if let Some((m, _)) = &metrics {
        m.lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_output_dropped(observe.output_dropped.clone());
        observe.sinks.push(Box::new(MetricsSink(m.clone())));
    }
    observe.metrics = metrics;
    #[cfg(feature = "kubernetes")]
    {
        observe.pod_events_wanted = !args.no_pod_events;
    }
    #[cfg(not(feature = "kubernetes"))]
    let _ = args.no_pod_events;
    capture_loop(&args.capture, deadline(args.duration), &mut observe).await?;
    observe.finish()?;
    Ok(())
}

/// `report`: observe (or read a recording), then print the findings.
/// Exit status: 0 all healthy, 1 a finding needs action, 2 error.
pub async fn report(args: ReportArgs) -> Result<u8> {
    let findings = match &args.from {
        Some(path) => {
            let cfg = diagnose::Config::default()
                .with_instance_ids(&args.fleet.instance_id)
                .map_err(anyhow::Error::msg)?;
            let name = if path == "-" { "stdin" } else { path.as_str() };
            if path == "-" && io::IsTerminal::is_terminal(&io::stdin()) {
                bail!(cli::refuse_terminal_stdin("report"));
            }
            let d = if path == "-" {
                diagnose::replay::diagnose_stream_with(io::stdin().lock(), cfg)
            } else {
                let f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
                diagnose::replay::diagnose_stream_with(io::BufReader::new(f), cfg)
            }
            .with_context(|| format!("reading {name}"))?;
            let why = d.skipped.describe();
            // No usable event is an error, not a pass: an empty `kubectl
            // logs` (wrong namespace) or `report --json` output fed back
            // would otherwise read as "all healthy".
            if d.events == 0 {
                match why {
                    Some(why) => {
                        bail!("{name}: no event to diagnose in {}: {why}", lines(d.skipped.total()))
                    }
                    None => bail!("{name}: no event to diagnose: the input is empty"),
                }
            }
            // Beside events, finding lines are expected (`run` writes both).
            let ignored = diagnose::replay::Skipped { findings: 0, ..d.skipped };
            if let Some(why) = ignored.describe() {
                warn!("{name}: {} skipped: {why}", lines(ignored.total()));
            }
            d.findings
        }
        None => {
            let Some(secs) = args.duration else {
                bail!(
                    "report needs --duration <seconds> to observe, or --from <file|-> to read a recording"
                );
            };
            struct Collect(Diagnoser);
            impl EventSink for Collect {
                fn event(&mut self, ev: Event) -> Result<bool> {
                    self.0.observe(&ev);
                    Ok(true)
                }
                fn tick(&mut self, now: SystemTime) -> Result<bool> {
                    self.0.tick(now);
                    Ok(true)
                }
            }
            let cfg = diagnose::Config::default()
                .with_instance_ids(&args.fleet.instance_id)
                .map_err(anyhow::Error::msg)?;
            let mut c = Collect(Diagnoser::new(cfg));
            capture_loop(&args.capture, deadline(Some(secs)), &mut c).await?;
            c.0.settle();
            c.0.findings()
        }
    };
    // --node/--namespace/--pod: the report and its verdict are about those
    // only. None left is an error, not a pass: a mistyped name would read
    // as "all healthy".
    let findings = if args.fleet.only.is_empty() {
        findings
    } else {
        let total = findings.len();
        let kept: Vec<_> =
            findings.into_iter().filter(|f| args.fleet.only.keeps(&f.node, &f.container)).collect();
        if kept.is_empty() {
            bail!(
                "no container matches {}: the {total} finding(s) are about other nodes or pods",
                args.fleet.only.describe()
            );
        }
        kept
    };
    let written = (|| -> io::Result<()> {
        let mut out = io::stdout().lock();
        if args.json_output() {
            let mut lines = JsonLines::new(&mut out);
            for f in &findings {
                lines.write(f)?;
            }
            lines.flush()
        } else {
            io::Write::write_all(
                &mut out,
                report::render_width(&findings, crate::sink::names::terminal_width()).as_bytes(),
            )?;
            io::Write::flush(&mut out)
        }
    })();
    // `report | head`: the reader has what it wanted; the verdict stands.
    match written {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        r => r?,
    }
    Ok(report::exit_code(&findings))
}

fn lines(n: u64) -> String {
    if n == 1 { "1 line".into() } else { format!("{n} lines") }
}

/// Live events on a channel, captured on a thread of their own, for the
/// TUI. Capture stops (and detaches) when the receiver is dropped.
pub fn spawn_live(args: CaptureArgs) -> Result<mpsc::Receiver<Event>> {
    // Fail fast, on the caller's thread, with the preflight's message.
    capture_config(&args)?;
    let (tx, rx) = mpsc::channel(4096);
    std::thread::Builder::new().name("capture".into()).spawn(move || {
        /// Never blocks (it runs inside the capture's runtime, where
        /// `blocking_send` panics): when the TUI falls behind, events are
        /// dropped and reported as lost_events once there is room.
        struct Forward {
            tx: mpsc::Sender<Event>,
            dropped: u64,
            node: std::sync::Arc<str>,
        }
        impl EventSink for Forward {
            fn event(&mut self, ev: Event) -> Result<bool> {
                match self.tx.try_send(ev) {
                    Ok(()) => Ok(true),
                    Err(mpsc::error::TrySendError::Full(ev)) => {
                        self.dropped += 1;
                        self.node = ev.node;
                        Ok(true)
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
                }
            }
            fn tick(&mut self, now: SystemTime) -> Result<bool> {
                if self.dropped > 0 {
                    let mut ev = Event::new(Kind::LostEvents, now, self.node.clone());
                    ev.count = Some(self.dropped);
                    if self.tx.try_send(ev).is_ok() {
                        self.dropped = 0;
                    }
                }
                Ok(!self.tx.is_closed())
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        match rt {
            Ok(rt) => {
                let mut fwd = Forward { tx, dropped: 0, node: "".into() };
                if let Err(e) = rt.block_on(capture_loop(&args, None, &mut fwd)) {
                    tracing::error!("capture stopped: {e:#}");
                }
            }
            Err(e) => tracing::error!("capture thread: {e}"),
        }
    })?;
    Ok(rx)
}
