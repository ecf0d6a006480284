//! The presence events stream: reading it from a cursor (waiting or not), its newest
//! id, and whether a cursor fell behind what is retained.
use std::time::Duration;

use push_common::Error;

use super::{Store, ms};

/// One recorded presence event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
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

fn event(id: String, fields: Vec<String>) -> Event {
    let mut e = Event { id, user: String::new(), online: false, time_ms: 0, session: String::new(), expired: false };
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

impl Store {
    /// The id of the newest event, or "0-0" when there is none.
    pub async fn last_event_id(&self) -> Result<String, Error> {
        let mut c = self.pool.get();
        let newest: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(self.keys.presence_events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        Ok(newest.into_iter().next().map(|(id, _)| id).unwrap_or_else(|| "0-0".into()))
    }

    /// True when events after `cursor` may already have been trimmed away: the stream has
    /// lost entries to its length cap and the cursor is older than the oldest one kept.
    /// (Trimming does not record which ids it removed, so a cursor that was exactly the
    /// last trimmed entry is also refused: the error errs toward a resync, never toward
    /// a silent gap.)
    pub async fn trimmed_past(&self, cursor: (u64, u64)) -> Result<bool, Error> {
        let mut c = self.pool.get();
        let info: redis::RedisResult<Vec<redis::Value>> =
            redis::cmd("XINFO").arg("STREAM").arg(self.keys.presence_events()).query_async(&mut c).await;
        let info = match info {
            Ok(v) => v,
            // No stream yet: nothing was ever trimmed.
            Err(e) if e.code() == Some("ERR") => return Ok(false),
            Err(e) => return Err(e.into()),
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
}

type EventsReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

impl Store {
    /// Reads up to `count` events after `cursor`, waiting up to `block` for the first, on
    /// a connection of the caller's own (a blocking read would stall a shared one).
    pub async fn wait_for_events(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        cursor: &str,
        block: Duration,
        count: usize,
    ) -> Result<Vec<Event>, Error> {
        let reply: EventsReply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(ms(block))
            .arg("STREAMS")
            .arg(self.keys.presence_events())
            .arg(cursor)
            .query_async(conn)
            .await?;
        Ok(reply.into_iter().flatten().flat_map(|(_, entries)| entries).map(|(id, f)| event(id, f)).collect())
    }

    /// Up to `count` events after `cursor`, without waiting, on the pool.
    pub async fn events_after(&self, cursor: &str, count: usize) -> Result<Vec<Event>, Error> {
        let mut c = self.pool.get();
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(self.keys.presence_events())
            .arg(format!("({cursor}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await?;
        Ok(entries.into_iter().map(|(id, f)| event(id, f)).collect())
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
        let e = event("5-0".into(), f(&["u", "ann", "k", "off", "r", "expired", "t", "123"]));
        assert_eq!((e.user.as_str(), e.online, e.expired, e.time_ms), ("ann", false, true, 123));
        let e = event("6-0".into(), f(&["u", "bob", "k", "on", "s", "phone", "t", "7"]));
        assert_eq!((e.online, e.session.as_str()), (true, "phone"));
    }
}
