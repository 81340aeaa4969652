//! Readiness shared by the consumer, the dispatcher and `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Health {
    clickhouse_ok: AtomicBool,
    loaded: AtomicBool,
    subscribed: AtomicBool,
    stopping: AtomicBool,
}

impl Health {
    /// Outcome of the last ClickHouse request.
    pub fn set_clickhouse(&self, ok: bool) {
        self.clickhouse_ok.store(ok, Ordering::Relaxed);
    }

    /// State rebuilt from ClickHouse.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
    }

    /// Consumer subscribed.
    pub fn set_subscribed(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }

    /// Shutting down.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Ready: state loaded, consuming, ClickHouse answering, not stopping.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        if !self.loaded.load(Ordering::Relaxed) {
            return Err("consent state not loaded yet");
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
