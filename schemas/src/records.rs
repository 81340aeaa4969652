//! Row types of the tables more than one crate reads, declared here once: the versioned
//! record tables that services other than the ingest write (the query audit
//! `custos.report_queries`, the consent history `custos.consent_history` and the revocation
//! lifecycle `custos.revocations`), which their writers and the ledger verifier
//! (`custos-integrity`) read, and the projection of the audit table (`custos.audit_events`,
//! whose full row is [`AuditRow`]) that reports read ([`EventRow`]). Times are milliseconds
//! since the epoch (`DateTime64(3)`); patient and subject columns hold pseudonyms.
//!
//! With the `openapi` feature the row types that an API answers with derive
//! `utoipa::ToSchema`, so the published schema is this declaration.

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize, Serializer};

use crate::row::AuditRow;

/// RFC 3339 text (milliseconds, `Z`) of epoch milliseconds; empty when out of range.
pub fn ms_to_rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Serializes epoch ms as RFC 3339.
pub fn ser_ms<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ms_to_rfc3339(*ms))
}

/// Serializes optional epoch ms as RFC 3339 or null.
pub fn ser_opt_ms<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(v) => s.serialize_str(&ms_to_rfc3339(*v)),
        None => s.serialize_none(),
    }
}

/// The columns of `custos.audit_events` that reports read and answer, in this order: a
/// projection of [`AuditRow`] (the full row the ingest writes, declared with the conversion
/// that fills it) without the producer, Kafka and chain columns. One audit record as reports
/// show it: patient-identifying values are the stored pseudonyms, never raw ids. Its JSON
/// form writes times as RFC 3339 (it is read from ClickHouse, never written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "One audit record as reports show it: patient-identifying values are the stored\npseudonyms, never raw ids."
    )
)]
pub struct EventRow {
    /// Event identity (hex).
    pub event_key: String,
    /// When it happened (RFC 3339).
    #[serde(serialize_with = "ser_ms")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub event_time: i64,
    /// Custos event type.
    pub event_type: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// AS issuer.
    pub issuer: String,
    /// User subject (readable for workforce, pseudonym otherwise).
    pub user_sub: String,
    /// `workforce`, `patient`, `service` or `unknown`.
    pub user_kind: String,
    /// SMART `fhirUser`.
    pub fhir_user: String,
    /// OAuth client.
    pub client_id: String,
    /// AS session.
    pub session_id: String,
    /// Token id.
    pub token_jti: String,
    /// Token type.
    pub token_type: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// FHIR interaction.
    pub interaction: String,
    /// FHIR resource type.
    pub resource_type: String,
    /// FHIR resource id (pseudonym in a patient compartment).
    pub resource_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// Encounter pseudonym.
    pub encounter: String,
    /// Consent id.
    pub consent_id: String,
    /// Purposes of use.
    pub purpose_of_use: Vec<String>,
    /// Break-the-glass reason.
    pub break_glass_reason: String,
    /// `permit`, `deny` or empty.
    pub decision: String,
    /// HTTP status.
    pub http_status: u16,
    /// Source IP (pseudonym for patient users).
    pub source_ip: String,
    /// User agent.
    pub user_agent: String,
    /// Gateway request id.
    pub request_id: String,
    /// Reason of a revocation or consent change.
    pub reason: String,
    /// Who made an administrative change.
    pub actor: String,
    /// Introspection result.
    pub active: Option<bool>,
    /// Consent period start (RFC 3339).
    #[serde(serialize_with = "ser_opt_ms")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub period_start: Option<i64>,
    /// Token expiry, consent period end or break-glass end (RFC 3339).
    #[serde(serialize_with = "ser_opt_ms")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub expires_at: Option<i64>,
}

/// The projection of a full row (each column moved as is: the compiler checks that every
/// projected column is a column of [`AuditRow`] of the same type).
impl From<AuditRow> for EventRow {
    fn from(r: AuditRow) -> EventRow {
        EventRow {
            event_key: r.event_key,
            event_time: r.event_time,
            event_type: r.event_type,
            outcome: r.outcome,
            issuer: r.issuer,
            user_sub: r.user_sub,
            user_kind: r.user_kind,
            fhir_user: r.fhir_user,
            client_id: r.client_id,
            session_id: r.session_id,
            token_jti: r.token_jti,
            token_type: r.token_type,
            scopes: r.scopes,
            interaction: r.interaction,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            patient: r.patient,
            encounter: r.encounter,
            consent_id: r.consent_id,
            purpose_of_use: r.purpose_of_use,
            break_glass_reason: r.break_glass_reason,
            decision: r.decision,
            http_status: r.http_status,
            source_ip: r.source_ip,
            user_agent: r.user_agent,
            request_id: r.request_id,
            reason: r.reason,
            actor: r.actor,
            active: r.active,
            period_start: r.period_start,
            expires_at: r.expires_at,
        }
    }
}

/// Declares a record row type, once, and its answer form [`Answered`]: the same fields in
/// the same order, the ones marked `=> time` (epoch ms) written as RFC 3339. The row's own
/// serde form (ClickHouse, the ledger's content hash) is left as it is. Field-level serde
/// attributes are not applied to the answer form: rows declared here carry none.
macro_rules! record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $ty:ty $(=> $kind:ident)?
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )+
        }

        impl From<$name> for Answered<$name> {
            fn from(row: $name) -> Answered<$name> {
                Answered(row)
            }
        }

        impl Serialize for Answered<$name> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct as _;
                let fields = [$(stringify!($field)),+].len();
                let mut out = s.serialize_struct(stringify!($name), fields)?;
                $(
                    out.serialize_field(
                        stringify!($field),
                        &record!(@answer self.0.$field $(=> $kind)?),
                    )?;
                )+
                out.end()
            }
        }
    };
    (@answer $value:expr => time) => {
        ms_to_rfc3339($value)
    };
    (@answer $value:expr) => {
        &$value
    };
}

/// A record row as an API answers it (JSON, NDJSON): its fields in declaration order, times
/// as RFC 3339 instead of epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered<T>(pub T);

record! {
    /// One version of a row of `custos.report_queries` (migration 0004): a report a service
    /// answered, written in phases under one `query_id` (see the query service's `audit`).
    /// The query-audit report answers it as [`Answered`] (schema `ReportQuery`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[cfg_attr(
        feature = "openapi",
        schema(as = ReportQuery, description = "One row of `custos.report_queries` (migration 0004).")
    )]
    pub struct ReportQueryRow {
        /// Query id (32 hex), also returned to the caller as `query_id`.
        pub query_id: String,
        /// When the request arrived (RFC 3339).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        pub asked_at: i64 => time,
        /// When this version of the record was written (RFC 3339).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        pub recorded_at: i64 => time,
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
        /// `json`, `csv`, `ndjson` or `fhir`.
        pub format: String,
        /// `answering` (asked, not yet answered or never finished), `answered`, `failed`,
        /// `streaming`, `complete`, `aborted` or `forbidden`.
        pub status: String,
        /// Rows returned.
        pub rows_returned: u64,
        /// Time to answer (ms).
        pub duration_ms: u32,
    }
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

record! {
    /// One revision of an alert (`custos.alerts`, migration 0014): what a detector found, about
    /// whom (the audit rows' stored values: pseudonyms where they have them) and the event keys
    /// of its evidence rows in `custos.audit_events`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[cfg_attr(
        feature = "openapi",
        schema(as = Alert, description = "One revision of an alert (`custos.alerts`).")
    )]
    pub struct AlertRow {
        /// Alert identity (hex), derived from tenant, detector and dedup key.
        pub alert_id: String,
        /// Revision, 1 when opened, one more per update as evidence grows.
        pub revision: u32,
        /// Tenant.
        pub tenant: String,
        /// Detector that raised it.
        pub detector: String,
        /// `low`, `medium`, `high` or `critical`.
        pub severity: String,
        /// One open alert per incident: the incident's key within the detector.
        pub dedup_key: String,
        /// User subject (readable for workforce, pseudonym otherwise).
        pub subject: String,
        /// `workforce`, `patient`, `service` or `unknown`.
        pub user_kind: String,
        /// OAuth client.
        pub client_id: String,
        /// AS session.
        pub session_id: String,
        /// Token id.
        pub token_jti: String,
        /// Patient pseudonym, when the incident concerns one patient.
        pub patient: String,
        /// Event time of the first evidence (RFC 3339).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        pub first_seen: i64 => time,
        /// Event time of the latest evidence (RFC 3339).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        pub last_seen: i64 => time,
        /// Event keys of evidence rows (bounded; `evidence_count` counts all).
        pub evidence: Vec<String>,
        /// How many events are evidence of it.
        pub evidence_count: u32,
        /// One sentence: what was seen (counts and kinds, never a raw identifier).
        pub summary: String,
        /// A token-theft alert, eligible for the tenant's automatic revocation.
        pub token_theft: bool,
    }
}

record! {
    /// One action on an alert (`custos.alert_actions`, migration 0014): `acknowledge`,
    /// `assign`, `close` or `reopen` by a person through the alert API, or `notify` and
    /// `auto_revoke` by custos-alerts and custos-consent (the automatic response), whose
    /// `detail` holds the receipt.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[cfg_attr(
        feature = "openapi",
        schema(as = AlertAction, description = "One action on an alert (`custos.alert_actions`).")
    )]
    pub struct AlertActionRow {
        /// Action identity (hex).
        pub action_id: String,
        /// The alert it acts on.
        pub alert_id: String,
        /// Tenant.
        pub tenant: String,
        /// `acknowledge`, `assign`, `close`, `reopen`, `notify` or `auto_revoke`.
        pub action: String,
        /// Who acted (the caller's subject, or `custos-alerts`).
        pub actor: String,
        /// Assignee (for `assign`).
        pub assignee: String,
        /// The actor's note.
        pub note: String,
        /// Machine receipt (revocation id, delivery status).
        pub detail: String,
        /// When (RFC 3339).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        pub at: i64 => time,
        /// The alert's first evidence time, which the retention counts from (RFC 3339).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        pub alert_first_seen: i64 => time,
    }
}

record! {
    /// One decision of the break-glass review queue (`custos.break_glass_reviews`, migration
    /// 0014). The review item is the break-glass opening whose event key is `review_id`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[cfg_attr(
        feature = "openapi",
        schema(as = ReviewDecision, description = "One break-glass review decision (`custos.break_glass_reviews`).")
    )]
    pub struct ReviewDecisionRow {
        /// The opening's event key.
        pub review_id: String,
        /// Decision identity (hex).
        pub decision_id: String,
        /// Tenant.
        pub tenant: String,
        /// `justified` or `unjustified`.
        pub decision: String,
        /// The reviewer's note.
        pub note: String,
        /// The reviewer (the caller's subject).
        pub actor: String,
        /// When decided (RFC 3339).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        pub decided_at: i64 => time,
        /// When the break-glass access was opened (RFC 3339).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        pub opened_at: i64 => time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_query_is_answered_with_rfc3339_times_and_stored_with_ms() {
        let row = ReportQueryRow {
            query_id: "q".into(),
            asked_at: 1_000,
            recorded_at: 2_000,
            caller_sub: "s".into(),
            caller_issuer: "i".into(),
            caller_client: "c".into(),
            caller_roles: vec!["auditor".into()],
            report: "patient-access".into(),
            tenant: "t".into(),
            parameters: "{}".into(),
            format: "json".into(),
            status: "answered".into(),
            rows_returned: 3,
            duration_ms: 4,
        };
        let stored = serde_json::to_string(&row).unwrap_or_default();
        let answered = serde_json::to_string(&Answered::from(row)).unwrap_or_default();
        assert_eq!(
            answered,
            stored
                .replace(
                    "\"asked_at\":1000",
                    "\"asked_at\":\"1970-01-01T00:00:01.000Z\""
                )
                .replace(
                    "\"recorded_at\":2000",
                    "\"recorded_at\":\"1970-01-01T00:00:02.000Z\""
                )
        );
        assert!(stored.contains("\"asked_at\":1000"));
    }

    #[test]
    fn event_row_projects_an_audit_row_and_answers_rfc3339_times() {
        let row = AuditRow {
            event_key: "k".into(),
            event_time: 1_000,
            kafka_offset: 7,
            expires_at: Some(2_000),
            ..AuditRow::default()
        };
        let e = EventRow::from(row);
        assert_eq!(e.event_key, "k");
        let json = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(json["event_time"], "1970-01-01T00:00:01.000Z");
        assert_eq!(json["expires_at"], "1970-01-01T00:00:02.000Z");
        assert_eq!(json["period_start"], serde_json::Value::Null);
        assert!(json.get("kafka_offset").is_none());
    }
}
