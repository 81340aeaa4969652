//! End-to-end tamper evidence: records ingested by the real pipeline are hash-chained per
//! partition with signed checkpoints; `custos-ingest verify` finds each tampering done with
//! the admin account (alter, delete, forged insert, reorder, bad checkpoint signature) at its
//! exact position, and an untouched log verifies clean.

use std::time::Duration;

use anyhow::{Context, Result};
use custos_integrity::chain::record_hash;
use custos_schemas::AuditRow;
use custos_tests::events::{self, Raw};
use custos_tests::*;
use serde_json::Value;

const PER_PARTITION: i64 = 40;

async fn row_at(topic: &str, partition: i32, offset: i64) -> Result<AuditRow> {
    Ok(admin()
        .query("SELECT ?fields FROM custos.audit_events FINAL WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset = ?")
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .fetch_one()
        .await?)
}

async fn mutate(sql: &str, topic: &str, partition: i32, offset: i64) -> Result<()> {
    admin()
        .query(sql)
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .with_setting("mutations_sync", "2")
        .execute()
        .await
        .with_context(|| sql.to_owned())
}

fn findings(report: &Value) -> Vec<(String, i64)> {
    verify_findings(report, "findings", "offset")
}

fn verify_partition(topic: &str, partition: i32) -> Result<(i32, Value)> {
    verify_chains(&["--topic", topic, "--partition", &partition.to_string()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_each_tampering_at_its_exact_position() -> Result<()> {
    migrate()?;
    let topics = Topics::create("tamper", 5).await?;
    let raw = Raw::new(&unique("tp"));
    let p = unique("tv");
    let producer = producer()?;
    // Partition 2 gets a poison message at offset 25: a gap the chain skips on purpose.
    for partition in 0..5 {
        let msgs: Vec<Msg> = (0..PER_PARTITION)
            .map(|n| {
                if partition == 2 && n == 25 {
                    Msg::raw(b"{poison".to_vec())
                } else {
                    Msg::json(&events::fhir_access(&format!("{p}-{partition}-{n}"), &raw))
                }
            })
            .collect();
        produce(&producer, &topics.gateway, Some(partition), &msgs).await?;
    }
    let env = [("CUSTOS_CHECKPOINT_EVERY_RECORDS", "10")];
    // Shutdown signs the checkpoints of the tails.
    assert_eq!(
        ingest_until_stored(&topics, &env, 5 * PER_PARTITION as u64 - 1).await?,
        0
    );

    // Untouched: clean, with checkpoints verified and published outside the database.
    let (code, report) = verify_chains(&["--topic", &topics.gateway])?;
    assert_eq!(code, 0, "clean log: {report:#}");
    let chains = report["chains"].as_array().context("chains")?;
    assert_eq!(chains.len(), 5);
    for c in chains {
        assert!(
            c["checkpoints_ok"].as_u64().unwrap_or(0) >= 4,
            "checkpoints: {c}"
        );
    }
    let published = consume_all(&topics.checkpoints, 20, Duration::from_secs(30))?;
    assert!(
        published.len() >= 20,
        "checkpoints on Kafka: {}",
        published.len()
    );
    let gap: u64 = admin()
        .query("SELECT count() FROM custos.ingest_rejections WHERE kafka_topic = ? AND kafka_partition = 2 AND kafka_offset = 25")
        .bind(&topics.gateway)
        .fetch_one()
        .await?;
    assert_eq!(gap, 1, "the skipped offset is recorded as a rejection");

    let g = topics.gateway.as_str();
    // 0: alter one field of one record.
    mutate(
        "ALTER TABLE custos.audit_events UPDATE user_agent = 'edited' WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset = ?",
        g, 0, 7,
    )
    .await?;
    // 1: delete one record.
    mutate(
        "ALTER TABLE custos.audit_events DELETE WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset = ?",
        g, 1, 12,
    )
    .await?;
    // 2: insert a forged record into the gap, with a correctly computed hash.
    let mut forged = row_at(g, 2, 24).await?;
    forged.kafka_offset = 25;
    forged.event_id = format!("{p}-forged");
    forged.event_key = "forged".into();
    forged.chain_prev_offset = 24;
    forged.record_hash = record_hash(&forged.record_hash, &forged);
    let mut insert = admin()
        .with_database("custos")
        .insert::<AuditRow>("audit_events")
        .await?;
    insert.write(&forged).await?;
    insert.end().await?;
    // 3: swap the order of two records.
    let a = row_at(g, 3, 30).await?;
    let b = row_at(g, 3, 31).await?;
    for off in [30, 31] {
        mutate(
            "ALTER TABLE custos.audit_events DELETE WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset = ?",
            g, 3, off,
        )
        .await?;
    }
    let (mut a2, mut b2) = (a, b);
    a2.kafka_offset = 31;
    b2.kafka_offset = 30;
    let mut insert = admin()
        .with_database("custos")
        .insert::<AuditRow>("audit_events")
        .await?;
    insert.write(&b2).await?;
    insert.write(&a2).await?;
    insert.end().await?;
    // 4: break a checkpoint signature.
    admin()
        .query("ALTER TABLE custos.chain_checkpoints UPDATE jws = concat(substring(jws, 1, length(jws) - 4), 'AAAA') WHERE kafka_topic = ? AND kafka_partition = 4 AND last_offset = (SELECT min(last_offset) FROM custos.chain_checkpoints WHERE kafka_topic = ? AND kafka_partition = 4)")
        .bind(g)
        .bind(g)
        .with_setting("mutations_sync", "2")
        .execute()
        .await?;

    let (code, report) = verify_partition(g, 0)?;
    assert_eq!(code, 1);
    assert_eq!(
        findings(&report).first(),
        Some(&("altered".to_owned(), 7)),
        "{report:#}"
    );

    let (code, report) = verify_partition(g, 1)?;
    assert_eq!(code, 1);
    assert_eq!(
        findings(&report),
        vec![("missing".to_owned(), 12)],
        "{report:#}"
    );

    let (code, report) = verify_partition(g, 2)?;
    assert_eq!(code, 1);
    assert_eq!(
        findings(&report),
        vec![("unreferenced".to_owned(), 25)],
        "{report:#}"
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!("{p}-forged")),
        "names the forged event id"
    );

    let (code, report) = verify_partition(g, 3)?;
    assert_eq!(code, 1);
    assert_eq!(
        findings(&report).first(),
        Some(&("altered".to_owned(), 30)),
        "{report:#}"
    );

    let (code, report) = verify_partition(g, 4)?;
    assert_eq!(code, 1);
    assert!(findings(&report).is_empty(), "records intact: {report:#}");
    let cp = &report["chains"][0]["checkpoint_findings"];
    assert_eq!(cp.as_array().map(Vec::len), Some(1), "{report:#}");
    assert!(cp[0]["problem"]
        .as_str()
        .unwrap_or_default()
        .contains("signature"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_re_send_is_proven_a_duplicate_and_a_conflicting_reuse_is_not() -> Result<()> {
    migrate()?;
    let topics = Topics::create("dupchain", 2).await?;
    let raw = Raw::new(&unique("dp"));
    let p = unique("dc");
    let producer = producer()?;
    let event = |n: usize| events::fhir_access(&format!("{p}-{n}"), &raw);
    // Partition 0: event 2 is published again, byte for byte, at offset 5 (a producer retry).
    let mut benign: Vec<Msg> = (0..5).map(|n| Msg::json(&event(n))).collect();
    benign.push(Msg::json(&event(2)));
    benign.extend((5..10).map(|n| Msg::json(&event(n))));
    // Partition 1: offset 10 reuses the id of event 7 (offset 7) for different content.
    let mut conflicting: Vec<Msg> = (10..20).map(|n| Msg::json(&event(n))).collect();
    let mut other = event(17);
    other["data"]["resourceId"] = Value::from("Observation/not-the-same");
    conflicting.push(Msg::json(&other));
    conflicting.push(Msg::json(&event(20)));
    produce(&producer, &topics.gateway, Some(0), &benign).await?;
    produce(&producer, &topics.gateway, Some(1), &conflicting).await?;
    // Reports count each event identity once: 10 + 11.
    assert_eq!(ingest_until_stored(&topics, &[], 21).await?, 0);
    let physical: u64 = admin()
        .query("SELECT count() FROM custos.audit_events WHERE kafka_topic = ?")
        .bind(&topics.gateway)
        .fetch_one()
        .await?;
    assert!(physical >= 21, "stored rows: {physical}");

    // The re-send: the position whose copy deduplication hid is proven, not reported.
    let (code, report) = verify_partition(&topics.gateway, 0)?;
    assert_eq!(code, 0, "benign duplicate: {report:#}");
    let chain = &report["chains"][0];
    let collapsed = chain["collapsed_duplicates"]
        .as_array()
        .context("collapsed_duplicates")?;
    assert_eq!(collapsed.len(), 1, "{chain:#}");
    let (hidden, kept) = (
        collapsed[0]["offset"].as_i64().unwrap_or(-1),
        collapsed[0]["kept_offset"].as_i64().unwrap_or(-1),
    );
    assert!(
        (hidden, kept) == (2, 5) || (hidden, kept) == (5, 2),
        "collapsed {hidden}, kept {kept}"
    );
    assert_eq!(collapsed[0]["event_id"], format!("{p}-2"));
    assert_eq!(
        chain["records"].as_u64(),
        Some(11),
        "the proven copy is counted"
    );

    // The reuse of an id for other content cannot be proven: a missing record is reported.
    let (code, report) = verify_partition(&topics.gateway, 1)?;
    assert_eq!(code, 1, "conflicting reuse: {report:#}");
    let f = findings(&report);
    assert!(
        f.iter()
            .any(|(k, o)| k == "missing" && (*o == 7 || *o == 10)),
        "{f:?}"
    );
    assert_eq!(
        report["chains"][0]["collapsed_duplicates"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    Ok(())
}
