//! Support of the alert API and break-glass review tests (`alerts_api.rs`, `reviews_api.rs`):
//! the query API in-process with a fixed clock, JSON POSTs, alert rows written as the alert
//! service writes them (through a ledger chain, with the admin account), problem checks and
//! the query-audit records of a caller.

use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use custos_integrity::ledger::{self, Ledger, Scope};
use custos_query::clock::FixedClock;
use custos_schemas::records::{AlertActionRow, AlertRow};
use custos_tests::admin;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::{issuer, state_for, Resp};

/// The query API for the in-test issuer whose clock reads `now_ms` (the system clock when
/// `None`), with extra command-line arguments.
pub fn app_at_time(now_ms: Option<i64>, extra: &[&str]) -> Router {
    let mut args = vec!["--oidc-jwks-refresh-min-secs", "1"];
    args.extend_from_slice(extra);
    let mut state = state_for(issuer(), &args);
    if let Some(t) = now_ms {
        state.clock = std::sync::Arc::new(FixedClock(t));
    }
    custos_query::app(state)
}

/// A POST of `body` (as `application/json`) through the in-process app.
pub async fn post(app: &Router, path: &str, bearer: Option<&str>, body: &str) -> Resp {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let content_type = super::header(&resp, "content-type");
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Resp {
        status,
        content_type,
        body,
    }
}

/// Asserts `r` is an `application/problem+json` of `status` and problem `slug`.
pub fn assert_problem(r: &Resp, status: u16, slug: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert_eq!(r.content_type, "application/problem+json", "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(
        v["type"],
        format!("https://custos.dev/problems/{slug}"),
        "{v}"
    );
}

/// A time (RFC 3339) in epoch ms.
pub fn ms(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t)
        .expect("time")
        .timestamp_millis()
}

/// An alert id (32 hex) of `name`, unique per tenant.
pub fn alert_id(tenant: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One revision of alert `name` of `tenant`.
pub fn alert(tenant: &str, name: &str, revision: u32, severity: &str) -> AlertRow {
    AlertRow {
        alert_id: alert_id(tenant, name),
        revision,
        tenant: tenant.to_owned(),
        detector: "jti_multi_ip".into(),
        severity: severity.into(),
        dedup_key: name.to_owned(),
        subject: "dr-alice".into(),
        user_kind: "workforce".into(),
        client_id: "ehr-app".into(),
        session_id: String::new(),
        token_jti: String::new(),
        patient: String::new(),
        first_seen: ms("2026-03-01T10:00:00Z"),
        last_seen: ms("2026-03-01T10:00:00Z"),
        evidence: Vec::new(),
        evidence_count: 0,
        summary: format!("{name}: test alert"),
        token_theft: false,
    }
}

/// Writes alert revisions as the alert service does: through a ledger chain.
pub async fn insert_alerts(rows: &[AlertRow]) -> Result<()> {
    Ledger::<AlertRow>::new().insert(&admin(), rows).await?;
    Ok(())
}

/// Writes alert actions as the alert service does (`notify`, `auto_revoke`).
pub async fn insert_actions(rows: &[AlertActionRow]) -> Result<()> {
    Ledger::<AlertActionRow>::new()
        .insert(&admin(), rows)
        .await?;
    Ok(())
}

/// `(report, status)` of the query-audit records of `caller`, waiting (bounded) until at
/// least `n` are final (not `answering`).
pub async fn audit_of(caller: &str, n: usize) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for _ in 0..60 {
        out = admin()
            .query(
                "SELECT report, status FROM custos.report_queries FINAL WHERE caller_sub = ? \
                 AND status != 'answering' ORDER BY asked_at, query_id",
            )
            .bind(caller)
            .fetch_all::<(String, String)>()
            .await?;
        if out.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(out)
}

/// Verifies every ledger-chained table of `tenant` (rows back to 2025: the tests' alerts
/// and openings are dated in 2026); returns the rows checked per table.
pub async fn verify_ledger(tenant: &str) -> Result<Vec<(String, u64)>> {
    let scope = Scope {
        tenant: Some(tenant.to_owned()),
        ..Scope::all(3650)
    };
    let report = ledger::verify(&custos_tests::account("reader"), &scope).await?;
    assert!(report.ok, "{report:#?}");
    Ok(report
        .tables
        .iter()
        .map(|t| (t.table.clone(), t.rows_checked))
        .collect())
}

/// The `alerts` of a page.
pub fn alerts_of(v: &Value) -> Vec<Value> {
    v["alerts"].as_array().cloned().unwrap_or_default()
}
