//! Rate limits: a token bucket per API key, and one per user for device calls; a
//! refusal says which limit and when to retry.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tonic::Status;

/// A rate: `rate` per second with bursts of up to `burst`; a rate of 0 is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limit {
    pub rate: f64,
    pub burst: f64,
}

impl Limit {
    /// A rate whose burst is one second's worth.
    pub fn per_second(rate: f64) -> Limit {
        Limit { rate, burst: rate.max(1.0) }
    }

    /// Parses `RATE` or `RATE/BURST` (requests per second, and most at once).
    pub(super) fn parse(s: &str) -> Option<Limit> {
        let (rate, burst) = match s.split_once('/') {
            Some((r, b)) => (r.trim().parse::<f64>().ok()?, Some(b.trim().parse::<f64>().ok()?)),
            None => (s.trim().parse::<f64>().ok()?, None),
        };
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(rate) || !burst.is_none_or(|b| ok(b) && b >= 1.0) {
            return None;
        }
        Some(burst.map_or(Limit::per_second(rate), |burst| Limit { rate, burst }))
    }

    pub(super) fn describe(&self) -> String {
        format!("{} requests/s with bursts of {}", self.rate, self.burst)
    }
}

/// A token bucket: `tokens` refill at a limit's rate up to its burst.
#[derive(Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn full(limit: Limit, now: Instant) -> Bucket {
        Bucket { tokens: limit.burst, at: now }
    }

    pub(super) fn refilled(&self, limit: Limit, now: Instant) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() * limit.rate).min(limit.burst)
    }

    /// Takes one token, or says how long until one is there.
    pub(super) fn take(&mut self, limit: Limit, now: Instant) -> Result<(), Duration> {
        if limit.rate <= 0.0 {
            return Ok(());
        }
        self.tokens = self.refilled(limit, now);
        self.at = now;
        if self.tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - self.tokens) / limit.rate));
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// RESOURCE_EXHAUSTED saying which limit and when to retry (`RetryInfo`, `QuotaFailure`).
pub(super) fn over_limit(message: String, subject: String, description: String, retry: Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    // Whole milliseconds, rounded up: retrying sooner would be refused again.
    let retry = Duration::from_millis(retry.as_millis() as u64 + 1);
    let mut details = ErrorDetails::with_retry_info(Some(retry));
    details.add_quota_failure_violation(subject, description);
    Status::with_error_details(tonic::Code::ResourceExhausted, message, details)
}

/// Device calls per user: one token bucket per user who called lately. Buckets that
/// have refilled are dropped when the map grows, so idle users cost nothing.
pub(super) struct DeviceLimit {
    limit: Limit,
    buckets: Mutex<std::collections::HashMap<String, Bucket>>,
}

/// Users with a bucket before the full ones are dropped.
const DEVICE_BUCKETS_BEFORE_PRUNING: usize = 10_000;

impl DeviceLimit {
    pub(super) fn new(limit: Limit) -> DeviceLimit {
        DeviceLimit { limit, buckets: Mutex::default() }
    }

    /// Takes over `old`'s buckets when the limit is the same (a reloaded policy).
    pub(super) fn carry_over(&self, old: &DeviceLimit) {
        if self.limit == old.limit {
            let buckets = old.buckets.lock().unwrap_or_else(|e| e.into_inner()).clone();
            *self.buckets.lock().unwrap_or_else(|e| e.into_inner()) = buckets;
        }
    }

    pub(super) fn spend(&self, user: &str) -> Result<(), Status> {
        let (limit, now) = (self.limit, Instant::now());
        if limit.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= DEVICE_BUCKETS_BEFORE_PRUNING && !buckets.contains_key(user) {
            buckets.retain(|_, b| b.refilled(limit, now) < limit.burst);
        }
        let b = buckets.entry(user.to_owned()).or_insert_with(|| Bucket::full(limit, now));
        b.take(limit, now).map_err(|retry| {
            let message = format!(
                "user {user:?} is over the device call rate limit of {} requests/s (--device-rate)",
                limit.rate
            );
            over_limit(message, format!("user:{user}"), format!("{} (--device-rate)", limit.describe()), retry)
        })
    }
}
