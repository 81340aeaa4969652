//! Readiness state shared by the pipeline stages and the HTTP endpoints.

use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Health {
    clickhouse_ok: AtomicBool,
    subscribed: AtomicBool,
    stopping: AtomicBool,
}

impl Health {
    /// Records the outcome of the last ClickHouse request.
    pub fn set_clickhouse(&self, ok: bool) {
        self.clickhouse_ok.store(ok, Ordering::Relaxed);
    }

    /// Records that the consumer joined its group subscription.
    pub fn set_subscribed(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }

    /// Records that shutdown began.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Ready: subscribed, ClickHouse answering, not shutting down.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down");
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
