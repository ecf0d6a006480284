//! The sweeper's side of the store: which buckets are due, and sweeping them.
//!
//! A bucket is due when a lease in it has ended, as far as this replica knows: what its
//! last sweep here found there (the earliest holder lease or user expiry left), lowered
//! by every lease written through this replica since. Leases written through another
//! presence replica are that replica's to sweep on time, and this one's after
//! `max_idle` at the latest.
use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use push_common::Error;

use super::{Store, ms};

/// When each bucket is due for a sweep here, and when it was last swept.
pub(super) struct Schedule {
    /// Due times, ms (Redis's clock, as the scripts report them).
    due: Box<[AtomicI64]>,
    /// Last sweeps, ms (this machine's clock).
    swept: Box<[AtomicI64]>,
}

impl Schedule {
    /// Every bucket due at once.
    pub(super) fn new(buckets: u32) -> Schedule {
        let zeros = || (0..buckets).map(|_| AtomicI64::new(0)).collect();
        Schedule { due: zeros(), swept: zeros() }
    }

    /// A lease of `bucket` ends at `ms`: the bucket is due then at the latest.
    pub(super) fn due_by(&self, bucket: u32, ms: i64) {
        self.due[bucket as usize].fetch_min(ms, Ordering::AcqRel);
    }

    /// Whether `bucket` is to be swept now; if so, it counts as swept from now, and the
    /// leases written from now on lower its due time again (the sweep reports what was
    /// there before: give it to [`Schedule::due_by`]).
    fn start(&self, bucket: u32, now_ms: i64, max_idle: Duration) -> bool {
        let i = bucket as usize;
        let idle = now_ms - self.swept[i].load(Ordering::Acquire) >= ms(max_idle) as i64;
        if self.due[i].load(Ordering::Acquire) > now_ms && !idle {
            return false;
        }
        self.due[i].store(i64::MAX, Ordering::Release);
        self.swept[i].store(now_ms, Ordering::Release);
        true
    }
}

impl Store {
    /// One sweep step of one bucket (`lua/sweep.lua`): ends up to `limit` sessions of a
    /// holder whose lease ended, else removes up to `limit` expired users. Returns how
    /// many it looked at (`limit`: there may be more) and when the bucket is next due.
    async fn sweep(&self, bucket: u32, limit: usize) -> Result<(usize, Option<i64>), Error> {
        let mut c = self.pool.get();
        let [sessions, owners, seen, held] = self.keys.presence_prefixes(bucket);
        let (n, due): (usize, i64) = self
            .sweep
            .key(self.keys.online_by_expiry(bucket))
            .key(self.keys.online_by_id(bucket))
            .key(self.keys.presence_events(bucket))
            .key(self.keys.holders(bucket))
            .arg(limit)
            .arg(self.events_max_len)
            .arg(sessions)
            .arg(owners)
            .arg(seen)
            .arg(held)
            .arg(ms(self.seen_ttl))
            .invoke_async(&mut c)
            .await?;
        Ok((n, (due >= 0).then_some(due)))
    }

    /// Sweeps the buckets that are due (a lease in them has ended by `now_ms`, as far as
    /// this replica knows) or were not swept for `max_idle`, each until it has nothing
    /// left to sweep (in steps of 500). Returns how many sessions and users it ended.
    pub async fn sweep_due(&self, now_ms: i64, max_idle: Duration) -> Result<usize, Error> {
        const BATCH: usize = 500;
        const MAX_STEPS: usize = 100;
        let mut total = 0;
        for b in 0..self.buckets {
            if !self.schedule.start(b, now_ms, max_idle) {
                continue;
            }
            // A step ends one holder's sessions (or up to BATCH of them) or expired users:
            // go on while something is left that is due (several holders may have died:
            // each start of a replica is a new holder).
            for step in 1.. {
                match self.sweep(b, BATCH).await {
                    Ok((n, due)) => {
                        total += n;
                        let due = due.unwrap_or(i64::MAX);
                        // Done: nothing more is due; or a step found nothing to do (this
                        // machine's clock may be ahead of Redis's); or enough for one tick.
                        let done = n < BATCH && (n == 0 || due > now_ms);
                        if done || step >= MAX_STEPS {
                            self.schedule.due_by(b, if done { due } else { 0 });
                            break;
                        }
                    }
                    Err(e) => {
                        self.schedule.due_by(b, 0);
                        return Err(e);
                    }
                }
            }
        }
        Ok(total)
    }
}
