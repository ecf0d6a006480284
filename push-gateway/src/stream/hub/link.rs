//! The hub's subscriber connection, on either kind of Redis.
//!
//! - **Classic** (one Redis, a Sentinel master): one RESP2 Pub/Sub connection;
//!   SUBSCRIBE for every channel.
//! - **Sharded** (a Cluster): the redis crate's cluster connection in RESP3, which keeps
//!   one connection per node it needs and routes each SSUBSCRIBE to the shard that owns
//!   the channel's slot; the per-user, per-group and probe channels are shard channels
//!   (SSUBSCRIBE), so a message travels only to the shard that owns it. The broadcast
//!   channel stays classic (SUBSCRIBE): every node forwards a classic message to every
//!   other, and every replica needs it anyway.
//!
//! A Cluster connection that loses a node, or a shard that drops one of our shard
//! channels (its slot moved to another shard), ends the link: the hub reconnects,
//! re-subscribes everything where the slots are now and replays what was published
//! meanwhile, as after any reconnect.
use std::collections::HashSet;

use futures_util::StreamExt as _;
use push_common::{
    config::RedisArgs,
    redis::{Topology, cluster_builder},
};
use redis::{PushKind, Value, aio::PubSubSink};
use tokio::sync::mpsc;

/// A message heard: its channel and payload.
pub(super) struct Heard {
    pub(super) channel: String,
    pub(super) payload: Vec<u8>,
}

pub(super) enum Link {
    Classic {
        sink: PubSubSink,
        messages: redis::aio::PubSubStream,
    },
    Sharded {
        conn: redis::cluster_async::ClusterConnection,
        pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
        /// The broadcast channel, the one classic channel.
        all: String,
        /// The shard channels this link subscribed and did not unsubscribe: a shard that
        /// unsubscribes one of them on its own lost its slot.
        held: HashSet<String>,
    },
}

impl Link {
    pub(super) async fn connect(topology: &Topology, redis: &RedisArgs, all: String) -> Result<Link, String> {
        match topology {
            Topology::Cluster(_) => {
                let (tx, pushes) = mpsc::unbounded_channel();
                let client = cluster_builder(redis)
                    .map_err(|e| e.to_string())?
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()
                    .map_err(|e| e.to_string())?;
                let conn = client.get_async_connection().await.map_err(|e| e.to_string())?;
                Ok(Link::Sharded { conn, pushes, all, held: HashSet::new() })
            }
            _ => {
                let client = topology.master().await.ok_or("no master")?.map_err(|e| e.to_string())?;
                let (sink, messages) = client.get_async_pubsub().await.map_err(|e| e.to_string())?.split();
                Ok(Link::Classic { sink, messages })
            }
        }
    }

    /// Subscribes `channels`; returns once Redis confirmed.
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Link::Classic { sink, .. } => sink.subscribe(channels).await,
            Link::Sharded { conn, all, held, .. } => {
                held.extend(channels.iter().filter(|c| *c != all).cloned());
                each(conn, all, channels, true).await
            }
        }
    }

    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Link::Classic { sink, .. } => sink.unsubscribe(channels).await,
            Link::Sharded { conn, all, held, .. } => {
                for ch in channels {
                    held.remove(ch);
                }
                each(conn, all, channels, false).await
            }
        }
    }

    /// The next message; Err when the link is lost.
    pub(super) async fn next(&mut self) -> Result<Heard, String> {
        match self {
            Link::Classic { messages, .. } => {
                let msg = futures_util::StreamExt::next(messages).await.ok_or("connection closed")?;
                Ok(Heard { channel: msg.get_channel_name().to_owned(), payload: msg.get_payload_bytes().to_vec() })
            }
            Link::Sharded { pushes, held, .. } => loop {
                let push = pushes.recv().await.ok_or("connection closed")?;
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let [Value::BulkString(ch), Value::BulkString(payload)] = &push.data[..] {
                            let channel = String::from_utf8_lossy(ch).into_owned();
                            return Ok(Heard { channel, payload: payload.clone() });
                        }
                    }
                    PushKind::Disconnection => return Err("a cluster node connection dropped".into()),
                    PushKind::SUnsubscribe => {
                        if let Some(Value::BulkString(ch)) = push.data.first()
                            && held.contains(String::from_utf8_lossy(ch).as_ref())
                        {
                            return Err("a shard dropped a shard channel (its slot moved)".into());
                        }
                    }
                    _ => {}
                }
            },
        }
    }
}

/// (Un)subscribes each channel on a Cluster: the broadcast channel classic, the others
/// as shard channels, one command per channel (a command's shard channels must share a
/// slot), many in flight at once.
async fn each(
    conn: &redis::cluster_async::ClusterConnection,
    all: &str,
    channels: &[String],
    subscribe: bool,
) -> redis::RedisResult<()> {
    type Sent = std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>;
    let sent: Vec<Sent> = channels
        .iter()
        .map(|ch| {
            let (mut conn, ch, classic) = (conn.clone(), ch.clone(), ch == all);
            Box::pin(async move {
                match (subscribe, classic) {
                    (true, true) => conn.subscribe(ch).await,
                    (true, false) => conn.ssubscribe(ch).await,
                    (false, true) => conn.unsubscribe(ch).await,
                    (false, false) => conn.sunsubscribe(ch).await,
                }
            }) as Sent
        })
        .collect();
    let mut sent = futures_util::stream::iter(sent).buffer_unordered(256);
    while let Some(r) = sent.next().await {
        r?;
    }
    Ok(())
}
