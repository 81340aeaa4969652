//! ClickHouse row types of migration 0005 (`custos.consent_history`, `custos.consent_sealed`,
//! `custos.revocations`, `custos.revocation_attempts`). Times are milliseconds since the
//! epoch (`DateTime64(3)`). Patient and subject columns hold pseudonyms only.

use serde::{Deserialize, Serialize};

/// One row of `custos.consent_history`: a consent event and the state after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct HistoryRow {
    /// Identity of the input event (SHA-256 of source and id, as in `audit_events`).
    pub event_key: String,
    /// Producer event id.
    pub event_id: String,
    /// Producer.
    pub event_source: String,
    /// CloudEvents type.
    pub event_type: String,
    /// Wire format.
    pub source_format: String,
    /// Tenant.
    pub tenant: String,
    /// Consent id (empty for a deprovisioning that matched no consent).
    pub consent_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// AS subject pseudonym.
    pub subject: String,
    /// OAuth client.
    pub client_id: String,
    /// AS issuer.
    pub issuer: String,
    /// `active`, `revoked` or `expired` after the event.
    pub status: String,
    /// What the event did (`granted`, `updated`, `revoked`, `noop_inactive`, ...).
    pub effect: String,
    /// State version after the event (1 = first).
    pub version: u64,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Purposes of use.
    pub purpose: Vec<String>,
    /// Period start.
    pub period_start: Option<i64>,
    /// Period end.
    pub period_end: Option<i64>,
    /// Reason of the change.
    pub reason: String,
    /// Who made the change.
    pub actor: String,
    /// Event time.
    pub event_time: i64,
    /// When the consent service recorded it.
    pub recorded_at: i64,
    /// Kafka topic.
    pub kafka_topic: String,
    /// Kafka partition.
    pub kafka_partition: i32,
    /// Kafka offset.
    pub kafka_offset: i64,
}

/// One row of `custos.consent_sealed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct SealedRow {
    /// Tenant.
    pub tenant: String,
    /// Consent id.
    pub consent_id: String,
    /// Sealing key id.
    pub kid: String,
    /// Sealed raw patient id.
    pub patient_sealed: String,
    /// Sealed raw AS subject (empty when unknown).
    pub subject_sealed: String,
    /// When recorded.
    pub recorded_at: i64,
}

/// One row of `custos.revocations`: a state change of one revocation at one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct RevocationRow {
    /// Stable id of the revocation (consent, cause event).
    pub revocation_id: String,
    /// `keycloak`, `ssf:<receiver>` or `kafka`.
    pub target: String,
    /// `requested`, `delivered`, `failed` or `skipped`.
    pub state: String,
    /// 0 for `requested`/`skipped`; the attempt number for `delivered`/`failed`.
    pub seq: u32,
    /// When the state was reached.
    pub at: i64,
    /// Tenant.
    pub tenant: String,
    /// Consent id.
    pub consent_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// AS subject pseudonym.
    pub subject: String,
    /// OAuth client.
    pub client_id: String,
    /// AS issuer.
    pub issuer: String,
    /// `revoke`, `expiry` or `deprovision`.
    pub cause: String,
    /// Why.
    pub reason: String,
    /// Who initiated it (CAEP `initiating_entity`: `user`, `admin`, `policy`).
    pub initiator: String,
    /// Scopes the consent granted.
    pub scopes: Vec<String>,
    /// Event that caused it.
    pub cause_event_key: String,
    /// When the revocation was requested (the cause event's time).
    pub requested_at: i64,
    /// When the target acknowledged (delivered rows).
    pub acked_at: Option<i64>,
    /// `acked_at - requested_at` (delivered rows).
    pub latency_ms: Option<i64>,
    /// Attempts made so far.
    pub attempts: u32,
    /// SET `jti` (SSF targets).
    pub set_jti: String,
    /// Value-free detail (failure reason, skip reason, receipt summary).
    pub detail: String,
}

/// One row of `custos.revocation_attempts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct AttemptRow {
    /// Revocation.
    pub revocation_id: String,
    /// Target.
    pub target: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Start of the attempt.
    pub started_at: i64,
    /// Duration.
    pub duration_ms: u32,
    /// `delivered`, `retry` or `failed`.
    pub outcome: String,
    /// HTTP status of the last request (0: none).
    pub http_status: u16,
    /// Short error code (`connect`, `timeout`, `http_4xx`, SSF `err`, ...).
    pub error_code: String,
    /// Human-readable detail.
    pub detail: String,
    /// Excerpt of the receiver's answer (at most 512 bytes).
    pub receipt: String,
}

/// Cuts a receipt to at most 512 bytes on a character boundary.
pub fn excerpt(s: &str) -> String {
    let mut end = s.len().min(512);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
