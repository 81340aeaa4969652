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
//!
//! Cost: [`prepare`] reads an AuditEvent twice, a probe (`resourceType`, `id`) then the
//! decoder. A Bundle entry, already known to be one complete JSON value, goes through
//! [`prepare_entry`]: the decoder alone, whose event gives the id and whose format says the
//! resource was an AuditEvent; only when that does not accept the entry outright is it read
//! again by [`prepare`], so every refusal, and every assigned id, is the one [`prepare`]
//! gives. The record value is a slice of the request body, not a copy.

use axum::body::Bytes;
use custos_schemas::event::{Event, Payload, SourceFormat};
use custos_schemas::{decode, DecodeError, DecodeLimits};
use serde::Deserialize;
use serde_json::value::RawValue;
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
    /// The record value: the AuditEvent as validated (a slice of the request body unless an
    /// id was assigned).
    pub bytes: Bytes,
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

/// Checks one AuditEvent, `part` of the request `body` (any bytes: not yet known to be JSON),
/// and prepares its record.
pub fn prepare(body: &Bytes, part: &[u8], limits: &DecodeLimits) -> Result<Accepted, FeedError> {
    if part.len() > limits.max_bytes {
        return Err(FeedError::Rejected(DecodeError::TooLarge {
            size: part.len(),
            limit: limits.max_bytes,
        }));
    }
    let probe: Probe = serde_json::from_slice(part).map_err(|e| json_error(&e, "the resource"))?;
    if probe.resource_type.as_deref() != Some("AuditEvent") {
        return Err(FeedError::BadRequest(
            "the resource is not an AuditEvent".into(),
        ));
    }
    let record: Bytes = match probe.id {
        None | Some(Value::Null) => {
            let id = hex_sha256(&[part]);
            let mut doc: serde_json::Map<String, Value> =
                serde_json::from_slice(part).map_err(|e| json_error(&e, "the resource"))?;
            doc.insert("id".into(), Value::String(id));
            serde_json::to_vec(&doc)
                .map_err(|e| FeedError::BadRequest(format!("re-encoding: {e}")))?
                .into()
        }
        Some(Value::String(id)) if !id.is_empty() && !is_fhir_id(&id) => {
            return Err(FeedError::Rejected(DecodeError::invalid(
                "AuditEvent.id",
                "not a FHIR id ([A-Za-z0-9-.]{1,64})",
            )));
        }
        Some(_) => slice_of(body, part),
    };
    let event = decode(&record, &[], limits).map_err(FeedError::Rejected)?;
    if event.format != SourceFormat::FhirAuditEvent {
        return Err(FeedError::BadRequest(
            "the resource is not read as a FHIR AuditEvent".into(),
        ));
    }
    Ok(accepted(event, record))
}

/// Checks one Bundle entry's resource (a JSON value borrowed from the request `body`) and
/// prepares its record: the same answer as [`prepare`], with one parse fewer when the entry
/// is accepted.
///
/// The decoder alone decides when it accepts the entry as a FHIR AuditEvent whose id is a
/// FHIR id: then [`prepare`]'s probe would have found `resourceType` `AuditEvent` and that
/// same id (the decoder's AuditEvent has both fields, so a duplicate of either fails both
/// reads, and `resource` is one complete JSON value, so nothing trails it). Anything else
/// (a refusal, a missing id to assign, another format) goes through [`prepare`].
pub fn prepare_entry(
    body: &Bytes,
    resource: &RawValue,
    limits: &DecodeLimits,
) -> Result<Accepted, FeedError> {
    let part = resource.get().as_bytes();
    if part.len() <= limits.max_bytes {
        if let Ok(event) = decode(part, &[], limits) {
            if event.format == SourceFormat::FhirAuditEvent && is_fhir_id(&event.id) {
                return Ok(accepted(event, slice_of(body, part)));
            }
        }
    }
    prepare(body, part, limits)
}

/// `part` as a slice of `body` sharing its buffer, or a copy when it lies elsewhere.
fn slice_of(body: &Bytes, part: &[u8]) -> Bytes {
    let start = part.as_ptr() as usize;
    let base = body.as_ptr() as usize;
    if !part.is_empty() && start >= base && start + part.len() <= base + body.len() {
        body.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// The record of an accepted event: its id and its key.
fn accepted(event: Event, record: Bytes) -> Accepted {
    let tenant = event.tenant.as_deref().unwrap_or_default().as_bytes();
    let key = match &event.payload {
        Payload::FhirAccess(d) if d.patient.is_some() => hex_sha256(&[
            b"patient",
            tenant,
            d.patient.as_deref().unwrap_or_default().as_bytes(),
        ]),
        _ => hex_sha256(&[b"source", tenant, event.source.as_bytes()]),
    };
    Accepted {
        id: event.id,
        key: key[..32].to_owned(),
        bytes: record,
    }
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

    /// [`prepare`] of a whole request body.
    fn prep(b: &[u8], limits: &DecodeLimits) -> Result<Accepted, FeedError> {
        let body = Bytes::copy_from_slice(b);
        prepare(&body, &body, limits)
    }

    #[test]
    fn keeps_the_id_and_the_bytes() {
        let limits = DecodeLimits::default();
        let b = bytes(&audit_event(Some("ae-1"), "p1"));
        let a = prep(&b, &limits).unwrap();
        assert_eq!(a.id, "ae-1");
        assert_eq!(a.bytes, b);
        assert_eq!(a.key.len(), 32);
        assert!(!a.key.contains("p1"));
        // Same patient, same key; another patient, another key.
        let c = prep(&bytes(&audit_event(Some("ae-2"), "p1")), &limits).unwrap();
        let d = prep(&bytes(&audit_event(Some("ae-3"), "p2")), &limits).unwrap();
        assert_eq!(a.key, c.key);
        assert_ne!(a.key, d.key);
    }

    #[test]
    fn a_missing_id_is_derived_from_the_content() {
        let b = bytes(&audit_event(None, "p1"));
        let a = prep(&b, &DecodeLimits::default()).unwrap();
        let again = prep(&b, &DecodeLimits::default()).unwrap();
        assert_eq!(a.id.len(), 64);
        assert_eq!(a.id, again.id);
        let stored: Value = serde_json::from_slice(&a.bytes).unwrap();
        assert_eq!(stored["id"], json!(a.id));
    }

    #[test]
    fn refusals() {
        let limits = DecodeLimits::default();
        let reason = |b: &[u8]| prep(b, &limits).unwrap_err().reason();
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
        let e = prep(&bytes(&audit_event(Some("x"), "p")), &small).unwrap_err();
        assert_eq!(e.status().as_u16(), 413);
        // Trailing bytes after the resource are malformed JSON (the decoder alone would
        // stop at the end of the object).
        let mut trailing = bytes(&audit_event(Some("t2"), "p1"));
        trailing.extend_from_slice(b" x");
        assert_eq!(reason(&trailing), "malformed_json");
    }

    /// Resources a Bundle entry may carry: accepted ones, ones needing an assigned id, and
    /// one of every refusal of [`prepare`].
    fn entry_cases() -> Vec<Vec<u8>> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schemas/tests/fixtures/fhir"
        );
        let mut cases: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert!(cases.len() >= 7, "the FHIR fixtures");
        let ae = |id: Option<&str>| audit_event(id, "p1");
        let mut with = |f: &dyn Fn(&mut Value)| {
            let mut v = ae(Some("ae-1"));
            f(&mut v);
            cases.push(bytes(&v));
        };
        with(&|_| {});
        with(&|v| v["id"] = json!(null));
        with(&|v| v["id"] = json!(""));
        with(&|v| v["id"] = json!(7));
        with(&|v| v["id"] = json!("a b"));
        with(&|v| v["id"] = json!("a".repeat(65)));
        with(&|v| v["id"] = json!("a".repeat(64)));
        with(&|v| v["resourceType"] = json!("Patient"));
        with(&|v| v["resourceType"] = json!(5));
        with(&|v| v["resourceType"] = json!("Consent"));
        with(&|v| v["realmId"] = json!("r1"));
        with(&|v| v["specversion"] = json!("1.0"));
        with(&|v| {
            v.as_object_mut().unwrap().remove("recorded");
        });
        with(&|v| v["recorded"] = json!("yesterday"));
        with(&|v| {
            v.as_object_mut().unwrap().remove("resourceType");
        });
        with(&|v| {
            v["extension"] = json!([{"url": "urn:x", "valueString":
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2lnbmF0dXJl"}])
        });
        with(&|v| v["note"] = json!("x".repeat(4000)));
        let plain = String::from_utf8(bytes(&ae(Some("dup")))).unwrap();
        cases.push(plain.replacen('{', r#"{"id":"dup-2","#, 1).into_bytes());
        cases.push(
            plain
                .replacen('{', r#"{"resourceType":"AuditEvent","#, 1)
                .into_bytes(),
        );
        cases.push(
            plain
                .replacen('{', r#"{"resourceType":"Patient","#, 1)
                .into_bytes(),
        );
        cases.push(
            br#"{"realmId":"r","resourceType":"USER","operationType":"CREATE","time":1,"id":"k1"}"#
                .to_vec(),
        );
        for other in [&b"[1,2]"[..], b"\"x\"", b"12", b"null", b"{}"] {
            cases.push(other.to_vec());
        }
        cases
    }

    #[test]
    fn an_entry_gets_the_answer_of_the_full_checks() {
        let (mut ok, mut refused) = (0, 0);
        for limits in [DecodeLimits::default(), DecodeLimits { max_bytes: 3000 }] {
            for case in entry_cases() {
                let mut b = br#"{"resource":"#.to_vec();
                b.extend_from_slice(&case);
                b.push(b'}');
                let body = Bytes::from(b);
                #[derive(Deserialize)]
                struct E<'a> {
                    #[serde(borrow)]
                    resource: &'a RawValue,
                }
                let e: E<'_> = serde_json::from_slice(&body).unwrap();
                let part = e.resource.get().as_bytes();
                let fast = prepare_entry(&body, e.resource, &limits);
                let full = prepare(&body, part, &limits);
                let text = String::from_utf8_lossy(&case);
                match (fast, full) {
                    (Ok(f), Ok(g)) => {
                        ok += 1;
                        assert_eq!(
                            (&f.id, &f.key, &f.bytes),
                            (&g.id, &g.key, &g.bytes),
                            "{text}"
                        );
                    }
                    (Err(f), Err(g)) => {
                        refused += 1;
                        assert_eq!(
                            (f.reason(), f.status(), f.diagnostics()),
                            (g.reason(), g.status(), g.diagnostics()),
                            "{text}"
                        );
                    }
                    (f, g) => panic!("{text}: entry {:?}, full {:?}", f.is_ok(), g.is_ok()),
                }
            }
        }
        // Both sides of the comparison are exercised: accepted entries (fixtures, assigned
        // ids) and refusals.
        assert!(
            ok >= 14 && refused >= 20,
            "{ok} accepted, {refused} refused"
        );
    }

    #[test]
    fn an_accepted_entry_shares_the_body() {
        let ae = bytes(&audit_event(Some("ae-9"), "p1"));
        let mut b = br#"{"resource":"#.to_vec();
        b.extend_from_slice(&ae);
        b.push(b'}');
        let body = Bytes::from(b);
        let raw: &RawValue =
            serde_json::from_slice::<std::collections::BTreeMap<&str, &RawValue>>(&body).unwrap()
                ["resource"];
        let a = prepare_entry(&body, raw, &DecodeLimits::default()).unwrap();
        assert_eq!(a.bytes, ae);
        assert_eq!(a.bytes.as_ptr(), raw.get().as_ptr());
        // Bytes from elsewhere are copied, not sliced.
        let elsewhere = slice_of(&body, &ae);
        assert_eq!(elsewhere, ae);
        assert_ne!(elsewhere.as_ptr(), ae.as_ptr());
    }

    #[test]
    fn fhir_ids() {
        assert!(is_fhir_id("ae-1.2"));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a/b"));
        assert!(!is_fhir_id(&"a".repeat(65)));
    }
}
