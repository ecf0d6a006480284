//! push-loadgen: opens device streams against a deployment, pushes, and measures.
//!
//! It opens `--streams` Subscribe streams (one HTTP/2 connection each, or spread over
//! `--connections`) with push-client, as devices would: a stream that ends (a replica
//! drained, a slow reader cut off) reconnects and resumes from its cursors. Then `--pushers` concurrent callers push to all, to random users or
//! to random groups, at `--rate` pushes/s in total or as fast as they can, for
//! `--duration`. Each payload starts with the push's sequence number and its send time
//! (same machine clock), so every receipt yields an end-to-end latency, and the last
//! receipt of each message its fan-out latency.
//!
//! deliveries/s = all deliveries ÷ (last receipt − first send).
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use push_client::{Client, Event, Gateway};
use push_common::auth::SendBearer;
use push_common::config::duration;
use push_proto::push::v1 as pb;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

mod workers;

use workers::{client, connect, endpoint, push_loop, read};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Mode {
    /// PushToAll: every stream receives every push.
    All,
    /// PushToUsers to `--users-per-push` random users (each stream is its own user).
    Users,
    /// PushToGroup to a random one of `--groups` groups (streams spread evenly).
    Groups,
}

#[derive(Parser, Debug)]
#[command(name = "push-loadgen", version, about = "Load generator for push-gateway")]
struct Args {
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Device streams to open.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// HTTP/2 connections the streams share; 0 means one connection per stream.
    #[arg(long, default_value_t = 0)]
    connections: usize,
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    /// Pushes per second in total; 0 means as fast as the pushers can.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to push.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// How long to wait for deliveries after the last push.
    #[arg(long, default_value = "5s", value_parser = duration)]
    drain: Duration,
    /// Keep the streams open and idle this long before pushing (to measure idle memory).
    #[arg(long, default_value = "0s", value_parser = duration)]
    hold: Duration,
    /// Payload bytes per push (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 132)]
    payload: usize,
    /// Groups in `groups` mode.
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// Users per push in `users` mode.
    #[arg(long, default_value_t = 1)]
    users_per_push: usize,
    /// Concurrent push calls (each on its own connection).
    #[arg(long, default_value_t = 8)]
    pushers: usize,
    /// Prefix of the user, device and group ids this run uses.
    #[arg(long, default_value = "lg")]
    prefix: String,
    /// Credential sent with every call: an admin API key of the gateway (it may open
    /// streams for the load generator's users and push). Unset for a gateway running
    /// with --insecure-no-auth.
    #[arg(long, env = "PUSH_LOADGEN_BEARER", hide_env_values = true)]
    bearer: Option<String>,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// In `users` mode, pushes per call: 1 sends PushToUsers, more send PushBatch calls
    /// of this many single-user pushes (each to its own random user).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// In `users` mode, push to this many users who have no stream (`PREFIX-off<i>`)
    /// instead of the streams' users: the push path alone, with nothing to deliver
    /// (e.g. against `redis-benchmark` running the push script). Allows `--streams 0`.
    #[arg(long, default_value_t = 0)]
    offline_users: usize,
    /// A process on this machine whose CPU time to report per push while pushing (stream
    /// opening excluded): `NAME=PID`, e.g. `gateway=1234`; repeat for several.
    #[arg(long = "cpu-of", value_parser = cpu_of)]
    cpu_of: Vec<(String, u32)>,
    /// Most pushes in one run (bounds the memory for per-message timings).
    #[arg(long, default_value_t = 5_000_000)]
    max_pushes: usize,
}

fn cpu_of(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    Ok((name.to_owned(), pid.parse().map_err(|_| "PID must be a number")?))
}

/// A process's user + system CPU time in clock ticks (1/100 s on Linux), from /proc.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// What every task shares.
struct Shared {
    deliveries: AtomicU64,
    expected: AtomicU64,
    pushed: AtomicU64,
    first_send: AtomicU64,
    last_receipt: AtomicU64,
    /// Send time and last receipt time per push, by sequence number.
    sent: Vec<AtomicU64>,
    last_rx: Vec<AtomicU64>,
    /// End-to-end latency (µs) of every delivery, sharded to keep lock contention low.
    latency: Vec<Mutex<Histogram<u64>>>,
    /// Latency (µs) of every push call (send to answer): with the delivery latency,
    /// it says whether a push waits before the gateway answers or after.
    call_latency: Mutex<Histogram<u64>>,
    push_errors: Mutex<BTreeMap<String, u64>>,
    stream_errors: Mutex<BTreeMap<String, u64>>,
    open_streams: AtomicUsize,
    /// Streams open when the pushing started.
    opened: AtomicUsize,
    /// Of those, how many in each group (`--mode groups`).
    group_opened: Vec<AtomicU64>,
    /// Which streams opened (`--mode users` pushes only to their users, so a stream
    /// that failed to open is never counted as a loss).
    opened_streams: std::sync::OnceLock<Vec<usize>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *map.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
}

fn user(args: &Args, i: usize) -> String {
    format!("{}-u{i}", args.prefix)
}

fn group(args: &Args, i: usize) -> String {
    format!("{}-g{i}", args.prefix)
}

/// One line on why a stream failed to open: the gRPC status, else the error chain (a
/// connection refused, a timeout, too many open files...).
fn open_failure(e: &anyhow::Error) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        return format!("{:?}: {}", s.code(), s.message());
    }
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}

fn pct(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() { "-".into() } else { format!("{:.2} ms", h.value_at_quantile(q) as f64 / 1000.0) }
}

// Every binary of the workspace declares mimalloc (docs/ARCHITECTURE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    push_common::memory::init();
    let args = Arc::new(Args::parse());
    SendBearer::new(args.bearer.as_deref()).map_err(|_| anyhow::anyhow!("--bearer must be printable ASCII"))?;
    anyhow::ensure!(
        args.groups > 0 && (args.streams > 0 || args.offline_users > 0) && args.pushers > 0 && args.batch > 0,
        "streams, groups, pushers and batch must be positive"
    );
    anyhow::ensure!(args.offline_users == 0 || args.mode == Mode::Users, "--offline-users is for --mode users");
    anyhow::ensure!(args.batch == 1 || args.mode == Mode::Users, "--batch is for --mode users");
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Arc<Args>) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        deliveries: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        pushed: AtomicU64::new(0),
        first_send: AtomicU64::new(u64::MAX),
        last_receipt: AtomicU64::new(0),
        sent: (0..args.max_pushes).map(|_| AtomicU64::new(0)).collect(),
        last_rx: (0..args.max_pushes).map(|_| AtomicU64::new(0)).collect(),
        latency: (0..16).map(|_| Mutex::new(histogram())).collect(),
        call_latency: Mutex::new(histogram()),
        push_errors: Mutex::default(),
        stream_errors: Mutex::default(),
        open_streams: AtomicUsize::new(0),
        opened: AtomicUsize::new(0),
        group_opened: (0..args.groups).map(|_| AtomicU64::new(0)).collect(),
        opened_streams: std::sync::OnceLock::new(),
    });

    // Groups: stream i's user belongs to group i % groups.
    if args.mode == Mode::Groups {
        let mut c = client(connect(&args.target).await?, &args.bearer);
        for g in 0..args.groups {
            let members: Vec<String> = (g..args.streams).step_by(args.groups).map(|i| user(&args, i)).collect();
            for chunk in members.chunks(1000) {
                c.join_group(pb::JoinGroupRequest { group_id: group(&args, g), user_ids: chunk.to_vec() }).await?;
            }
        }
    }

    // Open the streams.
    let opening = Instant::now();
    let shared_channels: Vec<Channel> = if args.connections > 0 {
        let mut v = Vec::new();
        for _ in 0..args.connections {
            v.push(connect(&args.target).await?);
        }
        v
    } else {
        Vec::new()
    };
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut opened = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let (args, shared, gate) = (args.clone(), shared.clone(), gate.clone());
        let channel = shared_channels.get(i % shared_channels.len().max(1)).cloned();
        opened.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let gateway: Gateway = match channel {
                Some(c) => c.into(),
                None => endpoint(&args.target)?.into(),
            };
            let mut device = Client::builder([gateway]).user(user(&args, i)).device(format!("{}-d", args.prefix));
            if let Some(bearer) = &args.bearer {
                device = device.token(bearer.as_str());
            }
            let (device, mut events) = device.connect()?;
            // A stream that does not open is counted as a failure, not retried: the run
            // reports what the gateway refused. Once open, the client resumes with its
            // cursors whenever the stream ends.
            match events.recv().await {
                Some(Event::Connected { .. }) => {}
                Some(Event::Disconnected { status, .. } | Event::Stopped { status, .. }) => {
                    device.close();
                    return Err(anyhow::Error::new(status));
                }
                other => anyhow::bail!("the stream's first event was {other:?}"),
            }
            drop(permit);
            shared.open_streams.fetch_add(1, Relaxed);
            shared.group_opened[i % args.groups].fetch_add(1, Relaxed);
            tokio::spawn(read(shared, i % 16, events));
            anyhow::Ok(i)
        }));
    }
    // Why streams failed to open, by reason (a refused Subscribe's status, or the
    // connection error), so a failed open is explained, not just counted.
    let mut open_failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut opened_streams = Vec::with_capacity(args.streams);
    for t in opened {
        match t.await {
            Ok(Ok(i)) => opened_streams.push(i),
            Ok(Err(e)) => *open_failures.entry(open_failure(&e)).or_default() += 1,
            Err(e) => *open_failures.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    let open_errors: u64 = open_failures.values().sum();
    let open = opened_streams.len();
    let _ = shared.opened_streams.set(opened_streams);
    shared.opened.store(open, Relaxed);
    eprintln!(
        "opened {open} streams in {:.1}s ({open_errors} failed) over {} connections",
        opening.elapsed().as_secs_f64(),
        if args.connections > 0 { args.connections } else { open }
    );
    for (why, n) in &open_failures {
        eprintln!("  {n} failed to open: {why}");
    }
    anyhow::ensure!(open > 0 || args.streams == 0, "no stream could be opened against {}", args.target);
    if !args.hold.is_zero() {
        eprintln!("holding {open} idle streams for {:?}", args.hold);
        tokio::time::sleep(args.hold).await;
    }
    if args.duration.is_zero() {
        println!("held {open} streams; no pushes (--duration 0s)");
        return Ok(());
    }

    // Push, with a progress line every second.
    let cpu_before: Vec<Option<u64>> = args.cpu_of.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let pushers: Vec<_> = (0..args.pushers)
        .map(|id| tokio::spawn(push_loop(args.clone(), shared.clone(), next.clone(), start, id)))
        .collect();
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let (mut last_d, mut last_p) = (0, 0);
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                tick.tick().await;
                let (d, p) = (shared.deliveries.load(Relaxed), shared.pushed.load(Relaxed));
                let errors: u64 = shared.push_errors.lock().unwrap_or_else(|e| e.into_inner()).values().sum();
                eprintln!(
                    "[{:>5.1}s] pushes {p} ({}/s)  deliveries {d} ({}/s)  push errors {errors}  open streams {}",
                    start.elapsed().as_secs_f64(),
                    p - last_p,
                    d - last_d,
                    shared.open_streams.load(Relaxed)
                );
                (last_d, last_p) = (d, p);
            }
        })
    };
    for p in pushers {
        let _ = p.await;
    }
    let pushing = start.elapsed();
    let drain_until = Instant::now() + args.drain;
    while shared.deliveries.load(Relaxed) < shared.expected.load(Relaxed) && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.abort();
    let cpu_after: Vec<Option<u64>> = args.cpu_of.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();

    // Report.
    let (d, e, p) = (shared.deliveries.load(Relaxed), shared.expected.load(Relaxed), shared.pushed.load(Relaxed));
    let first = shared.first_send.load(Relaxed);
    let last = shared.last_receipt.load(Relaxed);
    let window = last.saturating_sub(first) as f64 / 1e9;
    let mut latency = histogram();
    for h in &shared.latency {
        latency.add(&*h.lock().unwrap_or_else(|e| e.into_inner()))?;
    }
    let mut fanout = histogram();
    for (s, r) in shared.sent.iter().zip(&shared.last_rx) {
        let (s, r) = (s.load(Relaxed), r.load(Relaxed));
        if s > 0 && r > s {
            fanout.record((r - s) / 1000)?;
        }
    }
    println!(
        "mode {:?}{}, {} streams over {} connections, payload {} B, pushers {}, rate {}",
        args.mode,
        if args.batch > 1 { format!(" (batches of {})", args.batch) } else { String::new() },
        open,
        if args.connections > 0 { args.connections } else { open },
        args.payload.max(16),
        args.pushers,
        if args.rate > 0.0 { format!("{}/s", args.rate) } else { "max".into() }
    );
    println!("pushes        {p} in {:.2}s ({:.0}/s)", pushing.as_secs_f64(), p as f64 / pushing.as_secs_f64());
    println!("deliveries    {d} of {e} expected ({:.3}%)", if e > 0 { d as f64 * 100.0 / e as f64 } else { 0.0 });
    println!(
        "deliveries/s  {:.0}  (all deliveries / (last receipt - first send) = {window:.2}s)",
        if window > 0.0 { d as f64 / window } else { 0.0 }
    );
    println!(
        "latency       p50 {}  p99 {}  max {}  (push call to receipt, every delivery)",
        pct(&latency, 0.5),
        pct(&latency, 0.99),
        pct(&latency, 1.0)
    );
    let calls = shared.call_latency.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "push calls    p50 {}  p99 {}  max {}  (send to the gateway's answer, per call)",
        pct(&calls, 0.5),
        pct(&calls, 0.99),
        pct(&calls, 1.0)
    );
    drop(calls);
    if args.mode != Mode::Users {
        println!(
            "fan-out       p50 {}  p99 {}  max {}  (push call to the last receiver, per message)",
            pct(&fanout, 0.5),
            pct(&fanout, 0.99),
            pct(&fanout, 1.0)
        );
    }
    for (((name, _), before), after) in args.cpu_of.iter().zip(&cpu_before).zip(&cpu_after) {
        if let (Some(b), Some(a), true) = (before, after, p > 0) {
            let us = (a - b) as f64 * 10_000.0; // ticks of 10 ms
            let per_delivery = if d > 0 { format!(", {:.1} µs per delivery", us / d as f64) } else { String::new() };
            println!("cpu {name:<9} {:.1} µs per push{per_delivery} (while pushing and draining)", us / p as f64);
        }
    }
    println!("push errors   {:?}", shared.push_errors.lock().unwrap_or_else(|e| e.into_inner()));
    println!(
        "stream ends   {:?}  (open failures: {open_errors} {open_failures:?})",
        shared.stream_errors.lock().unwrap_or_else(|e| e.into_inner())
    );
    Ok(())
}
