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
//! The probe channels ([`Link::probe_channels`]): the replica's one on a Classic link; on
//! a Sharded one, one in each master's slots (from `CLUSTER SLOTS` when the link
//! connects), so a probe checks the connection to every shard.
//!
//! A Cluster connection that loses a node, or a shard that drops one of our shard
//! channels (its slot moved to another shard), ends the link: the hub reconnects,
//! re-subscribes everything where the slots are now and replays what was published
//! meanwhile, as after any reconnect.
use std::{
    collections::{BTreeMap, HashSet},
    ops::RangeInclusive,
};

use futures_util::StreamExt as _;
use push_common::{
    config::RedisArgs,
    keys::Keys,
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

    /// This replica's probe channels on this link: its one probe channel on one Redis
    /// (or a Sentinel master); on a Cluster one per master, in that master's slots as
    /// the cluster reports them now.
    pub(super) async fn probe_channels(&mut self, keys: &Keys, replica: &str) -> Result<Vec<String>, String> {
        match self {
            Link::Classic { .. } => Ok(vec![keys.channel_probe(replica)]),
            Link::Sharded { conn, .. } => {
                let reply: Value =
                    redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await.map_err(|e| e.to_string())?;
                let channels: Vec<String> =
                    masters(&reply)?.iter().filter_map(|slots| keys.channel_probe_in(replica, slots)).collect();
                if channels.is_empty() {
                    return Err("the cluster reports no master serving a slot".into());
                }
                Ok(channels)
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

/// The slots of each master in a `CLUSTER SLOTS` reply (each entry: first slot, last
/// slot, the master as `[ip, port, id, ..]`, then its replicas), in the order of their
/// first slots. A master is told apart by its id (by its address without one).
fn masters(reply: &Value) -> Result<Vec<Vec<RangeInclusive<u16>>>, String> {
    let bad = || "an unexpected CLUSTER SLOTS reply".to_string();
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    let Value::Array(entries) = reply else { return Err(bad()) };
    let mut by_master: BTreeMap<String, Vec<RangeInclusive<u16>>> = BTreeMap::new();
    for entry in entries {
        let Value::Array(fields) = entry else { return Err(bad()) };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(bad());
        };
        let slot = |n: i64| u16::try_from(n).map_err(|_| bad());
        let id = match master.get(2).and_then(text) {
            Some(id) => id,
            None => master.iter().take(2).filter_map(text).collect::<Vec<_>>().join(":"),
        };
        by_master.entry(id).or_default().push(slot(*first)?..=slot(*last)?);
    }
    let mut masters: Vec<Vec<RangeInclusive<u16>>> = by_master.into_values().collect();
    for slots in &mut masters {
        slots.sort_by_key(|r| *r.start());
    }
    masters.sort_by_key(|slots| slots.first().map(|r| *r.start()));
    Ok(masters)
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::masters;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn range(first: i64, last: i64, master: &str, port: i64) -> Value {
        let node = |id: &str, port| Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk(id)]);
        Value::Array(vec![Value::Int(first), Value::Int(last), node(master, port), node("replica", port + 1)])
    }

    #[test]
    fn cluster_slots_are_grouped_by_master() {
        // A master with two ranges (after a resharding), listed out of order.
        let reply = Value::Array(vec![
            range(10923, 16383, "c", 7004),
            range(5461, 10922, "b", 7002),
            range(0, 5000, "a", 7000),
            range(5001, 5460, "c", 7004),
        ]);
        assert_eq!(masters(&reply).unwrap(), [vec![0..=5000], vec![5001..=5460, 10923..=16383], vec![5461..=10922]]);
        // Without ids (an old server): by address.
        let old = |first, last, port| {
            let node = Value::Array(vec![bulk("127.0.0.1"), Value::Int(port)]);
            Value::Array(vec![Value::Int(first), Value::Int(last), node])
        };
        let reply = Value::Array(vec![old(0, 99, 7000), old(100, 16383, 7001), old(200, 300, 7000)]);
        assert_eq!(masters(&reply).unwrap(), [vec![0..=99, 200..=300], vec![100..=16383]]);
        assert_eq!(masters(&Value::Array(vec![])).unwrap(), Vec::<Vec<_>>::new());
        assert!(masters(&Value::Nil).is_err());
        assert!(masters(&Value::Array(vec![Value::Array(vec![Value::Int(0)])])).is_err());
    }
}
