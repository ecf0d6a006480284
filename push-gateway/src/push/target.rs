//! Targeted pushes (`push.v1.Target`): a union of all, users and groups, minus excluded
//! users and groups, delivered once per receiving device.
//!
//! Where the message is stored decides who can resume it, so:
//! - all, or exactly one group, without excluded groups, stays one history (the
//!   broadcast's or the group's) with the excluded users written next to the message;
//!   their streams skip it live and on replay. Any audience size.
//! - anything else is expanded to users (the groups' members at the moment of the
//!   push, minus the excluded) and stored in each one's inbox, which is what makes
//!   "once per device" hold across overlapping groups. Bounded by the users-per-call
//!   limit.
use std::collections::BTreeSet;

use push_common::{
    Error,
    ids::{GroupId, Id, UserId},
    validate::Violations,
};
use push_proto::push::v1::{self as pb, Audience};

use super::PushLimits;
use crate::store::Store;

/// Most groups a target names (to include or to exclude).
pub const MAX_GROUPS: usize = 100;

/// A checked target.
pub struct Target {
    all: bool,
    users: Vec<UserId>,
    groups: Vec<GroupId>,
    except_users: Vec<UserId>,
    except_groups: Vec<GroupId>,
}

/// Which histories a push is stored in.
pub enum Route {
    All,
    Group(GroupId),
    /// Each user's inbox.
    Users(Vec<UserId>),
}

impl Route {
    /// The push's response, without its id.
    pub fn response(&self) -> pb::PushResponse {
        let (audience, group_id, user_count) = match self {
            Route::All => (Audience::All, String::new(), 0),
            Route::Group(g) => (Audience::Group, g.to_string(), 0),
            Route::Users(u) => (Audience::User, String::new(), u.len() as i32),
        };
        pb::PushResponse { message_id: String::new(), audience: audience as i32, group_id, user_count }
    }
}

/// Ids of an optional list: none, or up to `max` valid ones.
fn optional<T: push_common::ids::Id>(v: &mut Violations, field: &str, values: &[String], max: usize) -> Vec<T> {
    if values.is_empty() { Vec::new() } else { v.parse_all(field, values, max) }
}

impl Target {
    pub fn check(v: &mut Violations, t: Option<&pb::Target>, limits: &PushLimits) -> Option<Target> {
        let Some(t) = t else {
            v.add("target", "must be set: all, user_ids or group_ids");
            return None;
        };
        let max_users = limits.max_users_per_call;
        let target = Target {
            all: t.all,
            users: optional(v, "target.user_ids", &t.user_ids, max_users),
            groups: optional(v, "target.group_ids", &t.group_ids, MAX_GROUPS),
            except_users: optional(v, "target.except_user_ids", &t.except_user_ids, max_users),
            except_groups: optional(v, "target.except_group_ids", &t.except_group_ids, MAX_GROUPS),
        };
        if t.all && !(t.user_ids.is_empty() && t.group_ids.is_empty()) {
            v.add("target.all", "cannot be combined with user_ids or group_ids (all includes them)");
        } else if t.all && !t.except_group_ids.is_empty() {
            v.add("target.except_group_ids", "cannot be combined with all; exclude users, or target groups");
        } else if !t.all && t.user_ids.is_empty() && t.group_ids.is_empty() {
            v.add("target", "must name all, user_ids or group_ids");
        }
        Some(target)
    }

    /// Where the push goes, and the excluded users to write next to it (`,a,b,`, or '').
    pub async fn route(self, store: &Store, max_users: usize) -> Result<(Route, String), Error> {
        let excluded = || {
            let names: BTreeSet<&str> = self.except_users.iter().map(|u| u.as_str()).collect();
            if names.is_empty() {
                String::new()
            } else {
                format!(",{},", names.into_iter().collect::<Vec<_>>().join(","))
            }
        };
        if self.all {
            return Ok((Route::All, excluded()));
        }
        if self.users.is_empty() && self.groups.len() == 1 && self.except_groups.is_empty() {
            let ex = excluded();
            return Ok((Route::Group(self.groups.into_iter().next().expect("one group")), ex));
        }
        Ok((Route::Users(self.expand(store, max_users).await?), String::new()))
    }

    /// The users the target reaches, each once.
    async fn expand(self, store: &Store, max_users: usize) -> Result<Vec<UserId>, Error> {
        let too_many = |n: usize| {
            Error::invalid(
                "target",
                format!(
                    "reaches {n} users, over the limit of {max_users} per push (--max-users-per-call); push to a single group (minus users) instead, or split it"
                ),
            )
        };
        let sizes = store.group_sizes(&self.groups).await?;
        // A bound before reading members: the union is at least the largest group, and
        // exclusions cannot bring a huge read back under the limit cheaply.
        let total: usize = sizes.iter().sum::<usize>() + self.users.len();
        if total > max_users.saturating_mul(4).max(max_users + self.except_users.len()) {
            return Err(too_many(total));
        }
        let mut reached: BTreeSet<UserId> = self.users.into_iter().collect();
        for members in store.all_members(&self.groups).await? {
            reached.extend(members.iter().filter_map(|m| UserId::parse(m).ok()));
        }
        for u in &self.except_users {
            reached.remove(u);
        }
        let mut reached: Vec<UserId> = reached.into_iter().collect();
        if !self.except_groups.is_empty() && !reached.is_empty() {
            let excluded = store.members_among(&self.except_groups, &reached).await?;
            let mut flags = excluded.into_iter();
            reached.retain(|_| !flags.next().unwrap_or(false));
        }
        if reached.len() > max_users {
            return Err(too_many(reached.len()));
        }
        Ok(reached)
    }
}
