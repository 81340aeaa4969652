//! From request bytes to what is written to Kafka: one AuditEvent at a time, checked by
//! the very decoder the ingest runs ([`custos_schemas::decode`]) before anything is
//! produced, so an accepted event is one the ingest stores.
//!
//! Identity and deduplication: the ingest identifies an event by the AuditEvent's `id` and
//! its `source.observer` (the event key of its dedup), so a resend of the same AuditEvent is
//! a no-op. The feed therefore keeps the client's `id` (it must be a FHIR id,
//! `[A-Za-z0-9-.]{1,64}`). An AuditEvent without an `id` gets one derived from its content
//! (the SHA-256 of the bytes received, 64 hex digits), so resending the same bytes still
//! deduplicates; the assigned id is returned in `Location`.
//!
//! The Kafka record key keeps one patient's events in order: a SHA-256 of the tenant and
//! the patient reference (raw patient identifiers are not put in keys), else of the source.

use custos_schemas::event::{Payload, SourceFormat};
use custos_schemas::{decode, DecodeError, DecodeLimits};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::outcome::FeedError;

/// An AuditEvent ready to be produced.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The AuditEvent id (the client's, or assigned from the content).
    pub id: String,
    /// The Kafka record key.
    pub key: String,
    /// The record value: the AuditEvent as validated.
    pub bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<Value>,
}

/// A `serde_json` error as a refusal: syntax errors are malformed JSON, anything else is
/// JSON of the wrong shape. The message keeps the position only.
pub fn json_error(e: &serde_json::Error, what: &str) -> FeedError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => FeedError::MalformedJson(format!(
            "not valid JSON at line {} column {}",
            e.line(),
            e.column()
        )),
        Category::Data => {
            FeedError::BadRequest(format!("{what} is not a JSON object of the expected shape"))
        }
    }
}

/// Whether `id` is a FHIR id: 1 to 64 of `A-Z a-z 0-9 - .`.
pub fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Checks one AuditEvent (`bytes`) and prepares its record.
pub fn prepare(bytes: &[u8], limits: &DecodeLimits) -> Result<Accepted, FeedError> {
    if bytes.len() > limits.max_bytes {
        return Err(FeedError::Rejected(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        }));
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| json_error(&e, "the resource"))?;
    if probe.resource_type.as_deref() != Some("AuditEvent") {
        return Err(FeedError::BadRequest(
            "the resource is not an AuditEvent".into(),
        ));
    }
    let assigned;
    let bytes: &[u8] = match probe.id {
        None | Some(Value::Null) => {
            let id = hex_sha256(&[bytes]);
            let mut doc: serde_json::Map<String, Value> =
                serde_json::from_slice(bytes).map_err(|e| json_error(&e, "the resource"))?;
            doc.insert("id".into(), Value::String(id));
            assigned = serde_json::to_vec(&doc)
                .map_err(|e| FeedError::BadRequest(format!("re-encoding: {e}")))?;
            &assigned
        }
        Some(Value::String(id)) if !id.is_empty() && !is_fhir_id(&id) => {
            return Err(FeedError::Rejected(DecodeError::invalid(
                "AuditEvent.id",
                "not a FHIR id ([A-Za-z0-9-.]{1,64})",
            )));
        }
        Some(_) => bytes,
    };
    let event = decode(bytes, &[], limits).map_err(FeedError::Rejected)?;
    if event.format != SourceFormat::FhirAuditEvent {
        return Err(FeedError::BadRequest(
            "the resource is not read as a FHIR AuditEvent".into(),
        ));
    }
    let tenant = event.tenant.as_deref().unwrap_or_default().as_bytes();
    let key = match &event.payload {
        Payload::FhirAccess(d) if d.patient.is_some() => hex_sha256(&[
            b"patient",
            tenant,
            d.patient.as_deref().unwrap_or_default().as_bytes(),
        ]),
        _ => hex_sha256(&[b"source", tenant, event.source.as_bytes()]),
    };
    Ok(Accepted {
        id: event.id,
        key: key[..32].to_owned(),
        bytes: bytes.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn audit_event(id: Option<&str>, patient: &str) -> Value {
        let mut v = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "recorded": "2026-01-01T12:05:00Z",
            "outcome": "0",
            "agent": [{
                "type": {"coding": [{"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes", "code": "UserOauthAgent"}]},
                "who": {"reference": "Practitioner/7", "identifier": {"system": "https://as.example/realms/h", "value": "sub-7"}},
                "requestor": true
            }, {
                "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150"}]},
                "who": {"identifier": {"value": "ehr-app"}},
                "requestor": false
            }],
            "source": {"observer": {"reference": "Device/fhir-1"}},
            "entity": [
                {"what": {"reference": format!("Patient/{patient}")},
                 "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}},
                {"what": {"reference": "Observation/o-1"},
                 "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"}}
            ]
        });
        if let Some(id) = id {
            v["id"] = json!(id);
        }
        v
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    #[test]
    fn keeps_the_id_and_the_bytes() {
        let b = bytes(&audit_event(Some("ae-1"), "p1"));
        let a = prepare(&b, &DecodeLimits::default()).unwrap();
        assert_eq!(a.id, "ae-1");
        assert_eq!(a.bytes, b);
        assert_eq!(a.key.len(), 32);
        assert!(!a.key.contains("p1"));
        // Same patient, same key; another patient, another key.
        let c = prepare(
            &bytes(&audit_event(Some("ae-2"), "p1")),
            &DecodeLimits::default(),
        )
        .unwrap();
        let d = prepare(
            &bytes(&audit_event(Some("ae-3"), "p2")),
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(a.key, c.key);
        assert_ne!(a.key, d.key);
    }

    #[test]
    fn a_missing_id_is_derived_from_the_content() {
        let b = bytes(&audit_event(None, "p1"));
        let a = prepare(&b, &DecodeLimits::default()).unwrap();
        let again = prepare(&b, &DecodeLimits::default()).unwrap();
        assert_eq!(a.id.len(), 64);
        assert_eq!(a.id, again.id);
        let stored: Value = serde_json::from_slice(&a.bytes).unwrap();
        assert_eq!(stored["id"], json!(a.id));
    }

    #[test]
    fn refusals() {
        let limits = DecodeLimits::default();
        let reason = |b: &[u8]| prepare(b, &limits).unwrap_err().reason();
        assert_eq!(reason(b"{not json"), "malformed_json");
        assert_eq!(reason(b"[1,2]"), "bad_request");
        assert_eq!(
            reason(br#"{"resourceType":"Patient","id":"x"}"#),
            "bad_request"
        );
        let mut bad_id = audit_event(Some("a b"), "p1");
        assert_eq!(reason(&bytes(&bad_id)), "invalid_field");
        bad_id["id"] = json!("ok");
        bad_id.as_object_mut().unwrap().remove("recorded");
        assert_eq!(reason(&bytes(&bad_id)), "missing_field");
        let mut token = audit_event(Some("t1"), "p1");
        token["extension"] = json!([{"url": "urn:x", "valueString":
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2lnbmF0dXJl"}]);
        assert_eq!(reason(&bytes(&token)), "raw_token");
        let small = DecodeLimits { max_bytes: 100 };
        let e = prepare(&bytes(&audit_event(Some("x"), "p")), &small).unwrap_err();
        assert_eq!(e.status().as_u16(), 413);
    }

    #[test]
    fn fhir_ids() {
        assert!(is_fhir_id("ae-1.2"));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a/b"));
        assert!(!is_fhir_id(&"a".repeat(65)));
    }
}
