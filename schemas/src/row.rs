//! ClickHouse row types and the conversion from [`Event`]s, where pseudonymization happens.
//!
//! Identifier policy (DESIGN.md): patient ids, encounter ids, resource ids in a patient
//! compartment, and the subjects and IP addresses of patient users (or of users whose kind
//! is unknown) are stored only as keyed pseudonyms. Workforce identities (clinician `sub`,
//! `fhirUser` Practitioner) stay readable so the audit names who acted. Raw tokens never
//! reach a row: events carrying one are rejected before decoding.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{
    AuthData, BreakGlassData, ConsentData, Decision, DeprovisionData, Event, EventType,
    FhirAccessData, Payload, TokenData,
};
use crate::pseudonym::{KeyRing, PseudonymKind};

/// Where a message sat in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KafkaPosition {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// One row of `custos.audit_events`. Column order and types match migrations 0001 and 0003.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct AuditRow {
    /// Hex SHA-256 (16 bytes) of `source` 0x1f `id`: the event's identity for deduplication.
    pub event_key: String,
    /// Producer event id.
    pub event_id: String,
    /// Producer (CloudEvents `source`).
    pub event_source: String,
    /// CloudEvents `type`.
    pub event_type: String,
    /// Wire format it arrived in.
    pub source_format: String,
    /// Tenant.
    pub tenant: String,
    /// Event time, ms since the epoch (DateTime64(3)).
    pub event_time: i64,
    /// Ingest time, ms since the epoch.
    pub ingested_at: i64,
    /// `success` or `failure`.
    pub outcome: String,
    /// AS issuer.
    pub issuer: String,
    /// User subject: readable for workforce and services, a pseudonym otherwise.
    pub user_sub: String,
    /// `workforce`, `patient`, `service` or `unknown`.
    pub user_kind: String,
    /// SMART `fhirUser`; a patient reference has its id pseudonymized.
    pub fhir_user: String,
    /// OAuth client.
    pub client_id: String,
    /// AS session id.
    pub session_id: String,
    /// Token id (`jti`).
    pub token_jti: String,
    /// `access`, `refresh`, `id` or empty.
    pub token_type: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// FHIR interaction.
    pub interaction: String,
    /// FHIR resource type.
    pub resource_type: String,
    /// FHIR resource id (pseudonymized in a patient compartment).
    pub resource_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// Encounter pseudonym.
    pub encounter: String,
    /// Consent id.
    pub consent_id: String,
    /// Purposes of use (v3-ActReason).
    pub purpose_of_use: Vec<String>,
    /// Stated break-the-glass reason.
    pub break_glass_reason: String,
    /// `permit`, `deny` or empty.
    pub decision: String,
    /// HTTP status (0 when not an HTTP access).
    pub http_status: u16,
    /// Client IP: readable for workforce, a pseudonym otherwise.
    pub source_ip: String,
    /// User agent.
    pub user_agent: String,
    /// Resources returned by a search, `Type/` + pseudonymized id.
    pub returned_ids: Vec<String>,
    /// Error code.
    pub error: String,
    /// Reason (revocation, consent change, deprovisioning).
    pub reason: String,
    /// Who performed an administrative change.
    pub actor: String,
    /// Gateway request id.
    pub request_id: String,
    /// Introspection result.
    pub active: Option<bool>,
    /// Start of a consent period (ms).
    pub period_start: Option<i64>,
    /// Token expiry, consent period end or break-glass end (ms).
    pub expires_at: Option<i64>,
    /// Kafka topic it was read from.
    pub kafka_topic: String,
    /// Kafka partition.
    pub kafka_partition: i32,
    /// Kafka offset.
    pub kafka_offset: i64,
    /// Offset of the previous chained record of this partition (-1: first record).
    pub chain_prev_offset: i64,
    /// SHA-256 of the previous record's hash and this record's content
    /// (`custos_integrity::chain::record_hash`); all zeros when the row is not chained. Hex
    /// in JSON.
    #[serde(with = "crate::hash::hash_serde")]
    pub record_hash: crate::hash::Hash,
    /// `event_key` of the previous chained record (empty for the first). Not hashed: a hint
    /// that lets `verify` prove a missing position is a producer duplicate collapsed by
    /// deduplication (its hash recomputed from the surviving copy), not a deletion.
    pub prev_event_key: String,
}

/// One row of `custos.ingest_rejections`: a message sent to the DLQ. It holds no payload
/// bytes (they may carry PHI; the DLQ topic keeps them, credentials redacted), only where
/// and why; except for a row the store refused after it was chained (`store_refused`),
/// whose pseudonymized audit row is kept in `refused_row` so its chain still verifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct RejectionRow {
    /// Kafka topic.
    pub kafka_topic: String,
    /// Kafka partition.
    pub kafka_partition: i32,
    /// Kafka offset.
    pub kafka_offset: i64,
    /// When it was rejected (ms).
    pub rejected_at: i64,
    /// Reason code ([`crate::DecodeError::reason`]).
    pub reason: String,
    /// Value-free description.
    pub detail: String,
    /// Message size in bytes.
    pub size_bytes: u32,
    /// For `store_refused`: the chained audit row as JSON; otherwise empty.
    pub refused_row: String,
}

/// The kind of user an event's subject is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    /// Clinicians and staff: readable.
    Workforce,
    /// Patients and related persons: pseudonymized.
    Patient,
    /// A client acting for itself: readable.
    Service,
    /// Not known: pseudonymized (fail safe).
    Unknown,
}

impl UserKind {
    /// Column value.
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::Workforce => "workforce",
            UserKind::Patient => "patient",
            UserKind::Service => "service",
            UserKind::Unknown => "unknown",
        }
    }

    /// Classifies by the SMART `fhirUser` resource type.
    pub fn from_fhir_user(fhir_user: Option<&str>) -> UserKind {
        match fhir_user.and_then(|f| f.split('/').next()) {
            Some("Practitioner" | "PractitionerRole" | "Organization" | "Device") => {
                UserKind::Workforce
            }
            Some("Patient" | "RelatedPerson") => UserKind::Patient,
            _ => UserKind::Unknown,
        }
    }

    fn readable(self) -> bool {
        matches!(self, UserKind::Workforce | UserKind::Service)
    }
}

/// Resource types outside any patient compartment: their ids stay readable.
pub const NON_COMPARTMENT_TYPES: [&str; 20] = [
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "HealthcareService",
    "Endpoint",
    "Medication",
    "Substance",
    "Device",
    "ValueSet",
    "CodeSystem",
    "ConceptMap",
    "StructureDefinition",
    "CapabilityStatement",
    "OperationDefinition",
    "SearchParameter",
    "Questionnaire",
    "PlanDefinition",
    "ActivityDefinition",
    "Library",
];

/// The deduplication identity of an event: 16 bytes of SHA-256 over source and id, in hex.
pub fn event_key(source: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0x1f]);
    h.update(id.as_bytes());
    let mut out = String::with_capacity(32);
    crate::pseudonym::push_hex(&mut out, &h.finalize()[..16]);
    out
}

/// Splits a space-separated scope string.
pub fn split_scopes(scope: Option<&str>) -> Vec<String> {
    scope
        .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Everything the conversion needs besides the event.
#[derive(Debug, Clone, Copy)]
pub struct RowContext<'a> {
    /// Pseudonymization keys.
    pub keys: &'a KeyRing,
    /// Tenant for events that name none.
    pub default_tenant: &'a str,
}

impl RowContext<'_> {
    fn ps(&self, tenant: &str, kind: PseudonymKind, value: &str) -> String {
        self.keys.pseudonymize(tenant, kind, value)
    }

    fn opt_ps(&self, tenant: &str, kind: PseudonymKind, value: Option<&str>) -> String {
        match value {
            Some(v) if !v.is_empty() => self.ps(tenant, kind, v),
            _ => String::new(),
        }
    }

    /// Pseudonymizes a `Type/id` reference, keeping the type readable. Non-compartment
    /// types stay fully readable; `Patient/x` uses the patient kind so it matches the
    /// `patient` column.
    pub fn reference(&self, tenant: &str, reference: &str, default_type: &str) -> String {
        let (rtype, id) = match reference.rsplit_once('/') {
            Some((t, id)) => (t.rsplit('/').next().unwrap_or(t), id),
            None => (default_type, reference),
        };
        self.typed_id(tenant, rtype, id, true)
    }

    fn typed_id(&self, tenant: &str, rtype: &str, id: &str, with_type: bool) -> String {
        // Built in one string: `{rtype}/` then the readable id or the pseudonym written in
        // place (no intermediate `format!` strings).
        let with_type = with_type && !rtype.is_empty();
        let readable =
            !matches!(rtype, "Patient" | "Encounter") && NON_COMPARTMENT_TYPES.contains(&rtype);
        let value_len = if readable {
            id.len()
        } else {
            self.keys.current_pseudonym_len()
        };
        let mut out =
            String::with_capacity(if with_type { rtype.len() + 1 } else { 0 } + value_len);
        if with_type {
            out.push_str(rtype);
            out.push('/');
        }
        if rtype == "Patient" {
            self.keys
                .pseudonymize_into(&mut out, tenant, PseudonymKind::Patient, id);
        } else if rtype == "Encounter" {
            self.keys
                .pseudonymize_into(&mut out, tenant, PseudonymKind::Encounter, id);
        } else if readable {
            out.push_str(id);
        } else {
            self.keys
                .pseudonymize_resource_into(&mut out, tenant, rtype, id);
        }
        out
    }

    /// A subject: kept when readable, else its pseudonym (empty stays empty).
    fn user(&self, tenant: &str, kind: UserKind, sub: Option<String>) -> String {
        match sub {
            Some(s) if s.is_empty() => String::new(),
            Some(s) if kind.readable() => s,
            Some(s) => self.ps(tenant, PseudonymKind::Subject, &s),
            None => String::new(),
        }
    }

    /// An IP address: kept when readable, else its pseudonym (empty stays empty).
    fn ip(&self, tenant: &str, kind: UserKind, ip: Option<String>) -> String {
        match ip {
            Some(s) if s.is_empty() => String::new(),
            Some(s) if kind.readable() => s,
            Some(s) => self.ps(tenant, PseudonymKind::Ip, &s),
            None => String::new(),
        }
    }

    fn fhir_user(&self, tenant: &str, fhir_user: Option<&str>) -> String {
        match fhir_user {
            None | Some("") => String::new(),
            Some(f) => self.reference(tenant, f, ""),
        }
    }

    /// Converts a decoded event into its audit row. The same as
    /// [`RowContext::audit_row_owned`] on copies of `event` and `pos`.
    pub fn audit_row(&self, event: &Event, pos: &KafkaPosition, ingested_at_ms: i64) -> AuditRow {
        self.audit_row_owned(event.clone(), pos.clone(), ingested_at_ms)
    }

    /// Converts a decoded event into its audit row, moving the event's strings (and the
    /// position's topic) into the row instead of copying them: the ingest's per-message path.
    /// The envelope and the position fill the common columns; one conversion per event
    /// family fills the rest and decides the user kind and the outcome.
    pub fn audit_row_owned(
        &self,
        event: Event,
        pos: KafkaPosition,
        ingested_at_ms: i64,
    ) -> AuditRow {
        let Event {
            id,
            source,
            event_type,
            time,
            tenant,
            format,
            payload,
        } = event;
        let tenant = tenant.unwrap_or_else(|| self.default_tenant.to_owned());
        let t = tenant.as_str();
        // Every column the families do not write stays empty (no allocation).
        let mut row = AuditRow {
            event_key: event_key(&source, &id),
            event_id: id,
            event_source: source,
            event_type: event_type.as_str().to_owned(),
            source_format: format.as_str().to_owned(),
            event_time: time.timestamp_millis(),
            ingested_at: ingested_at_ms,
            kafka_topic: pos.topic,
            kafka_partition: pos.partition,
            kafka_offset: pos.offset,
            chain_prev_offset: -1,
            record_hash: crate::hash::GENESIS,
            ..AuditRow::default()
        };
        // Each column is written once: the constant ones (`user_kind`, `outcome`) are
        // decided by the family first, so no placeholder string is allocated and replaced.
        let class = match payload {
            Payload::Auth(d) => self.auth_columns(&mut row, t, event_type, d),
            Payload::Token(d) => self.token_columns(&mut row, t, d),
            Payload::Consent(d) => self.consent_columns(&mut row, t, d),
            Payload::FhirAccess(d) => self.fhir_access_columns(&mut row, t, d),
            Payload::UserDeprovisioned(d) => self.deprovision_columns(&mut row, t, d),
            Payload::BreakGlass(d) => self.break_glass_columns(&mut row, t, d),
        };
        row.user_kind = class.user_kind.as_str().to_owned();
        row.outcome = if class.failure { "failure" } else { "success" }.to_owned();
        row.tenant = tenant;
        row
    }

    /// `custos.auth.*`: a failed login, or any event with an error, is a failure.
    fn auth_columns(
        &self,
        row: &mut AuditRow,
        t: &str,
        event_type: EventType,
        d: AuthData,
    ) -> Classification {
        let kind = UserKind::from_fhir_user(d.fhir_user.as_deref());
        let failure = event_type == EventType::AuthLoginFailed || d.error.is_some();
        row.issuer = d.iss;
        row.user_sub = self.user(t, kind, d.sub);
        row.fhir_user = self.fhir_user(t, d.fhir_user.as_deref());
        row.client_id = d.client_id;
        row.session_id = d.sid.unwrap_or_default();
        row.source_ip = self.ip(t, kind, d.source_ip);
        row.user_agent = d.user_agent.unwrap_or_default();
        row.error = d.error.unwrap_or_default();
        if let Some(jti) = d.jti {
            row.token_jti = jti;
            row.token_type = "access".to_owned();
            row.scopes = split_scopes(d.scope.as_deref());
        }
        Classification::new(kind, failure)
    }

    /// `custos.token.*`: a subject equal to the client is a service; an error is a failure.
    fn token_columns(&self, row: &mut AuditRow, t: &str, d: TokenData) -> Classification {
        let mut kind = UserKind::from_fhir_user(d.fhir_user.as_deref());
        if d.sub.as_deref() == Some(d.client_id.as_str()) {
            kind = UserKind::Service;
        }
        let failure = d.error.is_some();
        row.issuer = d.iss;
        row.user_sub = self.user(t, kind, d.sub);
        row.fhir_user = self.fhir_user(t, d.fhir_user.as_deref());
        row.client_id = d.client_id;
        row.session_id = d.sid.unwrap_or_default();
        row.token_jti = d.jti;
        row.token_type = d.token_type.unwrap_or_default();
        row.scopes = split_scopes(d.scope.as_deref());
        row.patient = self.opt_ps(t, PseudonymKind::Patient, d.patient.as_deref());
        row.source_ip = self.ip(t, kind, d.source_ip);
        row.user_agent = d.user_agent.unwrap_or_default();
        row.active = d.active;
        row.reason = d.reason.unwrap_or_default();
        row.error = d.error.unwrap_or_default();
        row.expires_at = d.expires_at.map(|e| e.timestamp_millis());
        Classification::new(kind, failure)
    }

    /// `custos.consent.*`: the subject is the patient; always a success.
    fn consent_columns(&self, row: &mut AuditRow, t: &str, d: ConsentData) -> Classification {
        row.issuer = d.iss.unwrap_or_default();
        row.user_sub = self.user(t, UserKind::Patient, d.sub);
        row.client_id = d.client_id;
        row.consent_id = d.consent_id;
        row.patient = self.ps(t, PseudonymKind::Patient, &d.patient);
        row.scopes = split_scopes(d.scope.as_deref());
        row.purpose_of_use = d.purpose;
        row.reason = d.reason.unwrap_or_default();
        row.actor = d.actor.unwrap_or_default();
        row.period_start = d.period_start.map(|e| e.timestamp_millis());
        row.expires_at = d.period_end.map(|e| e.timestamp_millis());
        Classification::new(UserKind::Patient, false)
    }

    /// `custos.fhir.access`: ids in a patient compartment are pseudonymized (a `Patient`
    /// resource is its own patient); a denial or an HTTP error status is a failure.
    fn fhir_access_columns(
        &self,
        row: &mut AuditRow,
        t: &str,
        d: FhirAccessData,
    ) -> Classification {
        let kind = UserKind::from_fhir_user(d.fhir_user.as_deref());
        let failure = d.decision == Decision::Deny || d.http_status >= 400;
        row.issuer = d.iss;
        row.user_sub = self.user(t, kind, Some(d.sub));
        row.fhir_user = self.fhir_user(t, d.fhir_user.as_deref());
        row.client_id = d.client_id;
        row.token_jti = d.jti.unwrap_or_default();
        row.scopes = split_scopes(d.scope.as_deref());
        row.interaction = d.interaction;
        row.resource_id = d
            .resource_id
            .as_deref()
            .map(|id| self.typed_id(t, &d.resource_type, id, false))
            .unwrap_or_default();
        let patient = d.patient.as_deref().or(if d.resource_type == "Patient" {
            d.resource_id.as_deref()
        } else {
            None
        });
        row.patient = self.opt_ps(t, PseudonymKind::Patient, patient);
        row.encounter = self.opt_ps(t, PseudonymKind::Encounter, d.encounter.as_deref());
        row.purpose_of_use = d.purpose_of_use;
        row.break_glass_reason = d.break_glass_reason.unwrap_or_default();
        row.decision = d.decision.as_str().to_owned();
        row.http_status = d.http_status;
        row.source_ip = self.ip(t, kind, d.source_ip);
        row.user_agent = d.user_agent.unwrap_or_default();
        row.returned_ids = d
            .returned_ids
            .iter()
            .map(|r| self.reference(t, r, &d.resource_type))
            .collect();
        row.resource_type = d.resource_type;
        row.request_id = d.request_id;
        Classification::new(kind, failure)
    }

    /// `custos.user.deprovisioned`: always a success.
    fn deprovision_columns(
        &self,
        row: &mut AuditRow,
        t: &str,
        d: DeprovisionData,
    ) -> Classification {
        let kind = UserKind::from_fhir_user(d.fhir_user.as_deref());
        row.issuer = d.iss;
        row.user_sub = self.user(t, kind, Some(d.sub));
        row.fhir_user = self.fhir_user(t, d.fhir_user.as_deref());
        row.reason = d.reason.unwrap_or_default();
        row.actor = d.actor.unwrap_or_default();
        Classification::new(kind, false)
    }

    /// `custos.breakglass.opened`: by definition a workforce action, kept readable, with
    /// purpose of use `BTG`; always a success.
    fn break_glass_columns(
        &self,
        row: &mut AuditRow,
        t: &str,
        d: BreakGlassData,
    ) -> Classification {
        let kind = UserKind::Workforce;
        row.issuer = d.iss;
        row.user_sub = d.sub;
        row.fhir_user = self.fhir_user(t, d.fhir_user.as_deref());
        row.client_id = d.client_id.unwrap_or_default();
        row.session_id = d.sid.unwrap_or_default();
        row.patient = self.ps(t, PseudonymKind::Patient, &d.patient);
        row.break_glass_reason = d.reason;
        row.purpose_of_use = vec!["BTG".to_owned()];
        row.source_ip = self.ip(t, kind, d.source_ip);
        row.expires_at = d.expires_at.map(|e| e.timestamp_millis());
        Classification::new(kind, false)
    }
}

/// What a family's conversion decides besides its columns: the kind of user (for
/// `user_kind`) and whether the event reports a failure (for `outcome`).
struct Classification {
    user_kind: UserKind,
    failure: bool,
}

impl Classification {
    /// A user kind and an outcome.
    fn new(user_kind: UserKind, failure: bool) -> Self {
        Classification { user_kind, failure }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, DecodeLimits};

    fn ring() -> KeyRing {
        KeyRing::parse(
            "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            None,
        )
        .unwrap()
    }

    fn pos() -> KafkaPosition {
        KafkaPosition {
            topic: "custos.gateway-events".into(),
            partition: 3,
            offset: 42,
        }
    }

    #[test]
    fn fhir_access_pseudonymizes_patient_data_and_keeps_clinician() {
        let msg = br#"{"specversion":"1.0","id":"r1","source":"//gw","type":"custos.fhir.access",
          "time":"2026-03-01T10:00:00Z","tenant":"general",
          "data":{"requestId":"q1","iss":"https://as","sub":"dr-house","fhirUser":"Practitioner/77",
          "client_id":"ehr-app","jti":"J1","scope":"user/Observation.rs launch",
          "interaction":"search-type","resourceType":"Observation","patient":"Patient/PAT-SECRET-9",
          "encounter":"ENC-SECRET-1","decision":"permit","httpStatus":200,"sourceIp":"10.1.2.3",
          "returnedIds":["Observation/OBS-SECRET-1","OBS-SECRET-2"]}}"#;
        let ev = decode(msg, &[], &DecodeLimits::default()).unwrap();
        let keys = ring();
        let ctx = RowContext {
            keys: &keys,
            default_tenant: "default",
        };
        let row = ctx.audit_row(&ev, &pos(), 1);
        assert_eq!(row.user_sub, "dr-house");
        assert_eq!(row.fhir_user, "Practitioner/77");
        assert_eq!(row.source_ip, "10.1.2.3");
        assert_eq!(row.tenant, "general");
        assert_eq!(
            row.patient,
            keys.pseudonymize("general", PseudonymKind::Patient, "PAT-SECRET-9")
        );
        assert_eq!(row.scopes, vec!["user/Observation.rs", "launch"]);
        assert_eq!(row.returned_ids.len(), 2);
        let dump = format!("{row:?}");
        for secret in ["PAT-SECRET", "ENC-SECRET", "OBS-SECRET"] {
            assert!(!dump.contains(secret), "{secret} leaked");
        }
        assert!(row
            .returned_ids
            .iter()
            .all(|r| r.starts_with("Observation/ps1.k1.")));
        assert_eq!(row.event_key, event_key("//gw", "r1"));
        assert_eq!((row.kafka_partition, row.kafka_offset), (3, 42));
    }

    #[test]
    fn patient_users_are_pseudonymized() {
        let msg = br#"{"specversion":"1.0","id":"a1","source":"//as","type":"custos.auth.login",
          "time":"2026-03-01T10:00:00Z","data":{"iss":"https://as","sub":"SUB-SECRET",
          "fhirUser":"Patient/PAT-SECRET","client_id":"patient-app","sourceIp":"203.0.113.9"}}"#;
        let ev = decode(msg, &[], &DecodeLimits::default()).unwrap();
        let keys = ring();
        let ctx = RowContext {
            keys: &keys,
            default_tenant: "default",
        };
        let row = ctx.audit_row(&ev, &pos(), 1);
        assert_eq!(row.user_kind, "patient");
        let dump = format!("{row:?}");
        for secret in ["SUB-SECRET", "PAT-SECRET", "203.0.113.9"] {
            assert!(!dump.contains(secret), "{secret} leaked");
        }
        assert_eq!(row.tenant, "default");
        assert!(row.fhir_user.starts_with("Patient/ps1.k1."));
    }

    /// A Keycloak token event with the `fhirUser` the custos-kafka listener adds, and a FHIR
    /// access with the same token: one user and one source IP in both rows, readable for a
    /// practitioner and the same pseudonym for a patient. Without `fhirUser` the Keycloak row
    /// stays fail-safe (pseudonymized as an unknown user).
    #[test]
    fn keycloak_and_fhir_rows_of_one_user_agree() {
        let keys = ring();
        let ctx = RowContext {
            keys: &keys,
            default_tenant: "default",
        };
        let kc = |fhir_user: Option<&str>| {
            let mut v = serde_json::json!({"id":"e1","time":1_772_359_200_000_i64,
              "type":"CODE_TO_TOKEN","realmId":"r-uuid","realmName":"custos",
              "issuer":"https://as/realms/custos","clientId":"app","userId":"u-1",
              "sessionId":"s-1","ipAddress":"192.0.2.8","details":{"token_id":"J1"}});
            if let Some(f) = fhir_user {
                v["fhirUser"] = serde_json::json!(f);
            }
            let ev = decode(
                &serde_json::to_vec(&v).unwrap(),
                &[],
                &DecodeLimits::default(),
            );
            ctx.audit_row(&ev.unwrap(), &pos(), 1)
        };
        let fhir = |fhir_user: &str| {
            let v = serde_json::json!({"specversion":"1.0","id":"r1","source":"//fhir",
              "type":"custos.fhir.access","time":"2026-03-01T10:00:01Z","tenant":"custos",
              "data":{"requestId":"q1","iss":"https://as/realms/custos","sub":"u-1",
              "fhirUser":fhir_user,"client_id":"app","jti":"J1","interaction":"read",
              "resourceType":"Patient","patient":"Patient/p-1","decision":"permit",
              "httpStatus":200,"sourceIp":"192.0.2.8"}});
            let ev = decode(
                &serde_json::to_vec(&v).unwrap(),
                &[],
                &DecodeLimits::default(),
            );
            ctx.audit_row(&ev.unwrap(), &pos(), 1)
        };
        for who in ["Practitioner/d-1", "Patient/p-1"] {
            let (a, b) = (kc(Some(who)), fhir(who));
            assert_eq!(a.user_kind, b.user_kind, "{who}");
            assert_eq!(a.user_sub, b.user_sub, "{who}");
            assert_eq!(a.source_ip, b.source_ip, "{who}");
            assert_eq!(a.fhir_user, b.fhir_user, "{who}");
        }
        assert_eq!(kc(Some("Practitioner/d-1")).source_ip, "192.0.2.8");
        let unknown = kc(None);
        assert_eq!(unknown.user_kind, "unknown");
        assert!(unknown.source_ip.starts_with("ps1.k1."));
    }
}
