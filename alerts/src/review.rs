//! The break-glass review sweep. A review item is a break-glass opening in
//! `custos.audit_events` (`event_type = 'custos.breakglass.opened'`, its `event_key` the
//! review id), due `CUSTOS_REVIEW_DUE_HOURS` (24) after it, per tenant
//! `CUSTOS_REVIEW_DUE_HOURS_BY_TENANT`: the query service's review queue settings. Every `review_sweep_secs` the sweep raises one alert per
//! item past its due time without a decision in `custos.break_glass_reviews`: detector
//! `break_glass_review_overdue`, dedup key `review:<event_key>`, severity medium, evidence the
//! opening's key. An item with an alert already is not raised again (the query excludes it),
//! so a restart or a second sweep never doubles one.

use std::sync::Arc;
use std::time::Duration;

use custos_schemas::records::AlertRow;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alert::review_overdue;
use crate::config::ReviewDue;
use crate::sink::Sink;
use crate::store::StoreError;

/// Most items raised per sweep (the rest the next sweep).
pub const SWEEP_LIMIT: u64 = 10_000;

const HOUR_MS: i64 = 3_600_000;

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::outputs::now_ms()
    }
}

/// A clock that says what it is told (tests).
#[derive(Debug, Default)]
pub struct FixedClock(pub std::sync::atomic::AtomicI64);

impl FixedClock {
    /// A clock at `ms`.
    pub fn at(ms: i64) -> FixedClock {
        FixedClock(std::sync::atomic::AtomicI64::new(ms))
    }

    /// Moves it to `ms`.
    pub fn set(&self, ms: i64) {
        self.0.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The sweep.
pub struct Sweep {
    /// Where the alerts go.
    pub sink: Arc<Sink>,
    /// Due times per tenant.
    pub due: ReviewDue,
}

impl Sweep {
    /// One sweep at `clock`'s now: the alerts raised (already written).
    pub async fn once(
        &self,
        clock: &dyn Clock,
        cancel: &CancellationToken,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let now = clock.now_ms();
        let shortest = self.due.shortest();
        let bound = now.saturating_sub(i64::from(shortest) * HOUR_MS);
        let openings = self.sink.store.open_reviews(bound, SWEEP_LIMIT).await?;
        let rows: Vec<AlertRow> = openings
            .iter()
            .filter_map(|o| {
                let due = self.due.hours(&o.tenant);
                (o.opened_ms.saturating_add(i64::from(due) * HOUR_MS) <= now)
                    .then(|| review_overdue(o, due))
            })
            .collect();
        if rows.is_empty() {
            return Ok(rows);
        }
        if !self.sink.write(&rows, cancel).await {
            // Cancelled before acknowledged: the next start sweeps them again.
            return Ok(Vec::new());
        }
        info!(alerts = rows.len(), "overdue break-glass reviews raised");
        Ok(rows)
    }

    /// Sweeps every `every` until `cancel`.
    pub async fn run(&self, clock: &dyn Clock, every: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.once(clock, &cancel).await {
                warn!(error = %e, "break-glass review sweep failed; next sweep retries");
            }
        }
    }
}
