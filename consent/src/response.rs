//! The opt-in automatic response to token theft: `custos-alerts` writes every alert revision
//! to its alerts topic and adds the header `custos-response: revoke-session` when the alert's
//! tenant opted in (`auto_revoke`) and the alert is a high or critical token-theft alert. This
//! module consumes that topic in its own consumer group and, for such a message only, revokes
//! the user's session at the client through the existing [`crate::dispatcher`] (Keycloak, SSF
//! receivers, the revocations topic), then records the receipt on the alert as an
//! `auto_revoke` row of `custos.alert_actions`, written through this process's ledger chain.
//!
//! Guarantees:
//!
//! - **Once per alert.** The revocation id is derived from (tenant, alert id), so a later
//!   revision of a handled alert, a replay after a crash and a second delivery all find the
//!   id among the recorded revocations and plan nothing; they only write the receipt if it is
//!   missing (a crash between the `requested` rows and the receipt), with the same key.
//! - **Requested before attempted.** Each target's `requested` row (and the sealed subject
//!   of a workforce user) is in ClickHouse before the first push, as for every revocation;
//!   the Kafka offset is committed after the receipt is written, so a crash replays.
//! - **Checked again here.** A message with the header whose alert is not a high or critical
//!   token-theft alert is refused (counted and logged without identifiers).
//!
//! Resolving the raw AS subject: a workforce subject is readable in the alert (as in the
//! audit row); a patient (or unknown-kind) subject is the audit row's pseudonym, which the
//! consent history uses too (both are the same key ring's `subject` pseudonym of the raw AS
//! `sub`), so the consents of (tenant, subject pseudonym, client) are found in the consent
//! state and their sealed raw subject is opened as for any revocation. Service accounts have
//! no user session and are not revoked.

use std::sync::Arc;

use custos_schemas::records::AlertActionRow;
use custos_schemas::{KeyRing, PseudonymKind};
use metrics::counter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::dispatcher::Job;
use crate::rows::{RevocationRow, SealedRow};
use crate::seal::Sealer;
use crate::service::Core;
use crate::state::{Cause, ConsentBook, ConsentState, RevokeOrder, SealedIds, Status};
use custos_runtime::retry::{sleep_or_cancel, RetryPolicy};

/// The header `custos-alerts` sets on an alert the tenant wants answered automatically.
pub const HEADER: &str = "custos-response";
/// Its value asking for the session's revocation.
pub const REVOKE_SESSION: &[u8] = b"revoke-session";
/// The actor of the receipts.
pub const ACTOR: &str = "custos-consent";
/// The action of the receipts.
pub const ACTION: &str = "auto_revoke";
/// Prefix of the consent id a revocation without a consent is filed under (a workforce user
/// with no recorded consent): `alert:<alert id>`.
pub const ALERT_CONSENT_PREFIX: &str = "alert:";

/// Why an alert message is not acted on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// Not the JSON of an alert revision.
    #[error("not an alert: {0}")]
    Invalid(String),
    /// The header is set but the alert is not a high or critical token-theft alert.
    #[error("not a high or critical token-theft alert")]
    NotEligible,
    /// The subject is a service account (or empty): there is no user session to end.
    #[error("the alert's subject is not a user")]
    NotAUser,
    /// No consent of (tenant, subject pseudonym, client) with a sealed AS subject.
    #[error("no consent of this subject and client holds the raw AS subject")]
    NoConsent,
    /// Neither a consent nor `CUSTOS_CONSENT_ALERTS_ISSUER` names the AS issuer.
    #[error("no AS issuer known for the alert's tenant")]
    NoIssuer,
}

impl Refusal {
    /// Short code for metrics and receipts.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid",
            Refusal::NotEligible => "not_eligible",
            Refusal::NotAUser => "not_a_user",
            Refusal::NoConsent => "no_consent",
            Refusal::NoIssuer => "no_issuer",
        }
    }
}

/// The fields of an alert revision (`Answered<AlertRow>`) the response reads; others are
/// ignored, so the alert schema may grow.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlertMessage {
    /// Alert identity.
    pub alert_id: String,
    /// Revision.
    pub revision: u32,
    /// Tenant.
    pub tenant: String,
    /// Detector.
    pub detector: String,
    /// Severity.
    pub severity: String,
    /// Subject: readable for workforce users, the pseudonym otherwise.
    #[serde(default)]
    pub subject: String,
    /// `workforce`, `patient`, `service` or `unknown`.
    #[serde(default)]
    pub user_kind: String,
    /// OAuth client.
    #[serde(default)]
    pub client_id: String,
    /// First evidence (RFC 3339).
    pub first_seen: String,
    /// Latest evidence (RFC 3339).
    pub last_seen: String,
    /// Whether it is a token-theft alert.
    #[serde(default)]
    pub token_theft: bool,
}

/// A parsed, checked alert revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The message's fields.
    pub msg: AlertMessage,
    /// `first_seen` in ms.
    pub first_seen: i64,
    /// `last_seen` in ms.
    pub last_seen: i64,
}

fn ms(what: &str, s: &str) -> Result<i64, Refusal> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| Refusal::Invalid(format!("{what} is not an RFC 3339 time")))
}

fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Parses and checks an alert revision.
pub fn parse(payload: &[u8]) -> Result<Alert, Refusal> {
    let msg: AlertMessage =
        serde_json::from_slice(payload).map_err(|e| Refusal::Invalid(e.to_string()))?;
    if !is_token(&msg.alert_id, 128) {
        return Err(Refusal::Invalid(
            "alert_id must be 1-128 [A-Za-z0-9-_.:]".into(),
        ));
    }
    if !is_token(&msg.detector, 64) {
        return Err(Refusal::Invalid(
            "detector must be 1-64 [A-Za-z0-9-_.:]".into(),
        ));
    }
    if msg.tenant.is_empty() || msg.tenant.len() > 256 {
        return Err(Refusal::Invalid("tenant must be 1-256 bytes".into()));
    }
    let first_seen = ms("first_seen", &msg.first_seen)?;
    let last_seen = ms("last_seen", &msg.last_seen)?;
    Ok(Alert {
        msg,
        first_seen,
        last_seen,
    })
}

/// Whether the message asks for the automatic response.
pub fn wants_revocation(headers: &[(&str, &[u8])]) -> bool {
    headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(HEADER) && v.trim_ascii() == REVOKE_SESSION)
}

/// Whether the alert may be answered by a revocation: a high or critical token-theft alert.
pub fn eligible(a: &Alert) -> bool {
    a.msg.token_theft && matches!(a.msg.severity.as_str(), "high" | "critical")
}

fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The id of the automatic revocation of an alert: one per alert, whatever its revision.
pub fn revocation_id(tenant: &str, alert_id: &str) -> String {
    format!("rev-{}", digest(&["custos-alert-rev1", tenant, alert_id]))
}

/// The id of the receipt of an alert's revocation.
pub fn receipt_id(tenant: &str, alert_id: &str) -> String {
    digest(&["custos-auto-revoke1", tenant, alert_id])
}

/// The id of the receipt of a revision that could not be answered.
fn refusal_id(tenant: &str, alert_id: &str, revision: u32) -> String {
    digest(&[
        "custos-auto-revoke-refused1",
        tenant,
        alert_id,
        &revision.to_string(),
    ])
}

/// A revocation ready to plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The order for the dispatcher.
    pub order: RevokeOrder,
    /// The sealed raw subject to record first (a workforce user without a consent).
    pub sealed: Option<SealedRow>,
    /// Where the subject came from: `consent` or `workforce`.
    pub source: &'static str,
}

/// The best consent of a subject (any of `subjects`) at a client: active first, then the
/// latest, with a sealed raw subject.
fn consent_of<'a>(
    book: &'a ConsentBook,
    tenant: &str,
    subjects: &[String],
    client_id: &str,
) -> Option<&'a ConsentState> {
    book.iter()
        .filter(|c| {
            c.tenant == tenant
                && c.client_id == client_id
                && !c.subject.is_empty()
                && subjects.contains(&c.subject)
                && c.sealed.as_ref().is_some_and(|s| !s.subject.is_empty())
        })
        .max_by_key(|c| {
            (
                c.status == Status::Active,
                c.updated_at,
                c.consent_id.clone(),
            )
        })
}

/// What the response needs besides the consent state.
#[derive(Debug, Clone, Copy)]
pub struct ResolveContext<'a> {
    /// Pseudonymization keys (the ingest's ring).
    pub keys: &'a KeyRing,
    /// Sealing keys.
    pub sealer: &'a Sealer,
    /// `CUSTOS_CONSENT_ALERTS_ISSUER` (`{tenant}` replaced).
    pub issuer_template: Option<&'a str>,
}

/// Finds the raw AS subject and issuer of an alert and builds its revocation order.
pub fn resolve(
    book: &ConsentBook,
    ctx: &ResolveContext<'_>,
    alert: &Alert,
    now_ms: i64,
) -> Result<Resolved, Refusal> {
    let a = &alert.msg;
    if a.subject.is_empty() || a.client_id.is_empty() || a.user_kind == "service" {
        return Err(Refusal::NotAUser);
    }
    let fallback_issuer = ctx
        .issuer_template
        .map(|t| t.replace("{tenant}", &a.tenant))
        .filter(|i| !i.is_empty());
    let revocation_id = revocation_id(&a.tenant, &a.alert_id);
    let order = |consent: ConsentState| RevokeOrder {
        revocation_id: revocation_id.clone(),
        cause: Cause::Alert,
        reason: format!("alert {}: {}", a.alert_id, a.detector),
        actor: crate::dispatcher::ALERT_INITIATOR.to_owned(),
        requested_at: now_ms,
        cause_event_key: format!("alert:{}", a.alert_id),
        consent,
    };
    let with_issuer = |mut c: ConsentState| -> Result<ConsentState, Refusal> {
        if c.issuer.is_empty() {
            c.issuer = fallback_issuer.clone().ok_or(Refusal::NoIssuer)?;
        }
        Ok(c)
    };
    if a.user_kind == "workforce" && !KeyRing::is_pseudonym(&a.subject) {
        // Readable: its pseudonyms find a consent the user gave, if any.
        let subjects = ctx
            .keys
            .lookup_all(&a.tenant, PseudonymKind::Subject, &a.subject);
        if let Some(c) = consent_of(book, &a.tenant, &subjects, &a.client_id) {
            return Ok(Resolved {
                order: order(with_issuer(c.clone())?),
                sealed: None,
                source: "consent",
            });
        }
        let issuer = fallback_issuer.ok_or(Refusal::NoIssuer)?;
        let consent_id = format!("{ALERT_CONSENT_PREFIX}{}", a.alert_id);
        let sealed_subject = ctx.sealer.seal(&a.tenant, &consent_id, &a.subject);
        let consent = ConsentState {
            tenant: a.tenant.clone(),
            consent_id: consent_id.clone(),
            patient: String::new(),
            subject: ctx
                .keys
                .pseudonymize(&a.tenant, PseudonymKind::Subject, &a.subject),
            client_id: a.client_id.clone(),
            issuer,
            status: Status::Active,
            version: 0,
            scopes: Vec::new(),
            purpose: Vec::new(),
            period_start: None,
            period_end: None,
            updated_at: now_ms,
            sealed: Some(SealedIds {
                patient: String::new(),
                subject: sealed_subject.clone(),
            }),
        };
        return Ok(Resolved {
            order: order(consent),
            sealed: Some(SealedRow {
                tenant: a.tenant.clone(),
                consent_id,
                kid: ctx.sealer.current_kid().to_owned(),
                patient_sealed: String::new(),
                subject_sealed: sealed_subject,
                recorded_at: now_ms,
            }),
            source: "workforce",
        });
    }
    // A pseudonym (patient or unknown kind): the consent history holds the same pseudonym.
    let subjects = [a.subject.clone()];
    let c = consent_of(book, &a.tenant, &subjects, &a.client_id).ok_or(Refusal::NoConsent)?;
    Ok(Resolved {
        order: order(with_issuer(c.clone())?),
        sealed: None,
        source: "consent",
    })
}

/// One target of a receipt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceiptTarget {
    /// `keycloak`, `ssf:<name>` or `kafka`.
    pub target: String,
    /// `requested` or `skipped` when planned.
    pub state: String,
    /// Why skipped.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The receipt (`detail` of the `auto_revoke` action) of a planned revocation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Receipt {
    /// The revocation; its attempts are at `/v1/revocations/{id}/attempts`.
    pub revocation_id: String,
    /// The planned targets.
    pub targets: Vec<ReceiptTarget>,
    /// The alert revision that caused it (unknown when the receipt is rewritten after a
    /// crash from the recorded revocation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// Where the raw subject came from: `consent` or `workforce`.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub subject_from: &'static str,
}

/// The `auto_revoke` action recording a planned revocation on its alert; its time is the
/// revocation's `requested_at`, so a rewrite after a crash has the same key.
pub fn receipt_row(
    alert: &Alert,
    planned: &[RevocationRow],
    source: &'static str,
    revision: Option<u32>,
) -> AlertActionRow {
    let a = &alert.msg;
    let rid = revocation_id(&a.tenant, &a.alert_id);
    let receipt = Receipt {
        revocation_id: rid.clone(),
        targets: planned
            .iter()
            .map(|r| ReceiptTarget {
                target: r.target.clone(),
                state: r.state.clone(),
                detail: r.detail.clone(),
            })
            .collect(),
        revision,
        subject_from: source,
    };
    let at = planned
        .iter()
        .map(|r| r.requested_at)
        .min()
        .unwrap_or(alert.last_seen);
    AlertActionRow {
        action_id: receipt_id(&a.tenant, &a.alert_id),
        alert_id: a.alert_id.clone(),
        tenant: a.tenant.clone(),
        action: ACTION.to_owned(),
        actor: ACTOR.to_owned(),
        assignee: String::new(),
        note: format!(
            "session revocation {rid} planned to {} targets",
            planned.len()
        ),
        detail: serde_json::to_string(&receipt).unwrap_or_default(),
        at,
        alert_first_seen: alert.first_seen,
    }
}

/// The `auto_revoke` action recording why a revision was not answered.
pub fn refusal_row(alert: &Alert, why: &Refusal) -> AlertActionRow {
    let a = &alert.msg;
    AlertActionRow {
        action_id: refusal_id(&a.tenant, &a.alert_id, a.revision),
        alert_id: a.alert_id.clone(),
        tenant: a.tenant.clone(),
        action: ACTION.to_owned(),
        actor: ACTOR.to_owned(),
        assignee: String::new(),
        note: format!("no session revoked: {why}"),
        detail: serde_json::json!({"error": why.code(), "revision": a.revision}).to_string(),
        at: alert.last_seen,
        alert_first_seen: alert.first_seen,
    }
}

/// Consumes the alerts topic until `cancel` fires.
pub async fn run(
    core: Arc<Core>,
    consumer: StreamConsumer,
    topic: String,
    issuer_template: Option<String>,
    cancel: CancellationToken,
) -> Result<(), rdkafka::error::KafkaError> {
    consumer.subscribe(&[topic.as_str()])?;
    info!(topic = %topic, "consuming alerts for the automatic response");
    loop {
        let m = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                counter!("custos_consent_kafka_errors_total").increment(1);
                warn!(error = %e, "Kafka error on the alerts topic");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        if !handle(&core, &m, issuer_template.as_deref(), &cancel).await {
            break;
        }
        if let Err(e) = consumer.commit_message(&m, CommitMode::Async) {
            warn!(error = %e, "alert offset commit failed; the alert will be replayed and skipped");
        }
    }
    info!("alerts consumer stopped");
    Ok(())
}

/// Runs a ClickHouse write until it succeeds (false: cancelled first).
async fn retry<F, Fut>(core: &Core, cancel: &CancellationToken, what: &str, f: F) -> bool
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
                warn!(what, error = %e, "recording the automatic response failed; retrying");
                if !sleep_or_cancel(backoff.step(), cancel).await {
                    return false;
                }
            }
        }
    }
}

fn outcome(o: &'static str) {
    counter!("custos_consent_alert_responses_total", "outcome" => o).increment(1);
}

/// Handles one alert message; false when cancelled before it was recorded.
async fn handle(
    core: &Arc<Core>,
    m: &BorrowedMessage<'_>,
    issuer_template: Option<&str>,
    cancel: &CancellationToken,
) -> bool {
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    if let Some(h) = m.headers() {
        for x in h.iter() {
            headers.push((x.key, x.value.unwrap_or_default()));
        }
    }
    if !wants_revocation(&headers) {
        outcome("not_requested");
        return true;
    }
    let alert = match parse(m.payload().unwrap_or_default()) {
        Ok(a) => a,
        Err(e) => {
            outcome(e.code());
            warn!(partition = m.partition(), offset = m.offset(), error = %e, "alert message refused");
            return true;
        }
    };
    let a = &alert.msg;
    if !eligible(&alert) {
        outcome(Refusal::NotEligible.code());
        warn!(alert_id = %a.alert_id, severity = %a.severity, "automatic response asked for an alert that is not a high-severity token theft; refused");
        return true;
    }
    let rid = revocation_id(&a.tenant, &a.alert_id);
    if core.known_revocations.lock().await.contains(&rid) {
        outcome("already_handled");
        return ensure_receipt(core, &alert, &rid, cancel).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let resolved = {
        let book = core.book.read().await;
        let ctx = ResolveContext {
            keys: &core.keys,
            sealer: &core.sealer,
            issuer_template,
        };
        resolve(&book, &ctx, &alert, now)
    };
    let r = match resolved {
        Ok(r) => r,
        Err(why) => {
            outcome(why.code());
            warn!(alert_id = %a.alert_id, revision = a.revision, reason = why.code(), "automatic response not possible: {why}");
            let row = refusal_row(&alert, &why);
            let exists = core
                .store
                .alert_action_exists(&row.tenant, &row.alert_id, &row.action_id)
                .await
                .unwrap_or(false);
            return exists
                || retry(core, cancel, "refusal receipt", || {
                    core.store.record_alert_action(&row)
                })
                .await;
        }
    };
    let planned = core.dispatcher.plan(&r.order, now);
    let sealed: Vec<SealedRow> = r.sealed.iter().cloned().collect();
    if !retry(core, cancel, "requested rows", || {
        core.store.record_requests(&sealed, &planned)
    })
    .await
    {
        return false;
    }
    core.known_revocations.lock().await.insert(rid.clone());
    for row in planned.iter().filter(|p| p.state == "requested") {
        core.dispatcher.submit(Job {
            row: row.clone(),
            attempts_done: 0,
            sealed: r.order.consent.sealed.clone(),
        });
    }
    outcome("revoked");
    info!(
        alert_id = %a.alert_id,
        revision = a.revision,
        revocation_id = %rid,
        targets = planned.len(),
        subject_from = r.source,
        "automatic response: session revocation planned"
    );
    let row = receipt_row(&alert, &planned, r.source, Some(a.revision));
    retry(core, cancel, "receipt", || {
        core.store.record_alert_action(&row)
    })
    .await
}

/// After a replay or a later revision: writes the receipt if a crash lost it.
async fn ensure_receipt(
    core: &Arc<Core>,
    alert: &Alert,
    rid: &str,
    cancel: &CancellationToken,
) -> bool {
    let a = &alert.msg;
    let action_id = receipt_id(&a.tenant, &a.alert_id);
    let mut backoff = RetryPolicy::STORE.backoff();
    loop {
        let attempt = async {
            if core
                .store
                .alert_action_exists(&a.tenant, &a.alert_id, &action_id)
                .await?
            {
                return Ok(true);
            }
            let planned = core.store.planned(rid).await?;
            if planned.is_empty() {
                return Ok(true);
            }
            let source = if planned[0].consent_id.starts_with(ALERT_CONSENT_PREFIX) {
                "workforce"
            } else {
                "consent"
            };
            let row = receipt_row(alert, &planned, source, None);
            core.store.record_alert_action(&row).await?;
            info!(alert_id = %a.alert_id, revocation_id = %rid, "automatic response: missing receipt written");
            Ok::<_, crate::store::Error>(true)
        };
        match attempt.await {
            Ok(done) => return done,
            Err(e) => {
                warn!(error = %e, "checking the automatic response's receipt failed; retrying");
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

    fn alert_json(kind: &str, subject: &str, severity: &str, theft: bool) -> Vec<u8> {
        serde_json::json!({
            "alert_id": "a1b2", "revision": 1, "tenant": "t1", "detector": "token_theft",
            "severity": severity, "dedup_key": "k", "subject": subject, "user_kind": kind,
            "client_id": "app", "session_id": "", "token_jti": "j", "patient": "",
            "first_seen": "2026-12-01T10:00:00Z", "last_seen": "2026-12-01T10:05:00.250Z",
            "evidence": [], "evidence_count": 2, "summary": "s", "token_theft": theft,
            "an_added_field": 1
        })
        .to_string()
        .into_bytes()
    }

    fn ring() -> KeyRing {
        KeyRing::parse(
            "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            None,
        )
        .unwrap()
    }

    fn sealer() -> Sealer {
        Sealer::parse(
            "s1=6b6579206f6620746865207465737420636f6e73656e74207365616c696e6721",
            None,
        )
        .unwrap()
    }

    fn consent(keys: &KeyRing, sealer: &Sealer, id: &str, status: Status, at: i64) -> ConsentState {
        ConsentState {
            tenant: "t1".into(),
            consent_id: id.into(),
            patient: "ps:p".into(),
            subject: keys.pseudonymize("t1", PseudonymKind::Subject, "kc-user-1"),
            client_id: "app".into(),
            issuer: "keycloak:t1".into(),
            status,
            version: 1,
            scopes: vec![],
            purpose: vec![],
            period_start: None,
            period_end: None,
            updated_at: at,
            sealed: Some(SealedIds {
                patient: sealer.seal("t1", id, "p"),
                subject: sealer.seal("t1", id, "kc-user-1"),
            }),
        }
    }

    #[test]
    fn only_the_header_asks_and_only_high_token_theft_qualifies() {
        assert!(wants_revocation(&[("custos-response", b"revoke-session")]));
        assert!(!wants_revocation(&[("custos-response", b"notify")]));
        assert!(!wants_revocation(&[]));
        let a = parse(&alert_json("patient", "ps:x", "high", true)).unwrap();
        assert!(eligible(&a));
        assert_eq!(a.last_seen - a.first_seen, 300_250);
        assert!(!eligible(
            &parse(&alert_json("patient", "ps:x", "medium", true)).unwrap()
        ));
        assert!(!eligible(
            &parse(&alert_json("patient", "ps:x", "critical", false)).unwrap()
        ));
        assert!(matches!(parse(b"{}"), Err(Refusal::Invalid(_))));
        let mut bad: serde_json::Value =
            serde_json::from_slice(&alert_json("patient", "x", "high", true)).unwrap();
        bad["alert_id"] = "a b'; DROP".into();
        assert!(matches!(
            parse(bad.to_string().as_bytes()),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn a_patient_pseudonym_finds_the_active_consent_and_its_sealed_subject() {
        let (keys, sealer) = (ring(), sealer());
        let mut book = ConsentBook::default();
        book.insert(consent(&keys, &sealer, "old", Status::Revoked, 5));
        book.insert(consent(&keys, &sealer, "live", Status::Active, 1));
        let ps = keys.pseudonymize("t1", PseudonymKind::Subject, "kc-user-1");
        let a = parse(&alert_json("patient", &ps, "high", true)).unwrap();
        let ctx = ResolveContext {
            keys: &keys,
            sealer: &sealer,
            issuer_template: None,
        };
        let r = resolve(&book, &ctx, &a, 42).unwrap();
        assert_eq!(r.order.consent.consent_id, "live");
        assert_eq!(r.order.revocation_id, revocation_id("t1", "a1b2"));
        assert_eq!(r.order.reason, "alert a1b2: token_theft");
        assert_eq!(r.order.cause, Cause::Alert);
        assert!(r.sealed.is_none());
        let sealed = r.order.consent.sealed.unwrap();
        assert_eq!(
            sealer.open("t1", "live", &sealed.subject).unwrap(),
            "kc-user-1"
        );
        // Another client, or an unknown pseudonym: nothing to revoke.
        let other = parse(&alert_json("patient", "ps:nobody", "high", true)).unwrap();
        assert_eq!(resolve(&book, &ctx, &other, 42), Err(Refusal::NoConsent));
        let svc = parse(&alert_json("service", "svc", "high", true)).unwrap();
        assert_eq!(resolve(&book, &ctx, &svc, 42), Err(Refusal::NotAUser));
    }

    #[test]
    fn a_workforce_subject_is_sealed_under_the_alert_and_needs_an_issuer() {
        let (keys, sealer) = (ring(), sealer());
        let book = ConsentBook::default();
        let a = parse(&alert_json("workforce", "dr-1", "critical", true)).unwrap();
        let mut ctx = ResolveContext {
            keys: &keys,
            sealer: &sealer,
            issuer_template: None,
        };
        assert_eq!(resolve(&book, &ctx, &a, 7), Err(Refusal::NoIssuer));
        ctx.issuer_template = Some("https://kc.example/realms/{tenant}");
        let r = resolve(&book, &ctx, &a, 7).unwrap();
        assert_eq!(r.order.consent.issuer, "https://kc.example/realms/t1");
        assert_eq!(r.order.consent.consent_id, "alert:a1b2");
        assert!(KeyRing::is_pseudonym(&r.order.consent.subject));
        let row = r.sealed.unwrap();
        assert_eq!(
            sealer
                .open("t1", "alert:a1b2", &row.subject_sealed)
                .unwrap(),
            "dr-1"
        );
        // The receipt carries ids and targets, never the subject.
        let planned = vec![RevocationRow {
            revocation_id: r.order.revocation_id.clone(),
            target: "keycloak".into(),
            state: "requested".into(),
            seq: 0,
            at: 7,
            tenant: "t1".into(),
            consent_id: "alert:a1b2".into(),
            patient: String::new(),
            subject: r.order.consent.subject.clone(),
            client_id: "app".into(),
            issuer: r.order.consent.issuer.clone(),
            cause: "alert".into(),
            reason: r.order.reason.clone(),
            initiator: "custos-alerts".into(),
            scopes: vec![],
            cause_event_key: "alert:a1b2".into(),
            requested_at: 7,
            acked_at: None,
            latency_ms: None,
            attempts: 0,
            set_jti: String::new(),
            detail: String::new(),
        }];
        let receipt = receipt_row(&a, &planned, r.source, Some(1));
        assert_eq!((receipt.action.as_str(), receipt.at), ("auto_revoke", 7));
        assert_eq!(receipt.alert_first_seen, a.first_seen);
        assert!(
            receipt.detail.contains(&r.order.revocation_id),
            "{}",
            receipt.detail
        );
        assert!(!receipt.detail.contains("dr-1") && !receipt.note.contains("dr-1"));
    }
}
