//! [`Cursors`]: where a device stands in each history it reads. Pure: no I/O, no clock.
use std::collections::BTreeMap;

use push_proto::{
    push::v1::{Audience, Continuity, Cursor, HistoryState, Message},
    wire::SubscribeResponse,
};

use crate::history::{History, MessageId};

/// Per history, the epoch of the last [`HistoryState`] and the id of the last message:
/// what a device sends to resume ([`Cursors::cursors`]) and to acknowledge.
///
/// Feed it every stream item ([`Cursors::apply`], or [`Cursors::apply_state`] and
/// [`Cursors::apply_message`] one by one, states first as the contract asks). It
///
/// - **drops duplicates**: a message whose id is not after the last one of its history
///   (in the same epoch) was seen already. The gateway sends none on one stream; they
///   come when two streams overlap (a token refresh opens the new stream before
///   dropping the old one, and the new one replays from the cursors it was given);
/// - **says what a state means for the app** ([`Change`]): a gap to resync, a group
///   left (its cursor is forgotten: the gateway refuses it from then on);
/// - never moves a position back within an epoch, except when the gateway says a gap
///   starts there (what followed was lost, e.g. a Redis failover rolled the history
///   back; the ids after it are new messages).
///
/// A message of a history it has no position for (no state came first, which the
/// gateway never does) is let through and not tracked. Neither is a message whose id
/// does not parse.
///
/// ```
/// use push_client::{Change, Cursors, History};
/// use push_proto::push::v1::{Audience, Continuity, Cursor, HistoryState, Message};
///
/// let state = |continuity: Continuity, id: &str| HistoryState {
///     cursor: Some(History::Inbox.cursor("1700000000000", id)),
///     continuity: continuity as i32,
/// };
/// let msg = |id: &str| Message { id: id.into(), audience: Audience::User as i32, ..Default::default() };
///
/// let mut cursors = Cursors::new();
/// assert_eq!(cursors.apply_state(&state(Continuity::FromNow, "9-0")), Some(Change::FromNow(History::Inbox)));
/// assert!(cursors.apply_message(&msg("10-0"))); // new: 10 > 9, as numbers
/// assert!(!cursors.apply_message(&msg("10-0"))); // a duplicate
/// assert_eq!(cursors.cursor(&History::Inbox).unwrap().message_id, "10-0");
///
/// // After a reconnect the gateway says what was lost, if anything.
/// assert_eq!(cursors.apply_state(&state(Continuity::Gap, "42-0")), Some(Change::Gap(History::Inbox)));
///
/// // Saved and restored, e.g. across an app restart.
/// let saved: Vec<Cursor> = cursors.cursors();
/// assert_eq!(Cursors::from_saved(saved).unwrap(), cursors);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursors {
    /// The inbox and the broadcast history apart from the groups: a message's history
    /// is then found from its (audience, group id) without building a key, so applying
    /// a message allocates nothing.
    inbox: Option<Position>,
    all: Option<Position>,
    groups: BTreeMap<String, Position>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    epoch: String,
    last: MessageId,
}

/// What a [`HistoryState`] means for the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing was missed: every message after the position follows (also sent when a
    /// history's epoch changes while followed live).
    Resumed(History),
    /// No position: messages pushed from now on follow.
    FromNow(History),
    /// Messages were lost before what follows (trimmed, expired, or the history started
    /// over): the app must fetch that history's missing part from its backend (or with
    /// `ListHistory`). A state of a continuity this client does not know is taken as a
    /// gap too: a needless resync is better than a missed message.
    Gap(History),
    /// The user left this group: nothing more follows and its cursor is forgotten.
    Left(History),
}

impl Change {
    /// The history the state was about.
    pub fn history(&self) -> &History {
        match self {
            Change::Resumed(h) | Change::FromNow(h) | Change::Gap(h) | Change::Left(h) => h,
        }
    }
}

/// What [`Cursors::apply`] did with one stream item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// One per state the item held (naming a history), in order.
    pub changes: Vec<Change>,
    /// Messages dropped from the item as already seen.
    pub duplicates: usize,
}

/// A saved cursor that cannot be resumed from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor {index}: {reason}")]
pub struct BadCursor {
    /// Its place in the list given.
    pub index: usize,
    pub reason: String,
}

impl Cursors {
    /// No position anywhere: a device's first start (the gateway then starts each
    /// history from the device's acknowledged position, or from now).
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions saved earlier (from [`Cursors::cursors`]), e.g. across an app restart.
    /// Every cursor must name a history, an epoch and a message id (`"0-0"` for none);
    /// of two cursors of one history the later one counts.
    pub fn from_saved(saved: impl IntoIterator<Item = Cursor>) -> Result<Self, BadCursor> {
        let mut cursors = Self::new();
        for (index, c) in saved.into_iter().enumerate() {
            cursors.insert(&c).map_err(|reason| BadCursor { index, reason })?;
        }
        Ok(cursors)
    }

    /// Sets one history's position, as given (e.g. after the app resynced it).
    pub fn set(&mut self, cursor: &Cursor) -> Result<(), BadCursor> {
        self.insert(cursor).map_err(|reason| BadCursor { index: 0, reason })
    }

    fn insert(&mut self, c: &Cursor) -> Result<(), String> {
        let history = History::of_cursor(c).ok_or("it names no history (audience, and group_id for a group)")?;
        if c.epoch.is_empty() {
            return Err("it has no epoch".into());
        }
        let last = c.message_id.parse::<MessageId>().map_err(|e| e.to_string())?;
        self.put(&history, Position { epoch: c.epoch.clone(), last });
        Ok(())
    }

    /// Applies one stream item: its states, then its messages, from which it removes
    /// the duplicates.
    pub fn apply(&mut self, item: &mut SubscribeResponse) -> Applied {
        let changes = item.states.iter().filter_map(|s| self.apply_state(s)).collect();
        let before = item.messages.len();
        item.messages.retain(|m| self.apply_message(m));
        Applied { changes, duplicates: before - item.messages.len() }
    }

    /// Applies one state; `None` when it names no history.
    pub fn apply_state(&mut self, state: &HistoryState) -> Option<Change> {
        let c = state.cursor.as_ref()?;
        let history = History::of_cursor(c)?;
        // An id that does not parse (never sent) replays the epoch: duplicates over losses.
        let at = c.message_id.parse().unwrap_or(MessageId::ZERO);
        let continuity = Continuity::try_from(state.continuity).ok();
        match continuity {
            Some(Continuity::Left) => {
                self.forget(&history);
                Some(Change::Left(history))
            }
            Some(Continuity::Resumed | Continuity::FromNow) => {
                match self.position_mut(c.audience, &c.group_id) {
                    // The same epoch: never back. A stream opened with older cursors than
                    // what another stream has delivered since resumes behind it.
                    Some(p) if p.epoch == c.epoch => p.last = p.last.max(at),
                    _ => self.put(&history, Position { epoch: c.epoch.clone(), last: at }),
                }
                Some(match continuity {
                    Some(Continuity::Resumed) => Change::Resumed(history),
                    _ => Change::FromNow(history),
                })
            }
            // A gap, or a continuity unknown to this client: the gateway's position
            // holds, even behind ours (what we had after it is gone from the history).
            _ => {
                self.put(&history, Position { epoch: c.epoch.clone(), last: at });
                Some(Change::Gap(history))
            }
        }
    }

    /// Applies one message: true when it is new (deliver it), false for a duplicate.
    pub fn apply_message(&mut self, message: &Message) -> bool {
        let Ok(id) = message.id.parse::<MessageId>() else { return true };
        match self.position_mut(message.audience, &message.group_id) {
            Some(p) if id <= p.last => false,
            Some(p) => {
                p.last = id;
                true
            }
            None => true,
        }
    }

    /// Whether a stream whose state this is continues seamlessly from this set's
    /// position: what a client asks of a second stream before it drops the first (a
    /// token refresh). It does when it resumes in the same epoch at or before the
    /// position (the overlap is dropped as duplicates), or starts a history this set
    /// has no position for, or says the group was left. It does not on a gap (or a
    /// continuity unknown to this client), in another epoch, or ahead of the position
    /// (what is in between would be skipped).
    ///
    /// ```
    /// use push_client::{Cursors, History};
    /// use push_proto::push::v1::{Continuity, HistoryState};
    ///
    /// let state = |continuity: Continuity, epoch: &str, id: &str| HistoryState {
    ///     cursor: Some(History::Inbox.cursor(epoch, id)),
    ///     continuity: continuity as i32,
    /// };
    /// let cursors = Cursors::from_saved([History::Inbox.cursor("17", "9-0")]).unwrap();
    /// assert!(cursors.continues(&state(Continuity::Resumed, "17", "5-0")));
    /// assert!(!cursors.continues(&state(Continuity::Resumed, "17", "10-0")));
    /// assert!(!cursors.continues(&state(Continuity::Resumed, "18", "1-0")));
    /// assert!(!cursors.continues(&state(Continuity::Gap, "17", "5-0")));
    /// ```
    pub fn continues(&self, state: &HistoryState) -> bool {
        let Some(c) = state.cursor.as_ref() else { return true };
        let Some(history) = History::of_cursor(c) else { return true };
        match Continuity::try_from(state.continuity).ok() {
            Some(Continuity::Left) => true,
            Some(Continuity::Resumed | Continuity::FromNow) => match self.position(&history) {
                None => true,
                Some(p) => p.epoch == c.epoch && c.message_id.parse().unwrap_or(MessageId::ZERO) <= p.last,
            },
            _ => false,
        }
    }

    /// Every position, as cursors to resume from or to acknowledge: the inbox, the
    /// broadcast history, then the groups by id.
    pub fn cursors(&self) -> Vec<Cursor> {
        let fixed = [(History::Inbox, &self.inbox), (History::All, &self.all)];
        let fixed = fixed.into_iter().filter_map(|(h, p)| p.as_ref().map(|p| p.cursor(&h)));
        fixed.chain(self.groups.iter().map(|(g, p)| p.cursor(&History::Group(g.clone())))).collect()
    }

    /// One history's position.
    pub fn cursor(&self, history: &History) -> Option<Cursor> {
        self.position(history).map(|p| p.cursor(history))
    }

    /// Forgets one history's position.
    pub fn forget(&mut self, history: &History) {
        match history {
            History::Inbox => self.inbox = None,
            History::All => self.all = None,
            History::Group(g) => {
                self.groups.remove(g);
            }
        }
    }

    /// How many histories have a position.
    pub fn len(&self) -> usize {
        usize::from(self.inbox.is_some()) + usize::from(self.all.is_some()) + self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cursors of this set that are after `acked`'s position in the same history
    /// (or in a history `acked` has none for): what an ack would move forward.
    pub(crate) fn after(&self, acked: &Cursors) -> Vec<Cursor> {
        let mut out = self.cursors();
        out.retain(|c| {
            let Some(h) = History::of_cursor(c) else { return false };
            let id = c.message_id.parse().unwrap_or(MessageId::ZERO);
            acked.position(&h).is_none_or(|a| is_after(&c.epoch, id, &a.epoch, a.last))
        });
        out
    }

    /// Sets one history's position to `cursor`'s (a message handed out), as it is.
    pub(crate) fn advance_to(&mut self, history: &History, cursor: &Cursor) {
        if let Ok(last) = cursor.message_id.parse() {
            self.put(history, Position { epoch: cursor.epoch.clone(), last });
        }
    }

    /// Moves positions forward to `cursors` (those that are after what this set holds).
    pub(crate) fn advance(&mut self, cursors: &[Cursor]) {
        for c in cursors {
            let (Some(h), Ok(id)) = (History::of_cursor(c), c.message_id.parse::<MessageId>()) else { continue };
            if self.position(&h).is_none_or(|a| is_after(&c.epoch, id, &a.epoch, a.last)) {
                self.put(&h, Position { epoch: c.epoch.clone(), last: id });
            }
        }
    }

    fn position(&self, history: &History) -> Option<&Position> {
        match history {
            History::Inbox => self.inbox.as_ref(),
            History::All => self.all.as_ref(),
            History::Group(g) => self.groups.get(g),
        }
    }

    /// A position by the wire's (audience, group id): no allocation.
    fn position_mut(&mut self, audience: i32, group_id: &str) -> Option<&mut Position> {
        match Audience::try_from(audience).ok()? {
            Audience::User => self.inbox.as_mut(),
            Audience::All => self.all.as_mut(),
            Audience::Group => self.groups.get_mut(group_id),
            Audience::Unspecified => None,
        }
    }

    fn put(&mut self, history: &History, p: Position) {
        match history {
            History::Inbox => self.inbox = Some(p),
            History::All => self.all = Some(p),
            History::Group(g) => {
                self.groups.insert(g.clone(), p);
            }
        }
    }
}

impl Position {
    fn cursor(&self, history: &History) -> Cursor {
        history.cursor(&self.epoch, &self.last.to_string())
    }
}

/// Whether (epoch, id) is after (other epoch, other id), as the gateway orders acks: a
/// newer epoch (epochs are numbers, made from Redis's clock), else a later id. Epochs
/// that are not both numbers are taken as newer, and left to the gateway to judge.
fn is_after(epoch: &str, id: MessageId, other_epoch: &str, other_id: MessageId) -> bool {
    if epoch == other_epoch {
        return id > other_id;
    }
    match (epoch.parse::<u64>(), other_epoch.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => true,
    }
}

#[cfg(test)]
mod tests;
