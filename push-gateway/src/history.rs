//! Histories: each user's inbox, each group's history and the broadcast history.
//!
//! A history is a Redis STREAM whose entry ids are the message ids, next to a `:meta`
//! HASH:
//! - `epoch`: made (from Redis's clock, in µs) when the meta is created. A history that
//!   was lost (expired meta, Redis without persistence) starts over with a new epoch, so
//!   a cursor from before the loss can never pass for a position in the new one.
//! - `last`: the newest id ever appended (the stream itself may have expired).
//! - `floor`: set when the stream is re-created after it expired while the meta lived
//!   on: everything at or before it is gone.
//!
//! Pushing appends to the history and publishes in one Lua script ([`PUSH`]), so the id
//! a device receives live is the id it resumes from. A resume ([`REPLAY`]) reads what
//! follows a cursor in pages; it knows whether anything after the cursor was trimmed
//! (Redis's `max-deleted-entry-id`, the floor) and says so instead of skipping it.
use std::{fmt, str::FromStr};

use push_common::{keys::ChannelOf, keys::Keys, validate::Violations};
use push_proto::push::v1::{self as pb, Audience};

/// Largest number accepted in an id or epoch: Lua compares them as doubles.
const MAX_PART: u64 = (1 << 53) - 1;

/// A stream entry id, `<ms>-<seq>`: a message id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl FromStr for StreamId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        let part = |p: &str| -> Result<u64, ()> {
            if p.is_empty() || p.len() > 16 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            p.parse().ok().filter(|n| *n <= MAX_PART).ok_or(())
        };
        Ok(StreamId { ms: part(ms)?, seq: part(seq)? })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The id of a message as [`PUSH`] writes it: the first field, `0x0A len id`.
pub fn message_id(encoded: &[u8]) -> Option<StreamId> {
    let (&tag, rest) = encoded.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if tag != 0x0A || len >= 0x80 {
        return None;
    }
    std::str::from_utf8(rest.get(..len as usize)?).ok()?.parse().ok()
}

/// Parses an epoch as sent to devices (decimal).
pub fn parse_epoch(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| *n <= MAX_PART)
}

/// A position in a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub epoch: u64,
    pub id: StreamId,
}

/// Which history, from the point of view of one user's stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    All,
    Inbox,
    Group(Box<str>),
}

impl Source {
    /// What a message on `channel` belongs to, for a stream of that channel's user.
    pub fn of_channel(c: ChannelOf<'_>) -> Source {
        match c {
            ChannelOf::All => Source::All,
            ChannelOf::User(_) => Source::Inbox,
            ChannelOf::Group(g) => Source::Group(g.into()),
        }
    }

    /// The history's stream and meta keys, for `user`.
    pub fn keys(&self, keys: &Keys, user: &str) -> (String, String) {
        let stream = match self {
            Source::All => keys.all_history(),
            Source::Inbox => keys.inbox(user),
            Source::Group(g) => keys.group_history(g),
        };
        let meta = Keys::history_meta(&stream);
        (stream, meta)
    }

    /// The field of a device's position in the user's acks hash.
    pub fn ack_field(&self, device: &str) -> String {
        match self {
            Source::All => format!("{device}|a"),
            Source::Inbox => format!("{device}|i"),
            Source::Group(g) => format!("{device}|g:{g}"),
        }
    }

    /// The inverse of [`Source::ack_field`]: the device and the source.
    pub fn of_ack_field(field: &str) -> Option<(&str, Source)> {
        let (device, s) = field.split_once('|')?;
        let source = match s {
            "a" => Source::All,
            "i" => Source::Inbox,
            _ => Source::Group(s.strip_prefix("g:")?.into()),
        };
        Some((device, source))
    }

    /// This history as a cursor at `pos`.
    pub fn cursor(&self, epoch: u64, id: StreamId) -> pb::Cursor {
        let (audience, group_id) = match self {
            Source::All => (Audience::All, String::new()),
            Source::Inbox => (Audience::User, String::new()),
            Source::Group(g) => (Audience::Group, g.to_string()),
        };
        pb::Cursor { audience: audience as i32, group_id, epoch: epoch.to_string(), message_id: id.to_string() }
    }
}

/// Where a stream starts in one history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// After this position (the device's cursor or acknowledged position).
    After(Pos),
    /// At the history's end: only what is pushed from now on.
    Now,
}

/// Validates `cursors` (field `field`) and returns them by source. Each history at most
/// once; at most `max` of them.
pub fn parse_cursors(v: &mut Violations, field: &str, cursors: &[pb::Cursor], max: usize) -> Vec<(Source, Pos)> {
    if cursors.len() > max {
        v.add(field, format!("must hold at most {max} cursors, got {}", cursors.len()));
        return Vec::new();
    }
    let mut out: Vec<(Source, Pos)> = Vec::with_capacity(cursors.len());
    for (i, c) in cursors.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        let source = match Audience::try_from(c.audience) {
            Ok(Audience::All) => Some(Source::All),
            Ok(Audience::User) => Some(Source::Inbox),
            Ok(Audience::Group) => {
                v.id(&at("group_id"), &c.group_id);
                Some(Source::Group(c.group_id.as_str().into()))
            }
            _ => {
                v.add(at("audience"), "must be AUDIENCE_ALL, AUDIENCE_USER or AUDIENCE_GROUP");
                if !c.group_id.is_empty() {
                    v.id(&at("group_id"), &c.group_id);
                }
                None
            }
        };
        if !matches!(source, Some(Source::Group(_)) | None) && !c.group_id.is_empty() {
            v.add(at("group_id"), "must be empty unless audience is AUDIENCE_GROUP");
        }
        let epoch = parse_epoch(&c.epoch);
        if epoch.is_none() {
            v.add(at("epoch"), "must be an epoch as reported by a HistoryState (decimal digits)");
        }
        let id = c.message_id.parse::<StreamId>().ok();
        if id.is_none() {
            v.add(at("message_id"), "must be a message id, \"<ms>-<seq>\" (\"0-0\" for none)");
        }
        if let (Some(source), Some(epoch), Some(id)) = (source, epoch, id) {
            if out.iter().any(|(s, _)| *s == source) {
                v.add(at("audience"), "names a history that an earlier cursor already names");
            } else {
                out.push((source, Pos { epoch, id }));
            }
        }
    }
    out
}

/// Appends a message to histories and publishes it, once per idempotency key.
///
/// KEYS: per target its stream and meta key; then the idempotency record (if any).
/// ARGV: [1] targets, [2] idempotency window in ms (0: no key), [3] max entries,
/// [4] max age in ms, [5] meta TTL in ms, [6] the encoded message without its id,
/// [6 + i] target i's channel.
///
/// One id serves every target: at least Redis's clock now, and above each target's
/// last id, so ids grow within every history. The id is written as the message's first
/// field. A history without meta gets a new epoch, announced on its channel. Returns
/// the message id (the first push's, for a repeated idempotency key).
pub const PUSH: &str = r"
local n = tonumber(ARGV[1])
if ARGV[2] ~= '0' then
  local first = redis.call('GET', KEYS[2 * n + 1])
  if first then return first end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms, seq = now, 0
local metas = {}
for i = 1, n do
  local m = redis.call('HMGET', KEYS[2 * i], 'epoch', 'last')
  metas[i] = m
  if m[2] then
    local a, b = string.match(m[2], '^(%d+)-(%d+)$')
    a, b = tonumber(a), tonumber(b)
    if a > ms or (a == ms and b >= seq) then ms, seq = a, b + 1 end
  end
end
local id = string.format('%d-%d', ms, seq)
local msg = '\10' .. string.char(#id) .. id .. ARGV[6]
local env = '\1' .. msg
local minid = string.format('%d', now - tonumber(ARGV[4]))
for i = 1, n do
  local s, meta, ch, m = KEYS[2 * i - 1], KEYS[2 * i], ARGV[6 + i], metas[i]
  if not m[1] then
    local epoch = string.format('%d%06d', t[1], t[2])
    redis.call('HSET', meta, 'epoch', epoch)
    redis.call('PUBLISH', ch, '\4' .. epoch)
  end
  if m[2] and redis.call('EXISTS', s) == 0 then redis.call('HSET', meta, 'floor', m[2]) end
  redis.call('XADD', s, 'MAXLEN', '~', ARGV[3], id, 'm', msg)
  redis.call('XTRIM', s, 'MINID', '~', minid)
  redis.call('PEXPIRE', s, ARGV[4])
  redis.call('HSET', meta, 'last', id)
  redis.call('PEXPIRE', meta, ARGV[5])
  redis.call('PUBLISH', ch, env)
end
if ARGV[2] ~= '0' then redis.call('SET', KEYS[2 * n + 1], id, 'PX', ARGV[2]) end
return id
";

/// Id comparison in Lua (ids are `<ms>-<seq>` with parts below 2^53).
const LUA_IDS: &str = r"
local function split(id)
  local a, b = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(a), tonumber(b)
end
local function less(x, y)
  local a, b = split(x)
  local c, d = split(y)
  return a < c or (a == c and b < d)
end
";

/// One page of a history after a cursor.
///
/// KEYS: stream, meta. ARGV: cursor epoch ('' for none: start at the end), cursor id,
/// page size, meta TTL in ms. Creates the meta (a new epoch) when there is none, so the
/// epoch reported is the one later pushes use.
///
/// Returns {epoch, point, continuity, id1, message1, id2, ...}: the stream continues
/// after `point` with the entries listed. Continuity 1: resumed at the cursor, nothing
/// missed. 2: no cursor, `point` is the last id. 3: a gap: the cursor's epoch is not
/// the history's, or entries after it may have been trimmed or expired, or it is past
/// the last id (the history was rolled back); `point` is then just before the first
/// retained entry and what is retained follows.
///
/// Redis does not record the largest trimmed id (`max-deleted-entry-id` counts only
/// XDEL), so a cursor before the first retained entry of a trimmed stream is a gap even
/// in the rare case that the cursor was itself the last entry trimmed: a needless
/// resync at worst, never a silent loss.
pub const REPLAY_BODY: &str = r"
local s, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  local t = redis.call('TIME')
  epoch = string.format('%d%06d', t[1], t[2])
  redis.call('HSET', meta, 'epoch', epoch)
end
redis.call('PEXPIRE', meta, ARGV[4])
local last = redis.call('HGET', meta, 'last') or '0-0'
if ARGV[1] == '' then return {epoch, last, 2} end
local first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)[1]
first = first and first[1]
-- Just before the first retained entry: where a replay of everything retained starts.
local function before_first()
  if not first then return last end
  local a, b = split(first)
  if b > 0 then return string.format('%d-%d', a, b - 1) end
  return string.format('%d-%d', a - 1, 9007199254740991)
end
local point, continuity = ARGV[2], 1
if ARGV[1] ~= epoch then
  point, continuity = before_first(), 3
elseif less(last, point) then
  point, continuity = last, 3
elseif not first then
  if less(point, last) then point, continuity = last, 3 end
elseif less(point, first) then
  -- Entries before the first retained one were trimmed (Redis counts every entry ever
  -- added) or expired with an earlier stream (the floor): conservatively a gap.
  local floor = redis.call('HGET', meta, 'floor')
  local trimmed = floor and less(point, floor)
  if not trimmed then
    local info = redis.call('XINFO', 'STREAM', s)
    local added, length = 0, 0
    for i = 1, #info, 2 do
      if info[i] == 'entries-added' then added = info[i + 1] end
      if info[i] == 'length' then length = info[i + 1] end
    end
    trimmed = added > length
  end
  if trimmed then point, continuity = before_first(), 3 end
end
local out = {epoch, point, continuity}
if tonumber(ARGV[3]) == 0 then return out end
for _, e in ipairs(redis.call('XRANGE', s, '(' .. point, '+', 'COUNT', ARGV[3])) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return out";

/// Moves a device's acknowledged positions forward (never back).
///
/// KEYS: the user's acks hash. ARGV: TTL in ms, then per position: field, epoch, id.
/// A position is newer when its epoch is (epochs come from Redis's clock), or, in the
/// same epoch, its id. Returns how many moved.
pub const ACK_BODY: &str = r"
local moved = 0
for i = 2, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local newer = true
  if cur then
    local e, id = string.match(cur, '^(%d+)/(.+)$')
    e = tonumber(e)
    local ne = tonumber(ARGV[i + 1])
    newer = ne > e or (ne == e and less(id, ARGV[i + 2]))
  end
  if newer then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. '/' .. ARGV[i + 2])
    moved = moved + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return moved
";

/// A script body with the id helpers in front.
pub fn with_ids(body: &str) -> String {
    format!("{LUA_IDS}{body}")
}

/// A stored position, `EPOCH/ID`: a device's acknowledged one, or where a group's
/// history stood when a user joined it.
pub fn parse_position(value: &str) -> Option<Pos> {
    let (e, id) = value.split_once('/')?;
    Some(Pos { epoch: parse_epoch(e)?, id: id.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_order() {
        let a: StreamId = "1764262800123-0".parse().unwrap();
        assert_eq!(a.to_string(), "1764262800123-0");
        assert!(a < "1764262800123-1".parse().unwrap());
        assert!(a < "1764262800124-0".parse().unwrap());
        for bad in ["", "1", "1-", "-1", "a-1", "1-2-3", "+1-0", "1 -0", "99999999999999999-0", "9007199254740992-0"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?}");
        }
        assert_eq!(parse_epoch("1764262800123456"), Some(1764262800123456));
        assert_eq!(parse_epoch(""), None);
        assert_eq!(parse_epoch("-1"), None);
    }

    #[test]
    fn message_ids_are_read_from_the_first_field() {
        let mut m = vec![0x0A, 15];
        m.extend_from_slice(b"1764262800123-7");
        m.extend_from_slice(&[0x12, 1, b't']);
        assert_eq!(message_id(&m), Some(StreamId { ms: 1764262800123, seq: 7 }));
        assert_eq!(message_id(&[0x12, 1, b't']), None);
        assert_eq!(message_id(&[0x0A, 40, b'1']), None, "truncated");
        assert_eq!(message_id(&[]), None);
    }

    #[test]
    fn ack_fields_round_trip() {
        for s in [Source::All, Source::Inbox, Source::Group("g.1".into())] {
            let f = s.ack_field("phone");
            assert_eq!(Source::of_ack_field(&f), Some(("phone", s)));
        }
        assert_eq!(parse_position("17/5-1"), Some(Pos { epoch: 17, id: StreamId { ms: 5, seq: 1 } }));
        assert_eq!(parse_position("17-5-1"), None);
    }

    fn fields(v: Violations) -> Vec<String> {
        match v.check() {
            Err(push_common::Error::InvalidArgument(all)) => all.into_iter().map(|f| f.field).collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn cursors_are_validated_per_field() {
        let ok = |audience: Audience, group: &str| pb::Cursor {
            audience: audience as i32,
            group_id: group.into(),
            epoch: "12".into(),
            message_id: "5-0".into(),
        };
        let mut v = Violations::new();
        let got = parse_cursors(&mut v, "cursors", &[ok(Audience::User, ""), ok(Audience::Group, "g")], 10);
        assert!(v.is_empty());
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, Source::Group("g".into()));

        for (bad, field) in [
            (ok(Audience::Unspecified, ""), "cursors[0].audience"),
            (ok(Audience::Group, ""), "cursors[0].group_id"),
            (ok(Audience::All, "g"), "cursors[0].group_id"),
            (pb::Cursor { epoch: "x".into(), ..ok(Audience::All, "") }, "cursors[0].epoch"),
            (pb::Cursor { message_id: "5".into(), ..ok(Audience::All, "") }, "cursors[0].message_id"),
        ] {
            let mut v = Violations::new();
            parse_cursors(&mut v, "cursors", &[bad], 10);
            assert_eq!(fields(v), vec![field.to_string()]);
        }
        let mut v = Violations::new();
        parse_cursors(&mut v, "cursors", &[ok(Audience::All, ""), ok(Audience::All, "")], 10);
        assert_eq!(fields(v), vec!["cursors[1].audience".to_string()]);
        let mut v = Violations::new();
        parse_cursors(&mut v, "cursors", &[ok(Audience::All, ""), ok(Audience::User, "")], 1);
        assert!(!v.is_empty());
    }
}
