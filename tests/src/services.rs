//! One service at a time: presence-svc, profile-svc and push-gateway in-process on
//! `127.0.0.1:0` ([`Running`]), or the gateway as a process of its own
//! ([`GatewayProcess`]). [`crate::App`] wires the three together; these are for tests
//! that wire them differently (a second sweeper, TLS between the hops).
use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use clap::Parser;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{App, wait::wait_health};

/// A service running in-process; stopped (gracefully) on drop.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Sends the shutdown signal and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts presence-svc on `redis_url`; `extra` are more flags (e.g. `--min-ttl 50ms`).
pub async fn presence(redis_url: &str, extra: &[&str]) -> Running {
    let config: presence_svc::Config = parse(args("presence-svc", "127.0.0.1:0", redis_url, &[], extra));
    spawn(|l, rx| presence_svc::serve(l, config, stopped(rx))).await
}

/// Starts profile-svc on `redis_url`.
pub async fn profile(redis_url: &str, extra: &[&str]) -> Running {
    let config: profile_svc::Config = parse(args("profile-svc", "127.0.0.1:0", redis_url, &[], extra));
    spawn(|l, rx| profile_svc::serve(l, config, stopped(rx))).await
}

/// Starts push-gateway on `redis_url` in front of the given internal services. It may
/// not be SERVING yet (see [`wait_health`]).
pub async fn gateway(redis_url: &str, presence_url: &str, profile_url: &str, extra: &[&str]) -> Running {
    let config: push_gateway::Config = parse(gateway_args("127.0.0.1:0", redis_url, presence_url, profile_url, extra));
    spawn(|l, rx| push_gateway::serve(l, config, stopped(rx))).await
}

/// Common flags: fast health probes and a short drain so tests do not wait (a test of
/// the drain itself gives its own delay and window; the last value of a flag wins).
const FAST: [&str; 6] = ["--health-interval", "100ms", "--shutdown-grace", "1s", "--drain-delay", "0s"];

/// A service's command line as the tests run it: `listen`, `redis_url`, the FAST flags,
/// `fixed` and `extra`. Most tests run without authentication; the security tests
/// configure credentials (an internal token file), and then nothing is insecure.
fn args(name: &str, listen: &str, redis_url: &str, fixed: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args = vec![name.to_owned(), "--listen".into(), listen.into()];
    args.extend(redis_flags(redis_url));
    args.extend(fixed.iter().chain(FAST.iter()).map(|s| s.to_string()));
    if !extra.contains(&"--internal-token-file") {
        args.push("--insecure-no-auth".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The flags that reach a harness Redis URL: `--redis-url URL`, or for a cluster
/// (`cluster:NODE,NODE,...`, see `RedisServer::url`) `--redis-cluster-nodes`, or for
/// Sentinel (`sentinel:MASTER@SENTINEL,SENTINEL,...[|MASTER_URL]`) the sentinels, the
/// master name (and --redis-url).
pub fn redis_flags(url: &str) -> Vec<String> {
    let flags: Vec<&str> = if let Some(nodes) = url.strip_prefix("cluster:") {
        vec!["--redis-cluster-nodes", nodes]
    } else if let Some((master, sentinels)) = url.strip_prefix("sentinel:").and_then(|s| s.split_once('@')) {
        // `SENTINELS|URL`: the master's scheme (e.g. `rediss://`) for --redis-url.
        match sentinels.split_once('|') {
            Some((sentinels, scheme)) => {
                vec!["--redis-sentinels", sentinels, "--redis-sentinel-master", master, "--redis-url", scheme]
            }
            None => vec!["--redis-sentinels", sentinels, "--redis-sentinel-master", master],
        }
    } else {
        vec!["--redis-url", url]
    };
    flags.into_iter().map(String::from).collect()
}

/// The gateway's command line: a short RPC timeout and a fast hub probe besides.
fn gateway_args(listen: &str, redis_url: &str, presence_url: &str, profile_url: &str, extra: &[&str]) -> Vec<String> {
    let fixed = [
        "--presence-url",
        presence_url,
        "--profile-url",
        profile_url,
        "--rpc-timeout",
        "3s",
        "--hub-probe-interval",
        "500ms",
        "--stream-drain-window",
        "0s",
    ];
    args("push-gateway", listen, redis_url, &fixed, extra)
}

/// Parses a command line; a bad flag fails the test that gave it (clap's own `exit`
/// would end the whole test binary).
fn parse<C: Parser>(args: Vec<String>) -> C {
    C::try_parse_from(&args).unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")))
}

async fn spawn<F, Fut>(serve: F) -> Running
where
    F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = Result<(), push_common::BoxError>> + Send + 'static,
{
    init_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let fut = serve(listener, rx);
    let task = tokio::spawn(async move {
        if let Err(e) = fut.await {
            panic!("service failed: {e}");
        }
    });
    Running { addr, stop: Some(tx), task }
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        push_common::telemetry::init();
    }
}

async fn stopped(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

/// A gateway replica in a process of its own, which a test can kill with SIGKILL.
pub struct GatewayProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl GatewayProcess {
    /// Starts `bin` (the test crate's `gateway-process`, from `env!("CARGO_BIN_EXE_…")`)
    /// in front of `app`'s Redis and internal services; returns once it is SERVING.
    pub async fn start(bin: &str, app: &App, extra: &[&str]) -> GatewayProcess {
        Self::start_on(bin, [&app.redis.url(), &app.presence.url(), &app.profile.url()], extra, &[]).await
    }

    /// As [`GatewayProcess::start`], in front of the given Redis, presence-svc and
    /// profile-svc URLs, with more environment variables.
    pub async fn start_on(bin: &str, urls: [&str; 3], extra: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let args = gateway_args(&addr.to_string(), urls[0], urls[1], urls[2], extra);
        let log = if std::env::var_os("TEST_LOG").is_some() { "info" } else { "off" };
        let child = Command::new(bin)
            .args(&args[1..])
            .env("RUST_LOG", log)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let process = GatewayProcess { child, addr };
        wait_health(addr, "", ServingStatus::Serving).await;
        process
    }

    /// SIGKILL: no drain, no goodbye, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
