//! The Kafka side: consumes the consent topic and the AS-events topic, folds consent events
//! into [`crate::state::ConsentBook`], records what changed and hands revocations to the
//! dispatcher.
//!
//! Guarantee: offsets are committed only after the batch's history rows, sealed identifiers
//! and `requested` revocation rows are in ClickHouse, so a crash replays rather than loses.
//! A replay is harmless: positions at or below the highest offset recorded in
//! `consent_history` for their partition are skipped (this also covers a new consumer group
//! or an offset reset), history rows are keyed by the event identity, and a revocation id
//! already recorded is never planned again, so nothing is pushed twice. One instance owns
//! the state: run a single consent service per consumer group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use custos_schemas::decode::keycloak::decode_keycloak_login_consent;
use custos_schemas::{
    decode, DecodeError, DecodeLimits, Event, EventType, KafkaPosition, Payload, SourceFormat,
};
use metrics::counter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dispatcher::Job;
use crate::service::Core;
use crate::state::FoldContext;
use custos_runtime::retry::{sleep_or_cancel, RetryPolicy};

/// Most messages processed per batch.
pub const MAX_BATCH: usize = 5000;

/// What a message is to the consent service.
#[derive(Debug)]
pub enum Input {
    /// A consent or deprovisioning event.
    Relevant(Box<Event>),
    /// Another event type (logins, accesses, ...).
    Other,
    /// Undecodable (ingest dead-letters it; here it is counted and skipped).
    Invalid(DecodeError),
}

/// Byte patterns at least one of which every consent or deprovisioning message contains:
/// native types, FHIR `Consent`, Keycloak consent user events (and logins that granted a
/// consent) and admin events.
const RELEVANT: [&[u8]; 7] = [
    b"custos.consent.",
    b"custos.user.deprovisioned",
    b"\"Consent\"",
    b"CONSENT",
    b"consent_granted",
    b"REVOKE_GRANT",
    b"\"operationType\"",
];

/// A cheap pre-check so the bulk of AS traffic (logins, tokens) is not fully decoded:
/// false positives are decoded and dropped; there are no false negatives.
pub fn maybe_relevant(payload: &[u8], headers: &[(&str, &[u8])]) -> bool {
    if let Some((_, ty)) = headers.iter().find(|(k, _)| *k == "ce_type") {
        return ty.starts_with(b"custos.consent.") || *ty == b"custos.user.deprovisioned";
    }
    RELEVANT
        .iter()
        .any(|p| memchr::memmem::find(payload, p).is_some())
}

/// Classifies one message with [`custos_schemas::decode`] (the decoder ingest uses, FHIR
/// `Consent` resources included). A Keycloak `LOGIN` whose consent screen the user accepted
/// is the consent it granted ([`decode_keycloak_login_consent`]): Keycloak emits no
/// `GRANT_CONSENT` for a consent given at sign-in.
pub fn classify(payload: &[u8], headers: &[(&str, &[u8])], limits: &DecodeLimits) -> Input {
    if !maybe_relevant(payload, headers) {
        return Input::Other;
    }
    match decode(payload, headers, limits) {
        Ok(ev)
            if matches!(
                ev.payload,
                Payload::Consent(_) | Payload::UserDeprovisioned(_)
            ) =>
        {
            Input::Relevant(Box::new(ev))
        }
        Ok(ev)
            if ev.event_type == EventType::AuthLogin
                && ev.format == SourceFormat::KeycloakEvent =>
        {
            match decode_keycloak_login_consent(payload) {
                Ok(Some(grant)) => Input::Relevant(Box::new(grant)),
                Ok(None) => Input::Other,
                Err(e) => Input::Invalid(e),
            }
        }
        Ok(_) => Input::Other,
        Err(e) => Input::Invalid(e),
    }
}

/// Runs the consumer until `cancel` fires.
pub async fn run(
    core: Arc<Core>,
    consumer: StreamConsumer,
    topics: Vec<String>,
    mut applied: HashMap<(String, i32), i64>,
    cancel: CancellationToken,
) -> Result<(), rdkafka::error::KafkaError> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    core.health.set_subscribed();
    info!(topics = ?topics, "consuming consent events");
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            m = consumer.recv() => m,
        };
        let mut batch: Vec<OwnedMessage> = Vec::new();
        match first {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                counter!("custos_consent_kafka_errors_total").increment(1);
                warn!(error = %e, "Kafka error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        // Take what else is already there (a backlog is worked off in large batches, one
        // ClickHouse round per batch), for at most 25 ms.
        let cut = tokio::time::Instant::now() + Duration::from_millis(25);
        while batch.len() < MAX_BATCH && tokio::time::Instant::now() < cut {
            match tokio::time::timeout(Duration::from_millis(5), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }
        if !process(&core, &batch, &mut applied, &cancel).await {
            break;
        }
        let mut tpl = TopicPartitionList::new();
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for m in &batch {
            let e = next
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        for ((t, p), o) in &next {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            warn!(error = %e, "offset commit failed; the batch will be replayed and skipped");
        }
    }
    core.health.set_stopping();
    info!("consumer stopped");
    Ok(())
}

/// Folds, records and dispatches one batch; false when cancelled before it was recorded.
async fn process(
    core: &Arc<Core>,
    batch: &[OwnedMessage],
    applied: &mut HashMap<(String, i32), i64>,
    cancel: &CancellationToken,
) -> bool {
    let limits = DecodeLimits {
        max_bytes: core.max_event_bytes,
    };
    let mut history = Vec::new();
    let mut sealed = Vec::new();
    let mut revocations = Vec::new();
    let mut jobs = Vec::new();
    let mut new_ids = HashSet::new();
    let now = chrono::Utc::now().timestamp_millis();
    {
        let mut book = core.book.write().await;
        let known = core.known_revocations.lock().await;
        let ctx = FoldContext {
            keys: &core.keys,
            sealer: &core.sealer,
            default_tenant: &core.default_tenant,
        };
        for m in batch {
            let topic = m.topic().to_owned();
            if applied
                .get(&(topic.clone(), m.partition()))
                .is_some_and(|a| m.offset() <= *a)
            {
                counter!("custos_consent_replayed_skipped_total").increment(1);
                continue;
            }
            let mut headers: Vec<(&str, &[u8])> = Vec::new();
            if let Some(h) = m.headers() {
                for x in h.iter() {
                    headers.push((x.key, x.value.unwrap_or_default()));
                }
            }
            let event = match classify(m.payload().unwrap_or_default(), &headers, &limits) {
                Input::Relevant(ev) => ev,
                Input::Other => continue,
                Input::Invalid(e) => {
                    counter!("custos_consent_decode_errors_total", "reason" => e.reason())
                        .increment(1);
                    debug!(topic = %topic, partition = m.partition(), offset = m.offset(), reason = e.reason(), "skipping undecodable message");
                    continue;
                }
            };
            let pos = KafkaPosition {
                topic,
                partition: m.partition(),
                offset: m.offset(),
            };
            for change in book.apply(&event, &pos, now, &ctx) {
                counter!("custos_consent_events_total", "effect" => change.history.effect.clone())
                    .increment(1);
                history.push(change.history);
                sealed.extend(change.sealed);
                if let Some(order) = change.revoke {
                    if known.contains(&order.revocation_id)
                        || !new_ids.insert(order.revocation_id.clone())
                    {
                        counter!("custos_consent_revocations_known_total").increment(1);
                        continue;
                    }
                    counter!("custos_consent_revocations_total", "cause" => order.cause.as_str())
                        .increment(1);
                    for row in core.dispatcher.plan(&order, now) {
                        if row.state == "requested" {
                            jobs.push(Job {
                                row: row.clone(),
                                attempts_done: 0,
                                sealed: order.consent.sealed.clone(),
                            });
                        }
                        revocations.push(row);
                    }
                }
            }
        }
    }
    // Sealed identifiers and `requested` rows first: then the pushes may start while the
    // history is written; the offsets are committed by the caller after both.
    let has_requests = !sealed.is_empty() || !revocations.is_empty();
    if has_requests
        && !retry(core, cancel, || {
            core.store.record_requests(&sealed, &revocations)
        })
        .await
    {
        return false;
    }
    core.known_revocations.lock().await.extend(new_ids);
    for job in jobs {
        core.dispatcher.submit(job);
    }
    if !history.is_empty() && !retry(core, cancel, || core.store.record_history(&history)).await {
        return false;
    }
    for h in &history {
        let e = applied
            .entry((h.kafka_topic.clone(), h.kafka_partition))
            .or_insert(-1);
        *e = (*e).max(h.kafka_offset);
    }
    true
}

/// Runs a ClickHouse write until it succeeds (false: cancelled first).
async fn retry<F, Fut>(core: &Core, cancel: &CancellationToken, f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::store::Error>>,
{
    let mut backoff = RetryPolicy::STORE.backoff();
    loop {
        match f().await {
            Ok(()) => {
                core.health.set_clickhouse(true);
                return true;
            }
            Err(e) => {
                core.health.set_clickhouse(false);
                counter!("custos_consent_clickhouse_retries_total").increment(1);
                warn!(error = %e, "recording consent changes failed; retrying");
                if !sleep_or_cancel(backoff.step(), cancel).await {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefilter_keeps_every_consent_format_and_drops_logins() {
        let limits = DecodeLimits::default();
        let login =
            br#"{"id":"1","time":1,"type":"LOGIN","realmId":"r","clientId":"c","userId":"u"}"#;
        assert!(!maybe_relevant(login, &[]));
        assert!(matches!(classify(login, &[], &limits), Input::Other));
        let grant = br#"{"id":"2","time":1,"type":"GRANT_CONSENT","realmId":"r","clientId":"c","userId":"u"}"#;
        assert!(matches!(classify(grant, &[], &limits), Input::Relevant(_)));
        // The consent screen of a sign-in: a LOGIN with its outcome.
        let screen = br#"{"id":"6","time":1,"type":"LOGIN","realmId":"r","clientId":"c","userId":"u","details":{"consent":"consent_granted"}}"#;
        match classify(screen, &[], &limits) {
            Input::Relevant(ev) => assert_eq!(ev.event_type, EventType::ConsentGranted),
            other => panic!("a consent given at sign-in is not relevant: {other:?}"),
        }
        let persisted = br#"{"id":"7","time":1,"type":"LOGIN","realmId":"r","clientId":"c","userId":"u","details":{"consent":"persisted_consent"}}"#;
        assert!(matches!(classify(persisted, &[], &limits), Input::Other));
        let admin = br#"{"id":"3","time":1,"realmId":"r","operationType":"DELETE","resourceType":"USER","resourcePath":"users/u"}"#;
        assert!(matches!(classify(admin, &[], &limits), Input::Relevant(_)));
        let ce = br#"{"specversion":"1.0","id":"4","source":"s","type":"custos.user.deprovisioned","time":"2026-01-01T00:00:00Z","data":{"iss":"i","sub":"u"}}"#;
        assert!(matches!(classify(ce, &[], &limits), Input::Relevant(_)));
        let data = br#"{"consentId":"c","patient":"p","client_id":"a"}"#;
        let headers: Vec<(&str, &[u8])> = vec![
            ("ce_specversion", b"1.0"),
            ("ce_id", b"5"),
            ("ce_source", b"s"),
            ("ce_type", b"custos.consent.granted"),
            ("ce_time", b"2026-01-01T00:00:00Z"),
        ];
        assert!(matches!(
            classify(data, &headers, &limits),
            Input::Relevant(_)
        ));
        let other: Vec<(&str, &[u8])> = vec![("ce_type", b"custos.auth.login")];
        assert!(!maybe_relevant(data, &other));
        // FHIR Consent resources come through the shared decoder.
        let fhir = br#"{"resourceType":"Consent","id":"fc","status":"inactive","meta":{"lastUpdated":"2026-01-02T00:00:00Z"},
            "patient":{"reference":"Patient/p"},"provision":{"actor":[{"reference":{"identifier":
            {"system":"urn:ietf:params:oauth:client-id","value":"a"}}}]}}"#;
        match classify(fhir, &[], &limits) {
            Input::Relevant(ev) => {
                assert_eq!(ev.format, custos_schemas::SourceFormat::FhirConsent);
                assert_eq!(ev.event_type, custos_schemas::EventType::ConsentRevoked);
            }
            _ => panic!("FHIR Consent not relevant"),
        }
        let draft = br#"{"resourceType":"Consent","id":"fc","status":"draft","meta":{"lastUpdated":"2026-01-02T00:00:00Z"}}"#;
        assert!(matches!(
            classify(draft, &[], &limits),
            Input::Invalid(DecodeError::UnknownType(_))
        ));
    }
}
