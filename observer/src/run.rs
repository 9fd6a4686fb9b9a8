//! `imds-observer run`: capture → pipeline → JSON lines, until a signal or
//! --duration.
use std::{
    io::{self, ErrorKind},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{
    capture::{self, Capture, preflight, uplinks},
    cli::{CaptureArgs, RunArgs},
    event::{Event, Kind},
    identity::cgroup::{self, CgroupResolver},
    pipeline::{Clock, Pipeline},
    sink::json::JsonLines,
};

pub fn node_name(flag: Option<String>) -> String {
    flag.filter(|n| !n.is_empty()).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
    })
}

/// Resolve the capture flags against this host, with an error that says what
/// to do for each thing that is missing.
pub fn capture_config(args: &CaptureArgs) -> Result<capture::Config> {
    preflight::check_kernel()?;
    preflight::check_privileges()?;
    let endpoints: Vec<IpAddr> = if args.endpoints.is_empty() {
        capture::DEFAULT_ENDPOINTS.iter().map(|e| e.parse().expect("valid default endpoint")).collect()
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
    let ifaces = if args.ifaces.is_empty() {
        let found = uplinks::uplinks_for(&endpoints).context("reading the routing table")?;
        if found.is_empty() {
            warn!("no interface routes a metadata endpoint here; host-side (tc) capture is off. Name one with --iface");
        }
        found
    } else {
        args.ifaces.clone()
    };
    for i in &ifaces {
        preflight::check_ethernet(i)?;
    }
    Ok(capture::Config { endpoints, cgroup_root, ifaces })
}

pub async fn run(args: RunArgs) -> Result<()> {
    let cfg = capture_config(&args.capture)?;
    let node = node_name(args.capture.node_name.clone());
    let mut cap = Capture::start(&cfg)?;
    info!(
        cgroup_root = %cfg.cgroup_root.display(),
        uplinks = ?cfg.ifaces,
        endpoints = ?cfg.endpoints,
        "capturing"
    );

    let mut pipe = Pipeline::new(node, Clock::now(), Some(CgroupResolver::new(cfg.cgroup_root.clone())));
    pipe.drop_reasons = cap.drop_reasons.clone();
    pipe.ifaces = cap.ifaces.clone();

    let mut out = JsonLines::new(io::stdout().lock());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = args.duration.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut lost_reported = 0u64;
    let mut recs = Vec::new();

    let result: Result<()> = async {
        loop {
            tokio::select! {
                r = cap.read(&mut recs) => r?,
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break,
                _ = tick.tick() => {
                    lost_reported = report_lost(&cap, &pipe, lost_reported, &mut out)?;
                }
            }
            emit(&mut pipe, &mut recs, &mut out)?;
        }
        // What the kernel already handed over is still written.
        cap.drain(&mut recs);
        emit(&mut pipe, &mut recs, &mut out)?;
        report_lost(&cap, &pipe, lost_reported, &mut out)?;
        Ok(())
    }
    .await;
    drop(cap); // detaches every program
    match result {
        Err(e) if is_broken_pipe(&e) => {}
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    info!(
        events = out.written,
        malformed = pipe.skipped.malformed,
        flows_evicted = pipe.flows.evicted(),
        "detached"
    );
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
}

fn emit(pipe: &mut Pipeline, recs: &mut Vec<observer_ebpf::Record>, out: &mut JsonLines<impl io::Write>) -> Result<()> {
    for rec in recs.drain(..) {
        if let Some(ev) = pipe.process(&rec) {
            out.write(&ev)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn report_lost(cap: &Capture, pipe: &Pipeline, reported: u64, out: &mut JsonLines<impl io::Write>) -> Result<u64> {
    let lost = cap.lost();
    if lost > reported {
        let mut ev = Event::new(Kind::LostEvents, crate::event::rfc3339(std::time::SystemTime::now()), pipe.node.clone());
        ev.count = Some(lost - reported);
        out.write(&ev)?;
        out.flush()?;
        warn!(count = lost - reported, "events lost: the ring buffer was full");
    }
    Ok(lost)
}
