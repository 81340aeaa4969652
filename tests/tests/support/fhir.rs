//! The FHIR endpoint's tests (`query_fhir*.rs`): their OpenID issuer (whose discovery
//! document also names authorization and token endpoints), the app and tokens for it, the
//! OperationOutcome check, and the scenario every test reads: FHIR access events of two
//! tenants stored through Kafka and the real `custos-ingest`.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use axum::http::Method;
use axum::Router;
use custos_tests::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use super::{claims_of, send, sign, Resp, TestIssuer};

/// The role of the FHIR tests' callers.
pub const COMPLIANCE: &[&str] = &["compliance_officer"];
/// Accesses seeded in the main tenant (more than one page of the client's `_count`).
pub const ACCESSES: usize = 23;

// ---------------------------------------------------------------- issuer, app, tokens

/// Base URL of the in-test OpenID issuer: discovery (with OAuth endpoints) and JWKS.
pub fn issuer() -> &'static str {
    static ISSUER: OnceLock<TestIssuer> = OnceLock::new();
    &ISSUER
        .get_or_init(|| {
            TestIssuer::start(|base| {
                json!({"authorization_endpoint": format!("{base}/protocol/openid-connect/auth"),
                "token_endpoint": format!("{base}/protocol/openid-connect/token"),
                "revocation_endpoint": "http://as.example/not-https-off-loopback"})
            })
        })
        .base
}

/// The query API with `public_url` and extra arguments.
pub fn app_at(public_url: &str, extra: &[&str]) -> Router {
    super::app_at(issuer(), public_url, extra)
}

/// The query API for [`issuer`] at the default public URL, with extra arguments.
pub fn app(extra: &[&str]) -> Router {
    app_at("http://127.0.0.1:8088", extra)
}

/// An access token of this test's issuer; `tenants` fills the `tenants` claim.
pub fn token_for(sub: &str, roles: &[&str], tenants: Option<&[&str]>) -> String {
    let mut c = claims_of(issuer(), "fhir-client", sub, roles);
    if let Some(t) = tenants {
        c["tenants"] = json!(t);
    }
    sign(Algorithm::RS256, "rsa-1", &c)
}

/// An access token of [`issuer`] for `sub` with `roles`.
pub fn token(sub: &str, roles: &[&str]) -> String {
    token_for(sub, roles, None)
}

/// GET through the in-process app.
pub async fn get(app: &Router, path: &str, bearer: Option<&str>) -> Resp {
    send(app, Method::GET, path, bearer, &[]).await
}

/// Asserts an OperationOutcome answer of `status` with issue type `code`; returns the
/// diagnostics.
pub fn assert_outcome(r: &Resp, status: u16, code: &str, what: &str) -> String {
    assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
    assert_eq!(r.content_type, "application/fhir+json", "{what}");
    let oo = r.json();
    assert_eq!(oo["resourceType"], "OperationOutcome", "{what}");
    let issue = &oo["issue"][0];
    assert_eq!(issue["code"], code, "{what}: {oo}");
    assert!(
        matches!(issue["severity"].as_str(), Some("error" | "fatal")),
        "{what}: {oo}"
    );
    issue["diagnostics"].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------- the scenario

/// What the seeded scenario holds.
pub struct Scenario {
    /// Tenant of the main accesses.
    pub tenant: String,
    /// A second tenant with two accesses.
    pub other: String,
    /// Raw id of the patient of the main accesses.
    pub patient: String,
    /// Event keys of the main accesses, in time order.
    pub keys: Vec<String>,
    /// Event keys of the other tenant's accesses.
    pub other_keys: Vec<String>,
}

/// A FHIR access event (CloudEvent) of `tenant` about `patient`.
pub fn access(
    tenant: &str,
    id: &str,
    time: &str,
    patient: &str,
    interaction: &str,
    ok: bool,
) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "//custos.test/fhir", "type": "custos.fhir.access",
        "time": time, "datacontenttype": "application/json", "tenant": tenant,
        "data": {"requestId": id, "iss": "https://as.test/realms/general", "sub": "dr-fhir",
            "fhirUser": "Practitioner/fhir", "client_id": "ehr-app",
            "scope": "launch user/Observation.rs", "interaction": interaction,
            "resourceType": "Observation", "resourceId": format!("OBS-{id}"),
            "patient": format!("Patient/{patient}"), "purposeOfUse": ["TREAT"],
            "decision": if ok { "permit" } else { "deny" }, "httpStatus": if ok { 200 } else { 403 },
            "sourceIp": "10.0.0.9", "userAgent": "Test/1"}})
}

/// The scenario, seeded once per test binary.
pub fn scenario() -> &'static Scenario {
    static SCENARIO: OnceLock<Scenario> = OnceLock::new();
    SCENARIO.get_or_init(|| super::seeded(seed))
}

/// Seeds the scenario through the real ingest.
pub async fn seed() -> Result<Scenario> {
    super::ensure_schema()?;
    let tag = unique("fh");
    let tenant = tag.clone();
    let other = format!("{tag}-b");
    let patient = format!("RAWPAT-{tag}");
    let mut events = Vec::new();
    let mut keys = Vec::new();
    for n in 0..ACCESSES {
        let id = format!("{tag}-A{n:02}");
        let interaction = ["read", "search-type", "read", "update"][n % 4];
        let time = format!("2026-03-01T11:{n:02}:00Z");
        events.push(access(
            &tenant,
            &id,
            &time,
            &patient,
            interaction,
            n % 5 != 0,
        ));
        keys.push(custos_schemas::row::event_key("//custos.test/fhir", &id));
    }
    let mut other_keys = Vec::new();
    for n in 0..2 {
        let id = format!("{tag}-B{n}");
        let time = format!("2026-03-01T12:0{n}:00Z");
        events.push(access(&other, &id, &time, &patient, "read", true));
        other_keys.push(custos_schemas::row::event_key("//custos.test/fhir", &id));
    }
    let msgs: Vec<Msg> = events.iter().map(Msg::json).collect();
    super::ingest_all("fhir", &[], &msgs).await?;
    Ok(Scenario {
        tenant,
        other,
        patient,
        keys,
        other_keys,
    })
}

/// The search of the main accesses.
pub fn search_params(sc: &Scenario) -> Vec<(&str, &str)> {
    vec![
        ("tenant", sc.tenant.as_str()),
        ("patient", sc.patient.as_str()),
        ("date", "ge2026-03-01"),
        ("date", "le2026-03-01"),
    ]
}

/// The query-audit rows of `caller`: (tenant, report, status, rows, parameters), waiting
/// (up to 15 s) until `n` rows are `answered`.
pub async fn audit_of(
    caller: &str,
    n: usize,
) -> Result<Vec<(String, String, String, u64, String)>> {
    let start = std::time::Instant::now();
    loop {
        let rows: Vec<(String, String, String, u64, String)> = admin()
            .query(
                "SELECT tenant, report, status, rows_returned, parameters FROM custos.report_queries FINAL \
                 WHERE caller_sub = ? ORDER BY asked_at",
            )
            .bind(caller)
            .fetch_all()
            .await?;
        let settled = rows.len() >= n && rows.iter().all(|r| r.2 == "answered");
        if settled || start.elapsed() > Duration::from_secs(15) {
            return Ok(rows);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The query API binding tenants to the `tenants` claim.
pub fn app_with_tenants() -> Router {
    app(&["--oidc-tenants-claim", "tenants"])
}

/// The query API with a writer password that does not work: no query-audit record.
pub fn app_with_broken_audit() -> Router {
    app(&["--writer-password", "not-the-writer-password"])
}
