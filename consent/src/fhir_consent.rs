//! FHIR R4 `Consent` resources on the consent topic, mapped onto the same [`Event`] /
//! [`ConsentData`] as native `custos.consent.*` CloudEvents.
//!
//! | FHIR | Custos |
//! |---|---|
//! | `status` `active` (and `provision.type` not `deny`) | `custos.consent.granted` |
//! | `status` `inactive`, `rejected`, `entered-in-error`, or `provision.type` `deny` | `custos.consent.revoked` |
//! | `status` `draft`, `proposed` | not a decision yet: rejected as `unknown_type` |
//! | `id` | `consentId` |
//! | `patient.reference` | `patient` |
//! | `provision.actor[].reference.identifier` with system [`CLIENT_ID_SYSTEM`] (else the first actor identifier) | `client_id` |
//! | `provision.period.start` / `.end` | `periodStart` / `periodEnd` |
//! | `provision.purpose[].code` (v3-ActReason) | `purpose` |
//! | extension [`SCOPE_EXTENSION`] `valueString` (top level or on `provision`) | `scope` (SMART scopes) |
//! | extension [`SUBJECT_EXTENSION`] / [`ISSUER_EXTENSION`] `valueString` or `valueUri` | `sub` / `iss` (the patient user at the AS) |
//! | `meta.tag` with system [`TENANT_SYSTEM`] | tenant |
//!
//! Event identity: `source` = `fhir:` + `meta.source` (or `fhir:consent`), `id` =
//! `Consent/{id}/_history/{meta.versionId}` (or `meta.lastUpdated`), `time` =
//! `meta.lastUpdated`, else `dateTime`.

use chrono::{DateTime, NaiveDate, Utc};
use custos_schemas::decode::find_raw_token;
use custos_schemas::{
    ConsentData, DecodeError, DecodeLimits, Event, EventType, Payload, SourceFormat,
};
use serde::Deserialize;

/// Identifier system of an OAuth client id in `provision.actor`.
pub const CLIENT_ID_SYSTEM: &str = "urn:ietf:params:oauth:client-id";
/// Extension holding the granted SMART scopes (space separated).
pub const SCOPE_EXTENSION: &str = "urn:custos:fhir:extension:oauth-scope";
/// Extension holding the patient user's subject at the AS.
pub const SUBJECT_EXTENSION: &str = "urn:custos:fhir:extension:as-subject";
/// Extension holding the AS issuer.
pub const ISSUER_EXTENSION: &str = "urn:custos:fhir:extension:as-issuer";
/// `meta.tag` system naming the tenant.
pub const TENANT_SYSTEM: &str = "urn:custos:tenant";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Consent {
    resource_type: String,
    id: Option<String>,
    status: Option<String>,
    #[serde(default)]
    meta: Meta,
    patient: Option<Reference>,
    date_time: Option<String>,
    #[serde(default)]
    extension: Vec<Extension>,
    provision: Option<Provision>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    version_id: Option<String>,
    last_updated: Option<String>,
    source: Option<String>,
    #[serde(default)]
    tag: Vec<Coding>,
}

#[derive(Deserialize, Default)]
struct Coding {
    system: Option<String>,
    code: Option<String>,
}

#[derive(Deserialize, Default)]
struct Reference {
    reference: Option<String>,
    identifier: Option<Identifier>,
}

#[derive(Deserialize, Default)]
struct Identifier {
    system: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Extension {
    url: String,
    value_string: Option<String>,
    value_uri: Option<String>,
}

#[derive(Deserialize, Default)]
struct Provision {
    #[serde(rename = "type")]
    ty: Option<String>,
    period: Option<Period>,
    #[serde(default)]
    actor: Vec<Actor>,
    #[serde(default)]
    purpose: Vec<Coding>,
    #[serde(default)]
    extension: Vec<Extension>,
}

#[derive(Deserialize, Default)]
struct Period {
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize, Default)]
struct Actor {
    reference: Option<Reference>,
}

/// Whether a message is a FHIR `Consent` resource (cheap check before full parsing).
pub fn is_fhir_consent(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe<'a> {
        #[serde(borrow)]
        resource_type: Option<&'a str>,
    }
    memchr::memmem::find(payload, b"\"Consent\"").is_some()
        && serde_json::from_slice::<Probe<'_>>(payload)
            .ok()
            .and_then(|p| p.resource_type)
            == Some("Consent")
}

/// Decodes a FHIR R4 `Consent` (with the size and raw-token checks every format gets).
pub fn decode_fhir_consent(payload: &[u8], limits: &DecodeLimits) -> Result<Event, DecodeError> {
    if payload.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: limits.max_bytes,
        });
    }
    if let Some(kind) = find_raw_token(payload) {
        return Err(DecodeError::RawToken(kind));
    }
    let c: Consent = serde_json::from_slice(payload)
        .map_err(|_| DecodeError::invalid("Consent", "malformed or wrongly typed field"))?;
    if c.resource_type != "Consent" {
        return Err(DecodeError::unknown_type(&c.resource_type));
    }
    let id = nonempty(c.id).ok_or_else(|| DecodeError::MissingField("id".into()))?;
    let status = nonempty(c.status).ok_or_else(|| DecodeError::MissingField("status".into()))?;
    let provision = c.provision.unwrap_or_default();
    let deny = provision.ty.as_deref() == Some("deny");
    let (event_type, reason) = match status.as_str() {
        "active" if deny => (
            EventType::ConsentRevoked,
            Some("FHIR Consent provision denies".to_owned()),
        ),
        "active" => (EventType::ConsentGranted, None),
        "inactive" | "rejected" | "entered-in-error" => (
            EventType::ConsentRevoked,
            Some(format!("FHIR Consent status {status}")),
        ),
        other => return Err(DecodeError::unknown_type(&format!("Consent:{other}"))),
    };
    let patient = c
        .patient
        .and_then(|p| nonempty(p.reference))
        .ok_or_else(|| DecodeError::MissingField("patient.reference".into()))?;
    let client_id = client_id(&provision.actor)
        .ok_or_else(|| DecodeError::MissingField("provision.actor.reference.identifier".into()))?;
    let ext = |url: &str| -> Option<String> {
        c.extension
            .iter()
            .chain(provision.extension.iter())
            .find(|e| e.url == url)
            .and_then(|e| e.value_string.clone().or_else(|| e.value_uri.clone()))
            .filter(|v| !v.trim().is_empty())
    };
    let period = provision.period.unwrap_or_default();
    let period_start = period
        .start
        .as_deref()
        .map(|s| fhir_time(s, "provision.period.start"))
        .transpose()?;
    let period_end = period
        .end
        .as_deref()
        .map(|s| fhir_time(s, "provision.period.end"))
        .transpose()?;
    let time = match (c.meta.last_updated.as_deref(), c.date_time.as_deref()) {
        (Some(t), _) => fhir_time(t, "meta.lastUpdated")?,
        (None, Some(t)) => fhir_time(t, "dateTime")?,
        (None, None) => return Err(DecodeError::MissingField("meta.lastUpdated".into())),
    };
    let version = c
        .meta
        .version_id
        .clone()
        .or_else(|| c.meta.last_updated.clone())
        .unwrap_or_else(|| time.timestamp_millis().to_string());
    let tenant = c
        .meta
        .tag
        .iter()
        .find(|t| t.system.as_deref() == Some(TENANT_SYSTEM))
        .and_then(|t| t.code.clone());
    let source = match c.meta.source.as_deref() {
        Some(s) if !s.trim().is_empty() => format!("fhir:{s}"),
        _ => "fhir:consent".to_owned(),
    };
    let data = ConsentData {
        consent_id: id.clone(),
        patient,
        client_id,
        iss: ext(ISSUER_EXTENSION),
        sub: ext(SUBJECT_EXTENSION),
        scope: ext(SCOPE_EXTENSION),
        purpose: provision
            .purpose
            .iter()
            .filter_map(|p| p.code.clone())
            .collect(),
        period_start,
        period_end,
        reason,
        actor: None,
    };
    let event = Event {
        id: format!("Consent/{id}/_history/{version}"),
        source,
        event_type,
        time,
        tenant,
        // The schemas crate has no FHIR Consent format yet; this is the closest FHIR one.
        format: SourceFormat::FhirAuditEvent,
        payload: Payload::Consent(data),
    };
    custos_schemas::validate::validate(&event)?;
    Ok(event)
}

fn client_id(actors: &[Actor]) -> Option<String> {
    let ids: Vec<&Identifier> = actors
        .iter()
        .filter_map(|a| a.reference.as_ref()?.identifier.as_ref())
        .collect();
    ids.iter()
        .find(|i| i.system.as_deref() == Some(CLIENT_ID_SYSTEM))
        .or_else(|| ids.first())
        .and_then(|i| nonempty(i.value.clone()))
}

/// FHIR `dateTime`/`instant`: full RFC 3339, or a bare date (midnight UTC).
fn fhir_time(s: &str, field: &str) -> Result<DateTime<Utc>, DecodeError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| DecodeError::invalid(field, "not a FHIR dateTime"))
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(status: &str) -> serde_json::Value {
        serde_json::json!({
            "resourceType": "Consent",
            "id": "fc-1",
            "meta": {"versionId": "3", "lastUpdated": "2026-03-01T10:00:00Z", "source": "ehr.example",
                     "tag": [{"system": TENANT_SYSTEM, "code": "general"}]},
            "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "patient": {"reference": "Patient/PAT-9"},
            "dateTime": "2026-03-01",
            "extension": [
                {"url": SCOPE_EXTENSION, "valueString": "launch/patient patient/Observation.rs?category=laboratory"},
                {"url": SUBJECT_EXTENSION, "valueString": "kc-user-9"},
                {"url": ISSUER_EXTENSION, "valueUri": "https://as.example/realms/general"}
            ],
            "provision": {
                "type": "permit",
                "period": {"start": "2026-03-01", "end": "2027-03-01T00:00:00Z"},
                "actor": [{"role": {"text": "app"}, "reference": {"identifier": {"system": CLIENT_ID_SYSTEM, "value": "growth-app"}}}],
                "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]
            }
        })
    }

    #[test]
    fn active_consent_is_a_grant() {
        let bytes = serde_json::to_vec(&consent("active")).unwrap();
        assert!(is_fhir_consent(&bytes));
        let ev = decode_fhir_consent(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(ev.event_type, EventType::ConsentGranted);
        assert_eq!(ev.id, "Consent/fc-1/_history/3");
        assert_eq!(ev.source, "fhir:ehr.example");
        assert_eq!(ev.tenant.as_deref(), Some("general"));
        let Payload::Consent(d) = ev.payload else {
            panic!()
        };
        assert_eq!(d.consent_id, "fc-1");
        assert_eq!(d.patient, "Patient/PAT-9");
        assert_eq!(d.client_id, "growth-app");
        assert_eq!(d.sub.as_deref(), Some("kc-user-9"));
        assert_eq!(d.iss.as_deref(), Some("https://as.example/realms/general"));
        assert_eq!(d.purpose, vec!["TREAT"]);
        assert!(d.scope.unwrap().contains("patient/Observation.rs"));
        assert_eq!(
            d.period_end.unwrap().to_rfc3339(),
            "2027-03-01T00:00:00+00:00"
        );
    }

    #[test]
    fn inactive_and_deny_are_revocations_and_drafts_are_not_decisions() {
        for status in ["inactive", "rejected", "entered-in-error"] {
            let bytes = serde_json::to_vec(&consent(status)).unwrap();
            let ev = decode_fhir_consent(&bytes, &DecodeLimits::default()).unwrap();
            assert_eq!(ev.event_type, EventType::ConsentRevoked, "{status}");
        }
        let mut deny = consent("active");
        deny["provision"]["type"] = "deny".into();
        let ev = decode_fhir_consent(
            &serde_json::to_vec(&deny).unwrap(),
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(ev.event_type, EventType::ConsentRevoked);
        let err = decode_fhir_consent(
            &serde_json::to_vec(&consent("draft")).unwrap(),
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "unknown_type");
    }

    #[test]
    fn missing_fields_and_tokens_are_rejected() {
        let mut c = consent("active");
        c["provision"]["actor"] = serde_json::json!([]);
        let err = decode_fhir_consent(&serde_json::to_vec(&c).unwrap(), &DecodeLimits::default())
            .unwrap_err();
        assert_eq!(err.reason(), "missing_field");
        let mut c = consent("active");
        c["note"] = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig".into();
        let err = decode_fhir_consent(&serde_json::to_vec(&c).unwrap(), &DecodeLimits::default())
            .unwrap_err();
        assert_eq!(err.reason(), "raw_token");
        assert!(!is_fhir_consent(br#"{"resourceType":"AuditEvent"}"#));
    }
}
