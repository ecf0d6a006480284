//! The presence events: one stream per bucket (in the bucket's slot, written in the
//! same step as the bucket's online index), read together.
//!
//! A watch's [`Position`] is the last id read in every bucket's stream. Reads merge the
//! buckets by id (`MS-SEQ`, from Redis's clock): a user's events are always in order
//! (they are all in one stream); events of users in different buckets are in time
//! order to the millisecond on one Redis, and to the clock skew between the masters on
//! a Cluster.
use std::time::Duration;

use push_common::{Error, redis::Batch};

use super::{Store, ms};

/// One recorded presence event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The bucket whose stream holds it.
    pub bucket: u32,
    /// Its id in that stream.
    pub id: String,
    pub user: String,
    pub online: bool,
    /// When the lease ended (expiry) or when the call happened.
    pub time_ms: i64,
    pub session: String,
    pub expired: bool,
}

/// A stream id `MS-SEQ` (or `MS`), for ordering cursors.
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Event {
    fn key(&self) -> ((u64, u64), u32) {
        (parse_event_id(&self.id).unwrap_or_default(), self.bucket)
    }
}

/// Where a watch stands: the last event id read in each bucket's stream. As text (a
/// cursor, an event's `event_id`): the ids in bucket order, `.`-separated, `0` for none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position(Vec<(u64, u64)>);

impl Position {
    /// Before every retained event.
    pub fn zero(buckets: u32) -> Position {
        Position(vec![(0, 0); buckets as usize])
    }

    /// A cursor of `buckets` buckets ("0": from the oldest retained).
    pub fn parse(s: &str, buckets: u32) -> Option<Position> {
        if s == "0" {
            return Some(Position::zero(buckets));
        }
        let ids: Option<Vec<_>> = s.split('.').map(parse_event_id).collect();
        ids.filter(|ids| ids.len() == buckets as usize).map(Position)
    }

    pub fn encode(&self) -> String {
        let id = |&(ms, seq): &(u64, u64)| if (ms, seq) == (0, 0) { "0".to_owned() } else { format!("{ms}-{seq}") };
        self.0.iter().map(id).collect::<Vec<_>>().join(".")
    }

    /// True when `e` comes after this position in its bucket.
    pub fn is_new(&self, e: &Event) -> bool {
        self.0.get(e.bucket as usize).is_some_and(|at| parse_event_id(&e.id).is_some_and(|id| id > *at))
    }

    /// Moves past `e`.
    pub fn advance(&mut self, e: &Event) {
        if let (Some(at), Some(id)) = (self.0.get_mut(e.bucket as usize), parse_event_id(&e.id)) {
            *at = id.max(*at);
        }
    }

    fn stream_id(&self, bucket: u32) -> String {
        let (ms, seq) = self.0[bucket as usize];
        format!("{ms}-{seq}")
    }
}

/// Events of all buckets in id order (ties by bucket), at most `count`.
fn merged(mut events: Vec<Event>, count: usize) -> Vec<Event> {
    events.sort_by_key(Event::key);
    events.truncate(count);
    events
}

fn event(bucket: u32, id: String, fields: Vec<String>) -> Event {
    let mut e =
        Event { bucket, id, user: String::new(), online: false, time_ms: 0, session: String::new(), expired: false };
    for pair in fields.chunks(2) {
        if let [k, v] = pair {
            match k.as_str() {
                "u" => e.user = v.clone(),
                "k" => e.online = v == "on",
                "s" => e.session = v.clone(),
                "r" => e.expired = v == "expired",
                "t" => e.time_ms = v.parse().unwrap_or_default(),
                _ => {}
            }
        }
    }
    e
}

/// Whether a stream lost, to its length cap, events after `cursor` (from XINFO STREAM).
/// Trimming does not record which ids it removed, so a cursor that was exactly the last
/// trimmed entry is also refused: the error errs toward a resync, never a silent gap.
fn trimmed(info: redis::Value, cursor: (u64, u64)) -> Result<bool, Error> {
    let info: Vec<redis::Value> = match info {
        // No stream yet: nothing was ever trimmed.
        redis::Value::ServerError(e) if e.code() == "ERR" => return Ok(false),
        v => redis::from_redis_value(v)?,
    };
    let (mut length, mut added, mut first, mut last) = (0u64, 0u64, None, None);
    let mut it = info.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match redis::from_redis_value::<String>(k).unwrap_or_default().as_str() {
            "length" => length = redis::from_redis_value(v)?,
            "entries-added" => added = redis::from_redis_value(v)?,
            "recorded-first-entry-id" => first = parse_event_id(&redis::from_redis_value::<String>(v)?),
            "last-generated-id" => last = parse_event_id(&redis::from_redis_value::<String>(v)?),
            _ => {}
        }
    }
    if added <= length {
        return Ok(false);
    }
    let oldest_kept = if length == 0 { last } else { first };
    Ok(oldest_kept.is_some_and(|kept| cursor < kept))
}

type Entries = Vec<(String, Vec<String>)>;

impl Store {
    /// Where every bucket's stream ends now (its newest id, or none).
    pub async fn last_position(&self) -> Result<Position, Error> {
        let mut batch = Batch::new();
        for b in 0..self.buckets {
            let key = self.keys.presence_events(b);
            batch.add(&key, redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(1).to_owned());
        }
        let mut at = Position::zero(self.buckets);
        for (b, newest) in batch.run(&self.pool).await?.into_iter().enumerate() {
            let newest: Entries = redis::from_redis_value(newest)?;
            if let Some((id, _)) = newest.into_iter().next() {
                at.0[b] = parse_event_id(&id).unwrap_or_default();
            }
        }
        Ok(at)
    }

    /// True when events after `at` may already have been trimmed away in some bucket:
    /// its stream lost entries to its length cap and `at` is older than its oldest kept.
    pub async fn trimmed_past(&self, at: &Position) -> Result<bool, Error> {
        let mut batch = Batch::new();
        let mut asked = Vec::new();
        for (b, cursor) in at.0.iter().enumerate().filter(|(_, c)| **c != (0, 0)) {
            let key = self.keys.presence_events(b as u32);
            batch.add(&key, redis::cmd("XINFO").arg("STREAM").arg(&key).to_owned());
            asked.push(*cursor);
        }
        if batch.is_empty() {
            return Ok(false);
        }
        for (info, cursor) in batch.run(&self.pool).await?.into_iter().zip(asked) {
            if trimmed(info, cursor)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Up to `count` events after `at`, without waiting, on the pool: every bucket read
    /// (one pipeline, or one per slot on a Cluster), merged in id order.
    pub async fn events_after(&self, at: &Position, count: usize) -> Result<Vec<Event>, Error> {
        let mut batch = Batch::new();
        for b in 0..self.buckets {
            let key = self.keys.presence_events(b);
            let from = format!("({}", at.stream_id(b));
            batch.add(&key, redis::cmd("XRANGE").arg(&key).arg(from).arg("+").arg("COUNT").arg(count).to_owned());
        }
        let mut events = Vec::new();
        for (b, entries) in batch.run(&self.pool).await?.into_iter().enumerate() {
            let entries: Entries = redis::from_redis_value(entries)?;
            events.extend(entries.into_iter().map(|(id, f)| event(b as u32, id, f)));
        }
        Ok(merged(events, count))
    }

    /// Reads up to `count` events after `at` from every bucket with one `XREAD`, waiting
    /// up to `block` for the first, on a connection of the caller's own (a blocking read
    /// would stall a shared one). Not on a Cluster, where the buckets' streams are in
    /// different slots.
    pub async fn wait_for_events(
        &self,
        conn: &mut push_common::redis::Connection,
        at: &Position,
        block: Duration,
        count: usize,
    ) -> Result<Vec<Event>, Error> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count).arg("BLOCK").arg(ms(block)).arg("STREAMS");
        for b in 0..self.buckets {
            cmd.arg(self.keys.presence_events(b));
        }
        for b in 0..self.buckets {
            cmd.arg(at.stream_id(b));
        }
        let reply: Option<Vec<(String, Entries)>> = cmd.query_async(conn).await?;
        let bucket_of_key = |key: &str| (0..self.buckets).find(|b| self.keys.presence_events(*b) == key);
        let mut events = Vec::new();
        for (key, entries) in reply.into_iter().flatten() {
            let Some(b) = bucket_of_key(&key) else { continue };
            events.extend(entries.into_iter().map(|(id, f)| event(b, id, f)));
        }
        Ok(merged(events, usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_order_like_redis() {
        assert!(parse_event_id("1700000000000-1") > parse_event_id("1700000000000-0"));
        assert!(parse_event_id("1700000000001") > parse_event_id("1700000000000-9"));
        assert_eq!(parse_event_id("0"), Some((0, 0)));
        assert_eq!(parse_event_id("x-1"), None);
        assert_eq!(parse_event_id("1-"), None);
    }

    #[test]
    fn events_decode_their_fields() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = event(3, "5-0".into(), f(&["u", "ann", "k", "off", "r", "expired", "t", "123"]));
        assert_eq!((e.bucket, e.user.as_str(), e.online, e.expired, e.time_ms), (3, "ann", false, true, 123));
        let e = event(0, "6-0".into(), f(&["u", "bob", "k", "on", "s", "phone", "t", "7"]));
        assert_eq!((e.online, e.session.as_str()), (true, "phone"));
    }

    #[test]
    fn positions_round_trip_and_advance_per_bucket() {
        let mut at = Position::zero(3);
        assert_eq!(at.encode(), "0.0.0");
        assert_eq!(Position::parse("0", 3), Some(at.clone()));
        let e = |bucket, id: &str| event(bucket, id.into(), Vec::new());
        assert!(at.is_new(&e(1, "5-2")));
        at.advance(&e(1, "5-2"));
        assert!(!at.is_new(&e(1, "5-2")) && at.is_new(&e(1, "5-3")) && at.is_new(&e(0, "1-0")));
        assert_eq!(at.encode(), "0.5-2.0");
        assert_eq!(Position::parse(&at.encode(), 3), Some(at.clone()));
        // Another bucket count, or not ids: not a cursor of this deployment.
        for bad in ["0.5-2", "0.5-2.0.0", "abc", "1-x", "-", "1-2-3", "{}", ""] {
            assert_eq!(Position::parse(bad, 3), None, "{bad}");
        }
        // Merged in id order across buckets, ties by bucket.
        let got = merged(vec![e(2, "7-0"), e(0, "9-0"), e(1, "7-0"), e(0, "3-1")], 3);
        let ids: Vec<_> = got.iter().map(|e| (e.bucket, e.id.as_str())).collect();
        assert_eq!(ids, [(0, "3-1"), (1, "7-0"), (2, "7-0")]);
    }
}
