//! End-to-end: every source format and event type through the real Kafka, the real
//! `custos-ingest` binary and the real ClickHouse; no raw identifier anywhere; hostile
//! input to the DLQ; SIGTERM flushes and commits; migrations and grants.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use custos_schemas::row::RowContext;
use custos_schemas::{decode, AuditRow, DecodeLimits, KafkaPosition, KeyRing, PseudonymKind};
use custos_tests::events::{self, Raw};
use custos_tests::*;
use serde_json::json;

fn fixtures(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = workspace().join("schemas/tests/fixtures").join(kind);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| (file_name(&p), std::fs::read(&p).expect("read fixture")))
        .collect();
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Rows as the pure conversion computes them, keyed by event_key, with the volatile
/// columns (ingest time, offset) zeroed.
fn expected_rows(
    msgs: &[(String, custos_tests::Msg)],
    keys: &KeyRing,
) -> HashMap<String, AuditRow> {
    let ctx = RowContext {
        keys,
        default_tenant: "default",
    };
    let mut out = HashMap::new();
    for (topic, m) in msgs {
        let headers: Vec<(&str, &[u8])> = m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        if let Ok(ev) = decode(&m.payload, &headers, &DecodeLimits::default()) {
            let pos = KafkaPosition {
                topic: topic.clone(),
                partition: 0,
                offset: 0,
            };
            let mut row = ctx.audit_row(&ev, &pos, 0);
            normalize(&mut row);
            out.insert(row.event_key.clone(), row);
        }
    }
    out
}

fn normalize(row: &mut AuditRow) {
    row.ingested_at = 0;
    row.chain_prev_offset = -1;
    row.record_hash = custos_integrity::chain::GENESIS;
    row.prev_event_key.clear();
    row.kafka_offset = 0;
    row.kafka_partition = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_and_type_round_trips_without_leaking_identifiers() -> Result<()> {
    migrate()?;
    let topics = Topics::create("roundtrip", 2).await?;
    let raw = Raw::new(&unique("rt"));
    let keys = KeyRing::parse(&TEST_KEYS.replace(',', "\n"), None)?;

    // Structured CloudEvents of every type on the gateway topic; binary mode on AS events;
    // Keycloak fixtures on AS events; FHIR AuditEvent fixtures on the gateway topic.
    let mut msgs: Vec<(String, Msg)> = Vec::new();
    for (_, v) in events::every_type(&unique("ce"), &raw) {
        msgs.push((topics.gateway.clone(), Msg::json(&v)));
    }
    let bin_access = events::fhir_access("bin-1", &raw);
    msgs.push((
        topics.as_events.clone(),
        events::binary(&unique("bin"), "custos.fhir.access", &bin_access["data"]),
    ));
    let logout = json!({"iss": "https://as.test", "sub": raw.patient_sub, "fhirUser": format!("Patient/{}", raw.patient), "client_id": "patient-app"});
    msgs.push((
        topics.as_events.clone(),
        events::binary(&unique("bin"), "custos.auth.logout", &logout),
    ));
    for (_, bytes) in fixtures("keycloak") {
        msgs.push((topics.as_events.clone(), Msg::raw(bytes)));
    }
    for (_, bytes) in fixtures("fhir") {
        msgs.push((topics.gateway.clone(), Msg::raw(bytes)));
    }
    // FHIR Consent resources on the consent topic: granted, withdrawn, expired, and a draft
    // (not a decision: dead-lettered).
    let fc = unique("fc");
    let fhir_consents = [
        ("active", "2027-01-01", "custos.consent.granted"),
        ("inactive", "2027-01-01", "custos.consent.revoked"),
        ("inactive", "2026-05-01", "custos.consent.expired"),
    ];
    for (i, (status, end, _)) in fhir_consents.iter().enumerate() {
        let c = events::fhir_consent(&format!("{fc}-{i}"), &raw, status, end);
        msgs.push((topics.consent.clone(), Msg::json(&c)));
    }
    let draft = events::fhir_consent(&format!("{fc}-draft"), &raw, "draft", "2027-01-01");
    msgs.push((topics.consent.clone(), Msg::json(&draft)));
    // Fixtures are shared by tests: give them unique ids so this run's rows are its own.
    let tag = unique("fx");
    for (_, m) in msgs.iter_mut() {
        let mut v: serde_json::Value = match serde_json::from_slice(&m.payload) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if m.headers.is_empty() && v.get("id").is_some() && v.get("specversion").is_none() {
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            v["id"] = json!(format!("{tag}-{id}"));
            m.payload = serde_json::to_vec(&v)?;
        }
    }
    let expected = expected_rows(&msgs, &keys);
    let rejected = msgs.len() - expected.len();
    assert!(
        expected.len() >= 13 + 2 + 15 + 7 + 3,
        "only {} decodable",
        expected.len()
    );

    let mut ingest = Ingest::spawn(&topics, &[])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    let producer = producer()?;
    for (topic, m) in &msgs {
        produce(&producer, topic, None, std::slice::from_ref(m)).await?;
    }
    wait_stored(
        &topics.input_list(),
        expected.len() as u64,
        Duration::from_secs(90),
    )
    .await?;

    // Every row equals what the conversion computes, column by column.
    let stored: Vec<AuditRow> = admin()
        .query("SELECT ?fields FROM custos.audit_events FINAL WHERE kafka_topic IN ?")
        .bind(topics.input_list())
        .fetch_all()
        .await?;
    assert_eq!(stored.len(), expected.len());
    let mut types = std::collections::BTreeSet::new();
    let mut formats = std::collections::BTreeSet::new();
    for mut row in stored {
        let topic = row.kafka_topic.clone();
        normalize(&mut row);
        let want = expected
            .get(&row.event_key)
            .with_context(|| format!("unexpected row {}", row.event_id))?;
        let mut want = want.clone();
        want.kafka_topic = topic;
        assert_eq!(row, want, "row {} differs", row.event_id);
        types.insert(row.event_type.clone());
        formats.insert(row.source_format.clone());
    }
    assert_eq!(types.len(), 13, "types seen: {types:?}");
    assert_eq!(
        formats.into_iter().collect::<Vec<_>>(),
        [
            "cloudevents",
            "cloudevents-binary",
            "fhir-auditevent",
            "fhir-consent",
            "keycloak",
            "keycloak-admin"
        ]
    );

    // Spot checks of the identifier policy on stored rows.
    let (sub, ip): (String, String) = admin()
        .query("SELECT user_sub, source_ip FROM custos.audit_events FINAL WHERE kafka_topic IN ? AND event_type = 'custos.auth.login' AND source_format = 'cloudevents'")
        .bind(topics.input_list())
        .fetch_one()
        .await?;
    assert_eq!(
        sub,
        keys.pseudonymize("general", PseudonymKind::Subject, &raw.patient_sub)
    );
    assert_eq!(
        ip,
        keys.pseudonymize("general", PseudonymKind::Ip, &raw.patient_ip)
    );
    let (user, patient): (String, String) = admin()
        .query("SELECT user_sub, patient FROM custos.audit_events FINAL WHERE kafka_topic IN ? AND event_type = 'custos.fhir.access' AND source_format = 'cloudevents'")
        .bind(topics.input_list())
        .fetch_one()
        .await?;
    assert_eq!(user, "dr-alice");
    assert_eq!(
        patient,
        keys.pseudonymize("general", PseudonymKind::Patient, &raw.patient)
    );

    // FHIR Consents are consent audit records: patient and AS subject pseudonymized.
    let consents: Vec<(String, String, String, String, String, String)> = admin()
        .query(
            "SELECT consent_id, event_type, patient, user_sub, client_id, reason \
             FROM custos.audit_events FINAL WHERE kafka_topic = ? AND source_format = 'fhir-consent' \
             ORDER BY consent_id",
        )
        .bind(&topics.consent)
        .fetch_all()
        .await?;
    assert_eq!(consents.len(), fhir_consents.len(), "{consents:?}");
    for (i, (id, ty, patient, sub, client, reason)) in consents.iter().enumerate() {
        assert_eq!(id, &format!("{tag}-{fc}-{i}"));
        assert_eq!(ty, fhir_consents[i].2, "{id}");
        assert_eq!(
            patient,
            &keys.pseudonymize("general", PseudonymKind::Patient, &raw.patient)
        );
        assert_eq!(
            sub,
            &keys.pseudonymize("general", PseudonymKind::Subject, &raw.patient_sub)
        );
        assert_eq!(client, "patient-app");
        assert_eq!(reason.is_empty(), i == 0, "{id}: {reason}");
    }

    // The unmappable fixtures went to the DLQ, not silently away; of the FHIR Consents
    // only the draft did.
    let dlq = consume_all(&topics.dlq, rejected, Duration::from_secs(30))?;
    assert_eq!(dlq.len(), rejected);
    let dead_consents: Vec<String> = dlq
        .iter()
        .filter_map(|(payload, headers)| {
            let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
            (v["resourceType"] == "Consent").then(|| {
                let reason = headers
                    .get("custos-reason")
                    .map(|r| String::from_utf8_lossy(r).to_string())
                    .unwrap_or_default();
                format!("{} {reason}", v["id"].as_str().unwrap_or_default())
            })
        })
        .collect();
    assert_eq!(
        dead_consents,
        vec![format!("{}-{fc}-draft unknown_type", tag)],
        "FHIR Consents in the DLQ"
    );

    // No raw patient identifier in any table, nor in the service's log.
    let mut secrets = raw.all();
    secrets.push("pat-5501".into());
    secrets.push("a7c9e2f0-1b3d-4e5f-8a6b-9c0d1e2f3a4b".into());
    let tables: Vec<String> = admin()
        .query(
            "SELECT name FROM system.tables WHERE database = 'custos' AND engine NOT LIKE '%View'",
        )
        .fetch_all()
        .await?;
    assert!(tables.contains(&"audit_events".to_owned()));
    // Every byte of every table, streamed: a long-lived dev stack holds tens of millions of
    // rows. The tail of each chunk is kept, so a value split across chunks is still found.
    let finders: Vec<_> = secrets
        .iter()
        .map(|s| memchr::memmem::Finder::new(s.as_bytes()))
        .collect();
    let overlap = secrets.iter().map(String::len).max().unwrap_or(1) - 1;
    for table in &tables {
        assert!(table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        let mut dump = admin()
            .query(&format!("SELECT * FROM custos.{table}"))
            .fetch_bytes("TabSeparated")?;
        let mut window: Vec<u8> = Vec::new();
        while let Some(chunk) = dump.next().await? {
            window.extend_from_slice(&chunk);
            for (s, f) in secrets.iter().zip(&finders) {
                assert!(f.find(&window).is_none(), "{s} found in custos.{table}");
            }
            window.drain(..window.len().saturating_sub(overlap));
        }
    }
    assert_eq!(ingest.terminate(Duration::from_secs(60))?, 0);
    let log = ingest.log_text();
    assert!(log.contains("starting ingest"), "log not captured");
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "{s} found in the ingest log");
    }
    assert!(!log.contains("5ca1ab1e5ca1ab1e"), "key material in the log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_reach_the_dlq_with_reasons_and_neighbours_are_stored() -> Result<()> {
    migrate()?;
    let topics = Topics::create("hostile", 1).await?;
    let raw = Raw::new(&unique("h"));
    let p = unique("hv");
    let valid = |n: u32| Msg::json(&events::fhir_access(&format!("{p}-{n}"), &raw));
    let mut token_missing_jti = events::every_type(&p, &raw)[3].1.clone();
    token_missing_jti["id"] = json!(format!("{p}-nojti"));
    token_missing_jti["data"]
        .as_object_mut()
        .map(|d| d.remove("jti"));
    let mut mistyped = events::fhir_access(&format!("{p}-mistyped"), &raw);
    mistyped["data"]["httpStatus"] = json!("two hundred");
    let mut unknown = events::fhir_access(&format!("{p}-unknown"), &raw);
    unknown["type"] = json!("custos.fhir.teleport");
    let mut huge = events::fhir_access(&format!("{p}-huge"), &raw);
    huge["data"]["userAgent"] = json!("x".repeat(1024 * 1024 + 10));
    let mut jwt = events::fhir_access(&format!("{p}-jwt"), &raw);
    jwt["data"]["userAgent"] =
        json!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkci1hbGljZSJ9.c2lnbmF0dXJl");
    let mut access_token = events::fhir_access(&format!("{p}-at"), &raw);
    access_token["data"]["access_token"] = json!("opaque-secret");
    let mut bin_missing = events::binary("x", "custos.auth.logout", &json!({}));
    bin_missing.headers.retain(|(k, _)| k != "ce_id");

    let sequence: Vec<(Msg, Option<&str>)> = vec![
        (valid(1), None),
        (Msg::raw(b"{not json".to_vec()), Some("invalid_json")),
        (valid(2), None),
        (Msg::json(&unknown), Some("unknown_type")),
        (Msg::json(&token_missing_jti), Some("missing_field")),
        (Msg::json(&mistyped), Some("invalid_field")),
        (Msg::json(&huge), Some("too_large")),
        (Msg::json(&jwt), Some("raw_token")),
        (Msg::json(&access_token), Some("raw_token")),
        (Msg::raw(Vec::new()), Some("invalid_json")),
        (bin_missing, Some("missing_field")),
        (
            Msg::json(&json!({"hello": "world"})),
            Some("unknown_format"),
        ),
        (valid(3), None),
    ];
    let producer = producer()?;
    let msgs: Vec<Msg> = sequence.iter().map(|(m, _)| m.clone()).collect();
    produce(&producer, &topics.gateway, Some(0), &msgs).await?;

    let ingest = Ingest::spawn(&topics, &[])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    wait_stored(&topics.input_list(), 3, Duration::from_secs(60)).await?;

    let expected_rejects: Vec<(&Msg, &str)> = sequence
        .iter()
        .filter_map(|(m, r)| r.map(|r| (m, r)))
        .collect();
    let dlq = consume_all(&topics.dlq, expected_rejects.len(), Duration::from_secs(60))?;
    assert_eq!(dlq.len(), expected_rejects.len(), "DLQ messages");
    for ((payload, headers), (msg, reason)) in dlq.iter().zip(&expected_rejects) {
        let got = String::from_utf8_lossy(headers.get("custos-reason").context("reason header")?)
            .to_string();
        if got == "raw_token" {
            // Credentials are redacted; the rest of the message is kept for repair.
            assert_ne!(&payload[..], &msg.payload[..], "a token left in the DLQ");
            let text = String::from_utf8_lossy(payload);
            assert!(text.contains("[redacted]") && text.contains(&p), "{text}");
            assert!(!text.contains("opaque-secret") && !text.contains("c2lnbmF0dXJl"));
        } else {
            assert_eq!(
                &payload[..],
                &msg.payload[..],
                "DLQ keeps the original bytes"
            );
        }
        assert_eq!(got, *reason);
        assert!(headers.contains_key("custos-detail"));
        assert_eq!(
            headers.get("custos-source-topic").map(|v| v.as_slice()),
            Some(topics.gateway.as_bytes())
        );
        for (k, v) in &msg.headers {
            assert_eq!(
                headers.get(k).map(|x| x.as_slice()),
                Some(v.as_bytes()),
                "header {k} kept"
            );
        }
    }
    // Details name fields, never values.
    for (_, headers) in &dlq {
        let detail = String::from_utf8_lossy(&headers["custos-detail"]).to_string();
        assert!(
            !detail.contains("two hundred") && !detail.contains(&raw.patient),
            "{detail}"
        );
    }
    let stored: Vec<String> = admin()
        .query("SELECT event_id FROM custos.audit_events FINAL WHERE kafka_topic = ? ORDER BY kafka_offset")
        .bind(&topics.gateway)
        .fetch_all()
        .await?;
    assert_eq!(
        stored,
        vec![format!("{p}-1"), format!("{p}-2"), format!("{p}-3")]
    );
    let reasons: Vec<(i64, String)> = admin()
        .query("SELECT kafka_offset, reason FROM custos.ingest_rejections FINAL WHERE kafka_topic = ? ORDER BY kafka_offset")
        .bind(&topics.gateway)
        .fetch_all()
        .await?;
    let want: Vec<(i64, String)> = sequence
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| r.map(|r| (i as i64, r.to_owned())))
        .collect();
    assert_eq!(reasons, want);
    let rejected = ingest.metric("custos_ingest_rejected_total").await?;
    assert_eq!(rejected as usize, expected_rejects.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_commits_and_exits_zero() -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    migrate()?;
    let topics = Topics::create("sigterm", 2).await?;
    let p = unique("st");
    let msgs: Vec<Msg> = (0..3000).map(|n| events::bulk(&p, n)).collect();
    produce(&producer()?, &topics.gateway, None, &msgs).await?;
    // A linger and a batch size that never trigger: only the shutdown flush writes.
    let mut ingest = Ingest::spawn(
        &topics,
        &[
            ("CUSTOS_BATCH_LINGER_MS", "60000"),
            ("CUSTOS_BATCH_MAX_ROWS", "1000000"),
        ],
    )?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        stored_count(&topics.input_list()).await?,
        0,
        "nothing written before shutdown"
    );
    assert_eq!(ingest.terminate(Duration::from_secs(60))?, 0, "exit code");
    assert_eq!(stored_count(&topics.input_list()).await?, 3000);

    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &topics.group)
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(&topics.gateway, 0);
    tpl.add_partition(&topics.gateway, 1);
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut total = 0;
    for e in committed.elements() {
        let (_, high) =
            c.fetch_watermarks(&topics.gateway, e.partition(), Duration::from_secs(10))?;
        assert_eq!(
            e.offset(),
            rdkafka::Offset::Offset(high),
            "partition {} committed",
            e.partition()
        );
        total += high;
    }
    assert_eq!(total, 3000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_accounts_least_privileged() -> Result<()> {
    migrate()?;
    migrate()?;
    let versions: Vec<u32> = admin()
        .query("SELECT DISTINCT version FROM custos.schema_migrations ORDER BY version")
        .fetch_all()
        .await?;
    let want: Vec<u32> = custos_schemas::migrations::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, want, "each migration recorded once");

    // Each service has its own account, allowed exactly its tables: (account, tables it may
    // INSERT into, tables it may SELECT from; "*" = every table).
    let tables: Vec<String> = admin()
        .query(
            "SELECT name FROM system.tables WHERE database = 'custos' \
             AND engine NOT IN ('MaterializedView') AND NOT startsWith(name, '.inner')",
        )
        .fetch_all()
        .await?;
    let ingest = [
        "audit_events",
        "ingest_rejections",
        "chain_heads",
        "chain_checkpoints",
    ];
    let consent = [
        "consent_history",
        "consent_sealed",
        "revocations",
        "revocation_attempts",
    ];
    let alerts = ["alerts", "alert_actions", "detector_state"];
    let expect: [(&str, Vec<&str>, Vec<&str>); 5] = [
        ("writer", ingest.to_vec(), ingest.to_vec()),
        (
            "query",
            vec![
                "report_queries",
                "alert_actions",
                "break_glass_reviews",
                "ledger",
            ],
            vec![],
        ),
        (
            "consent",
            [&consent[..], &["alert_actions", "report_queries", "ledger"]].concat(),
            [
                &consent[..],
                &["consent_current", "revocation_status", "alert_actions"],
            ]
            .concat(),
        ),
        (
            "alerts",
            [&alerts[..], &["ledger"]].concat(),
            [&alerts[..], &["audit_events", "break_glass_reviews"]].concat(),
        ),
        ("reader", vec![], vec!["*"]),
    ];
    let denied = |e: &clickhouse::error::Error| {
        let m = e.to_string();
        m.contains("Code: 497") || m.contains("ACCESS_DENIED") || m.contains("privileges")
    };
    for (name, inserts, selects) in &expect {
        let c = account(name);
        for t in &tables {
            let may_select = selects.contains(&"*") || selects.contains(&t.as_str());
            let r = c
                .query(&format!("SELECT count() FROM custos.{t}"))
                .fetch_one::<u64>()
                .await;
            match (&r, may_select) {
                (Ok(_), true) => {}
                (Err(e), false) if denied(e) => {}
                _ => panic!("custos_{name} SELECT on {t}: {r:?} (allowed: {may_select})"),
            }
            let is_view = ["audit_events_dedup", "consent_current", "revocation_status"]
                .contains(&t.as_str());
            if is_view {
                continue;
            }
            let may_insert = inserts.contains(&t.as_str());
            let r = c
                .query(&format!("INSERT INTO custos.{t} FORMAT Values"))
                .execute()
                .await;
            match (&r, may_insert) {
                (Ok(()), true) => {}
                (Err(e), false) if denied(e) => {}
                _ => panic!("custos_{name} INSERT into {t}: {r:?} (allowed: {may_insert})"),
            }
        }
        for stmt in [
            "DROP TABLE custos.audit_events",
            "TRUNCATE TABLE custos.audit_events",
            "ALTER TABLE custos.audit_events DELETE WHERE 1",
            "ALTER TABLE custos.ingest_rejections UPDATE reason = 'x' WHERE 1",
            "CREATE TABLE custos.evil (x UInt8) ENGINE = Memory",
        ] {
            let r = c.query(stmt).execute().await;
            assert!(
                r.as_ref().is_err_and(denied),
                "custos_{name} may run: {stmt}: {r:?}"
            );
        }
    }
    Ok(())
}
