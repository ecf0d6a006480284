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
}

impl SentinelSetup {
    pub fn start() -> SentinelSetup {
        let master_port = free_port();
        let mut master = Node::new(temp_dir("sentinel-master"), Some(master_port), Vec::new());
        master.spawn();
        master.wait_up();
        let replica_of = vec!["--replicaof".into(), "127.0.0.1".into(), master_port.to_string()];
        let mut replica = Node::new(temp_dir("sentinel-replica"), Some(free_port()), replica_of);
        replica.spawn();
        replica.wait_up();
        let sentinels = (0..3)
            .map(|_| {
                let dir = temp_dir("sentinel");
                let conf = dir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                         sentinel down-after-milliseconds {MASTER} 1000\n\
                         sentinel failover-timeout {MASTER} 5000\n\
                         sentinel parallel-syncs {MASTER} 1\n"
                    ),
                )
                .unwrap();
                let flags = vec![conf.display().to_string(), "--sentinel".into()];
                let mut s = Node::new_with_leading(dir, Some(free_port()), flags);
                s.spawn();
                s.wait_up();
                s
            })
            .collect();
        let setup = SentinelSetup { servers: vec![master, replica], sentinels };
        setup.wait_replicated();
        setup
    }

    /// `sentinel:MASTER@SENTINELS` (see `services::redis_flags`).
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self.sentinels.iter().map(Node::url).collect();
        format!("sentinel:{MASTER}@{}", sentinels.join(","))
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
