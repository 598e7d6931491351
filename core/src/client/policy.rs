//! The pure arithmetic of the reconnect policy and the rate limit: delays from a failure count,
//! and a token bucket that runs on the `Instant`s it is given.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Delay before the next connection attempt after `consecutive_failures` failed attempts in a
/// row: the grace delay after a working connection dropped (no failures yet), then the initial
/// backoff doubling per further failure up to the cap. `unit_jitter` in `[-1, 1]` scales the
/// ±`jitter` spread.
///
/// ```
/// use std::time::Duration;
/// use tickwire_core::client::policy::retry_delay;
///
/// let s = Duration::from_secs;
/// assert_eq!(retry_delay(0, s(2), s(1), s(60), 0.2, 0.0), s(2));
/// assert_eq!(retry_delay(1, s(2), s(1), s(60), 0.2, 0.0), s(1));
/// assert_eq!(retry_delay(3, s(2), s(1), s(60), 0.2, 0.0), s(4));
/// assert_eq!(retry_delay(40, s(2), s(1), s(60), 0.2, 0.0), s(60));
/// assert_eq!(retry_delay(40, s(2), s(1), s(60), 0.2, 1.0), s(72));
/// ```
pub fn retry_delay(
    consecutive_failures: u32,
    grace: Duration,
    initial: Duration,
    max: Duration,
    jitter: f64,
    unit_jitter: f64,
) -> Duration {
    let base = if consecutive_failures == 0 {
        grace
    } else {
        let doublings = consecutive_failures.saturating_sub(1).min(32);
        initial.saturating_mul(1u32 << doublings.min(31)).min(max)
    };
    apply_jitter(base, jitter, unit_jitter)
}

/// `base` scaled by `1 + jitter * unit_jitter`, both clamped to their ranges.
pub fn apply_jitter(base: Duration, jitter: f64, unit_jitter: f64) -> Duration {
    let factor = 1.0 + jitter.clamp(0.0, 1.0) * unit_jitter.clamp(-1.0, 1.0);
    // `mul_f64` panics on overflow; an absurd configured delay must not.
    Duration::try_from_secs_f64(base.as_secs_f64() * factor.max(0.0)).unwrap_or(base)
}

/// A token bucket over `Instant`s: `burst` tokens at most, one more every `period`.
///
/// Credit is kept as an exact `Duration`, so no rounding can ever let an extra command through.
///
/// ```
/// use std::time::{Duration, Instant};
/// use tickwire_core::client::policy::TokenBucket;
///
/// let start = Instant::now();
/// let mut bucket = TokenBucket::new(2, Duration::from_secs(1), start);
/// assert!(bucket.try_take(start));
/// assert!(bucket.try_take(start));
/// assert!(!bucket.try_take(start));
/// assert_eq!(bucket.next_available(start), start + Duration::from_secs(1));
/// assert!(bucket.try_take(start + Duration::from_secs(1)));
/// ```
#[derive(Debug, Clone)]
pub struct TokenBucket {
    period: Duration,
    capacity: Duration,
    credit: Duration,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilling one per `period`.
    pub fn new(burst: u32, period: Duration, now: Instant) -> Self {
        let capacity = period.saturating_mul(burst.max(1));
        TokenBucket {
            period,
            capacity,
            credit: capacity,
            updated: now,
        }
    }

    /// A bucket for `per_minute` commands a minute with bursts of `burst`.
    pub fn per_minute(per_minute: u32, burst: u32, now: Instant) -> Self {
        let period = Duration::from_secs(60)
            .checked_div(per_minute.max(1))
            .unwrap_or(Duration::from_secs(60));
        TokenBucket::new(burst, period.max(Duration::from_nanos(1)), now)
    }

    fn refill(&mut self, now: Instant) {
        // Time never runs backwards here: an earlier `now` adds nothing.
        let elapsed = now.saturating_duration_since(self.updated);
        self.credit = self.credit.saturating_add(elapsed).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        match self.credit.checked_sub(self.period) {
            Some(rest) => {
                self.credit = rest;
                true
            }
            None => false,
        }
    }

    /// When the next token will be available, from what the bucket knows (its last update).
    pub fn next_token_at(&self) -> Instant {
        let missing = self.period.saturating_sub(self.credit);
        self.updated.checked_add(missing).unwrap_or(self.updated)
    }

    /// When the next token is available (now, if one is).
    pub fn next_available(&self, now: Instant) -> Instant {
        let credit = self
            .credit
            .saturating_add(now.saturating_duration_since(self.updated))
            .min(self.capacity);
        match self.period.checked_sub(credit) {
            Some(missing) if !missing.is_zero() => now.checked_add(missing).unwrap_or(now),
            _ => now,
        }
    }
}

/// Commands waiting for the rate limit, in order, with a hard bound.
#[derive(Debug)]
pub struct CommandQueue {
    items: VecDeque<String>,
    bound: usize,
}

impl CommandQueue {
    /// An empty queue holding at most `bound` commands.
    pub fn new(bound: usize) -> Self {
        CommandQueue {
            items: VecDeque::new(),
            bound: bound.max(1),
        }
    }

    /// Adds a framed command; `Err` gives it back when the queue is full.
    pub fn push(&mut self, frame: String) -> Result<(), String> {
        if self.items.len() >= self.bound {
            return Err(frame);
        }
        self.items.push_back(frame);
        Ok(())
    }

    /// The oldest command.
    pub fn pop(&mut self) -> Option<String> {
        self.items.pop_front()
    }

    /// Waiting commands.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops everything (the connection they were meant for is gone).
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// The bound.
    pub fn bound(&self) -> usize {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: Duration = Duration::from_secs(1);

    proptest! {
        #[test]
        fn retry_delays_stay_within_jittered_bounds_and_the_cap(
            failures in 0u32..200,
            grace_ms in 0u64..10_000,
            initial_ms in 1u64..5_000,
            extra_ms in 0u64..120_000,
            jitter in 0.0f64..=1.0,
            unit in -1.0f64..=1.0,
        ) {
            let grace = Duration::from_millis(grace_ms);
            let initial = Duration::from_millis(initial_ms);
            let max = initial + Duration::from_millis(extra_ms);
            let delay = retry_delay(failures, grace, initial, max, jitter, unit);
            let base = if failures == 0 { grace } else { initial.saturating_mul(1 << (failures - 1).min(31)).min(max) };
            let low = base.mul_f64(1.0 - jitter);
            let high = base.mul_f64(1.0 + jitter);
            // mul_f64 rounds to the nanosecond.
            prop_assert!(delay + Duration::from_nanos(1) >= low && delay <= high + Duration::from_nanos(1),
                "{delay:?} not in {low:?}..={high:?}");
            if failures > 0 {
                prop_assert!(delay <= max.mul_f64(1.0 + jitter) + Duration::from_nanos(1));
            }
        }

        #[test]
        fn backoff_never_shrinks_as_failures_grow(failures in 1u32..100) {
            let next = retry_delay(failures + 1, SECOND, SECOND, 60 * SECOND, 0.0, 0.0);
            prop_assert!(next >= retry_delay(failures, SECOND, SECOND, 60 * SECOND, 0.0, 0.0));
        }

        #[test]
        fn token_bucket_never_exceeds_burst_plus_rate_in_any_window(
            per_minute in 1u32..600,
            burst in 1u32..30,
            steps in proptest::collection::vec(0u64..3_000, 1..300),
            window_ms in 1u64..120_000,
        ) {
            let start = Instant::now();
            let mut bucket = TokenBucket::per_minute(per_minute, burst, start);
            let mut now = start;
            let mut granted = Vec::new();
            for step in steps {
                now += Duration::from_millis(step);
                while bucket.try_take(now) {
                    granted.push(now);
                }
            }
            let window = Duration::from_millis(window_ms);
            let period = Duration::from_secs(60) / per_minute;
            let allowed = u64::from(burst) + (window.as_nanos() / period.as_nanos()) as u64 + 1;
            for (index, &first) in granted.iter().enumerate() {
                let in_window = granted[index..].iter().take_while(|&&at| at < first + window).count() as u64;
                prop_assert!(in_window <= allowed, "{in_window} > {allowed} in {window:?}");
            }
        }
    }

    #[test]
    fn absurd_delays_saturate_instead_of_panicking() {
        assert_eq!(apply_jitter(Duration::MAX, 1.0, 1.0), Duration::MAX);
        let delay = retry_delay(1_000, SECOND, Duration::MAX, Duration::MAX, 0.2, 1.0);
        assert_eq!(delay, Duration::MAX);
    }

    #[test]
    fn bucket_reports_when_the_next_token_comes() {
        let start = Instant::now();
        let mut bucket = TokenBucket::per_minute(60, 1, start);
        assert!(bucket.try_take(start));
        assert_eq!(bucket.next_available(start), start + SECOND);
        assert_eq!(bucket.next_available(start + SECOND / 2), start + SECOND);
        assert!(!bucket.try_take(start + SECOND / 2));
        assert!(bucket.try_take(start + SECOND));
        // An idle bucket refills only up to its burst.
        assert!(bucket.try_take(start + 100 * SECOND));
        assert!(!bucket.try_take(start + 100 * SECOND));
    }

    #[test]
    fn queue_is_bounded_and_ordered() {
        let mut queue = CommandQueue::new(2);
        assert_eq!(queue.push("a".into()), Ok(()));
        assert_eq!(queue.push("b".into()), Ok(()));
        assert_eq!(queue.push("c".into()), Err("c".into()));
        assert_eq!(queue.pop().as_deref(), Some("a"));
        assert_eq!(queue.len(), 1);
        queue.clear();
        assert!(queue.is_empty());
    }
}
