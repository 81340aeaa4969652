//! The query API's report tests (`query_reports.rs`, `query_pages.rs`, `query_access.rs`,
//! `query_input.rs`, `query_audit.rs`) read one scenario of data that went through the real
//! pipeline: CloudEvents produced to fresh Kafka topics, stored by the real `custos-ingest`
//! (a first part with key `t1` only, a second part after rotating to `t2`), then read
//! through `custos_query::app` in-process, authenticated with JWTs signed by test keys and
//! verified against the in-test issuer ([`super::issuer`]).
//!
//! Every assertion is scoped to the scenario's tenant (a unique CloudEvents `tenant`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use axum::Router;
use custos_schemas::KeyRing;
use custos_tests::*;
use serde_json::{json, Value};

use super::ensure_schema;

/// `iss` of the scenario's access events.
pub const ISS_AS: &str = "https://as.test/realms/general";
/// Start of the scenario's day.
pub const DAY_FROM: &str = "2026-03-01T00:00:00Z";
/// End of the scenario's day.
pub const DAY_TO: &str = "2026-03-02T00:00:00Z";
/// Only the first key: the state before the rotation.
pub const KEY_T1: &str = "t1=5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";

/// The query API for the in-test issuer.
pub fn app() -> Router {
    super::app(&[])
}

/// The query API for the in-test issuer, with extra arguments.
pub fn app_with(extra: &[&str]) -> Router {
    super::app(extra)
}

/// The request ids of access rows (the scenario names every access `A<n>`).
pub fn request_ids(rows: &[Value]) -> BTreeSet<String> {
    rows.iter()
        .filter_map(|r| r["request_id"].as_str())
        .filter(|s| !s.is_empty())
        .map(|s| s.rsplit('-').next().unwrap_or(s).to_owned())
        .collect()
}

/// A set of strings.
pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------- the scenario

/// What the seeded scenario holds.
pub struct Scenario {
    /// Its tenant.
    pub tenant: String,
    /// Raw ids of its three patients.
    pub p1: String,
    /// See `p1`.
    pub p2: String,
    /// See `p1`.
    pub p3: String,
    /// The AS subject of the patient user.
    pub patient_sub: String,
    /// Event key of each named event (`E1`.., `A1`..).
    pub keys: BTreeMap<String, String>,
}

/// A CloudEvent of the scenario.
pub fn ce(tenant: &str, id: &str, ty: &str, time: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "//custos.test/query", "type": ty,
        "time": time, "datacontenttype": "application/json", "tenant": tenant, "data": data})
}

/// A time of the scenario's day (`hh:mm:ss`).
pub fn t(hms: &str) -> String {
    format!("2026-03-01T{hms}Z")
}

/// A named FHIR access event of the scenario.
#[allow(clippy::too_many_arguments)]
pub fn access(
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

/// The scenario being built: its tag and tenant.
pub struct Sc {
    tag: String,
    tenant: String,
}

/// The scenario, seeded once per test binary.
pub fn scenario() -> &'static Scenario {
    static SCENARIO: OnceLock<Scenario> = OnceLock::new();
    SCENARIO.get_or_init(|| super::seeded(seed))
}

/// Seeds the scenario through the real ingest (before and after the key rotation).
pub async fn seed() -> Result<Scenario> {
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
        super::ingest_all(&format!("qa{part}"), &env, &msgs).await?;
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

/// The test key ring (both keys).
/// this test needs (versions up to 4) may still be there: then go on, else fail.
pub fn ring() -> KeyRing {
    KeyRing::parse(TEST_KEYS, None).expect("keys")
}
