//! Golden record of the decoders and the row conversion: every fixture, a set of edited
//! FHIR `AuditEvent`s that take each branch of the BALP mapping, and one CloudEvent per
//! event family go through [`decode`] and [`RowContext::audit_row_owned`]; the event, the
//! row (as JSON) or the error is compared with `tests/golden/conversions.txt`.
//!
//! A change that alters any decoded field, row column or error text fails this test. After
//! an intended change, regenerate the file with `CUSTOS_BLESS_GOLDEN=1 cargo test -p
//! custos-schemas --test golden` and review its diff.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use custos_schemas::row::RowContext;
use custos_schemas::{decode, DecodeLimits, KafkaPosition, KeyRing};
use serde_json::{json, Value};

const GOLDEN: &str = "tests/golden/conversions.txt";

fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).unwrap()
}

/// Every fixture file, sorted by name.
fn fixture_cases() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["keycloak", "fhir"] {
        let full = format!("{}/tests/fixtures/{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<String> = std::fs::read_dir(&full)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        for name in names {
            let path = format!("{dir}/{name}");
            out.push((path.clone(), fixture(&path)));
        }
    }
    out
}

/// `fixture` with `edit` applied, named `fixture: label`.
fn edit(fixture: &str, label: &str, edit: impl FnOnce(&mut Value)) -> (String, Vec<u8>) {
    let mut v = fixture_json(fixture);
    edit(&mut v);
    (
        format!("{fixture}: {label}"),
        serde_json::to_vec(&v).unwrap(),
    )
}

/// Sets the restful interaction code.
fn set_interaction(v: &mut Value, code: &str) {
    v["subtype"] = json!([{ "system": "http://hl7.org/fhir/restful-interaction", "code": code }]);
}

/// Removes the entities for which `drop` holds.
fn drop_entities(v: &mut Value, drop: impl Fn(&Value) -> bool) {
    let kept: Vec<Value> = v["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !drop(e))
        .cloned()
        .collect();
    v["entity"] = Value::Array(kept);
}

fn role_is(e: &Value, code: &str) -> bool {
    e["role"]["code"] == code
}

/// Edited BALP AuditEvents, one per branch of the mapping.
fn fhir_cases() -> Vec<(String, Vec<u8>)> {
    const READ: &str = "fhir/patient_read.json";
    const SEARCH: &str = "fhir/patient_search.json";
    const BTG: &str = "fhir/btg_read.json";
    const CREATE: &str = "fhir/patient_create.json";
    vec![
        edit(READ, "not an AuditEvent", |v| {
            v["resourceType"] = json!("Observation")
        }),
        edit(READ, "blank id", |v| v["id"] = json!(" ")),
        edit(READ, "no recorded", |v| {
            v.as_object_mut().unwrap().remove("recorded");
        }),
        edit(READ, "unknown interaction", |v| {
            set_interaction(v, "frobnicate")
        }),
        edit(READ, "interaction without system", |v| {
            v["subtype"] = json!([{ "code": "vread" }])
        }),
        edit(READ, "no subtype", |v| {
            v.as_object_mut().unwrap().remove("subtype");
        }),
        edit(READ, "no subtype, non-rest type", |v| {
            v.as_object_mut().unwrap().remove("subtype");
            v["type"] = json!({ "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114" });
        }),
        edit(READ, "no outcome", |v| {
            v.as_object_mut().unwrap().remove("outcome");
        }),
        edit(READ, "outcome 4", |v| v["outcome"] = json!("4")),
        edit(READ, "outcome 8", |v| v["outcome"] = json!("8")),
        edit(READ, "outcome 12", |v| v["outcome"] = json!("12")),
        edit(READ, "outcome 3", |v| v["outcome"] = json!("3")),
        edit(
            READ,
            "R5 outcome concept",
            |v| v["outcome"] = json!({ "code": { "system": "http://terminology.hl7.org/CodeSystem/audit-event-outcome", "code": "4" } }),
        ),
        edit(READ, "R5 outcome concept without code", |v| {
            v["outcome"] = json!({ "code": { "text": "x" } })
        }),
        edit(
            READ,
            "http-status extension",
            |v| {
                v["extension"] =
                    json!([{ "url": "urn:custos:fhir:ext:http-status", "valueInteger": 304 }])
            },
        ),
        edit(
            READ,
            "http-status out of range",
            |v| {
                v["extension"] =
                    json!([{ "url": "urn:custos:fhir:ext:http-status", "valueUnsignedInt": 700 }])
            },
        ),
        edit(READ, "source from observer display", |v| {
            v["source"] = json!({ "observer": { "display": "FHIR server" } })
        }),
        edit(
            READ,
            "source from observer identifier",
            |v| v["source"] = json!({ "observer": { "identifier": { "value": "fhir-1" } } }),
        ),
        edit(READ, "source from site", |v| {
            v["source"] = json!({ "site": "fhir.example" })
        }),
        edit(READ, "no source", |v| {
            v.as_object_mut().unwrap().remove("source");
        }),
        edit(SEARCH, "user by agent type, no requestor flag", |v| {
            v["agent"][0].as_object_mut().unwrap().remove("requestor");
        }),
        edit(SEARCH, "no user agent", |v| {
            let agents: Vec<Value> = v["agent"].as_array().unwrap()[1..].to_vec();
            v["agent"] = Value::Array(agents);
        }),
        edit(SEARCH, "user without identifier value", |v| {
            v["agent"][0]["who"]["identifier"]
                .as_object_mut()
                .unwrap()
                .remove("value");
        }),
        edit(SEARCH, "issuer from extension", |v| {
            v["agent"][0]["who"]["identifier"]
                .as_object_mut()
                .unwrap()
                .remove("system");
            v["agent"][0]["extension"] = json!([
                { "url": "urn:custos:fhir:ext:issuer", "valueUri": "https://as.example" },
                { "url": "urn:custos:fhir:ext:jti", "valueString": "jti-from-ext" },
                { "url": "urn:custos:fhir:ext:scope", "valueString": "patient/*.rs" }
            ]);
            v["agent"][0].as_object_mut().unwrap().remove("policy");
        }),
        edit(SEARCH, "no issuer", |v| {
            v["agent"][0]["who"]["identifier"]
                .as_object_mut()
                .unwrap()
                .remove("system");
        }),
        edit(SEARCH, "opaque token profile", |v| {
            v["meta"]["profile"] = json!(["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.OAUTHaccessTokenUse.Opaque"]);
        }),
        edit(SEARCH, "client by destination agent", |v| {
            v["agent"][1]["type"] = json!({ "coding": [{ "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153" }] });
            v["agent"][2]["network"]["type"] = json!("5");
        }),
        edit(SEARCH, "client by display, user ip", |v| {
            v["agent"][1]["who"] = json!({ "display": "Patient App" });
            v["agent"][1].as_object_mut().unwrap().remove("network");
            v["agent"][0]["network"] = json!({ "address": "203.0.113.5", "type": "2" });
        }),
        edit(SEARCH, "client without who", |v| {
            v["agent"][1].as_object_mut().unwrap().remove("who");
        }),
        edit(SEARCH, "no client agent", |v| {
            v["agent"][1]["type"] = json!({ "coding": [{ "code": "other" }] });
        }),
        edit(
            SEARCH,
            "purposes of event and user, duplicates folded",
            |v| {
                v["purposeOfEvent"] = json!([
                    { "coding": [
                        { "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT" },
                        { "system": "urn:oid:2.16.840.1.113883.5.8", "code": "HPAYMT" },
                        { "system": "http://example.org/other", "code": "SKIPPED" }
                    ] }
                ]);
                v["agent"][0]["purposeOfUse"] = json!([{ "code": "TREAT" }, { "code": "ETREAT" }]);
            },
        ),
        edit(BTG, "reason from extension", |v| {
            v["agent"][0]["extension"] = json!([{ "url": "urn:custos:fhir:ext:break-glass-reason", "valueString": "ED handover" }]);
        }),
        edit(BTG, "BTG without text", |v| {
            let concepts = v["purposeOfEvent"].as_array_mut().unwrap();
            for c in concepts {
                c.as_object_mut().unwrap().remove("text");
            }
        }),
        edit(BTG, "BTG denied without text", |v| {
            v["outcome"] = json!("4");
            let concepts = v["purposeOfEvent"].as_array_mut().unwrap();
            for c in concepts {
                c.as_object_mut().unwrap().remove("text");
            }
        }),
        edit(SEARCH, "no request id entity", |v| {
            drop_entities(v, |e| e["type"]["code"] == "XrequestId");
        }),
        edit(SEARCH, "search type from query type code", |v| {
            drop_entities(v, |e| role_is(e, "24"));
            v["entity"].as_array_mut().unwrap().push(json!({
                "type": { "system": "http://hl7.org/fhir/resource-types", "code": "Condition" },
                "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24" },
                "name": "GET /r4/Immunization"
            }));
        }),
        edit(SEARCH, "search type from query name", |v| {
            drop_entities(v, |e| role_is(e, "24"));
            v["entity"].as_array_mut().unwrap().push(json!({
                "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24" },
                "name": "POST /r4/Immunization/_search HTTP/1.1"
            }));
        }),
        edit(SEARCH, "search type from data entities", |v| {
            drop_entities(v, |e| role_is(e, "24"));
        }),
        edit(SEARCH, "search without any type", |v| {
            drop_entities(v, |e| role_is(e, "24") || role_is(e, "4"));
        }),
        edit(SEARCH, "search-type without any type", |v| {
            set_interaction(v, "search-type");
            drop_entities(v, |e| role_is(e, "24") || role_is(e, "4"));
        }),
        edit(SEARCH, "history-type with query", |v| {
            set_interaction(v, "history-type")
        }),
        edit(SEARCH, "history-system", |v| {
            set_interaction(v, "history-system")
        }),
        edit(SEARCH, "capabilities", |v| {
            set_interaction(v, "capabilities")
        }),
        edit(SEARCH, "transaction", |v| set_interaction(v, "transaction")),
        edit(SEARCH, "search patient only from patient role", |v| {
            v["entity"][0]["role"]["code"] = json!("3");
        }),
        edit(READ, "read patient from any entity", |v| {
            for e in v["entity"].as_array_mut().unwrap() {
                if role_is(e, "1") {
                    e["role"]["code"] = json!("6");
                }
            }
        }),
        edit(READ, "read of the patient itself", |v| {
            drop_entities(v, |e| !role_is(e, "1") && e["type"]["code"] != "XrequestId");
        }),
        edit(CREATE, "create without data entity", |v| {
            drop_entities(v, |e| !role_is(e, "1") && e["type"]["code"] != "XrequestId");
        }),
        edit(READ, "history without entities", |v| {
            set_interaction(v, "history");
            v["entity"] = json!([]);
        }),
        edit(READ, "read without entities", |v| v["entity"] = json!([])),
        edit(READ, "data entity by what.type", |v| {
            drop_entities(v, |e| !role_is(e, "1") && e["type"]["code"] != "XrequestId");
            v["entity"].as_array_mut().unwrap().push(json!({
                "what": { "type": "http://hl7.org/fhir/StructureDefinition/Observation" },
                "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "3" }
            }));
        }),
        edit(
            READ,
            "data entity without explicit role, encounter, tenant",
            |v| {
                drop_entities(v, |e| !role_is(e, "1") && e["type"]["code"] != "XrequestId");
                v["entity"].as_array_mut().unwrap().push(json!({
                    "what": { "reference": "https://fhir.example/r4/Encounter/enc-1/_history/2" }
                }));
                v["extension"] =
                    json!([{ "url": "urn:custos:fhir:ext:tenant", "valueString": "north" }]);
            },
        ),
    ]
}

/// One CloudEvent per event family, with patient, workforce and service users.
fn cloudevent_cases() -> Vec<(String, Vec<u8>)> {
    let ce = |ty: &str, tenant: Option<&str>, data: Value| {
        let mut v = json!({
            "specversion": "1.0", "id": format!("ce-{ty}"), "source": "//producer",
            "type": ty, "time": "2026-02-03T04:05:06.789Z", "data": data
        });
        if let Some(t) = tenant {
            v["tenant"] = json!(t);
        }
        (format!("cloudevent {ty}"), serde_json::to_vec(&v).unwrap())
    };
    vec![
        ce(
            "custos.auth.login",
            None,
            json!({
                "iss": "https://as", "sub": "pat-user", "fhirUser": "Patient/p-1", "client_id": "app",
                "sid": "s-1", "sourceIp": "203.0.113.9", "userAgent": "UA/1"
            }),
        ),
        ce(
            "custos.auth.login_failed",
            Some("north"),
            json!({
                "iss": "https://as", "client_id": "app", "error": "invalid_user_credentials"
            }),
        ),
        ce(
            "custos.auth.logout",
            None,
            json!({
                "iss": "https://as", "sub": "dr-1", "fhirUser": "Practitioner/9", "client_id": "ehr",
                "sourceIp": "10.0.0.1"
            }),
        ),
        ce(
            "custos.token.issued",
            None,
            json!({
                "iss": "https://as", "sub": "pat-user", "fhirUser": "Patient/p-1", "client_id": "app",
                "jti": "j-1", "tokenType": "access", "scope": "launch/patient patient/*.rs",
                "sid": "s-1", "patient": "p-1", "expiresAt": "2026-02-03T05:05:06Z",
                "sourceIp": "203.0.113.9", "userAgent": "UA/1"
            }),
        ),
        ce(
            "custos.token.introspected",
            None,
            json!({
                "iss": "https://as", "sub": "svc", "client_id": "svc", "jti": "j-2", "active": false,
                "error": "expired"
            }),
        ),
        ce(
            "custos.token.revoked",
            None,
            json!({
                "iss": "https://as", "sub": "dr-1", "fhirUser": "PractitionerRole/r-1",
                "client_id": "ehr", "jti": "j-3", "reason": "consent_revoked"
            }),
        ),
        ce(
            "custos.consent.granted",
            None,
            json!({
                "consentId": "c-1", "patient": "p-1", "client_id": "app", "iss": "https://as",
                "sub": "pat-user", "scope": "patient/*.rs", "purpose": ["TREAT"],
                "periodStart": "2026-01-01T00:00:00Z", "periodEnd": "2027-01-01T00:00:00Z"
            }),
        ),
        ce(
            "custos.consent.revoked",
            None,
            json!({
                "consentId": "c-1", "patient": "p-1", "client_id": "app", "reason": "withdrawn",
                "actor": "pat-user"
            }),
        ),
        ce(
            "custos.fhir.access",
            Some("general"),
            json!({
                "requestId": "q1", "iss": "https://as", "sub": "pat-user", "fhirUser": "Patient/p-1",
                "client_id": "app", "jti": "J1", "scope": "patient/Patient.r",
                "interaction": "read", "resourceType": "Patient", "resourceId": "p-1",
                "encounter": "e-1", "decision": "deny", "httpStatus": 403, "sourceIp": "203.0.113.9",
                "purposeOfUse": ["PATRQT"]
            }),
        ),
        ce(
            "custos.fhir.access",
            None,
            json!({
                "requestId": "q2", "iss": "https://as", "sub": "dr-1", "fhirUser": "Practitioner/9",
                "client_id": "ehr", "interaction": "search-type", "resourceType": "Practitioner",
                "decision": "permit", "httpStatus": 500,
                "returnedIds": ["Practitioner/9", "Organization/o-1", "x-2"]
            }),
        ),
        ce(
            "custos.user.deprovisioned",
            None,
            json!({
                "iss": "https://as", "sub": "dr-2", "fhirUser": "Practitioner/10",
                "reason": "left", "actor": "admin"
            }),
        ),
        ce(
            "custos.breakglass.opened",
            None,
            json!({
                "iss": "https://as", "sub": "dr-1", "fhirUser": "Practitioner/9", "client_id": "ehr",
                "patient": "p-1", "reason": "unconscious patient", "expiresAt": "2026-02-03T08:05:06Z",
                "sid": "s-2", "sourceIp": "10.0.0.1"
            }),
        ),
    ]
}

/// The decoded event and its row, or the error, as text.
fn render(ctx: &RowContext<'_>, name: &str, bytes: &[u8]) -> String {
    let mut out = format!("=== {name}\n");
    match decode(bytes, &[], &DecodeLimits::default()) {
        Err(e) => writeln!(out, "error {}: {e}", e.reason()).unwrap(),
        Ok(event) => {
            writeln!(out, "{event:#?}").unwrap();
            let pos = KafkaPosition {
                topic: "custos.golden".to_owned(),
                partition: 2,
                offset: 7,
            };
            let row = ctx.audit_row_owned(event, pos, 1_767_000_000_000);
            writeln!(out, "{}", serde_json::to_string_pretty(&row).unwrap()).unwrap();
        }
    }
    out
}

#[test]
fn decoded_events_and_rows_match_the_golden_record() {
    let keys = KeyRing::parse(
        "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        None,
    )
    .unwrap();
    let ctx = RowContext {
        keys: &keys,
        default_tenant: "default",
    };
    let cases = fixture_cases()
        .into_iter()
        .chain(fhir_cases())
        .chain(cloudevent_cases());
    let actual: String = cases
        .map(|(name, bytes)| render(&ctx, &name, &bytes))
        .collect();
    let path = format!("{}/{GOLDEN}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("CUSTOS_BLESS_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    if actual != expected {
        let first = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        let context = |s: &str| {
            s.lines()
                .skip(first.saturating_sub(3))
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "conversion output differs from {GOLDEN} at line {}:\n--- actual\n{}\n--- expected\n{}",
            first + 1,
            context(&actual),
            context(&expected)
        );
    }
}
