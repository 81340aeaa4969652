//! End-to-end tests of the query API's tamper-evidence endpoints (issue 6 item 3): records
//! stored by the real `custos-ingest` (one partition, a signed checkpoint every 5 records)
//! are verified through `/v1/integrity/verify`; a membership proof from
//! `/v1/integrity/proof` is checked independently here (hashes recomputed with
//! `custos_integrity::chain::record_hash`, the JWS verified against the JWKS the service
//! serves); one record altered with the admin account is reported at its offset, and its
//! proof no longer checks. Only the auditor role gets answers, and every call is in the
//! query audit.

mod support;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use custos_integrity::chain::{from_hex, record_hash, to_hex, GENESIS};
use custos_integrity::checkpoint::{self, Checkpoint};
use custos_schemas::AuditRow;
use custos_tests::*;
use serde_json::{json, Value};
use support::{get, token, url};

const EVENTS: i64 = 23;
const SOURCE: &str = "//custos.test/integrity";

fn event(tag: &str, tenant: &str, n: i64) -> Value {
    json!({"specversion": "1.0", "id": format!("{tag}-{n}"), "source": SOURCE,
        "type": "custos.fhir.access", "time": format!("2026-04-01T10:{n:02}:00Z"),
        "datacontenttype": "application/json", "tenant": tenant,
        "data": {"requestId": format!("{tag}-req-{n}"), "iss": "https://as.test/realms/general",
            "sub": "dr-ivy", "fhirUser": "Practitioner/ivy", "client_id": "ehr-app",
            "jti": format!("J-{tag}"), "scope": "launch user/Observation.rs",
            "interaction": "read", "resourceType": "Observation",
            "resourceId": format!("OBS-{n}"), "patient": format!("Patient/RAWPAT-{tag}-{}", n % 3),
            "purposeOfUse": ["TREAT"], "decision": "permit", "httpStatus": 200,
            "sourceIp": "10.0.0.9", "userAgent": "Test/1"}})
}

/// Checks a proof the way an outside party would, trusting nothing but the JWKS.
/// Returns the signed claims and the offsets of the path.
fn check_proof(proof: &Value, jwks: &Value) -> Result<(Checkpoint, Vec<i64>)> {
    let record: AuditRow = serde_json::from_value(proof["record"].clone()).context("record")?;
    // The hash the record was linked after: genesis, or its stored predecessor's.
    let prev_hash = if record.chain_prev_offset < 0 {
        GENESIS
    } else {
        let prev = &proof["previous"];
        ensure!(
            prev["kafka_offset"].as_i64() == Some(record.chain_prev_offset),
            "previous offset"
        );
        from_hex(prev["record_hash"].as_str().unwrap_or_default()).context("previous hash")?
    };
    ensure!(
        record_hash(&prev_hash, &record) == record.record_hash,
        "record hash does not recompute"
    );
    let path: Vec<AuditRow> = serde_json::from_value(proof["path"].clone()).context("path")?;
    let mut head = (record.kafka_offset, record.record_hash);
    for r in &path {
        ensure!(
            r.kafka_topic == record.kafka_topic && r.kafka_partition == record.kafka_partition,
            "path leaves the chain"
        );
        ensure!(
            r.chain_prev_offset == head.0,
            "path broken at offset {}",
            r.kafka_offset
        );
        ensure!(
            record_hash(&head.1, r) == r.record_hash,
            "path record at offset {} does not recompute",
            r.kafka_offset
        );
        head = (r.kafka_offset, r.record_hash);
    }
    let jws = proof["checkpoint"]["jws"]
        .as_str()
        .context("no checkpoint")?;
    let claims = checkpoint::verify(jws, jwks).map_err(|e| anyhow::anyhow!("JWS: {e}"))?;
    ensure!(
        claims.topic == record.kafka_topic && claims.partition == record.kafka_partition,
        "checkpoint of another chain"
    );
    ensure!(
        claims.last_offset == head.0 && claims.head_hash == to_hex(&head.1),
        "path does not end at the signed head"
    );
    ensure!(
        claims.first_offset <= record.kafka_offset,
        "record before the checkpoint span"
    );
    if let Some(next) = path.first() {
        ensure!(
            proof["next"]["kafka_offset"].as_i64() == Some(next.kafka_offset),
            "next neighbour"
        );
    }
    Ok((claims, path.iter().map(|r| r.kafka_offset).collect()))
}

async fn mutate(sql: &str, topic: &str, offset: i64) -> Result<()> {
    admin()
        .query(sql)
        .bind(topic)
        .bind(offset)
        .with_setting("mutations_sync", "2")
        .execute()
        .await
        .with_context(|| sql.to_owned())
}

/// Query-audit rows of `caller`: (report, status) pairs, waiting for at least `n` with no
/// request still `answering` (final records are written after the answer).
async fn audited(caller: &str, n: usize) -> Result<Vec<(String, String)>> {
    let start = std::time::Instant::now();
    loop {
        let rows: Vec<(String, String)> = admin()
            .query("SELECT report, status FROM custos.report_queries FINAL WHERE caller_sub = ? ORDER BY asked_at")
            .bind(caller)
            .fetch_all()
            .await?;
        let settled = rows.len() >= n && rows.iter().all(|(_, s)| s != "answering");
        if settled || start.elapsed() > Duration::from_secs(15) {
            return Ok(rows);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_endpoints_verify_prove_and_catch_tampering() -> Result<()> {
    support::ensure_schema()?;
    let topics = Topics::create("qi", 1).await?;
    let tag = unique("qi");
    let tenant = tag.clone();
    let msgs: Vec<Msg> = (0..EVENTS)
        .map(|n| Msg::json(&event(&tag, &tenant, n)))
        .collect();
    let mut ingest = Ingest::spawn(&topics, &[("CUSTOS_CHECKPOINT_EVERY_RECORDS", "5")])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    produce(&producer()?, &topics.gateway, Some(0), &msgs).await?;
    wait_stored(&topics.input_list(), EVENTS as u64, Duration::from_secs(90)).await?;
    // Shutdown signs the tail's checkpoint.
    assert_eq!(ingest.terminate(Duration::from_secs(60))?, 0);

    let jwks_file = checkpoint_jwks();
    let app = support::app(&[
        "--checkpoint-jwks-file",
        jwks_file.to_str().context("path")?,
    ]);
    let auditor_sub = format!("auditor-{tag}");
    let auditor = token(&auditor_sub, &["auditor"]);
    let g = topics.gateway.as_str();
    let chain = format!("{g}/0");

    // The JWKS is public and holds public keys only.
    let r = get(&app, "/.well-known/custos-checkpoint-jwks.json", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type, "application/jwk-set+json");
    let jwks = r.json();
    assert_eq!(jwks["keys"][0]["kid"], "test-ck");
    assert!(jwks["keys"][0].get("d").is_none(), "private key served");
    assert_eq!(get(&app, "/v1/integrity/jwks", None).await.json(), jwks);

    // The endpoints are described.
    let doc = get(&app, "/openapi.json", None).await.json();
    for path in [
        "/v1/integrity/verify",
        "/v1/integrity/proof",
        "/.well-known/custos-checkpoint-jwks.json",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} not in the OpenAPI"
        );
    }

    // Untouched: clean, every record checked, checkpoints verified.
    let verify_url = url("/v1/integrity/verify", &[("topic", g), ("partition", "0")]);
    let r = get(&app, &verify_url, Some(&auditor)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["clean"], true, "{v:#}");
    assert_eq!(v["jwks_configured"], true);
    assert_eq!(v["records"], EVENTS);
    let c = &v["chains"][0];
    assert_eq!(v["chains"].as_array().map(Vec::len), Some(1));
    assert_eq!(c["chain"], chain.as_str());
    assert_eq!(
        (c["first_offset"].as_i64(), c["last_offset"].as_i64()),
        (Some(0), Some(EVENTS - 1))
    );
    assert_eq!(c["first_break"], Value::Null);
    assert!(c["checkpoints_ok"].as_u64().unwrap_or(0) >= 5, "{c}");
    // Over an event-time window too.
    let r = get(
        &app,
        &url(
            "/v1/integrity/verify",
            &[("topic", g), ("from", "2026-04-01"), ("to", "2026-04-02")],
        ),
        Some(&auditor),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["clean"].clone(), r.json()["records"].clone()),
        (json!(true), json!(EVENTS))
    );

    // A proof for a record in the middle of a checkpoint span, checked independently.
    let id7 = format!("{tag}-7");
    let r = get(
        &app,
        &url(
            "/v1/integrity/proof",
            &[("event_id", &id7), ("tenant", &tenant)],
        ),
        Some(&auditor),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("RAWPAT-"), "raw patient id in a proof");
    let proof = r.json();
    assert_eq!(proof["status"], "covered");
    assert_eq!(proof["chain"], chain.as_str());
    assert_eq!(proof["record"]["event_id"], id7.as_str());
    assert_eq!(proof["record"]["kafka_offset"], 7);
    assert_eq!(proof["checks"]["verified"], true, "{:#}", proof["checks"]);
    let (claims, path) = check_proof(&proof, &jwks)?;
    assert_eq!(
        (claims.first_offset, claims.last_offset, claims.count),
        (5, 9, 5)
    );
    assert_eq!(path, vec![8, 9]);
    assert_eq!(proof["previous"]["kafka_offset"], 6);
    assert_eq!(proof["next"]["kafka_offset"], 8);

    // By event key; the head of a span (empty path); the first record (genesis).
    let key7 = custos_schemas::row::event_key(SOURCE, &id7);
    let by_key = get(
        &app,
        &url("/v1/integrity/proof", &[("event_key", &key7)]),
        Some(&auditor),
    )
    .await;
    assert_eq!(by_key.status, 200, "{}", by_key.text());
    assert_eq!(by_key.json()["record"], proof["record"]);
    for (n, want_path) in [(9, vec![]), (0, vec![1, 2, 3, 4]), (22, vec![])] {
        let r = get(
            &app,
            &url(
                "/v1/integrity/proof",
                &[("event_id", &format!("{tag}-{n}")), ("tenant", &tenant)],
            ),
            Some(&auditor),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let (_, path) = check_proof(&r.json(), &jwks).with_context(|| format!("proof of {n}"))?;
        assert_eq!(path, want_path, "path of {n}");
    }

    // Bad requests and unknown events.
    for (params, want) in [
        (vec![("event_id", "nope"), ("tenant", tenant.as_str())], 404),
        (
            vec![("event_id", id7.as_str()), ("event_key", key7.as_str())],
            400,
        ),
        (vec![("event_key", "XYZ")], 400),
        (vec![("tenant", tenant.as_str())], 400),
    ] {
        let r = get(&app, &url("/v1/integrity/proof", &params), Some(&auditor)).await;
        assert_eq!(r.status, want, "{params:?}: {}", r.text());
    }
    for params in [
        vec![("partition", "0")],
        vec![("topic", g), ("partition", "-1")],
        vec![("topic", "a b")],
    ] {
        let r = get(&app, &url("/v1/integrity/verify", &params), Some(&auditor)).await;
        assert_eq!(r.status, 400, "{params:?}");
    }

    // Role matrix: only auditors.
    let proof_url = url(
        "/v1/integrity/proof",
        &[("event_id", &id7), ("tenant", &tenant)],
    );
    let others = format!("others-{tag}");
    for roles in [
        vec!["compliance_officer"],
        vec!["privacy_officer"],
        vec!["incident_responder"],
        vec![
            "compliance_officer",
            "privacy_officer",
            "incident_responder",
        ],
        vec![],
    ] {
        let t = token(&others, &roles);
        for u in [&verify_url, &proof_url] {
            assert_eq!(get(&app, u, Some(&t)).await.status, 403, "{roles:?} {u}");
        }
    }
    for u in [&verify_url, &proof_url] {
        assert_eq!(get(&app, u, None).await.status, 401);
    }

    // Tamper with one record: verify names it, its proof and its span's proofs fail.
    mutate(
        "ALTER TABLE custos.audit_events UPDATE user_agent = 'edited' WHERE kafka_topic = ? AND kafka_partition = 0 AND kafka_offset = ?",
        g,
        12,
    )
    .await?;
    let r = get(&app, &verify_url, Some(&auditor)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["clean"], false);
    let first = &v["chains"][0]["first_break"];
    assert_eq!(first["kind"], "altered", "{v:#}");
    assert_eq!(first["offset"], 12);
    assert_eq!(first["event_id"], format!("{tag}-12").as_str());
    for n in [12, 11] {
        let r = get(
            &app,
            &url(
                "/v1/integrity/proof",
                &[("event_id", &format!("{tag}-{n}")), ("tenant", &tenant)],
            ),
            Some(&auditor),
        )
        .await;
        assert_eq!(r.status, 200);
        let p = r.json();
        assert_eq!(p["checks"]["verified"], false, "{n}: {:#}", p["checks"]);
        if check_proof(&p, &jwks).is_ok() {
            bail!("the proof of {n} still checks after offset 12 was altered");
        }
    }
    // A span the alteration did not touch still proves.
    let r = get(&app, &proof_url, Some(&auditor)).await;
    check_proof(&r.json(), &jwks).context("untouched span")?;

    // Every call is in the query audit, refusals included.
    let rows = audited(&auditor_sub, 12).await?;
    let count = |report: &str| {
        rows.iter()
            .filter(|(r, s)| r == report && s == "answered")
            .count()
    };
    assert!(count("integrity-verify") >= 3, "{rows:?}");
    assert!(count("integrity-proof") >= 8, "{rows:?}");
    let refused = audited(&others, 10).await?;
    assert_eq!(
        refused.iter().filter(|(_, s)| s == "forbidden").count(),
        10,
        "{refused:?}"
    );
    Ok(())
}
