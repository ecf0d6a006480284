//! Where a stream stands in each history it follows, and how a live message stands
//! against that.
use push_common::ids::GroupId;

use crate::history::{Pos, Source, StreamId};

/// Where a live message stands against the stream's position.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Order {
    Next,
    /// At or before the position, or of a history the stream does not follow.
    Stale,
    Missing,
}

/// The last id queued per history.
#[derive(Debug, Default)]
pub(super) struct Positions {
    all: Option<Pos>,
    inbox: Option<Pos>,
    groups: Vec<(GroupId, Pos)>,
}

impl Positions {
    pub(super) fn get(&self, source: &Source) -> Option<Pos> {
        match source {
            Source::All => self.all,
            Source::Inbox => self.inbox,
            Source::Group(g) => self.groups.iter().find(|(h, _)| h == g).map(|(_, p)| *p),
        }
    }

    pub(super) fn get_mut(&mut self, source: &Source) -> Option<&mut Pos> {
        match source {
            Source::All => self.all.as_mut(),
            Source::Inbox => self.inbox.as_mut(),
            Source::Group(g) => self.groups.iter_mut().find(|(h, _)| h == g).map(|(_, p)| p),
        }
    }

    pub(super) fn set(&mut self, source: &Source, pos: Pos) {
        match self.get_mut(source) {
            Some(p) => *p = pos,
            None => match source {
                Source::All => self.all = Some(pos),
                Source::Inbox => self.inbox = Some(pos),
                Source::Group(g) => self.groups.push((g.clone(), pos)),
            },
        }
    }

    pub(super) fn order(&self, source: &Source, prev: Option<StreamId>, id: StreamId) -> Order {
        match self.get(source) {
            Some(p) if id > p.id => match prev {
                Some(prev) if prev > p.id => Order::Missing,
                _ => Order::Next,
            },
            _ => Order::Stale,
        }
    }

    /// Stops following these groups' histories.
    pub(super) fn forget(&mut self, groups: &[GroupId]) {
        self.groups.retain(|(g, _)| !groups.contains(g));
    }

    /// The position in every history followed.
    pub(super) fn list(&self) -> Vec<(Source, Pos)> {
        let fixed = [(Source::All, self.all), (Source::Inbox, self.inbox)];
        let fixed = fixed.into_iter().filter_map(|(src, pos)| Some((src, pos?)));
        fixed.chain(self.groups.iter().map(|(g, pos)| (Source::Group(g.clone()), *pos))).collect()
    }

    /// Moves past `id` if it is new; false for a message already queued (or from a
    /// history the stream does not follow).
    pub(super) fn advance(&mut self, source: &Source, id: StreamId) -> bool {
        match self.get_mut(source) {
            Some(p) if id > p.id => {
                p.id = id;
                true
            }
            _ => false,
        }
    }
}
