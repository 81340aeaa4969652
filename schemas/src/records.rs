//! Row types of the versioned record tables that services other than the ingest write:
//! the query audit (`custos.report_queries`), the consent history (`custos.consent_history`)
//! and the revocation lifecycle (`custos.revocations`). They are declared here, once, because
//! both their writers and the ledger verifier (`custos-integrity`) read them. Times are
//! milliseconds since the epoch (`DateTime64(3)`); patient and subject columns hold pseudonyms.

use serde::{Deserialize, Serialize};

/// One version of a row of `custos.report_queries` (migration 0004): a report a service
/// answered, written in phases under one `query_id` (see the query service's `audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct ReportQueryRow {
    /// Query id (32 hex).
    pub query_id: String,
    /// When the request arrived.
    pub asked_at: i64,
    /// When this version was written.
    pub recorded_at: i64,
    /// Caller `sub`.
    pub caller_sub: String,
    /// Caller token issuer.
    pub caller_issuer: String,
    /// Caller client (`azp`).
    pub caller_client: String,
    /// Caller roles.
    pub caller_roles: Vec<String>,
    /// Report name.
    pub report: String,
    /// Tenant queried.
    pub tenant: String,
    /// Parameters as JSON, identifiers pseudonymized.
    pub parameters: String,
    /// Answer format.
    pub format: String,
    /// Phase or outcome (`answering`, `answered`, `failed`, `streaming`, `complete`, ...).
    pub status: String,
    /// Rows returned.
    pub rows_returned: u64,
    /// Time to answer (ms).
    pub duration_ms: u32,
}

/// One row of `custos.consent_history`: a consent event and the state after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
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

/// One row of `custos.revocations`: a state change of one revocation at one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
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
