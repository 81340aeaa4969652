//! The alert sink: a batch of alert revisions is written to `custos.alerts` through the
//! ledger, then produced to the alerts topic (key = alert id, JSON, idempotent producer,
//! acks=all), then handed to the SIEM outputs. Used by the detection pipeline and by the
//! review sweep alike.

use std::sync::Arc;
use std::time::Duration;

use custos_runtime::retry::{sleep_or_cancel, RetryPolicy};
use custos_schemas::records::AlertRow;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::alert::to_json;
use crate::outputs::Notifier;
use crate::store::Store;

/// Writes alerts everywhere they go.
pub struct Sink {
    /// ClickHouse.
    pub store: Arc<Store>,
    /// Producer of the alerts topic.
    pub producer: FutureProducer,
    /// The alerts topic.
    pub topic: String,
    /// SIEM outputs.
    pub notifier: Notifier,
}

impl Sink {
    /// Writes `rows`, retrying each step until it succeeds; `false` when `cancel` fired
    /// first (the rows are then not acknowledged: the caller keeps its saved state).
    pub async fn write(&self, rows: &[AlertRow], cancel: &CancellationToken) -> bool {
        if rows.is_empty() {
            return true;
        }
        let mut backoff = RetryPolicy::STORE.backoff();
        loop {
            match self.store.write_alerts(rows).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, alerts = rows.len(), "alerts not written yet, retrying");
                    if !sleep_or_cancel(backoff.step(), cancel).await {
                        return false;
                    }
                }
            }
        }
        for row in rows {
            metrics::counter!("custos_alerts_raised_total", "detector" => row.detector.clone())
                .increment(1);
            let json = to_json(row);
            loop {
                let record = FutureRecord::to(&self.topic)
                    .key(&row.alert_id)
                    .payload(&json);
                match self.producer.send(record, Duration::from_secs(15)).await {
                    Ok(_) => break,
                    Err((e, _)) => {
                        warn!(error = %e, alert_id = %row.alert_id, "alert not published yet, retrying");
                        if !sleep_or_cancel(backoff.step(), cancel).await {
                            return false;
                        }
                    }
                }
            }
            debug!(alert_id = %row.alert_id, revision = row.revision, detector = %row.detector, "alert written");
            self.notifier.notify(row);
        }
        true
    }
}
