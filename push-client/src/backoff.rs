//! Waits between reconnection attempts: exponential, with full jitter.
use std::time::Duration;

/// The n-th wait is drawn uniformly from `[0, min(max, initial × 2ⁿ)]` ("full jitter"):
/// after a replica goes away, its devices come back spread over the window instead of
/// all at once, and a gateway that keeps failing is asked less and less often.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), attempt: 0, rng: fastrand::Rng::new() }
    }

    /// The wait before the next attempt.
    pub fn next(&mut self) -> Duration {
        let ceiling = self.initial.saturating_mul(1 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(self.rng.f64())
    }

    /// Starts over from `initial` (a stream stayed up).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The longest wait: a stream that stayed up this long resets the backoff.
    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait after `n` earlier attempts, from a freshly seeded backoff.
    fn draw(n: usize) -> Duration {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..n {
            b.next();
        }
        b.next()
    }

    #[test]
    fn waits_grow_to_the_maximum_with_full_jitter() {
        let ms = Duration::from_millis;
        for n in 0..8 {
            let draws: Vec<Duration> = (0..300).map(|_| draw(n)).collect();
            let ceiling = ms(100 * (1 << n)).min(ms(1000));
            let top = draws.iter().max().unwrap();
            assert!(*top <= ceiling && *top >= ceiling.mul_f64(0.9), "attempt {n}: at most {top:?} of {ceiling:?}");
            assert!(draws.iter().any(|d| *d < ceiling / 2), "attempt {n}: jittered down to 0, {draws:?}");
        }
    }

    #[test]
    fn a_reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        for _ in 0..10 {
            b.next();
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
