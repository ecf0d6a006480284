//! The Redis of one test: a single `redis-server`, or (with `PUSH_TEST_REDIS=cluster`)
//! a Redis Cluster of 3 masters with a replica each, so the whole end-to-end suite runs
//! on either (`scripts/test.sh` runs it on both).
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Which Redis the suite runs on (`PUSH_TEST_REDIS`: `single`, the default, or `cluster`).
pub fn on_cluster() -> bool {
    std::env::var("PUSH_TEST_REDIS").is_ok_and(|v| v == "cluster")
}

/// A fresh temp dir of this test process.
pub(crate) fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "push-tests-{what}-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A loopback TCP port that is free, with its cluster bus port (+10000) free too.
pub(crate) fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server` process: its dir, how it listens, its flags.
pub struct Node {
    pub(crate) dir: PathBuf,
    child: Option<Child>,
    /// A TCP port on 127.0.0.1; None: the unix socket in `dir`.
    pub(crate) port: Option<u16>,
    flags: Vec<String>,
    /// Arguments before the port (a config file, `--sentinel`).
    leading: Vec<String>,
}

impl Node {
    pub(crate) fn new(dir: PathBuf, port: Option<u16>, flags: Vec<String>) -> Node {
        Node { dir, child: None, port, flags, leading: Vec::new() }
    }

    /// A node whose command line starts with `leading` (a sentinel: its config file
    /// and `--sentinel`), and has no data options.
    pub(crate) fn new_with_leading(dir: PathBuf, port: Option<u16>, leading: Vec<String>) -> Node {
        Node { dir, child: None, port, flags: Vec::new(), leading }
    }

    pub fn url(&self) -> String {
        match self.port {
            Some(p) => format!("redis://127.0.0.1:{p}"),
            None => format!("redis+unix://{}", self.dir.join("redis.sock").display()),
        }
    }

    pub(crate) fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis client")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("redis.sock"));
    }

    /// (Re)starts the process, without waiting for it to answer.
    pub(crate) fn spawn(&mut self) {
        self.stop();
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.args(&self.leading);
        match self.port {
            Some(p) => cmd.args(["--port", &p.to_string(), "--bind", "127.0.0.1"]),
            None => cmd
                .args(["--port", "0", "--unixsocket"])
                .arg(self.dir.join("redis.sock"))
                .args(["--unixsocketperm", "700"]),
        };
        if self.leading.is_empty() {
            // A replica's first sync starts at once, not after the 5 s a diskless master
            // waits by default for more replicas to join the transfer.
            cmd.args(["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]);
        }
        cmd.arg("--dir").arg(&self.dir).args(&self.flags);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} ({e}); run ./scripts/test.sh, which installs it"));
        self.child = Some(child);
    }

    /// Waits until it answers PING. Blocking, not `eventually`: restarts also happen
    /// inside `block_in_place`.
    pub(crate) fn wait_up(&mut self) {
        assert!(self.came_up(), "redis-server did not come up");
    }

    /// Waits until it answers PING: false if it exited first (e.g. its port was taken
    /// between `free_port` and its bind) or did not answer in time.
    pub(crate) fn came_up(&mut self) -> bool {
        // Generous: a Cluster test starts six servers while other tests run.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let exited = self.child.as_mut().is_none_or(|c| c.try_wait().is_ok_and(|s| s.is_some()));
            if exited || Instant::now() > deadline {
                return false;
            }
            // The server answering must be ours: when our bind failed, another test's
            // server may hold the port.
            if let Ok(mut c) = self.client().get_connection()
                && let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut c)
            {
                let pid = self.child.as_ref().map(|c| c.id().to_string());
                let ours = info.lines().any(|l| l.trim().strip_prefix("process_id:") == pid.as_deref());
                return ours;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().expect("kill").success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut c = self.client().get_connection()?;
        cmd.query(&mut c)
    }

    /// True when this node is a master and every replica it lists has acknowledged its
    /// whole replication stream. (`WAIT` cannot tell: it waits only for the writes of
    /// the connection that sends it, and a fresh connection has written nothing.)
    pub(crate) fn replicas_caught_up(&self) -> bool {
        let info: String = self.query(&redis::cmd("INFO").arg("replication").to_owned()).unwrap_or_default();
        let field = |line: &str, name: &str| -> Option<u64> {
            line.split([',', ':']).find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        let lines: Vec<&str> = info.lines().map(str::trim).collect();
        let master = lines.iter().find_map(|l| l.strip_prefix("master_repl_offset:")?.parse::<u64>().ok());
        let replicas: Vec<u64> = lines
            .iter()
            .filter(|l| l.starts_with("slave") && l.contains("ip="))
            .filter_map(|l| field(l, "offset"))
            .collect();
        lines.contains(&"role:master")
            && !replicas.is_empty()
            && master.is_some_and(|m| replicas.iter().all(|&r| r >= m))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Servers in a test cluster: 3 masters, a replica each.
const CLUSTER_NODES: usize = 6;

/// The Redis of one test: a `redis-server` (no persistence unless flags ask for it) on a
/// unix socket in a fresh temp dir, or a cluster of them on loopback ports. It can be
/// stopped, restarted (same sockets and ports, same data dirs) and frozen; it is killed
/// and its dirs removed on drop.
pub struct RedisServer {
    nodes: Vec<Node>,
    cluster: bool,
    /// The URL services connect with, when not the nodes' own (e.g. `rediss://`).
    service_url: Option<String>,
}

impl RedisServer {
    /// Starts a fresh server (a cluster with `PUSH_TEST_REDIS=cluster`); panics with a
    /// hint when `redis-server` is missing.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a fresh server with extra flags, e.g. `["--appendonly", "yes"]`; they
    /// stay in force across restarts (which keep the data directories). On a cluster
    /// every node gets them.
    pub fn start_with(flags: &[&str]) -> Self {
        if on_cluster() { Self::start_cluster(flags) } else { Self::start_single(flags) }
    }

    /// One server whatever the suite runs on (for what only one server does: TLS here).
    pub fn start_single(flags: &[&str]) -> Self {
        let flags = flags.iter().map(|f| f.to_string()).collect();
        let mut node = Node::new(temp_dir("redis"), None, flags);
        node.spawn();
        node.wait_up();
        RedisServer { nodes: vec![node], cluster: false, service_url: None }
    }

    /// 3 masters with one replica each, from `redis-server --cluster-enabled yes`
    /// processes and `redis-cli --cluster create`.
    pub fn start_cluster(flags: &[&str]) -> Self {
        Self::start_cluster_with(|_, _| flags.iter().map(|s| s.to_string()).collect())
    }

    /// A cluster whose nodes also serve TLS (`cert`, `key`, `ca`), with TLS between
    /// them (the cluster bus always asks for a client certificate: `client_cert`,
    /// `client_key`); the services reach it only over TLS (`rediss://` seed nodes, which the
    /// nodes answer with their TLS ports). The plaintext ports are the harness's own.
    pub fn start_cluster_tls(cert: &str, key: &str, ca: &str, client_cert: &str, client_key: &str) -> Self {
        let tls_ports = std::cell::RefCell::new(vec![0; CLUSTER_NODES]);
        let mut server = Self::start_cluster_with(|i, plain| {
            let port = free_port();
            tls_ports.borrow_mut()[i] = port;
            // With TLS between nodes the bus port follows the TLS port unless given; the
            // harness meets the nodes by their plaintext ports, whose bus port is free.
            let bus = (plain + 10_000).to_string();
            let flags = [
                "--cluster-port",
                &bus,
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-client-cert-file",
                client_cert,
                "--tls-client-key-file",
                client_key,
                "--tls-auth-clients",
                "no",
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
            ];
            flags.iter().map(|s| s.to_string()).collect()
        });
        let seeds: Vec<String> = tls_ports.borrow().iter().map(|p| format!("rediss://127.0.0.1:{p}")).collect();
        server.serve_at(&format!("cluster:{}", seeds.join(",")));
        server
    }

    /// A cluster whose node `i` on plaintext port `p` gets `flags(i, p)` (again, with fresh ports, when it could
    /// not start: a port `free_port` found free can be taken before the server binds it).
    fn start_cluster_with(mut flags: impl FnMut(usize, u16) -> Vec<String>) -> Self {
        let nodes: Vec<Node> = (0..CLUSTER_NODES)
            .map(|i| {
                for _ in 0..5 {
                    let mut f: Vec<String> = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    let port = free_port();
                    f.extend(flags(i, port));
                    let mut node = Node::new(temp_dir("cluster"), Some(port), f);
                    node.spawn();
                    if node.came_up() {
                        return node;
                    }
                }
                panic!("a cluster node did not come up (5 tries)");
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port.unwrap())).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let server = RedisServer { nodes, cluster: true, service_url: None };
        server.wait_cluster_ok();
        server
    }

    /// Waits until every node says the cluster is ok and every replica is in sync.
    fn wait_cluster_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().all(|n| {
                let info: String = n.query(&redis::cmd("CLUSTER").arg("INFO").to_owned()).unwrap_or_default();
                let repl: String = n.query(&redis::cmd("INFO").arg("replication").to_owned()).unwrap_or_default();
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Redis that the harness did not start (a Sentinel setup): services connect with
    /// `url`; the data helpers see nothing.
    pub fn external(url: &str) -> Self {
        RedisServer { nodes: Vec::new(), cluster: false, service_url: Some(url.to_owned()) }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URL services connect with: the unix socket, `cluster:` and the nodes for a
    /// cluster (see `services::redis_flags`), unless [`RedisServer::serve_at`] said
    /// otherwise.
    pub fn url(&self) -> String {
        if let Some(url) = &self.service_url {
            return url.clone();
        }
        match self.cluster {
            true => format!("cluster:{}", self.nodes.iter().map(Node::url).collect::<Vec<_>>().join(",")),
            false => self.nodes[0].url(),
        }
    }

    /// Services connect with `url` (e.g. a `rediss://` one) instead of the socket.
    pub fn serve_at(&mut self, url: &str) {
        self.service_url = Some(url.to_owned());
    }

    /// The unix socket of a single server.
    pub fn socket(&self) -> PathBuf {
        assert!(!self.cluster, "a cluster has no unix socket");
        self.nodes[0].dir.join("redis.sock")
    }

    /// Runs a command where its key lives (a single server's, or the cluster's node).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        if !self.cluster {
            return self.nodes[0].query(cmd).expect("redis command");
        }
        let urls: Vec<String> = self.nodes.iter().map(Node::url).collect();
        let client = redis::cluster::ClusterClient::new(urls).expect("cluster client");
        let mut c = client.get_connection().expect("cluster connection");
        cmd.query(&mut c).expect("redis command")
    }

    /// Runs a server-wide command (CONFIG SET, INFO) on every master; the answers.
    pub fn on_masters<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Vec<T> {
        self.masters().map(|n| n.query(cmd).expect("redis command")).collect()
    }

    fn masters(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some()).filter(|n| {
            let repl: String = n.query(&redis::cmd("INFO").arg("replication").to_owned()).unwrap_or_default();
            repl.contains("role:master")
        })
    }

    /// Waits until every master's writes reached its replica.
    pub fn wait_replicated(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.masters().all(Node::replicas_caught_up) {
            assert!(Instant::now() < deadline, "the replicas did not catch up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills (SIGKILL) the cluster master that owns `key`'s slot; returns its index.
    pub fn kill_master_of(&mut self, key: &str) -> usize {
        let i = self.master_of(key).expect("a master owns the slot");
        self.nodes[i].stop();
        i
    }

    /// The node that serves `key`'s slot as master, by its own word.
    fn master_of(&self, key: &str) -> Option<usize> {
        let slot: i64 = self.nodes.iter().find_map(|n| n.query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).ok())?;
        self.nodes.iter().position(|n| {
            let repl: String = n.query(&redis::cmd("INFO").arg("replication").to_owned()).unwrap_or_default();
            let slots: Vec<redis::Value> = n.query(&redis::cmd("CLUSTER").arg("SLOTS").to_owned()).unwrap_or_default();
            let mine = n.port.unwrap_or_default() as i64;
            repl.contains("role:master")
                && slots.iter().any(|range| match range {
                    redis::Value::Array(r) if r.len() >= 3 => {
                        let n = |v: &redis::Value| redis::from_redis_value_ref::<i64>(v).unwrap_or(-1);
                        let port = match &r[2] {
                            redis::Value::Array(m) if m.len() >= 2 => n(&m[1]),
                            _ => -1,
                        };
                        n(&r[0]) <= slot && slot <= n(&r[1]) && port == mine
                    }
                    _ => false,
                })
        })
    }

    /// Waits until another node serves `key`'s slot as master and the cluster is ok.
    pub fn wait_failed_over(&self, key: &str, old: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let live_ok = self.nodes.iter().enumerate().filter(|(i, _)| *i != old).all(|(_, n)| {
                let info: String = n.query(&redis::cmd("CLUSTER").arg("INFO").to_owned()).unwrap_or_default();
                info.contains("cluster_state:ok")
            });
            if live_ok && self.master_of(key).is_some_and(|m| m != old) {
                return;
            }
            assert!(Instant::now() < deadline, "no replica took the slot over");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server(s) (as a crash would).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }

    /// (Re)starts the server(s) on the same sockets and ports and waits until they answer.
    pub fn restart(&mut self) {
        for n in &mut self.nodes {
            n.spawn();
        }
        for n in &mut self.nodes {
            n.wait_up();
        }
        if self.cluster {
            self.wait_cluster_ok();
        }
    }

    /// Freezes the server(s) (SIGSTOP): they keep their connections but answer nothing,
    /// as a Redis stuck on a slow disk or a long script would.
    pub fn freeze(&self) {
        for n in &self.nodes {
            n.signal("-STOP");
        }
    }

    /// Lets frozen servers go on (SIGCONT).
    pub fn thaw(&self) {
        for n in &self.nodes {
            n.signal("-CONT");
        }
    }

    /// Number of keys (over every master).
    pub fn dbsize(&self) -> i64 {
        self.on_masters::<i64>(&redis::cmd("DBSIZE")).into_iter().sum()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> =
            self.on_masters::<Vec<String>>(&redis::cmd("KEYS").arg("*").to_owned()).into_iter().flatten().collect();
        keys.sort();
        keys
    }

    /// The Pub/Sub channels matching `pattern` that have subscribers (classic and, on a
    /// cluster, shard channels), sorted.
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        let mut chs: Vec<String> = self
            .on_masters::<Vec<String>>(&redis::cmd("PUBSUB").arg("CHANNELS").arg(pattern).to_owned())
            .into_iter()
            .flatten()
            .collect();
        if self.cluster {
            chs.extend(
                self.on_masters::<Vec<String>>(&redis::cmd("PUBSUB").arg("SHARDCHANNELS").arg(pattern).to_owned())
                    .into_iter()
                    .flatten(),
            );
        }
        chs.sort();
        chs.dedup();
        chs
    }

    /// How many connections are subscribed to `channel` (one per gateway replica that
    /// holds it: each replica has one subscriber link).
    pub fn subscribers(&self, channel: &str) -> i64 {
        let sub = if self.cluster && !channel.ends_with(":ch:all") { "SHARDNUMSUB" } else { "NUMSUB" };
        let counts: Vec<(String, i64)> = self.on_masters(&redis::cmd("PUBSUB").arg(sub).arg(channel).to_owned());
        match sub {
            // A classic channel is counted on the node each subscriber picked.
            "NUMSUB" => counts.iter().map(|(_, n)| n).sum(),
            _ => counts.iter().map(|(_, n)| *n).max().unwrap_or(0),
        }
    }

    /// `INFO commandstats` summed over every master: per command (`xread`,
    /// `config|resetstat`...), its calls and its failed calls since the last reset.
    pub fn command_stats(&self) -> std::collections::HashMap<String, (u64, u64)> {
        let mut stats = std::collections::HashMap::new();
        for info in self.on_masters::<String>(redis::cmd("INFO").arg("commandstats")) {
            for line in info.lines().filter_map(|l| l.strip_prefix("cmdstat_")) {
                let Some((name, fields)) = line.split_once(':') else { continue };
                let field = |k: &str| -> u64 {
                    fields.split(',').find_map(|kv| kv.strip_prefix(k)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
                };
                let e: &mut (u64, u64) = stats.entry(name.to_owned()).or_default();
                e.0 += field("calls=");
                e.1 += field("failed_calls=");
            }
        }
        stats
    }
}
