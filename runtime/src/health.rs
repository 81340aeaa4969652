//! Readiness of a service that consumes Kafka and writes ClickHouse, shared by its stages
//! and `/readyz` (see [`crate::ops`]).

use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` reports: ready once subscribed, with ClickHouse answering, after the
/// optional start-up load step, until shutdown begins.
#[derive(Debug, Default)]
pub struct Health {
    clickhouse_ok: AtomicBool,
    subscribed: AtomicBool,
    stopping: AtomicBool,
    loaded: AtomicBool,
    /// When set, readiness also waits for [`Health::set_loaded`]; the text is the reason
    /// given until then.
    load_step: Option<&'static str>,
}

impl Health {
    /// Readiness without a load step (subscribed, ClickHouse answering, not stopping).
    pub fn new() -> Health {
        Health::default()
    }

    /// Readiness that also waits for a start-up load step; `pending` is the reason
    /// `/readyz` gives until [`Health::set_loaded`] (e.g. "consent state not loaded yet").
    pub fn with_load_step(pending: &'static str) -> Health {
        Health {
            load_step: Some(pending),
            ..Health::default()
        }
    }

    /// Records the outcome of the last ClickHouse request.
    pub fn set_clickhouse(&self, ok: bool) {
        self.clickhouse_ok.store(ok, Ordering::Relaxed);
    }

    /// Records that the start-up load step finished.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
    }

    /// Records that the consumer joined its group subscription.
    pub fn set_subscribed(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }

    /// Records that shutdown began.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, else the first reason why not: shutting down, the load step, the
    /// Kafka subscription, ClickHouse.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        if let Some(pending) = self.load_step {
            if !self.loaded.load(Ordering::Relaxed) {
                return Err(pending);
            }
        }
        if !self.subscribed.load(Ordering::Relaxed) {
            return Err("Kafka consumer not subscribed");
        }
        if !self.clickhouse_ok.load(Ordering::Relaxed) {
            return Err("ClickHouse unavailable");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_holds_and_says_why_not() {
        let h = Health::new();
        assert_eq!(h.ready(), Err("Kafka consumer not subscribed"));
        h.set_subscribed();
        assert_eq!(h.ready(), Err("ClickHouse unavailable"));
        h.set_clickhouse(true);
        assert_eq!(h.ready(), Ok(()));
        h.set_clickhouse(false);
        assert_eq!(h.ready(), Err("ClickHouse unavailable"));
        h.set_clickhouse(true);
        h.set_stopping();
        assert_eq!(h.ready(), Err("shutting down"));
    }

    #[test]
    fn a_load_step_comes_before_the_other_conditions() {
        let h = Health::with_load_step("state not loaded yet");
        h.set_subscribed();
        h.set_clickhouse(true);
        assert_eq!(h.ready(), Err("state not loaded yet"));
        h.set_loaded();
        assert_eq!(h.ready(), Ok(()));
        // Without a load step, set_loaded changes nothing.
        let plain = Health::new();
        plain.set_loaded();
        assert_eq!(plain.ready(), Err("Kafka consumer not subscribed"));
    }
}
