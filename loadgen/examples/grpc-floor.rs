//! The floor under single-user pushes on a machine: a bare tonic unary call.
//!
//! Serves `grpc.health.v1.Health` (nothing behind it: no Redis, no authentication, no
//! delivery) from a tokio runtime with `--server-threads` workers, as the gateway is run
//! in the benchmarks, and calls `Check` from `--clients` callers, each on its own HTTP/2
//! connection with one call in flight (as `redis-benchmark -c 50 -P 1`). A push is such a
//! call plus a Redis script plus a delivery, so it cannot go faster than this.
//!
//! ```sh
//! cargo run --release -p push-loadgen --example grpc-floor -- --clients 50
//! ```
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser, Debug)]
#[command(about = "Bare tonic unary calls: the floor under single-user pushes")]
struct Args {
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Seconds of calling.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

// Every binary of the workspace declares mimalloc (docs/ARCHITECTURE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    push_common::memory::init();
    let args = Args::parse();
    anyhow::ensure!(args.clients > 0 && args.server_threads > 0 && args.seconds > 0, "bad arguments");

    // The server, on its own runtime and threads.
    let server_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.server_threads).enable_all().build()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    server_rt.spawn(async move {
        let (_, health) = tonic_health::server::health_reporter();
        let incoming = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
            Err(e) => return eprintln!("listen: {e}"),
        };
        if let Err(e) = Server::builder().add_service(health).serve_with_incoming(incoming).await {
            eprintln!("server: {e}");
        }
    });

    // The callers, on a default runtime (one worker per core), as push-loadgen.
    let client_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let elapsed = client_rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..args.clients {
            let channel = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
            clients.push(HealthClient::new(channel));
        }
        let start = Instant::now();
        let until = start + Duration::from_secs(args.seconds);
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let (calls, errors) = (calls.clone(), errors.clone());
                tokio::spawn(async move {
                    while Instant::now() < until {
                        match c.check(HealthCheckRequest { service: String::new() }).await {
                            Ok(_) => calls.fetch_add(1, Relaxed),
                            Err(_) => errors.fetch_add(1, Relaxed),
                        };
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        anyhow::Ok(start.elapsed())
    })?;
    let n = calls.load(Relaxed);
    println!(
        "bare tonic unary calls (grpc.health.v1 Check), {} clients, {} server thread(s): {:.0} calls/s ({} errors)",
        args.clients,
        args.server_threads,
        n as f64 / elapsed.as_secs_f64(),
        errors.load(Relaxed)
    );
    Ok(())
}
