//! Histories: each user's inbox, each group's history and the broadcast history.
//!
//! A history is a Redis STREAM whose entry ids are the message ids, next to a `:meta`
//! HASH:
//! - `epoch`: made (from Redis's clock, in µs) when the meta is created. A history that
//!   was lost (expired meta, Redis without persistence) starts over with a new epoch, so
//!   a cursor from before the loss can never pass for a position in the new one.
//! - `last`: the newest id ever appended (the stream itself may have expired).
//!
//! - `floor`: everything at or before it is gone: set when the stream is re-created
//!   after it expired while the meta lived on, and when a new meta is made for a stream
//!   whose entries outlived the old one (they belong to a dead epoch).
//!
//! Pushing appends to the history and publishes in one Lua script (`lua/push.lua`), so
//! the id a device receives live is the id it resumes from. A resume (`lua/replay.lua`)
//! reads what follows a cursor in pages; it knows whether anything after the cursor was
//! trimmed and says so instead of skipping it. The scripts live in `lua/`, run by
//! [`crate::store`].
use std::{fmt, str::FromStr};

use push_common::{
    ids::{GroupId, Id, UserId},
    keys::{ChannelOf, Keys},
    validate::Violations,
};
use push_proto::push::v1::{self as pb, Audience};

/// Largest number accepted in an id or epoch: Lua compares them as doubles.
const MAX_PART: u64 = (1 << 53) - 1;

/// A stream entry id, `<ms>-<seq>`: a message id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// The smallest id after this one.
    pub fn next(self) -> StreamId {
        StreamId { ms: self.ms, seq: self.seq + 1 }
    }
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
    Group(GroupId),
}

impl Source {
    /// What a message on `channel` belongs to, for a stream of that channel's user.
    pub fn of_channel(c: ChannelOf<'_>) -> Option<Source> {
        Some(match c {
            ChannelOf::All => Source::All,
            ChannelOf::User(_) => Source::Inbox,
            ChannelOf::Group(g) => Source::Group(GroupId::parse(g).ok()?),
        })
    }

    /// The history's name in errors: "inbox", "all" or "group:<id>".
    pub fn name(&self) -> String {
        match self {
            Source::All => "all".into(),
            Source::Inbox => "inbox".into(),
            Source::Group(g) => format!("group:{g}"),
        }
    }

    /// The history's stream and meta keys, for `user`.
    pub fn keys(&self, keys: &Keys, user: &UserId) -> (String, String) {
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
            _ => Source::Group(GroupId::parse(s.strip_prefix("g:")?).ok()?),
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

/// The history an `(audience, group_id)` pair names, each given with its field name;
/// None (with violations) when it names none.
pub fn parse_source(v: &mut Violations, audience: (&str, i32), group_id: (&str, &str)) -> Option<Source> {
    let ((audience_field, audience), (group_field, group)) = (audience, group_id);
    let source = match Audience::try_from(audience) {
        Ok(Audience::All) => Some(Source::All),
        Ok(Audience::User) => Some(Source::Inbox),
        Ok(Audience::Group) => Some(Source::Group(v.parse(group_field, group)?)),
        _ => {
            v.add(audience_field, "must be AUDIENCE_ALL, AUDIENCE_USER or AUDIENCE_GROUP");
            if !group.is_empty() {
                v.id(group_field, group);
            }
            None
        }
    };
    if !matches!(source, Some(Source::Group(_)) | None) && !group.is_empty() {
        v.add(group_field, "must be empty unless audience is AUDIENCE_GROUP");
    }
    source
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
        let source = parse_source(v, (&at("audience"), c.audience), (&at("group_id"), &c.group_id));
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

/// A stored position, `EPOCH/ID`: a device's acknowledged one, or where a group's
/// history stood when a user joined it.
pub fn parse_position(value: &str) -> Option<Pos> {
    let (e, id) = value.split_once('/')?;
    Some(Pos { epoch: parse_epoch(e)?, id: id.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(g: &str) -> GroupId {
        GroupId::parse(g).unwrap()
    }

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
    fn ack_fields_round_trip() {
        for s in [Source::All, Source::Inbox, Source::Group(group("g.1"))] {
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
        assert_eq!(got[1].0, Source::Group(group("g")));

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
