//! End-to-end tests of the FHIR endpoint (`/fhir`) as FHIR clients use it: FHIR access
//! events go through Kafka and the real `custos-ingest` into ClickHouse, then
//! `custos-query` answers on a real socket. HAPI FHIR's generic client
//! (`tests/fhir-client`, built and run by `scripts/fhir-client`) reads the
//! CapabilityStatement, searches with a bearer token and `_total=accurate`, follows the
//! `next` links and reads an entry by its `fullUrl`; the other tests check read by id
//! (roles, tenants, query audit), the general parameters and the OperationOutcome errors.
//!
//! Tokens are signed with the fixture keys and verified against an in-test OpenID issuer
//! on 127.0.0.1 whose discovery document also names authorization and token endpoints.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::Method;
use axum::Router;
use custos_tests::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

mod support;

use support::{claims_of, entry_ids, send, sign, url, Resp, TestIssuer};

const COMPLIANCE: &[&str] = &["compliance_officer"];
/// Accesses seeded in the main tenant (more than one page of the client's `_count`).
const ACCESSES: usize = 23;

// ---------------------------------------------------------------- issuer, app, tokens

/// Base URL of the in-test OpenID issuer: discovery (with OAuth endpoints) and JWKS.
fn issuer() -> &'static str {
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
fn app_at(public_url: &str, extra: &[&str]) -> Router {
    support::app_at(issuer(), public_url, extra)
}

fn app(extra: &[&str]) -> Router {
    app_at("http://127.0.0.1:8088", extra)
}

/// An access token of this test's issuer; `tenants` fills the `tenants` claim.
fn token_for(sub: &str, roles: &[&str], tenants: Option<&[&str]>) -> String {
    let mut c = claims_of(issuer(), "fhir-client", sub, roles);
    if let Some(t) = tenants {
        c["tenants"] = json!(t);
    }
    sign(Algorithm::RS256, "rsa-1", &c)
}

fn token(sub: &str, roles: &[&str]) -> String {
    token_for(sub, roles, None)
}

async fn get(app: &Router, path: &str, bearer: Option<&str>) -> Resp {
    send(app, Method::GET, path, bearer, &[]).await
}

/// Asserts an OperationOutcome answer of `status` with issue type `code`; returns the
/// diagnostics.
fn assert_outcome(r: &Resp, status: u16, code: &str, what: &str) -> String {
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

struct Scenario {
    /// Tenant of the main accesses.
    tenant: String,
    /// A second tenant with two accesses.
    other: String,
    /// Raw id of the patient of the main accesses.
    patient: String,
    /// Event keys of the main accesses, in time order.
    keys: Vec<String>,
    /// Event keys of the other tenant's accesses.
    other_keys: Vec<String>,
}

fn access(tenant: &str, id: &str, time: &str, patient: &str, interaction: &str, ok: bool) -> Value {
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

fn scenario() -> &'static Scenario {
    static SCENARIO: OnceLock<Scenario> = OnceLock::new();
    SCENARIO.get_or_init(|| support::seeded(seed))
}

async fn seed() -> Result<Scenario> {
    support::ensure_schema()?;
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
    support::ingest_all("fhir", &[], &msgs).await?;
    Ok(Scenario {
        tenant,
        other,
        patient,
        keys,
        other_keys,
    })
}

/// The search of the main accesses.
fn search_params(sc: &Scenario) -> Vec<(&str, &str)> {
    vec![
        ("tenant", sc.tenant.as_str()),
        ("patient", sc.patient.as_str()),
        ("date", "ge2026-03-01"),
        ("date", "le2026-03-01"),
    ]
}

/// The query-audit rows of `caller`: (tenant, report, status, rows, parameters), waiting
/// (up to 15 s) until `n` rows are `answered`.
async fn audit_of(caller: &str, n: usize) -> Result<Vec<(String, String, String, u64, String)>> {
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

// ---------------------------------------------------------------- the real FHIR client

/// Serves the query API on a free port of 127.0.0.1; returns its base URL.
async fn serve(extra: &[&str]) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = app_at(&base, extra);
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Ok(base)
}

/// Runs `scripts/fhir-client` (building the HAPI client on first use) with the token in
/// its environment; returns its exit code and JSON summary.
async fn fhir_client(token: String, args: Vec<String>) -> Result<(i32, Value)> {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(workspace().join("scripts/fhir-client"))
            .args(&args)
            .env("CUSTOS_FHIR_TOKEN", token)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
        bail!(
            "fhir-client printed no summary (exit {code}):\n{stdout}\n{}",
            tail(&stderr, 40)
        );
    };
    let summary: Value = serde_json::from_str(line).context("fhir-client summary")?;
    Ok((code, summary))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hapi_fhir_client_reads_metadata_searches_every_page_and_reads_by_id() -> Result<()> {
    let sc = scenario();
    let base = serve(&[]).await?;
    let caller = format!("hapi-{}", sc.tenant);
    let mut args = vec![
        "--base".to_owned(),
        format!("{base}/fhir"),
        "--count".to_owned(),
        "5".to_owned(),
    ];
    for (k, v) in search_params(sc) {
        args.push("--param".to_owned());
        args.push(format!("{k}={v}"));
    }
    let (code, s) = fhir_client(token(&caller, COMPLIANCE), args).await?;
    eprintln!("fhir-client summary: {s}");
    assert_eq!(code, 0, "fhir-client failed: {s}");
    assert_eq!(s["ok"], true, "{s}");

    let m = &s["metadata"];
    assert_eq!(m["fhir_version"], "4.0.1", "{s}");
    assert_eq!(m["kind"], "instance");
    let interactions: Vec<&str> = m["interactions"]
        .as_array()
        .context("interactions")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(interactions, ["read", "search-type"]);
    let params: BTreeSet<&str> = m["search_params"]
        .as_array()
        .context("search params")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for p in [
        "patient:reference",
        "date:date",
        "action:token",
        "_id:token",
    ] {
        assert!(params.contains(p), "{p} missing: {params:?}");
    }
    assert_eq!(m["security_services"], json!(["SMART-on-FHIR"]));

    let search = &s["search"];
    assert_eq!(search["total"], ACCESSES);
    assert_eq!(search["entries"], ACCESSES);
    assert_eq!(search["duplicates"], 0);
    assert_eq!(search["page_sizes"], json!([5, 5, 5, 5, 3]));
    let ids: Vec<String> = search["ids"]
        .as_array()
        .context("ids")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, sc.keys, "every access once, in time order");

    let read = &s["read"];
    assert_eq!(read["id"], sc.keys[ACCESSES - 1].as_str());
    assert_eq!(
        read["url"],
        format!("{base}/fhir/AuditEvent/{}", sc.keys[ACCESSES - 1])
    );
    assert_eq!(read["action"], "R");
    assert_eq!(
        s["not_found"],
        json!({"status": 404, "issue_code": "not-found"})
    );
    assert_eq!(
        s["unauthenticated"],
        json!({"status": 401, "issue_code": "login"})
    );

    // Each page and the read are in the query audit, attributed to the tenant.
    let audit = audit_of(&caller, 7).await?;
    let searches: Vec<_> = audit.iter().filter(|r| !r.4.contains("\"read\"")).collect();
    let reads: Vec<_> = audit.iter().filter(|r| r.4.contains("\"read\"")).collect();
    assert_eq!(searches.len(), 5, "{audit:?}");
    assert!(searches
        .iter()
        .all(|r| r.0 == sc.tenant && r.1 == "fhir-auditevent"));
    assert_eq!(
        searches.iter().map(|r| r.3).sum::<u64>(),
        ACCESSES as u64,
        "{audit:?}"
    );
    // The read of the last entry and the read of the unknown id.
    assert_eq!(reads.len(), 2, "{audit:?}");
    assert!(reads
        .iter()
        .any(|r| r.0 == sc.tenant && r.3 == 1 && r.4.contains(&sc.keys[ACCESSES - 1])));
    assert!(reads.iter().any(|r| r.0.is_empty() && r.3 == 0));
    Ok(())
}

// ---------------------------------------------------------------- metadata

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_public_and_names_the_oauth_endpoints() -> Result<()> {
    let app = app_at("https://audit.example", &[]);
    let r = get(&app, "/fhir/metadata", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type, "application/fhir+json");
    let cs = r.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["kind"], "instance");
    assert_eq!(cs["implementation"]["url"], "https://audit.example/fhir");
    assert!(cs["format"]
        .as_array()
        .context("format")?
        .contains(&json!("json")));
    let rest = &cs["rest"][0];
    assert_eq!(rest["mode"], "server");
    let res = &rest["resource"][0];
    assert_eq!(res["type"], "AuditEvent");
    assert_eq!(
        res["interaction"],
        json!([{"code": "read"}, {"code": "search-type"}])
    );
    let types: Vec<(String, String)> = res["searchParam"]
        .as_array()
        .context("searchParam")?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (name, ty) in [
        ("_id", "token"),
        ("patient", "reference"),
        ("agent", "reference"),
        ("entity-type", "token"),
        ("date", "date"),
        ("action", "token"),
        ("outcome", "token"),
        ("subtype", "token"),
        ("tenant", "string"),
    ] {
        assert!(
            types.contains(&(name.to_owned(), ty.to_owned())),
            "{name}: {types:?}"
        );
    }
    let sec = &rest["security"];
    assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let ext = &sec["extension"][0];
    assert_eq!(
        ext["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    // The issuer's endpoints; a plain-http endpoint off loopback is left out.
    assert_eq!(
        ext["extension"],
        json!([
            {"url": "authorize", "valueUri": format!("{}/protocol/openid-connect/auth", issuer())},
            {"url": "token", "valueUri": format!("{}/protocol/openid-connect/token", issuer())},
        ])
    );
    // General parameters apply; everything else stays authenticated.
    let pretty = get(&app, "/fhir/metadata?_format=json&_pretty=true", None).await;
    assert_eq!(pretty.status, 200);
    assert!(
        pretty.text().contains("\n  \"resourceType\""),
        "{}",
        pretty.text()
    );
    let xml = get(&app, "/fhir/metadata?_format=xml", None).await;
    assert_outcome(&xml, 406, "not-supported", "metadata as xml");
    let r = get(&app, "/fhir/AuditEvent", None).await;
    assert_outcome(&r, 401, "login", "search without a token");
    Ok(())
}

// ---------------------------------------------------------------- read

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_by_id_keeps_roles_tenants_and_the_query_audit() -> Result<()> {
    let sc = scenario();
    let app = app(&[]);
    let caller = format!("reader-{}", sc.tenant);
    let officer = token(&caller, COMPLIANCE);
    let id = &sc.keys[1];
    let path = format!("/fhir/AuditEvent/{id}");

    let r = get(&app, &path, Some(&officer)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type, "application/fhir+json");
    let ev = r.json();
    assert_eq!(ev["resourceType"], "AuditEvent");
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(ev["subtype"][0]["code"], "search-type");
    assert_eq!(ev["action"], "E");
    // The same resource as the search entry whose fullUrl names it.
    let b = get(
        &app,
        &url(
            "/fhir/AuditEvent",
            &[("tenant", &sc.tenant), ("_id", id), ("date", "2026-03-01")],
        ),
        Some(&officer),
    )
    .await
    .json();
    assert_eq!(
        b["entry"][0]["fullUrl"],
        format!("http://127.0.0.1:8088{path}")
    );
    assert_eq!(b["entry"][0]["resource"], ev);
    assert_eq!(b["total"], 1);
    // _elements subsets the resource.
    let sub = get(&app, &format!("{path}?_elements=action"), Some(&officer)).await;
    let sub = sub.json();
    assert_eq!(sub["action"], "E");
    assert!(sub.get("agent").is_none());
    assert_eq!(sub["meta"]["tag"][0]["code"], "SUBSETTED");

    // Unknown and malformed ids: 404 OperationOutcomes.
    let unknown = get(
        &app,
        "/fhir/AuditEvent/ffffffffffffffffffffffffffffffff",
        Some(&officer),
    )
    .await;
    assert_outcome(&unknown, 404, "not-found", "unknown id");
    let malformed = get(&app, "/fhir/AuditEvent/not-an-id", Some(&officer)).await;
    assert_outcome(&malformed, 404, "not-found", "malformed id");
    // Roles and authentication.
    let privacy = token(&format!("privacy-{}", sc.tenant), &["privacy_officer"]);
    assert_outcome(
        &get(&app, &path, Some(&privacy)).await,
        403,
        "forbidden",
        "privacy officer",
    );
    let anon = get(&app, &path, None).await;
    assert_outcome(&anon, 401, "login", "no token");
    assert_outcome(
        &get(&app, &path, Some("not.a.jwt")).await,
        401,
        "login",
        "bad token",
    );

    // With a tenant claim, another tenant's id reads as unknown (no existence leak).
    let bound = app_with_tenants();
    let only_main = token_for(&caller, COMPLIANCE, Some(&[&sc.tenant]));
    let only_other = token_for(&caller, COMPLIANCE, Some(&[&sc.other]));
    let none = token_for(&caller, COMPLIANCE, Some(&[]));
    let other_path = format!("/fhir/AuditEvent/{}", sc.other_keys[0]);
    assert_eq!(get(&bound, &path, Some(&only_main)).await.status, 200);
    assert_eq!(
        get(&bound, &other_path, Some(&only_other)).await.status,
        200
    );
    let leak = get(&bound, &other_path, Some(&only_main)).await;
    let diag = assert_outcome(&leak, 404, "not-found", "other tenant");
    let unknown_diag = assert_outcome(
        &get(
            &bound,
            "/fhir/AuditEvent/ffffffffffffffffffffffffffffffff",
            Some(&only_main),
        )
        .await,
        404,
        "not-found",
        "unknown id, tenant claim",
    );
    assert_eq!(diag, unknown_diag, "the same answer as an unknown id");
    assert_outcome(
        &get(&bound, &path, Some(&only_other)).await,
        404,
        "not-found",
        "main id, other tenant",
    );
    assert_outcome(
        &get(&bound, &path, Some(&none)).await,
        404,
        "not-found",
        "no tenant",
    );

    // Every read is audited; the answered ones name the tenant and one row.
    let audit = audit_of(&caller, 10).await?;
    let answered_reads: Vec<_> = audit
        .iter()
        .filter(|r| r.4.contains("\"read\"") && r.3 == 1)
        .collect();
    assert_eq!(answered_reads.len(), 4, "{audit:?}");
    assert!(answered_reads
        .iter()
        .any(|r| r.0 == sc.other && r.4.contains(&sc.other_keys[0])));
    assert!(answered_reads.iter().filter(|r| r.0 == sc.tenant).count() == 3);

    // Fail closed: no durable asked record, no resource.
    let broken = app_with_broken_audit();
    let r = get(&broken, &path, Some(&officer)).await;
    let d = assert_outcome(&r, 503, "transient", "audit down");
    assert!(d.contains("could not be recorded"), "{d}");
    assert!(!r.text().contains("Practitioner/fhir"));
    Ok(())
}

fn app_with_tenants() -> Router {
    app(&["--oidc-tenants-claim", "tenants"])
}

// ---------------------------------------------------------------- search parameters and errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn general_parameters_totals_and_errors_are_fhir() -> Result<()> {
    let sc = scenario();
    let app = app(&[]);
    let officer = token(&format!("params-{}", sc.tenant), COMPLIANCE);
    let base = search_params(sc);
    let with = |extra: &[(&str, &str)]| {
        let mut p = base.clone();
        p.extend_from_slice(extra);
        url("/fhir/AuditEvent", &p)
    };

    // _format: JSON in its spellings (an unencoded + decodes as a space) is served.
    for f in ["json", "application/json", "application/fhir+json"] {
        let r = get(
            &app,
            &with(&[("_format", f), ("_count", "2")]),
            Some(&officer),
        )
        .await;
        assert_eq!(r.status, 200, "{f}: {}", r.text());
        assert_eq!(r.content_type, "application/fhir+json");
    }
    let raw_plus = format!("{}&_format=application/fhir+json", with(&[]));
    assert_eq!(get(&app, &raw_plus, Some(&officer)).await.status, 200);
    // XML and other formats are not served: 406, from _format or Accept.
    for f in ["xml", "application/fhir+xml", "text/turtle"] {
        let r = get(&app, &with(&[("_format", f)]), Some(&officer)).await;
        assert_outcome(&r, 406, "not-supported", f);
    }
    let r = send(
        &app,
        Method::GET,
        &with(&[]),
        Some(&officer),
        &[("accept", "application/fhir+xml")],
    )
    .await;
    assert_outcome(&r, 406, "not-supported", "Accept xml");
    let r = send(
        &app,
        Method::GET,
        &with(&[]),
        Some(&officer),
        &[(
            "accept",
            "application/fhir+xml;q=1.0, application/fhir+json;q=0.9",
        )],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_outcome(
        &get(&app, &with(&[("_format", "csv")]), Some(&officer)).await,
        400,
        "invalid",
        "csv",
    );
    // _pretty.
    let r = get(
        &app,
        &with(&[("_pretty", "true"), ("_count", "1")]),
        Some(&officer),
    )
    .await;
    assert!(
        r.text().contains("\n  \"resourceType\": \"Bundle\""),
        "{}",
        r.text()
    );

    // _total=accurate: the count over the same filter, on every page.
    let first = get(
        &app,
        &with(&[("_total", "accurate"), ("_count", "10")]),
        Some(&officer),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    assert_eq!(first["total"], ACCESSES);
    assert_eq!(entry_ids(&first).len(), 10);
    let next = first["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .context("next link")?
        .trim_start_matches("http://127.0.0.1:8088")
        .to_owned();
    assert!(next.contains("_total=accurate"), "{next}");
    let second = get(&app, &next, Some(&officer)).await.json();
    assert_eq!(second["total"], ACCESSES);
    assert!(entry_ids(&second).is_disjoint(&entry_ids(&first)));
    let est = get(
        &app,
        &with(&[("_total", "estimate"), ("outcome", "4")]),
        Some(&officer),
    )
    .await;
    assert_eq!(
        est.json()["total"],
        5,
        "the denied accesses: 0, 5, 10, 15, 20"
    );
    // _total=none, and no _total on a page that is not the whole result: no total.
    let none = get(&app, &with(&[("_total", "none")]), Some(&officer))
        .await
        .json();
    assert!(none.get("total").is_none());
    let partial = get(&app, &with(&[("_count", "3")]), Some(&officer))
        .await
        .json();
    assert!(partial.get("total").is_none());
    // _summary=count: the total only.
    let count = get(&app, &with(&[("_summary", "count")]), Some(&officer))
        .await
        .json();
    assert_eq!(count["total"], ACCESSES);
    assert!(count.get("entry").is_none());
    // Repeated tokens are and-ed: read and update never match one event.
    let and = get(
        &app,
        &with(&[
            ("subtype", "read"),
            ("subtype", "update"),
            ("_total", "accurate"),
        ]),
        Some(&officer),
    )
    .await
    .json();
    assert_eq!(and["total"], 0);
    let or = get(
        &app,
        &with(&[("subtype", "read,update"), ("_total", "accurate")]),
        Some(&officer),
    )
    .await
    .json();
    assert_eq!(or["total"], 17, "12 reads and 5 updates");
    // _sort=date is the order of every page; _id narrows to ids.
    let sorted = get(
        &app,
        &with(&[
            ("_sort", "date"),
            ("_id", &format!("{},{}", sc.keys[3], sc.keys[7])),
        ]),
        Some(&officer),
    )
    .await;
    assert_eq!(sorted.status, 200, "{}", sorted.text());
    let sorted = sorted.json();
    assert_eq!(sorted["entry"][0]["resource"]["id"], sc.keys[3].as_str());
    assert_eq!(sorted["entry"][1]["resource"]["id"], sc.keys[7].as_str());
    assert_eq!(sorted["total"], 2);

    // Unknown and unsupported parameters: 400 OperationOutcomes naming the parameter.
    for (p, v, names) in [
        ("_include", "AuditEvent:agent", "_include"),
        ("patient:missing", "true", "patient:missing"),
        ("_sort", "-date", "_sort"),
        ("_summary", "true", "_summary"),
        ("_total", "exactly", "_total"),
        ("nonsense", "1", "nonsense"),
    ] {
        let r = get(&app, &with(&[(p, v)]), Some(&officer)).await;
        let d = assert_outcome(&r, 400, "invalid", p);
        assert!(d.contains(names), "{p}: {d}");
    }
    // The diagnostics never echo a value (raw patient ids).
    let r = get(
        &app,
        &url("/fhir/AuditEvent", &[("patient", "RAWPAT-secret\u{1}")]),
        Some(&officer),
    )
    .await;
    assert_outcome(&r, 400, "invalid", "control character");
    assert!(!r.text().contains("RAWPAT-secret"));

    // Every other error under /fhir is an OperationOutcome too; /v1 keeps problem+json.
    assert_outcome(
        &get(&app, "/fhir/Patient", Some(&officer)).await,
        404,
        "not-found",
        "unknown type",
    );
    assert_outcome(
        &get(&app, "/fhir/AuditEvent/x/_history/1", Some(&officer)).await,
        404,
        "not-found",
        "history",
    );
    let post = send(&app, Method::POST, "/fhir/AuditEvent", Some(&officer), &[]).await;
    assert_outcome(&post, 405, "not-supported", "POST");
    let anon = send(&app, Method::GET, &with(&[]), None, &[]).await;
    assert_outcome(&anon, 401, "login", "search without token");
    let privacy = token("privacy-fhir", &["privacy_officer"]);
    assert_outcome(
        &get(&app, &with(&[]), Some(&privacy)).await,
        403,
        "forbidden",
        "role",
    );
    let bound = app_with_tenants();
    let other_only = token_for("bound-fhir", COMPLIANCE, Some(&[&sc.other]));
    assert_outcome(
        &get(&bound, &with(&[]), Some(&other_only)).await,
        403,
        "forbidden",
        "tenant",
    );
    let broken = app_with_broken_audit();
    let r = get(&broken, &with(&[]), Some(&officer)).await;
    assert_outcome(&r, 503, "transient", "audit down");
    let v1 = get(&app, "/v1/reports/patient-access?patient=x", None).await;
    assert_eq!(v1.status, 401);
    assert_eq!(v1.content_type, "application/problem+json");
    Ok(())
}

/// The query API with a writer password that does not work: no query-audit record.
fn app_with_broken_audit() -> Router {
    app(&["--writer-password", "not-the-writer-password"])
}
