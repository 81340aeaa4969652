//! The alert sink: a batch of alert revisions is written to `custos.alerts` through the
//! ledger, then produced to the alerts topic (key = alert id, JSON, idempotent producer,
//! acks=all), then handed to the SIEM outputs. Used by the detection pipeline and by the
//! review sweep alike.

use std::sync::Arc;
use std::time::Duration;

use custos_detect::ParamSet;
use custos_runtime::retry::{sleep_or_cancel, RetryPolicy};
use custos_schemas::records::AlertRow;
use rdkafka::message::{Header, OwnedHeaders};
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
    /// The detector parameters: which tenants opted in to the automatic response.
    pub params: Arc<ParamSet>,
}

/// The Kafka header asking the consent service to revoke the alert's session.
pub const RESPONSE_HEADER: &str = "custos-response";
/// Its value.
pub const REVOKE_SESSION: &str = "revoke-session";

/// Whether `row` asks for the automatic response: a token-theft alert of severity high or
/// critical in a tenant whose `auto_revoke` is on.
pub fn wants_revocation(params: &ParamSet, row: &AlertRow) -> bool {
    row.token_theft
        && matches!(row.severity.as_str(), "high" | "critical")
        && params.tenant(&row.tenant).auto_revoke
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
                let mut record = FutureRecord::to(&self.topic)
                    .key(&row.alert_id)
                    .payload(&json);
                if wants_revocation(&self.params, row) {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: RESPONSE_HEADER,
                        value: Some(REVOKE_SESSION),
                    }));
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant: &str, severity: &str, theft: bool) -> AlertRow {
        AlertRow {
            alert_id: "a".into(),
            revision: 1,
            tenant: tenant.into(),
            detector: "token_multi_origin".into(),
            severity: severity.into(),
            dedup_key: "jti:x".into(),
            subject: "s".into(),
            user_kind: "workforce".into(),
            client_id: "c".into(),
            session_id: String::new(),
            token_jti: "x".into(),
            patient: String::new(),
            first_seen: 0,
            last_seen: 0,
            evidence: vec![],
            evidence_count: 1,
            summary: String::new(),
            token_theft: theft,
        }
    }

    #[test]
    fn only_high_token_theft_of_an_opted_in_tenant_asks_for_revocation() {
        let params =
            ParamSet::from_json(r#"{"tenants": {"hosp": {"auto_revoke": true}}}"#).expect("params");
        assert!(wants_revocation(&params, &row("hosp", "high", true)));
        assert!(wants_revocation(&params, &row("hosp", "critical", true)));
        assert!(!wants_revocation(&params, &row("hosp", "medium", true)));
        assert!(!wants_revocation(&params, &row("hosp", "high", false)));
        assert!(!wants_revocation(&params, &row("other", "high", true)));
    }
}
