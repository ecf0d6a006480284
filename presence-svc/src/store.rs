//! Every Redis command of presence-svc, behind typed methods.
//!
//! Invariants kept by the scripts (each runs atomically and reads Redis `TIME`, so
//! replicas with skewed clocks agree):
//! - `sessions(u)` holds only the user's sessions; a score is a lease expiry in ms.
//!   A session is alive while its expiry is later than now.
//! - While `sessions(u)` is non-empty, `online_by_expiry(bucket(u))` has `u` scored with
//!   the latest expiry in `sessions(u)`, `online_by_id(bucket(u))` has `u`, and
//!   `sessions(u)` itself expires (PEXPIREAT) at that latest expiry.
//! - Readers never trust that sweeping happened: a user is online only if their score
//!   is later than now. The sweeper merely keeps the index small.
//!
//! Every key of a user and of their bucket (its online index and its events stream)
//! carries the bucket's hash tag, so each script touches one Redis Cluster slot and the
//! presence writes spread over the buckets. Reads over many users or buckets go as one
//! pipeline per slot ([`push_common::redis::Batch`]). The scripts are files in `lua/`.
use std::{sync::Arc, time::Duration};

use push_common::redis::{Batch, PipelinedScript, Pool};
use push_common::{
    Error,
    ids::{DeviceId, UserId},
    keys::{Keys, bucket_of},
};
use redis::Script;

mod events;
mod sweep;
pub use events::{Event, Position, parse_event_id};

/// The Lua scripts (`lua/`), each with the shared helpers (`lua/lib.lua`) in front.
mod scripts {
    const LIB: &str = include_str!("lua/lib.lua");

    /// `body` as it runs: the helpers, then the script.
    pub fn text(body: &str) -> String {
        format!("{LIB}\n{body}")
    }

    pub fn script(body: &str) -> redis::Script {
        redis::Script::new(&text(body))
    }

    /// The same, to run many times in one pipeline as well.
    pub fn pipelined(body: &str) -> push_common::redis::PipelinedScript {
        push_common::redis::PipelinedScript::new(&text(body))
    }

    pub const TOUCH: &str = include_str!("lua/touch.lua");
    pub const LOGOUT: &str = include_str!("lua/logout.lua");
    pub const SWEEP: &str = include_str!("lua/sweep.lua");
    pub const PAGE: &str = include_str!("lua/page.lua");
    pub const COUNT: &str = include_str!("lua/count.lua");
    pub const HOLD: &str = include_str!("lua/hold.lua");
}

/// What a login or heartbeat asks for.
#[derive(Debug, Clone, Copy)]
pub struct Touch<'a> {
    pub ttl: Duration,
    /// How long last-seen is kept.
    pub seen_ttl: Duration,
    pub max_sessions: u32,
    /// A login (creates the session) rather than a heartbeat (renews it).
    pub login: bool,
    /// Who holds the session ('' for no one in particular).
    pub owner: &'a str,
    /// The holder whose lease keeps the session alive ('' for its own lease); logins only.
    pub holder: &'a str,
}

/// A session that was created or renewed.
#[derive(Debug, Clone, PartialEq)]
pub struct Touched {
    pub expire_ms: i64,
    pub came_online: bool,
    pub session_count: i64,
}

/// The outcome of a Login or Heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub enum TouchOutcome {
    Touched(Touched),
    /// Heartbeat of a session that expired or never existed.
    NoSuchSession,
    /// Login of one session more than the per-user limit.
    TooManySessions(i64),
    /// Heartbeat by an owner that no longer holds the session.
    TakenOver,
}

/// What is known of one user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserState {
    /// Live sessions (id, expiry ms), soonest expiry first.
    pub sessions: Vec<(String, i64)>,
    pub last_seen_ms: Option<i64>,
}

/// The session score of a held session (`HELD` in `lua/lib.lua`).
const HELD: f64 = 1e15;

/// The touch script's arguments (see `lua/touch.lua`).
fn touch_args(user: &UserId, session: &DeviceId, t: &Touch<'_>, events_max_len: u64, held: &str) -> Vec<String> {
    vec![
        user.to_string(),
        session.to_string(),
        ms(t.ttl).to_string(),
        ms(t.seen_ttl).to_string(),
        t.max_sessions.to_string(),
        if t.login { "login" } else { "heartbeat" }.to_owned(),
        events_max_len.to_string(),
        t.owner.to_owned(),
        t.holder.to_owned(),
        held.to_owned(),
    ]
}

/// What the touch script's reply means.
fn touch_outcome(reply: &[i64]) -> Result<TouchOutcome, Error> {
    match reply {
        [-1] => Ok(TouchOutcome::NoSuchSession),
        [-3] => Ok(TouchOutcome::TakenOver),
        [-2, n] => Ok(TouchOutcome::TooManySessions(*n)),
        [expire_ms, came, count] => {
            Ok(TouchOutcome::Touched(Touched { expire_ms: *expire_ms, came_online: *came == 1, session_count: *count }))
        }
        other => Err(Error::Protocol(format!("touch script returned {other:?}"))),
    }
}

/// Typed access to presence data.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
    buckets: u32,
    events_max_len: u64,
    seen_ttl: Duration,
    touch: PipelinedScript,
    logout: Script,
    sweep: Script,
    page: Script,
    count: PipelinedScript,
    hold: PipelinedScript,
    /// When each bucket is due for a sweep here.
    schedule: Arc<sweep::Schedule>,
}

impl Store {
    pub fn new(pool: Pool, keys: Keys, buckets: u32, events_max_len: u64, seen_ttl: Duration) -> Self {
        Self {
            pool,
            keys,
            buckets: buckets.max(1),
            events_max_len,
            seen_ttl,
            touch: scripts::pipelined(scripts::TOUCH),
            logout: scripts::script(scripts::LOGOUT),
            sweep: scripts::script(scripts::SWEEP),
            page: scripts::script(scripts::PAGE),
            count: scripts::pipelined(scripts::COUNT),
            hold: scripts::pipelined(scripts::HOLD),
            schedule: Arc::new(sweep::Schedule::new(buckets.max(1))),
        }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The bucket of a user.
    pub fn bucket(&self, user: &str) -> u32 {
        bucket_of(user, self.buckets)
    }

    /// Notes the expiry of a touch's lease: its bucket is due for a sweep then.
    fn touched(&self, user: &UserId, outcome: &TouchOutcome) {
        if let TouchOutcome::Touched(t) = outcome {
            self.schedule.due_by(self.bucket(user), t.expire_ms);
        }
    }

    fn user_keys(&self, user: &UserId) -> [String; 7] {
        let b = self.bucket(user);
        [
            self.keys.sessions(b, user),
            self.keys.last_seen(b, user),
            self.keys.online_by_expiry(b),
            self.keys.online_by_id(b),
            self.keys.presence_events(b),
            self.keys.session_owners(b, user),
            self.keys.holders(b),
        ]
    }

    /// The prefix of `user`'s bucket's held sets.
    fn held_prefix(&self, user: &UserId) -> String {
        let [.., held] = self.keys.presence_prefixes(self.bucket(user));
        held
    }

    /// Creates (`login`) or renews a session's lease.
    #[tracing::instrument(skip(self), err)]
    pub async fn touch(&self, user: &UserId, session: &DeviceId, t: Touch<'_>) -> Result<TouchOutcome, Error> {
        let mut inv = self.touch.script().prepare_invoke();
        inv.key(&self.user_keys(user)[..]);
        for a in touch_args(user, session, &t, self.events_max_len, &self.held_prefix(user)) {
            inv.arg(a);
        }
        let mut c = self.pool.get();
        let reply: Vec<i64> = inv.invoke_async(&mut c).await?;
        let outcome = touch_outcome(&reply)?;
        self.touched(user, &outcome);
        Ok(outcome)
    }

    /// Renews many sessions in one pipeline, each its own atomic step; one answer each.
    #[tracing::instrument(skip_all, fields(sessions = touches.len()), err)]
    pub async fn touch_many(
        &self,
        touches: &[(UserId, DeviceId, Touch<'_>)],
    ) -> Result<Vec<Result<TouchOutcome, Error>>, Error> {
        if touches.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<_> = touches
            .iter()
            .map(|(user, session, t)| {
                (self.user_keys(user), touch_args(user, session, t, self.events_max_len, &self.held_prefix(user)))
            })
            .collect();
        let replies: Vec<redis::RedisResult<Vec<i64>>> = self.touch.run_many(&self.pool, &runs).await?;
        let outcomes: Vec<_> =
            replies.into_iter().map(|r| r.map_err(Error::from).and_then(|r| touch_outcome(&r))).collect();
        for ((user, ..), outcome) in touches.iter().zip(&outcomes) {
            if let Ok(o) = outcome {
                self.touched(user, o);
            }
        }
        Ok(outcomes)
    }

    /// Ends a session; returns (whether it existed, sessions left). `holder` (if not
    /// empty) holds the session no more.
    #[tracing::instrument(skip(self), err)]
    pub async fn logout(
        &self,
        user: &UserId,
        session: &DeviceId,
        seen_ttl: Duration,
        owner: &str,
        holder: &str,
    ) -> Result<(bool, i64), Error> {
        let mut c = self.pool.get();
        let (removed, left): (i64, i64) = self
            .logout
            .key(&self.user_keys(user)[..])
            .arg(user.as_str())
            .arg(session.as_str())
            .arg(ms(seen_ttl))
            .arg(self.events_max_len)
            .arg(owner)
            .arg(holder)
            .arg(self.held_prefix(user))
            .invoke_async(&mut c)
            .await?;
        Ok((removed == 1, left))
    }

    /// Sessions and last-seen of many users in one round trip (read-only pipelines, one
    /// per slot on a Cluster; the first command reads the server clock the filter uses).
    /// A held session expires with its holder's lease: it is read from the bucket's
    /// holders, so a session of a dead holder that no sweep has ended yet is not shown.
    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn get(&self, users: &[UserId]) -> Result<Vec<UserState>, Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        let mut buckets: Vec<u32> = users.iter().map(|u| self.bucket(u)).collect();
        buckets.sort_unstable();
        buckets.dedup();
        for (i, u) in users.iter().enumerate() {
            let b = self.bucket(u);
            let sessions = self.keys.sessions(b, u);
            if i == 0 {
                batch.add(&sessions, redis::cmd("TIME"));
            }
            batch.add(&sessions, redis::cmd("ZRANGE").arg(&sessions).arg(0).arg(-1).arg("WITHSCORES").to_owned());
            batch.add(&sessions, redis::cmd("GET").arg(self.keys.last_seen(b, u)).to_owned());
            batch.add(&sessions, redis::cmd("HGETALL").arg(self.keys.session_owners(b, u)).to_owned());
        }
        for b in &buckets {
            let holders = self.keys.holders(*b);
            batch.add(&holders, redis::cmd("ZRANGE").arg(&holders).arg(0).arg(-1).arg("WITHSCORES").to_owned());
        }
        let mut replies = batch.run(&self.pool).await?;
        if replies.len() != 1 + 3 * users.len() + buckets.len() {
            return Err(Error::Protocol("pipeline reply has the wrong length".into()));
        }
        let (secs, micros): (i64, i64) = redis::from_redis_value(replies.remove(0))?;
        let now = secs * 1000 + micros / 1000;
        let leases = replies.split_off(3 * users.len());
        let leases: Vec<std::collections::HashMap<String, f64>> =
            leases.into_iter().map(redis::from_redis_value).collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(users.len());
        let mut it = replies.into_iter();
        for u in users {
            let (Some(sessions), Some(seen), Some(owners)) = (it.next(), it.next(), it.next()) else { break };
            let sessions: Vec<(String, f64)> = redis::from_redis_value(sessions)?;
            let seen: Option<i64> = redis::from_redis_value(seen)?;
            let owners: std::collections::HashMap<String, String> = redis::from_redis_value(owners)?;
            let lease = buckets.binary_search(&self.bucket(u)).ok().map(|i| &leases[i]);
            // A held session's expiry is its holder's lease.
            let expiry = |session: &str, score: f64| match score >= HELD {
                false => score as i64,
                true => {
                    owners.get(&format!("{session}|h")).and_then(|h| lease?.get(h)).map_or(0, |until| *until as i64)
                }
            };
            let mut sessions: Vec<(String, i64)> = sessions
                .into_iter()
                .map(|(s, score)| {
                    let e = expiry(&s, score);
                    (s, e)
                })
                .filter(|(_, e)| *e > now)
                .collect();
            sessions.sort_by_key(|(_, e)| *e);
            out.push(UserState { sessions, last_seen_ms: seen });
        }
        Ok(out)
    }

    /// Renews `holder`'s lease in every bucket (one script each; one pipeline, or one per
    /// slot on a Cluster). Returns (sessions held in all, the lease's new expiry ms).
    #[tracing::instrument(skip(self), err)]
    pub async fn hold(&self, holder: &str, ttl: Duration) -> Result<(i64, i64), Error> {
        let runs: Vec<([String; 2], Vec<String>)> = (0..self.buckets)
            .map(|b| ([self.keys.holders(b), self.keys.held(b, holder)], vec![holder.to_owned(), ms(ttl).to_string()]))
            .collect();
        let replies: Vec<redis::RedisResult<(i64, i64)>> = self.hold.run_many(&self.pool, &runs).await?;
        let mut total = (0, 0);
        for (b, r) in (0..self.buckets).zip(replies) {
            let (held, expiry) = r?;
            if held > 0 {
                self.schedule.due_by(b, expiry);
            }
            total = (total.0 + held, total.1.max(expiry));
        }
        Ok(total)
    }

    /// One step of a page walk in `bucket` after id `after`, scanning up to `count` ids.
    /// Returns (last id scanned, ids scanned, online ids among them).
    #[tracing::instrument(skip(self), err)]
    pub async fn page(&self, bucket: u32, after: &str, count: usize) -> Result<(String, usize, Vec<String>), Error> {
        let mut c = self.pool.get();
        let (last, scanned, online): (String, usize, Vec<String>) = self
            .page
            .key(self.keys.online_by_expiry(bucket))
            .key(self.keys.online_by_id(bucket))
            .arg(after)
            .arg(count)
            .invoke_async(&mut c)
            .await?;
        Ok((last, scanned, online))
    }

    /// Users online now: each bucket counted by its own script (one pipeline, or one
    /// per slot on a Cluster), summed.
    #[tracing::instrument(skip(self), err)]
    pub async fn count(&self) -> Result<i64, Error> {
        let runs: Vec<([String; 1], Vec<String>)> =
            (0..self.buckets).map(|b| ([self.keys.online_by_expiry(b)], Vec::new())).collect();
        let counts: Vec<redis::RedisResult<i64>> = self.count.run_many(&self.pool, &runs).await?;
        counts.into_iter().try_fold(0, |sum, n| Ok(sum + n?))
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
