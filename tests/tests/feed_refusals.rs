//! End-to-end: every bad input to the FHIR audit feed is refused with an `OperationOutcome`
//! and a 4xx (or 503), and nothing of it reaches Kafka: the feed runs in-process against the
//! in-test OIDC issuer (tokens with and without the `audit_source` role) and the real broker,
//! writing to a topic of its own whose high watermark must not move. Also: Bundles (a batch
//! with one bad entry, transactions all-or-nothing), an unreachable broker (503 after a
//! bounded time, never 201), the concurrency limit, and the report API refusing a token
//! that holds only `audit_source`.

use std::time::{Duration, Instant};

use anyhow::Result;
use axum::http::{Method, StatusCode};
use custos_tests::{create_topics, free_port, unique};
use serde_json::{json, Value};

mod support;

use support::feed::{
    audit_event, bundle, call, feed_app, high_watermark, issue_codes, post, post_prefer, FHIR_JSON,
};
use support::{get, issuer, token, AUDIENCE};

const SOURCE_ROLE: &[&str] = &["audit_source"];

async fn topic(name: &str) -> Result<String> {
    let t = format!("{}.gateway-events", unique(name));
    create_topics(&[(&t, 1)]).await?;
    Ok(t)
}

/// Asserts a FHIR `OperationOutcome` with `status` whose issue code is `code`.
fn assert_outcome(r: &support::Resp, status: u16, code: &str) -> Value {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert!(r.content_type.starts_with(FHIR_JSON), "{}", r.content_type);
    let v = r.json();
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    assert_eq!(issue_codes(&v), vec![code.to_owned()], "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_reaches_kafka() -> Result<()> {
    let t = topic("feedbad").await?;
    let app = feed_app(
        issuer(),
        AUDIENCE,
        &t,
        &["--max-body-bytes", "16384", "--max-event-bytes", "8192"],
    );
    let source = token("source-1", SOURCE_ROLE);
    let good = audit_event("ae-refusals-1", "p-1");
    let path = "/fhir/AuditEvent";

    // No token: 401 with a Bearer challenge.
    let (r, h) = call(
        &app,
        Method::POST,
        path,
        None,
        Some(FHIR_JSON),
        serde_json::to_vec(&good)?,
    )
    .await;
    assert_outcome(&r, 401, "login");
    assert!(h["www-authenticate"].to_str()?.starts_with("Bearer"));
    // A token that is not a JWT at all.
    let r = post(&app, path, Some("not-a-token"), &good).await;
    assert_outcome(&r, 401, "login");
    // A read role, not the write role: 403.
    for roles in [&["auditor"][..], &["compliance_officer"], &[]] {
        let r = post(&app, path, Some(&token("reader", roles)), &good).await;
        assert_outcome(&r, 403, "forbidden");
    }
    // Content types other than FHIR JSON or JSON, or none: 415.
    for ct in [Some("application/fhir+xml"), Some("text/plain"), None] {
        let (r, _) = call(
            &app,
            Method::POST,
            path,
            Some(&source),
            ct,
            serde_json::to_vec(&good)?,
        )
        .await;
        assert_outcome(&r, 415, "not-supported");
    }
    // Malformed JSON: 400, and the position only.
    let (r, _) = call(
        &app,
        Method::POST,
        path,
        Some(&source),
        Some(FHIR_JSON),
        b"{\"resourceType\": \"AuditEvent\",".to_vec(),
    )
    .await;
    let v = assert_outcome(&r, 400, "invalid");
    assert!(
        v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .contains("line"),
        "{v}"
    );
    // JSON that is not an AuditEvent: 400.
    for other in [
        json!({"resourceType": "Patient", "id": "p"}),
        json!([1, 2]),
        json!("AuditEvent"),
    ] {
        let r = post(&app, path, Some(&source), &other).await;
        assert_outcome(&r, 400, "invalid");
    }
    // Over the body limit: 413 (declared length and streamed body alike).
    let mut big = good.clone();
    big["extension"] = json!([{"url": "urn:x", "valueString": "x".repeat(20_000)}]);
    let r = post(&app, path, Some(&source), &big).await;
    assert_outcome(&r, 413, "too-costly");
    // Over the decoder's event limit but under the body limit: 413 as well.
    big["extension"] = json!([{"url": "urn:x", "valueString": "x".repeat(9_000)}]);
    let r = post(&app, path, Some(&source), &big).await;
    assert_outcome(&r, 413, "too-costly");
    // The decoder's refusals: 422 naming the field, never a value.
    let mut no_recorded = good.clone();
    no_recorded.as_object_mut().map(|o| o.remove("recorded"));
    let v = assert_outcome(
        &post(&app, path, Some(&source), &no_recorded).await,
        422,
        "invalid",
    );
    assert!(v.to_string().contains("AuditEvent.recorded"), "{v}");
    let mut bad_outcome = good.clone();
    bad_outcome["outcome"] = json!("RAWVALUE-99");
    let v = assert_outcome(
        &post(&app, path, Some(&source), &bad_outcome).await,
        422,
        "invalid",
    );
    assert!(!v.to_string().contains("RAWVALUE-99"), "{v}");
    // A raw token anywhere in the resource is refused like the ingest does, and not echoed.
    let jwt = token("leaked", &["auditor"]);
    let mut leaked = good.clone();
    leaked["agent"][0]["policy"] = json!([jwt.clone()]);
    let v = assert_outcome(
        &post(&app, path, Some(&source), &leaked).await,
        422,
        "invalid",
    );
    assert!(v.to_string().contains("raw token"), "{v}");
    assert!(!v.to_string().contains(&jwt[..20]), "{v}");
    // An id that is not a FHIR id: 422.
    let mut bad_id = good.clone();
    bad_id["id"] = json!("has spaces/and slashes");
    assert_outcome(
        &post(&app, path, Some(&source), &bad_id).await,
        422,
        "invalid",
    );
    // Bundles of the wrong type, or not Bundles, at the base: 400.
    for b in [
        bundle("searchset", std::slice::from_ref(&good)),
        bundle("collection", std::slice::from_ref(&good)),
        good.clone(),
    ] {
        assert_outcome(
            &post(&app, "/fhir", Some(&source), &b).await,
            400,
            "invalid",
        );
    }
    // An entry that is not a POST to AuditEvent refuses a transaction.
    let mut wrong_url = bundle("transaction", std::slice::from_ref(&good));
    wrong_url["entry"][0]["request"]["url"] = json!("Patient");
    assert_outcome(
        &post(&app, "/fhir", Some(&source), &wrong_url).await,
        400,
        "invalid",
    );
    // The feed is write-only: no read, no other endpoint.
    let (r, _) = call(
        &app,
        Method::GET,
        "/fhir/AuditEvent",
        Some(&source),
        None,
        Vec::new(),
    )
    .await;
    assert_outcome(&r, 405, "not-supported");
    let (r, _) = call(
        &app,
        Method::POST,
        "/fhir/Patient",
        Some(&source),
        Some(FHIR_JSON),
        b"{}".to_vec(),
    )
    .await;
    assert_outcome(&r, 404, "not-found");

    assert_eq!(high_watermark(&t)?, 0, "a refused request reached Kafka");
    // The same request with the write role is accepted: the refusals were for their reasons.
    let (r, h) = call(
        &app,
        Method::POST,
        path,
        Some(&source),
        Some(FHIR_JSON),
        serde_json::to_vec(&good)?,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        h["location"],
        "http://feed.test/fhir/AuditEvent/ae-refusals-1"
    );
    assert!(r.body.is_empty(), "return=minimal by default");
    assert_eq!(high_watermark(&t)?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stand_per_entry_and_transactions_are_all_or_nothing() -> Result<()> {
    let t = topic("feedbundle").await?;
    let app = feed_app(issuer(), AUDIENCE, &t, &[]);
    let source = token("source-2", SOURCE_ROLE);
    let mut bad = audit_event("ae-bundle-bad", "p-2");
    bad.as_object_mut().map(|o| o.remove("outcome"));
    let (a, b, c) = (
        audit_event("ae-bundle-1", "p-1"),
        audit_event("ae-bundle-2", "p-2"),
        audit_event("ae-bundle-3", "p-3"),
    );

    // Batch: the bad entry gets its 422 and an OperationOutcome, the others are written.
    let r = post(
        &app,
        "/fhir",
        Some(&source),
        &bundle("batch", &[a.clone(), bad.clone(), b.clone()]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["resourceType"], "Bundle");
    assert_eq!(v["type"], "batch-response");
    let statuses: Vec<&str> = v["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        ["201 Created", "422 Unprocessable Entity", "201 Created"],
        "{v}"
    );
    assert_eq!(
        v["entry"][0]["response"]["location"],
        "AuditEvent/ae-bundle-1"
    );
    assert_eq!(
        v["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert!(v["entry"][1]["response"]["outcome"]
        .to_string()
        .contains("AuditEvent.outcome"));
    assert_eq!(high_watermark(&t)?, 2);

    // Transaction with one bad entry: 400 naming the entry, nothing written.
    let r = post(
        &app,
        "/fhir",
        Some(&source),
        &bundle("transaction", &[c.clone(), bad.clone()]),
    )
    .await;
    let v = assert_outcome(&r, 400, "invalid");
    assert_eq!(
        v["issue"][0]["expression"],
        json!(["Bundle.entry[1]"]),
        "{v}"
    );
    assert_eq!(
        high_watermark(&t)?,
        2,
        "a refused transaction wrote something"
    );

    // A good transaction: every entry written, one response each, in order; with
    // return=representation each entry carries the AuditEvent.
    let r = post_prefer(
        &app,
        "/fhir",
        &source,
        &bundle("transaction", &[c.clone(), a.clone()]),
        "return=representation",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "transaction-response");
    assert_eq!(v["entry"][0]["resource"]["id"], "ae-bundle-3");
    assert_eq!(v["entry"][1]["response"]["status"], "201 Created");
    assert_eq!(high_watermark(&t)?, 4);

    // Too many entries for the configured limit: 413, nothing written.
    let small = feed_app(issuer(), AUDIENCE, &t, &["--max-bundle-entries", "2"]);
    let r = post(&small, "/fhir", Some(&source), &bundle("batch", &[a, b, c])).await;
    assert_outcome(&r, 413, "too-costly");
    assert_eq!(high_watermark(&t)?, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_answers_503_and_the_limit_holds() -> Result<()> {
    // Nothing listens on this port: every produce times out after the configured 2 s.
    let dead = format!("127.0.0.1:{}", free_port());
    let app = feed_app(
        issuer(),
        AUDIENCE,
        "custos.gateway-events",
        &[
            "--brokers",
            &dead,
            "--produce-timeout-secs",
            "2",
            "--max-concurrent-requests",
            "1",
        ],
    );
    let source = token("source-3", SOURCE_ROLE);
    let ae = audit_event("ae-dead-1", "p-1");
    let started = Instant::now();
    let (slow, second) = tokio::join!(post(&app, "/fhir/AuditEvent", Some(&source), &ae), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        call(
            &app,
            Method::POST,
            "/fhir/AuditEvent",
            Some(&source),
            Some(FHIR_JSON),
            serde_json::to_vec(&ae).unwrap_or_default(),
        )
        .await
    });
    assert_outcome(&slow, 503, "transient");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The second request came while the first held the only permit: refused at once.
    let (over, h) = second;
    assert_outcome(&over, 503, "transient");
    assert!(over.text().contains("too many requests"), "{}", over.text());
    assert!(h.contains_key("retry-after"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_token_reads_no_report() -> Result<()> {
    support::ensure_schema()?;
    let app = support::app(&[]);
    let source = token("source-4", SOURCE_ROLE);
    for path in [
        "/v1/reports/patient-access?patient=p-1",
        "/v1/reports/query-audit",
        "/v1/integrity/verify",
        "/fhir/AuditEvent?patient=p-1",
    ] {
        let r = get(&app, path, Some(&source)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text());
    }
    Ok(())
}
