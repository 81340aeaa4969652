//! FHIR R4 `Consent` resources (on the consent topic), mapped onto the same [`Event`] /
//! [`ConsentData`] as native `custos.consent.*` CloudEvents. Ingest stores them as audit
//! records (the patient pseudonymized like every consent event) and the consent service
//! folds them into consent state: both go through [`crate::decode()`], which routes a
//! document whose `resourceType` is `Consent` here.
//!
//! | FHIR | Custos |
//! |---|---|
//! | `status` `active` (and `provision.type` not `deny`) | `custos.consent.granted` |
//! | `status` `active` with `provision.type` `deny` | `custos.consent.revoked` |
//! | `status` `inactive` whose `provision.period.end` is at or before the resource's time | `custos.consent.expired` |
//! | `status` `inactive` (otherwise), `rejected`, `entered-in-error` | `custos.consent.revoked` |
//! | `status` `draft`, `proposed` | not a decision yet: rejected as `unknown_type` (`fhir:Consent:draft`) |
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
//! `meta.lastUpdated`, else `dateTime`. The format is [`SourceFormat::FhirConsent`]
//! (`fhir-consent`).
//!
//! [`decode_fhir_consent`] maps a document; use [`crate::decode()`] for the checks every
//! format gets first (size, raw tokens) and the validation after.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;

use super::json;
use crate::error::DecodeError;
use crate::event::{ConsentData, Event, EventType, Payload, SourceFormat};

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

/// Whether a JSON document is a FHIR `Consent` resource (and not a Keycloak event that
/// merely mentions one): `resourceType` is `Consent` and there is no `realmId`.
pub fn is_fhir_consent(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        resource_type: Option<String>,
        realm_id: Option<serde::de::IgnoredAny>,
    }
    memchr::memmem::find(payload, b"\"Consent\"").is_some()
        && serde_json::from_slice::<Probe>(payload)
            .ok()
            .is_some_and(|p| p.resource_type.as_deref() == Some("Consent") && p.realm_id.is_none())
}

/// Maps a FHIR R4 `Consent` resource to a consent event (no size, token or validation
/// checks: [`crate::decode()`] adds them).
pub fn decode_fhir_consent(payload: &[u8]) -> Result<Event, DecodeError> {
    let c: Consent = json::parse(payload, "Consent")?;
    if c.resource_type != "Consent" {
        return Err(DecodeError::unknown_type(&format!(
            "fhir:{}",
            c.resource_type
        )));
    }
    let id = nonempty(c.id).ok_or_else(|| DecodeError::MissingField("id".into()))?;
    let status = nonempty(c.status).ok_or_else(|| DecodeError::MissingField("status".into()))?;
    let provision = c.provision.unwrap_or_default();
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
    let deny = provision.ty.as_deref() == Some("deny");
    let (event_type, reason) = match status.as_str() {
        "active" if deny => (
            EventType::ConsentRevoked,
            Some("FHIR Consent provision denies".to_owned()),
        ),
        "active" => (EventType::ConsentGranted, None),
        "inactive" if period_end.is_some_and(|end| end <= time) => (
            EventType::ConsentExpired,
            Some("FHIR Consent period ended".to_owned()),
        ),
        "inactive" | "rejected" | "entered-in-error" => (
            EventType::ConsentRevoked,
            Some(format!("FHIR Consent status {status}")),
        ),
        other => return Err(DecodeError::unknown_type(&format!("fhir:Consent:{other}"))),
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
    Ok(Event {
        id: format!("Consent/{id}/_history/{version}"),
        source,
        event_type,
        time,
        tenant,
        format: SourceFormat::FhirConsent,
        payload: Payload::Consent(data),
    })
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
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{decode, DecodeLimits};
    use serde_json::{json, Value};

    /// An edit applied to a resource's JSON.
    type Edit = fn(&mut Value);

    fn consent(status: &str) -> Value {
        json!({
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

    /// Through the public entry point, like ingest and the consent service.
    fn run(v: &Value) -> Result<Event, DecodeError> {
        decode(
            &serde_json::to_vec(v).unwrap(),
            &[],
            &DecodeLimits::default(),
        )
    }

    #[test]
    fn active_consent_is_a_grant() {
        let v = consent("active");
        assert!(is_fhir_consent(&serde_json::to_vec(&v).unwrap()));
        let ev = run(&v).unwrap();
        assert_eq!(ev.event_type, EventType::ConsentGranted);
        assert_eq!(ev.format, SourceFormat::FhirConsent);
        assert_eq!(ev.format.as_str(), "fhir-consent");
        assert_eq!(ev.id, "Consent/fc-1/_history/3");
        assert_eq!(ev.source, "fhir:ehr.example");
        assert_eq!(ev.tenant.as_deref(), Some("general"));
        assert_eq!(ev.time.to_rfc3339(), "2026-03-01T10:00:00+00:00");
        let Payload::Consent(d) = ev.payload else {
            panic!("not a consent payload")
        };
        assert_eq!(d.consent_id, "fc-1");
        assert_eq!(d.patient, "Patient/PAT-9");
        assert_eq!(d.client_id, "growth-app");
        assert_eq!(d.sub.as_deref(), Some("kc-user-9"));
        assert_eq!(d.iss.as_deref(), Some("https://as.example/realms/general"));
        assert_eq!(d.purpose, vec!["TREAT"]);
        assert_eq!(d.reason, None);
        assert!(d.scope.unwrap().contains("patient/Observation.rs"));
        assert_eq!(
            d.period_start.unwrap().to_rfc3339(),
            "2026-03-01T00:00:00+00:00"
        );
        assert_eq!(
            d.period_end.unwrap().to_rfc3339(),
            "2027-03-01T00:00:00+00:00"
        );
    }

    #[test]
    fn statuses_map_to_event_types() {
        for status in ["inactive", "rejected", "entered-in-error"] {
            let ev = run(&consent(status)).unwrap();
            assert_eq!(ev.event_type, EventType::ConsentRevoked, "{status}");
            let Payload::Consent(d) = ev.payload else {
                panic!("not a consent payload")
            };
            assert_eq!(
                d.reason.as_deref(),
                Some(format!("FHIR Consent status {status}").as_str())
            );
        }
        let mut deny = consent("active");
        deny["provision"]["type"] = "deny".into();
        assert_eq!(run(&deny).unwrap().event_type, EventType::ConsentRevoked);
        // Inactive after the period ended: an expiry, not a withdrawal.
        let mut ended = consent("inactive");
        ended["provision"]["period"] = json!({"start": "2026-01-01", "end": "2026-02-28"});
        assert_eq!(run(&ended).unwrap().event_type, EventType::ConsentExpired);
        // Still active past its end: the consent service's expiry scanner handles that.
        let mut stale = consent("active");
        stale["provision"]["period"] = json!({"start": "2026-01-01", "end": "2026-02-28"});
        assert_eq!(run(&stale).unwrap().event_type, EventType::ConsentGranted);
        for status in ["draft", "proposed", "bogus"] {
            let err = run(&consent(status)).unwrap_err();
            assert_eq!(
                err,
                DecodeError::UnknownType(format!("fhir:Consent:{status}"))
            );
        }
    }

    #[test]
    fn identity_falls_back_to_last_updated_and_default_source() {
        let mut v = consent("active");
        v["meta"] = json!({"lastUpdated": "2026-03-02T00:00:00Z"});
        let ev = run(&v).unwrap();
        assert_eq!(ev.id, "Consent/fc-1/_history/2026-03-02T00:00:00Z");
        assert_eq!(ev.source, "fhir:consent");
        assert_eq!(ev.tenant, None);
        // Without meta.lastUpdated the dateTime is the event time.
        v["meta"] = json!({});
        let ev = run(&v).unwrap();
        assert_eq!(ev.time.to_rfc3339(), "2026-03-01T00:00:00+00:00");
        // A client id without the OAuth system: the first actor identifier.
        v["provision"]["actor"] =
            json!([{"reference": {"identifier": {"system": "urn:other", "value": "other-app"}}}]);
        let Payload::Consent(d) = run(&v).unwrap().payload else {
            panic!("not a consent payload")
        };
        assert_eq!(d.client_id, "other-app");
    }

    #[test]
    fn missing_fields_bad_values_and_tokens_are_rejected() {
        let cases: [(Edit, &str); 7] = [
            (|c| c["provision"]["actor"] = json!([]), "missing_field"),
            (|c| c["patient"] = json!({}), "missing_field"),
            (
                |c| {
                    c.as_object_mut().unwrap().remove("status");
                },
                "missing_field",
            ),
            (
                |c| {
                    c.as_object_mut().unwrap().remove("id");
                },
                "missing_field",
            ),
            (
                |c| c["provision"]["period"]["end"] = "next year".into(),
                "invalid_field",
            ),
            (|c| c["status"] = json!(7), "invalid_field"),
            (
                |c| c["note"] = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig".into(),
                "raw_token",
            ),
        ];
        for (i, (edit, reason)) in cases.into_iter().enumerate() {
            let mut c = consent("active");
            edit(&mut c);
            let err = run(&c).unwrap_err();
            assert_eq!(err.reason(), reason, "case {i}: {err}");
            // Errors never carry the patient id.
            assert!(!format!("{err:?}").contains("PAT-9"), "case {i}");
        }
        // A period that ends before it starts fails validation.
        let mut c = consent("active");
        c["provision"]["period"]["start"] = "2028-01-01".into();
        assert_eq!(run(&c).unwrap_err().reason(), "invalid_field");
    }

    #[test]
    fn routing_keeps_other_resources_and_keycloak_events_apart() {
        assert!(!is_fhir_consent(br#"{"resourceType":"AuditEvent"}"#));
        // A Keycloak admin event that mentions a Consent is not one.
        let kc = br#"{"realmId":"r","resourceType":"Consent","time":1}"#;
        assert!(!is_fhir_consent(kc));
        let err = decode(
            br#"{"resourceType":"Patient","id":"p1"}"#,
            &[],
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert_eq!(err, DecodeError::UnknownType("fhir:Patient".into()));
    }
}
