//! Names: which history a message or cursor belongs to ([`History`]), and a message's
//! place in it ([`MessageId`]).
use std::{fmt, str::FromStr};

use push_proto::push::v1::{Audience, Cursor, Message};

/// One history a device reads: its user's inbox, the broadcast history, or a group's.
///
/// Displayed (and parsed) the way the gateway names a history in a strict-resume
/// failure: `inbox`, `all`, `group:<id>`.
///
/// ```
/// use push_client::History;
///
/// let h: History = "group:team".parse().unwrap();
/// assert_eq!(h, History::Group("team".into()));
/// assert_eq!(h.to_string(), "group:team");
/// assert_eq!("inbox".parse::<History>().unwrap(), History::Inbox);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum History {
    /// The user's inbox (`AUDIENCE_USER`).
    Inbox,
    /// The broadcast history (`AUDIENCE_ALL`).
    All,
    /// A group's history (`AUDIENCE_GROUP`).
    Group(String),
}

impl History {
    /// The history a message was pushed to; `None` for an unset audience (or a group
    /// message without a group).
    pub fn of(message: &Message) -> Option<History> {
        Self::from_parts(message.audience, &message.group_id)
    }

    /// The history a cursor names; `None` as for [`History::of`].
    pub fn of_cursor(cursor: &Cursor) -> Option<History> {
        Self::from_parts(cursor.audience, &cursor.group_id)
    }

    /// From the wire's (audience, group id) pair.
    pub fn from_parts(audience: i32, group_id: &str) -> Option<History> {
        match Audience::try_from(audience).ok()? {
            Audience::User => Some(History::Inbox),
            Audience::All => Some(History::All),
            Audience::Group if !group_id.is_empty() => Some(History::Group(group_id.to_owned())),
            Audience::Group | Audience::Unspecified => None,
        }
    }

    /// The wire's audience.
    pub fn audience(&self) -> Audience {
        match self {
            History::Inbox => Audience::User,
            History::All => Audience::All,
            History::Group(_) => Audience::Group,
        }
    }

    /// The group id, empty for the inbox and the broadcast history.
    pub fn group_id(&self) -> &str {
        match self {
            History::Group(g) => g,
            History::Inbox | History::All => "",
        }
    }

    /// A cursor in this history.
    pub fn cursor(&self, epoch: &str, message_id: &str) -> Cursor {
        Cursor {
            audience: self.audience() as i32,
            group_id: self.group_id().to_owned(),
            epoch: epoch.to_owned(),
            message_id: message_id.to_owned(),
        }
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            History::Inbox => f.write_str("inbox"),
            History::All => f.write_str("all"),
            History::Group(g) => write!(f, "group:{g}"),
        }
    }
}

/// Not a history name (`inbox`, `all` or `group:<id>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a history name: {0:?} (expected inbox, all or group:<id>)")]
pub struct BadHistory(pub String);

impl FromStr for History {
    type Err = BadHistory;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inbox" => Ok(History::Inbox),
            "all" => Ok(History::All),
            _ => match s.strip_prefix("group:") {
                Some(g) if !g.is_empty() => Ok(History::Group(g.to_owned())),
                _ => Err(BadHistory(s.to_owned())),
            },
        }
    }
}

/// A message id, `<ms>-<seq>` (a Redis stream id): ids grow within a history, and
/// compare as numbers, so `"9-0"` comes before `"10-0"` (as strings it would not).
///
/// ```
/// use push_client::MessageId;
///
/// let a: MessageId = "9-5".parse().unwrap();
/// let b: MessageId = "10-0".parse().unwrap();
/// assert!(a < b);
/// assert_eq!(b.to_string(), "10-0");
/// assert_eq!("7".parse::<MessageId>().unwrap(), MessageId::new(7, 0)); // as Redis reads it
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    ms: u64,
    seq: u64,
}

impl MessageId {
    /// `"0-0"`: before every message.
    pub const ZERO: MessageId = MessageId { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Not a message id (`<ms>-<seq>`, two decimal numbers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a message id: {0:?} (expected <ms>-<seq>)")]
pub struct BadMessageId(pub String);

impl FromStr for MessageId {
    type Err = BadMessageId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMessageId(s.to_owned());
        let number = |n: &str| -> Result<u64, BadMessageId> {
            // u64's parser takes a leading '+'; an id never has one.
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            n.parse().map_err(|_| bad())
        };
        match s.split_once('-') {
            Some((ms, seq)) => Ok(MessageId { ms: number(ms)?, seq: number(seq)? }),
            None => Ok(MessageId { ms: number(s)?, seq: 0 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_as_numbers() {
        let id = |s: &str| s.parse::<MessageId>().unwrap();
        assert!(id("9-0") < id("10-0"));
        assert!(id("10-9") < id("10-10"));
        assert!(id("0-0") < id("0-1"));
        assert_eq!(id("5"), id("5-0"));
        for bad in ["", "-", "1-", "-1", "a-1", "1-b", "+1-0", "1-0-0", "18446744073709551616-0"] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn histories_round_trip_through_names_and_wire_parts() {
        for h in [History::Inbox, History::All, History::Group("team".into())] {
            assert_eq!(h.to_string().parse::<History>().unwrap(), h);
            assert_eq!(History::from_parts(h.audience() as i32, h.group_id()), Some(h.clone()));
        }
        assert_eq!(History::from_parts(Audience::Group as i32, ""), None);
        assert_eq!(History::from_parts(0, ""), None);
        assert_eq!(History::from_parts(99, ""), None);
        assert!("group:".parse::<History>().is_err());
        assert!("inboxes".parse::<History>().is_err());
    }
}
