//! "Now" for the endpoints whose answer depends on it (the break-glass review queue's due and
//! overdue states, the time of a person's action on an alert): the system clock in
//! production, a fixed instant in tests ([`FixedClock`], set on [`crate::AppState::clock`]
//! before the router is built).

use std::fmt::Debug;

/// A source of the current time.
pub trait Clock: Debug + Send + Sync {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that always reads the same instant (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0
    }
}
