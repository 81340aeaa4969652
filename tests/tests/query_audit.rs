//! End-to-end: the query API's self-audit: answered queries are recorded with pseudonymized
//! parameters, the audit is fail-closed and keeps one row per query, and records are
//! group-committed while unfinished requests stay visible (the scenario of
//! `support::reports`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use custos_schemas::PseudonymKind;
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::reports::*;
use support::{ensure_schema, get, rows, token, url};

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
