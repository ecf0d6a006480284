//! Group membership: a group's members are a ZSET (score 0, paged by id) and each
//! user's groups a HASH (group → where its history stood when the user joined); join
//! and leave change both in one Lua script, so the two views never disagree. In Redis
//! Cluster the group key and the user keys live in different slots (see
//! docs/ARCHITECTURE.md).
use std::collections::HashMap;

use push_common::{
    Error,
    ids::{GroupId, Id, UserId},
    keys::Keys,
};
use redis::Script;

use super::Store;
use crate::history::{self, Pos};

/// The outcome of a join.
pub enum Joined {
    Added(i64),
    /// The user at this index of the request already has the maximum of groups.
    TooManyGroups(usize),
}

impl Store {
    fn membership<'s>(
        &self,
        script: &'s Script,
        group: &GroupId,
        users: &[UserId],
        max: usize,
    ) -> redis::ScriptInvocation<'s> {
        let history = self.keys.group_history(group);
        let mut inv = script.key(self.keys.group_members(group));
        inv.key(&history).key(Keys::history_meta(&history));
        for u in users {
            inv.key(self.keys.user_groups(u)).key(self.keys.acks(u)).key(self.keys.ack_devices(u));
            inv.key(self.keys.left_groups(u));
        }
        inv.arg(group.as_str()).arg(max).arg(self.retention.meta_ttl.as_millis() as u64);
        for u in users {
            inv.arg(u.as_str());
        }
        inv
    }

    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn join(&self, group: &GroupId, users: &[UserId], max_groups: usize) -> Result<Joined, Error> {
        let inv = self.membership(&self.join, group, users, max_groups);
        let mut c = self.pool.get();
        let reply: Vec<i64> = inv.invoke_async(&mut c).await?;
        match reply.as_slice() {
            [-1, i] => Ok(Joined::TooManyGroups(*i as usize)),
            [n] => Ok(Joined::Added(*n)),
            other => Err(Error::Protocol(format!("join script returned {other:?}"))),
        }
    }

    /// Removes `users` from `group`; each keeps where the group stood when they left
    /// (at most `max_groups` such records per user).
    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn leave(&self, group: &GroupId, users: &[UserId], max_groups: usize) -> Result<i64, Error> {
        let inv = self.membership(&self.leave, group, users, max_groups);
        let mut c = self.pool.get();
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// A page of members after `after` (exclusive; empty to start), in id order.
    #[tracing::instrument(skip(self), err)]
    pub async fn members(&self, group: &GroupId, after: &str, count: usize) -> Result<Vec<String>, Error> {
        let start = if after.is_empty() { "-".to_owned() } else { format!("({after}") };
        let mut c = self.pool.get();
        Ok(redis::cmd("ZRANGE")
            .arg(self.keys.group_members(group))
            .arg(start)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut c)
            .await?)
    }

    /// Each group's number of members, in one round trip.
    #[tracing::instrument(skip_all, fields(groups = groups.len()), err)]
    pub async fn group_sizes(&self, groups: &[GroupId]) -> Result<Vec<usize>, Error> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for g in groups {
            pipe.cmd("ZCARD").arg(self.keys.group_members(g));
        }
        let mut c = self.pool.get();
        Ok(pipe.query_async(&mut c).await?)
    }

    /// Every member of each group, in one round trip (check their sizes first).
    #[tracing::instrument(skip_all, fields(groups = groups.len()), err)]
    pub async fn all_members(&self, groups: &[GroupId]) -> Result<Vec<Vec<String>>, Error> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for g in groups {
            pipe.cmd("ZRANGE").arg(self.keys.group_members(g)).arg(0).arg(-1);
        }
        let mut c = self.pool.get();
        Ok(pipe.query_async(&mut c).await?)
    }

    /// Per user, whether they belong to any of `groups`, in one round trip.
    #[tracing::instrument(skip_all, fields(groups = groups.len(), users = users.len()), err)]
    pub async fn members_among(&self, groups: &[GroupId], users: &[UserId]) -> Result<Vec<bool>, Error> {
        let mut pipe = redis::pipe();
        for g in groups {
            pipe.cmd("ZMSCORE").arg(self.keys.group_members(g));
            for u in users {
                pipe.arg(u.as_str());
            }
        }
        let mut c = self.pool.get();
        let scores: Vec<Vec<Option<f64>>> = pipe.query_async(&mut c).await?;
        let mut member = vec![false; users.len()];
        for per_group in scores {
            for (m, score) in member.iter_mut().zip(per_group) {
                *m |= score.is_some();
            }
        }
        Ok(member)
    }

    /// The user's groups, sorted.
    #[tracing::instrument(skip(self), err)]
    pub async fn user_groups(&self, user: &UserId) -> Result<Vec<String>, Error> {
        let mut c = self.pool.get();
        let mut groups: Vec<String> = redis::cmd("HKEYS").arg(self.keys.user_groups(user)).query_async(&mut c).await?;
        groups.sort();
        Ok(groups)
    }

    /// Each user's groups, sorted, in one round trip.
    #[tracing::instrument(skip_all, fields(users = users.len()), err)]
    pub async fn users_groups(&self, users: &[&UserId]) -> Result<Vec<Vec<GroupId>>, Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("HKEYS").arg(self.keys.user_groups(u));
        }
        let mut c = self.pool.get();
        let all: Vec<Vec<String>> = pipe.query_async(&mut c).await?;
        Ok(all.into_iter().map(|groups| parse_groups(groups.iter().map(String::as_str))).collect())
    }

    /// Where each of `groups`' history stood when `user` left it (None: not recorded).
    #[tracing::instrument(skip(self), err)]
    pub async fn left_at(&self, user: &UserId, groups: &[&GroupId]) -> Result<Vec<Option<Pos>>, Error> {
        let mut c = self.pool.get();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.left_groups(user));
        for g in groups {
            cmd.arg(g.as_str());
        }
        let at: Vec<Option<String>> = cmd.query_async(&mut c).await?;
        Ok(at.iter().map(|a| a.as_deref().and_then(history::parse_position)).collect())
    }

    /// The user's groups with where each group's history stood when the user joined.
    #[tracing::instrument(skip(self), err)]
    pub async fn user_groups_since(&self, user: &UserId) -> Result<HashMap<GroupId, Option<Pos>>, Error> {
        let mut c = self.pool.get();
        let all: HashMap<String, String> =
            redis::cmd("HGETALL").arg(self.keys.user_groups(user)).query_async(&mut c).await?;
        let parsed =
            all.into_iter().filter_map(|(g, at)| Some((GroupId::parse(&g).ok()?, history::parse_position(&at))));
        Ok(parsed.collect())
    }
}

/// Group ids read back from Redis, sorted (they were validated when written; one that is
/// not an id any more is skipped rather than allowed to form a key).
fn parse_groups<'a>(groups: impl Iterator<Item = &'a str>) -> Vec<GroupId> {
    let mut out: Vec<GroupId> = groups.filter_map(|g| GroupId::parse(g).ok()).collect();
    out.sort();
    out
}
