//! A `redis-server` owned by one test.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A `redis-server` (no persistence unless flags ask for it) on a unix socket in a fresh
/// temp dir. It can be stopped, restarted on the same socket and frozen; it is killed and
/// its dir removed on drop.
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
        // Blocking, not `eventually`: restarts also happen inside `block_in_place`.
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

    /// The Pub/Sub channels matching `pattern` that have subscribers, sorted.
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        let mut c = self.client().get_connection().expect("redis connection");
        let mut chs: Vec<String> = redis::cmd("PUBSUB").arg("CHANNELS").arg(pattern).query(&mut c).expect("PUBSUB");
        chs.sort();
        chs
    }

    /// How many connections are subscribed to `channel` (one per gateway replica that
    /// holds it: each replica has one Pub/Sub connection).
    pub fn subscribers(&self, channel: &str) -> i64 {
        let mut c = self.client().get_connection().expect("redis connection");
        let (_, n): (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query(&mut c).expect("PUBSUB");
        n
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
