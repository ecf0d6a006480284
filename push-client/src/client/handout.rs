//! Handing out what the gateway sent: each item's states and messages become events,
//! deduplicated, with the cursors and the delivered positions moved as they go and each
//! gap told once. Separate from the event loop: it is what the app is handed, whatever
//! stream it came on.

use super::{Event, Events, lock};
use crate::{
    cursors::Change,
    history::{History, MessageId},
};

impl Events {
    /// The next event of the items received, updating the cursors as it goes.
    pub(super) fn buffered_event(&mut self) -> Option<Event> {
        loop {
            if self.states.len() == 0 && self.messages.len() == 0 {
                let item = self.queued.pop_front()?;
                self.states = item.states.into_iter();
                self.messages = item.messages.into_iter();
            }
            if let Some(e) = self.next_of_item() {
                return Some(e);
            }
        }
    }

    /// The next event of the current item, if any.
    fn next_of_item(&mut self) -> Option<Event> {
        let mut cursors = lock(&self.shared.cursors);
        for state in self.states.by_ref() {
            match cursors.apply_state(&state) {
                Some(Change::Gap(h)) => {
                    let c = state.cursor.as_ref()?;
                    // "5" and "5-0" are one point.
                    let point =
                        c.message_id.parse::<MessageId>().map_or_else(|_| c.message_id.clone(), |id| id.to_string());
                    let gap = (c.epoch.clone(), point);
                    if self.gaps.get(&h) != Some(&gap) {
                        self.gaps.insert(h.clone(), gap);
                        return Some(Event::Gap(h));
                    }
                }
                Some(Change::Left(h)) => {
                    self.gaps.remove(&h);
                    lock(&self.shared.handed).forget(&h);
                    return Some(Event::Left(h));
                }
                _ => {}
            }
        }
        let m = self.messages.by_ref().find(|m| cursors.apply_message(m))?;
        // What the app is handed, to acknowledge: the message's position, when it has one.
        if let Some(h) = History::of(&m)
            && let Some(c) = cursors.cursor(&h)
            && c.message_id.parse::<MessageId>() == m.id.parse::<MessageId>()
        {
            lock(&self.shared.handed).advance_to(&h, &c);
        }
        Some(Event::Message(m))
    }
}

#[cfg(test)]
mod tests {
    use push_proto::push::v1::Continuity;

    use super::*;
    use crate::client::testing::{E1, E2, feed, msg, offline, state};

    /// A gap is told unless it is the very one told last for that history (same epoch,
    /// same point, "5" being "5-0"): a second gap at another point or in another epoch
    /// is a second loss, told even when no message came in between (a reconnect).
    #[test]
    fn a_gap_is_told_unless_it_is_the_one_told_last() {
        let (_client, mut events) = offline();
        let gap = |epoch: &str, id: &str| state(&History::Inbox, epoch, id, Continuity::Gap);
        assert_eq!(feed(&mut events, vec![gap(E1, "5-0")], vec![]), ["gap inbox"]);
        assert_eq!(feed(&mut events, vec![gap(E1, "5")], vec![]), Vec::<String>::new(), "the same gap again");
        assert_eq!(feed(&mut events, vec![gap(E1, "9-0")], vec![]), ["gap inbox"], "another point");
        assert_eq!(feed(&mut events, vec![gap(E2, "9-0")], vec![]), ["gap inbox"], "another epoch");
        assert_eq!(feed(&mut events, vec![gap(E2, "9-0")], vec![msg("10-0")]), ["message 10-0"]);
        assert_eq!(feed(&mut events, vec![gap(E2, "9-0")], vec![]), Vec::<String>::new(), "still the same gap");
        assert_eq!(feed(&mut events, vec![gap(E2, "12-0")], vec![]), ["gap inbox"]);
        // Another history's gaps are its own.
        assert_eq!(feed(&mut events, vec![state(&History::All, E2, "12-0", Continuity::Gap)], vec![]), ["gap all"]);
    }
}
