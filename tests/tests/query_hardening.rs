//! End-to-end: the query API's tenant binding of the query-audit report, its load limits
//! (global concurrency, exports per caller, export time limit), `/metrics` off the public
//! router, and reads that happen only under an acknowledged query-audit record. The API
//! runs in-process against the real ClickHouse, with tokens of the in-test issuer.

use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{Method, Response};
use axum::Router;
use custos_tests::*;
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use serde_json::json;

mod support;

use support::{claims, ensure_schema, get, header, issuer, rows, sign, token, url};

fn state(extra: &[&str]) -> custos_query::AppState {
    support::state_for(issuer(), extra)
}

fn app(extra: &[&str]) -> Router {
    support::app_for(issuer(), extra)
}

/// The response of a GET, its body not read (an export keeps streaming).
async fn open(app: &Router, path: &str, bearer: &str) -> Response<Body> {
    support::open(app, Method::GET, path, Some(bearer), &[]).await
}

/// Query-audit rows (latest versions) of `caller`: (tenant, status).
async fn audit_of(caller: &str) -> Result<Vec<(String, String)>> {
    Ok(admin()
        .query(
            "SELECT tenant, status FROM custos.report_queries FINAL \
             WHERE caller_sub = ? ORDER BY asked_at, query_id",
        )
        .bind(caller)
        .fetch_all()
        .await?)
}

/// [`audit_of`], waiting (up to 15 s) until it has `n` rows all with `status`.
async fn audit_settled(caller: &str, n: usize, status: &str) -> Result<Vec<(String, String)>> {
    let start = std::time::Instant::now();
    loop {
        let rows = audit_of(caller).await?;
        if (rows.len() >= n && rows.iter().all(|r| r.1 == status))
            || start.elapsed() > Duration::from_secs(15)
        {
            return Ok(rows);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_audit_report_is_bound_to_the_callers_tenants() -> Result<()> {
    ensure_schema()?;
    let mine = unique("qam");
    let other = unique("qao");
    // The default tenant is one the auditor may read: leaving `tenant` out passes the
    // tenant check, and must still not widen the report to every tenant.
    let app = app(&[
        "--oidc-tenants-claim",
        "custos.tenants",
        "--default-tenant",
        &mine,
    ]);
    let bound = |sub: &str, roles: &[&str], tenants: serde_json::Value| {
        let mut c = claims(sub, roles);
        c["custos"] = json!({ "tenants": tenants });
        sign(Algorithm::RS256, "rsa-1", &c)
    };
    let officer_sub = format!("officer-{mine}");
    let officer = bound(&officer_sub, &["compliance_officer"], json!([mine, other]));
    for t in [&mine, &other] {
        let r = get(
            &app,
            &url("/v1/reports/break-glass", &[("tenant", t)]),
            Some(&officer),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let both = audit_settled(&officer_sub, 2, "answered").await?;
    assert_eq!(both.len(), 2, "{both:?}");

    let auditor = bound(&format!("auditor-{mine}"), &["auditor"], json!([mine]));
    let path = url("/v1/reports/query-audit", &[("caller", &officer_sub)]);
    for format in ["json", "ndjson"] {
        let p = format!("{path}&format={format}");
        let r = get(&app, &p, Some(&auditor)).await;
        assert_eq!(r.status, 200, "{format}: {}", r.text());
        let tenants: Vec<String> = if format == "json" {
            rows(&r.json())
                .iter()
                .map(|row| row["tenant"].as_str().unwrap_or_default().to_owned())
                .collect()
        } else {
            r.text()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).expect("ndjson")["tenant"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(
            tenants,
            vec![mine.clone()],
            "{format}: only the auditor's tenant"
        );
    }
    // Asking for the other tenant is refused; for its own it gets the same one row.
    let r = get(&app, &format!("{path}&tenant={other}"), Some(&auditor)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = get(&app, &format!("{path}&tenant={mine}"), Some(&auditor)).await;
    assert_eq!(rows(&r.json()).len(), 1, "{}", r.text());
    // A caller bound to both sees both.
    let wide = bound(
        &format!("auditor2-{mine}"),
        &["auditor"],
        json!([mine, other]),
    );
    let r = get(&app, &path, Some(&wide)).await;
    assert_eq!(rows(&r.json()).len(), 2, "{}", r.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_limited_per_caller() -> Result<()> {
    ensure_schema()?;
    let app = app(&["--exports-per-caller", "2"]);
    let tenant = unique("qex");
    let export = url(
        "/v1/reports/break-glass",
        &[("tenant", &tenant), ("format", "csv")],
    );
    let a = token(&format!("exporter-a-{tenant}"), &["compliance_officer"]);
    let b = token(&format!("exporter-b-{tenant}"), &["compliance_officer"]);
    let first = open(&app, &export, &a).await;
    let second = open(&app, &export, &a).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    // A third concurrent export of the same caller: 429 with Retry-After, at once.
    let third = open(&app, &export, &a).await;
    assert_eq!(third.status(), 429);
    assert_eq!(header(&third, "content-type"), "application/problem+json");
    assert!(header(&third, "retry-after").parse::<u64>().is_ok());
    // Another caller, and JSON pages of the same caller, are not affected.
    assert_eq!(open(&app, &export, &b).await.status(), 200);
    let page = url("/v1/reports/break-glass", &[("tenant", &tenant)]);
    assert_eq!(get(&app, &page, Some(&a)).await.status, 200);
    // A finished (read to the end) or abandoned (dropped) export frees its slot.
    let body = first.into_body().collect().await?.to_bytes();
    assert!(String::from_utf8_lossy(&body).starts_with("event_key,"));
    assert_eq!(open(&app, &export, &a).await.status(), 200);
    drop(second);
    let again = open(&app, &export, &a).await;
    assert_eq!(again.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_limit_get_503_at_once() -> Result<()> {
    ensure_schema()?;
    let app = app(&["--max-concurrent-requests", "2"]);
    let tenant = unique("qcl");
    let export = url(
        "/v1/reports/break-glass",
        &[("tenant", &tenant), ("format", "ndjson")],
    );
    let page = url("/v1/reports/break-glass", &[("tenant", &tenant)]);
    let t1 = token(&format!("c1-{tenant}"), &["compliance_officer"]);
    let t2 = token(&format!("c2-{tenant}"), &["compliance_officer"]);
    // Two exports whose streams are still open hold both permits.
    let e1 = open(&app, &export, &t1).await;
    let e2 = open(&app, &export, &t2).await;
    assert_eq!((e1.status().as_u16(), e2.status().as_u16()), (200, 200));
    let started = std::time::Instant::now();
    let r = open(&app, &page, &t1).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not refused at once"
    );
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    assert!(header(&r, "retry-after").parse::<u64>().is_ok());
    let body = r.into_body().collect().await?.to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("overloaded"));
    let fhir = open(&app, "/fhir/AuditEvent?patient=x", &t1).await;
    assert_eq!(fhir.status(), 503);
    assert_eq!(header(&fhir, "content-type"), "application/fhir+json");
    // Probes are not limited.
    assert_eq!(get(&app, "/healthz", None).await.status, 200);
    // Once a stream ends, its permit is free again.
    drop(e1);
    assert_eq!(get(&app, &page, Some(&t1)).await.status, 200);
    drop(e2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stop_at_their_time_limit() -> Result<()> {
    ensure_schema()?;
    let caller = unique("qet-caller");
    // 3,000 query-audit rows of ~1 KiB for this caller: an export of them is many chunks.
    admin()
        .query(
            "INSERT INTO custos.report_queries (query_id, asked_at, recorded_at, caller_sub, \
             caller_issuer, caller_client, caller_roles, report, tenant, parameters, format, \
             status, rows_returned, duration_ms) \
             SELECT lower(hex(MD5(concat(?, toString(number))))), \
             now64(3) - toIntervalSecond(number + 1), now64(3), ?, 'https://as.test', 'console', \
             ['auditor'], 'patient-access', 'qet', repeat('x', 1000), 'json', 'answered', 0, 1 \
             FROM numbers(3000)",
        )
        .bind(&caller)
        .bind(&caller)
        .execute()
        .await?;
    let auditor = token(&format!("auditor-{caller}"), &["auditor"]);
    let path = url(
        "/v1/reports/query-audit",
        &[("caller", &caller), ("format", "csv"), ("limit", "5000")],
    );
    // Without a tight limit the whole export arrives even when read slowly.
    let relaxed = app(&[]);
    let resp = open(&relaxed, &path, &auditor).await;
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
    assert_eq!(text.lines().count(), 3001);

    let tight = app(&["--export-timeout-secs", "1"]);
    let resp = open(&tight, &path, &auditor).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.context("first chunk")??;
    let mut got = first.into_data().map(|b| b.len()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => got += f.into_data().map(|b| b.len()).unwrap_or(0),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the export ran past its time limit ({got} bytes)");
    assert!(got < text.len(), "{got} of {} bytes", text.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_the_admin_router_only() -> Result<()> {
    let s = state(&[]);
    let public = custos_query::app(s.clone());
    let r = get(&public, "/metrics", None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let admin_app = custos_query::admin_app(s);
    let r = get(&admin_app, "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("text/plain"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_exports_and_proofs_read_only_under_an_audit_record() -> Result<()> {
    ensure_schema()?;
    // The reader cannot log in: every report read fails. The writer works, so a request
    // that read anything must have left its asked record (then `failed`).
    let app = app(&["--reader-password", "not-the-reader-password"]);
    let tenant = unique("qfc");
    let responder_sub = format!("responder-{tenant}");
    let responder = token(&responder_sub, &["incident_responder"]);
    let r = get(
        &app,
        &url(
            "/v1/reports/token-trace",
            &[("tenant", &tenant), ("jti", "J-1"), ("format", "csv")],
        ),
        Some(&responder),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let rec = audit_settled(&responder_sub, 1, "failed").await?;
    assert_eq!(rec, vec![(tenant.clone(), "failed".to_owned())]);

    let auditor_sub = format!("auditor-{tenant}");
    let auditor = token(&auditor_sub, &["auditor"]);
    let r = get(
        &app,
        &url(
            "/v1/integrity/proof",
            &[("event_key", "0123456789abcdef0123456789abcdef")],
        ),
        Some(&auditor),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let rec = audit_settled(&auditor_sub, 1, "failed").await?;
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0].1, "failed");
    Ok(())
}
