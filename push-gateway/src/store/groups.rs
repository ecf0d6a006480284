//! Group membership: a group's members are a ZSET (score 0, paged by id) and each
//! user's groups a HASH (group → where its history stood when the user joined). The
//! group's keys and each user's keys are in different Redis Cluster slots, so a join or
//! leave is a few steps, each within one slot, in an order that a retry completes (see
//! [`Store::join`]).
use std::collections::HashMap;

use push_common::redis::Batch;
use push_common::{
    Error,
    ids::{GroupId, Id, UserId},
    keys::Keys,
};

use super::Store;
use crate::history::{self, Pos};

/// The outcome of a join.
pub enum Joined {
    Added(i64),
    /// The user at this index of the request already has the maximum of groups.
    TooManyGroups(usize),
}

impl Store {
    /// Adds `users` to `group`. First every user's number of groups is checked (the
    /// whole call is refused when one already has the maximum), then the group's
    /// position is read, each user records it (one step per user, in the user's slot),
    /// and last the users join the group's members. A call that fails halfway is
    /// completed by a retry; until then a user may have the group without being listed
    /// in its members.
    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn join(&self, group: &GroupId, users: &[UserId], max_groups: usize) -> Result<Joined, Error> {
        let mut check = Batch::new();
        for u in users {
            let key = self.keys.user_groups(u);
            check.add(&key, redis::cmd("HEXISTS").arg(&key).arg(group.as_str()).to_owned());
            check.add(&key, redis::cmd("HLEN").arg(&key).to_owned());
        }
        let counts: Vec<i64> = check.query(&self.pool).await?;
        if let Some(i) = counts.chunks(2).position(|c| c[0] == 0 && c[1] >= max_groups as i64) {
            return Ok(Joined::TooManyGroups(i));
        }
        let history = self.keys.group_history(group);
        let mut c = self.pool.get();
        let at: String = self
            .group_at
            .key(&history)
            .key(Keys::history_meta(&history))
            .arg(self.retention.meta_ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        let runs: Vec<_> = users
            .iter()
            .map(|u| ([self.keys.user_groups(u), self.keys.left_groups(u)], (group.as_str(), max_groups, at.as_str())))
            .collect();
        let joined: Vec<redis::RedisResult<i64>> = self.join.run_many(&self.pool, &runs).await?;
        let mut members = redis::cmd("ZADD");
        members.arg(self.keys.group_members(group));
        for (i, (u, r)) in users.iter().zip(joined).enumerate() {
            match r? {
                // Another call filled the user's groups since the check.
                -1 => return Ok(Joined::TooManyGroups(i)),
                _ => members.arg(0).arg(u.as_str()),
            };
        }
        Ok(Joined::Added(members.query_async(&mut c).await?))
    }

    /// Removes `users` from `group`; each keeps where the group stood when they left
    /// (at most `max_groups` such records per user). The group's members first, then
    /// each user (one step per user, in the user's slot). Returns how many were members.
    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn leave(&self, group: &GroupId, users: &[UserId], max_groups: usize) -> Result<i64, Error> {
        let history = self.keys.group_history(group);
        let mut c = self.pool.get();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(Keys::history_meta(&history)).arg("epoch").arg("last");
        pipe.cmd("ZREM").arg(self.keys.group_members(group));
        for u in users {
            pipe.arg(u.as_str());
        }
        // The meta and the members share the group's slot.
        let ((epoch, last), removed): ((Option<String>, Option<String>), i64) = pipe.query_async(&mut c).await?;
        let at = epoch.map(|e| format!("{e}/{}", last.as_deref().unwrap_or("0-0"))).unwrap_or_default();
        let ttl = self.retention.meta_ttl.as_millis() as u64;
        let runs: Vec<_> = users
            .iter()
            .map(|u| {
                let keys =
                    [self.keys.user_groups(u), self.keys.acks(u), self.keys.ack_devices(u), self.keys.left_groups(u)];
                (keys, (group.as_str(), max_groups, ttl, at.as_str()))
            })
            .collect();
        for r in self.leave.run_many::<_, _, _, i64>(&self.pool, &runs).await? {
            r?;
        }
        Ok(removed)
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
        let mut batch = Batch::new();
        for g in groups {
            let key = self.keys.group_members(g);
            batch.add(&key, redis::cmd("ZCARD").arg(&key).to_owned());
        }
        Ok(batch.query(&self.pool).await?)
    }

    /// Every member of each group, in one round trip (check their sizes first).
    #[tracing::instrument(skip_all, fields(groups = groups.len()), err)]
    pub async fn all_members(&self, groups: &[GroupId]) -> Result<Vec<Vec<String>>, Error> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for g in groups {
            let key = self.keys.group_members(g);
            batch.add(&key, redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).to_owned());
        }
        Ok(batch.query(&self.pool).await?)
    }

    /// Per user, whether they belong to any of `groups`, in one round trip.
    #[tracing::instrument(skip_all, fields(groups = groups.len(), users = users.len()), err)]
    pub async fn members_among(&self, groups: &[GroupId], users: &[UserId]) -> Result<Vec<bool>, Error> {
        let mut batch = Batch::new();
        for g in groups {
            let key = self.keys.group_members(g);
            let mut cmd = redis::cmd("ZMSCORE");
            cmd.arg(&key);
            for u in users {
                cmd.arg(u.as_str());
            }
            batch.add(&key, cmd);
        }
        let scores: Vec<Vec<Option<f64>>> = batch.query(&self.pool).await?;
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
        let mut batch = Batch::new();
        for u in users {
            let key = self.keys.user_groups(u);
            batch.add(&key, redis::cmd("HKEYS").arg(&key).to_owned());
        }
        let all: Vec<Vec<String>> = batch.query(&self.pool).await?;
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
