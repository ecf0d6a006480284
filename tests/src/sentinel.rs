//! A Redis master with one replica watched by three sentinels, on loopback ports: the
//! Sentinel topology for the failover tests.
use std::time::{Duration, Instant};

use crate::redis::{Node, free_port, temp_dir};

/// The master's name in Sentinel.
pub const MASTER: &str = "pushmaster";

pub struct SentinelSetup {
    /// The first master and its replica; either may be the master after a failover.
    pub servers: Vec<Node>,
    sentinels: Vec<Node>,
    /// The sentinels' TLS ports, when the setup serves TLS.
    tls_sentinels: Option<Vec<u16>>,
}

/// TLS for the whole setup: the server's certificate and key, and the CA.
pub struct Tls<'a> {
    pub cert: &'a str,
    pub key: &'a str,
    pub ca: &'a str,
}

impl SentinelSetup {
    pub fn start() -> SentinelSetup {
        Self::start_with(None)
    }

    /// As `start`, with every server and sentinel also serving TLS on a port of its own,
    /// and replication and monitoring over TLS; `url()` then names only TLS ports. The
    /// plaintext ports are the harness's own.
    pub fn start_tls(tls: Tls) -> SentinelSetup {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<Tls>) -> SentinelSetup {
        let tls_flags = |port: u16| -> Vec<String> {
            let Some(t) = &tls else { return Vec::new() };
            let port = port.to_string();
            let flags = [
                "--tls-port",
                &port,
                "--tls-cert-file",
                t.cert,
                "--tls-key-file",
                t.key,
                "--tls-ca-cert-file",
                t.ca,
                "--tls-auth-clients",
                "no",
                "--tls-replication",
                "yes",
            ];
            flags.iter().map(|s| s.to_string()).collect()
        };
        let (master_port, master_tls) = (free_port(), free_port());
        let mut master = Node::new(temp_dir("sentinel-master"), Some(master_port), tls_flags(master_tls));
        master.spawn();
        master.wait_up();
        // The replica and the sentinels reach the master by its TLS port when there is TLS.
        let reach = if tls.is_some() { master_tls } else { master_port };
        let mut replica_flags = vec!["--replicaof".into(), "127.0.0.1".into(), reach.to_string()];
        replica_flags.extend(tls_flags(free_port()));
        let mut replica = Node::new(temp_dir("sentinel-replica"), Some(free_port()), replica_flags);
        replica.spawn();
        replica.wait_up();
        let mut tls_ports = Vec::new();
        let sentinels = (0..3)
            .map(|_| {
                let dir = temp_dir("sentinel");
                let conf = dir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "sentinel monitor {MASTER} 127.0.0.1 {reach} 2\n\
                         sentinel down-after-milliseconds {MASTER} 1000\n\
                         sentinel failover-timeout {MASTER} 5000\n\
                         sentinel parallel-syncs {MASTER} 1\n"
                    ),
                )
                .unwrap();
                let mut flags = vec![conf.display().to_string(), "--sentinel".into()];
                let port = free_port();
                flags.extend(tls_flags(port));
                tls_ports.push(port);
                let mut s = Node::new_with_leading(dir, Some(free_port()), flags);
                s.spawn();
                s.wait_up();
                s
            })
            .collect();
        let tls_sentinels = tls.is_some().then_some(tls_ports);
        let setup = SentinelSetup { servers: vec![master, replica], sentinels, tls_sentinels };
        setup.wait_replicated();
        setup
    }

    /// `sentinel:MASTER@SENTINELS` (see `services::redis_flags`); with TLS
    /// `sentinel:MASTER@SENTINELS|rediss://…` (the master's scheme, for `--redis-url`).
    pub fn url(&self) -> String {
        match &self.tls_sentinels {
            None => {
                let sentinels: Vec<String> = self.sentinels.iter().map(Node::url).collect();
                format!("sentinel:{MASTER}@{}", sentinels.join(","))
            }
            Some(ports) => {
                let sentinels: Vec<String> = ports.iter().map(|p| format!("rediss://127.0.0.1:{p}")).collect();
                format!("sentinel:{MASTER}@{}|rediss://127.0.0.1", sentinels.join(","))
            }
        }
    }

    /// The server that is master now (by its own word), if any answers so.
    pub fn master(&self) -> Option<usize> {
        self.servers.iter().position(|n| {
            let repl: String = n.query(&redis::cmd("INFO").arg("replication").to_owned()).unwrap_or_default();
            repl.contains("role:master")
        })
    }

    /// Waits until the replica has everything the master wrote.
    pub fn wait_replicated(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.master().is_some_and(|m| self.servers[m].replicas_caught_up()) {
                return;
            }
            assert!(Instant::now() < deadline, "the replica did not catch up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the master (SIGKILL); returns which server it was.
    pub fn kill_master(&mut self) -> usize {
        let m = self.master().expect("a master");
        self.servers[m].stop();
        m
    }

    /// Waits until the sentinels promoted the other server.
    pub fn wait_promoted(&self, old: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let new = 1 - old;
        loop {
            let repl: String =
                self.servers[new].query(&redis::cmd("INFO").arg("replication").to_owned()).unwrap_or_default();
            if repl.contains("role:master") {
                return;
            }
            assert!(Instant::now() < deadline, "no replica was promoted");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
