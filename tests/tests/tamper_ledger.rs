//! The ledger over the query audit, the consent history and the revocations: rows written
//! through it verify clean, and an administrator's edit, deletion or insertion of a row, or
//! of a ledger entry, is found (against the real ClickHouse, with the services' accounts).

use std::time::Duration;

use anyhow::{Context, Result};
use custos_integrity::ledger::{self, FindingKind, Ledger, Ledgered, Scope};
use custos_schemas::records::{HistoryRow, ReportQueryRow, RevocationRow};
use custos_tests::{account, admin, ch_env, clickhouse_url, ingest_binary, unique};

mod support;
use support::{get, token};

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn report_row(tenant: &str, id: &str, status: &str, at: i64) -> ReportQueryRow {
    ReportQueryRow {
        query_id: id.into(),
        asked_at: at,
        recorded_at: now(),
        caller_sub: "auditor-1".into(),
        caller_issuer: "https://as.example".into(),
        caller_client: "console".into(),
        caller_roles: vec!["auditor".into()],
        report: "patient-access".into(),
        tenant: tenant.into(),
        parameters: r#"{"patient":"p1:abc"}"#.into(),
        format: "json".into(),
        status: status.into(),
        rows_returned: 4,
        duration_ms: 12,
    }
}

fn history_row(tenant: &str, n: u64) -> HistoryRow {
    HistoryRow {
        event_key: format!("ek-{tenant}-{n}"),
        event_id: format!("ev-{n}"),
        event_source: "urn:test".into(),
        event_type: "org.hl7.fhir.consent".into(),
        source_format: "fhir".into(),
        tenant: tenant.into(),
        consent_id: "consent-1".into(),
        patient: "p1:abc".into(),
        subject: "s1:def".into(),
        client_id: "app".into(),
        issuer: "https://as.example".into(),
        status: if n == 2 { "revoked" } else { "active" }.into(),
        effect: if n == 2 { "revoked" } else { "granted" }.into(),
        version: n + 1,
        scopes: vec!["patient/*.read".into()],
        purpose: vec!["TREAT".into()],
        period_start: Some(now() - 1000),
        period_end: None,
        reason: String::new(),
        actor: "patient".into(),
        event_time: now() - 500 + n as i64,
        recorded_at: now(),
        kafka_topic: "t".into(),
        kafka_partition: 0,
        kafka_offset: n as i64,
    }
}

fn revocation_row(tenant: &str, id: &str, state: &str, seq: u32) -> RevocationRow {
    RevocationRow {
        revocation_id: id.into(),
        target: "keycloak".into(),
        state: state.into(),
        seq,
        at: now(),
        tenant: tenant.into(),
        consent_id: "consent-1".into(),
        patient: "p1:abc".into(),
        subject: "s1:def".into(),
        client_id: "app".into(),
        issuer: "https://as.example".into(),
        cause: "revoke".into(),
        reason: "patient request".into(),
        initiator: "user".into(),
        scopes: vec!["patient/*.read".into()],
        cause_event_key: "ek".into(),
        requested_at: now() - 100,
        acked_at: None,
        latency_ms: None,
        attempts: seq,
        set_jti: String::new(),
        detail: String::new(),
    }
}

/// Runs `custos-ingest verify-ledger --tenant T`: (exit code, JSON report).
fn verify_ledger_cli(tenant: &str) -> Result<(i32, serde_json::Value)> {
    let out = std::process::Command::new(ingest_binary())
        .envs(ch_env())
        .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
        .args([
            "verify-ledger",
            "--tenant",
            tenant,
            "--retention-days",
            "30",
        ])
        .output()?;
    let report = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "verify-ledger printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), report))
}

fn scope(tenant: &str) -> Scope {
    Scope {
        tenant: Some(tenant.to_owned()),
        ..Scope::all(30)
    }
}

/// (table, kind, chain position or row key) of every finding.
fn findings(r: &ledger::Report) -> Vec<(String, FindingKind, String)> {
    let mut out: Vec<_> = r
        .tables
        .iter()
        .flat_map(|t| {
            t.findings.iter().map(|f| {
                let at = match (&f.chain_id, f.seq, &f.row_key) {
                    (Some(c), Some(s), _) => format!("{c}#{s}"),
                    (_, _, Some(k)) => k.clone(),
                    _ => String::new(),
                };
                (t.table.clone(), f.kind, at)
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
    out
}

async fn admin_exec(sql: &str, binds: &[&str]) -> Result<()> {
    let mut q = admin().query(sql);
    for b in binds {
        q = q.bind(*b);
    }
    q.with_setting("mutations_sync", "2")
        .execute()
        .await
        .with_context(|| sql.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_finds_edited_deleted_and_inserted_records_and_entries() -> Result<()> {
    support::ensure_schema()?;
    let tenant = unique("ledger");
    let instance = unique("writer");
    let (query, consent, reader) = (account("query"), account("consent"), account("reader"));
    let reports: Ledger<ReportQueryRow> = Ledger::with_instance(&instance);
    let history: Ledger<HistoryRow> = Ledger::with_instance(&instance);
    let revocations: Ledger<RevocationRow> = Ledger::with_instance(&instance);

    // Two versions of q1 (the second replaces the first), one of q2; three history rows;
    // three revocation state changes. Each through its service's own account.
    let asked = now() - 2000;
    reports
        .insert(&query, &[report_row(&tenant, "q1", "answering", asked)])
        .await?;
    reports
        .insert(
            &query,
            &[
                report_row(&tenant, "q1", "answered", asked),
                report_row(&tenant, "q2", "answered", asked + 1),
            ],
        )
        .await?;
    let hist: Vec<HistoryRow> = (0..3).map(|n| history_row(&tenant, n)).collect();
    history.insert(&consent, &hist).await?;
    let revs = [
        revocation_row(&tenant, "r1", "requested", 0),
        revocation_row(&tenant, "r1", "failed", 1),
        revocation_row(&tenant, "r1", "delivered", 2),
    ];
    revocations.insert(&consent, &revs[..1]).await?;
    revocations.insert(&consent, &revs[1..]).await?;
    // A replay writes the same row again: still clean.
    history.insert(&consent, &hist[2..]).await?;

    let clean = ledger::verify(&reader, &scope(&tenant)).await?;
    assert!(clean.ok, "{:#?}", clean);
    let (code, report) = verify_ledger_cli(&tenant)?;
    assert_eq!(
        (code, &report["ok"]),
        (0, &serde_json::json!(true)),
        "{report:#}"
    );
    let counts: Vec<(&str, u64, u64, u64)> = clean
        .tables
        .iter()
        .map(|t| (t.table.as_str(), t.chains, t.entries, t.rows_checked))
        .collect();
    assert_eq!(
        counts,
        [
            ("report_queries", 1, 3, 2),
            ("consent_history", 1, 4, 3),
            ("revocations", 1, 3, 3),
            ("alerts", 0, 0, 0),
            ("alert_actions", 0, 0, 0),
            ("break_glass_reviews", 0, 0, 0),
        ]
    );

    // The administrator's edits, one per kind.
    admin_exec(
        "ALTER TABLE custos.report_queries UPDATE rows_returned = 0 WHERE tenant = ? AND query_id = 'q1'",
        &[&tenant],
    )
    .await?;
    admin_exec(
        "ALTER TABLE custos.consent_history DELETE WHERE tenant = ? AND event_key = ?",
        &[&tenant, &hist[1].event_key],
    )
    .await?;
    let mut forged = revocation_row(&tenant, "r2", "delivered", 1);
    forged.detail = "forged receipt".into();
    let mut insert = admin()
        .insert_unescaped::<RevocationRow>("custos.revocations")
        .await?;
    insert.write(&forged).await?;
    insert.end().await?;
    admin_exec(
        "ALTER TABLE custos.ledger DELETE WHERE chain_id = ? AND seq = 0",
        &[revocations.chain_id()],
    )
    .await?;
    admin_exec(
        "ALTER TABLE custos.ledger UPDATE row_hash = '00' WHERE chain_id = ? AND seq = 0",
        &[history.chain_id()],
    )
    .await?;

    let tampered = ledger::verify(&reader, &scope(&tenant)).await?;
    assert!(!tampered.ok);
    let mut want = vec![
        (
            "report_queries".to_owned(),
            FindingKind::RowAltered,
            report_row(&tenant, "q1", "answered", asked).row_key(),
        ),
        (
            "consent_history".to_owned(),
            FindingKind::EntryAltered,
            format!("{}#0", history.chain_id()),
        ),
        (
            "consent_history".to_owned(),
            FindingKind::RowMissing,
            hist[1].row_key(),
        ),
        (
            // Its one entry was edited; the row still hashes to the original. (The replayed
            // row has two entries, so editing one of them would leave it matched.)
            "consent_history".to_owned(),
            FindingKind::RowAltered,
            hist[0].row_key(),
        ),
        (
            "revocations".to_owned(),
            FindingKind::ChainTruncated,
            format!("{}#1", revocations.chain_id()),
        ),
        (
            "revocations".to_owned(),
            FindingKind::RowUnledgered,
            revs[0].row_key(),
        ),
        (
            "revocations".to_owned(),
            FindingKind::RowUnledgered,
            forged.row_key(),
        ),
    ];
    want.sort_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
    assert_eq!(findings(&tampered), want);
    // The auditor's command line reports the same and exits 1.
    let (code, report) = verify_ledger_cli(&tenant)?;
    assert_eq!(code, 1, "{report:#}");
    let cli: ledger::Report = serde_json::from_value(report)?;
    assert_eq!(findings(&cli), want);

    // Another tenant's verification is not disturbed by this one's tampering.
    let other = ledger::verify(&reader, &scope(&unique("ledger-other"))).await?;
    assert!(other.ok, "{other:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_service_chains_its_audit_and_the_api_reports_an_edit() -> Result<()> {
    support::ensure_schema()?;
    let tenant = unique("ledger-api");
    let app = support::app(&[]);
    let sub = format!("auditor-{tenant}");
    let auditor = token(&sub, &["auditor"]);
    let path = format!("/v1/integrity/ledger?tenant={tenant}");

    // The first verification's own audit record is chained before the tables are read.
    let r = get(&app, &path, Some(&auditor)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["clean"], true, "{v:#}");
    assert_eq!(v["report"], "integrity-ledger");
    let rq = &v["tables"][0];
    assert_eq!(rq["table"], "report_queries");
    assert!(rq["rows_checked"].as_u64() >= Some(1), "{v:#}");

    // Its final record is written after the answer: wait for it, verify again (clean).
    let settled = async {
        for _ in 0..60 {
            let n: u64 = admin()
                .query("SELECT count() FROM custos.report_queries FINAL WHERE tenant = ? AND status = 'answered'")
                .bind(&tenant)
                .fetch_one()
                .await?;
            if n >= 1 {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        anyhow::bail!("final record not written")
    };
    settled.await?;
    let v = get(&app, &path, Some(&auditor)).await.json();
    assert_eq!(v["clean"], true, "{v:#}");

    // An administrator rewrites who ran the report.
    admin_exec(
        "ALTER TABLE custos.report_queries UPDATE caller_sub = 'someone-else' WHERE tenant = ?",
        &[&tenant],
    )
    .await?;
    let v = get(&app, &path, Some(&auditor)).await.json();
    assert_eq!(v["clean"], false, "{v:#}");
    let kinds: Vec<&str> = v["tables"][0]["findings"]
        .as_array()
        .context("findings")?
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"row_altered"), "{v:#}");

    // Only auditors; a bad tenant is a 400.
    let r = get(&app, &path, Some(&token("co", &["compliance_officer"]))).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = get(&app, "/v1/integrity/ledger?tenant=a%20b", Some(&auditor)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.content_type, "application/problem+json");
    Ok(())
}
