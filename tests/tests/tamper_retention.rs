//! End-to-end tamper evidence across retention and against the checkpoints' copy outside
//! the database: a prefix of a chain removed as retention would remove it verifies clean
//! with the pruned range named (a prefix younger than the horizon, or one whose checkpoints
//! were deleted too, still does not); a chain's tail or a whole chain deleted together with
//! its checkpoint rows is found from the checkpoint topic or an auditor's anchor file.

use std::time::Duration;

use anyhow::{Context, Result};
use custos_tests::events::{self, Raw};
use custos_tests::*;
use serde_json::Value;

/// Event time of the oldest records: older than the retention horizon seen from [`NOW`].
const OLD_TIME: &str = "2025-01-10T08:00:00Z";
/// Evaluating verify at this instant with the default retention (6 x 366 days) puts the
/// horizon in late May 2025: records of [`OLD_TIME`] may be gone, those of the test events'
/// default time (2026-05-04) may not.
const NOW: &str = "2031-06-01T00:00:00Z";

async fn delete_records(topic: &str, partition: i32, from: i64, to: i64) -> Result<()> {
    admin()
        .query(
            "ALTER TABLE custos.audit_events DELETE WHERE kafka_topic = ? AND kafka_partition = ? \
             AND kafka_offset >= ? AND kafka_offset <= ?",
        )
        .bind(topic)
        .bind(partition)
        .bind(from)
        .bind(to)
        .with_setting("mutations_sync", "2")
        .execute()
        .await
        .context("deleting records")
}

async fn delete_checkpoints(topic: &str, partition: i32, from_last: i64) -> Result<()> {
    admin()
        .query(
            "ALTER TABLE custos.chain_checkpoints DELETE WHERE kafka_topic = ? \
             AND kafka_partition = ? AND last_offset >= ?",
        )
        .bind(topic)
        .bind(partition)
        .bind(from_last)
        .with_setting("mutations_sync", "2")
        .execute()
        .await
        .context("deleting checkpoints")
}

/// (first_offset, last_offset) of the stored checkpoints of a chain.
async fn checkpoint_ranges(topic: &str, partition: i32) -> Result<Vec<(i64, i64)>> {
    Ok(admin()
        .query(
            "SELECT first_offset, last_offset FROM custos.chain_checkpoints FINAL \
             WHERE kafka_topic = ? AND kafka_partition = ? ORDER BY last_offset",
        )
        .bind(topic)
        .bind(partition)
        .fetch_all()
        .await?)
}

fn findings(report: &Value) -> Vec<(String, i64)> {
    verify_findings(report, "findings", "offset")
}

fn checkpoint_findings(report: &Value) -> Vec<(String, i64)> {
    verify_findings(report, "checkpoint_findings", "last_offset")
}

fn chain<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["chains"]
        .as_array()?
        .iter()
        .find(|c| c["chain"].as_str() == Some(name))
}

/// Produces `per_partition` FHIR accesses to each partition, the first `old` of each with
/// an event time older than the horizon, ingests them with a checkpoint every 10 records
/// (and none by time), and waits until all are stored and the tails are signed.
async fn ingest_chains(
    topics: &Topics,
    partitions: i32,
    per_partition: i64,
    old: i64,
) -> Result<()> {
    let raw = Raw::new(&unique("rp"));
    let p = unique("rt");
    let producer = producer()?;
    for partition in 0..partitions {
        let msgs: Vec<Msg> = (0..per_partition)
            .map(|n| {
                let mut ev = events::fhir_access(&format!("{p}-{partition}-{n}"), &raw);
                if n < old {
                    ev["time"] = Value::from(OLD_TIME);
                }
                Msg::json(&ev)
            })
            .collect();
        produce(&producer, &topics.gateway, Some(partition), &msgs).await?;
    }
    let env = [
        ("CUSTOS_CHECKPOINT_EVERY_RECORDS", "10"),
        ("CUSTOS_CHECKPOINT_EVERY_SECS", "3600"),
    ];
    let stored = partitions as u64 * per_partition as u64;
    assert_eq!(ingest_until_stored(topics, &env, stored).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_removed_by_retention_is_pruned_but_a_younger_or_unanchored_one_is_not(
) -> Result<()> {
    migrate()?;
    let topics = Topics::create("retain", 4).await?;
    ingest_chains(&topics, 4, 40, 20).await?;
    let g = topics.gateway.as_str();
    for partition in 0..4 {
        assert_eq!(
            checkpoint_ranges(g, partition).await?,
            vec![(0, 9), (10, 19), (20, 29), (30, 39)],
            "checkpoints of partition {partition}"
        );
    }
    let at_now = |partition: i32| {
        verify_chains(&[
            "--topic",
            g,
            "--partition",
            &partition.to_string(),
            "--now",
            NOW,
        ])
    };
    let (code, report) = verify_chains(&["--topic", g, "--now", NOW])?;
    assert_eq!(code, 0, "untouched: {report:#}");
    assert!(
        report["chains"]
            .as_array()
            .context("chains")?
            .iter()
            .all(|c| c["pruned"].as_array().is_some_and(Vec::is_empty)),
        "nothing pruned yet: {report:#}"
    );

    // 0: retention took exactly the first checkpoint's records: the rest is checked from
    // its signed head.
    delete_records(g, 0, 0, 9).await?;
    // 1: retention took records up to the middle of the second checkpoint.
    delete_records(g, 1, 0, 14).await?;
    // 2: the same prefix deleted with the checkpoints covering it: nothing proves it old.
    delete_records(g, 2, 0, 14).await?;
    admin()
        .query(
            "ALTER TABLE custos.chain_checkpoints DELETE WHERE kafka_topic = ? \
             AND kafka_partition = 2 AND last_offset <= 19",
        )
        .bind(g)
        .with_setting("mutations_sync", "2")
        .execute()
        .await?;
    // 3: a prefix reaching past the horizon (offsets 20..=24 are young).
    delete_records(g, 3, 0, 24).await?;

    let (code, report) = at_now(0)?;
    assert_eq!(code, 0, "pruned on a checkpoint boundary: {report:#}");
    let c = chain(&report, &format!("{g}/0")).context("chain 0")?;
    let pruned = c["pruned"].as_array().context("pruned")?;
    assert_eq!(pruned.len(), 1, "{c:#}");
    assert_eq!(pruned[0]["from_offset"], Value::Null);
    assert_eq!(pruned[0]["to_offset"], 9);
    assert_eq!(pruned[0]["resumed_at"], 10);
    assert_eq!(pruned[0]["checkpoint_first_offset"], 0);
    assert_eq!(pruned[0]["checkpoint_last_offset"], 9);
    assert_eq!(pruned[0]["checkpoint_source"], "store");
    assert_eq!(pruned[0]["anchored"], true);
    assert_eq!(c["records"], 30);
    assert_eq!(c["checkpoints_ok"], 3);
    assert_eq!(c["checkpoints_pruned"], 1);

    let (code, report) = at_now(1)?;
    assert_eq!(code, 0, "pruned inside a checkpoint: {report:#}");
    let c = chain(&report, &format!("{g}/1")).context("chain 1")?;
    let pruned = c["pruned"].as_array().context("pruned")?;
    assert_eq!(pruned.len(), 1, "{c:#}");
    assert_eq!(pruned[0]["to_offset"], 14);
    assert_eq!(pruned[0]["resumed_at"], 15);
    assert_eq!(pruned[0]["checkpoint_first_offset"], 10);
    assert_eq!(pruned[0]["checkpoint_last_offset"], 19);
    assert_eq!(pruned[0]["anchored"], false);
    assert_eq!(c["records"], 25);

    // Seen from today the same records are younger than the horizon: deleted, not expired.
    for (partition, gone) in [(0, 9), (1, 14)] {
        let (code, report) = verify_chains(&["--topic", g, "--partition", &partition.to_string()])?;
        assert_eq!(code, 1, "{report:#}");
        assert_eq!(
            findings(&report),
            vec![("missing".to_owned(), gone)],
            "{report:#}"
        );
    }

    // Without the checkpoints that cover it, the gap stays a break even past the horizon.
    let (code, report) = at_now(2)?;
    assert_eq!(code, 1, "unanchored prefix: {report:#}");
    assert_eq!(
        findings(&report),
        vec![("missing".to_owned(), 14)],
        "{report:#}"
    );
    // The checkpoint topic still holds them: their absence from the store is a break, and
    // the gap they cover is recognized as expired.
    let (code, report) = verify_chains(&[
        "--topic",
        g,
        "--partition",
        "2",
        "--now",
        NOW,
        "--brokers",
        &brokers(),
        "--checkpoints-topic",
        &topics.checkpoints,
    ])?;
    assert_eq!(code, 1, "{report:#}");
    assert!(findings(&report).is_empty(), "{report:#}");
    assert_eq!(
        checkpoint_findings(&report),
        vec![
            ("checkpoint_missing_from_store".to_owned(), 9),
            ("checkpoint_missing_from_store".to_owned(), 19)
        ],
        "{report:#}"
    );

    // Records younger than the horizon are never pruned.
    let (code, report) = at_now(3)?;
    assert_eq!(code, 1, "prefix past the horizon: {report:#}");
    assert_eq!(
        findings(&report),
        vec![("missing".to_owned(), 24)],
        "{report:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_or_a_whole_chain_deleted_with_its_checkpoints_is_found_from_outside() -> Result<()>
{
    migrate()?;
    let topics = Topics::create("cptail", 3).await?;
    ingest_chains(&topics, 3, 30, 0).await?;
    let g = topics.gateway.as_str();
    let brokers = brokers();
    let from_topic = |extra: &[&str]| {
        let mut args: Vec<&str> = vec![
            "--topic",
            g,
            "--brokers",
            &brokers,
            "--checkpoints-topic",
            &topics.checkpoints,
        ];
        args.extend_from_slice(extra);
        verify_chains(&args)
    };
    let (code, report) = from_topic(&[])?;
    assert_eq!(code, 0, "untouched: {report:#}");
    assert_eq!(report["external_checkpoints"], 9, "{report:#}");

    // An auditor keeps the published checkpoints.
    let published = consume_all(&topics.checkpoints, 9, Duration::from_secs(30))?;
    let jws: Vec<String> = published
        .iter()
        .map(|(payload, _)| String::from_utf8_lossy(payload).into_owned())
        .collect();
    assert_eq!(jws.len(), 9);
    let anchors = workspace()
        .join("target")
        .join(format!("{}-anchors.json", topics.checkpoints));
    std::fs::write(&anchors, serde_json::to_vec(&jws)?)?;
    let anchors = anchors.to_string_lossy().into_owned();

    // 0: the tail (offsets 20..=29) deleted with its checkpoint row.
    delete_records(g, 0, 20, 29).await?;
    delete_checkpoints(g, 0, 20).await?;
    // 1: the whole chain deleted with all its checkpoint rows.
    delete_records(g, 1, 0, 29).await?;
    delete_checkpoints(g, 1, 0).await?;

    // The store alone is consistent with itself.
    let (code, report) = verify_chains(&["--topic", g, "--no-checkpoints-topic"])?;
    assert_eq!(code, 0, "the store alone cannot tell: {report:#}");

    for (label, report) in [
        ("topic", from_topic(&[])?),
        (
            "anchor file",
            verify_chains(&["--topic", g, "--anchors", &anchors])?,
        ),
    ] {
        let (code, report) = report;
        assert_eq!(code, 1, "{label}: {report:#}");
        let tail = chain(&report, &format!("{g}/0")).context("chain 0")?;
        assert_eq!(
            findings(&serde_json::json!({ "chains": [tail] })),
            vec![("truncated".to_owned(), 20)],
            "{label}: {tail:#}"
        );
        let cps = checkpoint_findings(&serde_json::json!({ "chains": [tail] }));
        assert!(
            cps.contains(&("checkpoint_missing_from_store".to_owned(), 29))
                && cps.contains(&("head_missing".to_owned(), 29)),
            "{label}: {cps:?}"
        );
        let gone = chain(&report, &format!("{g}/1")).context("the deleted chain is named")?;
        assert_eq!(gone["records"], 0);
        assert_eq!(
            findings(&serde_json::json!({ "chains": [gone] })),
            vec![("truncated".to_owned(), 0)],
            "{label}: {gone:#}"
        );
        let cps = checkpoint_findings(&serde_json::json!({ "chains": [gone] }));
        for last in [9, 19, 29] {
            assert!(
                cps.contains(&("checkpoint_missing_from_store".to_owned(), last)),
                "{label}: {cps:?}"
            );
        }
        let intact = chain(&report, &format!("{g}/2")).context("chain 2")?;
        assert!(
            intact["findings"].as_array().is_some_and(Vec::is_empty)
                && intact["checkpoint_findings"]
                    .as_array()
                    .is_some_and(Vec::is_empty),
            "{label}: {intact:#}"
        );
    }
    Ok(())
}
