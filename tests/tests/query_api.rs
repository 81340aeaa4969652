//! End-to-end tests of the query API (issue 4) against data that went through the real
//! pipeline: CloudEvents produced to fresh Kafka topics, stored by the real
//! `custos-ingest` (a first part with key `t1` only, a second part after rotating to
//! `t2`), then read through `custos_query::app` in-process, authenticated with JWTs
//! signed by test keys and verified against an in-test JWKS server on 127.0.0.1.
//!
//! Every assertion is scoped to this run's tenant (a unique CloudEvents `tenant`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custos_schemas::{KeyRing, PseudonymKind};
use custos_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

mod support;

use support::{claims, ensure_schema, entry_ids, fixture, get, now, rows, sign, token, url};

const ISS_AS: &str = "https://as.test/realms/general";
const DAY_FROM: &str = "2026-03-01T00:00:00Z";
const DAY_TO: &str = "2026-03-02T00:00:00Z";
/// Only the first key: the state before the rotation.
const KEY_T1: &str = "t1=5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";

fn app() -> Router {
    support::app(&[])
}

fn app_with(extra: &[&str]) -> Router {
    support::app(extra)
}

/// The request ids of access rows (the scenario names every access `A<n>`).
fn request_ids(rows: &[Value]) -> BTreeSet<String> {
    rows.iter()
        .filter_map(|r| r["request_id"].as_str())
        .filter(|s| !s.is_empty())
        .map(|s| s.rsplit('-').next().unwrap_or(s).to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------- the scenario

struct Scenario {
    tenant: String,
    p1: String,
    p2: String,
    p3: String,
    patient_sub: String,
    /// Event key of each named event (`E1`.., `A1`..).
    keys: BTreeMap<String, String>,
}

fn ce(tenant: &str, id: &str, ty: &str, time: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "//custos.test/query", "type": ty,
        "time": time, "datacontenttype": "application/json", "tenant": tenant, "data": data})
}

fn t(hms: &str) -> String {
    format!("2026-03-01T{hms}Z")
}

#[allow(clippy::too_many_arguments)]
fn access(
    s: &Sc,
    name: &str,
    time: &str,
    who: (&str, &str),
    client: &str,
    jti: Option<&str>,
    interaction: &str,
    rtype: &str,
    rid: Option<&str>,
    patient: &str,
    purpose: &[&str],
    decision: &str,
    ip: &str,
) -> (String, Value) {
    let mut d = json!({"requestId": format!("{}-{name}", s.tag), "iss": ISS_AS, "sub": who.0, "fhirUser": who.1,
        "client_id": client, "scope": "launch user/Observation.rs user/Patient.r",
        "interaction": interaction, "resourceType": rtype,
        "patient": format!("Patient/{patient}"), "purposeOfUse": purpose,
        "decision": decision, "httpStatus": if decision == "permit" { 200 } else { 403 },
        "sourceIp": ip, "userAgent": "Test/1"});
    if let Some(j) = jti {
        d["jti"] = json!(j);
    }
    if let Some(r) = rid {
        d["resourceId"] = json!(r);
    }
    if purpose.contains(&"BTG") {
        d["breakGlassReason"] = json!("unconscious patient in ED");
    }
    (
        name.to_owned(),
        ce(
            &s.tenant,
            &format!("{}-{name}", s.tag),
            "custos.fhir.access",
            time,
            d,
        ),
    )
}

struct Sc {
    tag: String,
    tenant: String,
}

fn scenario() -> &'static Scenario {
    static SCENARIO: OnceLock<Scenario> = OnceLock::new();
    SCENARIO.get_or_init(|| support::seeded(seed))
}

async fn seed() -> Result<Scenario> {
    ensure_schema()?;
    let tag = unique("qa");
    let s = Sc {
        tenant: tag.clone(),
        tag: tag.clone(),
    };
    let tenant = s.tenant.clone();
    let p1 = format!("RAWPAT-{tag}-1");
    let p2 = format!("RAWPAT-{tag}-2");
    let p3 = format!("RAWPAT-{tag}-3");
    let psub = format!("RAWSUB-{tag}");
    let alice = ("dr-alice", "Practitioner/alice");
    let bob = ("dr-bob", "Practitioner/bob");
    let carol = ("dr-carol", "Practitioner/carol");
    let puser_fhir = format!("Patient/{p1}");
    let puser = (psub.as_str(), puser_fhir.as_str());
    let j1 = format!("J1-{tag}");
    let j2 = format!("J2-{tag}");
    let s1 = format!("S1-{tag}");
    let token = |name: &str, ty: &str, time: &str, extra: Value| {
        let mut d = json!({"iss": ISS_AS, "sub": "dr-alice", "fhirUser": "Practitioner/alice",
            "client_id": "ehr-app", "jti": j1, "tokenType": "access", "sid": s1,
            "scope": "launch user/Observation.rs user/Patient.r", "sourceIp": "10.0.0.5",
            "expiresAt": t("10:30:00")});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            d[k] = v;
        }
        (
            name.to_owned(),
            ce(&tenant, &format!("{tag}-{name}"), ty, time, d),
        )
    };
    let consent = |name: &str, ty: &str, time: &str| {
        let d = json!({"consentId": format!("C1-{tag}"), "patient": p1, "client_id": "patient-app",
            "iss": ISS_AS, "sub": psub, "scope": "patient/*.rs", "purpose": ["PATRQT"],
            "periodStart": "2026-01-01T00:00:00Z", "periodEnd": "2027-01-01T00:00:00Z",
            "reason": "patient request", "actor": "patient"});
        (
            name.to_owned(),
            ce(&tenant, &format!("{tag}-{name}"), ty, time, d),
        )
    };
    // Part 1, ingested with key t1 only.
    let mut part1 = vec![
        token("E1", "custos.token.issued", &t("10:00:00"), json!({})),
        access(
            &s,
            "A1",
            &t("10:01:00"),
            alice,
            "ehr-app",
            Some(&j1),
            "read",
            "Observation",
            Some("OBS-1"),
            &p1,
            &["TREAT"],
            "permit",
            "10.0.0.5",
        ),
        access(
            &s,
            "A2",
            &t("10:02:00"),
            alice,
            "ehr-app",
            Some(&j1),
            "search-type",
            "Observation",
            None,
            &p1,
            &["HRESCH"],
            "permit",
            "10.0.0.6",
        ),
        consent("E4", "custos.consent.granted", &t("10:03:00")),
        access(
            &s,
            "A3",
            &t("10:04:00"),
            puser,
            "patient-app",
            None,
            "read",
            "Patient",
            Some(&p1),
            &p1,
            &[],
            "permit",
            "198.51.100.7",
        ),
        (
            "E6".to_owned(),
            ce(
                &tenant,
                &format!("{tag}-E6"),
                "custos.breakglass.opened",
                &t("10:05:00"),
                json!({"iss": ISS_AS, "sub": "dr-bob", "fhirUser": "Practitioner/bob", "client_id": "ehr-app",
                "patient": p2, "reason": "unconscious patient in ED", "expiresAt": t("11:05:00"),
                "sourceIp": "10.0.0.7"}),
            ),
        ),
    ];
    // Part 2, after rotating to t2.
    let mut part2 = vec![
        access(
            &s,
            "A4",
            &t("10:06:00"),
            bob,
            "ehr-app",
            Some(&j2),
            "read",
            "Condition",
            Some("CN-1"),
            &p2,
            &["BTG"],
            "permit",
            "10.0.0.7",
        ),
        token(
            "E8",
            "custos.token.revoked",
            &t("10:10:00"),
            json!({"reason": "incident"}),
        ),
        access(
            &s,
            "A5",
            &t("10:11:00"),
            alice,
            "ehr-app",
            Some(&j1),
            "read",
            "Observation",
            Some("OBS-2"),
            &p1,
            &[],
            "permit",
            "10.9.9.9",
        ),
        consent("E10", "custos.consent.revoked", &t("10:20:00")),
        access(
            &s,
            "A6",
            &t("10:20:30"),
            puser,
            "patient-app",
            None,
            "read",
            "Observation",
            Some("OBS-1"),
            &p1,
            &[],
            "permit",
            "198.51.100.7",
        ),
        access(
            &s,
            "A7",
            &t("10:25:00"),
            puser,
            "patient-app",
            None,
            "read",
            "Observation",
            Some("OBS-2"),
            &p1,
            &[],
            "permit",
            "198.51.100.7",
        ),
        access(
            &s,
            "A8",
            &t("10:26:00"),
            puser,
            "patient-app",
            None,
            "read",
            "Observation",
            Some("OBS-3"),
            &p1,
            &[],
            "deny",
            "198.51.100.7",
        ),
        access(
            &s,
            "A9",
            &t("10:40:00"),
            alice,
            "ehr-app",
            Some(&j1),
            "delete",
            "Patient",
            Some(&p1),
            &p1,
            &["HOPERAT"],
            "deny",
            "10.9.9.9",
        ),
    ];
    // 25 accesses to a third patient, split across the rotation, for pagination.
    for n in 0..25 {
        let ev = access(
            &s,
            &format!("B{n}"),
            &t(&format!("12:{:02}:{:02}", n / 2, (n % 2) * 30)),
            carol,
            "ehr-app",
            None,
            "read",
            "Observation",
            Some(&format!("OBS-P3-{n}")),
            &p3,
            &["TREAT"],
            "permit",
            "10.0.0.8",
        );
        if n < 12 {
            part1.push(ev)
        } else {
            part2.push(ev)
        }
    }
    let mut keys_by_name = BTreeMap::new();
    for (part, (events, keys)) in [(&part1, KEY_T1), (&part2, TEST_KEYS)]
        .into_iter()
        .enumerate()
    {
        let msgs: Vec<Msg> = events.iter().map(|(_, v)| Msg::json(v)).collect();
        let env = [("CUSTOS_PSEUDONYM_KEYS", keys)];
        support::ingest_all(&format!("qa{part}"), &env, &msgs).await?;
        for (name, v) in events.iter() {
            let id = v["id"].as_str().context("id")?;
            keys_by_name.insert(
                name.clone(),
                custos_schemas::row::event_key("//custos.test/query", id),
            );
        }
    }
    Ok(Scenario {
        tenant,
        p1,
        p2,
        p3,
        patient_sub: psub,
        keys: keys_by_name,
    })
}

/// Applies the migrations. If a migration another change is still adding fails, the tables
/// this test needs (versions up to 4) may still be there: then go on, else fail.
fn ring() -> KeyRing {
    KeyRing::parse(TEST_KEYS, None).expect("keys")
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_return_exactly_the_seeded_rows_across_the_key_rotation() -> Result<()> {
    let sc = scenario();
    let app = app();
    let officer = token("officer-reports", &["compliance_officer"]);
    let privacy = token("privacy-reports", &["privacy_officer"]);
    let responder = token("responder-reports", &["incident_responder"]);
    let ten = sc.tenant.as_str();
    let window = [("tenant", ten), ("from", DAY_FROM), ("to", DAY_TO)];
    let q = |path: &str, extra: &[(&str, &str)]| {
        let mut p: Vec<(&str, &str)> = window.to_vec();
        p.extend_from_slice(extra);
        url(path, &p)
    };

    // The stored pseudonyms really differ across the rotation.
    let ring = ring();
    let ps = ring.lookup_all(ten, PseudonymKind::Patient, &sc.p1);
    let r = get(
        &app,
        &q("/v1/reports/patient-access", &[("patient", &sc.p1)]),
        Some(&officer),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let got = rows(&body);
    assert_eq!(
        request_ids(&got),
        set(&["A1", "A2", "A3", "A5", "A6", "A7", "A8", "A9"])
    );
    let stored: BTreeSet<String> = got
        .iter()
        .map(|r| r["patient"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        stored,
        ps.iter().cloned().collect::<BTreeSet<_>>(),
        "both keys' pseudonyms"
    );
    assert!(!r.text().contains(&sc.p1), "raw patient id in a report");
    assert_eq!(body["next_cursor"], Value::Null);
    // Time order.
    let times: Vec<&str> = got
        .iter()
        .map(|r| r["event_time"].as_str().unwrap_or_default())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);

    // Filters.
    for (extra, want) in [
        (vec![("user", "dr-alice")], vec!["A1", "A2", "A5", "A9"]),
        (
            vec![("user", "Practitioner/alice")],
            vec!["A1", "A2", "A5", "A9"],
        ),
        (
            vec![("user", sc.patient_sub.as_str())],
            vec!["A3", "A6", "A7", "A8"],
        ),
        (
            vec![("client", "patient-app")],
            vec!["A3", "A6", "A7", "A8"],
        ),
        (vec![("resource_type", "Patient")], vec!["A3", "A9"]),
        (vec![("interaction", "search-type")], vec!["A2"]),
        (vec![("outcome", "failure")], vec!["A8", "A9"]),
        (vec![("decision", "deny")], vec!["A8", "A9"]),
        (vec![("purpose", "HRESCH")], vec!["A2"]),
    ] {
        let mut p = vec![("patient", sc.p1.as_str())];
        p.extend(extra.iter().cloned());
        let r = get(&app, &q("/v1/reports/patient-access", &p), Some(&officer)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            request_ids(&rows(&r.json())),
            set(&want),
            "filter {extra:?}"
        );
    }
    // The patient user given by fhirUser matches under both keys.
    let fu = format!("Patient/{}", sc.p1);
    let r = get(
        &app,
        &q(
            "/v1/reports/patient-access",
            &[("patient", &sc.p1), ("user", &fu)],
        ),
        Some(&officer),
    )
    .await;
    assert_eq!(
        request_ids(&rows(&r.json())),
        set(&["A3", "A6", "A7", "A8"])
    );

    // user-activity: every event type of the user.
    let r = get(
        &app,
        &q("/v1/reports/user-activity", &[("user", "dr-alice")]),
        Some(&officer),
    )
    .await;
    assert_eq!(r.status, 200);
    let keys: BTreeSet<String> = rows(&r.json())
        .iter()
        .map(|r| r["event_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: BTreeSet<String> = ["E1", "A1", "A2", "E8", "A5", "A9"]
        .iter()
        .map(|n| sc.keys[*n].clone())
        .collect();
    assert_eq!(keys, want);
    let r = get(
        &app,
        &q("/v1/reports/user-activity", &[("user", &sc.patient_sub)]),
        Some(&officer),
    )
    .await;
    let keys: BTreeSet<String> = rows(&r.json())
        .iter()
        .map(|r| r["event_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: BTreeSet<String> = ["E4", "A3", "E10", "A6", "A7", "A8"]
        .iter()
        .map(|n| sc.keys[*n].clone())
        .collect();
    assert_eq!(keys, want, "raw patient-user sub found under both keys");

    // token-trace by jti and by session.
    let j1 = format!("J1-{}", sc.tenant);
    let s1 = format!("S1-{}", sc.tenant);
    for sel in [("jti", j1.as_str()), ("session", s1.as_str())] {
        let r = get(
            &app,
            &q("/v1/reports/token-trace", &[sel]),
            Some(&responder),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let ev = rows(&body);
        let keys: BTreeSet<String> = ev
            .iter()
            .map(|r| r["event_key"].as_str().unwrap_or_default().to_owned())
            .collect();
        let want: BTreeSet<String> = ["E1", "A1", "A2", "E8", "A5", "A9"]
            .iter()
            .map(|n| sc.keys[*n].clone())
            .collect();
        assert_eq!(keys, want, "trace by {sel:?}");
        let flagged: BTreeMap<String, (bool, bool)> = ev
            .iter()
            .filter(|r| r["event_type"] == "custos.fhir.access")
            .map(|r| {
                (
                    request_ids(std::slice::from_ref(r))
                        .into_iter()
                        .next()
                        .unwrap_or_default(),
                    (
                        r["after_revocation"].as_bool().unwrap_or_default(),
                        r["after_expiry"].as_bool().unwrap_or_default(),
                    ),
                )
            })
            .collect();
        assert_eq!(flagged["A1"], (false, false));
        assert_eq!(flagged["A5"], (true, false));
        assert_eq!(flagged["A9"], (true, true));
        let tokens = body["tokens"].as_array().context("tokens")?;
        assert_eq!(tokens.len(), 1);
        let tk = &tokens[0];
        assert_eq!(tk["jti"], j1.as_str());
        assert_eq!(tk["issued_at"], "2026-03-01T10:00:00.000Z");
        assert_eq!(tk["revoked_at"], "2026-03-01T10:10:00.000Z");
        assert_eq!(tk["expires_at"], "2026-03-01T10:30:00.000Z");
        assert_eq!(tk["revocation_reason"], "incident");
        assert_eq!(tk["accesses"], 4);
        assert_eq!(tk["denied_accesses"], 1);
        assert_eq!(tk["accesses_after_revocation"], 2);
        assert_eq!(tk["accesses_after_expiry"], 1);
        assert_eq!(tk["ips"], json!(["10.0.0.5", "10.0.0.6", "10.9.9.9"]));
        assert_eq!(tk["operations_not_granted"], json!(["Patient.delete"]));
        assert_eq!(tk["scopes_unused"], json!(["user/Patient.r"]));
        assert_eq!(
            tk["flags"],
            json!([
                "used_after_revocation",
                "used_after_expiry",
                "scope_exceeded"
            ])
        );
    }

    // Disclosures: permitted, not to the patient, not TPO-only (A1, A5? A5 states no purpose).
    let r = get(
        &app,
        &q("/v1/reports/disclosures", &[("patient", &sc.p1)]),
        Some(&officer),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = rows(&r.json());
    let keys: BTreeSet<String> = d
        .iter()
        .map(|r| r["event_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        keys,
        ["A2", "A5"].iter().map(|n| sc.keys[*n].clone()).collect()
    );
    let a2 = d
        .iter()
        .find(|r| r["event_key"] == sc.keys["A2"].as_str())
        .context("A2")?;
    assert_eq!(a2["recipient_client"], "ehr-app");
    assert_eq!(a2["recipient_user"], "dr-alice");
    assert_eq!(a2["description"], "search-type Observation");
    assert_eq!(a2["purpose"], json!(["HRESCH"]));
    // Default window (six years back from now) still finds them.
    let r = get(
        &app,
        &url(
            "/v1/reports/disclosures",
            &[("tenant", ten), ("patient", &sc.p1)],
        ),
        Some(&officer),
    )
    .await;
    assert_eq!(rows(&r.json()).len(), 2);

    // Break-glass: the opening (with duration) and the BTG access.
    let r = get(&app, &q("/v1/reports/break-glass", &[]), Some(&officer)).await;
    assert_eq!(r.status, 200);
    let b = rows(&r.json());
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["kind"], "opened");
    assert_eq!(b[0]["event_key"], sc.keys["E6"].as_str());
    assert_eq!(b[0]["duration_secs"], 3600);
    assert_eq!(b[0]["reason"], "unconscious patient in ED");
    assert_eq!(b[1]["kind"], "access");
    assert_eq!(b[1]["event_key"], sc.keys["A4"].as_str());
    assert_eq!(b[1]["reason"], "unconscious patient in ED");
    let r = get(
        &app,
        &q("/v1/reports/break-glass", &[("patient", &sc.p2)]),
        Some(&officer),
    )
    .await;
    assert_eq!(
        rows(&r.json()).len(),
        2,
        "t1 opening and t2 access of the same patient"
    );
    let r = get(
        &app,
        &q("/v1/reports/break-glass", &[("patient", &sc.p1)]),
        Some(&officer),
    )
    .await;
    assert!(rows(&r.json()).is_empty());

    // Revocation violations: only A7 (A6 within grace, A8 denied, A3 before).
    for extra in [
        vec![],
        vec![("patient", sc.p1.as_str())],
        vec![("client", "patient-app")],
    ] {
        let r = get(
            &app,
            &q("/v1/reports/revocation-violations", &extra),
            Some(&privacy),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = rows(&r.json());
        assert_eq!(v.len(), 1, "{extra:?}: {v:?}");
        assert_eq!(v[0]["event_key"], sc.keys["A7"].as_str());
        assert_eq!(v[0]["revoked_at"], "2026-03-01T10:20:00.000Z");
        assert_eq!(v[0]["consent_id"], format!("C1-{}", sc.tenant));
    }

    // Consent history across the rotation.
    let r = get(
        &app,
        &q("/v1/reports/consent-history", &[("patient", &sc.p1)]),
        Some(&privacy),
    )
    .await;
    assert_eq!(r.status, 200);
    let c = rows(&r.json());
    let changes: Vec<&str> = c
        .iter()
        .map(|r| r["change"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(changes, ["granted", "revoked"]);
    assert_eq!(c[1]["reason"], "patient request");

    // FHIR AuditEvent search.
    let f = |extra: &[(&str, &str)]| {
        let mut p: Vec<(&str, &str)> = vec![
            ("tenant", ten),
            ("date", "ge2026-03-01"),
            ("date", "le2026-03-01"),
        ];
        p.extend_from_slice(extra);
        url("/fhir/AuditEvent", &p)
    };
    let names =
        |ns: &[&str]| -> BTreeSet<String> { ns.iter().map(|n| sc.keys[*n].clone()).collect() };
    let r = get(&app, &f(&[("patient", &sc.p1)]), Some(&officer)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type, "application/fhir+json");
    let b = r.json();
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "searchset");
    assert_eq!(
        entry_ids(&b),
        names(&["A1", "A2", "A3", "A5", "A6", "A7", "A8", "A9"])
    );
    let a1 = b["entry"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["resource"]["id"] == sc.keys["A1"].as_str())
        })
        .context("A1")?;
    let ev = &a1["resource"];
    assert_eq!(
        ev["meta"]["profile"][0],
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    );
    assert_eq!(ev["action"], "R");
    assert_eq!(ev["outcome"], "0");
    assert_eq!(ev["subtype"][0]["code"], "read");
    assert_eq!(ev["agent"][2]["who"]["identifier"]["value"], "dr-alice");
    assert_eq!(ev["agent"][2]["policy"][0], j1.as_str());
    assert_eq!(
        ev["entity"][0]["what"]["reference"],
        format!("Patient/{}", ps[0])
    );
    for (extra, want) in [
        (vec![("entity-type", "Patient")], vec!["A3", "A9"]),
        (vec![("action", "D")], vec!["A9"]),
        (vec![("outcome", "4")], vec!["A8", "A9"]),
        (vec![("subtype", "search-type")], vec!["A2"]),
        (vec![("agent", "dr-alice")], vec!["A1", "A2", "A5", "A9"]),
        (
            vec![
                ("date", "ge2026-03-01T10:05:00Z"),
                ("date", "le2026-03-01T10:30:00Z"),
            ],
            vec!["A5", "A6", "A7", "A8"],
        ),
    ] {
        let mut p = vec![("patient", sc.p1.as_str())];
        p.extend(extra.iter().cloned());
        let r = get(&app, &f(&p), Some(&officer)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(entry_ids(&r.json()), names(&want), "fhir {extra:?}");
    }
    // _count and next links walk every match once.
    let mut next = Some(f(&[("patient", &sc.p1), ("_count", "3")]));
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(u) = next.take() {
        let r = get(&app, &u, Some(&officer)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let b = r.json();
        seen.extend(entry_ids(&b));
        pages += 1;
        next = b["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(|s| s.trim_start_matches("http://127.0.0.1:8088").to_owned());
        assert!(pages < 10);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 8);
    assert_eq!(
        seen.iter().cloned().collect::<BTreeSet<_>>(),
        names(&["A1", "A2", "A3", "A5", "A6", "A7", "A8", "A9"])
    );
    Ok(())
}

/// Values of a JSON row in CSV form (arrays space-joined, null empty).
fn csv_cells(row: &Value, header: &[String]) -> Vec<String> {
    header
        .iter()
        .map(|h| match &row[h] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            v => v.to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_has_no_gaps_or_repeats_and_exports_equal_json() -> Result<()> {
    let sc = scenario();
    let app = app();
    let officer = token("officer-pages", &["compliance_officer"]);
    let base = [
        ("tenant", sc.tenant.as_str()),
        ("from", DAY_FROM),
        ("to", DAY_TO),
        ("patient", sc.p3.as_str()),
    ];
    let all = get(
        &app,
        &url("/v1/reports/patient-access", &base),
        Some(&officer),
    )
    .await
    .json();
    let all = rows(&all);
    assert_eq!(all.len(), 25);
    // Two rows share each half-minute? No: one per 30 s, split across both keys.
    let mut walked: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut p = base.to_vec();
        p.push(("limit", "7"));
        let c;
        if let Some(cur) = &cursor {
            c = cur.clone();
            p.push(("cursor", &c));
        }
        let r = get(&app, &url("/v1/reports/patient-access", &p), Some(&officer)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let page = rows(&body);
        assert!(page.len() <= 7);
        walked.extend(page);
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(pages, 4);
    assert_eq!(walked, all, "pages concatenated equal the whole result");
    let keys: BTreeSet<&str> = walked
        .iter()
        .filter_map(|r| r["event_key"].as_str())
        .collect();
    assert_eq!(keys.len(), 25, "no repeats");

    // CSV equals JSON, for the rotated patient set and for P1.
    for patient in [sc.p3.as_str(), sc.p1.as_str()] {
        let p = [
            ("tenant", sc.tenant.as_str()),
            ("from", DAY_FROM),
            ("to", DAY_TO),
            ("patient", patient),
        ];
        let json_rows = rows(
            &get(&app, &url("/v1/reports/patient-access", &p), Some(&officer))
                .await
                .json(),
        );
        let mut pc = p.to_vec();
        pc.push(("format", "csv"));
        let r = get(
            &app,
            &url("/v1/reports/patient-access", &pc),
            Some(&officer),
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("text/csv"));
        let mut rdr = csv::Reader::from_reader(r.body.as_slice());
        let header: Vec<String> = rdr.headers()?.iter().map(str::to_owned).collect();
        assert_eq!(header[0], "event_key");
        let csv_rows: Vec<Vec<String>> = rdr
            .records()
            .map(|r| r.map(|r| r.iter().map(str::to_owned).collect()))
            .collect::<Result<_, _>>()?;
        let want: Vec<Vec<String>> = json_rows.iter().map(|r| csv_cells(r, &header)).collect();
        assert_eq!(csv_rows, want);
        let mut pn = p.to_vec();
        pn.push(("format", "ndjson"));
        let r = get(
            &app,
            &url("/v1/reports/patient-access", &pn),
            Some(&officer),
        )
        .await;
        assert_eq!(r.content_type, "application/x-ndjson");
        let lines: Vec<Value> = r
            .text()
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(lines, json_rows);
    }
    // Every report exports CSV with as many records as its JSON has rows.
    let j1 = format!("J1-{}", sc.tenant);
    for (path, extra) in [
        ("/v1/reports/user-activity", vec![("user", "dr-alice")]),
        ("/v1/reports/token-trace", vec![("jti", j1.as_str())]),
        ("/v1/reports/disclosures", vec![("patient", sc.p1.as_str())]),
        ("/v1/reports/break-glass", vec![]),
    ] {
        let mut p = vec![
            ("tenant", sc.tenant.as_str()),
            ("from", DAY_FROM),
            ("to", DAY_TO),
        ];
        p.extend(extra);
        let n = rows(
            &get(
                &app,
                &url(path, &p),
                Some(&token("auditor-x", &["auditor"])),
            )
            .await
            .json(),
        )
        .len();
        p.push(("format", "csv"));
        let r = get(
            &app,
            &url(path, &p),
            Some(&token("auditor-x", &["auditor"])),
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        let count = csv::Reader::from_reader(r.body.as_slice())
            .records()
            .count();
        assert_eq!(count, n, "{path}");
        assert!(n > 0, "{path}");
    }
    Ok(())
}

const ROLES: [&str; 5] = [
    "compliance_officer",
    "privacy_officer",
    "incident_responder",
    "auditor",
    "none",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() -> Result<()> {
    ensure_schema()?;
    let app = app();
    let ten = unique("qr");
    let t = ten.as_str();
    let endpoints: Vec<(String, &[&str])> = vec![
        (
            url(
                "/v1/reports/patient-access",
                &[("tenant", t), ("patient", "x")],
            ),
            &["compliance_officer", "auditor"],
        ),
        (
            url("/v1/reports/user-activity", &[("tenant", t), ("user", "x")]),
            &["compliance_officer", "auditor"],
        ),
        (
            url(
                "/v1/reports/disclosures",
                &[("tenant", t), ("patient", "x")],
            ),
            &["compliance_officer", "auditor"],
        ),
        (
            url("/v1/reports/break-glass", &[("tenant", t)]),
            &["compliance_officer", "auditor"],
        ),
        (
            url("/fhir/AuditEvent", &[("tenant", t), ("patient", "x")]),
            &["compliance_officer", "auditor"],
        ),
        (
            url("/v1/reports/token-trace", &[("tenant", t), ("jti", "x")]),
            &["incident_responder", "auditor"],
        ),
        (
            url("/v1/reports/revocation-violations", &[("tenant", t)]),
            &["privacy_officer", "auditor"],
        ),
        (
            url(
                "/v1/reports/consent-history",
                &[("tenant", t), ("patient", "x")],
            ),
            &["privacy_officer", "auditor"],
        ),
        (
            url("/v1/reports/query-audit", &[("tenant", t)]),
            &["auditor"],
        ),
    ];
    for (path, allowed) in &endpoints {
        for role in ROLES {
            let tok = token(&format!("matrix-{role}"), &[role]);
            let r = get(&app, path, Some(&tok)).await;
            let want = if allowed.contains(&role) { 200 } else { 403 };
            assert_eq!(r.status.as_u16(), want, "{role} on {path}: {}", r.text());
            if want == 403 && path.starts_with("/fhir/") {
                // FHIR clients get an OperationOutcome (query_fhir.rs covers the rest).
                assert_eq!(r.content_type, "application/fhir+json");
                assert_eq!(r.json()["issue"][0]["code"], "forbidden");
            } else if want == 403 {
                assert_eq!(r.content_type, "application/problem+json");
                assert_eq!(r.json()["status"], 403);
            }
        }
        let r = get(&app, path, None).await;
        assert_eq!(r.status, 401, "anonymous on {path}");
    }
    // Unauthenticated operational endpoints.
    assert_eq!(get(&app, "/healthz", None).await.status, 200);
    let r = get(&app, "/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = get(&app, "/openapi.json", None).await.json();
    for p in [
        "/v1/reports/patient-access",
        "/v1/reports/token-trace",
        "/fhir/AuditEvent",
        "/v1/reports/query-audit",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from OpenAPI");
    }
    // `/metrics` is served on the admin address only (see query_hardening.rs).
    assert_eq!(get(&app, "/metrics", None).await.status, 404);
    assert_eq!(get(&app, "/nope", None).await.status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_claim_binds_every_tenant_scoped_endpoint() -> Result<()> {
    ensure_schema()?;
    let app = app_with(&["--oidc-tenants-claim", "custos.tenants"]);
    let mine = unique("qtm");
    let other = unique("qto");
    let bound = |sub: &str, tenants: Value| {
        let mut c = claims(sub, &["auditor"]);
        c["custos"] = json!({ "tenants": tenants });
        sign(Algorithm::RS256, "rsa-1", &c)
    };
    let mine_only = bound("tenant-bound", json!([mine]));
    let unbound = token("no-tenant-claim", &["auditor"]);
    for t in [mine.as_str(), other.as_str()] {
        let paths = [
            url(
                "/v1/reports/patient-access",
                &[("tenant", t), ("patient", "x")],
            ),
            url("/v1/reports/user-activity", &[("tenant", t), ("user", "x")]),
            url(
                "/v1/reports/disclosures",
                &[("tenant", t), ("patient", "x")],
            ),
            url("/v1/reports/break-glass", &[("tenant", t)]),
            url("/v1/reports/token-trace", &[("tenant", t), ("jti", "x")]),
            url("/v1/reports/revocation-violations", &[("tenant", t)]),
            url(
                "/v1/reports/consent-history",
                &[("tenant", t), ("patient", "x")],
            ),
            url("/v1/reports/query-audit", &[("tenant", t)]),
            url("/fhir/AuditEvent", &[("tenant", t), ("patient", "x")]),
        ];
        for path in &paths {
            let want = if t == mine { 200 } else { 403 };
            let r = get(&app, path, Some(&mine_only)).await;
            assert_eq!(r.status.as_u16(), want, "{path}: {}", r.text());
            // A token without the claim reads no tenant once the claim is configured.
            let r = get(&app, path, Some(&unbound)).await;
            assert_eq!(r.status, 403, "{path} without the claim: {}", r.text());
            let want_type = if path.starts_with("/fhir/") {
                "application/fhir+json"
            } else {
                "application/problem+json"
            };
            assert_eq!(r.content_type, want_type);
        }
    }
    // Integrity chains span every tenant: refused to a tenant-bound token.
    let r = get(&app, "/v1/integrity/verify", Some(&mine_only)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A space-separated claim works like an array.
    let spaced = bound("tenant-bound-2", json!(format!("{other} {mine}")));
    let r = get(
        &app,
        &url("/v1/reports/break-glass", &[("tenant", &other)]),
        Some(&spaced),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_attacks_are_rejected() -> Result<()> {
    ensure_schema()?;
    let app = app();
    let ten = unique("qj");
    let path = url("/v1/reports/break-glass", &[("tenant", &ten)]);
    let good = claims("jwt-tester", &["auditor"]);
    // Controls: RS256 and ES256 tokens from the JWKS keys pass.
    assert_eq!(
        get(&app, &path, Some(&sign(Algorithm::RS256, "rsa-1", &good)))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&app, &path, Some(&sign(Algorithm::ES256, "ec-1", &good)))
            .await
            .status,
        200
    );

    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"})),
        b64(&good)
    );
    let hs_with_public = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &good,
        &EncodingKey::from_secret(&fixture("rsa_public.pem")),
    )?;
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    expired["nbf"] = json!(now() - 7200);
    let mut not_yet = good.clone();
    not_yet["nbf"] = json!(now() + 3600);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example/realms/general");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("some-other-api");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().context("claims")?.remove("exp");
    let valid = sign(Algorithm::RS256, "rsa-1", &good);
    let (head, sig) = valid.rsplit_once('.').context("jwt")?;
    let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig)?;
    sig_bytes[10] ^= 0x01;
    let altered_sig = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig_bytes));
    let (h, rest) = valid.split_once('.').context("jwt")?;
    let (_, s) = rest.split_once('.').context("jwt")?;
    let mut elevated = good.clone();
    elevated["sub"] = json!("someone-else");
    let altered_claims = format!("{h}.{}.{s}", b64(&elevated));
    let attacks = [
        ("alg none", none),
        ("HS256 keyed with the RSA public key", hs_with_public),
        ("expired", sign(Algorithm::RS256, "rsa-1", &expired)),
        ("not yet valid", sign(Algorithm::RS256, "rsa-1", &not_yet)),
        ("wrong iss", sign(Algorithm::RS256, "rsa-1", &wrong_iss)),
        ("wrong aud", sign(Algorithm::RS256, "rsa-1", &wrong_aud)),
        ("no exp", sign(Algorithm::RS256, "rsa-1", &no_exp)),
        ("unknown kid", sign(Algorithm::RS256, "rotated-away", &good)),
        (
            "EC kid with an RSA signature",
            sign(Algorithm::RS256, "ec-1", &good),
        ),
        ("altered signature", altered_sig),
        ("altered claims", altered_claims),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, tok) in attacks {
        let r = get(&app, &path, Some(&tok)).await;
        assert_eq!(r.status, 401, "{name} was not rejected: {}", r.text());
        assert_eq!(r.content_type, "application/problem+json", "{name}");
        assert!(!r.text().contains(&tok), "{name}: token echoed");
    }
    Ok(())
}

const INJECTIONS: [&str; 9] = [
    "' OR 1=1 --",
    "x'); DROP TABLE custos.audit_events; --",
    "\\' OR ''='",
    "\" OR \"\"=\"",
    "1; SELECT * FROM system.users",
    "{tenant:String}",
    "? OR 1=1",
    "%27%20OR%201%3D1",
    "Patient/1' UNION SELECT name FROM system.tables --",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_injection_strings_are_harmless() -> Result<()> {
    let sc = scenario();
    let app = app();
    let auditor = token("auditor-inject", &["auditor"]);
    let before: u64 = admin()
        .query("SELECT count() FROM custos.audit_events FINAL WHERE tenant = ?")
        .bind(&sc.tenant)
        .fetch_one()
        .await?;
    let endpoints: Vec<(&str, Vec<&str>)> = vec![
        (
            "/v1/reports/patient-access",
            vec![
                "patient",
                "tenant",
                "from",
                "to",
                "user",
                "client",
                "resource_type",
                "interaction",
                "outcome",
                "purpose",
                "decision",
                "limit",
                "cursor",
                "format",
            ],
        ),
        (
            "/v1/reports/user-activity",
            vec![
                "user",
                "tenant",
                "event_type",
                "client",
                "resource_type",
                "interaction",
                "outcome",
            ],
        ),
        ("/v1/reports/token-trace", vec!["jti", "session", "client"]),
        ("/v1/reports/disclosures", vec!["patient", "client"]),
        ("/v1/reports/break-glass", vec!["patient", "user"]),
        (
            "/v1/reports/revocation-violations",
            vec!["patient", "client"],
        ),
        ("/v1/reports/consent-history", vec!["patient", "client"]),
        (
            "/v1/reports/query-audit",
            vec!["caller", "report", "tenant"],
        ),
        (
            "/fhir/AuditEvent",
            vec![
                "patient",
                "agent",
                "entity-type",
                "date",
                "action",
                "outcome",
                "subtype",
                "_count",
                "_cursor",
                "tenant",
            ],
        ),
    ];
    let mut checked = 0;
    for (path, names) in &endpoints {
        for name in names {
            for evil in INJECTIONS {
                // Keep the other required parameter valid so the evil one is what is tested.
                let mut p: Vec<(&str, &str)> = vec![("from", DAY_FROM), ("to", DAY_TO)];
                if *name != "tenant" {
                    p.push(("tenant", &sc.tenant));
                }
                let needs_patient = matches!(
                    *path,
                    "/v1/reports/patient-access"
                        | "/v1/reports/disclosures"
                        | "/v1/reports/consent-history"
                );
                if needs_patient && *name != "patient" {
                    p.push(("patient", &sc.p1));
                }
                if *path == "/v1/reports/user-activity" && *name != "user" {
                    p.push(("user", "dr-alice"));
                }
                if *path == "/fhir/AuditEvent" {
                    p.retain(|(k, _)| *k == "tenant");
                }
                p.push((name, evil));
                let r = get(&app, &url(path, &p), Some(&auditor)).await;
                match r.status.as_u16() {
                    400 if *path == "/fhir/AuditEvent" => {
                        assert_eq!(r.content_type, "application/fhir+json")
                    }
                    400 => assert_eq!(r.content_type, "application/problem+json"),
                    200 => {
                        let b = r.json();
                        let n = b["rows"]
                            .as_array()
                            .or(b["entry"].as_array())
                            .map_or(0, Vec::len);
                        // A hostile value never widens a result: it matches nothing
                        // (the tenant, query-audit and caller filters see no such value).
                        assert_eq!(n, 0, "{path} {name}={evil} returned rows");
                    }
                    s => panic!("{path} {name}={evil}: status {s}: {}", r.text()),
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 400);
    let after: u64 = admin()
        .query("SELECT count() FROM custos.audit_events FINAL WHERE tenant = ?")
        .bind(&sc.tenant)
        .fetch_one()
        .await?;
    assert_eq!(before, after, "audit rows intact");
    let tables: u64 = admin()
        .query("SELECT count() FROM system.tables WHERE database = 'custos' AND name IN ('audit_events', 'report_queries')")
        .fetch_one()
        .await?;
    assert_eq!(tables, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_problems() -> Result<()> {
    ensure_schema()?;
    let app = app();
    let auditor = token("auditor-bad", &["auditor"]);
    let cases: Vec<String> = vec![
        url("/v1/reports/patient-access", &[]),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("from", "yesterday")],
        ),
        url(
            "/v1/reports/patient-access",
            &[
                ("patient", "p"),
                ("from", "2026-03-02"),
                ("to", "2026-03-01"),
            ],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("limit", "0")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("limit", "100000")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("limit", "ten")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("format", "xml")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("cursor", "garbage")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("tenant", "no spaces")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("interaction", "drop")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("outcome", "maybe")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("unknown", "1")],
        ),
        url("/v1/reports/patient-access", &[("patient", "a\u{7}b")]),
        url(
            "/v1/reports/user-activity",
            &[("user", "u"), ("event_type", "custos.nope")],
        ),
        url("/v1/reports/token-trace", &[]),
        url("/v1/reports/token-trace", &[("jti", "a"), ("client", "b")]),
        url("/v1/reports/disclosures", &[]),
        url("/v1/reports/consent-history", &[]),
        url("/fhir/AuditEvent", &[("date", "xx2026")]),
        url("/fhir/AuditEvent", &[("action", "Z")]),
        url("/fhir/AuditEvent", &[("_count", "0")]),
        url("/fhir/AuditEvent", &[("_sort", "-date")]),
    ];
    for path in &cases {
        let r = get(&app, path, Some(&auditor)).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let b = r.json();
        if path.starts_with("/fhir/") {
            // An OperationOutcome for FHIR clients.
            assert_eq!(r.content_type, "application/fhir+json", "{path}");
            assert_eq!(b["issue"][0]["code"], "invalid");
            assert!(b["issue"][0]["diagnostics"].is_string());
            continue;
        }
        assert_eq!(r.content_type, "application/problem+json", "{path}");
        assert_eq!(b["status"], 400);
        assert!(b["title"].is_string() && b["type"].is_string() && b["detail"].is_string());
    }
    // The detail names the parameter, never its value.
    let r = get(
        &app,
        &url(
            "/v1/reports/patient-access",
            &[("patient", "RAWPAT-secret\u{1}")],
        ),
        Some(&auditor),
    )
    .await;
    assert!(!r.text().contains("RAWPAT-secret"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_queries_are_audited_with_pseudonymized_parameters() -> Result<()> {
    let sc = scenario();
    let app = app();
    let sub = format!("officer-audit-{}", sc.tenant);
    let officer = token(&sub, &["compliance_officer"]);
    let p = [
        ("tenant", sc.tenant.as_str()),
        ("from", DAY_FROM),
        ("to", DAY_TO),
        ("patient", sc.p1.as_str()),
    ];
    let r = get(&app, &url("/v1/reports/patient-access", &p), Some(&officer)).await;
    assert_eq!(r.status, 200);
    let answered = r.json();
    let qid = answered["query_id"]
        .as_str()
        .context("query_id")?
        .to_owned();
    let mut pc = p.to_vec();
    pc.push(("format", "csv"));
    let csv = get(
        &app,
        &url("/v1/reports/patient-access", &pc),
        Some(&officer),
    )
    .await;
    assert_eq!(csv.status, 200);
    // A refused request is recorded too.
    let r = get(&app, &url("/v1/reports/query-audit", &[]), Some(&officer)).await;
    assert_eq!(r.status, 403);

    let auditor = token("auditor-audit", &["auditor"]);
    let ring = ring();
    let want_ps = ring.pseudonymize(&sc.tenant, PseudonymKind::Patient, &sc.p1);
    let mut found = Vec::new();
    for _ in 0..40 {
        let r = get(
            &app,
            &url("/v1/reports/query-audit", &[("caller", &sub)]),
            Some(&auditor),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        found = rows(&r.json());
        let statuses: BTreeSet<&str> = found.iter().filter_map(|r| r["status"].as_str()).collect();
        if statuses.contains("complete") && statuses.contains("forbidden") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answered_row = found
        .iter()
        .find(|r| r["query_id"] == qid.as_str())
        .context("answered record")?;
    assert_eq!(answered_row["report"], "patient-access");
    assert_eq!(answered_row["status"], "answered");
    assert_eq!(answered_row["rows_returned"], 8);
    assert_eq!(answered_row["caller_roles"], json!(["compliance_officer"]));
    assert_eq!(answered_row["tenant"], sc.tenant.as_str());
    let params: Value =
        serde_json::from_str(answered_row["parameters"].as_str().context("parameters")?)?;
    assert_eq!(params["patient"], want_ps.as_str());
    let export = found
        .iter()
        .find(|r| r["format"] == "csv")
        .context("export record")?;
    assert_eq!(export["status"], "complete");
    assert_eq!(export["rows_returned"], 8);
    assert!(found
        .iter()
        .any(|r| r["status"] == "forbidden" && r["report"] == "query-audit"));
    // No raw patient id anywhere in the query audit.
    let leaks: u64 = admin()
        .query("SELECT count() FROM custos.report_queries WHERE position(parameters, ?) > 0")
        .bind(&sc.p1)
        .fetch_one()
        .await?;
    assert_eq!(leaks, 0);
    // The query audit is paged like the other reports.
    let r = get(
        &app,
        &url(
            "/v1/reports/query-audit",
            &[("caller", &sub), ("limit", "1")],
        ),
        Some(&auditor),
    )
    .await;
    let b = r.json();
    assert_eq!(rows(&b).len(), 1);
    assert!(b["next_cursor"].is_string());
    Ok(())
}

/// Query-audit rows (`FINAL`: the latest version) of `caller`: (query_id, status, rows).
async fn audit_now(caller: &str) -> Result<Vec<(String, String, u64)>> {
    Ok(admin()
        .query(
            "SELECT query_id, status, rows_returned FROM custos.report_queries FINAL \
             WHERE caller_sub = ? ORDER BY query_id",
        )
        .bind(caller)
        .fetch_all()
        .await?)
}

/// The query-audit report's rows of `caller`, read by an auditor named `auditor`.
async fn query_audit_of(app: &Router, caller: &str, auditor: &str) -> Vec<Value> {
    let bearer = token(auditor, &["auditor"]);
    let r = get(
        app,
        &url("/v1/reports/query-audit", &[("caller", caller)]),
        Some(&bearer),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    rows(&r.json())
}

/// [`audit_now`], waiting (up to 15 s) until `n` rows all have `status`.
async fn audit_rows(caller: &str, n: usize, status: &str) -> Result<Vec<(String, String, u64)>> {
    let start = std::time::Instant::now();
    loop {
        let rows = audit_now(caller).await?;
        let settled = rows.len() >= n && rows.iter().all(|r| r.1 == status);
        if settled || start.elapsed() > Duration::from_secs(15) {
            return Ok(rows);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_audit_is_fail_closed_and_keeps_one_row_per_query() -> Result<()> {
    let sc = scenario();
    let p = [
        ("tenant", sc.tenant.as_str()),
        ("from", DAY_FROM),
        ("to", DAY_TO),
        ("patient", sc.p1.as_str()),
    ];
    let sub = format!("officer-gc-{}", sc.tenant);
    let officer = token(&sub, &["compliance_officer"]);

    // No durable asked record, no answer: JSON and exports alike.
    let broken = app_with(&["--writer-password", "not-the-writer-password"]);
    for format in ["json", "csv"] {
        let mut pf = p.to_vec();
        pf.push(("format", format));
        let r = get(
            &broken,
            &url("/v1/reports/patient-access", &pf),
            Some(&officer),
        )
        .await;
        assert_eq!(r.status, 503, "{format}: {}", r.text());
        assert_eq!(r.content_type, "application/problem+json");
        assert!(r.text().contains("audit-unavailable"), "{}", r.text());
        assert!(
            !r.text().contains(&sc.keys["A1"]),
            "rows leaked without a record"
        );
    }

    // Concurrent answers: each request has exactly one row in the query audit, its final
    // version (`answered`, rows returned), by FINAL and by argMax over recorded_at alike.
    let app = app_with(&["--audit-linger-ms", "5"]);
    let u = url("/v1/reports/patient-access", &p);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (app, u, t) = (app.clone(), u.clone(), officer.clone());
        tasks.push(tokio::spawn(async move { get(&app, &u, Some(&t)).await }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        let r = t.await?;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(rows(&r.json()).len(), 8);
        ids.insert(
            r.json()["query_id"]
                .as_str()
                .context("query_id")?
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 16);
    let found = audit_rows(&sub, 16, "answered").await?;
    assert_eq!(found.len(), 16, "{found:?}");
    for (qid, status, n) in &found {
        assert!(ids.contains(qid), "unexpected record {qid}");
        assert_eq!((status.as_str(), *n), ("answered", 8), "{qid}");
    }
    let latest: Vec<(String, String)> = admin()
        .query(
            "SELECT query_id, argMax(status, recorded_at) FROM custos.report_queries \
             WHERE caller_sub = ? GROUP BY query_id ORDER BY query_id",
        )
        .bind(&sub)
        .fetch_all()
        .await?;
    assert_eq!(latest.len(), 16);
    assert!(latest.iter().all(|(_, s)| s == "answered"), "{latest:?}");
    let listed = query_audit_of(&app, &sub, "auditor-gc").await;
    assert_eq!(listed.len(), 16);
    assert!(listed.iter().all(|r| r["status"] == "answered"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_audit_group_commits_and_shows_unfinished_requests() -> Result<()> {
    use custos_auth::audit::{Asked, GroupCommit, QueryAudit};
    use custos_auth::oidc::{Caller, Role};
    ensure_schema()?;
    let writer = account("query").with_database("custos");
    let audit = QueryAudit::with_group_commit(
        writer,
        GroupCommit {
            max_rows: 256,
            linger: Duration::from_millis(5),
            // Long enough that the next awaited record always arrives within it.
            final_linger: Duration::from_secs(5),
            queue: 1024,
        },
    );
    let sub = unique("crashed-officer");
    let caller = Caller {
        sub: sub.clone(),
        issuer: "https://as.test".into(),
        client: "app".into(),
        username: None,
        roles: vec![Role::ComplianceOfficer],
        tenants: None,
    };
    // 32 requests' asked records at once, each acknowledged; no final version follows, as
    // after a crash between the two phases.
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let (audit, caller) = (audit.clone(), caller.clone());
        tasks.push(tokio::spawn(async move {
            let asked = Asked::new(&caller, "patient-access", "t", json!({ "i": i }), "json");
            audit.write(&asked.record("answering", 0)).await?;
            anyhow::Ok(asked.query_id)
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        ids.insert(t.await??);
    }
    assert_eq!(ids.len(), 32);
    let inserts = audit.inserts();
    assert!(
        (1..=8).contains(&inserts),
        "32 concurrent records took {inserts} INSERTs"
    );
    // Acknowledged means stored: every record is there at once, and stays visible as
    // `answering` in the query-audit report.
    let stored = audit_now(&sub).await?;
    assert_eq!(stored.len(), 32, "{stored:?}");
    assert!(stored
        .iter()
        .all(|r| ids.contains(&r.0) && r.1 == "answering"));
    let listed = query_audit_of(&app(), &sub, "auditor-crash").await;
    assert_eq!(listed.len(), 32);
    assert!(listed
        .iter()
        .all(|r| r["status"] == "answering" && r["rows_returned"] == 0));
    // A later version replaces the first.
    let one = Asked::new(&caller, "patient-access", "t", json!({}), "json");
    audit.write(&one.record("answering", 0)).await?;
    audit.submit(&one.record("answered", 5)).await;
    audit.flush().await;
    let after = audit_now(&sub).await?;
    assert_eq!(after.len(), 33);
    // A final record waits for the next awaited one and shares its INSERT.
    let two = Asked::new(&caller, "patient-access", "t", json!({}), "json");
    audit.write(&two.record("answering", 0)).await?;
    let before = audit.inserts();
    audit.submit(&two.record("answered", 2)).await;
    let three = Asked::new(&caller, "patient-access", "t", json!({}), "json");
    audit.write(&three.record("answering", 0)).await?;
    assert_eq!(audit.inserts() - before, 1, "final record rode along");
    audit.flush().await;
    let latest = audit_now(&sub).await?;
    let status_of = |q: &str| latest.iter().find(|r| r.0 == q).map(|r| (r.1.clone(), r.2));
    assert_eq!(status_of(&two.query_id), Some(("answered".to_owned(), 2)));
    assert_eq!(
        status_of(&three.query_id),
        Some(("answering".to_owned(), 0))
    );
    let mine: Vec<_> = after.iter().filter(|r| r.0 == one.query_id).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].1.as_str(), mine[0].2), ("answered", 5));
    Ok(())
}
