//! Test events: one of every type as a structured CloudEvent, binary-mode variants, and
//! bulk FHIR accesses, all carrying recognizable raw identifiers (`RAWPAT-...`) so tests
//! can prove those never reach storage or logs.

use serde_json::{json, Value};

use crate::Msg;

/// Raw identifiers planted in the events of one scenario.
#[derive(Debug, Clone)]
pub struct Raw {
    /// Patient id.
    pub patient: String,
    /// Encounter id.
    pub encounter: String,
    /// A resource id in the patient compartment.
    pub observation: String,
    /// The AS subject of a patient user.
    pub patient_sub: String,
    /// The IP of a patient user.
    pub patient_ip: String,
}

impl Raw {
    /// Identifiers unique to `tag`.
    pub fn new(tag: &str) -> Raw {
        Raw {
            patient: format!("RAWPAT-{tag}"),
            encounter: format!("RAWENC-{tag}"),
            observation: format!("RAWOBS-{tag}"),
            patient_sub: format!("RAWSUB-{tag}"),
            patient_ip: "198.51.100.77".to_owned(),
        }
    }

    /// Every planted value.
    pub fn all(&self) -> Vec<String> {
        vec![
            self.patient.clone(),
            self.encounter.clone(),
            self.observation.clone(),
            self.patient_sub.clone(),
            self.patient_ip.clone(),
        ]
    }
}

/// A structured-mode CloudEvent.
pub fn ce(id: &str, ty: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "//custos.test/producer",
        "type": ty,
        "time": "2026-05-04T10:11:12.345Z",
        "datacontenttype": "application/json",
        "tenant": "general",
        "data": data,
    })
}

/// A binary-mode CloudEvent message (attributes in `ce_*` headers).
pub fn binary(id: &str, ty: &str, data: &Value) -> Msg {
    Msg {
        key: Some(id.to_owned()),
        payload: serde_json::to_vec(data).expect("json"),
        headers: vec![
            ("ce_specversion".into(), "1.0".into()),
            ("ce_id".into(), id.into()),
            ("ce_source".into(), "//custos.test/binary".into()),
            ("ce_type".into(), ty.into()),
            ("ce_time".into(), "2026-05-04T10:11:12Z".into()),
            ("ce_tenant".into(), "general".into()),
            ("content-type".into(), "application/json".into()),
        ],
    }
}

const ISS: &str = "https://as.test/realms/general";

/// A FHIR read by a clinician of a patient's Observation.
pub fn fhir_access(id: &str, raw: &Raw) -> Value {
    ce(
        id,
        "custos.fhir.access",
        json!({
            "requestId": format!("req-{id}"), "iss": ISS, "sub": "dr-alice", "fhirUser": "Practitioner/alice",
            "client_id": "ehr-app", "jti": format!("jti-{id}"), "scope": "launch user/Observation.rs",
            "interaction": "read", "resourceType": "Observation", "resourceId": raw.observation,
            "patient": format!("Patient/{}", raw.patient), "encounter": format!("Encounter/{}", raw.encounter),
            "purposeOfUse": ["TREAT"], "decision": "permit", "httpStatus": 200,
            "sourceIp": "10.0.0.5", "userAgent": "EHR/1.0"
        }),
    )
}

/// A FHIR R4 `Consent` resource (tenant `general`) of `raw.patient` and its AS subject
/// granting `patient-app` lab results, with `status` and `provision.period.end`.
pub fn fhir_consent(id: &str, raw: &Raw, status: &str, period_end: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": "2026-05-04T10:11:12Z", "source": "ehr.test",
                 "tag": [{"system": "urn:custos:tenant", "code": "general"}]},
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{}", raw.patient)},
        "dateTime": "2026-05-04",
        "extension": [
            {"url": "urn:custos:fhir:extension:oauth-scope", "valueString": "launch/patient patient/Observation.rs?category=laboratory"},
            {"url": "urn:custos:fhir:extension:as-subject", "valueString": raw.patient_sub},
            {"url": "urn:custos:fhir:extension:as-issuer", "valueUri": ISS}
        ],
        "provision": {
            "type": "permit",
            "period": {"start": "2026-01-01", "end": period_end},
            "actor": [{"reference": {"identifier": {"system": "urn:ietf:params:oauth:client-id", "value": "patient-app"}}}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]
        }
    })
}

/// One structured CloudEvent of every event type (`id` = `{prefix}-{n}`).
pub fn every_type(prefix: &str, raw: &Raw) -> Vec<(String, Value)> {
    let p = |n: u32| format!("{prefix}-{n}");
    let patient_user = json!({"iss": ISS, "sub": raw.patient_sub, "fhirUser": format!("Patient/{}", raw.patient),
        "client_id": "patient-app", "sid": "s-1", "sourceIp": raw.patient_ip, "userAgent": "PatientApp/2"});
    let mut failed = patient_user.clone();
    failed["error"] = json!("invalid_user_credentials");
    let token = |extra: Value| {
        let mut d = json!({"iss": ISS, "sub": "dr-alice", "fhirUser": "Practitioner/alice", "client_id": "ehr-app",
            "jti": format!("jti-{prefix}"), "tokenType": "access", "scope": "launch user/Observation.rs openid",
            "sid": "s-2", "patient": raw.patient, "expiresAt": "2026-05-04T11:11:12Z", "sourceIp": "10.0.0.5"});
        if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                d.insert(k.clone(), v.clone());
            }
        }
        d
    };
    let consent = |extra: Value| {
        let mut d = json!({"consentId": format!("consent-{prefix}"), "patient": raw.patient, "client_id": "patient-app",
            "iss": ISS, "sub": raw.patient_sub, "scope": "patient/Observation.rs?category=laboratory",
            "purpose": ["TREAT"], "periodStart": "2026-01-01T00:00:00Z", "periodEnd": "2027-01-01T00:00:00Z"});
        if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                d.insert(k.clone(), v.clone());
            }
        }
        d
    };
    vec![
        (p(1), ce(&p(1), "custos.auth.login", patient_user.clone())),
        (p(2), ce(&p(2), "custos.auth.login_failed", failed)),
        (p(3), ce(&p(3), "custos.auth.logout", patient_user)),
        (p(4), ce(&p(4), "custos.token.issued", token(json!({})))),
        (
            p(5),
            ce(
                &p(5),
                "custos.token.refreshed",
                token(json!({"tokenType": "refresh"})),
            ),
        ),
        (
            p(6),
            ce(
                &p(6),
                "custos.token.revoked",
                token(json!({"reason": "user logout"})),
            ),
        ),
        (
            p(7),
            ce(
                &p(7),
                "custos.token.introspected",
                token(json!({"active": false})),
            ),
        ),
        (
            p(8),
            ce(&p(8), "custos.consent.granted", consent(json!({}))),
        ),
        (
            p(9),
            ce(
                &p(9),
                "custos.consent.revoked",
                consent(json!({"reason": "patient request", "actor": "privacy-bob"})),
            ),
        ),
        (
            p(10),
            ce(&p(10), "custos.consent.expired", consent(json!({}))),
        ),
        (p(11), fhir_access(&p(11), raw)),
        (
            p(12),
            ce(
                &p(12),
                "custos.user.deprovisioned",
                json!({"iss": ISS, "sub": "dr-mallory",
            "fhirUser": "Practitioner/mallory", "reason": "left the organization", "actor": "admin-carol"}),
            ),
        ),
        (
            p(13),
            ce(
                &p(13),
                "custos.breakglass.opened",
                json!({"iss": ISS, "sub": "dr-alice",
            "fhirUser": "Practitioner/alice", "client_id": "ehr-app", "patient": raw.patient,
            "reason": "unconscious patient in ED", "expiresAt": "2026-05-04T14:11:12Z", "sourceIp": "10.0.0.5"}),
            ),
        ),
    ]
}

/// A bulk FHIR access event `n` (ids `{prefix}-{n}`), spread over 1000 patients.
pub fn bulk(prefix: &str, n: u64) -> Msg {
    let raw = Raw::new(&format!("{prefix}-p{}", n % 1000));
    let mut m = Msg::json(&fhir_access(&format!("{prefix}-{n}"), &raw));
    m.key = Some(format!("k{}", n % 1000));
    m
}
