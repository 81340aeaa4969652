//! End-to-end tests of the FHIR endpoint (`/fhir`) as FHIR clients use it: FHIR access
//! events go through Kafka and the real `custos-ingest` into ClickHouse, then
//! `custos-query` answers on a real socket. HAPI FHIR's generic client
//! (`tests/fhir-client`, built and run by `scripts/fhir-client`) reads the
//! CapabilityStatement, searches with a bearer token and `_total=accurate`, follows the
//! `next` links and reads an entry by its `fullUrl`; the other tests check the metadata and
//! read by id (roles, tenants, query audit). `query_fhir_search.rs` checks the general
//! parameters and the OperationOutcome errors.
//!
//! Tokens are signed with the fixture keys and verified against an in-test OpenID issuer
//! on 127.0.0.1 whose discovery document also names authorization and token endpoints
//! (`support::fhir`).

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::fhir::*;
use support::url;

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
