//! Userspace cost per metadata request: the records the kernel hands over
//! for healthy requests from 50 routed containers (a connection, a GET
//! and its reply each, as `cargo xtask bench`'s load sends them), through
//! the pipeline, the diagnosis and stdout at each `--events` level, as
//! `run`'s loop takes them. No kernel, no root: what the agent's own code
//! costs, apart from the ring and the system calls the lab bench also
//! counts. Prints figures; asserts nothing about time.
//!
//!   cargo bench -p imds-observer --bench exchanges
//!
use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use imds_observer::{
    cli::EventLevel,
    pipeline::{KernelNames, Pipeline},
    run::{EventSink, Observe, take_batch},
    sys::clock::{Clock, mono_now_ns},
};
use observer_ebpf::{Hook, Record};

const WORKLOADS: u32 = 50;
const REQUESTS: u32 = 100_000;
/// Requests a second in all (simulated time: it decides how often the
/// diagnosis ticks and sums up, not how fast the bench runs).
const RATE: u64 = 1_000;
/// Records per drain of the ring: 50 ms at `RATE`, as `run` drains.
const DRAIN_EVERY_NS: u64 = 50_000_000;
const IMDS: [u8; 4] = [169, 254, 169, 254];
const UPLINK: u32 = 2;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// The system allocator, counting: allocations per request are what the
/// agent pays most for on a musl build (its allocator is slow).
struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn main() {
    let records = traffic();
    println!(
        "{REQUESTS} healthy requests from {WORKLOADS} routed containers, {} records each \
         (the kernel's default hand-over), through pipeline, diagnosis and stdout:",
        records.len() as u32 / REQUESTS
    );
    println!(
        "  {:<9} {:>10} {:>12} {:>10} {:>11}",
        "--events", "µs/req", "allocs/req", "lines/req", "bytes/req"
    );
    for level in [EventLevel::Problems, EventLevel::Exchanges] {
        let a0 = ALLOCATIONS.load(Relaxed);
        let (secs, lines, bytes) = observe(level, &records);
        let allocs = ALLOCATIONS.load(Relaxed) - a0;
        let per = |x: f64| x / REQUESTS as f64;
        println!(
            "  {:<9} {:>10.2} {:>12.1} {:>10.3} {:>11.1}",
            format!("{level:?}").to_lowercase(),
            per(secs) * 1e6,
            per(allocs as f64),
            per(lines as f64),
            per(bytes as f64)
        );
    }
}

/// One pass of `records` through a fresh pipeline and `run`'s loop at
/// `level`: seconds taken, stdout lines and bytes.
fn observe(level: EventLevel, records: &[Record]) -> (f64, u64, u64) {
    let out = Counted::default();
    let (lines, bytes) = (out.lines.clone(), out.bytes.clone());
    let clock = Clock::now();
    let mut pipe = Pipeline::new("bench".into(), clock, None, KernelNames::default());
    let mut sink = Observe::new(level, None, Box::new(out)).unwrap();
    let (mut recs, mut events) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    let mut next_drain = records[0].ts_ns + DRAIN_EVERY_NS;
    let mut next_tick = records[0].ts_ns + 1_000_000_000;
    for r in records {
        if r.ts_ns >= next_drain {
            take_batch(&mut recs, next_drain, &mut pipe, &mut events, &mut sink).unwrap();
            next_drain += DRAIN_EVERY_NS;
        }
        if r.ts_ns >= next_tick {
            sink.tick(clock.wall(next_tick)).unwrap();
            next_tick += 1_000_000_000;
        }
        recs.push(*r);
    }
    take_batch(&mut recs, u64::MAX, &mut pipe, &mut events, &mut sink).unwrap();
    sink.finish().unwrap();
    (t0.elapsed().as_secs_f64(), lines.load(Relaxed), bytes.load(Relaxed))
}

/// stdout as `run` has it: written by the writer thread (sink::output).
#[derive(Default)]
struct Counted {
    lines: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.fetch_add(buf.len() as u64, Relaxed);
        self.lines.fetch_add(buf.iter().filter(|&&b| b == b'\n').count() as u64, Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The records of `REQUESTS` requests at `RATE`, round robin over the
/// workloads: what the kernel hands over by default for each (connect;
/// request and FIN out, SYN|ACK and the reply's first segment in, at the
/// socket; the uplink's sightings folded into the reply's record).
fn traffic() -> Vec<Record> {
    let start = mono_now_ns();
    let mut out = Vec::new();
    for n in 0..REQUESTS {
        let w = n % WORKLOADS;
        let ts = start + n as u64 * 1_000_000_000 / RATE;
        let cookie = 1_000_000 + n as u64;
        let c = Conn {
            cgroup: 5_000 + w as u64,
            cookie,
            addr: [198, 18, (w / 200) as u8, (w % 200) as u8 + 2],
            port: 32_768 + (n / WORKLOADS % 28_000) as u16,
            seq: n.wrapping_mul(2_654_435_761),
            peer_seq: n.wrapping_mul(40_503),
        };
        let mut at = ts;
        let mut step = |hook, flags, seq, ack, payload: &[u8], ttl, out: &mut Vec<Record>| {
            out.push(c.record(hook, at, flags, seq, ack, payload, ttl));
            at += 20_000;
        };
        // The connect stands for the SYN; the uplinks' sightings ride on
        // the reply's record.
        out.push(c.connect(ts));
        let (s, p) = (c.seq, c.peer_seq);
        step(Hook::CgroupIngress, TCP_SYN | TCP_ACK, p, s + 1, b"", 63, &mut out);
        let req = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\
                    X-aws-ec2-metadata-token: AQAEAExampleTokenValue==\r\nConnection: close\r\n\r\n";
        let flags = TCP_PSH | TCP_ACK;
        step(Hook::CgroupEgress, flags, s + 1, p + 1, req, 64, &mut out);
        let n = req.len() as u32;
        let reply = b"HTTP/1.1 200 OK\r\n";
        step(Hook::CgroupIngress, flags, p + 1, s + 1 + n, reply, 63, &mut out);
        let r = out.last_mut().expect("the reply");
        r.folded = observer_ebpf::FOLDED_REPLY | observer_ebpf::FOLDED_REQUEST;
        (r.host_ttl, r.host_status, r.host_ifindex) = (64, 200, UPLINK);
        (r.host_req_ttl, r.host_req_flags, r.host_req_seq) = (63, flags, s + 1);
        step(Hook::CgroupEgress, TCP_FIN | TCP_ACK, s + 1 + n, p + 200, b"", 64, &mut out);
    }
    out
}

#[derive(Clone, Copy)]
struct Conn {
    cgroup: u64,
    cookie: u64,
    addr: [u8; 4],
    port: u16,
    seq: u32,
    peer_seq: u32,
}

impl Conn {
    fn blank(&self, hook: Hook, ts: u64) -> Record {
        // SAFETY: Record is plain old data; all zeroes is a valid value.
        let mut r: Record = unsafe { std::mem::zeroed() };
        r.hook = hook as u8;
        r.ts_ns = ts;
        r.family = 4;
        r
    }

    fn connect(&self, ts: u64) -> Record {
        let mut r = self.blank(Hook::Connect, ts);
        r.cgroup_id = self.cgroup;
        r.cookie = self.cookie;
        r.pid_tgid = (10_000 + self.cgroup) << 32;
        r.folded = observer_ebpf::FOLDED_SYN;
        r.netns_cookie = 100 + self.cgroup;
        r.dport = 80;
        r.daddr[..4].copy_from_slice(&IMDS);
        r.comm[..4].copy_from_slice(b"bash");
        r
    }

    /// A TCP segment at `hook`; from the endpoint on the ingress hooks.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        hook: Hook,
        ts: u64,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
        ttl: u8,
    ) -> Record {
        let mut r = self.blank(hook, ts);
        let socket = matches!(hook, Hook::CgroupEgress | Hook::CgroupIngress);
        if socket {
            r.cgroup_id = self.cgroup;
            r.cookie = self.cookie;
        } else {
            r.ifindex = UPLINK;
        }
        let inbound = matches!(hook, Hook::CgroupIngress | Hook::TcIngress);
        let (src, dst, sport, dport) = if inbound {
            (IMDS, self.addr, 80, self.port)
        } else {
            (self.addr, IMDS, self.port, 80)
        };
        let total = 40 + payload.len();
        let p = &mut r.data;
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = ttl;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&ack.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&64_240u16.to_be_bytes());
        p[40..total].copy_from_slice(payload);
        // A reply's body never crosses: the kernel keeps its status line.
        r.pkt_len =
            if inbound && !payload.is_empty() { total as u32 + 1_200 } else { total as u32 };
        r.snap_len = total as u32;
        r
    }
}
