//! A proxy in front of Redis that can make Pub/Sub connections look alive and deliver
//! nothing, as after a failover or behind a misbehaving load balancer.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};

use crate::RedisServer;

/// A TCP proxy on 127.0.0.1 in front of a Redis unix socket. While `swallow` is set,
/// what Redis sends on a connection that has sent SUBSCRIBE is dropped (the connection
/// stays open); [`Proxy::swallowed`] counts the Pub/Sub messages dropped, so a test can
/// see that a notification was in fact lost rather than sleep and hope.
pub struct Proxy {
    pub addr: SocketAddr,
    swallow: Arc<AtomicBool>,
    swallowed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// How a Pub/Sub message starts on the wire (RESP2 and RESP3 alike): its kind.
const MESSAGE: &[u8] = b"$7\r\nmessage\r\n";

impl Proxy {
    pub async fn start(redis: &RedisServer) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let socket = redis.socket();
        let swallow = Arc::new(AtomicBool::new(false));
        let swallowed = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (swallow.clone(), swallowed.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::UnixStream::connect(&socket).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let subscriber = Arc::new(AtomicBool::new(false));
                let (sub, flag, count) = (subscriber.clone(), flag.clone(), count.clone());
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
                            let messages = buf[..n].windows(MESSAGE.len()).filter(|w| *w == MESSAGE).count();
                            count.fetch_add(messages, Ordering::Relaxed);
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Proxy { addr, swallow, swallowed, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Starts or stops dropping what Redis sends to subscribers.
    pub fn swallow_pubsub(&self, on: bool) {
        self.swallow.store(on, Ordering::Relaxed);
    }

    /// How many Pub/Sub messages were dropped so far.
    pub fn swallowed(&self) -> usize {
        self.swallowed.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
