//! The floor under fan-out latency on a machine: no HTTP/2, no gRPC, no Redis.
//!
//! Opens `--streams` loopback TCP connections, then `--rounds` times (at `--rate` per
//! second) writes one `--payload`-byte message to every connection from `--writers` plain
//! threads, while a tokio runtime shaped like push-loadgen's (one task per connection)
//! reads them. It prints the latency of the *last* receiver of each round, the figure
//! the gateway's fan-out target is about, and the CPU each side spent per delivery.
//!
//! ```sh
//! cargo run --release -p push-loadgen --example tcp-floor -- --streams 5000 --writers 1
//! ```
use std::{
    io::Write,
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug)]
#[command(about = "Raw loopback TCP fan-out: the floor under the gateway's fan-out latency")]
struct Args {
    #[arg(long, default_value_t = 5000)]
    streams: usize,
    /// Threads writing a round (each writes to its share of the connections).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Threads of the reading runtime (0: one per core, as push-loadgen).
    #[arg(long, default_value_t = 0)]
    reader_threads: usize,
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    #[arg(long, default_value_t = 80)]
    rounds: usize,
    #[arg(long, default_value_t = 150)]
    payload: usize,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// CPU time of this process so far, user and system (clock ticks from /proc).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, r)| r.split(' ').collect()).unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
    (field(11), field(12))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.streams > 0 && args.writers > 0 && args.rate > 0.0 && args.payload >= 8, "bad arguments");
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.reader_threads > 0 {
        rt.worker_threads(args.reader_threads);
    }
    let rt = rt.enable_all().build()?;

    // Connect every pair; the accepted ends are the "server" side that writes.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (mut servers, mut clients) = (Vec::new(), Vec::new());
    for _ in 0..args.streams {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        c.set_nodelay(true)?;
        c.set_nonblocking(true)?;
        servers.push(s);
        clients.push(c);
    }

    // Readers: one task per connection, recording the last receipt of each round.
    let last_rx: Arc<Vec<AtomicU64>> = Arc::new((0..args.rounds).map(|_| AtomicU64::new(0)).collect());
    let received = Arc::new(AtomicU64::new(0));
    for c in clients {
        let (last_rx, received, size) = (last_rx.clone(), received.clone(), args.payload);
        rt.spawn(async move {
            let Ok(mut c) = tokio::net::TcpStream::from_std(c) else { return };
            let mut buf = vec![0u8; size];
            while c.read_exact(&mut buf).await.is_ok() {
                let now = now_ns();
                let round = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default()) as usize;
                if let Some(slot) = last_rx.get(round) {
                    slot.fetch_max(now, Relaxed);
                }
                received.fetch_add(1, Relaxed);
            }
        });
    }

    // Writers: each round, every writer writes to its share, starting together.
    let per = servers.len().div_ceil(args.writers);
    let mut shares: Vec<Vec<TcpStream>> = Vec::new();
    while !servers.is_empty() {
        let rest = servers.split_off(per.min(servers.len()));
        shares.push(std::mem::replace(&mut servers, rest));
    }
    let start = Instant::now() + Duration::from_millis(500);
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..args.rounds).map(|_| AtomicU64::new(0)).collect());
    let (cpu0, wall0) = (cpu_ticks(), Instant::now());
    let writers: Vec<_> = shares
        .into_iter()
        .map(|mut share| {
            let (sent, rate, rounds, size) = (sent.clone(), args.rate, args.rounds, args.payload);
            std::thread::spawn(move || {
                let mut msg = vec![0u8; size];
                for round in 0..rounds {
                    let at = start + Duration::from_secs_f64(round as f64 / rate);
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let t = now_ns();
                    // The first writer's clock starts the round, as a push call would.
                    let _ = sent[round].compare_exchange(0, t, Relaxed, Relaxed);
                    msg[..8].copy_from_slice(&(round as u64).to_be_bytes());
                    for s in &mut share {
                        let _ = s.write_all(&msg);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        let _ = w.join();
    }
    let expected = (args.rounds * args.streams) as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Relaxed) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (cpu1, wall) = (cpu_ticks(), wall0.elapsed());

    let mut fanout = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for (s, r) in sent.iter().zip(last_rx.iter()) {
        let (s, r) = (s.load(Relaxed), r.load(Relaxed));
        if s > 0 && r > s {
            fanout.record((r - s) / 1000)?;
        }
    }
    let ms = |q: f64| fanout.value_at_quantile(q) as f64 / 1000.0;
    let got = received.load(Relaxed);
    let ticks = (cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1) as f64;
    let sys = cpu1.1.saturating_sub(cpu0.1) as f64;
    println!(
        "raw TCP fan-out: {} streams, {} writer thread(s), {} B at {}/s, {} rounds",
        args.streams, args.writers, args.payload, args.rate, args.rounds
    );
    println!("deliveries    {got} of {expected}");
    println!(
        "fan-out       p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (first write to last receipt)",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    println!(
        "cpu           {:.1} µs per delivery, both sides ({:.0}% in the kernel), over {:.1}s",
        ticks * 10_000.0 / got.max(1) as f64,
        if ticks > 0.0 { sys * 100.0 / ticks } else { 0.0 },
        wall.as_secs_f64()
    );
    Ok(())
}
