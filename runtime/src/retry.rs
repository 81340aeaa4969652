//! The one retry policy of the services: capped exponential backoff with jitter.
//!
//! The delay after failed attempt `n` (1-based) is `base · 2^(n-1)`, capped at `max`, times
//! a random factor in [0.5, 1), so instances that failed together do not retry together.
//! [`RetryPolicy`] gives the delay of an attempt (for schedules kept in a database, such as
//! revocation pushes); [`Backoff`] walks the same schedule for a loop that retries until it
//! succeeds or is cancelled ([`sleep_or_cancel`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First delay of the retry loops against ClickHouse.
pub const STORE_BASE: Duration = Duration::from_millis(100);
/// Longest delay of the retry loops against ClickHouse.
pub const STORE_MAX: Duration = Duration::from_secs(5);

/// A retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before giving up (loops that retry until cancelled ignore it).
    pub max_attempts: u32,
    /// First delay.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// The schedule of the retry loops against ClickHouse: 100 ms doubling to 5 s, without
    /// an attempt limit.
    pub const STORE: RetryPolicy = RetryPolicy {
        max_attempts: u32::MAX,
        base: STORE_BASE,
        max: STORE_MAX,
    };

    /// Delay after failed attempt `attempt` (1-based): base·2^(attempt-1), capped, times a
    /// random factor in [0.5, 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        let mut b = [0u8; 2];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        let r = f64::from(u16::from_le_bytes(b)) / 65536.0;
        exp.mul_f64(0.5 + r / 2.0)
    }

    /// A [`Backoff`] walking this schedule from the first attempt.
    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            failed: 0,
        }
    }
}

/// The delays of one retry loop, attempt after attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    failed: u32,
}

impl Backoff {
    /// The next delay (after one more failed attempt).
    pub fn step(&mut self) -> Duration {
        self.failed = self.failed.saturating_add(1);
        self.policy.delay(self.failed)
    }
}

/// Sleeps `d` unless `cancel` fires first; `true` when the whole delay passed.
pub async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d1 = p.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 < Duration::from_millis(100));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 < Duration::from_millis(400));
            let d30 = p.delay(30);
            assert!(d30 >= Duration::from_millis(500) && d30 < Duration::from_secs(1));
        }
        // Jitter: fifty draws are not all the same.
        let draws: std::collections::BTreeSet<_> = (0..50).map(|_| p.delay(2)).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn backoff_walks_the_schedule() {
        let mut b = RetryPolicy::STORE.backoff();
        let first = b.step();
        assert!(first >= STORE_BASE / 2 && first < STORE_BASE, "{first:?}");
        let second = b.step();
        assert!(
            second >= STORE_BASE && second < STORE_BASE * 2,
            "{second:?}"
        );
        for _ in 0..40 {
            assert!(b.step() < STORE_MAX);
        }
        assert!(b.step() >= STORE_MAX / 2);
    }

    #[tokio::test]
    async fn sleep_stops_at_cancel() {
        let cancel = CancellationToken::new();
        assert!(sleep_or_cancel(Duration::from_millis(1), &cancel).await);
        cancel.cancel();
        let started = std::time::Instant::now();
        assert!(!sleep_or_cancel(Duration::from_secs(60), &cancel).await);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
