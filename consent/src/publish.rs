//! Kafka producer of the consent service. It publishes (a) privacy-API revocations and
//! period expiries as CloudEvents to the consent topic, so Kafka stays the single source
//! of truth and the consumer applies them like any other consent event, and (b) revocation
//! notices to `custos.revocations` for gateways that enforce locally (the Kafka target).
//! Every send awaits the broker's acknowledgement (idempotent producer, acks=all).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use custos_runtime::kafka::{producer_config, Send};
use custos_schemas::ConsentData;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::json;

use crate::push::{Outcome, Verdict};
use crate::rows::RevocationRow;

/// Source attribute of the CloudEvents the consent service publishes.
pub const SOURCE: &str = "custos-consent";

/// The producer and its topics.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    consent_topic: String,
    revocations_topic: Option<String>,
}

/// A random event id (128 bits, hex).
pub fn new_event_id() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

impl Publisher {
    /// Builds the producer.
    pub fn new(
        brokers: &str,
        consent_topic: &str,
        revocations_topic: Option<String>,
    ) -> Result<Publisher, KafkaError> {
        Ok(Publisher {
            producer: producer_config(brokers, "custos-consent", Send::Immediate).create()?,
            consent_topic: consent_topic.to_owned(),
            revocations_topic,
        })
    }

    /// Whether revocations go to a Kafka topic.
    pub fn has_revocations_topic(&self) -> bool {
        self.revocations_topic.is_some()
    }

    /// Publishes a `custos.consent.*` CloudEvent (structured mode) keyed by consent id.
    pub async fn consent_event(
        &self,
        event_type: &str,
        id: &str,
        time: DateTime<Utc>,
        tenant: &str,
        data: &ConsentData,
    ) -> Result<(), KafkaError> {
        let ce = json!({
            "specversion": "1.0",
            "id": id,
            "source": SOURCE,
            "type": event_type,
            "time": time.to_rfc3339_opts(SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "tenant": tenant,
            "data": data,
        });
        let payload = serde_json::to_vec(&ce).unwrap_or_default();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.consent_topic)
            .key(data.consent_id.as_str())
            .payload(payload.as_slice());
        self.producer
            .send(record, Timeout::After(Duration::from_secs(15)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Publishes a revocation notice (pseudonymous identifiers only) to the revocations topic.
    pub async fn revocation(&self, r: &RevocationRow) -> Outcome {
        let Some(topic) = &self.revocations_topic else {
            return Outcome::failure(Verdict::Failed, 0, "no_topic", "no revocations topic", "");
        };
        let notice = json!({
            "type": "custos.revocation",
            "revocationId": r.revocation_id,
            "tenant": r.tenant,
            "consentId": r.consent_id,
            "patient": r.patient,
            "subject": r.subject,
            "client_id": r.client_id,
            "iss": r.issuer,
            "cause": r.cause,
            "reason": r.reason,
            "scopes": r.scopes,
            "requestedAt": DateTime::from_timestamp_millis(r.requested_at)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        });
        let payload = serde_json::to_vec(&notice).unwrap_or_default();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .key(r.consent_id.as_str())
            .payload(payload.as_slice())
            .headers(
                rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: "custos-revocation-id",
                    value: Some(r.revocation_id.as_bytes()),
                }),
            );
        match self
            .producer
            .send(record, Timeout::After(Duration::from_secs(15)))
            .await
        {
            Ok(delivery) => Outcome::delivered(
                0,
                format!(
                    "published to partition {} offset {}",
                    delivery.partition, delivery.offset
                ),
                "",
            ),
            Err((e, _)) => Outcome::failure(
                Verdict::Retry,
                0,
                "kafka",
                format!("publish failed: {e}"),
                "",
            ),
        }
    }
}
