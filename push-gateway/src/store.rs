//! Every Redis command of the gateway: histories (push, replay, acks, receipts) and
//! publishing here, group membership in [`groups`]. Every script is a file in `lua/`
//! ([`scripts`]).
use std::{collections::HashMap, time::Duration};

use prost::bytes::Bytes;
use push_common::redis::{Batch, PipelinedScript, Pool};
use push_common::{
    Error,
    ids::{DeviceId, IdemKey, UserId},
    keys::Keys,
};
use redis::{Script, Value};

mod groups;
mod push;
pub use groups::Joined;

use crate::history::{self, Pos, StreamId};

/// The Lua scripts, each with the shared helpers (`lua/lib.lua`) in front when it runs.
pub mod scripts {
    pub const LIB: &str = include_str!("lua/lib.lua");
    pub const PUSH: &str = include_str!("lua/push.lua");
    pub const REPLAY: &str = include_str!("lua/replay.lua");
    pub const ACK: &str = include_str!("lua/ack.lua");
    pub const ACKED: &str = include_str!("lua/acked.lua");
    pub const JOIN: &str = include_str!("lua/join.lua");
    pub const LEAVE: &str = include_str!("lua/leave.lua");
    pub const GROUP_AT: &str = include_str!("lua/group_at.lua");

    /// `body` as it runs: the helpers, then the script.
    pub fn text(body: &str) -> String {
        format!("{LIB}\n{body}")
    }

    pub fn script(body: &str) -> redis::Script {
        redis::Script::new(&text(body))
    }

    /// The same, to run many times in one pipeline as well.
    pub fn pipelined(body: &str) -> push_common::redis::PipelinedScript {
        push_common::redis::PipelinedScript::new(&text(body))
    }
}

/// How much each history keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Most entries of a user's inbox (approximately: trimming is by whole stream nodes).
    pub inbox_max_len: usize,
    /// Most entries of a group's or the broadcast history.
    pub history_max_len: usize,
    /// Oldest entry kept in any history; an idle history expires after it.
    pub max_age: Duration,
    /// How long a history's meta (epoch, last id) and a user's acks outlive their last use.
    pub meta_ttl: Duration,
    /// Most devices with acknowledged positions per user.
    pub max_ack_devices: usize,
}

/// One page of a history (see `lua/replay.lua`).
#[derive(Debug)]
pub struct Page {
    pub epoch: u64,
    /// The stream continues after this id.
    pub point: StreamId,
    /// `push.v1.Continuity`.
    pub continuity: i32,
    /// Entry ids and encoded messages.
    pub entries: Vec<(StreamId, Bytes)>,
}

/// A page of a history as stored (see [`Store::history_page`]).
pub struct HistoryPage {
    pub epoch: Option<u64>,
    /// Id, encoded message, excluded users (`,a,b,` or empty).
    pub entries: Vec<(StreamId, Vec<u8>, Vec<u8>)>,
}

/// What a delivery receipt is made of.
pub struct Receipts {
    /// Per stream asked about: whether the message is in it, and the stream's epoch.
    pub found: Vec<(bool, Option<u64>)>,
    /// Per user: their devices' acknowledged positions (the raw acks hash).
    pub acks: Vec<HashMap<String, String>>,
}

/// One push, ready for the push script.
#[derive(Debug)]
pub struct Push {
    /// Per history: its stream key and its channel.
    pub targets: Vec<(String, String)>,
    /// Most entries the histories keep.
    pub max_len: usize,
    /// The message, encoded without its id.
    pub message: Vec<u8>,
    /// The caller's API key name (if any), the push's key and how long it counts.
    pub idempotency: Option<(Option<IdemKey>, IdemKey, Duration)>,
    /// Users who must not receive it, as `,a,b,` ('' for none).
    pub excluded: String,
}

/// Typed access to the gateway's keys.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
    pub retention: Retention,
    join: PipelinedScript,
    leave: PipelinedScript,
    group_at: Script,
    push: PipelinedScript,
    replay: Script,
    ack: Script,
    acked: Script,
}

impl Store {
    pub fn new(pool: Pool, keys: Keys, retention: Retention) -> Self {
        Self {
            pool,
            keys,
            retention,
            join: scripts::pipelined(scripts::JOIN),
            leave: scripts::pipelined(scripts::LEAVE),
            group_at: scripts::script(scripts::GROUP_AT),
            push: scripts::pipelined(scripts::PUSH),
            replay: scripts::script(scripts::REPLAY),
            ack: scripts::script(scripts::ACK),
            acked: scripts::script(scripts::ACKED),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Publishes `payload` on every channel, in one round trip (one per slot on a
    /// Cluster, where the per-user and per-group channels are sharded).
    #[tracing::instrument(skip(self, payload), fields(channels = channels.len()), err)]
    pub async fn publish(&self, channels: &[String], payload: &Bytes) -> Result<(), Error> {
        let mut batch = Batch::new();
        for ch in channels {
            batch.add(
                ch,
                redis::cmd(self.keys.publish_command(ch, self.pool.is_cluster()))
                    .arg(ch)
                    .arg(payload.as_ref())
                    .to_owned(),
            );
        }
        let _: Vec<i64> = batch.query(&self.pool).await?;
        Ok(())
    }

    /// One page of `stream` after `cursor` (`None`: at the end, nothing replayed), as
    /// `reader` sees it: a message that excludes them is there with an empty body.
    #[tracing::instrument(skip(self), err)]
    pub async fn replay(&self, stream: &str, cursor: Option<Pos>, page: usize, reader: &UserId) -> Result<Page, Error> {
        let mut inv = self.replay.key(stream);
        inv.key(Keys::history_meta(stream));
        match cursor {
            Some(p) => inv.arg(p.epoch.to_string()).arg(p.id.to_string()),
            None => inv.arg("").arg(""),
        };
        inv.arg(page).arg(self.retention.meta_ttl.as_millis() as u64).arg(reader.as_str());
        let mut c = self.pool.get();
        let reply: Vec<Value> = inv.invoke_async(&mut c).await?;
        parse_page(reply)
    }

    /// A page of `stream` for ListHistory: its epoch (None when it has no meta: nothing
    /// was pushed to it lately), then up to `count` entries after `after` (exclusive),
    /// newest first or oldest first, each with its excluded users (`,a,b,` or empty).
    #[tracing::instrument(skip(self), err)]
    pub async fn history_page(
        &self,
        stream: &str,
        after: Option<StreamId>,
        count: usize,
        newest_first: bool,
    ) -> Result<HistoryPage, Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(Keys::history_meta(stream)).arg("epoch");
        let after = after.map(|id| format!("({id}"));
        match newest_first {
            true => pipe.cmd("XREVRANGE").arg(stream).arg(after.as_deref().unwrap_or("+")).arg("-"),
            false => pipe.cmd("XRANGE").arg(stream).arg(after.as_deref().unwrap_or("-")).arg("+"),
        };
        pipe.arg("COUNT").arg(count);
        let mut c = self.pool.get();
        // Entries as XRANGE gives them: the id and the flat field/value list.
        type Entries = Vec<(String, Vec<Vec<u8>>)>;
        let (epoch, raw): (Option<String>, Entries) = pipe.query_async(&mut c).await?;
        let mut entries = Vec::with_capacity(raw.len());
        for (id, fields) in raw {
            let id = id.parse().map_err(|_| Error::Protocol(format!("a history entry id {id:?}")))?;
            let field = |name: &[u8]| fields.chunks(2).find(|f| f[0] == name).and_then(|f| f.get(1)).cloned();
            let message = field(b"m").ok_or_else(|| Error::Protocol("a history entry without a message".into()))?;
            entries.push((id, message, field(b"x").unwrap_or_default()));
        }
        Ok(HistoryPage { epoch: epoch.as_deref().and_then(history::parse_epoch), entries })
    }

    /// Each history's epoch and last id, from its meta (None without one), in one round
    /// trip.
    #[tracing::instrument(skip_all, fields(histories = streams.len()), err)]
    pub async fn history_tops(&self, streams: &[String]) -> Result<Vec<Option<Pos>>, Error> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for s in streams {
            batch.add(s, redis::cmd("HMGET").arg(Keys::history_meta(s)).arg("epoch").arg("last").to_owned());
        }
        let replies: Vec<(Option<String>, Option<String>)> = batch.query(&self.pool).await?;
        Ok(replies
            .into_iter()
            .map(|(epoch, last)| {
                let epoch = history::parse_epoch(&epoch?)?;
                let id = last.as_deref().unwrap_or("0-0").parse().ok()?;
                Some(Pos { epoch, id })
            })
            .collect())
    }

    /// Moves `device`'s acknowledged positions forward. A group the user is not in is
    /// refused (the whole call, naming the position's index in `positions`).
    #[tracing::instrument(skip(self, positions), err)]
    pub async fn ack(
        &self,
        user: &UserId,
        device: &DeviceId,
        positions: &[(history::Source, Pos)],
    ) -> Result<(), Error> {
        let mut inv = self.ack.key(self.keys.acks(user));
        inv.key(self.keys.user_groups(user)).key(self.keys.ack_devices(user));
        inv.arg(self.retention.meta_ttl.as_millis() as u64).arg(self.retention.max_ack_devices).arg(device.as_str());
        for (source, p) in positions {
            let group = match source {
                history::Source::Group(g) => g.as_str(),
                _ => "",
            };
            inv.arg(source.ack_field(device)).arg(p.epoch.to_string()).arg(p.id.to_string()).arg(group);
        }
        let mut c = self.pool.get();
        let reply: Vec<i64> = inv.invoke_async(&mut c).await?;
        match reply.as_slice() {
            [-1, i] => Err(Error::invalid(format!("cursors[{i}].group_id"), "is not a group the user belongs to")),
            [_] => Ok(()),
            other => Err(Error::Protocol(format!("ack script returned {other:?}"))),
        }
    }

    /// A device's acknowledged positions in the histories its user reads (its own
    /// fields only: never the whole acks hash).
    #[tracing::instrument(skip(self), err)]
    pub async fn acked(&self, user: &UserId, device: &DeviceId) -> Result<Vec<(history::Source, Pos)>, Error> {
        let mut inv = self.acked.key(self.keys.acks(user));
        inv.key(self.keys.user_groups(user)).arg(device.as_str());
        let mut c = self.pool.get();
        let pairs: Vec<(String, String)> = inv.invoke_async(&mut c).await?;
        Ok(pairs
            .iter()
            .filter_map(|(f, v)| {
                let (d, source) = history::Source::of_ack_field(f)?;
                (device.as_str() == d).then_some((source, history::parse_position(v)?))
            })
            .collect())
    }

    /// For a receipt: whether `id` is in each stream, each stream's epoch, and each
    /// user's acks. `streams` holds one stream per user, or one for all of them.
    #[tracing::instrument(skip_all, fields(users = users.len()), err)]
    pub async fn receipts(&self, streams: &[String], id: StreamId, users: &[UserId]) -> Result<Receipts, Error> {
        let mut batch = Batch::new();
        let id = id.to_string();
        for s in streams {
            batch.add(s, redis::cmd("XRANGE").arg(s).arg(&id).arg(&id).arg("COUNT").arg(1).to_owned());
            batch.add(s, redis::cmd("HGET").arg(Keys::history_meta(s)).arg("epoch").to_owned());
        }
        for u in users {
            let key = self.keys.acks(u);
            batch.add(&key, redis::cmd("HGETALL").arg(&key).to_owned());
        }
        let mut replies: Vec<Value> = batch.run(&self.pool).await?;
        let acks = replies.split_off(streams.len() * 2);
        let mut found = Vec::with_capacity(streams.len());
        for pair in replies.chunks(2) {
            let exists = matches!(&pair[0], Value::Array(a) if !a.is_empty());
            let epoch: Option<String> = redis::from_redis_value_ref(&pair[1])?;
            found.push((exists, epoch.as_deref().and_then(history::parse_epoch)));
        }
        let acks = acks.iter().map(redis::from_redis_value_ref).collect::<Result<_, _>>()?;
        Ok(Receipts { found, acks })
    }
}

fn parse_page(reply: Vec<Value>) -> Result<Page, Error> {
    let bad = || Error::Protocol("the replay script returned an unexpected reply".into());
    let text = |v: &Value| -> Option<String> { redis::from_redis_value_ref::<String>(v).ok() };
    let mut it = reply.into_iter();
    let epoch = it.next().as_ref().and_then(text).as_deref().and_then(history::parse_epoch).ok_or_else(bad)?;
    let point = it.next().as_ref().and_then(text).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let continuity = match it.next() {
        Some(Value::Int(n)) => n as i32,
        _ => return Err(bad()),
    };
    let mut entries = Vec::new();
    while let (Some(id), Some(msg)) = (it.next(), it.next()) {
        let id = text(&id).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let msg = match msg {
            Value::BulkString(b) => Bytes::from(b),
            _ => return Err(bad()),
        };
        entries.push((id, msg));
    }
    Ok(Page { epoch, point, continuity, entries })
}
