//! End-to-end test harness: a real `redis-server` per test, and the real services
//! in-process on `127.0.0.1:0`.
//!
//! - [`RedisServer`] spawns `redis-server` (no persistence) on a unix socket in a fresh
//!   temp dir, can stop and restart it on the same socket, and kills it on drop.
//! - [`App`] starts presence-svc, profile-svc and push-gateway against it and hands out
//!   clients. Each service stops when the `App` drops.
//!
//! Set `TEST_LOG=1` to see the services' logs.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use clap::Parser;
use push_proto::{
    presence::v1::presence_client::PresenceClient, profile::v1::profile_client::ProfileClient,
    push::v1::push_gateway_client::PushGatewayClient,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A `redis-server` owned by one test.
pub struct RedisServer {
    dir: PathBuf,
    child: Option<Child>,
    /// Extra `redis-server` flags (they override the defaults).
    flags: Vec<String>,
    /// The URL services connect with, when not the unix socket (e.g. `rediss://`).
    service_url: Option<String>,
}

impl RedisServer {
    /// Starts a fresh server; panics with a hint when `redis-server` is missing.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a fresh server with extra flags, e.g. `["--appendonly", "yes"]`; they
    /// stay in force across restarts (which keep the data directory).
    pub fn start_with(flags: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "push-tests-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let flags = flags.iter().map(|f| f.to_string()).collect();
        let mut server = Self { dir, child: None, flags, service_url: None };
        server.restart();
        server
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// The URL services connect with: the unix socket unless [`RedisServer::serve_at`]
    /// said otherwise.
    pub fn url(&self) -> String {
        self.service_url.clone().unwrap_or_else(|| self.socket_url())
    }

    /// Services connect with `url` (e.g. a `rediss://` one) instead of the socket.
    pub fn serve_at(&mut self, url: &str) {
        self.service_url = Some(url.to_owned());
    }

    fn socket_url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// A plain client for assertions on the data (DBSIZE, key scans), on the socket.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.socket_url()).expect("redis client")
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// (Re)starts the server on the same socket and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .args(&self.flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} ({e}); run ./scripts/test.sh, which installs it"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.client().get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Freezes the server (SIGSTOP): it keeps its connections but answers nothing,
    /// as a Redis stuck on a slow disk or a long script would.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().expect("kill").success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Number of keys in the database.
    pub fn dbsize(&self) -> i64 {
        let mut c = self.client().get_connection().expect("redis connection");
        redis::cmd("DBSIZE").query(&mut c).expect("DBSIZE")
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut c = self.client().get_connection().expect("redis connection");
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("KEYS");
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

/// Most tests run without authentication; the security tests configure credentials
/// (an internal token file), and then nothing is insecure.
fn insecure_unless_configured(extra: &[&str]) -> Option<&'static str> {
    (!extra.contains(&"--internal-token-file")).then_some("--insecure-no-auth")
}

/// Common flags: fast health probes and a short drain so tests do not wait.
const FAST: [&str; 4] = ["--health-interval", "100ms", "--shutdown-grace", "1s"];

/// Starts presence-svc; `extra` are more flags (e.g. `--min-ttl 50ms`).
pub async fn presence(redis_url: &str, extra: &[&str]) -> Running {
    let mut args = vec!["presence-svc", "--listen", "127.0.0.1:0", "--redis-url", redis_url];
    args.extend(FAST);
    args.extend(insecure_unless_configured(extra));
    args.extend(extra);
    let config = presence_svc::Config::parse_from(args);
    spawn(|l, rx| presence_svc::serve(l, config, stopped(rx))).await
}

/// Starts profile-svc.
pub async fn profile(redis_url: &str, extra: &[&str]) -> Running {
    let mut args = vec!["profile-svc", "--listen", "127.0.0.1:0", "--redis-url", redis_url];
    args.extend(FAST);
    args.extend(insecure_unless_configured(extra));
    args.extend(extra);
    let config = profile_svc::Config::parse_from(args);
    spawn(|l, rx| profile_svc::serve(l, config, stopped(rx))).await
}

/// Starts push-gateway on `redis_url` in front of the given internal services.
pub async fn gateway(redis_url: &str, presence_url: &str, profile_url: &str, extra: &[&str]) -> Running {
    let args = gateway_args("127.0.0.1:0", redis_url, presence_url, profile_url, extra);
    let config = push_gateway::Config::parse_from(args);
    spawn(|l, rx| push_gateway::serve(l, config, stopped(rx))).await
}

/// The gateway's command line as the tests run it.
fn gateway_args(listen: &str, redis_url: &str, presence_url: &str, profile_url: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "push-gateway",
        "--listen",
        listen,
        "--redis-url",
        redis_url,
        "--presence-url",
        presence_url,
        "--profile-url",
        profile_url,
        "--rpc-timeout",
        "3s",
        "--hub-probe-interval",
        "500ms",
    ];
    args.extend(FAST);
    args.extend(insecure_unless_configured(extra));
    args.extend(extra);
    args.into_iter().map(String::from).collect()
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
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let args = gateway_args(&addr.to_string(), &app.redis.url(), &app.presence.url(), &app.profile.url(), extra);
        let child = Command::new(bin)
            .args(&args[1..])
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

/// A whole system on one fresh Redis.
pub struct App {
    pub redis: RedisServer,
    pub presence: Running,
    pub profile: Running,
    pub gateway: Running,
}

impl App {
    /// Starts everything; `presence_flags` tune presence (short TTLs for expiry tests).
    pub async fn start(presence_flags: &[&str]) -> Self {
        Self::start_with(presence_flags, &[]).await
    }

    /// Starts everything with extra flags for presence and for the gateway.
    pub async fn start_with(presence_flags: &[&str], gateway_flags: &[&str]) -> Self {
        Self::start_on(RedisServer::start(), presence_flags, gateway_flags).await
    }

    /// Starts everything on a given Redis.
    pub async fn start_on(redis: RedisServer, presence_flags: &[&str], gateway_flags: &[&str]) -> Self {
        Self::start_full(redis, presence_flags, &[], gateway_flags).await
    }

    /// Starts everything with extra flags for each service (e.g. credentials).
    pub async fn start_full(
        redis: RedisServer,
        presence_flags: &[&str],
        profile_flags: &[&str],
        gateway_flags: &[&str],
    ) -> Self {
        let presence = presence(&redis.url(), presence_flags).await;
        let profile = profile(&redis.url(), profile_flags).await;
        let gateway = gateway(&redis.url(), &presence.url(), &profile.url(), gateway_flags).await;
        let app = Self { redis, presence, profile, gateway };
        wait_health(app.gateway.addr, "", ServingStatus::Serving).await;
        app
    }

    /// Another gateway replica on the same Redis and internal services.
    pub async fn replica(&self, gateway_flags: &[&str]) -> Running {
        self.replica_via(&self.redis.url(), gateway_flags).await
    }

    /// Another gateway replica reaching Redis at `redis_url` (e.g. through a [`Proxy`]).
    pub async fn replica_via(&self, redis_url: &str, gateway_flags: &[&str]) -> Running {
        let g = gateway(redis_url, &self.presence.url(), &self.profile.url(), gateway_flags).await;
        wait_health(g.addr, "", ServingStatus::Serving).await;
        g
    }

    pub async fn gateway_client(&self) -> PushGatewayClient<Channel> {
        Self::gateway_client_at(self.gateway.addr).await
    }

    pub async fn gateway_client_at(addr: SocketAddr) -> PushGatewayClient<Channel> {
        PushGatewayClient::new(channel(addr).await)
    }

    pub async fn presence_client(&self) -> PresenceClient<Channel> {
        PresenceClient::new(channel(self.presence.addr).await)
    }

    pub async fn profile_client(&self) -> ProfileClient<Channel> {
        ProfileClient::new(channel(self.profile.addr).await)
    }
}

/// A gateway client that sends `bearer` (an API key or a device token) with every call.
pub async fn authorized(
    addr: SocketAddr,
    bearer: &str,
) -> PushGatewayClient<tonic::service::interceptor::InterceptedService<Channel, SendBearer>> {
    authorized_on(channel(addr).await, bearer)
}

/// Like `authorized`, on a given channel (e.g. a TLS one).
pub fn authorized_on(
    channel: Channel,
    bearer: &str,
) -> PushGatewayClient<tonic::service::interceptor::InterceptedService<Channel, SendBearer>> {
    PushGatewayClient::with_interceptor(channel, SendBearer::new(Some(bearer)).expect("ascii token"))
}

/// A TLS channel to `localhost:<port of addr>` trusting `ca_pem`, presenting
/// `identity` (certificate and key PEM) when given.
pub async fn tls_channel(addr: SocketAddr, ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://localhost:{}", addr.port())).unwrap();
    let endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?.connect_timeout(Duration::from_secs(5));
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

pub use push_common::auth::SendBearer;

/// A connected channel to a loopback server.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

/// The health of `service` at `addr` (None when the call itself fails).
pub async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let conn = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.ok()?;
    let mut c = HealthClient::new(conn);
    let r = c.check(HealthCheckRequest { service: service.into() }).await.ok()?;
    ServingStatus::try_from(r.get_ref().status).ok()
}

/// Waits (up to 15 s) until `service` at `addr` reports `want`; panics otherwise.
pub async fn wait_health(addr: SocketAddr, service: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = health(addr, service).await;
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} {service:?}: health stayed {got:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it returns true, for at most `within`; panics with `what`
/// otherwise. The one deadline loop of the suites.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A device's open stream, read in the background into a channel.
pub struct Device {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<push_proto::push::v1::Message, tonic::Status>>,
    task: JoinHandle<()>,
    track: std::sync::Arc<std::sync::Mutex<Track>>,
}

/// What a device remembers to resume: per history its epoch and last message id, and
/// every HistoryState it was sent.
#[derive(Default)]
pub struct Track {
    /// (audience, group id) → (epoch, last message id).
    pub positions: std::collections::BTreeMap<(i32, String), (String, String)>,
    pub states: Vec<push_proto::push::v1::HistoryState>,
    /// Every message received: (audience, group id, message id, topic).
    pub received: Vec<(i32, String, String, String)>,
}

impl Device {
    /// Opens `Subscribe` for `user`/`device` on the gateway at `addr`; returns once the
    /// stream is established (the gateway answered with its headers).
    pub async fn connect(addr: SocketAddr, user: &str, device: &str) -> Result<Device, tonic::Status> {
        Self::resume(addr, user, device, Vec::new()).await
    }

    /// Like `connect`, resuming from `cursors`.
    pub async fn resume(
        addr: SocketAddr,
        user: &str,
        device: &str,
        cursors: Vec<push_proto::push::v1::Cursor>,
    ) -> Result<Device, tonic::Status> {
        Self::resume_on(channel(addr).await, user, device, cursors).await
    }

    /// Like `resume`, on a given (possibly shared) connection.
    pub async fn resume_on(
        channel: Channel,
        user: &str,
        device: &str,
        cursors: Vec<push_proto::push::v1::Cursor>,
    ) -> Result<Device, tonic::Status> {
        Self::resume_as(channel, None, user, device, cursors).await
    }

    /// Like `resume_on`, with `authorization: Bearer <bearer>` (a device token or key).
    pub async fn resume_as(
        channel: Channel,
        bearer: Option<&str>,
        user: &str,
        device: &str,
        cursors: Vec<push_proto::push::v1::Cursor>,
    ) -> Result<Device, tonic::Status> {
        let mut c = PushGatewayClient::with_interceptor(channel, SendBearer::new(bearer).expect("ascii token"));
        let req = push_proto::push::v1::SubscribeRequest { user_id: user.into(), device_id: device.into(), cursors };
        let mut stream = c.subscribe(req).await?.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let track = std::sync::Arc::new(std::sync::Mutex::new(Track::default()));
        let t = track.clone();
        let task = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(item)) => {
                        {
                            let mut t = t.lock().unwrap();
                            for s in &item.states {
                                let c = s.cursor.clone().unwrap_or_default();
                                t.positions.insert((c.audience, c.group_id), (c.epoch, c.message_id));
                                t.states.push(s.clone());
                            }
                            for m in &item.messages {
                                t.received.push((m.audience, m.group_id.clone(), m.id.clone(), m.topic.clone()));
                                let key = (m.audience, m.group_id.clone());
                                if let Some(p) = t.positions.get_mut(&key) {
                                    p.1 = m.id.clone();
                                }
                            }
                        }
                        for m in item.messages {
                            if tx.send(Ok(m)).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(s) => {
                        let _ = tx.send(Err(s));
                        return;
                    }
                }
            }
        });
        Ok(Device { rx, task, track })
    }

    /// Where to resume: a cursor per history this device has been told about.
    pub fn cursors(&self) -> Vec<push_proto::push::v1::Cursor> {
        let t = self.track.lock().unwrap();
        t.positions
            .iter()
            .map(|((audience, group_id), (epoch, message_id))| push_proto::push::v1::Cursor {
                audience: *audience,
                group_id: group_id.clone(),
                epoch: epoch.clone(),
                message_id: message_id.clone(),
            })
            .collect()
    }

    /// Every message received so far: (audience, group id, message id, topic).
    pub fn received(&self) -> Vec<(i32, String, String, String)> {
        self.track.lock().unwrap().received.clone()
    }

    /// How many messages were received so far.
    pub fn received_count(&self) -> usize {
        self.track.lock().unwrap().received.len()
    }

    /// True once the stream has ended (its reader stopped).
    pub fn ended(&self) -> bool {
        self.task.is_finished()
    }

    /// The HistoryStates received so far.
    pub fn states(&self) -> Vec<push_proto::push::v1::HistoryState> {
        self.track.lock().unwrap().states.clone()
    }

    /// Waits (up to 10 s) until the stream has reported a state for `n` histories.
    pub async fn wait_states(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.track.lock().unwrap().positions.len() < n {
            assert!(Instant::now() < deadline, "fewer than {n} history states within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The next message (panics after 10 s, or if the stream ended with an error).
    pub async fn next(&mut self) -> push_proto::push::v1::Message {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.recv()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(s))) => panic!("stream ended with {s:?}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("no message within 10 s"),
        }
    }

    /// How the stream ended: waits (up to 10 s) for its status, skipping messages.
    pub async fn end(&mut self) -> Option<tonic::Status> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(s))) => return Some(s),
                Ok(None) => return None,
                Err(_) => panic!("the stream did not end within 10 s"),
            }
        }
    }

    /// Every message received so far, without waiting.
    pub fn drain(&mut self) -> Vec<push_proto::push::v1::Message> {
        let mut out = Vec::new();
        while let Ok(Ok(m)) = self.rx.try_recv() {
            out.push(m);
        }
        out
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("received", &self.received_count()).finish()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy on 127.0.0.1 in front of a Redis unix socket that can make Pub/Sub
/// connections look alive and deliver nothing: while `swallow` is set, what Redis sends
/// on a connection that has sent SUBSCRIBE is dropped (the connection stays open).
pub struct Proxy {
    pub addr: SocketAddr,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(redis: &RedisServer) -> Proxy {
        use std::sync::{Arc, atomic::AtomicBool};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let socket = redis.socket();
        let swallow = Arc::new(AtomicBool::new(false));
        let flag = swallow.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::UnixStream::connect(&socket).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let subscriber = Arc::new(AtomicBool::new(false));
                let (sub, flag) = (subscriber.clone(), flag.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        if buf[..n].windows(9).any(|w| w.eq_ignore_ascii_case(b"subscribe")) {
                            sub.store(true, Ordering::Relaxed);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = sr.read(&mut buf).await {
                        if subscriber.load(Ordering::Relaxed) && flag.load(Ordering::Relaxed) {
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Proxy { addr, swallow, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Starts or stops dropping what Redis sends to subscribers.
    pub fn swallow_pubsub(&self, on: bool) {
        self.swallow.store(on, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
